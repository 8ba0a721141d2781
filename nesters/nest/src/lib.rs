//! The nester library, linked by every program of the nester stack:
//!
//! * [`proto`]: Fluke's common protocols as Matryoshka speaks them
//!   (nesters/PROTOCOLS.md): operation and error codes, word layouts;
//! * [`client`]: one typed function per operation, for every program;
//! * [`server`]: a server's thread pool (it grows while requests block) with
//!   the deduplication of sequenced requests;
//! * [`loader`]: a user-level ELF loader that builds a child process from a
//!   file (segments W^X, stack with guard page, System V start block);
//! * [`io`]: the process's standard streams and references, `outln!`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod client;
pub mod io;
pub mod loader;
pub mod proto;
pub mod server;
