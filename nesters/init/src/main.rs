//! init: the root user program. The kernel loads it from the boot module
//! named `init` and runs it in ring 3. For now it checks the system call ABI
//! from a real Rust program and exits 0 when every check passed, or with the
//! number of the first failed check.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::object::{self as obj, rights, types, Handle, Record};
use matryoshka_rt::{self as rt, println, SysError};

mod connection;
mod donation;
mod faultsweep;
mod fpu;
mod payload;
mod regressions;
#[cfg(target_os = "none")]
mod system;
mod timing;

extern crate alloc;

#[cfg(target_os = "none")]
rt::entry!(init_main);

/// A kernel address (the kernel image): never readable from ring 3.
const KERNEL_ADDRESS: u64 = 0xffff_ffff_8020_0000;

/// In .data: must arrive with its initial value and be writable.
static DATA_WORD: AtomicU64 = AtomicU64::new(0x5eed_0000_0000_0001);
/// In .bss: must arrive zeroed and be writable.
static BSS_WORD: AtomicU64 = AtomicU64::new(0);

/// One self-check: `Err` says what went wrong.
type Check = fn() -> Result<(), &'static str>;

/// init's heap: 256 MiB of its demand-zero memory, above what the checks use.
const HEAP_BASE: u64 = rt::memory::ROOT_ANONYMOUS_BASE + (512 << 20);

fn init_main() -> i32 {
    // SAFETY: this range of the root's demand-zero memory is used for nothing else.
    unsafe { rt::heap::init(HEAP_BASE, 256 << 20) };
    if obj::start_flags() & 1 != 0 {
        return bench::run();
    }
    if obj::start_flags() & 4 != 0 {
        return stress::run();
    }
    #[cfg(target_os = "none")]
    if obj::start_flags() & 32 != 0 {
        return system::run();
    }
    println!("init: hello from the root program");
    let checks: [(&str, Check); 37] = [
        ("data and bss", data_and_bss),
        ("null call", null_call),
        ("console write", console_write),
        ("kernel pointer", kernel_pointer),
        ("oversized write", oversized_write),
        ("unknown call", unknown_call),
        ("own space handle", own_space_handle),
        ("space tree", space_tree),
        ("handle errors", handle_errors),
        ("threads", threads),
        ("faulting child thread", faulting_child_thread),
        ("mutex under contention", mutex_contention),
        ("condition variable", condition_variable),
        ("ipc same cpu", ipc_same_cpu),
        ("ipc cross cpu", ipc_cross_cpu),
        ("ipc errors", ipc_errors),
        ("ipc ping-pong shares its cpu", ipc_pingpong_shares_cpu),
        ("time: sleeps, timed calls, late replies dropped, stops keep the time left", timing::check),
        ("nested mappings and revocation", nested_mappings),
        ("region_discard: frames back, zeros everywhere, stale entries gone", region_discard),
        ("user-level pager and exception keeper", keepers),
        ("checkpoint and restart of threads", checkpoint_restart),
        ("border control", border_control),
        ("state encapsulation: freeze, export, destroy, rebuild, resume", state_encapsulation),
        ("one-way ipc across cpus", oneway_ipc),
        ("heap", heap),
        ("object state export", object_state),
        ("boot modules", boot_modules),
        ("references", references),
        ("cpu time as ipc to a scheduler port", scheduler_port),
        ("hostile arguments", hostile_arguments),
        ("x87/SSE state: lazy switching, migration, get/set_state, none on IPC", fpu::check),
        ("ipc payloads: bytes and capabilities both ways", payload::check),
        ("reliable ipc: connections, exactly once, rebuilt mid-stream", connection::check),
        ("cpu donation to a user-level scheduler's threads", donation::check),
        ("regressions: copies vs revocation, stop vs exit, destroy vs donation, thread flood vs quota", regressions::check),
        ("fault injection: every allocation point of a scenario fails once", faultsweep::check),
    ];
    let tsc_hz = obj::system_info().map(|i| i.tsc_hz).unwrap_or(0).max(1);
    for (i, (name, check)) in checks.iter().enumerate() {
        // SAFETY: rdtsc is allowed in ring 3.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        if let Err(why) = check() {
            println!("init: check {} ({name}) failed: {why}", i + 1);
            return i as i32 + 1;
        }
        // SAFETY: as above.
        let ms = (unsafe { core::arch::x86_64::_rdtsc() } - t0) * 1000 / tsc_hz;
        println!("init: ok {:2} {name} ({ms} ms)", i + 1);
    }
    println!("init: all checks passed");
    0
}

fn data_and_bss() -> Result<(), &'static str> {
    if DATA_WORD.load(Ordering::Relaxed) != 0x5eed_0000_0000_0001 {
        return Err(".data does not hold its initial value");
    }
    if BSS_WORD.load(Ordering::Relaxed) != 0 {
        return Err(".bss is not zeroed");
    }
    DATA_WORD.fetch_add(1, Ordering::Relaxed);
    BSS_WORD.fetch_add(1, Ordering::Relaxed);
    if DATA_WORD.load(Ordering::Relaxed) != 0x5eed_0000_0000_0002 || BSS_WORD.load(Ordering::Relaxed) != 1 {
        return Err("writes to .data/.bss did not stick");
    }
    Ok(())
}

fn null_call() -> Result<(), &'static str> {
    match rt::null() {
        Ok(0) => Ok(()),
        _ => Err("SYS_NULL did not return 0"),
    }
}

fn console_write() -> Result<(), &'static str> {
    let text = b"init: console write returned its length";
    match rt::console_write(text) {
        Ok(n) if n == text.len() => Ok(()),
        _ => Err("SYS_CONSOLE_WRITE did not return the length written"),
    }
}

fn kernel_pointer() -> Result<(), &'static str> {
    match rt::console_write_raw(KERNEL_ADDRESS, 8) {
        Err(SysError::BadPointer) => Ok(()),
        _ => Err("a write from a kernel address was not refused with BadPointer"),
    }
}

fn oversized_write() -> Result<(), &'static str> {
    let big = [b'x'; rt::CONSOLE_WRITE_MAX + 44];
    match rt::console_write(&big) {
        Err(SysError::BadSize) => Ok(()),
        _ => Err("a 300-byte write was not refused with BadSize"),
    }
}

fn unknown_call() -> Result<(), &'static str> {
    // SAFETY: an unassigned number has no effect.
    match rt::decode(unsafe { rt::syscall0(0x7777) }) {
        Err(SysError::NoSuchCall) => Ok(()),
        _ => Err("system call 0x7777 did not fail with NoSuchCall"),
    }
}

fn free_frames() -> Result<u64, &'static str> {
    obj::system_info().map(|i| i.free_frames).map_err(|_| "system_info failed")
}

fn own_space_handle() -> Result<(), &'static str> {
    let (ty, r) = obj::info(obj::self_space()).map_err(|_| "no handle to the own space in rdi")?;
    if ty != types::SPACE {
        return Err("the own-space handle is not a space");
    }
    if r & rights::DESTROY != 0 || r & rights::CREATE == 0 {
        return Err("the own-space handle should have CREATE but not DESTROY");
    }
    Ok(())
}

fn space_tree() -> Result<(), &'static str> {
    let before = free_frames()?;
    let child = obj::space_create(obj::self_space()).map_err(|_| "space_create(self) failed")?;
    let grandchild = obj::space_create(child).map_err(|_| "space_create(child) failed")?;
    let mut records = [Record::default(); 16];
    let n = obj::space_enumerate(obj::self_space(), &mut records).map_err(|_| "enumerate(self) failed")?;
    let listed = &records[..n.min(16)];
    if !listed.iter().any(|r| r.handle == child.0 && r.object_type == types::SPACE && r.rights == rights::ALL)
        || !listed.iter().any(|r| r.handle == grandchild.0 && r.object_type == types::SPACE)
    {
        return Err("enumerate(self) does not list the new spaces with their types and rights");
    }
    if obj::space_enumerate(child, &mut records) != Ok(0) {
        return Err("a new space's handle table is not empty");
    }
    obj::space_destroy(child).map_err(|_| "space_destroy(child) failed")?;
    if obj::info(child) != Err(SysError::BadHandle) {
        return Err("the destroyed space's handle is still open");
    }
    if obj::space_create(grandchild) != Err(SysError::Dead) {
        return Err("the grandchild survived its parent's destruction");
    }
    obj::close(grandchild).map_err(|_| "closing the dead grandchild's handle failed")?;
    let after = free_frames()?;
    // More free frames after is no leak: a destroy also frees the kernel
    // stacks of threads that ended earlier (their last handle is gone).
    if after < before {
        println!("init: free frames {before} before the space tree, {after} after");
        return Err("destroying the space tree did not return every frame");
    }
    Ok(())
}

fn handle_errors() -> Result<(), &'static str> {
    let me = obj::self_space();
    if obj::close(Handle(0)) != Err(SysError::BadHandle) || obj::info(Handle(0xdead_beef_0000_0001)) != Err(SysError::BadHandle) {
        return Err("forged handles are not refused with BadHandle");
    }
    if obj::duplicate(me, rights::ALL) != Err(SysError::MissingRights) {
        return Err("duplicating with more rights than the handle has was allowed");
    }
    if obj::duplicate(me, 1 << 30) != Err(SysError::InvalidArgument) {
        return Err("unknown right bits were accepted");
    }
    if obj::space_destroy(me) != Err(SysError::MissingRights) {
        return Err("the root destroyed its own space");
    }
    let child = obj::space_create(me).map_err(|_| "space_create failed")?;
    let weak = obj::duplicate(child, rights::GET_STATE).map_err(|_| "duplicate failed")?;
    if obj::space_destroy(weak) != Err(SysError::MissingRights) {
        return Err("a handle without DESTROY destroyed a space");
    }
    if obj::thread_wait(child, false) != Err(SysError::WrongType) {
        return Err("a space handle was accepted as a thread");
    }
    let mut records = [Record::default(); 1];
    // SAFETY: a raw call with a kernel address as the buffer: the kernel must refuse it.
    let raw = unsafe { rt::syscall4(rt::nr::SPACE_ENUMERATE, me.0, KERNEL_ADDRESS, 1, 0) };
    if rt::decode(raw) != Err(SysError::BadPointer) {
        return Err("space_enumerate wrote to a kernel address");
    }
    let _ = obj::space_enumerate(me, &mut records);
    obj::close(weak).map_err(|_| "close failed")?;
    obj::space_destroy(child).map_err(|_| "space_destroy failed")?;
    Ok(())
}

const WORKERS: usize = 4;
const STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stacks([[u8; STACK_BYTES]; WORKERS]);
static mut STACKS: Stacks = Stacks([[0; STACK_BYTES]; WORKERS]);
static SUM: AtomicU64 = AtomicU64::new(0);

extern "C" fn worker(arg: u64) -> ! {
    SUM.fetch_add(arg, Ordering::Relaxed);
    for _ in 0..arg {
        obj::yield_now();
    }
    rt::exit(arg * 10)
}

extern "C" fn spinner(_: u64) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

fn stack_top(i: usize) -> u64 {
    // SAFETY: only the address is taken; each thread gets its own stack.
    unsafe { core::ptr::addr_of!(STACKS.0[i]) as u64 + STACK_BYTES as u64 }
}

fn threads() -> Result<(), &'static str> {
    let me = obj::self_space();
    let mut handles = [Handle(0); WORKERS];
    for (i, h) in handles.iter_mut().enumerate() {
        *h = obj::thread_create(me, worker, stack_top(i), i as u64 + 1).map_err(|_| "thread_create failed")?;
    }
    for (i, h) in handles.iter().enumerate() {
        if obj::thread_wait(*h, true) != Ok((i as u64 + 1) * 10) {
            return Err("a worker thread did not exit with its code");
        }
        obj::close(*h).map_err(|_| "closing a thread handle failed")?;
    }
    if SUM.load(Ordering::Relaxed) != (1..=WORKERS as u64).sum::<u64>() {
        return Err("the workers' sum is wrong");
    }
    let spin = obj::thread_create(me, spinner, stack_top(0), 0).map_err(|_| "thread_create(spinner) failed")?;
    if obj::thread_wait(spin, false) != Err(SysError::WouldBlock) {
        return Err("a running thread did not report WouldBlock");
    }
    obj::thread_kill(spin).map_err(|_| "thread_kill failed")?;
    if obj::thread_wait(spin, true) != Err(SysError::Dead) {
        return Err("a killed thread did not report Dead");
    }
    obj::close(spin).map_err(|_| "close failed")?;
    Ok(())
}

fn faulting_child_thread() -> Result<(), &'static str> {
    let before = free_frames()?;
    let child = obj::space_create(obj::self_space()).map_err(|_| "space_create failed")?;
    // Nothing is mapped in the new space: the thread faults on its first instruction.
    let t = obj::thread_create_raw(child, 0x40_0000, 0x7fff_0000, 0).map_err(|_| "thread_create in the child failed")?;
    if obj::thread_wait(t, true) != Err(SysError::Dead) {
        return Err("a thread faulting in an empty space was not reported Dead to its parent");
    }
    obj::close(t).map_err(|_| "close failed")?;
    obj::space_destroy(child).map_err(|_| "space_destroy failed")?;
    let after = free_frames()?;
    // More free frames after is no leak: a destroy also frees the kernel
    // stacks of threads that ended earlier (their last handle is gone).
    if after < before {
        println!("init: free frames {before} before the faulting child, {after} after");
        return Err("the child space leaked frames");
    }
    Ok(())
}

const ROUNDS: u64 = 3000;

struct Shared {
    mutex: Option<rt::sync::Mutex<u64>>,
    cond: Option<rt::sync::Cond>,
}

struct SharedCell(core::cell::UnsafeCell<Shared>);
// SAFETY: written only by the main thread before it starts the workers.
unsafe impl Sync for SharedCell {}
static SHARED: SharedCell = SharedCell(core::cell::UnsafeCell::new(Shared { mutex: None, cond: None }));

