//! The IPC fast path and the lock-free port queues.
//!
//! This crate is `no_std` so the kernel links it, and plain Rust so the
//! same code runs under host unit, property and loom tests. It is filled in
//! by the IPC work (issue 4); until then it only fixes the crate boundary.
#![no_std]
