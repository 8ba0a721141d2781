//! Lazy switching of user x87/SSE state (the instructions are in
//! `arch::fpu`; this is the policy).
//!
//! Each CPU has at most one *owner*, the thread whose state its registers
//! hold. A thread's state is either saved in its `fpu` area (`fpu_cpu` 0)
//! or live in the registers of the CPU it owns (`fpu_cpu` is that CPU + 1).
//!
//! * A switch never saves or loads anything: it leaves CR0.TS clear only
//!   when the next thread is the owner (`on_switch`, one compare).
//! * A non-owner's first x87/SSE instruction traps (#NM); `on_first_use`
//!   saves the owner's registers into its area and loads the new thread's.
//! * A thread whose state is live on a CPU runs only there: `enqueue` sends
//!   it back to that CPU, which saves the state (`release`) before it lets
//!   the thread go elsewhere, and a direct hand-off elsewhere is refused
//!   (`runnable_here`). A stopping thread saves its own state, so its
//!   parent reads and writes the saved area (`flush_current`); an exiting
//!   one just gives up ownership (`forget_current`).
//!
//! All of it runs on the owning CPU with interrupts off.

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use super::scheduler::{here, running_on, CpuSched};
use super::thread::Thread;
use crate::arch::x86_64_exports::fpu::{self, FpuArea};

/// Makes `new` this CPU's FPU owner; returns the previous one.
fn replace_owner(s: &CpuSched, new: Option<Arc<Thread>>) -> Option<Arc<Thread>> {
    // SAFETY: only the owning CPU touches its FPU owner, with interrupts
    // off (every caller's contract), and no reference into the cell
    // outlives this call.
    unsafe { core::mem::replace(&mut *s.fpu_owner.get(), new) }
}

fn owns(s: &CpuSched, t: &Thread) -> bool {
    // SAFETY: as in `replace_owner`; a shared look that ends here.
    unsafe { (*s.fpu_owner.get()).as_deref().is_some_and(|o| core::ptr::eq(o, t)) }
}

/// Sets or clears CR0.TS, remembering the state so that a switch that
/// changes nothing costs no control-register write.
fn set_enabled(s: &CpuSched, on: bool) {
    // SAFETY: as in `replace_owner`.
    let enabled = unsafe { &mut *s.fpu_enabled.get() };
    if *enabled != on {
        if on {
            fpu::enable();
        } else {
            fpu::disable();
        }
        *enabled = on;
    }
}

/// Every switch to `next` on this CPU, the fast path's included.
#[inline(always)]
pub(super) fn on_switch(s: &CpuSched, next: &Thread) {
    set_enabled(s, owns(s, next));
}

/// #NM from ring 3: the running thread used x87/SSE without owning this
/// CPU's registers: give them to it.
pub fn on_first_use() {
    let (cpu, s) = here();
    let me = running_on(s);
    set_enabled(s, true);
    if owns(s, me) {
        return;
    }
    if let Some(previous) = replace_owner(s, None) {
        // SAFETY: TS is clear and the registers hold `previous`'s state.
        unsafe { fpu::save(&mut previous.fpu.lock()) };
        previous.fpu_cpu.store(0, Ordering::Release);
    }
    debug_assert_eq!(me.fpu_cpu.load(Ordering::Acquire), 0, "a thread ran away from its live FPU state");
    // SAFETY: TS is clear; `me`'s state is saved (a thread runs only where
    // its state is live, and it owns no CPU), and its area is loadable
    // (INITIAL, saved by `save`, or checked by `set_saved`).
    unsafe { fpu::restore(&me.fpu.lock()) };
    me.fpu_cpu.store(cpu + 1, Ordering::Release);
    // SAFETY: owning CPU, interrupts off.
    let previous = replace_owner(s, unsafe { (*s.current.get()).clone() });
    debug_assert!(previous.is_none());
    s.fpu_loads.store(s.fpu_loads.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Saves `t`'s state into its area if this CPU holds it, so `t` may run
/// elsewhere or be read. `s` is this CPU's.
pub(super) fn release(s: &CpuSched, t: &Thread) {
    if !owns(s, t) {
        return;
    }
    set_enabled(s, true);
    // SAFETY: TS is clear and the registers hold `t`'s state.
    unsafe { fpu::save(&mut t.fpu.lock()) };
    t.fpu_cpu.store(0, Ordering::Release);
    drop(replace_owner(s, None));
    set_enabled(s, false);
}

/// Whether `t` may run on `cpu` as far as its FPU state goes.
pub(super) fn runnable_here(t: &Thread, cpu: usize) -> bool {
    let live = t.fpu_cpu.load(Ordering::Acquire);
    live == 0 || live == cpu + 1
}

/// The CPU whose registers hold `t`'s state, if any.
pub(super) fn live_on(t: &Thread) -> Option<usize> {
    t.fpu_cpu.load(Ordering::Acquire).checked_sub(1)
}

/// The running thread is stopping: its state goes to its area, where its
/// parent may read and rewrite it.
pub(super) fn flush_current() {
    let (_, s) = here();
    release(s, running_on(s));
}

/// The running thread is exiting: its registers' contents no longer matter.
pub(super) fn forget_current() {
    let (_, s) = here();
    let me = running_on(s);
    if owns(s, me) {
        me.fpu_cpu.store(0, Ordering::Release);
        drop(replace_owner(s, None));
        set_enabled(s, false);
    }
}

impl Thread {
    /// The saved x87/SSE state of a stopped thread (None while it runs).
    pub fn saved_fpu(&self) -> Option<FpuArea> {
        (self.is_stopped() && live_on(self).is_none()).then(|| *self.fpu.lock())
    }

    /// Replaces a stopped thread's saved x87/SSE state; false if it is not
    /// stopped or the image would fault when loaded.
    pub fn set_saved_fpu(&self, area: &FpuArea) -> bool {
        if !self.is_stopped() || live_on(self).is_some() || !area.loadable() {
            return false;
        }
        *self.fpu.lock() = *area;
        true
    }
}