fn shared() -> &'static Shared {
    // SAFETY: see SharedCell.
    unsafe { &*SHARED.0.get() }
}

extern "C" fn contender(_: u64) -> ! {
    let m = shared().mutex.as_ref().expect("mutex set up");
    for _ in 0..ROUNDS {
        let mut g = m.lock();
        // A non-atomic read-modify-write with a yield in the middle: lost
        // updates would show if two threads held the lock at once.
        let v = *g;
        if v.is_multiple_of(64) {
            obj::yield_now();
        }
        *g = v + 1;
    }
    rt::exit(0)
}

fn run_workers(entry: extern "C" fn(u64) -> !, n: usize) -> Result<(), &'static str> {
    let mut handles = [Handle(0); WORKERS];
    for (i, h) in handles.iter_mut().enumerate().take(n) {
        *h = obj::thread_create(obj::self_space(), entry, stack_top(i), i as u64).map_err(|_| "thread_create failed")?;
    }
    for h in handles.iter().take(n) {
        if obj::thread_wait(*h, true) != Ok(0) {
            return Err("a worker did not exit cleanly");
        }
        let _ = obj::close(*h);
    }
    Ok(())
}

fn mutex_contention() -> Result<(), &'static str> {
    // SAFETY: no worker runs yet (see SharedCell).
    unsafe { (*SHARED.0.get()).mutex = Some(rt::sync::Mutex::new(0).map_err(|_| "mutex_create failed")?) };
    run_workers(contender, WORKERS)?;
    let total = *shared().mutex.as_ref().ok_or("no mutex")?.lock();
    if total != ROUNDS * WORKERS as u64 {
        println!("init: counter {total}, expected {}", ROUNDS * WORKERS as u64);
        return Err("updates under the mutex were lost");
    }
    Ok(())
}

static TAKEN: AtomicU64 = AtomicU64::new(0);

/// Consumers wait on the condition until an item is available.
extern "C" fn consumer(_: u64) -> ! {
    let s = shared();
    let (m, c) = (s.mutex.as_ref().expect("mutex"), s.cond.as_ref().expect("cond"));
    for _ in 0..ROUNDS / 10 {
        let mut g = m.lock();
        while *g == 0 {
            g = c.wait(g);
        }
        *g -= 1;
        TAKEN.fetch_add(1, Ordering::Relaxed);
    }
    rt::exit(0)
}

fn condition_variable() -> Result<(), &'static str> {
    // SAFETY: no worker runs yet (see SharedCell).
    unsafe {
        (*SHARED.0.get()).mutex = Some(rt::sync::Mutex::new(0).map_err(|_| "mutex_create failed")?);
        (*SHARED.0.get()).cond = Some(rt::sync::Cond::new().map_err(|_| "cond_create failed")?);
    }
    let consumers = WORKERS - 1;
    let mut handles = [Handle(0); WORKERS];
    for (i, h) in handles.iter_mut().enumerate().take(consumers) {
        *h = obj::thread_create(obj::self_space(), consumer, stack_top(i), 0).map_err(|_| "thread_create failed")?;
    }
    let s = shared();
    let (m, c) = (s.mutex.as_ref().ok_or("mutex")?, s.cond.as_ref().ok_or("cond")?);
    for i in 0..(ROUNDS / 10) * consumers as u64 {
        *m.lock() += 1;
        if i % 3 == 0 {
            c.notify_all()
        } else {
            c.notify_one()
        }
        if i % 16 == 0 {
            obj::yield_now();
        }
    }
    for h in handles.iter().take(consumers) {
        if obj::thread_wait(*h, true) != Ok(0) {
            return Err("a consumer did not finish (lost wake-up?)");
        }
        let _ = obj::close(*h);
    }
    if TAKEN.load(Ordering::Relaxed) != (ROUNDS / 10) * consumers as u64 || *m.lock() != 0 {
        return Err("produced and consumed counts differ");
    }
    Ok(())
}

static PORTSET: AtomicU64 = AtomicU64::new(0);
static PORT: AtomicU64 = AtomicU64::new(0);
static IPC_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Echo server: replies to request m with (m0 + 1, m1 ^ alias, m2, m3, m4, m5 * 2).
extern "C" fn echo_server(_: u64) -> ! {
    let ps = Handle(PORTSET.load(Ordering::Relaxed));
    let mut reply = [0u64; 6];
    loop {
        match rt::ipc::reply_wait(ps, reply) {
            Ok((alias, m)) => reply = [m[0].wrapping_add(1), m[1] ^ alias, m[2], m[3], m[4], m[5].wrapping_mul(2)],
            Err(_) => rt::exit(1),
        }
    }
}

const ALIAS: u64 = 0xa11a5;

/// Calls the echo server with pseudo-random messages and checks every reply.
extern "C" fn echo_client(rounds: u64) -> ! {
    let port = Handle(PORT.load(Ordering::Relaxed));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let m = [i, x, x.rotate_left(7), !x, x.wrapping_mul(3), x >> 3];
        match rt::ipc::call(port, m) {
            Ok(r) if r == [m[0] + 1, m[1] ^ ALIAS, m[2], m[3], m[4], m[5].wrapping_mul(2)] => {}
            _ => {
                IPC_FAILURES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    rt::exit(0)
}

fn ipc_pair(server_cpu: u64, client_cpu: u64, rounds: u64) -> Result<(), &'static str> {
    run_pair_with(echo_client, server_cpu, client_cpu, rounds)
}

/// Runs `client(rounds)` against the echo server, each pinned to a CPU.
fn run_pair_with(client: extern "C" fn(u64) -> !, server_cpu: u64, client_cpu: u64, rounds: u64) -> Result<(), &'static str> {
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset_create failed")?;
    let port = rt::ipc::port_create(ps, ALIAS).map_err(|_| "port_create failed")?;
    PORTSET.store(ps.0, Ordering::Relaxed);
    PORT.store(port.0, Ordering::Relaxed);
    IPC_FAILURES.store(0, Ordering::Relaxed);
    let server = obj::thread_create(me, echo_server, stack_top(0), 0).map_err(|_| "thread_create failed")?;
    obj::thread_set_affinity(server, 1 << server_cpu).map_err(|_| "thread_set_affinity failed")?;
    let client = obj::thread_create(me, client, stack_top(1), rounds).map_err(|_| "thread_create failed")?;
    obj::thread_set_affinity(client, 1 << client_cpu).map_err(|_| "thread_set_affinity failed")?;
    let done = obj::thread_wait(client, true);
    obj::thread_kill(server).map_err(|_| "thread_kill failed")?;
    let _ = obj::thread_wait(server, true);
    for h in [client, server, port, ps] {
        let _ = obj::close(h);
    }
    if done != Ok(0) {
        return Err("the IPC client did not finish");
    }
    if IPC_FAILURES.load(Ordering::Relaxed) != 0 {
        println!("init: {} of {rounds} replies were wrong", IPC_FAILURES.load(Ordering::Relaxed));
        return Err("IPC replies did not match their requests");
    }
    Ok(())
}

fn fast_ipc_switches() -> Result<u64, &'static str> {
    Ok(obj::system_info().map_err(|_| "system_info failed")?.fast_ipc_switches)
}

/// Same CPU: the round trips take the fast path both ways once the pair
/// has converged (after about two; a timer preemption costs one more), or
/// never with `fastpath=off` -- with the same replies.
fn ipc_same_cpu() -> Result<(), &'static str> {
    let rounds = 2000;
    let before = fast_ipc_switches()?;
    ipc_pair(0, 0, rounds)?;
    let switches = fast_ipc_switches()? - before;
    let fast_path_on = obj::start_flags() & 2 == 0;
    if fast_path_on && switches < 2 * rounds * 9 / 10 {
        println!("init: {switches} fast-path switches in {rounds} same-CPU round trips");
        return Err("the IPC fast path was not taken");
    }
    if !fast_path_on && switches != 0 {
        return Err("the IPC fast path ran although fastpath=off");
    }
    Ok(())
}

fn ipc_cross_cpu() -> Result<(), &'static str> {
    let cpus = obj::system_info().map_err(|_| "system_info failed")?.cpus;
    ipc_pair(0, cpus - 1, 2000)
}

static SPINS: AtomicU64 = AtomicU64::new(0);
static PINGPONG_DONE: AtomicU64 = AtomicU64::new(0);
static PINGPONG_ROUNDS: AtomicU64 = AtomicU64::new(0);

/// Calls the echo server until the yielding thread on the same CPU has had
/// three turns (or two seconds or a million round trips went by), then
/// exits with 0 if it did.
extern "C" fn pingpong_client(_: u64) -> ! {
    let port = Handle(PORT.load(Ordering::Relaxed));
    let hz = obj::system_info().map(|i| i.tsc_hz).unwrap_or(1_000_000_000);
    // SAFETY: rdtsc is allowed in ring 3.
    let until = unsafe { core::arch::x86_64::_rdtsc() } + 2 * hz;
    let mut i = 0u64;
    // SAFETY: as above.
    while SPINS.load(Ordering::Relaxed) < 3 && i < 1_000_000 && unsafe { core::arch::x86_64::_rdtsc() } < until {
        let _ = rt::ipc::call(port, [i, 0, 0, 0, 0, 0]);
        i += 1;
        PINGPONG_ROUNDS.store(i, Ordering::Relaxed);
    }
    let ran = SPINS.load(Ordering::Relaxed) >= 3;
    PINGPONG_DONE.store(1, Ordering::Release);
    rt::exit(if ran { 0 } else { 1 })
}

/// Counts its turns until the ping-pong ends: each turn it yields at once,
/// so it is back in the run queue behind the pair.
extern "C" fn pingpong_spinner(_: u64) -> ! {
    while PINGPONG_DONE.load(Ordering::Acquire) == 0 {
        SPINS.fetch_add(1, Ordering::Relaxed);
        obj::yield_now();
    }
    rt::exit(0)
}

/// A client and server that only ever hand the CPU to each other (every
/// call and reply a direct switch) must still use up a time slice: a third
/// thread waiting in their CPU's run queue gets turns while they ping-pong
/// (it starved when each IPC switch started a new slice).
fn ipc_pingpong_shares_cpu() -> Result<(), &'static str> {
    let cpu = obj::system_info().map_err(|_| "system_info failed")?.cpus - 1;
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset_create failed")?;
    let port = rt::ipc::port_create(ps, ALIAS).map_err(|_| "port_create failed")?;
    PORTSET.store(ps.0, Ordering::Relaxed);
    PORT.store(port.0, Ordering::Relaxed);
    SPINS.store(0, Ordering::Relaxed);
    PINGPONG_DONE.store(0, Ordering::Relaxed);
    PINGPONG_ROUNDS.store(0, Ordering::Relaxed);
    let server = obj::thread_create(me, echo_server, stack_top(0), 0).map_err(|_| "thread_create failed")?;
    obj::thread_set_affinity(server, 1 << cpu).map_err(|_| "thread_set_affinity failed")?;
    let client = obj::thread_create(me, pingpong_client, stack_top(1), 0).map_err(|_| "thread_create failed")?;
    obj::thread_set_affinity(client, 1 << cpu).map_err(|_| "thread_set_affinity failed")?;
    // The third thread arrives once the pair is under way (on one CPU this
    // thread itself is the one that must get a turn).
    while PINGPONG_ROUNDS.load(Ordering::Relaxed) < 100 && PINGPONG_DONE.load(Ordering::Acquire) == 0 {
        obj::yield_now();
    }
    let spin = obj::thread_create(me, pingpong_spinner, stack_top(2), 0).map_err(|_| "thread_create failed")?;
    obj::thread_set_affinity(spin, 1 << cpu).map_err(|_| "thread_set_affinity failed")?;
    let done = obj::thread_wait(client, true);
    let _ = obj::thread_wait(spin, true);
    obj::thread_kill(server).map_err(|_| "thread_kill failed")?;
    let _ = obj::thread_wait(server, true);
    for h in [client, spin, server, port, ps] {
        let _ = obj::close(h);
    }
    match done {
        Ok(0) => Ok(()),
        Ok(_) => {
            println!(
                "init: the yielding thread had {} turns in {} round trips",
                SPINS.load(Ordering::Relaxed),
                PINGPONG_ROUNDS.load(Ordering::Relaxed)
            );
            Err("a thread in the run queue of an IPC ping-pong's CPU starved while it lasted")
        }
        Err(_) => Err("the ping-pong client did not finish"),
    }
}

fn ipc_errors() -> Result<(), &'static str> {
    let ps = rt::ipc::portset_create().map_err(|_| "portset_create failed")?;
    let port = rt::ipc::port_create(ps, 1).map_err(|_| "port_create failed")?;
    if rt::ipc::call(ps, [0; 6]) != Err(SysError::WrongType) || rt::ipc::reply_wait(port, [0; 6]).err() != Some(SysError::WrongType) {
        return Err("IPC on the wrong object type was not refused");
    }
    let send_only = obj::duplicate(port, rights::SEND).map_err(|_| "duplicate failed")?;
    let no_receive = obj::duplicate(ps, rights::GET_STATE).map_err(|_| "duplicate failed")?;
    if rt::ipc::port_create(no_receive, 2) != Err(SysError::MissingRights)
        || rt::ipc::reply_wait(no_receive, [0; 6]).err() != Some(SysError::MissingRights)
    {
        return Err("receiving without RECEIVE was allowed");
    }
    if rt::ipc::call(Handle(0x1234_0000_0009), [0; 6]) != Err(SysError::BadHandle) {
        return Err("a forged port handle was accepted");
    }
    for h in [send_only, no_receive, port, ps] {
        obj::close(h).map_err(|_| "close failed")?;
    }
    Ok(())
}

