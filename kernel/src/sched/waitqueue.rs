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

/// Sets the deadline of the blocking call the current thread starts (a TSC
/// value; 0: none). Its waits end with a time-out once the TSC passes it
/// (checked at each timer tick: a deadline is met within one tick).
pub fn set_deadline(tsc: u64) {
    me().deadline.store(tsc, Ordering::Relaxed);
}

/// Ends the current thread's deadline and takes its clock wake-up back (a
/// clock entry pins the thread).
pub fn clear_deadline() {
    let me = current();
    me.deadline.store(0, Ordering::Relaxed);
    disarm_deadline(&me);
}

/// Whether the current thread's deadline has passed.
pub fn deadline_passed(t: &Thread) -> bool {
    let d = t.deadline.load(Ordering::Relaxed);
    d != 0 && cpu::read_tsc() >= d
}

/// Before the current thread blocks: a clock wake-up at its deadline (if
/// any) on this CPU, replacing an earlier one. The tick after the one the
/// deadline falls in wakes it, so it wakes late rather than early.
pub fn arm_deadline(t: &Arc<Thread>) {
    let d = t.deadline.load(Ordering::Relaxed);
    if d == 0 {
        return;
    }
    cpu::without_interrupts(|| {
        disarm_deadline(t);
        let (cpu, s) = here();
        let left = d.saturating_sub(cpu::read_tsc());
        let ticks = left.div_ceil(crate::arch::time::tsc_per_tick()) + 1;
        let at = percpu::cpu(cpu).ticks.load(Ordering::Relaxed).saturating_add(ticks);
        s.sleepers.lock().push((at, t.clone()));
        t.deadline_cpu.store(cpu, Ordering::Relaxed);
    });
}

fn disarm_deadline(t: &Arc<Thread>) {
    let cpu = t.deadline_cpu.swap(NO_CPU, Ordering::Relaxed);
    if cpu != NO_CPU {
        cpu::without_interrupts(|| CPUS[cpu].sleepers.lock().retain(|(_, x)| !Arc::ptr_eq(x, t)));
    }
}

/// Blocks the current thread until the TSC reaches `deadline`: true then,
/// false if it was asked to stop or die first (its call restarts or ends).
pub fn sleep_until_tsc(deadline: u64) -> bool {
    let me = current();
    me.deadline.store(deadline.max(1), Ordering::Relaxed);
    let reached = loop {
        if deadline_passed(&me) {
            break true;
        }
        if me.kill_requested() || me.stop_requested() {
            break false;
        }
        arm_deadline(&me);
        cpu::without_interrupts(|| {
            set_wait(&me, WaitReason::Sleep);
            me.state.store(BLOCKED, Ordering::Release);
            core::sync::atomic::fence(Ordering::SeqCst);
            if deadline_passed(&me) || me.kill_requested() || me.stop_requested() {
                let _ = wake(&me);
            }
            schedule();
        });
    };
    clear_deadline();
    reached
}
