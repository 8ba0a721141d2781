//! Regression checks for what hostile programs found (issue 10): each loops
//! its sequence long enough to have failed before the fix, so a kernel that
//! regresses panics or hangs here (and the boot matrix reports it).
//!
//! 1. A user copy racing with a revocation of its buffer on another CPU
//!    (the copy took a ring-0 page fault).
//! 2. `thread_stop` of a thread that exits or faults after the request
//!    (the caller waited forever).
//! 3. `space_destroy` of a space holding donation-only threads that were
//!    never donated to (the destroy waited forever).
//! 6. A kill that arrives as its target goes to sleep in `mutex_wait` (or
//!    `thread_wait`) was lost and the target slept forever (found by the
//!    fuzzer).
//! 5. `space_destroy` of a space that already died with an ancestor (found
//!    by the fuzzer: its page tables were freed a second time).
//! 4. Threads created and their handles closed until the kernel ran out of
//!    memory, then `space_destroy` (the kernel heap ran out inside the
//!    destroy and panicked): kernel-memory quotas stop the flood first.

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::ipc;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, Handle, ThreadState};
use matryoshka_rt::{self as rt, nr, SysError};

/// Where the revoked buffer is mapped, and its size.
const RACE_VA: u64 = 0x30_0000_0000;
const RACE_PAGES: u64 = 32;
/// The root memory the buffer's region is made of.
const RACE_BACKING: u64 = m::ROOT_ANONYMOUS_BASE + 0x100_0000;
/// Copies the copier makes (each of four kinds) while the revoker runs.
const RACE_ROUNDS: u64 = 6_000;

static STOP_REVOKING: AtomicU64 = AtomicU64::new(0);
static REVOCATIONS: AtomicU64 = AtomicU64::new(0);
static REGION: AtomicU64 = AtomicU64::new(0);
static COPIES_OK: AtomicU64 = AtomicU64::new(0);
static COPIES_REFUSED: AtomicU64 = AtomicU64::new(0);
static COPIER_TARGETS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Takes the buffer's memory away and gives it back, as fast as it can.
extern "C" fn revoker(_: u64) -> ! {
    let region = Handle(REGION.load(Ordering::Relaxed));
    while STOP_REVOKING.load(Ordering::Relaxed) == 0 {
        if m::region_protect(region, 0).is_err() || m::region_protect(region, m::READ | m::WRITE).is_err() {
            rt::exit(1);
        }
        REVOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
    rt::exit(0)
}

/// Counts one copying call's outcome; anything but success or BadPointer is wrong.
fn tally(raw: i64) -> bool {
    match rt::decode(raw) {
        Ok(_) => COPIES_OK.fetch_add(1, Ordering::Relaxed),
        Err(SysError::BadPointer) => COPIES_REFUSED.fetch_add(1, Ordering::Relaxed),
        Err(_) => return false,
    };
    true
}

/// Copies in and out of page-straddling pieces of the buffer with four
/// different calls (64 bytes to user, 224 from and to user, 664 to user).
extern "C" fn copier(_: u64) -> ! {
    let portset = COPIER_TARGETS[0].load(Ordering::Relaxed);
    let stopped = COPIER_TARGETS[1].load(Ordering::Relaxed);
    for round in 0..RACE_ROUNDS {
        let page = round % (RACE_PAGES - 1) + 1;
        let at = RACE_VA + page * 4096 - 128;
        // SAFETY: the kernel validates every pointer and length; these
        // calls only copy through `at` (which may be revoked: that is the test).
        let ok = unsafe {
            tally(rt::syscall2(nr::SYSTEM_INFO, at, 64))
                && tally(rt::syscall4(nr::PORTSET_PUT_MESSAGES, portset, at, 4, 0))
                && tally(rt::syscall4(nr::PORTSET_TAKE_MESSAGES, portset, at, 4, 0))
                && tally(rt::syscall4(nr::THREAD_GET_STATE, stopped, at, core::mem::size_of::<ThreadState>() as u64, 0))
        };
        if !ok {
            rt::exit(2);
        }
    }
    rt::exit(0)
}

fn copies_versus_revocation() -> Result<(), &'static str> {
    let me = obj::self_space();
    let cpus = obj::system_info().map_err(|_| "system_info")?.cpus;
    let region = m::region_create(me, RACE_BACKING, RACE_PAGES * 4096, m::READ | m::WRITE).map_err(|_| "region_create")?;
    let mapping = m::mapping_create(region, me, RACE_VA, 0, RACE_PAGES * 4096, m::READ | m::WRITE).map_err(|_| "mapping_create")?;
    let portset = ipc::portset_create().map_err(|_| "portset_create")?;
    let stopped = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
    REGION.store(region.0, Ordering::Relaxed);
    COPIER_TARGETS[0].store(portset.0, Ordering::Relaxed);
    COPIER_TARGETS[1].store(stopped.0, Ordering::Relaxed);
    for counter in [&STOP_REVOKING, &REVOCATIONS, &COPIES_OK, &COPIES_REFUSED] {
        counter.store(0, Ordering::Relaxed);
    }
    let copy_thread = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
    let mut s = obj::thread_get_state(copy_thread).map_err(|_| "thread_get_state")?;
    s.rip = copier as extern "C" fn(u64) -> ! as usize as u64;
    s.gpr[ThreadState::RSP] = super::stack_top(0) - 8;
    obj::thread_set_state(copy_thread, &s).map_err(|_| "thread_set_state")?;
    let revoke_thread = obj::thread_create(me, revoker, super::stack_top(1), 0).map_err(|_| "thread_create")?;
    if cpus >= 2 {
        obj::thread_set_affinity(copy_thread, 1).map_err(|_| "affinity")?;
        obj::thread_set_affinity(revoke_thread, 2).map_err(|_| "affinity")?;
    }
    obj::thread_resume(copy_thread).map_err(|_| "thread_resume")?;
    let copied = obj::thread_wait(copy_thread, true);
    STOP_REVOKING.store(1, Ordering::Relaxed);
    let revoked = obj::thread_wait(revoke_thread, true);
    for h in [copy_thread, revoke_thread, stopped, portset, mapping, region] {
        let _ = obj::close(h);
    }
    match copied {
        Ok(0) => {}
        Ok(2) => return Err("a copying call failed with something other than BadPointer"),
        _ => return Err("the copier did not finish"),
    }
    if revoked != Ok(0) {
        return Err("region_protect failed in the revoker");
    }
    let (ok, refused) = (COPIES_OK.load(Ordering::Relaxed), COPIES_REFUSED.load(Ordering::Relaxed));
    // On one CPU the two threads only take turns: there is no race to see.
    if cpus >= 2 && (ok == 0 || refused == 0) {
        rt::println!("init: {ok} copies succeeded and {refused} were refused");
        return Err("the copies never met a revoked page (or never a present one): the race was not run");
    }
    Ok(())
}