/// Reads the u64 at `addr` and exits with it (runs in other spaces).
extern "C" fn probe_read(addr: u64) -> ! {
    // SAFETY: a deliberate read of memory that may or may not be mapped in
    // the probe's space: a fault ends the probe, which its waiter sees.
    let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
    rt::exit(v & 0xffff_ffff)
}

/// Writes to `addr` and exits 0 (a fault shows the write was refused).
extern "C" fn probe_write(addr: u64) -> ! {
    // SAFETY: as probe_read.
    unsafe { core::ptr::write_volatile(addr as *mut u64, 1) };
    rt::exit(0)
}

const PROBE_STACK_VA: u64 = 0x7000_0000;

/// Lends a probe thread in `space` this program's code and a stack.
fn equip_probe_space(space: Handle, stack_at: u64) -> Result<(), &'static str> {
    use rt::memory as m;
    let (start, end) = m::readonly_image();
    let text = m::region_create(obj::self_space(), start, end - start, m::READ | m::EXECUTE).map_err(|_| "text region failed")?;
    m::mapping_create(text, space, start, 0, end - start, m::READ | m::EXECUTE).map_err(|_| "text mapping failed")?;
    let stack = m::region_create(obj::self_space(), stack_at, 4 * 4096, m::READ | m::WRITE).map_err(|_| "stack region failed")?;
    m::mapping_create(stack, space, PROBE_STACK_VA, 0, 4 * 4096, m::READ | m::WRITE).map_err(|_| "stack mapping failed")?;
    Ok(())
}

/// Runs `entry(addr)` as a thread in `space` and returns how it ended.
fn probe(space: Handle, entry: extern "C" fn(u64) -> !, addr: u64) -> Result<u64, SysError> {
    let t = obj::thread_create(space, entry, PROBE_STACK_VA + 4 * 4096, addr)?;
    let r = obj::thread_wait(t, true);
    let _ = obj::close(t);
    r
}

/// Where the discard check's memory and its probe's stack live.
const DISCARD_VA: u64 = rt::memory::ROOT_ANONYMOUS_BASE + (40 << 30);
const DISCARD_STACKS: u64 = rt::memory::ROOT_ANONYMOUS_BASE + (41 << 30);
const DISCARD_CHILD_VA: u64 = 0x4000_0000;

/// Fills eight pages of root memory, maps them into a child (which reads
/// them through its own page tables), discards them: the frames come back,
/// both views read zeros (the child's translation was revoked, not left
/// pointing at a freed frame), and bad arguments change nothing.
fn region_discard() -> Result<(), &'static str> {
    use rt::memory as m;
    const PAGES: u64 = 8;
    let me = obj::self_space();
    let r = m::region_create(me, DISCARD_VA, PAGES * 4096, m::READ | m::WRITE).map_err(|_| "region_create")?;
    for i in 0..PAGES {
        // SAFETY: root anonymous memory no other check uses; it is demand-zero and writable.
        unsafe { core::ptr::write_volatile((DISCARD_VA + i * 4096) as *mut u64, 0xfeed_0000 + i) };
    }
    let child = obj::space_create(me).map_err(|_| "space_create")?;
    equip_probe_space(child, DISCARD_STACKS)?;
    m::mapping_create(r, child, DISCARD_CHILD_VA, 0, PAGES * 4096, m::READ).map_err(|_| "mapping_create")?;
    if probe(child, probe_read, DISCARD_CHILD_VA + 3 * 4096) != Ok(0xfeed_0003) {
        return Err("the child did not see the pages through its mapping");
    }
    let read_only = obj::duplicate(r, rights::GET_STATE | rights::MAP_READ).map_err(|_| "duplicate")?;
    let refused = [
        m::region_discard(r, 1, 4096),
        m::region_discard(r, 0, 0),
        m::region_discard(r, 4096, PAGES * 4096),
        m::region_discard(r, !4095, 8192),
        m::region_discard(read_only, 0, 4096),
        m::region_discard(me, 0, 4096),
    ];
    if refused
        != [
            Err(SysError::BadPointer),
            Err(SysError::BadSize),
            Err(SysError::BadPointer),
            Err(SysError::BadPointer),
            Err(SysError::MissingRights),
            Err(SysError::WrongType),
        ]
    {
        println!("init: region_discard with bad arguments gave {refused:?}");
        return Err("region_discard did not refuse bad arguments with the documented errors");
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile((DISCARD_VA + 5 * 4096) as *const u64) } != 0xfeed_0005 {
        return Err("a refused discard changed the memory");
    }
    let before = free_frames()?;
    let freed = m::region_discard(r, 0, PAGES * 4096).map_err(|_| "region_discard failed")?;
    let after = free_frames()?;
    if freed != PAGES || after < before + PAGES {
        println!("init: discard freed {freed} frames; free frames {before} -> {after}");
        return Err("region_discard did not give the frames back");
    }
    // SAFETY: as above (the page faults in zeroed).
    if unsafe { core::ptr::read_volatile((DISCARD_VA + 3 * 4096) as *const u64) } != 0 {
        return Err("discarded memory does not read as zeros");
    }
    if probe(child, probe_read, DISCARD_CHILD_VA + 6 * 4096) != Ok(0) || probe(child, probe_read, DISCARD_CHILD_VA + 3 * 4096) != Ok(0) {
        return Err("the child still sees discarded memory");
    }
    let _ = obj::space_destroy(child);
    let _ = m::region_discard(r, 0, PAGES * 4096);
    for h in [read_only, r] {
        let _ = obj::close(h);
    }
    Ok(())
}

/// Runs the nesting scenario twice and requires the second run to give back
/// every frame it took: the first run lets the kernel grow its own
/// structures (kernel page tables for thread stacks, heap), which it keeps.
fn nested_mappings() -> Result<(), &'static str> {
    nested_mappings_once()?;
    let before = free_frames()?;
    nested_mappings_once()?;
    let after = free_frames()?;
    // More free frames after is no leak: a destroy also frees the kernel
    // stacks of threads that ended earlier (their last handle is gone).
    if after < before {
        println!("init: free frames {before} before the nesting test, {after} after");
        return Err("the nested spaces leaked frames");
    }
    Ok(())
}

/// Four levels of nesting: root memory -> A -> B -> C -> D, rights narrowed
/// to read-only at the B->C link; revocation at the root level and the
/// second level reaches D; an unrelated space E keeps its own view.
fn nested_mappings_once() -> Result<(), &'static str> {
    use rt::memory as m;
    const VALUE: u64 = 0x5ca1_ab1e;
    let data = m::ROOT_ANONYMOUS_BASE;
    let stacks = data + 0x10000;
    // SAFETY: the root's demand-zero memory: the first touch maps a zeroed
    // page. The probes' stack pages are touched too, so the frame count
    // below measures only what the nested spaces themselves use.
    unsafe {
        core::ptr::write_volatile(data as *mut u64, VALUE);
        for page in 0..8 {
            core::ptr::write_volatile((stacks + page * 4096) as *mut u64, 0);
        }
    }
    let me = obj::self_space();
    let a = obj::space_create(me).map_err(|_| "space A")?;
    let b = obj::space_create(a).map_err(|_| "space B")?;
    let c = obj::space_create(b).map_err(|_| "space C")?;
    let d = obj::space_create(c).map_err(|_| "space D")?;
    let e = obj::space_create(me).map_err(|_| "space E")?;
    let (va_a, va_b, va_c, va_d) = (0x2000_0000u64, 0x3000_0000u64, 0x4000_0000u64, 0x5000_0000u64);
    let r0 = m::region_create(me, data, 4096, m::READ | m::WRITE).map_err(|_| "region R0")?;
    m::mapping_create(r0, a, va_a, 0, 4096, m::READ | m::WRITE).map_err(|_| "A maps R0")?;
    let r1 = m::region_create(a, va_a, 4096, m::READ | m::WRITE).map_err(|_| "region R1 in A")?;
    m::mapping_create(r1, b, va_b, 0, 4096, m::READ | m::WRITE).map_err(|_| "B maps R1")?;
    let r2 = m::region_create(b, va_b, 4096, m::READ).map_err(|_| "region R2 in B")?;
    if m::mapping_create(r2, c, va_c, 0, 4096, m::READ | m::WRITE) != Err(SysError::MissingRights) {
        return Err("a read-write mapping of a read-only region was allowed");
    }
    m::mapping_create(r2, c, va_c, 0, 4096, m::READ).map_err(|_| "C maps R2")?;
    let r3 = m::region_create(c, va_c, 4096, m::READ | m::WRITE).map_err(|_| "region R3 in C")?;
    m::mapping_create(r3, d, va_d, 0, 4096, m::READ).map_err(|_| "D maps R3")?;
    let r0e = m::region_create(me, data, 4096, m::READ).map_err(|_| "region for E")?;
    m::mapping_create(r0e, e, va_a, 0, 4096, m::READ).map_err(|_| "E maps root memory")?;
    equip_probe_space(d, stacks).map_err(|_| "equipping D")?;
    equip_probe_space(e, stacks + 0x10000).map_err(|_| "equipping E")?;

    if probe(d, probe_read, va_d) != Ok(VALUE) {
        return Err("D does not read the root's memory through four mappings");
    }
    if probe(d, probe_write, va_d) != Err(SysError::Dead) {
        return Err("D wrote through a read-only link");
    }
    if probe(e, probe_read, va_a) != Ok(VALUE) {
        return Err("E does not read the root's memory");
    }
    m::region_protect(r0, 0).map_err(|_| "region_protect failed")?;
    if probe(d, probe_read, va_d) != Err(SysError::Dead) {
        return Err("revoking R0 at the root did not reach D");
    }
    if probe(e, probe_read, va_a) != Ok(VALUE) {
        return Err("revoking R0 disturbed the unrelated space E");
    }
    m::region_protect(r0, m::READ | m::WRITE).map_err(|_| "region_protect failed")?;
    if probe(d, probe_read, va_d) != Ok(VALUE) {
        return Err("restoring R0's rights did not restore D's view");
    }
    m::region_destroy(r1).map_err(|_| "region_destroy failed")?;
    if probe(d, probe_read, va_d) != Err(SysError::Dead) {
        return Err("destroying R1 (level 2) did not revoke D's mapping");
    }
    if m::region_protect(r1, m::READ) != Err(SysError::BadHandle) {
        return Err("the destroyed region's handle stayed open");
    }
    obj::space_destroy(a).map_err(|_| "space_destroy(A)")?;
    obj::space_destroy(e).map_err(|_| "space_destroy(E)")?;
    for h in [b, c, d] {
        let _ = obj::close(h);
    }
    for h in [r0, r0e] {
        m::region_destroy(h).map_err(|_| "region_destroy")?;
    }
    Ok(())
}

