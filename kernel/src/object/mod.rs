//! The object model (Fluke's set: Space, Thread, Port, Portset, Region,
//! Mapping, Mutex, Cond, Reference), named from user space only through
//! per-space handle tables. This module grows with issue 3; the handle
//! table is its host-tested foundation.

pub mod handle;
#[cfg(target_os = "none")]
pub mod keeper;
#[cfg(target_os = "none")]
pub mod memory;
pub mod quota;
#[cfg(target_os = "none")]
pub mod space;
pub mod vm;
