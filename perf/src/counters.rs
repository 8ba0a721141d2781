//! Per-thread perf-event counters with a fallback chain.
//!
//! [`detect`] tries the hardware events (`cycles`, `instructions`) first. In a
//! VM without a virtual PMU (this project's build machines) the kernel
//! refuses them, and we fall back to software events (`task-clock`,
//! `context-switches`, `cpu-migrations`, `page-faults`), saying so in the
//! note. If `perf_event_open` is not allowed at all (perf_event_paranoid,
//! seccomp), there are no counters and the note says that instead.
//!
//! [`Probe`] implements [`ThreadProbe`]: each benchmark thread opens its own
//! counter group on itself (user and kernel mode), and the totals over all
//! threads are summed.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use perf_event::events::{Event, Hardware, Software};
use perf_event::{Builder, Counter, Group};

use crate::ThreadProbe;

/// Which events could be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CPU cycles and retired instructions.
    Hardware,
    /// Kernel software events only.
    Software,
    /// `perf_event_open` failed for every event.
    Unavailable,
}

impl Mode {
    /// The events of this mode, with the names used in the JSON output.
    pub fn events(self) -> Vec<(&'static str, Event)> {
        match self {
            Mode::Hardware => vec![
                ("cycles", Hardware::CPU_CYCLES.into()),
                ("instructions", Hardware::INSTRUCTIONS.into()),
                ("context_switches", Software::CONTEXT_SWITCHES.into()),
            ],
            Mode::Software => vec![
                ("task_clock_ns", Software::TASK_CLOCK.into()),
                ("context_switches", Software::CONTEXT_SWITCHES.into()),
                ("cpu_migrations", Software::CPU_MIGRATIONS.into()),
                ("page_faults", Software::PAGE_FAULTS.into()),
            ],
            Mode::Unavailable => Vec::new(),
        }
    }
}

/// A counter group on the calling thread, enabled.
pub struct ThreadCounters {
    group: Group,
    counters: Vec<(&'static str, Counter)>,
}

impl ThreadCounters {
    /// Opens and enables `mode`'s events on the calling thread.
    pub fn open(mode: Mode) -> io::Result<Self> {
        let mut group = Group::new()?;
        let mut counters = Vec::new();
        for (name, event) in mode.events() {
            let mut builder = Builder::new().group(&mut group).kind(event);
            builder.include_kernel();
            counters.push((name, builder.build()?));
        }
        group.reset()?;
        group.enable()?;
        Ok(Self { group, counters })
    }

    /// Disables the group and returns the counts, scaled up if the kernel
    /// had to multiplex the hardware counters.
    pub fn finish(mut self) -> io::Result<BTreeMap<&'static str, u64>> {
        self.group.disable()?;
        let counts = self.group.read()?;
        let (enabled, running) = (counts.time_enabled(), counts.time_running());
        let scale = if running > 0 && running < enabled { enabled as f64 / running as f64 } else { 1.0 };
        Ok(self.counters.iter().map(|(name, c)| (*name, (counts[c] as f64 * scale).round() as u64)).collect())
    }
}

/// Finds the best available mode by opening it on the calling thread, and
/// explains the choice (the note goes into every JSON line).
pub fn detect() -> (Mode, String) {
    let hw = ThreadCounters::open(Mode::Hardware).and_then(ThreadCounters::finish);
    match hw {
        Ok(_) => (Mode::Hardware, "hardware counters: cycles and instructions (user+kernel), summed over the benchmark's threads".into()),
        Err(hw_err) => {
            let sw = ThreadCounters::open(Mode::Software).and_then(ThreadCounters::finish);
            match sw {
                Ok(_) => (
                    Mode::Software,
                    format!(
                        "hardware events (cycles, instructions) not supported here ({hw_err}; typical of a VM \
                         without a virtual PMU): fell back to software events task-clock, context-switches, \
                         cpu-migrations, page-faults, summed over the benchmark's threads"
                    ),
                ),
                Err(sw_err) => (
                    Mode::Unavailable,
                    format!(
                        "perf_event_open not allowed (hardware: {hw_err}; software: {sw_err}): no counters; \
                         check /proc/sys/kernel/perf_event_paranoid and the sandbox's seccomp policy"
                    ),
                ),
            }
        }
    }
}

/// A [`ThreadProbe`] that counts `mode`'s events on every benchmark thread
/// and sums them.
pub struct Probe {
    mode: Mode,
    totals: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<Vec<String>>,
}

impl Probe {
    /// A probe with empty totals.
    pub fn new(mode: Mode) -> Self {
        Self { mode, totals: Mutex::new(BTreeMap::new()), errors: Mutex::new(Vec::new()) }
    }

    /// The summed counts, and any per-thread errors, collected so far.
    pub fn take(&self) -> (BTreeMap<&'static str, u64>, Vec<String>) {
        (std::mem::take(&mut *self.totals.lock().unwrap()), std::mem::take(&mut *self.errors.lock().unwrap()))
    }
}

impl ThreadProbe for Probe {
    type Token = Option<ThreadCounters>;

    fn start(&self) -> Self::Token {
        if self.mode == Mode::Unavailable {
            return None;
        }
        match ThreadCounters::open(self.mode) {
            Ok(c) => Some(c),
            Err(e) => {
                self.errors.lock().unwrap().push(format!("open: {e}"));
                None
            }
        }
    }

    fn stop(&self, token: Self::Token) {
        let Some(counters) = token else { return };
        match counters.finish() {
            Ok(counts) => {
                let mut totals = self.totals.lock().unwrap();
                for (name, v) in counts {
                    *totals.entry(name).or_insert(0) += v;
                }
            }
            Err(e) => self.errors.lock().unwrap().push(format!("read: {e}")),
        }
    }
}