/// Executes an invalid instruction (for the exception keeper).
extern "C" fn probe_ud2(_: u64) -> ! {
    // SAFETY: deliberately raises #UD; the keeper decides what happens.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

const PAGER_ALIAS: u64 = 0x9a9e;
const EXCEPTION_ALIAS: u64 = 0xe8c;
const HOLE: u64 = 0x20_0000_0000;
const PAGER_BACKING: u64 = rt::memory::ROOT_ANONYMOUS_BASE + 0x10_0000;
static PAGER_PORTSET: AtomicU64 = AtomicU64::new(0);
static PAGE_FAULTS: AtomicU64 = AtomicU64::new(0);
static EXCEPTIONS: AtomicU64 = AtomicU64::new(0);
static LAST_EXCEPTION: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// A user-level pager: fills the faulting page of the hole with a pattern
/// by mapping a page of its own memory there, then lets the thread retry.
/// Exceptions (on the other port) are recorded and the thread ended.
extern "C" fn pager(_: u64) -> ! {
    use rt::memory as m;
    let ps = Handle(PAGER_PORTSET.load(Ordering::Relaxed));
    let mut reply = [0u64; 6];
    loop {
        let Ok((alias, msg)) = rt::ipc::reply_wait(ps, reply) else { rt::exit(1) };
        reply = [1, 0, 0, 0, 0, 0];
        if alias == PAGER_ALIAS && msg[0] == m::keeper::PAGE_FAULT {
            let offset = msg[1];
            let backing = PAGER_BACKING + offset;
            // SAFETY: the pager's own demand-zero memory.
            unsafe { core::ptr::write_volatile(backing as *mut u64, 0xfeed_0000 + offset) };
            let me = obj::self_space();
            let served = m::region_create(me, backing, 4096, m::READ | m::WRITE)
                .and_then(|r| m::mapping_create(r, me, HOLE + offset, 0, 4096, m::READ | m::WRITE));
            if served.is_ok() {
                PAGE_FAULTS.fetch_add(1, Ordering::Relaxed);
                reply = [0, 0, 0, 0, 0, 0];
            }
        } else if alias == EXCEPTION_ALIAS && msg[0] == m::keeper::EXCEPTION {
            for (slot, v) in LAST_EXCEPTION.iter().zip([msg[1], msg[3], msg[2]]) {
                slot.store(v, Ordering::Relaxed);
            }
            EXCEPTIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn keepers() -> Result<(), &'static str> {
    use rt::memory as m;
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset_create")?;
    let pager_port = rt::ipc::port_create(ps, PAGER_ALIAS).map_err(|_| "port_create")?;
    let exception_port = rt::ipc::port_create(ps, EXCEPTION_ALIAS).map_err(|_| "port_create")?;
    PAGER_PORTSET.store(ps.0, Ordering::Relaxed);
    let pager_thread = obj::thread_create(me, pager, stack_top(2), 0).map_err(|_| "pager thread")?;

    // The hole: a range of this space with nothing behind it, exported with the pager as keeper.
    let hole = m::region_create(me, HOLE, 16 * 4096, m::READ | m::WRITE).map_err(|_| "hole region")?;
    m::region_set_keeper(hole, Some(pager_port)).map_err(|_| "region_set_keeper")?;
    let child = obj::space_create(me).map_err(|_| "space_create")?;
    obj::space_set_keeper(child, Some(exception_port)).map_err(|_| "space_set_keeper")?;
    let child_va = 0x6000_0000;
    m::mapping_create(hole, child, child_va, 0, 16 * 4096, m::READ).map_err(|_| "child maps the hole")?;
    // SAFETY: pre-touch the probe stack pages (the root's demand-zero memory).
    let stacks = m::ROOT_ANONYMOUS_BASE + 0x40000;
    unsafe { core::ptr::write_volatile(stacks as *mut u64, 0) };
    equip_probe_space(child, stacks)?;

    let mut result = Ok(());
    let page = 3 * 4096;
    if probe(child, probe_read, child_va + page) != Ok(0xfeed_0000 + page) {
        result = Err("the child did not read the page its parent's pager supplied");
    } else if PAGE_FAULTS.load(Ordering::Relaxed) != 1 {
        result = Err("the pager did not see exactly one fault");
    } else if probe(child, probe_read, child_va + page) != Ok(0xfeed_0000 + page) || PAGE_FAULTS.load(Ordering::Relaxed) != 1 {
        result = Err("a second touch of a supplied page went to the pager again");
    } else if probe(child, probe_ud2, 0) != Err(SysError::Dead) {
        result = Err("the exception keeper did not end the thread it was asked to");
    } else {
        // The faulting rip is the ud2 itself, after at most a short prologue.
        let entry = probe_ud2 as *const () as u64;
        let rip = LAST_EXCEPTION[1].load(Ordering::Relaxed);
        if EXCEPTIONS.load(Ordering::Relaxed) != 1 || LAST_EXCEPTION[0].load(Ordering::Relaxed) != 6 || !(entry..entry + 16).contains(&rip)
        {
            println!(
                "init: keeper saw {} exceptions, last vector {} at {rip:#x} (probe at {entry:#x})",
                EXCEPTIONS.load(Ordering::Relaxed),
                LAST_EXCEPTION[0].load(Ordering::Relaxed)
            );
            result = Err("the exception keeper did not get #UD in the probe");
        }
    }
    obj::space_set_keeper(child, None).map_err(|_| "clearing the keeper")?;
    if result.is_ok() && probe(child, probe_ud2, 0) != Err(SysError::Dead) {
        result = Err("with no keeper an exception did not end the thread");
    }
    let _ = obj::thread_kill(pager_thread);
    let _ = obj::thread_wait(pager_thread, true);
    let _ = obj::space_destroy(child);
    let _ = m::region_destroy(hole);
    for h in [pager_thread, pager_port, exception_port, ps] {
        let _ = obj::close(h);
    }
    result
}

// count_to(target, mark): counts rbx up to `target` and exits with
// rbx ^ r13, where r13 = `mark` is set once at the start. A thread rebuilt
// from a saved state with another r13 proves it continued mid-loop.
core::arch::global_asm!(
    r#"
    .section .text.count_to, "ax"
    .global count_to
count_to:
    mov r13, rsi
    xor ebx, ebx
2:  inc rbx
    cmp rbx, rdi
    jb 2b
    mov rdi, rbx
    xor rdi, r13
    mov eax, 2
    syscall
    ud2
    .text
"#
);

extern "C" {
    fn count_to(target: u64) -> !;
}

static HOLD: AtomicU64 = AtomicU64::new(0);
static SERVER_GOT: AtomicU64 = AtomicU64::new(0);

/// Answers [x, ..] with [2x, ..]; while HOLD is set it keeps a request unanswered.
extern "C" fn holding_server(_: u64) -> ! {
    let ps = Handle(PORTSET.load(Ordering::Relaxed));
    let mut reply = [0u64; 6];
    loop {
        let Ok((_, m)) = rt::ipc::reply_wait(ps, reply) else { rt::exit(1) };
        SERVER_GOT.fetch_add(1, Ordering::Relaxed);
        while HOLD.load(Ordering::Relaxed) != 0 {
            obj::yield_now();
        }
        reply = [m[0] * 2, 0, 0, 0, 0, 0];
    }
}

extern "C" fn calling_client(x: u64) -> ! {
    let port = Handle(PORT.load(Ordering::Relaxed));
    match rt::ipc::call(port, [x, 0, 0, 0, 0, 0]) {
        Ok(r) => rt::exit(r[0]),
        Err(_) => rt::exit(1),
    }
}

/// Stops a computing thread and a thread blocked mid-IPC, exports their
/// registers, rebuilds each as a new thread from that state alone, and
/// checks the rebuilt threads finish exactly as undisturbed ones would.
fn checkpoint_restart() -> Result<(), &'static str> {
    use obj::ThreadState as S;
    let me = obj::self_space();
    // 1. A computing thread.
    // Far more than it can count before it is stopped; the rebuilt thread
    // is given a count close to the end so it finishes quickly.
    const TARGET: u64 = 1 << 40;
    const MARK_A: u64 = 0xaaaa;
    const MARK_B: u64 = 0xbbbb;
    let entry: extern "C" fn(u64) -> ! = unsafe { core::mem::transmute(count_to as unsafe extern "C" fn(u64) -> !) };
    let t1 = obj::thread_create(me, entry, stack_top(0), TARGET).map_err(|_| "thread_create")?;
    // rsi = mark: set it through the state before the thread gets far.
    obj::thread_stop(t1).map_err(|_| "thread_stop (fresh thread)")?;
    let mut s = obj::thread_get_state(t1).map_err(|_| "thread_get_state")?;
    s.gpr[S::RSI] = MARK_A;
    s.rip = count_to as *const () as u64;
    s.gpr[S::RDI] = TARGET;
    obj::thread_set_state(t1, &s).map_err(|_| "thread_set_state")?;
    obj::thread_resume(t1).map_err(|_| "thread_resume")?;
    for _ in 0..20 {
        obj::yield_now();
    }
    obj::thread_stop(t1).map_err(|_| "thread_stop (computing)")?;
    let mut saved = obj::thread_get_state(t1).map_err(|_| "thread_get_state (computing)")?;
    let counted = saved.gpr[S::RBX];
    let in_loop = (count_to as *const () as u64..count_to as *const () as u64 + 32).contains(&saved.rip);
    if saved.gpr[S::R13] != MARK_A || !in_loop || counted >= TARGET {
        println!("init: saved rip {:#x}, rbx {counted}, r13 {:#x}", saved.rip, saved.gpr[S::R13]);
        return Err("the stopped computing thread's state is not mid-loop");
    }
    saved.gpr[S::R13] = MARK_B;
    saved.gpr[S::RBX] = TARGET - 1000;
    let t2 = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
    obj::thread_set_state(t2, &saved).map_err(|_| "thread_set_state (rebuild)")?;
    obj::thread_kill(t1).map_err(|_| "thread_kill")?;
    if obj::thread_wait(t1, true) != Err(SysError::Dead) {
        return Err("the original thread did not end");
    }
    obj::thread_resume(t2).map_err(|_| "thread_resume (rebuilt)")?;
    if obj::thread_wait(t2, true) != Ok(TARGET ^ MARK_B) {
        return Err("the rebuilt thread did not continue where the original stopped");
    }
    let _ = (obj::close(t1), obj::close(t2));

    // 2. A thread blocked in an IPC call whose request the server holds.
    let ps = rt::ipc::portset_create().map_err(|_| "portset_create")?;
    let port = rt::ipc::port_create(ps, 7).map_err(|_| "port_create")?;
    PORTSET.store(ps.0, Ordering::Relaxed);
    PORT.store(port.0, Ordering::Relaxed);
    HOLD.store(1, Ordering::Relaxed);
    SERVER_GOT.store(0, Ordering::Relaxed);
    let server = obj::thread_create(me, holding_server, stack_top(1), 0).map_err(|_| "server thread")?;
    let c1 = obj::thread_create(me, calling_client, stack_top(2), 21).map_err(|_| "client thread")?;
    while SERVER_GOT.load(Ordering::Relaxed) == 0 {
        obj::yield_now();
    }
    obj::thread_stop(c1).map_err(|_| "thread_stop (client mid-IPC)")?;
    let st = obj::thread_get_state(c1).map_err(|_| "thread_get_state (client)")?;
    // SAFETY: rip points into this program's own text, readable here.
    let insn = unsafe { core::ptr::read_volatile(st.rip as *const [u8; 2]) };
    if st.version_flags != S::VERSION | (1 << 32)
        || insn != [0x0f, 0x05]
        || st.gpr[S::RAX] != rt::nr::IPC_CALL
        || st.gpr[S::RDI] != port.0
        || st.gpr[S::RSI] != 21
    {
        return Err("a client stopped mid-call is not exported as about to make the same call");
    }
    let c2 = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
    obj::thread_set_state(c2, &st).map_err(|_| "thread_set_state (client)")?;
    obj::thread_kill(c1).map_err(|_| "thread_kill")?;
    let _ = obj::thread_wait(c1, true);
    HOLD.store(0, Ordering::Relaxed);
    obj::thread_resume(c2).map_err(|_| "thread_resume (client)")?;
    let answer = obj::thread_wait(c2, true);
    let _ = obj::thread_kill(server);
    let _ = obj::thread_wait(server, true);
    for h in [c1, c2, server, port, ps] {
        let _ = obj::close(h);
    }
    if answer != Ok(42) {
        return Err("the rebuilt client did not get its reply");
    }
    Ok(())
}

/// In a child space: calls the port `handle` (a value valid in the child's
/// table) with [x] and exits with the reply, or 1000 + the error code.
extern "C" fn child_caller(handle: u64) -> ! {
    match rt::ipc::call(Handle(handle), [21, 0, 0, 0, 0, 0]) {
        Ok(r) => rt::exit(r[0]),
        Err(e) => rt::exit(1000 + (-e.code()) as u64),
    }
}

/// In a child space: tries to receive on the port handle (must fail).
extern "C" fn child_receiver(handle: u64) -> ! {
    match rt::ipc::reply_wait(Handle(handle), [0; 6]) {
        Ok(_) => rt::exit(0),
        Err(e) => rt::exit(1000 + (-e.code()) as u64),
    }
}

/// A child reaches the world only through handles its parent transferred:
/// the parent's own handle values mean nothing in the child, a transferred
/// send-only port works for calls and not for receiving, and rights only
/// narrow on transfer.
fn border_control() -> Result<(), &'static str> {
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset_create")?;
    let port = rt::ipc::port_create(ps, 7).map_err(|_| "port_create")?;
    PORTSET.store(ps.0, Ordering::Relaxed);
    HOLD.store(0, Ordering::Relaxed);
    let server = obj::thread_create(me, holding_server, stack_top(1), 0).map_err(|_| "server thread")?;
    let child = obj::space_create(me).map_err(|_| "space_create")?;
    let stacks = rt::memory::ROOT_ANONYMOUS_BASE + 0x80000;
    // SAFETY: pre-touch the probe stack (the root's demand-zero memory).
    unsafe { core::ptr::write_volatile(stacks as *mut u64, 0) };
    equip_probe_space(child, stacks)?;
    let mut result = Ok(());
    // The parent's handle value, used inside the child: not a capability there.
    if probe(child, child_caller, port.0) != Ok(1000 + 4) {
        result = Err("a parent's handle value worked inside the child");
    }
    let send_only = obj::transfer(child, port, rights::SEND).map_err(|_| "transfer")?;
    if result.is_ok() && probe(child, child_caller, send_only.0) != Ok(42) {
        result = Err("the child could not call through the port it was given");
    }
    // A send-only port handle: no RECEIVE right (checked before the type).
    if result.is_ok() && probe(child, child_receiver, send_only.0) != Ok(1000 + 6) {
        result = Err("receiving through a send-only handle was not refused");
    }
    let weak = obj::duplicate(port, rights::SEND | rights::DUPLICATE).map_err(|_| "duplicate")?;
    if result.is_ok() && obj::transfer(child, weak, rights::SEND) != Err(SysError::MissingRights) {
        result = Err("a handle without TRANSFER was transferred");
    }
    if result.is_ok() && obj::transfer(child, port, rights::ALL | (1 << 20)) != Err(SysError::InvalidArgument) {
        result = Err("unknown right bits were transferred");
    }
    let _ = obj::thread_kill(server);
    let _ = obj::thread_wait(server, true);
    let _ = obj::space_destroy(child);
    for h in [weak, server, port, ps] {
        let _ = obj::close(h);
    }
    result
}

mod encapsulation {
    //! A child workload with three threads — one computing, one blocked
    //! mid-IPC on a server of the parent, one in a page fault the parent's
    //! pager serves — run once undisturbed and once frozen, exported (every
    //! thread's registers, the child's handle table, its mappings), destroyed
    //! and rebuilt from that state alone, then resumed. The threads' outputs
    //! must be identical.
    use super::*;
    use matryoshka_rt::println;
    use rt::memory as m;

    const COUNT: u64 = 30_000_000;
    const MARK: u64 = 0x5eed;
    const CODE_STACKS: u64 = 0x7000_0000;
    const STACK_PAGES: u64 = 12;
    const CHILD_HOLE: u64 = 0x6000_0000;
    const PAGE: u64 = 5 * 4096;

    /// The parent's side: the server and pager threads, and the regions the
    /// child's memory comes from.
    struct Parent {
        ps: Handle,
        port: Handle,
        server: Handle,
        pager_ps: Handle,
        pager_port: Handle,
        pager: Handle,
        regions: [Handle; 3], // text, stacks, hole
    }

    static PAGER_HOLD: AtomicU64 = AtomicU64::new(0);
    static PAGER_SEEN: AtomicU64 = AtomicU64::new(0);
    static PAGER_PS: AtomicU64 = AtomicU64::new(0);
    /// The region behind the page the pager supplied (destroying it takes the page back).
    static SUPPLIED: AtomicU64 = AtomicU64::new(0);

    fn take_back_supplied_page() {
        let r = SUPPLIED.swap(0, Ordering::Relaxed);
        if r != 0 {
            let _ = m::region_destroy(Handle(r));
        }
    }
    const HOLE2: u64 = 0x30_0000_0000;
    const BACKING2: u64 = rt::memory::ROOT_ANONYMOUS_BASE + 0x20_0000;

    /// A pager that holds each fault while PAGER_HOLD is set, then maps a
    /// page holding a value derived from its offset.
    extern "C" fn holding_pager(_: u64) -> ! {
        let ps = Handle(PAGER_PS.load(Ordering::Relaxed));
        let mut reply = [0u64; 6];
        loop {
            let Ok((_, msg)) = rt::ipc::reply_wait(ps, reply) else { rt::exit(1) };
            PAGER_SEEN.fetch_add(1, Ordering::Relaxed);
            while PAGER_HOLD.load(Ordering::Relaxed) != 0 {
                obj::yield_now();
            }
            let offset = msg[1];
            let me = obj::self_space();
            // A second fault on an already supplied page just retries.
            let backing = BACKING2 + offset;
            // SAFETY: the pager's own demand-zero memory.
            unsafe { core::ptr::write_volatile(backing as *mut u64, 0x0dd5_0000 + offset) };
            if let Ok(r) = m::region_create(me, backing, 4096, m::READ | m::WRITE) {
                if m::mapping_create(r, me, HOLE2 + offset, 0, 4096, m::READ | m::WRITE).is_ok() {
                    SUPPLIED.store(r.0, Ordering::Relaxed);
                } else {
                    // Already supplied (a fault from a thread that is gone): just retry.
                    let _ = m::region_destroy(r);
                }
            }
            reply = [0; 6];
        }
    }

    fn parent_setup() -> Result<Parent, &'static str> {
        let me = obj::self_space();
        let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
        let port = rt::ipc::port_create(ps, 7).map_err(|_| "port")?;
        PORTSET.store(ps.0, Ordering::Relaxed);
        let server = obj::thread_create(me, holding_server, stack_top(1), 0).map_err(|_| "server")?;
        let pager_ps = rt::ipc::portset_create().map_err(|_| "portset")?;
        let pager_port = rt::ipc::port_create(pager_ps, 9).map_err(|_| "port")?;
        PAGER_PS.store(pager_ps.0, Ordering::Relaxed);
        let pager = obj::thread_create(me, holding_pager, stack_top(3), 0).map_err(|_| "pager")?;
        let (start, end) = m::readonly_image();
        let text = m::region_create(me, start, end - start, m::READ | m::EXECUTE).map_err(|_| "text region")?;
        let stacks_at = m::ROOT_ANONYMOUS_BASE + 0x30_0000;
        for page in 0..STACK_PAGES {
            // SAFETY: pre-touch the stacks in the root's demand-zero memory.
            unsafe { core::ptr::write_volatile((stacks_at + page * 4096) as *mut u64, 0) };
        }
        let stacks = m::region_create(me, stacks_at, STACK_PAGES * 4096, m::READ | m::WRITE).map_err(|_| "stack region")?;
        let hole = m::region_create(me, HOLE2, 16 * 4096, m::READ).map_err(|_| "hole region")?;
        m::region_set_keeper(hole, Some(pager_port)).map_err(|_| "set keeper")?;
        Ok(Parent { ps, port, server, pager_ps, pager_port, pager, regions: [text, stacks, hole] })
    }

    fn parent_teardown(p: Parent) {
        for t in [p.server, p.pager] {
            let _ = obj::thread_kill(t);
            let _ = obj::thread_wait(t, true);
        }
        for r in p.regions {
            let _ = m::region_destroy(r);
        }
        for h in [p.server, p.pager, p.port, p.ps, p.pager_port, p.pager_ps] {
            let _ = obj::close(h);
        }
    }

    /// Builds the child: its memory (mappings of the parent's regions) and
    /// its one capability, a send-only handle to the parent's server.
    fn child_build(p: &Parent) -> Result<(Handle, Handle), &'static str> {
        let me = obj::self_space();
        let child = obj::space_create(me).map_err(|_| "space_create")?;
        let (start, end) = m::readonly_image();
        m::mapping_create(p.regions[0], child, start, 0, end - start, m::READ | m::EXECUTE).map_err(|_| "text mapping")?;
        m::mapping_create(p.regions[1], child, CODE_STACKS, 0, STACK_PAGES * 4096, m::READ | m::WRITE).map_err(|_| "stack mapping")?;
        m::mapping_create(p.regions[2], child, CHILD_HOLE, 0, 16 * 4096, m::READ).map_err(|_| "hole mapping")?;
        let server_in_child = obj::transfer(child, p.port, rights::SEND).map_err(|_| "transfer")?;
        Ok((child, server_in_child))
    }

    fn stack(i: u64) -> u64 {
        CODE_STACKS + (i + 1) * 4 * 4096
    }

    /// Starts the workload's threads: compute, IPC client, faulting reader.
    /// With `hold_compute`, the computing thread is left stopped (the caller
    /// resumes it), so a slow host cannot let it finish before the freeze.
    fn child_start(child: Handle, server_in_child: Handle, hold_compute: bool) -> Result<[Handle; 3], &'static str> {
        let entry: extern "C" fn(u64) -> ! =
            // SAFETY: count_to has the C ABI and never returns, like the type says.
            unsafe { core::mem::transmute(count_to as unsafe extern "C" fn(u64) -> !) };
        let compute = obj::thread_create_stopped(child).map_err(|_| "compute thread")?;
        let mut s = obj::thread_get_state(compute).map_err(|_| "get_state")?;
        s.rip = entry as *const () as u64;
        s.gpr[obj::ThreadState::RDI] = COUNT;
        s.gpr[obj::ThreadState::RSI] = MARK;
        s.gpr[obj::ThreadState::RSP] = stack(0);
        obj::thread_set_state(compute, &s).map_err(|_| "set_state")?;
        if !hold_compute {
            obj::thread_resume(compute).map_err(|_| "resume")?;
        }
        let client = obj::thread_create(child, calling_client_in_child, stack(1), server_in_child.0).map_err(|_| "client thread")?;
        let reader = obj::thread_create(child, probe_read, stack(2), CHILD_HOLE + PAGE).map_err(|_| "reader thread")?;
        Ok([compute, client, reader])
    }

    fn outputs(threads: [Handle; 3]) -> [Result<u64, SysError>; 3] {
        threads.map(|t| obj::thread_wait(t, true))
    }

    pub fn run() -> Result<(), &'static str> {
        let p = parent_setup()?;
        // Undisturbed run.
        HOLD.store(0, Ordering::Relaxed);
        PAGER_HOLD.store(0, Ordering::Relaxed);
        let (child, cap) = child_build(&p)?;
        let threads = child_start(child, cap, false)?;
        let undisturbed = outputs(threads);
        obj::space_destroy(child).map_err(|_| "space_destroy")?;
        for t in threads {
            let _ = obj::close(t);
        }
        // The same workload, frozen mid-flight with a request and a fault held.
        HOLD.store(1, Ordering::Relaxed);
        PAGER_HOLD.store(1, Ordering::Relaxed);
        SERVER_GOT.store(0, Ordering::Relaxed);
        PAGER_SEEN.store(0, Ordering::Relaxed);
        // The pager supplied the page in the first run: take it back so the
        // reader faults again.
        take_back_supplied_page();
        let (child, cap) = child_build(&p)?;
        let threads = child_start(child, cap, true)?;
        while SERVER_GOT.load(Ordering::Relaxed) == 0 || PAGER_SEEN.load(Ordering::Relaxed) == 0 {
            obj::yield_now();
        }
        // The other two are held: let the computation get under way.
        obj::thread_resume(threads[0]).map_err(|_| "resume")?;
        obj::yield_now();
        // Freeze: stop every thread of the child.
        for t in threads {
            obj::thread_stop(t).map_err(|_| "thread_stop")?;
        }
        // Export: every thread's registers, the child's handle table, its mappings.
        let mut states = [None; 3];
        for (i, t) in threads.iter().enumerate() {
            states[i] = Some(obj::thread_get_state(*t).map_err(|_| "thread_get_state")?);
        }
        let mut records = [Record::default(); 8];
        let n = obj::space_enumerate(child, &mut records).map_err(|_| "space_enumerate")?;
        if n != 1 || records[0].object_type != types::PORT {
            return Err("the child's handle table is not what it was given");
        }
        let mut imported = [Handle(0); 8];
        for (i, r) in records.iter().take(n).enumerate() {
            imported[i] = obj::import(child, Handle(r.handle), r.rights).map_err(|_| "handle_import")?;
        }
        // Destroy the whole child (its threads die; its memory is the parent's).
        obj::space_destroy(child).map_err(|_| "space_destroy")?;
        for t in threads {
            let _ = obj::thread_wait(t, true);
            let _ = obj::close(t);
        }
        // Rebuild from the exported state alone.
        let me = obj::self_space();
        let rebuilt = obj::space_create(me).map_err(|_| "space_create (rebuild)")?;
        let (start, end) = m::readonly_image();
        m::mapping_create(p.regions[0], rebuilt, start, 0, end - start, m::READ | m::EXECUTE).map_err(|_| "remap text")?;
        m::mapping_create(p.regions[1], rebuilt, CODE_STACKS, 0, STACK_PAGES * 4096, m::READ | m::WRITE).map_err(|_| "remap stacks")?;
        m::mapping_create(p.regions[2], rebuilt, CHILD_HOLE, 0, 16 * 4096, m::READ).map_err(|_| "remap hole")?;
        for (i, r) in records.iter().take(n).enumerate() {
            obj::transfer_at(rebuilt, imported[i], r.rights, Handle(r.handle)).map_err(|_| "handle_transfer_at")?;
        }
        let mut new_threads = [Handle(0); 3];
        for (i, s) in states.iter().enumerate() {
            let t = obj::thread_create_stopped(rebuilt).map_err(|_| "thread_create_stopped")?;
            obj::thread_set_state(t, s.as_ref().ok_or("no state")?).map_err(|_| "thread_set_state")?;
            new_threads[i] = t;
        }
        // Resume and let the parent's services go on.
        for t in new_threads {
            obj::thread_resume(t).map_err(|_| "thread_resume")?;
        }
        HOLD.store(0, Ordering::Relaxed);
        PAGER_HOLD.store(0, Ordering::Relaxed);
        let disturbed = outputs(new_threads);
        obj::space_destroy(rebuilt).map_err(|_| "space_destroy (rebuilt)")?;
        for h in new_threads.iter().chain(imported.iter().take(n)) {
            let _ = obj::close(*h);
        }
        take_back_supplied_page();
        parent_teardown(p);
        if undisturbed != disturbed || undisturbed[0] != Ok(COUNT ^ MARK) || undisturbed[1] != Ok(42) {
            println!("init: undisturbed {undisturbed:?}, rebuilt {disturbed:?}");
            return Err("the rebuilt child's output differs from the undisturbed run");
        }
        Ok(())
    }
}

