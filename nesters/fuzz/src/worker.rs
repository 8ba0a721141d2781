//! The code that runs inside a cell: the worker, which makes random calls,
//! and its helpers, one-shot threads that make the calls that may block.
//!
//! Only the root's text and the cell's own slot are mapped here, so this
//! code touches no statics: everything lives in the slot's control block,
//! whose address the worker gets in rdi.
//!
//! A call that may block (an IPC without a partner, a wait on a word, a
//! connection) goes to a helper thread with a deadline of 30 µs to 30 ms;
//! the worker kills helpers that miss it and goes on, so blocking calls
//! never stall it and kills land on calls in flight all the time. Helpers
//! in one cell often complete each other's calls (a server and a client).

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use fuzzlib::gen::{reg, verdict, Call, Class, Effect, Script, MAX_STEPS};
use fuzzlib::pool::Entry;
use matryoshka_rt::{self as rt, nr, println};

use crate::layout::{state, Control, Helper, Mailbox, Private, Shared, HELPERS_PER_WORKER, IDLE, INFLIGHT_MAY_BLOCK, IN_CELL, RECENT};
use crate::sys;

/// An invariant broke; the worker has printed what happened.
struct Failed;

/// Entry of a worker thread; `control` is the cell address of its control block.
pub extern "C" fn worker_main(control: u64) -> ! {
    // SAFETY: the controller starts workers with the address of their
    // slot's control block, mapped for the cell's whole life and
    // initialized before this thread was created.
    let ctl = unsafe { &*(control as *const Control) };
    let sh = &ctl.shared;
    // SAFETY: only this thread touches the private part while it runs
    // (the controller writes it before starting the worker, and reads only
    // the shared part).
    let p = unsafe { &mut *ctl.private.get() };
    sh.state.store(state::RUNNING, Release);
    let result = run(sh, p, &ctl.mailboxes);
    let code = match result {
        Ok(()) => {
            sh.state.store(state::FINISHED, Release);
            0
        }
        Err(Failed) => {
            sh.state.store(state::FAILED, Release);
            1
        }
    };
    rt::exit(code)
}

type Mailboxes = [core::cell::UnsafeCell<Mailbox>; crate::layout::HELPER_SLOTS];

fn run(sh: &Shared, p: &mut Private, mailboxes: &Mailboxes) -> Result<(), Failed> {
    let env = p.env;
    while sh.calls.load(Relaxed) < p.budget && sh.stop.load(Relaxed) == 0 {
        reap_helpers(sh, p, mailboxes, false)?;
        let script = p.gen.next(&env, &mut p.staging);
        if script.steps[0].class == Class::Blocking {
            dispatch(sh, p, mailboxes, &script)?;
        } else {
            direct(sh, p, &script.steps[0])?;
        }
    }
    reap_helpers(sh, p, mailboxes, true)
}

fn note_inflight(sh: &Shared, nr_: u64, regs: &[u64; 8], may_block: bool) {
    for (slot, &v) in sh.inflight_regs.iter().zip(regs) {
        slot.store(v, Relaxed);
    }
    sh.inflight_class.store(if may_block { INFLIGHT_MAY_BLOCK } else { 0 }, Relaxed);
    sh.inflight_tsc.store(sys::tsc(), Relaxed);
    sh.inflight_nr.store(nr_, Release);
}

fn note_done(sh: &Shared, nr_: u64, rdi: u64, ret: i64) {
    sh.inflight_nr.store(IDLE, Release);
    let i = sh.recent_next.fetch_add(1, Relaxed) as usize % RECENT;
    sh.recent[i][0].store(nr_, Relaxed);
    sh.recent[i][1].store(rdi, Relaxed);
    sh.recent[i][2].store(ret as u64, Relaxed);
    sh.progress.fetch_add(1, Relaxed);
}

fn fail(sh: &Shared, p: &Private, call: &Call, regs: &[u64; 8], ret: i64, why: &str) -> Failed {
    println!(
        "fuzz: FAIL in cell {} (incarnation {}), random call {}: nr {} rdi {:#x} rsi {:#x} rdx {:#x} r10 {:#x} r8 {:#x} r9 {:#x} r12 {:#x} r13 {:#x} returned {ret}: {why}",
        p.cell,
        p.incarnation,
        sh.calls.load(Relaxed),
        call.nr,
        regs[0],
        regs[1],
        regs[2],
        regs[3],
        regs[4],
        regs[5],
        regs[6],
        regs[7]
    );
    if call.nr == nr::THREAD_SET_STATE && regs[1] == p.env.staging {
        let st = &p.staging;
        println!(
            "fuzz:   state record: version {:#x} rsp {:#x} rip {:#x} rflags {:#x} mxcsr {:#x}",
            st[0],
            st[8],
            st[17],
            st[18],
            st[22] & 0xffff_ffff
        );
    }
    print_recent(sh);
    Failed
}

