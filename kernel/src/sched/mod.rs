//! Threads and the scheduler.
//!
//! Every CPU has a run queue of ready threads (64 priorities, FIFO within a
//! priority), a current thread and an idle thread. The kernel itself is not
//! preemptible (like seL4's): a timer tick or reschedule IPI switches threads
//! only when it interrupted user mode or the idle loop; kernel threads give
//! the CPU up by blocking, yielding or exiting. A thread may run on the CPUs
//! in its affinity mask; changing the mask migrates it at its next switch.
//!
//! A thread that is switched out stays `on_cpu` until the CPU that ran it
//! is off its stack, and no CPU switches to a thread that is still `on_cpu`
//! elsewhere: that is what makes cross-CPU wake-ups and migration safe.
//!
//! `lazyfpu` switches user x87/SSE state only when a thread first uses it
//! after a switch (a per-CPU owner and CR0.TS).
//!
//! `fastipc` is the kernel's half of the IPC fast path: a thread blocked
//! there is *parked* at its user frame and can be switched to with a
//! `sysret`, or woken like any other blocked thread.

//! Files: `thread` (the control block, states, registry), `scheduler`
//! (per-CPU run queues, switching, spawn, block and wake, exit and join,
//! interrupts), `waitqueue` (kernel wait queues, sleeping), `control`
//! (kill, stop, resume, affinity), `donation` (CPU donation), `fastipc`
//! (the fast path's kernel half), `lazyfpu`, and `runqueue` (the intrusive
//! per-priority FIFOs, host-tested).

pub mod runqueue;

#[cfg(target_os = "none")]
mod control;
#[cfg(target_os = "none")]
mod donation;
#[cfg(target_os = "none")]
mod fastipc;
#[cfg(target_os = "none")]
mod lazyfpu;
#[cfg(target_os = "none")]
mod scheduler;
#[cfg(target_os = "none")]
mod thread;
#[cfg(target_os = "none")]
mod waitqueue;
#[cfg(target_os = "none")]
pub use fastipc::{fast_call, fast_reply_wait};
#[cfg(target_os = "none")]
pub use lazyfpu::on_first_use as fpu_first_use;
#[cfg(target_os = "none")]
pub mod ktests;
#[cfg(target_os = "none")]
pub use control::*;
#[cfg(target_os = "none")]
pub use donation::*;
#[cfg(target_os = "none")]
pub use scheduler::*;
#[cfg(target_os = "none")]
pub use thread::*;
#[cfg(target_os = "none")]
pub use waitqueue::*;