fn state_encapsulation() -> Result<(), &'static str> {
    encapsulation::run()
}

/// In a child: calls the port whose handle value (in the child's table) is `handle`.
extern "C" fn calling_client_in_child(handle: u64) -> ! {
    match rt::ipc::call(Handle(handle), [21, 0, 0, 0, 0, 0]) {
        Ok(r) => rt::exit(r[0]),
        Err(e) => rt::exit(1000 + (-e.code()) as u64),
    }
}

static ONEWAY_PS: AtomicU64 = AtomicU64::new(0);
static ONEWAY_PORT: AtomicU64 = AtomicU64::new(0);
static ONEWAY_COUNT: AtomicU64 = AtomicU64::new(0);
static ONEWAY_SUM: AtomicU64 = AtomicU64::new(0);
static ONEWAY_DISORDER: AtomicU64 = AtomicU64::new(0);

/// Sends `n` one-way messages numbered 0..n, retrying while the queue is full.
extern "C" fn oneway_sender(n: u64) -> ! {
    let port = Handle(ONEWAY_PORT.load(Ordering::Relaxed));
    for i in 0..n {
        // Full: let the receiver run (it may share this CPU).
        while rt::ipc::send(port, [i, i * 3, 0, 0, 0, 0]) == Err(SysError::WouldBlock) {
            obj::yield_now();
        }
    }
    rt::exit(0)
}

/// Receives `n` messages, checking sequence order and the payload.
extern "C" fn oneway_receiver(n: u64) -> ! {
    let ps = Handle(ONEWAY_PS.load(Ordering::Relaxed));
    for expected in 0..n {
        match rt::ipc::receive(ps) {
            Ok((_, m)) => {
                if m[0] != expected || m[1] != expected * 3 {
                    ONEWAY_DISORDER.fetch_add(1, Ordering::Relaxed);
                }
                ONEWAY_SUM.fetch_add(m[0], Ordering::Relaxed);
                ONEWAY_COUNT.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => rt::exit(1),
        }
    }
    rt::exit(0)
}

/// 20,000 one-way messages from one CPU to a receiver on another (the same
/// CPU with one CPU), through the lock-free queue, sleeping and waking.
fn oneway_ipc() -> Result<(), &'static str> {
    const N: u64 = 20_000;
    let me = obj::self_space();
    let cpus = obj::system_info().map_err(|_| "system_info")?.cpus;
    let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
    let port = rt::ipc::port_create(ps, 3).map_err(|_| "port")?;
    ONEWAY_PS.store(ps.0, Ordering::Relaxed);
    ONEWAY_PORT.store(port.0, Ordering::Relaxed);
    for a in [&ONEWAY_COUNT, &ONEWAY_SUM, &ONEWAY_DISORDER] {
        a.store(0, Ordering::Relaxed);
    }
    let receiver = obj::thread_create(me, oneway_receiver, stack_top(0), N).map_err(|_| "receiver")?;
    obj::thread_set_affinity(receiver, 1 << (cpus - 1)).map_err(|_| "affinity")?;
    let sender = obj::thread_create(me, oneway_sender, stack_top(1), N).map_err(|_| "sender")?;
    obj::thread_set_affinity(sender, 1).map_err(|_| "affinity")?;
    let ok = obj::thread_wait(sender, true) == Ok(0) && obj::thread_wait(receiver, true) == Ok(0);
    for h in [sender, receiver, port, ps] {
        let _ = obj::close(h);
    }
    if !ok || ONEWAY_COUNT.load(Ordering::Relaxed) != N || ONEWAY_SUM.load(Ordering::Relaxed) != N * (N - 1) / 2 {
        return Err("one-way messages were lost or duplicated");
    }
    if ONEWAY_DISORDER.load(Ordering::Relaxed) != 0 {
        return Err("one-way messages from one sender arrived out of order");
    }
    if rt::ipc::send(Handle(0x55_0000_0003), [0; 6]) != Err(SysError::BadHandle) {
        return Err("a forged port handle was accepted for a send");
    }
    oneway_many_receivers(cpus)?;
    oneway_queue_export()
}

