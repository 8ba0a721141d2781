//! The per-CPU scheduler: run queues, picking and switching threads,
//! spawning, blocking and waking, exit and join, and what a timer tick or
//! reschedule IPI does.

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::control::*;
use super::donation::*;
use super::lazyfpu;
use super::runqueue::RunQueue;
use super::thread::*;
use crate::arch::x86_64::context;
use crate::arch::x86_64::syscall::UserExit;
use crate::arch::x86_64_exports::*;
use crate::object::space::Space;

pub(super) struct CpuSched {
    pub(super) queue: spin::Mutex<RunQueue<Thread>>,
    /// Touched only by the owning CPU with interrupts off.
    pub(super) current: UnsafeCell<Option<Arc<Thread>>>,
    pub(super) idle: UnsafeCell<Option<Arc<Thread>>>,
    /// The thread just switched away from, released by `finish_switch`.
    pub(super) switched_from: UnsafeCell<Option<Arc<Thread>>>,
    pub(super) slice_left: AtomicU32,
    pub(super) need_resched: AtomicBool,
    pub(super) sleepers: spin::Mutex<Vec<(u64, Arc<Thread>)>>,
    /// The thread a caller that just parked wants to run next (`leave_parked`).
    pub(super) parked_handoff: UnsafeCell<Option<Arc<Thread>>>,
    /// Direct switches the IPC fast path made on this CPU (written by it only).
    pub(super) fast_switches: AtomicU64,
    /// CR3 loads the fast path made on this CPU (written by it only; the
    /// general path's are counted in `paging`).
    pub(super) fast_cr3_loads: AtomicU64,
    /// Where a switch away from a parked thread saves the stack pointer it
    /// will never use (a parked thread resumes at its continuation).
    pub(super) discarded_context: UnsafeCell<u64>,
    /// The thread whose x87/SSE state this CPU's registers hold.
    pub(super) fpu_owner: UnsafeCell<Option<Arc<Thread>>>,
    /// Whether CR0.TS is clear (the owner runs).
    pub(super) fpu_enabled: UnsafeCell<bool>,
    /// x87/SSE state loads on this CPU (written by it only).
    pub(super) fpu_loads: AtomicU64,
}

// SAFETY: the UnsafeCell fields are accessed only by the owning CPU with
// interrupts disabled; the rest is locked or atomic.
unsafe impl Sync for CpuSched {}

pub(super) static CPUS: [CpuSched; percpu::MAX_CPUS] = [const {
    CpuSched {
        queue: spin::Mutex::new(RunQueue::new()),
        current: UnsafeCell::new(None),
        idle: UnsafeCell::new(None),
        switched_from: UnsafeCell::new(None),
        slice_left: AtomicU32::new(TIME_SLICE_TICKS),
        need_resched: AtomicBool::new(false),
        sleepers: spin::Mutex::new(Vec::new()),
        parked_handoff: UnsafeCell::new(None),
        discarded_context: UnsafeCell::new(0),
        fast_switches: AtomicU64::new(0),
        fast_cr3_loads: AtomicU64::new(0),
        fpu_owner: UnsafeCell::new(None),
        fpu_enabled: UnsafeCell::new(false),
        fpu_loads: AtomicU64::new(0),
    }
}; percpu::MAX_CPUS];

pub(super) static READY_CPUS: AtomicU64 = AtomicU64::new(0);

#[inline]
pub(super) fn here() -> (usize, &'static CpuSched) {
    let cpu = percpu::this_cpu_index();
    (cpu, &CPUS[cpu])
}

/// `here` on a path that starts from a system call (see
/// `percpu::this_cpu_index_and_scheduler`).
#[inline(always)]
pub(super) fn here_scheduling() -> (usize, &'static CpuSched) {
    let (cpu, state) = percpu::this_cpu_index_and_scheduler();
    debug_assert!(core::ptr::eq(state as *const CpuSched, &CPUS[cpu]));
    // SAFETY: `init_this_cpu` stored `&CPUS[cpu]` (a static) there before
    // this CPU scheduled anything.
    (cpu, unsafe { &*(state as *const CpuSched) })
}

