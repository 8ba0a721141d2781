//! The `time` check: `sleep_until` never returns early, also across a stop;
//! a timed call gives up with `TimedOut` whether no server took the request
//! or one took it and sits on it; a reply that comes after the caller gave
//! up is dropped, never delivered to the caller's next call; and a thread
//! stopped in a timed call is exported with the time it has left.

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::ipc::{self, Payload};
use matryoshka_rt::object::{self as obj, Handle, ThreadState};
use matryoshka_rt::time::{self, MS};
use matryoshka_rt::{self as rt, nr, SysError};

/// A server that takes one request and never answers (it sleeps until killed).
extern "C" fn silent_server(ps: u64) -> ! {
    if ipc::reply_wait(Handle(ps), [0; 6]).is_err() {
        rt::exit(1);
    }
    let _ = time::sleep_until(u64::MAX);
    rt::exit(2)
}

/// The delays and reply markers of the two slow servers.
static SLOW: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Their portsets.
static SLOW_PS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Answers each request after `SLOW[2 * i]` ms with `SLOW[2 * i + 1]` in word 0.
extern "C" fn slow_server(i: u64) -> ! {
    let i = i as usize;
    let ps = Handle(SLOW_PS[i].load(Ordering::Relaxed));
    let mut reply = [0u64; 6];
    loop {
        if ipc::reply_wait(ps, reply).is_err() {
            rt::exit(1);
        }
        let _ = time::sleep_ns(SLOW[2 * i].load(Ordering::Relaxed) * MS);
        reply = [SLOW[2 * i + 1].load(Ordering::Relaxed), 0, 0, 0, 0, 0];
    }
}

static TIMED_PORT: AtomicU64 = AtomicU64::new(0);
static TIMED_RESULT: AtomicU64 = AtomicU64::new(0);
static TIMED_ELAPSED: AtomicU64 = AtomicU64::new(0);
static TIMED_CALLING: AtomicU64 = AtomicU64::new(0);

/// Makes one 300 ms timed call to `TIMED_PORT`; records the error code and
/// the time it took.
extern "C" fn timed_caller(_: u64) -> ! {
    let start = time::now_ns();
    let mut p = Payload { send: &[], handle: None, recv: &mut [] };
    TIMED_CALLING.store(1, Ordering::Release);
    let r = ipc::call_payload_timed(Handle(TIMED_PORT.load(Ordering::Relaxed)), [7; 6], &mut p, 300 * MS);
    TIMED_ELAPSED.store(time::now_ns() - start, Ordering::Relaxed);
    TIMED_RESULT.store(r.err().map_or(0, |e| e.code() as u64), Ordering::Relaxed);
    rt::exit(0)
}

static SLEEP_UNTIL: AtomicU64 = AtomicU64::new(0);
static WOKE_AT: AtomicU64 = AtomicU64::new(0);

extern "C" fn sleeper(_: u64) -> ! {
    let r = time::sleep_until(SLEEP_UNTIL.load(Ordering::Relaxed));
    WOKE_AT.store(time::now_ns(), Ordering::Relaxed);
    rt::exit(if r.is_ok() { 0 } else { 1 })
}

fn spawn(entry: extern "C" fn(u64) -> !, stack: usize, arg: u64) -> Result<Handle, &'static str> {
    obj::thread_create(obj::self_space(), entry, super::stack_top(stack), arg).map_err(|_| "thread_create")
}

/// Stops `t` and returns its exported state; `t` stays stopped.
fn stop_and_read(t: Handle) -> Result<ThreadState, &'static str> {
    obj::thread_stop(t).map_err(|_| "thread_stop")?;
    obj::thread_get_state(t).map_err(|_| "thread_get_state")
}

fn timed_call(port: Handle, timeout_ns: u64) -> (Result<[u64; 6], SysError>, u64) {
    let start = time::now_ns();
    let mut p = Payload { send: &[], handle: None, recv: &mut [] };
    let r = ipc::call_payload_timed(port, [1, 2, 3, 4, 5, 6], &mut p, timeout_ns).map(|(m, _)| m);
    (r, time::now_ns() - start)
}

