//! CPU donation (Fluke's CPU inheritance): donation-only threads run only
//! on time a user-level scheduler gives them with `donate`.

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use super::lazyfpu;
use super::scheduler::*;
use super::thread::*;
use crate::arch::x86_64_exports::*;

/// How a donation ended, as `donate` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DonationEnd {
    /// The thread blocked (it is announced again when it becomes runnable).
    Blocked = 0,
    /// Its time slice ran out, or it yielded: still runnable.
    Runnable = 1,
    Exited = 2,
    Stopped = 3,
}

pub(super) const DONATION_PENDING: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DonateError {
    /// Not a donation-only thread, the caller itself, or not able to run on this CPU.
    Invalid,
    /// Not runnable now (running, blocked, stopped, or another donor has it).
    NotRunnable,
    Exited,
    /// The caller was stopped or killed while the thread ran.
    Interrupted,
}

/// Makes `t` run only on donated time (or, with `on` false, again on the
/// kernel's run queues); takes effect the next time it becomes runnable.
pub fn set_donation_only(t: &Arc<Thread>, on: bool) {
    t.donation_only.store(on, Ordering::Release);
    if !on {
        release_from_donor_wait(t);
    }
}

/// A donation-only thread became runnable on its own: one-way message
/// `[5, cpu, tick, 0, 0, 0]` to its scheduler port.
pub(super) fn announce_runnable(t: &Thread) {
    let port = cpu::without_interrupts(|| t.scheduler.lock().clone());
    if let Some(port) = port {
        let cpu = percpu::this_cpu_index();
        let _ = crate::ipc::send(
            &port,
            [crate::object::keeper::KIND_RUNNABLE, cpu as u64, percpu::cpu(cpu).ticks.load(Ordering::Relaxed), 0, 0, 0],
        );
    }
}

/// The donor `t` runs for, if any; the donation is over once taken.
pub(super) fn take_donor(t: &Thread) -> Option<Arc<Thread>> {
    if !t.on_donation() {
        return None;
    }
    let donor = t.donor.lock().take();
    t.attention.fetch_and(!ATTENTION_DONATION, Ordering::AcqRel);
    donor
}

/// Gives the caller's CPU to the runnable donation-only thread `t` until
/// it blocks, exits, stops, yields or uses up a time slice (Fluke's CPU
/// donation: a user-level scheduler runs its threads on its own time).
/// Interrupts off.
pub fn donate(t: &Arc<Thread>) -> Result<DonationEnd, DonateError> {
    let (cpu, s) = here();
    let me = current();
    if Arc::ptr_eq(&me, t) || !t.donation_only.load(Ordering::Acquire) || !t.allowed_on(cpu) {
        return Err(DonateError::Invalid);
    }
    if !lazyfpu::runnable_here(t, cpu) {
        // Its x87/SSE state is still in another CPU's registers (it parked
        // there through the IPC fast path): only that CPU can run it now.
        return Err(DonateError::NotRunnable);
    }
    {
        let mut donor = t.donor.lock();
        if t.state.load(Ordering::Acquire) == EXITED {
            return Err(DonateError::Exited);
        }
        // The claim: it leaves the "waiting for a donor" set exactly once.
        if donor.is_some() || !t.awaiting_donor.swap(false, Ordering::AcqRel) {
            return Err(DonateError::NotRunnable);
        }
        debug_assert_eq!(t.state.load(Ordering::Acquire), READY);
        *donor = Some(me.clone());
        t.attention.fetch_or(ATTENTION_DONATION, Ordering::AcqRel);
    }
    me.donation_end.store(DONATION_PENDING, Ordering::Relaxed);
    set_wait(&me, WaitReason::Donating);
    me.state.store(BLOCKED, Ordering::Release);
    s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
    switch_to(cpu, s, me.clone(), t.clone(), true);
    // Back: the donation ended, or something else woke the caller.
    let end = me.donation_end.load(Ordering::Acquire);
    if end == DONATION_PENDING {
        // Woken by a kill or stop while `t` runs on: withdraw the donation
        // (unless it is ending right now, in which case `t` took it).
        let mut donor = t.donor.lock();
        if donor.as_ref().is_some_and(|d| Arc::ptr_eq(d, &me)) {
            *donor = None;
            t.attention.fetch_and(!ATTENTION_DONATION, Ordering::AcqRel);
        }
        return Err(DonateError::Interrupted);
    }
    Ok(match end {
        0 => DonationEnd::Blocked,
        1 => DonationEnd::Runnable,
        2 => DonationEnd::Exited,
        _ => DonationEnd::Stopped,
    })
}
