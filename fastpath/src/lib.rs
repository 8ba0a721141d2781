//! The IPC fast path and the lock-free cross-CPU port queues.
//!
//! This crate is `no_std` so the kernel links it, and plain generic Rust so
//! the same code runs under host unit, property, stress and loom tests.
//!
//! What it owns so far:
//!
//! * [`queue`]: [`PortQueue<T, N>`](queue::PortQueue), the bounded lock-free
//!   MPMC queue (per-slot sequence numbers, cache-padded head and tail) that
//!   carries messages to a receiver on another CPU. `const fn new`, no
//!   allocation, so the kernel can keep one per CPU in a `static`.
//! * [`doorbell`]: [`Doorbell`](doorbell::Doorbell), the receiver's
//!   spin-then-sleep handshake that tells a sender exactly when to send a
//!   doorbell IPI, without ever losing a wakeup.
//!
//! * [`ipc`]: the same-CPU fast path for `call` and `reply_wait`: the order
//!   of its checks, its single claim and its commit, generic over the
//!   kernel's mechanisms ([`ipc::Kernel`]) so the order is tested here.
//!
//! * [`servers`]: [`ServerQueue`](servers::ServerQueue), a portset's
//!   waiting servers, FIFO, with the lone waiting server kept inline.
//!
//! Architecture-specific work (the entry stub, sending the IPI, halting)
//! stays in the kernel.
//!
//! # Testing
//! * `cargo test -p fastpath`: unit, property (against `VecDeque`) and
//!   multi-thread stress tests.
//! * `RUSTFLAGS="--cfg loom" cargo test -p fastpath --release --test loom`:
//!   loom model checking of the queue and the doorbell handshake. Under
//!   `--cfg loom` the atomics come from loom through the internal `sync`
//!   shim and the constructors are not `const`.
#![no_std]

mod sync;

pub mod doorbell;
pub mod ipc;
pub mod queue;
pub mod servers;

pub use doorbell::{Doorbell, NeedsIpi, SleepDecision, SleepTicket};
pub use queue::PortQueue;