pub fn check() -> Result<(), &'static str> {
    // The clock moves and a sleep is never short.
    let t0 = time::now_ns();
    time::sleep_until(t0 + 20 * MS).map_err(|_| "sleep_until failed")?;
    if time::now_ns() < t0 + 20 * MS {
        return Err("sleep_until returned before its deadline");
    }
    if time::sleep_until(0).is_err() || time::sleep_until(t0).is_err() {
        return Err("sleep_until a past deadline did not return at once with 0");
    }

    let handles = [ipc::portset_create(), ipc::portset_create(), ipc::portset_create(), ipc::portset_create()];
    let [Ok(nobody), Ok(silent), Ok(slow_a), Ok(slow_b)] = handles else { return Err("portset_create") };
    let port = |ps| ipc::port_create(ps, 0x71).map_err(|_| "port_create");
    let (p_nobody, p_silent, p_a, p_b) = (port(nobody)?, port(silent)?, port(slow_a)?, port(slow_b)?);

    // No server takes it: the request is withdrawn at the deadline.
    let (r, took) = timed_call(p_nobody, 20 * MS);
    if r != Err(SysError::TimedOut) || took < 20 * MS {
        return Err("a timed call nobody received did not time out after its timeout");
    }
    // A server takes it and never answers.
    let silent_t = spawn(silent_server, 0, silent.0)?;
    let (r, took) = timed_call(p_silent, 30 * MS);
    if r != Err(SysError::TimedOut) || took < 30 * MS {
        return Err("a timed call whose server sits on it did not time out after its timeout");
    }

    // A late reply is dropped: server A answers after 60 ms, the caller
    // gives up after 20 and calls B, which answers after 150 ms. A's reply
    // comes while the caller waits on B and must not end that call.
    SLOW[0].store(60, Ordering::Relaxed);
    SLOW[1].store(111, Ordering::Relaxed);
    SLOW[2].store(150, Ordering::Relaxed);
    SLOW[3].store(222, Ordering::Relaxed);
    SLOW_PS[0].store(slow_a.0, Ordering::Relaxed);
    SLOW_PS[1].store(slow_b.0, Ordering::Relaxed);
    let a = spawn(slow_server, 1, 0)?;
    let b = spawn(slow_server, 2, 1)?;
    let (r, _) = timed_call(p_a, 20 * MS);
    if r != Err(SysError::TimedOut) {
        return Err("a call to a server slower than its timeout did not time out");
    }
    match ipc::call(p_b, [0; 6]) {
        Ok(m) if m[0] == 222 => {}
        Ok(m) if m[0] == 111 => return Err("a reply to a call that timed out was delivered to the caller's next call"),
        _ => return Err("the call after a timed-out one did not get its own reply"),
    }
    SLOW[0].store(0, Ordering::Relaxed);
    match timed_call(p_a, 2000 * MS).0 {
        Ok(m) if m[0] == 111 => {}
        _ => return Err("a server whose earlier reply was dropped did not answer the next call"),
    }

    // Stopped in a timed call: exported about to make the call again, with
    // r14 = the time left; resumed, it times out after its 300 ms in all.
    TIMED_PORT.store(p_nobody.0, Ordering::Relaxed);
    TIMED_RESULT.store(u64::MAX, Ordering::Relaxed);
    TIMED_CALLING.store(0, Ordering::Relaxed);
    let caller = spawn(timed_caller, 3, 0)?;
    while TIMED_CALLING.load(Ordering::Acquire) == 0 {
        obj::yield_now();
    }
    let _ = time::sleep_ns(50 * MS);
    let s = stop_and_read(caller)?;
    let left = s.gpr[14];
    obj::thread_resume(caller).map_err(|_| "thread_resume")?;
    let _ = obj::thread_wait(caller, true);
    let _ = obj::close(caller);
    if s.gpr[ThreadState::RAX] != nr::IPC_CALL_BUF_TIMED || left >= 300 * MS {
        return Err("a thread stopped in a timed call was not exported as making it again with less time left");
    }
    if TIMED_RESULT.load(Ordering::Relaxed) != SysError::TimedOut.code() as u64 || TIMED_ELAPSED.load(Ordering::Relaxed) < 300 * MS {
        return Err("a timed call stopped and resumed did not time out after its whole timeout");
    }

    // A sleep stopped and resumed still ends at its deadline, not before.
    let deadline = time::now_ns() + 100 * MS;
    SLEEP_UNTIL.store(deadline, Ordering::Relaxed);
    WOKE_AT.store(0, Ordering::Relaxed);
    let sl = spawn(sleeper, 3, 0)?;
    let _ = time::sleep_ns(30 * MS);
    obj::thread_stop(sl).map_err(|_| "thread_stop")?;
    obj::thread_resume(sl).map_err(|_| "thread_resume")?;
    let status = obj::thread_wait(sl, true);
    let _ = obj::close(sl);
    if status != Ok(0) || WOKE_AT.load(Ordering::Relaxed) < deadline {
        return Err("a sleep stopped and resumed ended before its deadline");
    }

    for t in [silent_t, a, b] {
        let _ = obj::thread_kill(t);
        let _ = obj::thread_wait(t, true);
        let _ = obj::close(t);
    }
    for h in [p_nobody, p_silent, p_a, p_b, nobody, silent, slow_a, slow_b] {
        let _ = obj::close(h);
    }
    Ok(())
}