/// A portset's queued one-way messages are exported (taken) and rebuilt
/// (put) in order, with their aliases.
fn oneway_queue_export() -> Result<(), &'static str> {
    use rt::ipc::Queued;
    let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
    let port = rt::ipc::port_create(ps, 9).map_err(|_| "port")?;
    let rebuilt = rt::ipc::portset_create().map_err(|_| "portset")?;
    let result = (|| {
        let sent: [[u64; 6]; 5] = core::array::from_fn(|i| [i as u64, 10, 20, 30, 40, !(i as u64)]);
        for m in sent {
            rt::ipc::send(port, m).map_err(|_| "send")?;
        }
        // A bad buffer takes nothing.
        // SAFETY: never dereferenced here; the kernel must refuse it.
        let bad = unsafe { core::slice::from_raw_parts_mut(KERNEL_ADDRESS as *mut Queued, 4) };
        if rt::ipc::take_queued(ps, bad) != Err(SysError::BadPointer) {
            return Err("take_queued wrote to kernel memory");
        }
        let mut out = [Queued::default(); 32];
        let n = rt::ipc::take_queued(ps, &mut out).map_err(|_| "take_queued")?;
        if n != 5 || out[..5].iter().zip(sent).any(|(q, m)| q.alias != 9 || q.message != m) {
            return Err("take_queued did not return the queued messages in order with their alias");
        }
        if rt::ipc::put_queued(rebuilt, &out[..5]) != Ok(5) {
            return Err("put_queued did not queue the exported messages");
        }
        for m in sent {
            if rt::ipc::receive(rebuilt) != Ok((9, m)) {
                return Err("a rebuilt portset did not deliver the exported messages in order");
            }
        }
        let receive_only = obj::duplicate(ps, rights::RECEIVE).map_err(|_| "duplicate")?;
        let refused = rt::ipc::take_queued(receive_only, &mut out) == Err(SysError::MissingRights)
            && rt::ipc::take_queued(port, &mut out) == Err(SysError::WrongType)
            && rt::ipc::take_queued(ps, &mut [Queued::default(); 33]) == Err(SysError::BadSize)
            && rt::ipc::put_queued(receive_only, &out[..1]) == Err(SysError::MissingRights);
        let _ = obj::close(receive_only);
        if !refused {
            return Err("take_queued/put_queued misuse was not refused as documented");
        }
        Ok(())
    })();
    for h in [port, ps, rebuilt] {
        let _ = obj::close(h);
    }
    result
}

static MANY_SUM: AtomicU64 = AtomicU64::new(0);

/// Receives until the stop message; exits with how many it got.
extern "C" fn many_receiver(_: u64) -> ! {
    let ps = Handle(ONEWAY_PS.load(Ordering::Relaxed));
    let mut got = 0;
    loop {
        match rt::ipc::receive(ps) {
            Ok((_, m)) if m[0] == u64::MAX => rt::exit(got),
            Ok((_, m)) => {
                MANY_SUM.fetch_add(m[0], Ordering::Relaxed);
                got += 1;
            }
            Err(_) => rt::exit(u64::MAX),
        }
    }
}

/// Sends `n` numbered messages, then one stop message per receiver.
extern "C" fn many_sender(n: u64) -> ! {
    let port = Handle(ONEWAY_PORT.load(Ordering::Relaxed));
    for i in (0..n).chain([u64::MAX; 3]) {
        while rt::ipc::send(port, [i, 0, 0, 0, 0, 0]) == Err(SysError::WouldBlock) {
            obj::yield_now();
        }
    }
    rt::exit(0)
}

/// Three receivers share one portset: every message reaches exactly one of
/// them, and none sleeps through messages meant for it.
fn oneway_many_receivers(cpus: u64) -> Result<(), &'static str> {
    const N: u64 = 6000;
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
    let port = rt::ipc::port_create(ps, 4).map_err(|_| "port")?;
    ONEWAY_PS.store(ps.0, Ordering::Relaxed);
    ONEWAY_PORT.store(port.0, Ordering::Relaxed);
    MANY_SUM.store(0, Ordering::Relaxed);
    let mut receivers = [Handle(0); 3];
    for (i, r) in receivers.iter_mut().enumerate() {
        *r = obj::thread_create(me, many_receiver, stack_top([0, 2, 3][i]), 0).map_err(|_| "receiver")?;
        obj::thread_set_affinity(*r, 1 << (i as u64 % cpus)).map_err(|_| "affinity")?;
    }
    let sender = obj::thread_create(me, many_sender, stack_top(1), N).map_err(|_| "sender")?;
    let sent = obj::thread_wait(sender, true);
    let mut total = 0;
    for r in receivers {
        match obj::thread_wait(r, true) {
            Ok(got) if got != u64::MAX => total += got,
            _ => return Err("a receiver sharing a portset failed"),
        }
    }
    for h in receivers.into_iter().chain([sender, port, ps]) {
        let _ = obj::close(h);
    }
    if sent != Ok(0) || total != N || MANY_SUM.load(Ordering::Relaxed) != N * (N - 1) / 2 {
        return Err("receivers sharing a portset lost or duplicated one-way messages");
    }
    Ok(())
}

/// Collections on the runtime's heap, backed by demand-zero pages.
fn heap() -> Result<(), &'static str> {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    let before = rt::heap::free_bytes();
    let mut v: Vec<u64> = Vec::new();
    v.try_reserve(1 << 20).map_err(|_| "could not reserve 8 MiB")?;
    v.extend((0..1u64 << 20).map(|i| i.wrapping_mul(0x9e37_79b9)));
    let mut m = BTreeMap::new();
    for i in 0..5000u64 {
        m.insert(i, alloc::format!("{i}"));
    }
    if v[123_456] != 123_456u64.wrapping_mul(0x9e37_79b9) || m.get(&4321).map(|s| s.as_str()) != Some("4321") {
        return Err("heap data corrupted");
    }
    drop((v, m));
    if rt::heap::free_bytes() != before {
        return Err("heap memory not returned");
    }
    let mut huge: Vec<u8> = Vec::new();
    if huge.try_reserve(1 << 30).is_ok() {
        return Err("a 1 GiB reservation on a 256 MiB heap succeeded");
    }
    Ok(())
}

/// Every object type exports its state, with links named by this
/// program's own handles (reference relativity).
fn object_state() -> Result<(), &'static str> {
    use rt::memory as m;
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
    let port = rt::ipc::port_create(ps, 0xa1).map_err(|_| "port")?;
    let child = obj::space_create(me).map_err(|_| "space")?;
    obj::space_set_keeper(child, Some(port)).map_err(|_| "keeper")?;
    let region = m::region_create(me, m::ROOT_ANONYMOUS_BASE, 4096, m::READ).map_err(|_| "region")?;
    let mapping = m::mapping_create(region, child, 0x1000_0000, 0, 4096, m::READ).map_err(|_| "mapping")?;
    let mutex = rt::sync::Mutex::new(0u32).map_err(|_| "mutex")?;
    let mut result = Ok(());
    let checks: [(Handle, [u64; 6], &str); 5] = [
        (port, [3, 0xa1, ps.0, 0, 0, 0], "port: alias and portset"),
        // No limit of its own (u64::MAX); charged for the one mapping into it.
        (child, [1, port.0, 0, 0, u64::MAX, 256], "space: keeper, handles, children, quota"),
        (region, [5, m::ROOT_ANONYMOUS_BASE, 4096, m::READ, me.0, 0], "region: range, rights, space"),
        (mapping, [6, 0x1000_0000, 0, 4096, m::READ, region.0], "mapping: placement, rights, region"),
        (ps, [4, 0, 0, 0, 0, 0], "portset"),
    ];
    for (h, want, what) in checks {
        match obj::object_get_state(h) {
            Ok(got) if got == want => {}
            Ok(got) => {
                println!("init: {what}: exported {got:x?}, expected {want:x?}");
                result = Err("an object's exported state is wrong");
            }
            Err(_) => result = Err("object_get_state failed"),
        }
    }
    drop(mutex);
    if obj::object_get_state(Handle(0x77_0000_0001)) != Err(SysError::BadHandle) {
        result = Err("object_get_state accepted a forged handle");
    }
    let _ = m::mapping_destroy(mapping);
    let _ = m::region_destroy(region);
    let _ = obj::space_destroy(child);
    for h in [port, ps] {
        let _ = obj::close(h);
    }
    result
}

/// The kernel hands the root its boot modules: this program's own image is one.
fn boot_modules() -> Result<(), &'static str> {
    let (start, _) = rt::memory::readonly_image();
    let mut found = false;
    for m in rt::boot::modules() {
        let mut b = m.bytes();
        // The boot archive: our image is its bin/init.
        if b.starts_with(b"070701") {
            match cpio_reader::iter_files(b).find(|e| e.name().trim_start_matches("./") == "bin/init") {
                Some(e) => b = e.file(),
                None => return Err("the boot archive has no bin/init"),
            }
        }
        if b.len() < 64 || &b[..4] != b"\x7fELF" {
            continue;
        }
        // Our entry point (e_entry) must be inside our own text.
        let entry = u64::from_le_bytes(b[24..32].try_into().unwrap_or([0; 8]));
        if entry >= start && (m.name().is_empty() || m.name() == "init") {
            found = true;
        }
    }
    if !found {
        return Err("the root program's own image is not among its boot modules");
    }
    Ok(())
}

/// References name objects without access: compare, type, transfer only.
fn references() -> Result<(), &'static str> {
    let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
    let port = rt::ipc::port_create(ps, 5).map_err(|_| "port")?;
    let r = obj::reference_create(port).map_err(|_| "reference_create")?;
    let r2 = obj::reference_create(r).map_err(|_| "reference of a reference")?;
    let mut result = Ok(());
    if obj::reference_compare(r, port) != Ok(true) || obj::reference_compare(r2, port) != Ok(true) {
        result = Err("a reference does not compare equal to its object");
    } else if obj::reference_compare(r, ps) != Ok(false) {
        result = Err("a reference compares equal to another object");
    } else if obj::info(r).map(|(t, _)| t) != Ok(types::REFERENCE) || obj::object_get_state(r) != Ok([9, types::PORT as u64, 0, 0, 0, 0]) {
        result = Err("a reference does not report its type and its target's");
    } else if rt::ipc::send(r, [0; 6]) != Err(SysError::MissingRights) && rt::ipc::send(r, [0; 6]) != Err(SysError::WrongType) {
        result = Err("a reference gave access to the port");
    }
    for h in [r2, r, port, ps] {
        let _ = obj::close(h);
    }
    result
}

/// A spinning thread's used-up time slices arrive as one-way messages on
/// the scheduler port its parent gave it.
fn scheduler_port() -> Result<(), &'static str> {
    let me = obj::self_space();
    let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
    let port = rt::ipc::port_create(ps, 0x5c).map_err(|_| "port")?;
    let t = obj::thread_create(me, spinner, stack_top(0), 0).map_err(|_| "thread")?;
    obj::thread_set_scheduler(t, Some(port)).map_err(|_| "thread_set_scheduler")?;
    let mut result = Ok(());
    for _ in 0..3 {
        match rt::ipc::receive(ps) {
            Ok((0x5c, m)) if m[0] == rt::memory::keeper::CPU_TIME => {}
            _ => {
                result = Err("no CPU-time event from the scheduler port");
                break;
            }
        }
    }
    if result.is_ok() && obj::thread_set_priority(t, 64) != Err(SysError::InvalidArgument) {
        result = Err("priority 64 was accepted");
    }
    if result.is_ok() && obj::thread_set_priority(t, 20).is_err() {
        result = Err("thread_set_priority failed");
    }
    let _ = obj::thread_set_scheduler(t, None);
    let _ = obj::thread_kill(t);
    let _ = obj::thread_wait(t, true);
    for h in [t, port, ps] {
        let _ = obj::close(h);
    }
    result
}