/// The worker's last calls, oldest first.
pub fn print_recent(sh: &Shared) {
    let next = sh.recent_next.load(Relaxed) as usize;
    for k in 0..RECENT.min(next) {
        let i = (next - RECENT.min(next) + k) % RECENT;
        println!(
            "fuzz:   recent: nr {} rdi {:#x} -> {}",
            sh.recent[i][0].load(Relaxed),
            sh.recent[i][1].load(Relaxed),
            sh.recent[i][2].load(Relaxed) as i64
        );
    }
}

fn trace(p: &Private, what: &str, call: &Call, regs: &[u64; 8]) {
    if p.trace != 0 {
        println!(
            "fuzz: trace c{}.{} {what} nr {} [{:#x} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x}]",
            p.cell, p.incarnation, call.nr, regs[0], regs[1], regs[2], regs[3], regs[4], regs[5], regs[6], regs[7]
        );
    }
}

/// A call of the fuzzer's own machinery; its result is the caller's business.
fn support(sh: &Shared, n: u64, regs: [u64; 8], may_block: bool) -> i64 {
    note_inflight(sh, n, &regs, may_block);
    // SAFETY: the machinery's calls (thread_create of a helper, kill, wait,
    // close, duplicate) touch no memory of the worker's.
    let r = unsafe { sys::raw(n, regs) };
    sh.support_calls.fetch_add(1, Relaxed);
    note_done(sh, n, regs[0], r.ret);
    r.ret
}

fn direct(sh: &Shared, p: &mut Private, call: &Call) -> Result<(), Failed> {
    let mut regs = call.regs;
    if call.desc_in_r13 {
        p.desc = call.desc;
        regs[reg::R13] = p.desc.as_ptr() as u64;
    }
    trace(p, "call", call, &regs);
    note_inflight(sh, call.nr, &regs, false);
    // SAFETY: generated pointers name the scratch area, the staging area,
    // the descriptor, the read-only page or memory that is not the
    // worker's; the generator never makes `exit` (the worker is not meant
    // to die), and the worker's own memory cannot be revoked from here.
    let r = unsafe { sys::call(call.nr, regs, call.r14) };
    sh.calls.fetch_add(1, Relaxed);
    note_done(sh, call.nr, regs[0], r.ret);
    if p.trace != 0 {
        println!("fuzz: trace c{}.{} = {:#x}", p.cell, p.incarnation, r.ret);
    }
    if let Err(why) = verdict(call, r.ret) {
        return Err(fail(sh, p, call, &regs, r.ret, why));
    }
    if !r.canaries_intact || r.regs[reg::RDI] != regs[reg::RDI] || r.regs[reg::R13] != regs[reg::R13] {
        return Err(fail(
            sh,
            p,
            call,
            &regs,
            r.ret,
            "the kernel changed a register it must preserve (rdi, r13, r14 or r15; r14 is an input of ipc_call_buf_timed)",
        ));
    }
    if !sys::writes_message_registers(call.nr) && r.regs != regs {
        return Err(fail(sh, p, call, &regs, r.ret, "the kernel changed an argument register of a call that returns none"));
    }
    if call.nr == nr::TIME_NOW && r.ret >= 0 {
        p.gen.last_time = r.ret as u64;
    }
    if r.ret >= 0 {
        apply(sh, p, call, &regs, r.ret as u64)?;
    } else if let (Effect::Destroys { value, .. }, DEAD) = (call.effect, r.ret) {
        // Destroying a dead space closes the handle all the same.
        p.gen.pool.close(value);
    }
    Ok(())
}

const DEAD: i64 = -9;