extern "C" fn exits_at_once(_: u64) -> ! {
    rt::exit(7)
}

extern "C" fn spins(_: u64) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// `thread_stop` returns (Ok, or Dead) however the target ends meanwhile.
fn stop_of_an_ending_thread() -> Result<(), &'static str> {
    let me = obj::self_space();
    for round in 0..150u64 {
        // A thread that exits at once, a thread that faults at once (rip 0).
        let t = if round % 2 == 0 {
            obj::thread_create(me, exits_at_once, super::stack_top(2), 0)
        } else {
            obj::thread_create_raw(me, 0, super::stack_top(2), 0)
        }
        .map_err(|_| "thread_create")?;
        match obj::thread_stop(t) {
            Ok(()) => {
                let _ = obj::thread_resume(t);
            }
            Err(SysError::Dead) => {}
            Err(_) => return Err("thread_stop of an ending thread failed oddly"),
        }
        let _ = obj::thread_wait(t, true);
        let _ = obj::close(t);
    }
    // Stop a running thread, point it at address 0, resume it, stop again.
    for _ in 0..30 {
        let t = obj::thread_create(me, spins, super::stack_top(2), 0).map_err(|_| "thread_create")?;
        obj::thread_stop(t).map_err(|_| "thread_stop of a spinning thread")?;
        let mut s = obj::thread_get_state(t).map_err(|_| "thread_get_state")?;
        s.rip = 0;
        obj::thread_set_state(t, &s).map_err(|_| "thread_set_state")?;
        obj::thread_resume(t).map_err(|_| "thread_resume")?;
        match obj::thread_stop(t) {
            Ok(()) | Err(SysError::Dead) => {}
            Err(_) => return Err("the second thread_stop failed oddly"),
        }
        let _ = obj::thread_kill(t);
        if obj::thread_wait(t, true) != Err(SysError::Dead) {
            return Err("a thread sent to address 0 did not end with a fault");
        }
        let _ = obj::close(t);
    }
    Ok(())
}

/// A child that receives forever on the portset handle it is given.
extern "C" fn receives_forever(portset: u64) -> ! {
    let _ = ipc::receive(Handle(portset));
    rt::exit(1)
}

