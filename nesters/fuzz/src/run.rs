//! State of a fuzzing round that the root's threads share: the main thread
//! (watchdog and verdict), the controller and the race threads. Only root
//! threads use these statics (cells do not map the root's data).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use fuzzlib::args::Config;
use matryoshka_rt::object::Handle;
use matryoshka_rt::SysError;

/// Round kinds (the controller's argument).
pub const WARMUP: u64 = 0;
pub const MEASURED: u64 = 1;

/// Phases, for the watchdog's report.
pub mod phase {
    pub const SETUP: u64 = 0;
    pub const RANDOM: u64 = 1;
    pub const TARGETED: u64 = 2;
    pub const TEARDOWN: u64 = 3;
    pub const DONE: u64 = 4;
    pub const NAMES: [&str; 5] = ["setup", "random calls", "targeted races", "teardown", "done"];
}

/// How a round ended.
pub mod verdict {
    pub const OK: u64 = 0;
    /// A broken invariant (the thread that found it printed it).
    pub const FAILED: u64 = 1;
    /// A call that must return did not (the controller noticed).
    pub const HUNG: u64 = 3;
    /// The fuzzer could not set itself up.
    pub const SETUP: u64 = 5;
}

pub struct Run {
    /// Bumped by the controller on every step: it is not stuck.
    pub heartbeat: AtomicU64,
    /// Bumped by the controller whenever fuzzed calls completed since its last look.
    pub activity: AtomicU64,
    pub phase: AtomicU64,
    pub done: AtomicU64,
    pub verdict: AtomicU64,
    pub random_calls: AtomicU64,
    pub support_calls: AtomicU64,
    pub targeted_calls: AtomicU64,
    pub random_ticks: AtomicU64,
    pub targeted_ticks: AtomicU64,
    /// The slot whose worker hung in a call, plus one (0: none).
    pub hung_slot: AtomicU64,
    /// Cells recycled (space destroyed or worker replaced) and how many of
    /// those interrupted a worker mid-call on purpose.
    pub recycles: AtomicU64,
    pub kills_in_flight: AtomicU64,
}

impl Run {
    pub const fn new() -> Run {
        Run {
            heartbeat: AtomicU64::new(0),
            activity: AtomicU64::new(0),
            phase: AtomicU64::new(phase::SETUP),
            done: AtomicU64::new(0),
            verdict: AtomicU64::new(verdict::OK),
            random_calls: AtomicU64::new(0),
            support_calls: AtomicU64::new(0),
            targeted_calls: AtomicU64::new(0),
            random_ticks: AtomicU64::new(0),
            targeted_ticks: AtomicU64::new(0),
            hung_slot: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
            kills_in_flight: AtomicU64::new(0),
        }
    }

    /// Back to the start of a round.
    pub fn reset(&self) {
        for a in [
            &self.heartbeat,
            &self.activity,
            &self.done,
            &self.verdict,
            &self.random_calls,
            &self.support_calls,
            &self.targeted_calls,
            &self.random_ticks,
            &self.targeted_ticks,
            &self.hung_slot,
            &self.recycles,
            &self.kills_in_flight,
        ] {
            a.store(0, Relaxed);
        }
        self.phase.store(phase::SETUP, Relaxed);
    }

    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Relaxed);
    }
}

pub static RUN: Run = Run::new();

/// Values fixed before any other thread starts.
pub struct Setup {
    pub config: Config,
    pub cpus: u64,
    pub tsc_hz: u64,
    pub system_info_max: u64,
    /// The root's text and read-only data `[start, end)`.
    pub text: (u64, u64),
    /// The end of its data and bss (page-aligned): cells map `[text.1,
    /// image_end)` read-only, since constants with addresses in them
    /// (vtables, panic locations) live in .data.
    pub image_end: u64,
}

pub struct SetupCell(UnsafeCell<Setup>);
// SAFETY: written once by the main thread before it starts any other
// thread (see `set_up`), read-only afterwards.
unsafe impl Sync for SetupCell {}

static SETUP: SetupCell = SetupCell(UnsafeCell::new(Setup {
    config: fuzzlib_default_config(),
    cpus: 1,
    tsc_hz: 1,
    system_info_max: 48,
    text: (0, 0),
    image_end: 0,
}));

const fn fuzzlib_default_config() -> Config {
    Config {
        seed: 1,
        calls: 0,
        targeted_calls: 0,
        warmup_calls: 0,
        workers_per_cpu: 1,
        mode: fuzzlib::args::Mode::Both,
        avoid: 0,
        watchdog_secs: 20,
        trace: false,
        progress: false,
        fault_permille: 0,
        leak_rounds: 3,
        only: u128::MAX,
    }
}

/// Stores the setup; only the main thread, before it starts other threads.
pub fn set_up(s: Setup) {
    // SAFETY: see SetupCell: no other thread runs yet.
    unsafe { *SETUP.0.get() = s };
}

pub fn setup() -> &'static Setup {
    // SAFETY: see SetupCell.
    unsafe { &*SETUP.0.get() }
}

impl Setup {
    pub fn tsc_per_us(&self) -> u64 {
        (self.tsc_hz / 1_000_000).max(1)
    }
    pub fn watchdog_ticks(&self) -> u64 {
        self.config.watchdog_secs * self.tsc_hz
    }
}

/// A system call of the root's machinery that must succeed; `what` names
/// it in the failure message.
pub fn must<T>(what: &'static str, r: Result<T, SysError>) -> Result<T, Failure> {
    r.map_err(|e| {
        matryoshka_rt::println!("fuzz: FAIL: {what} failed with {e:?}");
        Failure
    })
}

/// A round failed; what went wrong has been printed.
#[derive(Debug)]
pub struct Failure;

/// Closes a root handle that may already be dead (errors do not matter).
pub fn close_quietly(h: u64) {
    if h != 0 {
        let _ = matryoshka_rt::object::close(Handle(h));
    }
}

/// Spins for about `ticks` TSC ticks (to vary interleavings).
pub fn spin_ticks(ticks: u64) {
    let end = crate::sys::tsc() + ticks;
    while crate::sys::tsc() < end {
        core::hint::spin_loop();
    }
}