/// Records what a successful call did to the handle table.
fn apply(sh: &Shared, p: &mut Private, call: &Call, regs: &[u64; 8], ret: u64) -> Result<(), Failed> {
    match call.effect {
        Effect::None => {}
        Effect::Creates { kind, flags, object, parent } => {
            if let Some(how) = p.gen.pool.reissued(ret) {
                let why = match how {
                    fuzzlib::pool::Reissue::Live => "the new handle has the value of a handle that is still open",
                    fuzzlib::pool::Reissue::Closed => "the new handle has the value of a closed handle (same generation)",
                };
                return Err(fail(sh, p, call, regs, ret as i64, why));
            }
            let mut flags = flags;
            if object == 0 && kind == fuzzlib::gen::kind::SPACE {
                // A new space: remember its parent for good (a destroy of an
                // ancestor kills it even after its handles are closed).
                if parent == 0 || !p.gen.pool.note_space(ret, parent) {
                    flags |= fuzzlib::pool::NO_ANCESTRY;
                }
            }
            keep(sh, p, Entry { value: ret, object: if object == 0 { ret } else { object }, parent, kind, flags });
        }
        Effect::CreatesAt { value, kind, flags, object, parent } => {
            p.gen.pool.forget_closed();
            keep(sh, p, Entry { value, object, parent, kind, flags });
        }
        Effect::Closes(v) => p.gen.pool.close(v),
        Effect::Destroys { value, object } => {
            p.gen.pool.kill_subtree(object);
            p.gen.pool.close(value);
        }
        Effect::Foreign => p.gen.pool.add_foreign(ret),
        Effect::ForgetClosed => p.gen.pool.forget_closed(),
    }
    Ok(())
}

/// Adds a handle to the pool, or closes it when the pool is full (so the
/// table stays small and the kernel's memory bounded).
fn keep(sh: &Shared, p: &mut Private, e: Entry) {
    if !p.gen.pool.add(e) {
        support(sh, nr::HANDLE_CLOSE, [e.value, 0, 0, 0, 0, 0, 0, 0], false);
    }
}

/// Hands a blocking script to a helper thread.
fn dispatch(sh: &Shared, p: &mut Private, mailboxes: &Mailboxes, script: &Script) -> Result<(), Failed> {
    let Some(free) = p.helpers.iter().position(|h| h.handle == 0) else {
        // Every helper is busy or still dying: the call is dropped (the
        // next one will likely be a direct one).
        return Ok(());
    };
    let slot = p.helper_set * HELPERS_PER_WORKER as u64 + free as u64;
    // SAFETY: no helper uses this slot (its last one was waited for), so
    // the worker is the only one touching the mailbox.
    let mb = unsafe { &mut *mailboxes[slot as usize].get() };
    mb.len = script.len as u64;
    for (i, c) in script.steps[..script.len].iter().enumerate() {
        mb.nr[i] = c.nr;
        mb.regs[i] = c.regs;
        mb.desc[i] = c.desc;
        mb.desc_in_r13[i] = c.desc_in_r13 as u64;
        mb.r14[i] = c.r14;
    }
    mb.started.store(0, Relaxed);
    mb.done.store(0, Relaxed);
    let mailbox = mb as *mut Mailbox as u64;
    for c in &script.steps[..script.len] {
        trace(p, "helper", c, &c.regs);
    }
    let entry = helper_main as extern "C" fn(u64) -> ! as usize as u64;
    let h = support(sh, nr::THREAD_CREATE, [p.self_space, entry, IN_CELL.helper_stack_top(slot), mailbox, 0, 0, 0, 0], false);
    if h <= 0 {
        // No thread (the kernel is out of memory, or the space is dying): skip the call.
        return Ok(());
    }
    let deadline_us = p.gen.rng.pick(&[30, 100, 300, 1000, 3000, 30_000]);
    p.helpers[free] = Helper { handle: h as u64, deadline: sys::tsc() + deadline_us * p.tsc_per_us, slot, dying_since: 0 };
    // Half the helpers are fair game for the fuzzed thread calls too.
    if p.gen.rng.chance(512) && !p.gen.pool.is_full() {
        let rights = p.gen.rng.next_u64() & fuzzlib::gen::ALL_RIGHTS;
        let dup = support(sh, nr::HANDLE_DUPLICATE, [h as u64, rights, 0, 0, 0, 0, 0, 0], false);
        if dup > 0 {
            keep(sh, p, Entry { value: dup as u64, object: h as u64, parent: 0, kind: fuzzlib::gen::kind::THREAD, flags: 0 });
        }
    }
    Ok(())
}