/// `space_destroy` returns although the space holds donation-only threads
/// no scheduler ever donated to (runnable and stopped ones), next to a
/// blocked and a spinning thread.
fn destroy_with_donation_only_threads() -> Result<(), &'static str> {
    let me = obj::self_space();
    let scheduler_ps = ipc::portset_create().map_err(|_| "portset_create")?;
    let scheduler_port = ipc::port_create(scheduler_ps, 1).map_err(|_| "port_create")?;
    // Frames are not compared here: the kernel frees a thread's stack only
    // once its last handle is gone, and a CPU keeps the last x87/SSE user
    // alive; root_program's leak check covers the whole run instead.
    let mut result = Ok(());
    for _ in 0..12 {
        if let Err(e) = destroy_one_space_with_donation_only_threads(me, scheduler_port) {
            result = Err(e);
            break;
        }
        // Announcements of runnable workers pile up on the scheduler port: drain them.
        let mut queued = [ipc::Queued::default(); 32];
        while ipc::take_queued(scheduler_ps, &mut queued).is_ok_and(|n| n > 0) {}
    }
    let _ = obj::close(scheduler_port);
    let _ = obj::close(scheduler_ps);
    result
}

fn destroy_one_space_with_donation_only_threads(me: Handle, scheduler_port: Handle) -> Result<(), &'static str> {
    let child = obj::space_create(me).map_err(|_| "space_create")?;
    let stacks = m::ROOT_ANONYMOUS_BASE + 0xc0000;
    // SAFETY: the root's demand-zero memory, used by nothing else meanwhile.
    unsafe { core::ptr::write_volatile(stacks as *mut u64, 0) };
    super::equip_probe_space(child, stacks)?;
    let child_ps = ipc::portset_create().map_err(|_| "portset_create")?;
    let ps_in_child = obj::transfer(child, child_ps, obj::rights::ALL).map_err(|_| "transfer")?;
    let blocked =
        obj::thread_create(child, receives_forever, super::PROBE_STACK_VA + 2 * 4096, ps_in_child.0).map_err(|_| "thread_create")?;
    let spinning = obj::thread_create(child, spins, super::PROBE_STACK_VA + 4 * 4096, 0).map_err(|_| "thread_create")?;
    let mut donation_only = [Handle(0); 3];
    for (i, t) in donation_only.iter_mut().enumerate() {
        *t = obj::thread_create_stopped(child).map_err(|_| "thread_create_stopped")?;
        obj::thread_set_scheduler(*t, Some(scheduler_port)).map_err(|_| "thread_set_scheduler")?;
        obj::thread_set_donation_only(*t, true).map_err(|_| "thread_set_donation_only")?;
        // Two become runnable (and wait for a donor), one stays stopped.
        if i < 2 {
            obj::thread_resume(*t).map_err(|_| "thread_resume")?;
        }
    }
    obj::yield_now();
    let destroyed = obj::space_destroy(child);
    for h in donation_only.into_iter().chain([blocked, spinning, child_ps]) {
        let _ = obj::close(h);
    }
    destroyed.map_err(|_| "space_destroy failed")
}

/// Creates stopped threads in `space`, closing each handle, until the
/// kernel refuses; returns how many it made and the refusal.
fn flood_with_threads(space: Handle) -> (u64, Result<(), SysError>) {
    let mut made = 0;
    loop {
        match obj::thread_create_stopped(space) {
            Ok(t) => {
                let _ = obj::close(t);
                made += 1;
            }
            Err(e) => return (made, Err(e)),
        }
    }
}

/// The quota words of a space's state record: (limit, used).
fn quota_of(space: Handle) -> Result<(u64, u64), &'static str> {
    let s = obj::object_get_state(space).map_err(|_| "object_get_state of a space")?;
    Ok((s[4], s[5]))
}

