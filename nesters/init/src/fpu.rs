//! The `x87/SSE state` check: the kernel switches user FPU state lazily
//! (CR0.TS and a per-CPU owner), so these threads try to catch it mixing
//! up registers: on one CPU, across migrations, through get_state and
//! set_state, and around IPC fast-path switches (which must not load any).
//!
//! User programs are built soft-float, so the compiler never touches the
//! XMM registers between these asm blocks: what they hold is ours.

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::object::{self as obj, Handle};
use matryoshka_rt::{self as rt, println, SysError};

type Xmm = [[u64; 2]; 16];

/// Loads XMM0–15 and MXCSR.
fn load(v: &Xmm, mxcsr: u32) {
    // SAFETY: reads 256 + 4 bytes of the arguments; writes only XMM
    // registers and MXCSR, which no compiled code here uses.
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 16]", "movdqu xmm2, [{p} + 32]", "movdqu xmm3, [{p} + 48]",
            "movdqu xmm4, [{p} + 64]", "movdqu xmm5, [{p} + 80]", "movdqu xmm6, [{p} + 96]", "movdqu xmm7, [{p} + 112]",
            "movdqu xmm8, [{p} + 128]", "movdqu xmm9, [{p} + 144]", "movdqu xmm10, [{p} + 160]", "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]", "movdqu xmm13, [{p} + 208]", "movdqu xmm14, [{p} + 224]", "movdqu xmm15, [{p} + 240]",
            "ldmxcsr [{m}]",
            p = in(reg) v.as_ptr(),
            m = in(reg) &mxcsr,
            options(nostack, readonly, preserves_flags),
        )
    }
}

/// Reads XMM0–15 and MXCSR back.
fn store() -> (Xmm, u32) {
    let mut v: Xmm = [[0; 2]; 16];
    let mut mxcsr = 0u32;
    // SAFETY: writes 256 + 4 bytes into the locals.
    unsafe {
        core::arch::asm!(
            "movdqu [{p}], xmm0", "movdqu [{p} + 16], xmm1", "movdqu [{p} + 32], xmm2", "movdqu [{p} + 48], xmm3",
            "movdqu [{p} + 64], xmm4", "movdqu [{p} + 80], xmm5", "movdqu [{p} + 96], xmm6", "movdqu [{p} + 112], xmm7",
            "movdqu [{p} + 128], xmm8", "movdqu [{p} + 144], xmm9", "movdqu [{p} + 160], xmm10", "movdqu [{p} + 176], xmm11",
            "movdqu [{p} + 192], xmm12", "movdqu [{p} + 208], xmm13", "movdqu [{p} + 224], xmm14", "movdqu [{p} + 240], xmm15",
            "stmxcsr [{m}]",
            p = in(reg) v.as_mut_ptr(),
            m = in(reg) &mut mxcsr,
            options(nostack, preserves_flags),
        )
    }
    (v, mxcsr)
}

/// A register image no other thread uses: every lane derives from `seed`.
fn pattern(seed: u64) -> Xmm {
    let mut v: Xmm = [[0; 2]; 16];
    for (i, lane) in v.iter_mut().enumerate() {
        let x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64);
        *lane = [x, !x ^ (i as u64) << 56];
    }
    v
}

/// Distinct legal MXCSR values (rounding control in bits 13–14, all exceptions masked).
fn mxcsr_for(seed: u64) -> u32 {
    0x1f80 | ((seed as u32 & 3) << 13)
}

static FAILURES: AtomicU64 = AtomicU64::new(0);
static SELF_HANDLES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
const ROUNDS: u64 = 200;

/// Each round loads a new pattern, yields (and with `migrate`, moves to the
/// next CPU) and checks the registers: a stale copy of its own state would
/// show an earlier round's pattern.
extern "C" fn holder(arg: u64) -> ! {
    let (seed, migrate, slot) = (arg & 0xffff, arg >> 32 & 1 != 0, (arg >> 40) as usize);
    let cpus = obj::system_info().map(|i| i.cpus).unwrap_or(1);
    for round in 0..ROUNDS {
        let (want, want_mxcsr) = (pattern(seed << 16 | round), mxcsr_for(seed + round));
        load(&want, want_mxcsr);
        if migrate {
            let me = Handle(SELF_HANDLES[slot].load(Ordering::Acquire));
            let _ = obj::thread_set_affinity(me, 1 << (round % cpus));
        }
        obj::yield_now();
        if store() != (want, want_mxcsr) {
            FAILURES.fetch_add(1, Ordering::Relaxed);
        }
    }
    rt::exit(0)
}

static STATE_STEP: AtomicU64 = AtomicU64::new(0);
static SEEN_XMM5: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Loads a pattern, says so, spins until told, then reports XMM5.
extern "C" fn state_child(_: u64) -> ! {
    load(&pattern(77), mxcsr_for(1));
    STATE_STEP.store(1, Ordering::Release);
    while STATE_STEP.load(Ordering::Acquire) != 2 {
        core::hint::spin_loop();
    }
    let (v, mxcsr) = store();
    SEEN_XMM5[0].store(v[5][0], Ordering::Relaxed);
    SEEN_XMM5[1].store(v[5][1], Ordering::Relaxed);
    rt::exit(mxcsr as u64)
}