/// Kills helpers past their deadline or done with their script (all of
/// them with `all`), and frees the slots of killed helpers that are gone.
/// A killed thread needs its CPU once more to leave the kernel, which may
/// take a time slice, so the worker does not wait for it.
fn reap_helpers(sh: &Shared, p: &mut Private, mailboxes: &Mailboxes, all: bool) -> Result<(), Failed> {
    let now = sys::tsc();
    for i in 0..HELPERS_PER_WORKER {
        let h = p.helpers[i];
        if h.handle == 0 {
            continue;
        }
        if h.dying_since != 0 {
            if !all {
                collect_helper(sh, p, mailboxes, i, now)?;
            }
            continue;
        }
        // SAFETY: the helper only writes the mailbox's atomics; `len` was
        // written before it started.
        let (done, len) = unsafe { ((*mailboxes[h.slot as usize].get()).done.load(Acquire), (*mailboxes[h.slot as usize].get()).len) };
        if all || now >= h.deadline || done >= len {
            // A kill always ends a thread, a stopped or finished one too.
            support(sh, nr::THREAD_KILL, [h.handle, 0, 0, 0, 0, 0, 0, 0], false);
            p.helpers[i].dying_since = now.max(1);
        }
    }
    Ok(())
}

/// Frees helper `i`'s slot once the killed helper is gone (its stack and
/// mailbox can then be reused) and checks the results it got; a killed
/// thread that lives on for the watchdog's time is a kernel hang.
fn collect_helper(sh: &Shared, p: &mut Private, mailboxes: &Mailboxes, i: usize, now: u64) -> Result<(), Failed> {
    let h = p.helpers[i];
    let status = support(sh, nr::THREAD_WAIT, [h.handle, 0, 0, 0, 0, 0, 0, 0], false);
    if status == WOULD_BLOCK {
        if now - h.dying_since > p.watchdog_ticks {
            let call = Call {
                nr: nr::THREAD_KILL,
                regs: [h.handle, 0, 0, 0, 0, 0, 0, 0],
                desc: [0; 8],
                desc_in_r13: false,
                r14: 0,
                class: Class::Direct,
                check: fuzzlib::gen::Check::Any,
                effect: Effect::None,
            };
            return Err(fail(sh, p, &call, &call.regs, status, "a killed helper thread is still running after the watchdog's time"));
        }
        return Ok(());
    }
    support(sh, nr::HANDLE_CLOSE, [h.handle, 0, 0, 0, 0, 0, 0, 0], false);
    p.helpers[i].handle = 0;
    // SAFETY: the helper is gone; nothing else writes its mailbox.
    let mb = unsafe { &*mailboxes[h.slot as usize].get() };
    let started = mb.started.load(Acquire).min(MAX_STEPS as u64);
    let done = mb.done.load(Acquire).min(started);
    sh.calls.fetch_add(started, Relaxed);
    for s in 0..done as usize {
        let ret = mb.results[s].load(Relaxed) as i64;
        let undefined =
            if mb.nr[s] == nr::IPC_CLIENT_WAITING { !(0..=1).contains(&ret) } else { !fuzzlib::gen::defined_error(mb.nr[s], ret) };
        if undefined {
            let call = Call {
                nr: mb.nr[s],
                regs: mb.regs[s],
                desc: mb.desc[s],
                desc_in_r13: mb.desc_in_r13[s] != 0,
                r14: mb.r14[s],
                class: Class::Blocking,
                check: fuzzlib::gen::Check::Any,
                effect: Effect::None,
            };
            return Err(fail(sh, p, &call, &mb.regs[s], ret, "a helper's call returned a value or error code the ABI does not define"));
        }
    }
    Ok(())
}

const WOULD_BLOCK: i64 = -10;

/// Entry of a helper thread: runs the script in its mailbox, then exits.
pub extern "C" fn helper_main(mailbox: u64) -> ! {
    let mb = mailbox as *const Mailbox;
    // SAFETY: the worker filled the mailbox before creating this thread and
    // does not touch it again until this thread is gone; the kernel writes
    // the descriptors' result words while a call runs, so everything is
    // read through raw pointers, one value at a time.
    unsafe {
        let len = core::ptr::addr_of!((*mb).len).read_volatile().min(MAX_STEPS as u64) as usize;
        for i in 0..len {
            let n = core::ptr::addr_of!((*mb).nr[i]).read_volatile();
            let mut regs = core::ptr::addr_of!((*mb).regs[i]).read_volatile();
            if core::ptr::addr_of!((*mb).desc_in_r13[i]).read_volatile() != 0 {
                regs[reg::R13] = core::ptr::addr_of!((*mb).desc[i]) as u64;
            }
            let r14 = core::ptr::addr_of!((*mb).r14[i]).read_volatile();
            (*mb).started.store(i as u64 + 1, Release);
            // SAFETY: as for the worker's direct calls; a helper is meant to die.
            let r = sys::call(n, regs, r14);
            (*mb).results[i].store(r.ret as u64, Relaxed);
            (*mb).done.store(i as u64 + 1, Release);
        }
    }
    rt::exit(0)
}