fn quotas_stop_a_thread_flood() -> Result<(), &'static str> {
    let me = obj::self_space();
    if obj::space_set_quota(me, 0) != Err(SysError::InvalidArgument) {
        return Err("a space changed its own quota");
    }
    // A child with a limit of its own: the flood stops at the limit.
    let child = obj::space_create(me).map_err(|_| "space_create")?;
    const LIMIT: u64 = 256 * 1024;
    obj::space_set_quota(child, LIMIT).map_err(|_| "space_set_quota")?;
    let (made, end) = flood_with_threads(child);
    let (limit, used) = quota_of(child)?;
    let bounded = end == Err(SysError::NoMemory) && made > 0 && limit == LIMIT && used <= LIMIT && used > LIMIT / 2;
    obj::space_destroy(child).map_err(|_| "space_destroy of the limited child")?;
    if !bounded {
        rt::println!("init: {made} threads, then {end:?}; quota {used} of {limit} bytes");
        return Err("a space's quota did not bound its threads");
    }
    // No limit of its own: the root's quota stops the flood, long before the
    // kernel runs out of memory, and the destroy gives everything back.
    let (_, root_used_before) = quota_of(me)?;
    let child = obj::space_create(me).map_err(|_| "space_create")?;
    let (made, end) = flood_with_threads(child);
    if end != Err(SysError::NoMemory) || made < 100 {
        rt::println!("init: {made} threads, then {end:?}");
        return Err("the thread flood did not end in NoMemory");
    }
    obj::space_destroy(child).map_err(|_| "space_destroy after the flood")?;
    let (_, root_used_after) = quota_of(me)?;
    if root_used_after != root_used_before {
        rt::println!("init: root quota used {root_used_before} before the flood, {root_used_after} after");
        return Err("destroying the flooded space did not return its quota");
    }
    Ok(())
}

/// Destroying a space that died with its ancestor is `Dead`, and frees
/// nothing twice (the frames of both destroys come back exactly).
fn destroy_of_a_dead_space() -> Result<(), &'static str> {
    let me = obj::self_space();
    let before = super::free_frames()?;
    for _ in 0..50 {
        let child = obj::space_create(me).map_err(|_| "space_create")?;
        let grandchild = obj::space_create(child).map_err(|_| "space_create")?;
        let great = obj::space_create(grandchild).map_err(|_| "space_create")?;
        obj::space_destroy(child).map_err(|_| "space_destroy of the child")?;
        if obj::space_destroy(great) != Err(SysError::Dead) || obj::space_destroy(grandchild) != Err(SysError::Dead) {
            return Err("destroying a space that died with its ancestor was not Dead");
        }
        if obj::close(great) != Err(SysError::BadHandle) {
            return Err("space_destroy of a dead space left its handle open");
        }
    }
    if super::free_frames()? < before {
        return Err("destroying dead spaces lost frames");
    }
    Ok(())
}

fn tsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter (user mode may: CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

static SLEEP_WORD: AtomicU64 = AtomicU64::new(0);
static SLEEP_MUTEX: AtomicU64 = AtomicU64::new(0);

/// Sleeps in mutex_wait on a word that never changes, forever.
extern "C" fn sleeps_in_mutex_wait(_: u64) -> ! {
    let word = &SLEEP_WORD as *const AtomicU64 as u64;
    loop {
        // SAFETY: the word is this program's static; the kernel only reads it.
        let _ = unsafe { rt::syscall4(nr::MUTEX_WAIT, SLEEP_MUTEX.load(Ordering::Relaxed), word, 7, 0) };
    }
}

/// Kills threads as they go to sleep; each kill must end its thread.
fn kill_as_it_goes_to_sleep() -> Result<(), &'static str> {
    let me = obj::self_space();
    let info = obj::system_info().map_err(|_| "system_info")?;
    let (cpus, ticks_per_us) = (info.cpus, (info.tsc_hz / 1_000_000).max(1));
    SLEEP_WORD.store(7, Ordering::Relaxed);
    // SAFETY: mutex_create has no memory arguments.
    let m = Handle(rt::decode(unsafe { rt::syscall0(nr::MUTEX_CREATE) }).map_err(|_| "mutex_create")?);
    SLEEP_MUTEX.store(m.0, Ordering::Relaxed);
    let mut result = Ok(());
    for round in 0..400u64 {
        let t = obj::thread_create(me, sleeps_in_mutex_wait, super::stack_top(2), 0).map_err(|_| "thread_create")?;
        if cpus >= 2 {
            let _ = obj::thread_set_affinity(t, 2);
        }
        // Kill at a different moment each round: 0 to 400 µs after the
        // creation, which covers its start on the other CPU and its first
        // entries into mutex_wait.
        let delay = (round % 200) * 2 * ticks_per_us;
        let t0 = tsc();
        while tsc() - t0 < delay {
            core::hint::spin_loop();
        }
        let _ = obj::thread_kill(t);
        if obj::thread_wait(t, true) != Err(SysError::Dead) {
            result = Err("a killed thread did not end Dead");
        }
        let _ = obj::close(t);
        if result.is_err() {
            break;
        }
    }
    let _ = obj::close(m);
    result
}

pub fn check() -> Result<(), &'static str> {
    kill_as_it_goes_to_sleep()?;
    destroy_of_a_dead_space()?;
    copies_versus_revocation()?;
    stop_of_an_ending_thread()?;
    destroy_with_donation_only_threads()?;
    quotas_stop_a_thread_flood()
}