/// Calls the echo server with XMM registers loaded, checking both the
/// replies and its registers.
extern "C" fn sse_client(rounds: u64) -> ! {
    let port = Handle(super::PORT.load(Ordering::Relaxed));
    let want = pattern(5);
    load(&want, mxcsr_for(2));
    for i in 0..rounds {
        let reply = rt::ipc::call(port, [i, 0, 0, 0, 0, 1]);
        if reply.map(|m| m[0]) != Ok(i + 1) || store().0 != want {
            FAILURES.fetch_add(1, Ordering::Relaxed);
        }
    }
    rt::exit(0)
}

pub fn check() -> Result<(), &'static str> {
    let me = obj::self_space();
    let cpus = obj::system_info().map_err(|_| "system_info")?.cpus;
    FAILURES.store(0, Ordering::Relaxed);

    // Two holders share CPU 0, one migrates over every CPU, one stays on the last.
    let plan: [(u64, bool, u64); 4] = [(1, false, 1), (2, false, 1), (3, true, 0), (4, false, 1 << (cpus - 1))];
    let mut threads = [Handle(0); 4];
    for (i, &(seed, migrate, mask)) in plan.iter().enumerate() {
        let arg = seed | (migrate as u64) << 32 | (i as u64) << 40;
        let t = obj::thread_create_stopped(me).map_err(|_| "thread_create_stopped")?;
        SELF_HANDLES[i].store(t.0, Ordering::Release);
        if mask != 0 {
            obj::thread_set_affinity(t, mask).map_err(|_| "thread_set_affinity")?;
        }
        let mut s = obj::thread_get_state(t).map_err(|_| "thread_get_state (new thread)")?;
        if s.mxcsr() != 0x1f80 || (0..16).any(|r| s.xmm(r) != [0, 0]) {
            return Err("a new thread does not start with the initial x87/SSE state");
        }
        s.rip = holder as extern "C" fn(u64) -> ! as usize as u64;
        s.gpr[rt::object::ThreadState::RSP] = super::stack_top(i) - 8;
        s.gpr[rt::object::ThreadState::RDI] = arg;
        obj::thread_set_state(t, &s).map_err(|_| "thread_set_state (holder)")?;
        obj::thread_resume(t).map_err(|_| "thread_resume")?;
        threads[i] = t;
    }
    for t in threads {
        if obj::thread_wait(t, true) != Ok(0) {
            return Err("an x87/SSE holder thread failed");
        }
        let _ = obj::close(t);
    }
    let failures = FAILURES.load(Ordering::Relaxed);
    if failures != 0 {
        println!("init: {failures} register checks failed across switches and migrations");
        return Err("a thread's XMM registers or MXCSR changed under it");
    }

    // get_state shows the registers of a stopped thread; set_state changes them.
    STATE_STEP.store(0, Ordering::Relaxed);
    let child = obj::thread_create(me, state_child, super::stack_top(0), 0).map_err(|_| "thread_create")?;
    while STATE_STEP.load(Ordering::Acquire) != 1 {
        obj::yield_now();
    }
    obj::thread_stop(child).map_err(|_| "thread_stop")?;
    let mut s = obj::thread_get_state(child).map_err(|_| "thread_get_state")?;
    if s.xmm(5) != pattern(77)[5] || s.mxcsr() != mxcsr_for(1) {
        return Err("get_state does not show the stopped thread's XMM registers and MXCSR");
    }
    let mut hostile = s;
    hostile.set_mxcsr(u32::MAX);
    if obj::thread_set_state(child, &hostile) != Err(SysError::InvalidArgument) {
        return Err("set_state accepted an MXCSR that would fault");
    }
    s.set_xmm(5, [0x1234_5678, 0x9abc_def0]);
    s.set_mxcsr(mxcsr_for(3));
    obj::thread_set_state(child, &s).map_err(|_| "thread_set_state")?;
    obj::thread_resume(child).map_err(|_| "thread_resume")?;
    STATE_STEP.store(2, Ordering::Release);
    let code = obj::thread_wait(child, true);
    let _ = obj::close(child);
    if code != Ok(mxcsr_for(3) as u64)
        || [SEEN_XMM5[0].load(Ordering::Relaxed), SEEN_XMM5[1].load(Ordering::Relaxed)] != [0x1234_5678, 0x9abc_def0]
    {
        return Err("the thread did not resume with the XMM5 and MXCSR set_state gave it");
    }

    // Same-CPU IPC between an SSE client and a server that never touches the
    // FPU: the switches leave the registers alone (no loads at all once the
    // client owns them), and the client's registers survive.
    let rounds = 1000;
    let before = obj::system_info().map_err(|_| "system_info")?.fpu_loads;
    super::run_pair_with(sse_client, 0, 0, rounds)?;
    let loads = obj::system_info().map_err(|_| "system_info")?.fpu_loads - before;
    if FAILURES.load(Ordering::Relaxed) != 0 {
        return Err("an SSE client's replies or registers were wrong across IPC");
    }
    if loads > 4 {
        println!("init: {loads} x87/SSE loads in {rounds} same-CPU round trips");
        return Err("IPC switches loaded x87/SSE state (it should stay with its owner)");
    }
    Ok(())
}