/// `running_on` without the check that `s` has a current thread.
///
/// # Safety
/// As `running_on`, and `s` has a current thread (it does once the CPU
/// schedules: a system call, for one, comes from the current thread).
#[inline(always)]
pub(super) unsafe fn running_on_unchecked(s: &'static CpuSched) -> &'static Thread {
    debug_assert!(!cpu::interrupts_enabled());
    // SAFETY: as in `running_on`; `current` is set (the contract).
    unsafe { &*Arc::as_ptr((*s.current.get()).as_ref().unwrap_unchecked()) }
}

/// The running thread, borrowed: no reference count, no interrupt toggling
/// (the hot paths' accessor). Interrupts must be off.
#[inline]
pub fn me() -> &'static Thread {
    running_on(here().1)
}

/// `me()` for a caller that already has this CPU's scheduler state.
#[inline]
pub(super) fn running_on(s: &'static CpuSched) -> &'static Thread {
    debug_assert!(!cpu::interrupts_enabled());
    // SAFETY: interrupts are off, so `current` does not change under us, and
    // the thread whose stack we run on stays alive while it runs: its kernel
    // stack is freed only after its last reference is gone, which cannot
    // happen while it is current (the scheduler holds one) — and a thread
    // that blocks holds on through whatever queue it waits in, or exits and
    // never returns here.
    unsafe { &*Arc::as_ptr((*s.current.get()).as_ref().expect("scheduler not started on this CPU")) }
}

/// Whether the current thread is asked to die or to stop (one load of its
/// attention byte; the exit path of every system call asks). Interrupts
/// off, from a system call.
#[inline(always)]
pub fn current_kill_or_stop() -> (bool, bool) {
    let (_, s) = here_scheduling();
    // SAFETY: a system call comes from the current thread: `s` has one.
    let attention = unsafe { running_on_unchecked(s) }.attention.load(Ordering::Acquire);
    (attention & ATTENTION_KILL != 0, attention & ATTENTION_STOP != 0)
}

/// The running thread. Panics before `init_this_cpu`.
pub fn current() -> Arc<Thread> {
    cpu::without_interrupts(|| {
        let (_, s) = here();
        // SAFETY: owning CPU, interrupts off.
        unsafe { (*s.current.get()).clone() }.expect("scheduler not started on this CPU")
    })
}

/// Makes this CPU's running context a thread. The boot CPU's context becomes
/// a kernel thread (with a separate idle thread); an AP's becomes its idle thread.
pub fn init_this_cpu(is_boot_cpu: bool) -> Result<(), SchedError> {
    let (cpu, s) = here();
    percpu::this_cpu().scheduler_state.store(s as *const CpuSched as usize, Ordering::Relaxed);
    let me = Thread::new(if is_boot_cpu { "kmain" } else { "idle" }, Body::Adopted, 0, KERNEL_PRIORITY, 1 << cpu)?;
    me.state.store(RUNNING, Ordering::Relaxed);
    me.on_cpu.store(true, Ordering::Relaxed);
    me.ran_on.store(1 << cpu, Ordering::Relaxed);
    let idle = if is_boot_cpu {
        let idle = Thread::new("idle", Body::Kernel { entry: |_| idle_loop(), arg: 0 }, 0, 0, 1 << cpu)?;
        idle.state.store(RUNNING, Ordering::Relaxed);
        idle
    } else {
        me.clone()
    };
    cpu::without_interrupts(|| {
        // SAFETY: owning CPU, interrupts off.
        unsafe {
            *s.current.get() = Some(me);
            *s.idle.get() = Some(idle);
        }
    });
    READY_CPUS.fetch_or(1 << cpu, Ordering::AcqRel);
    Ok(())
}

/// The idle loop: run whatever is queued, else halt until an interrupt.
pub fn idle_loop() -> ! {
    loop {
        cpu::disable_interrupts();
        let (_, s) = here();
        if !s.queue.lock().is_empty() {
            schedule();
            if !s.queue.lock().is_empty() {
                // A thread put back because it was still leaving another
                // CPU: look again soon rather than sleep until a tick.
                cpu::enable_interrupts();
                cpu::pause();
                continue;
            }
        }
        let (cpu, _) = here();
        set_idling(cpu, true);
        cpu::enable_interrupts_and_halt();
        set_idling(cpu, false);
    }
}

/// Spins (briefly) until `t` is off the CPU it was leaving; false if it
/// still is. A thread woken or migrated as it switches out normally clears
/// `on_cpu` within a few hundred cycles.
fn leaves_its_cpu_soon(t: &Thread) -> bool {
    for _ in 0..10_000 {
        if !t.on_cpu.load(Ordering::Acquire) {
            return true;
        }
        cpu::pause();
    }
    false
}

pub(super) fn is_idle(s: &CpuSched, t: &Arc<Thread>) -> bool {
    // SAFETY: owning CPU, interrupts off.
    unsafe { (*s.idle.get()).as_ref().is_some_and(|i| Arc::ptr_eq(i, t)) }
}

/// Puts a READY thread on the queue of a CPU it may run on, preferring the
/// one it last used, and pokes that CPU.
pub(super) fn enqueue(t: Arc<Thread>) {
    if t.donation_only.load(Ordering::Acquire) {
        // It runs only when its scheduler donates time: tell it instead.
        t.awaiting_donor.store(true, Ordering::Release);
        // A thread being killed or stopped must run for the kernel's sake,
        // donor or not. `kill` and `stop` set the attention bit, then
        // release the thread from the donor wait; checking the bit only
        // after publishing the wait (both sides fenced) means one of the
        // two always sees the other, so the thread cannot be left waiting
        // for a donor that never comes.
        core::sync::atomic::fence(Ordering::SeqCst);
        if t.attention.load(Ordering::Acquire) & (ATTENTION_KILL | ATTENTION_STOP) != 0 {
            release_from_donor_wait(&t);
            return;
        }
        announce_runnable(&t);
        return;
    }
    enqueue_on_a_cpu(t);
}

/// A donation-only thread that must run for the kernel's sake (to stop or
/// to exit) goes to a run queue after all.
pub(super) fn release_from_donor_wait(t: &Arc<Thread>) {
    // Pairs with the fence in `enqueue`.
    core::sync::atomic::fence(Ordering::SeqCst);
    if t.awaiting_donor.swap(false, Ordering::AcqRel) {
        enqueue_on_a_cpu(t.clone());
    }
}

pub(super) fn enqueue_on_a_cpu(t: Arc<Thread>) {
    let ready = READY_CPUS.load(Ordering::Acquire);
    let allowed = t.affinity.load(Ordering::Acquire) & ready;
    let last = t.cpu.load(Ordering::Relaxed);
    let mut target = if allowed & (1 << last) != 0 {
        last
    } else if allowed != 0 {
        allowed.trailing_zeros() as usize
    } else {
        last
    };
    // A thread runs only where its x87/SSE state is live: that CPU saves
    // the state before the thread may move (it pops it, sees it may not
    // run there, and comes back here).
    if let Some(live) = lazyfpu::live_on(&t).filter(|&c| c != target) {
        let me = percpu::this_cpu_index();
        if live == me {
            cpu::without_interrupts(|| lazyfpu::release(&CPUS[me], &t));
        } else {
            target = live;
        }
    }
    t.cpu.store(target, Ordering::Release);
    let prio = t.priority();
    cpu::without_interrupts(|| CPUS[target].queue.lock().push(prio, t));
    let me = percpu::this_cpu_index();
    if target != me {
        smp::send_reschedule(target);
    } else {
        CPUS[me].need_resched.store(true, Ordering::Release);
    }
}

/// Picks the next thread for this CPU and switches to it. Interrupts must be
/// off. A still-running current thread is queued again (unless idle).
pub fn schedule() {
    schedule_saving(true)
}

/// `schedule`, where `save_context` false means the current thread is
/// parked: its context is not saved, because it resumes at its
/// continuation. Returns only if it picked the current thread again.
pub(super) fn schedule_saving(save_context: bool) {
    debug_assert!(!cpu::interrupts_enabled());
    let (cpu, s) = here();
    s.need_resched.store(false, Ordering::Relaxed);
    // SAFETY: owning CPU, interrupts off.
    let prev = unsafe { (*s.current.get()).clone() }.expect("scheduler not started on this CPU");
    let donor = take_donor(&prev);
    if prev.donation_only.load(Ordering::Acquire) {
        // Its scheduler may donate from any CPU next: its x87/SSE state
        // must not stay behind in this CPU's registers.
        lazyfpu::release(s, &prev);
    }
    let still_runnable = !is_idle(s, &prev) && prev.state.compare_exchange(RUNNING, READY, Ordering::AcqRel, Ordering::Acquire).is_ok();
    if still_runnable && donor.is_none() {
        enqueue(prev.clone());
    } else if still_runnable {
        // Back to waiting for a donor; the donor learns it from `donate`.
        prev.awaiting_donor.store(true, Ordering::Release);
    }
    if let Some(donor) = donor {
        // The donated time ends here: the donor learns how, and gets its
        // CPU back directly when it can run here.
        let end = match prev.state.load(Ordering::Acquire) {
            READY => DonationEnd::Runnable,
            EXITED => DonationEnd::Exited,
            STOPPED => DonationEnd::Stopped,
            _ => DonationEnd::Blocked,
        };
        donor.donation_end.store(end as u8, Ordering::Release);
        if donor.allowed_on(cpu) && lazyfpu::runnable_here(&donor, cpu) && unblock(&donor) {
            s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
            switch_to(cpu, s, prev, donor, save_context);
            return;
        }
        wake(&donor);
    }
    let next = loop {
        let popped = s.queue.lock().pop();
        match popped {
            Some((_, t)) if !t.allowed_on(cpu) => enqueue(t), // migrating away
            Some((_, t)) if !Arc::ptr_eq(&t, &prev) && !leaves_its_cpu_soon(&t) => {
                // Still current on another CPU, which may be waiting for
                // `prev` to leave this one (each switching to the other's
                // thread: a thread woken as it blocks, whose affinity sends
                // it elsewhere). Put it back and idle for now: once `prev`
                // is off this CPU, neither waits for the other.
                s.queue.lock().push(t.priority(), t);
                // SAFETY: owning CPU, interrupts off.
                break unsafe { (*s.idle.get()).clone() }.expect("no idle thread");
            }
            Some((_, t)) => break t,
            // SAFETY: owning CPU, interrupts off.
            None => break unsafe { (*s.idle.get()).clone() }.expect("no idle thread"),
        }
    };
    s.need_resched.store(false, Ordering::Relaxed);
    s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
    if Arc::ptr_eq(&next, &prev) {
        let _ = prev.state.compare_exchange(READY, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        return;
    }
    switch_to(cpu, s, prev, next, save_context);
}

/// The syscall entry stub's exit for a caller the IPC fast path parked
/// without switching to its partner: gives the CPU to the thread the fast
/// path left in `parked_handoff` (if it may run here) or to the scheduler's
/// choice. Returns only if the scheduler picked the parked thread itself
/// (woken meanwhile); the stub then runs its continuation. Interrupts off.
pub extern "C" fn leave_parked() {
    let (cpu, s) = here();
    // SAFETY: owning CPU, interrupts off.
    match unsafe { (*s.parked_handoff.get()).take() } {
        Some(next) => hand_off(cpu, s, next, false),
        None => schedule_saving(false),
    }
}

/// Switches this CPU from `prev` (the current thread) to `next`; with
/// `save_context` false, `prev` is parked and its context is dropped.
pub(super) fn switch_to(cpu: usize, s: &'static CpuSched, prev: Arc<Thread>, next: Arc<Thread>, save_context: bool) {
    // The thread may still be leaving another CPU (woken or migrated there).
    while next.on_cpu.load(Ordering::Acquire) {
        cpu::pause();
    }
    next.on_cpu.store(true, Ordering::Relaxed);
    let _ = next.state.compare_exchange(READY, RUNNING, Ordering::AcqRel, Ordering::Acquire);
    next.cpu.store(cpu, Ordering::Release);
    next.ran_on.fetch_or(1 << cpu, Ordering::AcqRel);
    if matches!(next.body, Body::User { .. }) {
        crate::arch::x86_64::syscall::set_kernel_entry_stack(next.stack_top);
    }
    lazyfpu::on_switch(s, &next);
    // SAFETY: a thread's root lives as long as its space, which outlives
    // its threads; 0 is the kernel's own table.
    unsafe { paging::switch_address_space(next.root) };
    let save = if save_context { prev.context_rsp.get() } else { s.discarded_context.get() };
    // SAFETY: next is off every other CPU (on_cpu was clear), so its saved
    // context is complete.
    let load = unsafe { *next.context_rsp.get() };
    // SAFETY: owning CPU, interrupts off.
    unsafe {
        *s.current.get() = Some(next);
        *s.switched_from.get() = Some(prev);
    }
    // `prev` is kept alive by `switched_from` until `finish_switch`.
    // SAFETY: `save` belongs to prev (alive), `load` was saved by a switch
    // or prepared by prepare_stack; interrupts are off.
    unsafe { context::switch(save, load) };
    finish_switch();
}

/// Runs first on the new thread's stack after every switch: the previous
/// thread is now off this CPU.
pub fn finish_switch() {
    let (cpu, s) = here();
    // On the new thread's stack, which `current` keeps alive.
    quiescent_point(cpu);
    // SAFETY: owning CPU, interrupts off.
    if let Some(prev) = unsafe { (*s.switched_from.get()).take() } {
        prev.on_cpu.store(false, Ordering::Release);
    }
}

/// First code of every new thread (called from `context::thread_first_entry`).
pub extern "C" fn thread_start(thread: u64, _: u64) -> ! {
    finish_switch();
    // SAFETY: the pointer came from `Arc::as_ptr` of this thread, which is
    // kept alive by the scheduler while it runs (it is `current`).
    let me = unsafe { &*(thread as *const Thread) };
    assert!(
        !me.started.swap(true, Ordering::AcqRel),
        "thread {:p} ({}) started twice: its first context was switched to again (now on cpu{})",
        me,
        me.name,
        percpu::this_cpu_index()
    );
    match me.body {
        Body::Kernel { entry, arg } => {
            cpu::enable_interrupts();
            entry(arg);
            exit_current(UserExit::Exited(0))
        }
        Body::User { .. } if me.kill_requested() => exit_current(UserExit::Killed),
        Body::User { rip, rsp, args } => {
            let pending = *me.pending_start.lock();
            match pending {
                Some(regs) => context::enter_user_with(&regs),
                None => context::enter_user(rip, rsp, args),
            }
        }
        Body::Adopted => unreachable!("adopted threads never start"),
    }
}

/// The allowed CPU with the fewest queued threads (new threads start there).
pub(super) fn least_loaded(affinity: u64) -> usize {
    let allowed = affinity & all_cpus();
    (0..percpu::MAX_CPUS)
        .filter(|c| allowed & (1 << c) != 0)
        .min_by_key(|&c| cpu::without_interrupts(|| CPUS[c].queue.lock().len()))
        .unwrap_or(percpu::this_cpu_index())
}

pub(super) fn all_cpus() -> u64 {
    READY_CPUS.load(Ordering::Acquire)
}

/// Starts a kernel thread on the CPUs in `affinity` (0 = any).
pub fn spawn_kernel(name: &'static str, entry: fn(usize), arg: usize, affinity: u64) -> Result<Arc<Thread>, SchedError> {
    let affinity = if affinity == 0 { all_cpus() } else { affinity };
    if affinity & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    let t = Thread::new(name, Body::Kernel { entry, arg }, 0, KERNEL_PRIORITY, affinity)?;
    enqueue(t.clone());
    Ok(t)
}

/// Starts a user thread in the address space `root` at `rip` with stack
/// `rsp` and `arg` in rdi.
pub fn spawn_user(
    name: &'static str,
    root: u64,
    (rip, rsp, arg): (u64, u64, u64),
    priority: u8,
    affinity: u64,
) -> Result<Arc<Thread>, SchedError> {
    let args = (arg, 0);
    if rip >= paging::USER_TOP || rsp > paging::USER_TOP || root == 0 {
        return Err(SchedError::BadUserAddress);
    }
    let affinity = if affinity == 0 { all_cpus() } else { affinity };
    if affinity & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    let t = Thread::new(name, Body::User { rip, rsp, args }, root, priority, affinity)?;
    enqueue(t.clone());
    Ok(t)
}

/// Starts a user thread belonging to `space` (in its address space).
pub fn spawn_user_in(
    name: &'static str,
    space: Arc<Space>,
    (rip, rsp, args): (u64, u64, (u64, u64)),
    priority: u8,
    affinity: u64,
    charge: crate::object::quota::Charge,
) -> Result<Arc<Thread>, SchedError> {
    if rip >= paging::USER_TOP || rsp > paging::USER_TOP {
        return Err(SchedError::BadUserAddress);
    }
    let affinity = if affinity == 0 { all_cpus() } else { affinity };
    if affinity & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    let t = Thread::new_in(name, Body::User { rip, rsp, args }, space.page_table_root(), priority, affinity, Arc::downgrade(&space))?;
    *t.quota_charge.lock() = Some(charge);
    t.cpu.store(least_loaded(affinity), Ordering::Relaxed);
    Ok(t)
}

/// Lets a thread made by `spawn_user_in` run.
pub fn start(t: &Arc<Thread>) {
    enqueue(t.clone());
}

pub(super) static DIRECT_HANDOFF: AtomicBool = AtomicBool::new(true);

/// Turns the IPC direct hand-off off (`fastpath=off` on the command line),
/// so every IPC wake-up goes through the run queue. Only at boot, before
/// the first thread: threads carry the setting in `attention`.
pub fn set_direct_handoff(enabled: bool) {
    DIRECT_HANDOFF.store(enabled, Ordering::Relaxed);
}

pub fn direct_handoff_enabled() -> bool {
    DIRECT_HANDOFF.load(Ordering::Relaxed)
}

/// The current thread, already marked blocked, gives the CPU straight to
/// `next` (blocked, waiting for it): no run queue, no scheduling decision.
/// Falls back to wake + schedule when `next` may not run here or the
/// hand-off is turned off. Interrupts must be off.
pub fn block_and_handoff(next: &Arc<Thread>) {
    let (cpu, s) = here();
    hand_off(cpu, s, next.clone(), true);
}

/// `block_and_handoff`, also for a parked caller (`save_context` false).
/// Takes `next` by value: a parked caller's frame is abandoned, so nothing
/// may stay on it that owns a reference.
pub(super) fn hand_off(cpu: usize, s: &'static CpuSched, next: Arc<Thread>, save_context: bool) {
    let on_donation = running_on(s).on_donation();
    if direct_handoff_enabled() && !on_donation && next.allowed_on(cpu) && lazyfpu::runnable_here(&next, cpu) && unblock(&next) {
        // SAFETY: owning CPU, interrupts off.
        let prev = unsafe { (*s.current.get()).clone() }.expect("scheduler not started on this CPU");
        // `next` runs on the rest of this turn (as on the fast path): only a
        // pick from the run queue or a donation starts a new time slice.
        switch_to(cpu, s, prev, next, save_context);
    } else {
        wake(&next);
        drop(next);
        schedule_saving(save_context);
    }
}

/// Marks the current thread blocked (it must then call `schedule` or
/// `block_and_handoff`, with interrupts off, and re-check why it woke).
///
/// The fence orders this store before the caller's re-check of its wake-up
/// condition (`delivered`, ...), as `unblock`'s fence orders a waker's
/// setting of the condition before its look at `state`. Without the pair,
/// a store buffer lets both sides read the old value (x86 reorders a store
/// with a later load): the waiter sees no delivery and the waker sees a
/// running thread, and the waiter sleeps with its reply in hand.
pub fn mark_current_blocked() {
    set_wait(me(), WaitReason::Ipc);
    me().state.store(BLOCKED, Ordering::Release);
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Marks `me` (the current thread) blocked for `reason`, unless a kill or
/// stop is pending: then it stays running and this returns false.
///
/// `kill` and `stop` set the attention bit and then wake the thread, and a
/// wake finds nothing to do while the thread still runs. So a waiter that
/// only looked at the bit before storing BLOCKED could miss a request that
/// came in between and sleep forever. Here the bit is read after the store,
/// with the fences of `mark_current_blocked` and `unblock` between: either
/// this sees the request, or the requester's wake sees BLOCKED.
pub fn block_unless_asked_to_stop(me: &Thread, reason: WaitReason) -> bool {
    set_wait(me, reason);
    me.state.store(BLOCKED, Ordering::Release);
    core::sync::atomic::fence(Ordering::SeqCst);
    if me.attention.load(Ordering::Acquire) & (ATTENTION_KILL | ATTENTION_STOP) == 0 {
        return true;
    }
    // Undo the block, unless a waker made it READY (and queued it) first:
    // then the caller schedules as usual and runs again at once.
    me.state.compare_exchange(BLOCKED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err()
}

/// Direct switches the IPC fast path has made, on all CPUs.
pub fn fast_ipc_switches() -> u64 {
    CPUS.iter().map(|s| s.fast_switches.load(Ordering::Relaxed)).sum()
}

/// CR3 loads the IPC fast path made, on all CPUs.
pub fn fast_cr3_loads() -> u64 {
    CPUS.iter().map(|s| s.fast_cr3_loads.load(Ordering::Relaxed)).sum()
}

/// Loads of user x87/SSE state (lazy switches), on all CPUs.
pub fn fpu_loads() -> u64 {
    CPUS.iter().map(|s| s.fpu_loads.load(Ordering::Relaxed)).sum()
}

/// Whether a thread waits in this CPU's run queue (a hint, as below).
pub fn others_ready_here() -> bool {
    has_ready_thread(here().1)
}

/// Whether a thread waits in this CPU's run queue (a hint: never waits for the lock).
pub(super) fn has_ready_thread(s: &CpuSched) -> bool {
    s.queue.try_lock().is_some_and(|q| !q.is_empty())
}

/// Moves a blocked or parked thread to READY; false if it was neither.
pub(super) fn unblock(t: &Thread) -> bool {
    // Pairs with the fence in `mark_current_blocked`: whatever the waker
    // set before this (the wake-up condition) is seen by a waiter that
    // blocks after this reads its state.
    core::sync::atomic::fence(Ordering::SeqCst);
    t.state.compare_exchange(BLOCKED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok()
        || t.state.compare_exchange(PARKED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Makes a blocked (or parked) thread runnable again; returns false if it was not blocked.
pub fn wake(t: &Arc<Thread>) -> bool {
    if unblock(t) {
        enqueue(t.clone());
        true
    } else {
        false
    }
}

/// Gives the CPU to another ready thread of at least the same priority.
pub fn yield_now() {
    cpu::without_interrupts(schedule);
}

/// Ends the current thread with `reason`, waking whoever joins it.
pub fn exit_current(reason: UserExit) -> ! {
    cpu::disable_interrupts();
    lazyfpu::forget_current();
    let me = current();
    crate::ipc::abandon_client(&me);
    crate::reliable::on_exit(&me);
    if let Some(space) = me.space() {
        space.forget_thread(&me);
    }
    if me.counted_as_live_user.swap(false, Ordering::Relaxed) {
        LIVE_USER_THREADS.fetch_sub(1, Ordering::Relaxed);
    }
    let joiners = {
        let mut slot = me.exit.lock();
        slot.reason = Some(reason);
        me.state.store(EXITED, Ordering::Release);
        core::mem::take(&mut slot.joiners)
    };
    for j in &joiners {
        wake(j);
    }
    drop(joiners);
    // Whoever waits for it to stop waits for "stopped or exited".
    me.stop_waiters.wake(usize::MAX);
    drop(me);
    schedule();
    unreachable!("an exited thread was scheduled again");
}

/// Waits until `t` has exited and is off every CPU; returns its exit reason.
pub fn join(t: &Arc<Thread>) -> UserExit {
    join_unless_killed(t, false).expect("an uninterruptible join returned early")
}

/// How often (in ticks) `join_killed` sends its kill again.
const REKILL_TICKS: u64 = 5;

/// Waits until `t`, which the caller has asked to die, has exited; sends
/// the kill again every few ticks meanwhile. A kill can meet its target in
/// a window where its wake finds nothing to wake (the IPC fast path checks
/// a thread's attention before it parks, without a fence, to stay short),
/// and a destroy must never wait on such a thread forever.
pub fn join_killed(t: &Arc<Thread>) -> UserExit {
    loop {
        let was = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        let (done, clock) = {
            let mut slot = t.exit.lock();
            if t.state.load(Ordering::Acquire) == EXITED {
                (true, None)
            } else {
                let (cpu, s) = here();
                let me = current();
                set_wait(&me, WaitReason::Join);
                me.state.store(BLOCKED, Ordering::Release);
                slot.joiners.push(me.clone());
                // Also woken by the clock.
                let deadline = percpu::cpu(cpu).ticks.load(Ordering::Relaxed) + REKILL_TICKS;
                s.sleepers.lock().push((deadline, me));
                (false, Some(cpu))
            }
        };
        if let Some(cpu) = clock {
            schedule();
            // Woken by the exit before the clock: take the clock's entry
            // back, so it pins nothing (this thread's stack, when it exits).
            let me = current();
            CPUS[cpu].sleepers.lock().retain(|(_, s)| !Arc::ptr_eq(s, &me));
        }
        if was {
            cpu::enable_interrupts();
        }
        if done {
            break;
        }
        if !t.has_exited() {
            super::control::kill(t);
        }
    }
    while t.on_cpu.load(Ordering::Acquire) {
        cpu::pause();
    }
    t.exit.lock().reason.expect("exited thread without a reason")
}

/// Like `join`, but gives up (None) if the calling thread is killed while
/// it waits (with `interruptible`).
pub fn join_unless_killed(t: &Arc<Thread>, interruptible: bool) -> Option<UserExit> {
    loop {
        if interruptible && (current().kill_requested() || current().stop_requested()) {
            return None;
        }
        let was = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        // (exited, blocked): an interruptible join does not block while a
        // kill or stop is pending (the loop's head then ends it).
        let (done, blocked) = {
            let mut slot = t.exit.lock();
            if t.state.load(Ordering::Acquire) == EXITED {
                (true, false)
            } else {
                let me = current();
                let blocked = if interruptible {
                    block_unless_asked_to_stop(&me, WaitReason::Join)
                } else {
                    set_wait(&me, WaitReason::Join);
                    me.state.store(BLOCKED, Ordering::Release);
                    true
                };
                if blocked {
                    slot.joiners.push(me);
                }
                (false, blocked)
            }
        };
        if blocked {
            schedule();
        }
        if was {
            cpu::enable_interrupts();
        }
        if done {
            break;
        }
    }
    while t.on_cpu.load(Ordering::Acquire) {
        cpu::pause();
    }
    let reason = t.exit.lock().reason.expect("exited thread without a reason");
    Some(reason)
}

/// Timer tick or reschedule IPI on this CPU. `user_frame`: the interrupted
/// user registers, when it interrupted ring 3.
pub fn on_interrupt(user_frame: Option<u64>, is_tick: bool) {
    let from_user = user_frame.is_some();
    let (cpu, s) = here();
    if READY_CPUS.load(Ordering::Acquire) & (1 << cpu) == 0 {
        return;
    }
    if is_tick {
        let now = percpu::cpu(cpu).ticks.load(Ordering::Relaxed);
        let due: Vec<Arc<Thread>> = {
            let mut sl = s.sleepers.lock();
            let mut due = Vec::new();
            sl.retain(|(deadline, t)| {
                if *deadline <= now {
                    due.push(t.clone());
                    false
                } else {
                    true
                }
            });
            due
        };
        for t in due {
            wake(&t);
        }
        let left = s.slice_left.load(Ordering::Relaxed);
        if left <= 1 {
            s.need_resched.store(true, Ordering::Relaxed);
        } else {
            s.slice_left.store(left - 1, Ordering::Relaxed);
        }
    } else {
        s.need_resched.store(true, Ordering::Relaxed);
    }
    // SAFETY: owning CPU, interrupts off (interrupt context).
    let cur = unsafe { (*s.current.get()).clone() };
    let Some(cur) = cur else { return };
    if from_user && cur.kill_requested() {
        drop(cur);
        exit_current(UserExit::Killed);
    }
    let preemptible = from_user || is_idle(s, &cur);
    let must_move = !cur.allowed_on(cpu);
    let wants_stop = cur.stop_requested();
    let slice_over = is_tick && from_user && s.need_resched.load(Ordering::Relaxed);
    if slice_over && !cur.on_donation() {
        // CPU time is an event like any other: tell the thread's scheduler
        // port (one-way, never blocking) that it used up a time slice. (A
        // donor learns it from `donate` instead.)
        let port = cur.scheduler.lock().clone();
        if let Some(port) = port {
            let _ = crate::ipc::send(
                &port,
                [crate::object::keeper::KIND_CPU_TIME, cpu as u64, percpu::cpu(cpu).ticks.load(Ordering::Relaxed), 0, 0, 0],
            );
        }
    }
    drop(cur);
    if preemptible && (s.need_resched.load(Ordering::Relaxed) || must_move) {
        schedule();
    }
    if let Some(frame) = user_frame {
        if wants_stop || current().stop_requested() {
            stop_point(frame, FrameKind::Trap);
        }
    }
}
