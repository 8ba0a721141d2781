//! The `cpu donation` check: donation-only threads run exactly when their
//! user-level scheduler (here, init's main thread) donates its own CPU time,
//! and `thread_donate` reports how each donation ended: a used-up slice, a
//! block (announced again on the scheduler port when it becomes runnable),
//! an exit — plus the documented errors.

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::ipc;
use matryoshka_rt::object::{self as obj, DonationEnd, Handle, ThreadState, KIND_RUNNABLE};
use matryoshka_rt::{self as rt, SysError};

static RUNS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static GO_ON: AtomicU64 = AtomicU64::new(0);
static WAKE_PS: AtomicU64 = AtomicU64::new(0);

/// Worker 0: counts a run, computes until told to go on (only a used-up
/// slice can end that donation), blocks in a one-way receive, counts again
/// and exits.
extern "C" fn worker(i: u64) -> ! {
    RUNS[i as usize].fetch_add(1, Ordering::Relaxed);
    while GO_ON.load(Ordering::Relaxed) == 0 {
        core::hint::spin_loop();
    }
    if ipc::receive(Handle(WAKE_PS.load(Ordering::Relaxed))).is_err() {
        rt::exit(1);
    }
    RUNS[i as usize].fetch_add(1, Ordering::Relaxed);
    rt::exit(0)
}

/// Waits for the next "runnable" announcement; returns the alias (worker).
fn next_runnable(ps: Handle) -> Result<u64, &'static str> {
    let (alias, m) = ipc::receive(ps).map_err(|_| "receive on the scheduler portset")?;
    if m[0] != KIND_RUNNABLE {
        return Err("the scheduler port got something other than a runnable announcement");
    }
    Ok(alias)
}

pub fn check() -> Result<(), &'static str> {
    let me = obj::self_space();
    RUNS.iter().for_each(|r| r.store(0, Ordering::Relaxed));
    GO_ON.store(0, Ordering::Relaxed);
    let sched_ps = ipc::portset_create().map_err(|_| "portset_create")?;
    let wake_ps = ipc::portset_create().map_err(|_| "portset_create")?;
    let wake_port = ipc::port_create(wake_ps, 0).map_err(|_| "port_create")?;
    WAKE_PS.store(wake_ps.0, Ordering::Relaxed);
    let mut workers = [Handle(0); 2];
    let mut ports = [Handle(0); 2];
    for i in 0..2 {
        let t = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
        let mut s = obj::thread_get_state(t).map_err(|_| "thread_get_state")?;
        s.rip = worker as extern "C" fn(u64) -> ! as usize as u64;
        s.gpr[ThreadState::RSP] = super::stack_top(i) - 8;
        s.gpr[ThreadState::RDI] = i as u64;
        obj::thread_set_state(t, &s).map_err(|_| "thread_set_state")?;
        ports[i] = ipc::port_create(sched_ps, i as u64).map_err(|_| "port_create")?;
        obj::thread_set_scheduler(t, Some(ports[i])).map_err(|_| "thread_set_scheduler")?;
        obj::thread_set_donation_only(t, true).map_err(|_| "thread_set_donation_only")?;
        obj::thread_resume(t).map_err(|_| "thread_resume")?;
        workers[i] = t;
    }
    let result = schedule(sched_ps, workers, wake_port);
    for t in workers {
        let _ = obj::thread_kill(t);
        let _ = obj::thread_wait(t, true);
    }
    for h in workers.into_iter().chain(ports).chain([wake_port, wake_ps, sched_ps]) {
        let _ = obj::close(h);
    }
    result
}

fn schedule(sched_ps: Handle, workers: [Handle; 2], wake_port: Handle) -> Result<(), &'static str> {
    // Both were announced when resumed, and neither has run on its own.
    let mut announced = [next_runnable(sched_ps)?, next_runnable(sched_ps)?];
    announced.sort_unstable();
    for _ in 0..20 {
        obj::yield_now();
    }
    if announced != [0, 1] || RUNS[0].load(Ordering::Relaxed) != 0 || RUNS[1].load(Ordering::Relaxed) != 0 {
        return Err("donation-only threads were not announced, or ran without a donation");
    }
    let w = workers[0];
    // It computes until told otherwise: only its time slice ends this.
    if obj::thread_donate(w) != Ok(DonationEnd::Runnable) || RUNS[0].load(Ordering::Relaxed) != 1 {
        return Err("a donation to a computing thread did not end with its time slice");
    }
    GO_ON.store(1, Ordering::Relaxed);
    // Now it blocks in a receive.
    if obj::thread_donate(w) != Ok(DonationEnd::Blocked) {
        return Err("a donation to a thread that blocks did not end when it blocked");
    }
    if obj::thread_donate(w) != Err(SysError::WouldBlock) {
        return Err("a donation to a blocked thread was accepted");
    }
    // Waking it announces it again; the next donation runs it to its exit.
    ipc::send(wake_port, [1; 6]).map_err(|_| "send")?;
    if next_runnable(sched_ps)? != 0 {
        return Err("the woken thread was not announced on its own port");
    }
    if obj::thread_donate(w) != Ok(DonationEnd::Exited) || RUNS[0].load(Ordering::Relaxed) != 2 {
        return Err("a donation to a thread that exits did not end with its exit");
    }
    if obj::thread_donate(w) != Err(SysError::Dead) {
        return Err("a donation to an exited thread was accepted");
    }
    // Misuse: a thread the kernel schedules.
    obj::thread_set_donation_only(workers[1], false).map_err(|_| "thread_set_donation_only")?;
    if obj::thread_donate(workers[1]) != Err(SysError::InvalidArgument) {
        return Err("a donation to a kernel-scheduled thread was accepted");
    }
    // Released to the run queues, the other worker now runs on its own.
    for _ in 0..200 {
        if RUNS[1].load(Ordering::Relaxed) != 0 {
            return Ok(());
        }
        obj::yield_now();
    }
    Err("a thread taken off donation-only did not run on its own")
}
