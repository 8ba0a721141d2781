//! Physical and kernel virtual memory: the usable-memory set built from the
//! boot memory map, the frame allocator, and the kernel heap.

pub mod frame;
#[cfg(target_os = "none")]
pub mod heap;
pub mod inject;
pub mod rangeset;
