//! Kernel wait queues (behind mutexes, condition variables, stop waiters
//! and portset standby) and sleeping for a number of ticks.

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::scheduler::*;
use super::thread::*;
use crate::arch::x86_64_exports::*;

/// A queue of threads blocked in the kernel, woken by another thread.
pub struct WaitQueue {
    waiters: spin::Mutex<Vec<Arc<Thread>>>,
    /// What its waiters wait for (the hang report says).
    reason: WaitReason,
}

impl WaitQueue {
    pub const fn new(reason: WaitReason) -> Self {
        WaitQueue { waiters: spin::Mutex::new(Vec::new()), reason }
    }

    /// Blocks the current thread if `still_wanted()` holds, evaluated under
    /// the queue's lock (so a waker that changes the condition and then
    /// calls `wake` cannot be missed). Returns false without blocking if
    /// the condition no longer held. May return after a spurious wake-up.
    pub fn wait_if(&self, still_wanted: impl FnOnce() -> bool) -> bool {
        let was = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        let blocked = {
            let mut w = self.waiters.lock();
            if still_wanted() {
                let me = current();
                if block_unless_asked_to_stop(&me, self.reason) {
                    w.push(me);
                    Some(true)
                } else {
                    // A kill or stop is pending: a spurious wake-up, at once.
                    Some(false)
                }
            } else {
                None
            }
        };
        if blocked == Some(true) {
            schedule();
            // Leave the queue if a kill (not a `wake`) ended the wait.
            let me = current();
            cpu::without_interrupts(|| self.waiters.lock().retain(|t| !Arc::ptr_eq(t, &me)));
        }
        if was {
            cpu::enable_interrupts();
        }
        blocked.is_some()
    }

    /// Wakes up to `count` waiters, oldest first; returns how many.
    pub fn wake(&self, count: usize) -> usize {
        let woken: Vec<Arc<Thread>> = cpu::without_interrupts(|| {
            let mut w = self.waiters.lock();
            if count >= w.len() {
                // Everyone: hand the whole list over, allocating nothing
                // (the exit path wakes its stop waiters this way).
                return core::mem::take(&mut *w);
            }
            w.drain(..count).collect()
        });
        for t in &woken {
            wake(t);
        }
        woken.len()
    }
}

/// Blocks the current thread for at least `ticks` timer ticks.
pub fn sleep_ticks(ticks: u64) {
    cpu::without_interrupts(|| {
        let (cpu, s) = here();
        let me = current();
        let deadline = percpu::cpu(cpu).ticks.load(Ordering::Relaxed) + ticks.max(1);
        set_wait(&me, WaitReason::Sleep);
        me.state.store(BLOCKED, Ordering::Release);
        s.sleepers.lock().push((deadline, me));
        schedule();
    });
}