/// Arguments a buggy or malicious program might pass: every one is an
/// error code, none a kernel fault or hang.
fn hostile_arguments() -> Result<(), &'static str> {
    use rt::memory as m;
    let me = obj::self_space();
    let (text, _) = m::readonly_image();
    let mut failures = 0;
    let mut expect = |what: &str, got: Result<u64, SysError>, want: SysError| {
        if got != Err(want) {
            println!("init: hostile {what}: got {got:?}, wanted {want:?}");
            failures += 1;
        }
    };
    // SAFETY (all raw calls below): the kernel validates every argument;
    // these calls only ever fail.
    unsafe {
        expect("system_info into read-only text", rt::decode(rt::syscall2(rt::nr::SYSTEM_INFO, text, 32)), SysError::BadPointer);
        expect("system_info into the kernel", rt::decode(rt::syscall2(rt::nr::SYSTEM_INFO, KERNEL_ADDRESS, 32)), SysError::BadPointer);
        expect(
            "space_enumerate beyond the quota",
            rt::decode(rt::syscall4(rt::nr::SPACE_ENUMERATE, me.0, text, 1 << 20, 0)),
            SysError::BadSize,
        );
        expect(
            "thread at a kernel address",
            rt::decode(rt::syscall4(rt::nr::THREAD_CREATE, me.0, KERNEL_ADDRESS, 0x7000_0000, 0)),
            SysError::BadPointer,
        );
        expect(
            "thread with a kernel stack",
            rt::decode(rt::syscall4(rt::nr::THREAD_CREATE, me.0, text, KERNEL_ADDRESS, 0)),
            SysError::BadPointer,
        );
        expect(
            "mutex_wait on a kernel address",
            rt::decode(rt::syscall4(rt::nr::MUTEX_WAIT, 0, KERNEL_ADDRESS, 0, 0)),
            SysError::BadHandle,
        );
        expect(
            "region of zero bytes",
            rt::decode(rt::syscall4(rt::nr::REGION_CREATE, me.0, m::ROOT_ANONYMOUS_BASE, 0, 1)),
            SysError::BadSize,
        );
        expect(
            "region in the kernel half",
            rt::decode(rt::syscall4(rt::nr::REGION_CREATE, me.0, KERNEL_ADDRESS, 4096, 1)),
            SysError::BadPointer,
        );
        expect(
            "region with unknown rights",
            rt::decode(rt::syscall4(rt::nr::REGION_CREATE, me.0, m::ROOT_ANONYMOUS_BASE, 4096, 8)),
            SysError::InvalidArgument,
        );
        expect(
            "thread_get_state into the kernel",
            rt::decode(rt::syscall4(rt::nr::THREAD_GET_STATE, 0, KERNEL_ADDRESS, 152, 0)),
            SysError::BadHandle,
        );
        expect(
            "handle_transfer_at to value 0",
            rt::decode(rt::syscall4(rt::nr::HANDLE_TRANSFER_AT, me.0, me.0, 0, 0)),
            SysError::InvalidArgument,
        );
        expect("priority out of range", rt::decode(rt::syscall2(rt::nr::THREAD_SET_PRIORITY, 0, 1000)), SysError::InvalidArgument);
        expect("donation to a forged thread", rt::decode(rt::syscall1(rt::nr::THREAD_DONATE, 0x77_0000_0001)), SysError::BadHandle);
        expect("donation to a space", rt::decode(rt::syscall1(rt::nr::THREAD_DONATE, me.0)), SysError::WrongType);
        expect("donation-only flag 7", rt::decode(rt::syscall2(rt::nr::THREAD_SET_DONATION_ONLY, me.0, 7)), SysError::InvalidArgument);
        expect("connection side 5", rt::decode(rt::syscall4(rt::nr::THREAD_GET_CONNECTION, me.0, 5, text, 0)), SysError::InvalidArgument);
        expect("32+ queued messages", rt::decode(rt::syscall4(rt::nr::PORTSET_TAKE_MESSAGES, me.0, text, 1000, 0)), SysError::BadSize);
        expect(
            "queued messages of a space",
            rt::decode(rt::syscall4(rt::nr::PORTSET_TAKE_MESSAGES, me.0, text, 1, 0)),
            SysError::WrongType,
        );
    }
    let mutex_queue = unsafe { rt::decode(rt::syscall0(rt::nr::MUTEX_CREATE)) }.map_err(|_| "mutex_create")?;
    // SAFETY: as above.
    unsafe {
        expect(
            "mutex_wait unaligned",
            rt::decode(rt::syscall4(rt::nr::MUTEX_WAIT, mutex_queue, m::ROOT_ANONYMOUS_BASE + 1, 0, 0)),
            SysError::BadPointer,
        );
        expect(
            "mutex_wait on the kernel",
            rt::decode(rt::syscall4(rt::nr::MUTEX_WAIT, mutex_queue, KERNEL_ADDRESS, 0, 0)),
            SysError::BadPointer,
        );
    }
    // A thread made to jump into the kernel through set_state: refused.
    let t = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
    // SAFETY: as above.
    unsafe {
        expect(
            "connection state into the kernel",
            rt::decode(rt::syscall4(rt::nr::THREAD_GET_CONNECTION, t.0, 0, KERNEL_ADDRESS, 0)),
            SysError::BadPointer,
        );
        expect(
            "connection state into read-only text",
            rt::decode(rt::syscall4(rt::nr::THREAD_GET_CONNECTION, t.0, 0, text, 0)),
            SysError::BadPointer,
        );
        expect("a connection to a space", rt::decode(rt::syscall4(rt::nr::THREAD_SET_CONNECTION, t.0, 0, me.0, 0)), SysError::WrongType);
        expect("connection flags 1", rt::decode(rt::syscall4(rt::nr::THREAD_SET_CONNECTION, t.0, 0, 0, 1)), SysError::InvalidArgument);
    }
    let mut s = obj::thread_get_state(t).map_err(|_| "thread_get_state")?;
    s.rip = KERNEL_ADDRESS;
    if obj::thread_set_state(t, &s) != Err(SysError::BadPointer) {
        failures += 1;
        println!("init: hostile set_state with a kernel rip was accepted");
    }
    s.rip = text;
    s.version_flags = 3;
    if obj::thread_set_state(t, &s) != Err(SysError::InvalidArgument) {
        failures += 1;
        println!("init: hostile set_state with an unknown version was accepted");
    }
    let _ = obj::thread_kill(t);
    let _ = obj::thread_wait(t, true);
    let _ = obj::close(t);
    let _ = obj::close(Handle(mutex_queue));
    if failures != 0 {
        return Err("a hostile argument was not refused as documented");
    }
    Ok(())
}

mod stress {
    //! `test=ipc_stress`: a client on every CPU calls a server on every CPU
    //! (every pair, same-CPU and cross-CPU), at least a million sequence-
    //! checked round trips in all; any lost, duplicated, reordered or
    //! misrouted message fails the run.
    use super::*;
    use matryoshka_rt::println;

    const TOTAL: u64 = 1_000_000;
    const MAX_CPUS: usize = 8;
    const STACK_SPACING: u64 = 0x10000;

    static PORTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static PORTSETS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static ROUNDS: AtomicU64 = AtomicU64::new(0);
    static ERRORS: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicU64 = AtomicU64::new(0);

    /// Echoes (seq + 1, client, alias, !payload) for request (seq, client, payload).
    extern "C" fn server(cpu: u64) -> ! {
        let ps = Handle(PORTSETS[cpu as usize].load(Ordering::Relaxed));
        let mut reply = [0u64; 6];
        loop {
            match rt::ipc::reply_wait(ps, reply) {
                Ok((alias, m)) => reply = [m[0] + 1, m[1], alias, !m[2], m[4], m[3]],
                Err(_) => rt::exit(1),
            }
        }
    }

    /// Client `id` = cpu * MAX_CPUS + target: calls server `target` ROUNDS times.
    extern "C" fn client(id: u64) -> ! {
        let target = id % MAX_CPUS as u64;
        let port = Handle(PORTS[target as usize].load(Ordering::Relaxed));
        let mut errors = 0;
        for seq in 0..ROUNDS.load(Ordering::Relaxed) {
            let payload = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id;
            match rt::ipc::call(port, [seq, id, payload, seq ^ id, !seq, 0]) {
                Ok(r) if r == [seq + 1, id, 0x100 + target, !payload, !seq, seq ^ id] => {}
                _ => errors += 1,
            }
        }
        ERRORS.fetch_add(errors, Ordering::Relaxed);
        DONE.fetch_add(1, Ordering::Relaxed);
        rt::exit(0)
    }

    pub fn run() -> i32 {
        let me = obj::self_space();
        let cpus = match obj::system_info() {
            Ok(i) => (i.cpus as usize).min(MAX_CPUS),
            Err(_) => return 1,
        };
        let pairs = (cpus * cpus) as u64;
        ROUNDS.store(TOTAL.div_ceil(pairs), Ordering::Relaxed);
        let stack = |n: u64| rt::memory::ROOT_ANONYMOUS_BASE + (n + 1) * STACK_SPACING;
        let mut servers = [Handle(0); MAX_CPUS];
        for cpu in 0..cpus {
            let Ok(ps) = rt::ipc::portset_create() else { return 2 };
            let Ok(port) = rt::ipc::port_create(ps, 0x100 + cpu as u64) else { return 2 };
            PORTSETS[cpu].store(ps.0, Ordering::Relaxed);
            PORTS[cpu].store(port.0, Ordering::Relaxed);
            let Ok(t) = obj::thread_create(me, server, stack(cpu as u64), cpu as u64) else { return 3 };
            if obj::thread_set_affinity(t, 1 << cpu).is_err() {
                return 3;
            }
            servers[cpu] = t;
        }
        let mut clients = [Handle(0); MAX_CPUS * MAX_CPUS];
        for cpu in 0..cpus {
            for target in 0..cpus {
                let id = (cpu * MAX_CPUS + target) as u64;
                let n = (MAX_CPUS + cpu * MAX_CPUS + target) as u64;
                let Ok(t) = obj::thread_create(me, client, stack(n), id) else { return 4 };
                if obj::thread_set_affinity(t, 1 << cpu).is_err() {
                    return 4;
                }
                clients[cpu * MAX_CPUS + target] = t;
            }
        }
        for cpu in 0..cpus {
            for target in 0..cpus {
                if obj::thread_wait(clients[cpu * MAX_CPUS + target], true) != Ok(0) {
                    println!("stress: client {cpu}->{target} did not finish");
                    return 5;
                }
            }
        }
        for t in servers.iter().take(cpus) {
            let _ = obj::thread_kill(*t);
            let _ = obj::thread_wait(*t, true);
        }
        let total = ROUNDS.load(Ordering::Relaxed) * pairs;
        let errors = ERRORS.load(Ordering::Relaxed);
        println!("stress: {total} round trips between {cpus} CPUs ({pairs} client/server pairs), {errors} wrong replies");
        if errors != 0 || DONE.load(Ordering::Relaxed) != pairs {
            return 6;
        }
        0
    }
}

mod bench {
    //! `test=bench`: IPC and system-call microbenchmarks, one JSON object per line.
    use super::*;
    use matryoshka_rt::println;

    const N: usize = 20_000;
    struct Samples(core::cell::UnsafeCell<[u64; N]>);
    // SAFETY: one benchmark writes it at a time, then the main thread reads it.
    unsafe impl Sync for Samples {}
    static SAMPLES: Samples = Samples(core::cell::UnsafeCell::new([0; N]));
    static ITERATIONS: AtomicU64 = AtomicU64::new(0);

