//! A parent's control of a thread: kill, stop at a clean point, resume,
//! affinity, and threads created stopped.

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use super::lazyfpu;
use super::scheduler::*;
use super::thread::*;
use super::waitqueue::*;
use crate::arch::x86_64::syscall::UserExit;
use crate::arch::x86_64_exports::*;
use crate::object::space::Space;

/// Asks a thread to exit at its next entry into the kernel. A thread
/// blocked in a system call is woken (every blocking call tolerates
/// spurious wake-ups and checks for a kill on its way out).
pub fn kill(t: &Arc<Thread>) {
    t.attention.fetch_or(ATTENTION_KILL, Ordering::AcqRel);
    wake(t);
    release_from_donor_wait(t);
    // A stopped thread runs again only to exit.
    if t.state.compare_exchange(STOPPED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        enqueue(t.clone());
    }
    let cpu = t.cpu();
    if cpu != percpu::this_cpu_index() {
        smp::send_reschedule(cpu);
    }
}

/// Restricts a thread to the CPUs in `mask`; it moves at its next switch.
pub fn set_affinity(t: &Arc<Thread>, mask: u64) -> Result<(), SchedError> {
    if mask & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    t.affinity.store(mask, Ordering::Release);
    let cpu = t.cpu();
    if mask & (1 << cpu) == 0 {
        if cpu == percpu::this_cpu_index() {
            CPUS[cpu].need_resched.store(true, Ordering::Release);
        } else {
            smp::send_reschedule(cpu);
        }
    }
    Ok(())
}

/// Stops the current thread at a user-return boundary if its parent asked:
/// its user registers stay in `frame` (on its kernel stack) for
/// get_state/set_state until `resume`. Interrupts off.
pub fn stop_point(frame: u64, kind: FrameKind) {
    let me = current();
    if !me.stop_requested() || me.kill_requested() {
        return;
    }
    *me.stopped_frame.lock() = Some((frame, kind));
    lazyfpu::flush_current();
    me.state.store(STOPPED, Ordering::Release);
    me.stop_waiters.wake(usize::MAX);
    drop(me);
    schedule();
    let me = current();
    *me.stopped_frame.lock() = None;
    if me.kill_requested() {
        drop(me);
        exit_current(UserExit::Killed);
    }
}

/// Asks `t` to stop and waits until it has (or has exited). A thread
/// blocked in a system call is woken; the call is exported as restartable.
/// Returns false if the caller was killed while it waited.
pub fn stop(t: &Arc<Thread>) -> bool {
    t.attention.fetch_or(ATTENTION_STOP, Ordering::AcqRel);
    loop {
        if t.is_stopped() || t.has_exited() {
            return true;
        }
        if current().kill_requested() {
            return false;
        }
        // Interrupt a blocking call, or make a running thread enter the kernel.
        wake(t);
        release_from_donor_wait(t);
        let cpu = t.cpu();
        if cpu != percpu::this_cpu_index() {
            smp::send_reschedule(cpu);
        }
        t.stop_waiters.wait_if(|| !t.is_stopped() && !t.has_exited());
        if !t.is_stopped() && !t.has_exited() {
            // Woken before it stopped (it was running): give it a tick to get there.
            sleep_ticks(1);
        }
    }
}

/// Lets a stopped thread run again.
pub fn resume(t: &Arc<Thread>) -> bool {
    t.attention.fetch_and(!ATTENTION_STOP, Ordering::AcqRel);
    if t.state.compare_exchange(STOPPED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        enqueue(t.clone());
        true
    } else {
        false
    }
}

/// Creates a user thread in `space` that does not run until `resume`; its
/// registers start as `regs` (set them with set_state first).
pub fn spawn_user_stopped(
    name: &'static str,
    space: Arc<Space>,
    regs: UserRegisters,
    charge: crate::object::quota::Charge,
) -> Result<Arc<Thread>, SchedError> {
    let affinity = all_cpus();
    let t = Thread::new_in(
        name,
        Body::User { rip: 0, rsp: 0, args: (0, 0) },
        space.page_table_root(),
        USER_PRIORITY,
        affinity,
        Arc::downgrade(&space),
    )?;
    *t.quota_charge.lock() = Some(charge);
    t.cpu.store(least_loaded(affinity), Ordering::Relaxed);
    *t.pending_start.lock() = Some(regs);
    t.attention.fetch_or(ATTENTION_STOP, Ordering::AcqRel);
    t.state.store(STOPPED, Ordering::Release);
    Ok(t)
}