    fn samples() -> &'static mut [u64; N] {
        // SAFETY: see Samples.
        unsafe { &mut *SAMPLES.0.get() }
    }

    #[inline(always)]
    fn tsc() -> u64 {
        // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD clear).
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn median_and_p99(s: &mut [u64]) -> (u64, u64) {
        s.sort_unstable();
        (s[s.len() / 2], s[(s.len() * 99 / 100).min(s.len() - 1)])
    }

    fn report(name: &str, cpus: u64, n: usize) {
        let (median, p99) = median_and_p99(&mut samples()[..n]);
        println!("{{\"bench\":\"{name}\",\"cpus\":{cpus},\"iterations\":{n},\"median_cycles\":{median},\"p99_cycles\":{p99}}}");
    }

    /// Per-leg samples of the round-trip benchmarks: from the client's TSC
    /// stamp before its `call` to the server's after its `reply_wait`
    /// returns (the call leg), and from the server's stamp before its next
    /// `reply_wait` to the client's after `call` returns (the reply leg).
    static LEGS: [Samples; 2] = [const { Samples(core::cell::UnsafeCell::new([0; N])) }; 2];

    /// What a round trip's client and server share: the handles each uses
    /// (each valid in its own thread's space), the number of rounds and the
    /// server's stamps for the current round. A cross-space server cannot
    /// see this program's statics, so its link is a page of this program's
    /// memory that the server's space maps at the same address, and both
    /// threads get the link's address as their argument.
    #[repr(C)]
    struct Link {
        portset: AtomicU64,
        port: AtomicU64,
        rounds: AtomicU64,
        arrived: AtomicU64,
        departing: AtomicU64,
    }

    static SAME_SPACE_LINK: Link = Link {
        portset: AtomicU64::new(0),
        port: AtomicU64::new(0),
        rounds: AtomicU64::new(0),
        arrived: AtomicU64::new(0),
        departing: AtomicU64::new(0),
    };

    /// The cross-space link's page and the server's stack, in this
    /// program's demand-zero memory (clear of what the other benchmarks use).
    const CROSS_LINK: u64 = rt::memory::ROOT_ANONYMOUS_BASE + (42 << 30);
    const CROSS_STACK: u64 = CROSS_LINK + 0x1_0000;

    fn legs() -> (&'static mut [u64; N], &'static mut [u64; N]) {
        // SAFETY: as `samples`: one benchmark client writes them, then the
        // main thread reads them.
        unsafe { (&mut *LEGS[0].0.get(), &mut *LEGS[1].0.get()) }
    }

    /// IPC system call `nr` with the TSC read just before `syscall` (stored
    /// at `before`, from inside the timed window, so that another thread
    /// can read it while this one waits) and just after it returns.
    /// Returns the call's result and the second stamp. With `SYSCALL`
    /// false the window holds a `nop` instead: what the timing itself
    /// costs, to take off each leg.
    #[inline(always)]
    fn timed_ipc<const SYSCALL: bool>(nr: u64, h: Handle, m: &mut rt::ipc::Message, before: *mut u64) -> (i64, u64) {
        let (ret, lo, hi): (i64, u64, u64);
        // SAFETY: the call reads and writes only the listed registers
        // (the fast-path IPC calls leave r13 alone); `before` points at a
        // live u64 that only this thread writes.
        unsafe {
            core::arch::asm!(
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                "mov qword ptr [{before}], rax",
                "mov rdx, {m1}",
                "mov rax, {nr}",
                ".if {syscall}",
                "syscall",
                ".else",
                "nop",
                ".endif",
                "mov {m1}, rdx",
                "mov {ret}, rax",
                "rdtsc",
                syscall = const SYSCALL as u8,
                before = in(reg) before,
                nr = in(reg) nr,
                m1 = inout(reg) m[1],
                ret = out(reg) ret,
                in("rdi") h.0,
                inout("rsi") m[0],
                inout("r10") m[2],
                inout("r8") m[3],
                inout("r9") m[4],
                inout("r12") m[5],
                out("rax") lo,
                out("rdx") hi,
                out("rcx") _,
                out("r11") _,
                options(nostack)
            );
        }
        (ret, (hi << 32) | (lo & 0xffff_ffff))
    }

    /// The benchmarks' echo server, stamping each request's arrival and
    /// each reply's departure in the `Link` at `link`. It may run in
    /// another space: it touches only its stack and the link.
    extern "C" fn timed_server(link: u64) -> ! {
        // SAFETY: `link` is a live Link mapped in this thread's space for as
        // long as the benchmark runs (it is killed before the link goes).
        let link = unsafe { &*(link as *const Link) };
        let ps = Handle(link.portset.load(Ordering::Relaxed));
        let mut m = [0u64; 6];
        loop {
            let (ret, after) = timed_ipc::<true>(rt::nr::IPC_REPLY_WAIT, ps, &mut m, link.departing.as_ptr());
            if ret < 0 {
                rt::exit(1);
            }
            link.arrived.store(after, Ordering::Relaxed);
        }
    }

    /// Runs in this program's space: it fills the sample arrays.
    extern "C" fn timed_client(link: u64) -> ! {
        // SAFETY: as in `timed_server`; the main thread waits for this one.
        let link = unsafe { &*(link as *const Link) };
        let port = Handle(link.port.load(Ordering::Relaxed));
        let rounds = link.rounds.load(Ordering::Relaxed);
        let s = samples();
        let (call_legs, reply_legs) = legs();
        let mut m = [1u64, 2, 3, 4, 5, 6];
        let mut start = 0u64;
        // Warm up, then time each round trip and its two legs.
        for _ in 0..100 {
            timed_ipc::<true>(rt::nr::IPC_CALL, port, &mut m, &mut start);
        }
        for i in 0..rounds as usize {
            let (ret, end) = timed_ipc::<true>(rt::nr::IPC_CALL, port, &mut m, &mut start);
            if ret < 0 {
                rt::exit(1);
            }
            s[i] = end - start;
            call_legs[i] = link.arrived.load(Ordering::Relaxed).wrapping_sub(start);
            reply_legs[i] = end.wrapping_sub(link.departing.load(Ordering::Relaxed));
        }
        ITERATIONS.store(rounds, Ordering::Relaxed);
        rt::exit(0)
    }

    /// Where a round trip's server runs.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum ServerIn {
        /// A thread of this program, like the client.
        ThisSpace,
        /// A child space holding only this program's read-only image, a
        /// stack, the link page and its own handle to the portset: every
        /// call and reply switches address spaces.
        Child,
    }

    /// The server's space, with its link and its handle to `ps`.
    fn server_space(me: Handle, ps: Handle, port: Handle, server_in: ServerIn) -> Result<(Option<Handle>, &'static Link), &'static str> {
        if server_in == ServerIn::ThisSpace {
            SAME_SPACE_LINK.portset.store(ps.0, Ordering::Relaxed);
            SAME_SPACE_LINK.port.store(port.0, Ordering::Relaxed);
            return Ok((None, &SAME_SPACE_LINK));
        }
        use rt::memory as m;
        // SAFETY: this program's demand-zero memory, used only here; the
        // touches fault the pages in before the child maps them.
        unsafe {
            core::ptr::write_bytes(CROSS_LINK as *mut u8, 0, 4096);
            for page in 0..4 {
                core::ptr::write_volatile((CROSS_STACK + page * 4096) as *mut u64, 0);
            }
        }
        let child = obj::space_create(me).map_err(|_| "space_create failed")?;
        equip_probe_space(child, CROSS_STACK)?;
        let page = m::region_create(me, CROSS_LINK, 4096, m::READ | m::WRITE).map_err(|_| "link region failed")?;
        m::mapping_create(page, child, CROSS_LINK, 0, 4096, m::READ | m::WRITE).map_err(|_| "link mapping failed")?;
        let _ = obj::close(page);
        let child_ps = obj::transfer(child, ps, rights::RECEIVE).map_err(|_| "transferring the portset failed")?;
        // SAFETY: the page is mapped here and zeroed: an all-zero Link.
        let link = unsafe { &*(CROSS_LINK as *const Link) };
        link.portset.store(child_ps.0, Ordering::Relaxed);
        link.port.store(port.0, Ordering::Relaxed);
        Ok((Some(child), link))
    }

    fn ipc_bench(name: &str, cpus: u64, server_cpu: u64, client_cpu: u64, rounds: usize, server_in: ServerIn) -> Result<(), &'static str> {
        let me = obj::self_space();
        let ps = rt::ipc::portset_create().map_err(|_| "portset_create failed")?;
        let port = rt::ipc::port_create(ps, ALIAS).map_err(|_| "port_create failed")?;
        let (child, link) = server_space(me, ps, port, server_in)?;
        link.rounds.store(rounds as u64, Ordering::Relaxed);
        let link_arg = link as *const Link as u64;
        let server = match child {
            Some(c) => obj::thread_create(c, timed_server, PROBE_STACK_VA + 4 * 4096, link_arg),
            None => obj::thread_create(me, timed_server, stack_top(0), link_arg),
        }
        .map_err(|_| "thread_create failed")?;
        obj::thread_set_affinity(server, 1 << server_cpu).map_err(|_| "affinity failed")?;
        let client = obj::thread_create(me, timed_client, stack_top(1), link_arg).map_err(|_| "thread_create failed")?;
        obj::thread_set_affinity(client, 1 << client_cpu).map_err(|_| "affinity failed")?;
        let done = obj::thread_wait(client, true);
        let _ = obj::thread_kill(server);
        let _ = obj::thread_wait(server, true);
        for h in [client, server, port, ps] {
            let _ = obj::close(h);
        }
        if let Some(c) = child {
            let _ = obj::space_destroy(c);
        }
        done.map_err(|_| "the benchmark client failed")?;
        if server_cpu != client_cpu {
            report(name, cpus, rounds);
            return Ok(());
        }
        // Same CPU: add the legs' medians less what the timing adds, which
        // leaves (under -icount) the kernel's own instructions per leg,
        // from `syscall` to `sysret`.
        let (median, p99) = median_and_p99(&mut samples()[..rounds]);
        let (call_legs, reply_legs) = legs();
        let call_leg = median_and_p99(&mut call_legs[..rounds]).0;
        let reply_leg = median_and_p99(&mut reply_legs[..rounds]).0;
        let timing = {
            let s = &mut samples()[..rounds];
            let mut m = [0u64; 6];
            let mut start = 0u64;
            for slot in s.iter_mut() {
                *slot = timed_ipc::<false>(0, Handle(0), &mut m, &mut start).1 - start;
            }
            median_and_p99(s).0
        };
        println!(
            "{{\"bench\":\"{name}\",\"cpus\":{cpus},\"iterations\":{rounds},\"median_cycles\":{median},\"p99_cycles\":{p99},\"call_leg_median_cycles\":{},\"reply_leg_median_cycles\":{}}}",
            call_leg.saturating_sub(timing),
            reply_leg.saturating_sub(timing)
        );
        Ok(())
    }

    const ONEWAY_MESSAGES: u64 = 20_000;
    const MAX_PAIRS: usize = 4;
    static PAIR_PORTSETS: [AtomicU64; MAX_PAIRS] = [const { AtomicU64::new(0) }; MAX_PAIRS];
    static PAIR_PORTS: [AtomicU64; MAX_PAIRS] = [const { AtomicU64::new(0) }; MAX_PAIRS];
    static PAIR_CYCLES: [AtomicU64; MAX_PAIRS] = [const { AtomicU64::new(0) }; MAX_PAIRS];

    extern "C" fn pair_sender(pair: u64) -> ! {
        let port = Handle(PAIR_PORTS[pair as usize].load(Ordering::Relaxed));
        for i in 0..ONEWAY_MESSAGES {
            // The benchmark pairs run on distinct CPUs: spin while full.
            while rt::ipc::send(port, [i, 0, 0, 0, 0, 0]) == Err(SysError::WouldBlock) {
                core::hint::spin_loop();
            }
        }
        rt::exit(0)
    }

    /// Receives the pair's messages; pair 0 records each inter-arrival time.
    extern "C" fn pair_receiver(pair: u64) -> ! {
        let ps = Handle(PAIR_PORTSETS[pair as usize].load(Ordering::Relaxed));
        let s = samples();
        let Ok(_) = rt::ipc::receive(ps) else { rt::exit(1) };
        let start = tsc();
        let mut last = start;
        for i in 1..ONEWAY_MESSAGES as usize {
            if rt::ipc::receive(ps).is_err() {
                rt::exit(1);
            }
            let now = tsc();
            if pair == 0 {
                s[i - 1] = now - last;
            }
            last = now;
        }
        PAIR_CYCLES[pair as usize].store(last - start, Ordering::Relaxed);
        rt::exit(0)
    }

    /// `pairs` sender/receiver pairs on distinct CPUs streaming one-way messages.
    fn oneway_bench(cpus: u64, tsc_hz: u64, pairs: usize) -> Result<(), &'static str> {
        let me = obj::self_space();
        let mut threads = [Handle(0); 2 * MAX_PAIRS];
        let mut objects = [Handle(0); 2 * MAX_PAIRS];
        for p in 0..pairs {
            let ps = rt::ipc::portset_create().map_err(|_| "portset")?;
            let port = rt::ipc::port_create(ps, p as u64).map_err(|_| "port")?;
            PAIR_PORTSETS[p].store(ps.0, Ordering::Relaxed);
            PAIR_PORTS[p].store(port.0, Ordering::Relaxed);
            objects[2 * p] = ps;
            objects[2 * p + 1] = port;
        }
        for p in 0..pairs {
            let (send_cpu, recv_cpu) = if cpus >= 2 { (2 * p as u64, 2 * p as u64 + 1) } else { (0, 0) };
            let stacks = rt::memory::ROOT_ANONYMOUS_BASE + 0x40_0000 + p as u64 * 0x4_0000;
            let r = obj::thread_create(me, pair_receiver, stacks + 0x1_0000, p as u64).map_err(|_| "receiver")?;
            obj::thread_set_affinity(r, 1 << recv_cpu).map_err(|_| "affinity")?;
            let s = obj::thread_create(me, pair_sender, stacks + 0x3_0000, p as u64).map_err(|_| "sender")?;
            obj::thread_set_affinity(s, 1 << send_cpu).map_err(|_| "affinity")?;
            threads[2 * p] = r;
            threads[2 * p + 1] = s;
        }
        for t in threads.iter().take(2 * pairs) {
            if obj::thread_wait(*t, true) != Ok(0) {
                return Err("a one-way benchmark thread failed");
            }
        }
        for h in threads.iter().chain(objects.iter()).take(4 * pairs) {
            let _ = obj::close(*h);
        }
        let slowest = (0..pairs).map(|p| PAIR_CYCLES[p].load(Ordering::Relaxed)).max().unwrap_or(1).max(1);
        let msgs_per_sec = (pairs as u64 * (ONEWAY_MESSAGES - 1)) as u128 * tsc_hz as u128 / slowest as u128;
        let n = ONEWAY_MESSAGES as usize - 1;
        let s = &mut samples()[..n];
        s.sort_unstable();
        println!(
            "{{\"bench\":\"ipc_oneway_throughput\",\"cpus\":{cpus},\"pairs\":{pairs},\"iterations\":{n},\"median_cycles\":{},\"p99_cycles\":{},\"msgs_per_sec\":{msgs_per_sec}}}",
            s[n / 2],
            s[n * 99 / 100]
        );
        Ok(())
    }

    pub fn run() -> i32 {
        let (cpus, tsc_hz) = match obj::system_info() {
            Ok(i) => (i.cpus, i.tsc_hz),
            Err(_) => return 1,
        };
        let s = samples();
        for _ in 0..100 {
            let _ = rt::null();
        }
        for slot in s.iter_mut() {
            let t0 = tsc();
            let _ = rt::null();
            *slot = tsc() - t0;
        }
        report("null_syscall", cpus, N);
        let slow = obj::start_flags() & 2 != 0;
        let same_cpu = if slow { "ipc_rt_slowpath" } else { "ipc_rt_fastpath" };
        if let Err(e) = ipc_bench(same_cpu, cpus, 0, 0, N, ServerIn::ThisSpace) {
            println!("bench: {e}");
            return 2;
        }
        let cross_space = if slow { "ipc_rt_cross_space_slowpath" } else { "ipc_rt_cross_space" };
        if let Err(e) = ipc_bench(cross_space, cpus, 0, 0, N, ServerIn::Child) {
            println!("bench: {e}");
            return 5;
        }
        for pairs in 1..=((cpus / 2).max(1) as usize).min(MAX_PAIRS) {
            if let Err(e) = oneway_bench(cpus, tsc_hz, pairs) {
                println!("bench: {e}");
                return 4;
            }
        }
        if cpus >= 2 {
            let cross = if obj::start_flags() & 8 != 0 { "ipc_rt_cross_cpu_blocking" } else { "ipc_rt_cross_cpu_polled" };
            if let Err(e) = ipc_bench(cross, cpus, 1, 0, N / 4, ServerIn::ThisSpace) {
                println!("bench: {e}");
                return 3;
            }
        }
        0
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("init: this program runs under the Matryoshka kernel (`just build` packs it as the `init` boot module)");
    std::process::exit(2);
}
