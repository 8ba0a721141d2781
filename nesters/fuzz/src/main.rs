//! fuzz: an in-guest system-call fuzzer, run as the root program of a fuzz
//! boot (`just fuzz`, or `mkboot qemu --init build/fuzz.elf --cmdline
//! "exit=qemu test=fuzz -- --seed S --calls N"`).
//!
//! * Workers (two or more per online CPU, pinned) each run in a nested
//!   space — a *cell*, one to three levels below the root — and make
//!   structure-aware random calls (`fuzzlib::gen`): every call of
//!   kernel/ABI.md with live, closed, wrong-type and forged handles, bad and
//!   boundary pointers and sizes, unknown rights and flags, each result
//!   checked against what the ABI promises. Calls that may block run on
//!   helper threads the worker kills at a deadline (src/worker.rs).
//! * The controller (src/controller.rs) reaps workers that finished, fails
//!   the run on a worker that failed or died, recycles cells while their
//!   workers are mid-call, and reports a call that never returns.
//! * The targeted phase (src/races.rs) runs tight two-CPU races: user
//!   copies vs. revocation, destroy vs. use, kill/stop/resume/set_state on
//!   one thread, and handle_close vs. use.
//! * The main thread is the watchdog: no progress for `--watchdog-secs`
//!   and it asks the kernel for its hang report (call 77) and exits 3.
//! * Leak check: a warm-up round first (the kernel keeps what it grows),
//!   then the measured round; afterwards the kernel's free frames (and, on
//!   kernels that report them, heap bytes and threads) must be back where
//!   they were.
//!
//! Exit codes: 0 all well, 1 a broken invariant, 2 bad arguments, 3 a hang,
//! 4 a leak, 5 the fuzzer could not set itself up.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

mod cells;
mod controller;
mod layout;
mod races;
mod run;
mod sys;
mod victims;
mod worker;

use core::sync::atomic::Ordering::{Acquire, Relaxed};

use fuzzlib::args::{self, Mode};
use matryoshka_rt::object as obj;
use matryoshka_rt::{self as rt, println};

use layout::{slot_base, IDLE, INFLIGHT_MAY_BLOCK};
use run::{phase, setup, verdict, Setup, MEASURED, RUN, WARMUP};

#[cfg(target_os = "none")]
rt::entry!(fuzz_main);

/// Start flag (rsi at start, set by the kernel's `fuzz` test case): run the
/// warm-up round only, so the kernel can take its own leak baseline after it.
const START_FLAG_WARMUP_ONLY: u64 = 16;

mod exit_code {
    pub const FAILED: i32 = 1;
    pub const ARGUMENTS: i32 = 2;
    pub const HUNG: i32 = 3;
    pub const LEAK: i32 = 4;
    pub const SETUP: i32 = 5;
}

fn fuzz_main() -> i32 {
    let mut buf = [0u8; 512];
    let line = match rt::boot_args(&mut buf) {
        Ok(l) => l,
        Err(e) => {
            println!("fuzz: cannot read the arguments: {e:?}");
            return exit_code::ARGUMENTS;
        }
    };
    let config = match args::parse(line) {
        Ok(c) => c,
        Err(e) => {
            println!("fuzz: bad argument '{}': {}", e.word, e.message);
            println!("fuzz: usage: --seed S --calls N [--targeted-calls N] [--warmup-calls N] [--workers-per-cpu K] [--mode random|targeted|both] [--avoid NAME,..] [--only NR,..,unknown] [--fault-permille P] [--watchdog-secs S] [--leak-rounds N] [--progress] [--trace]");
            return exit_code::ARGUMENTS;
        }
    };
    let (info, info_len) = match sys::system_info() {
        Ok(i) => i,
        Err(e) => {
            println!("fuzz: system_info failed: {e:?}");
            return exit_code::SETUP;
        }
    };
    let cpus = info[2].clamp(1, 64);
    let text = rt::memory::readonly_image();
    let Some(image_end) = image_end(text) else {
        println!("fuzz: cannot find this program's own ELF among the boot modules");
        return exit_code::SETUP;
    };
    run::set_up(Setup { config, cpus, tsc_hz: info[3].max(1_000_000), system_info_max: info_len, text, image_end });
    if controller::slots_needed() > layout::MAX_SLOTS {
        println!("fuzz: {cpus} CPUs with {} workers each need more than {} cells", config.workers_per_cpu, layout::MAX_SLOTS);
        return exit_code::ARGUMENTS;
    }
    let warmup_only = obj::start_flags() & START_FLAG_WARMUP_ONLY != 0;
    println!(
        "fuzz: seed {}, {} random and {} targeted calls ({} warm-up), {cpus} CPUs, {} workers per CPU, mode {}, avoid {:#x}, {} per mille of kernel allocations failing{}",
        config.seed,
        config.calls,
        config.targeted_calls,
        config.warmup_calls,
        config.workers_per_cpu,
        match config.mode {
            Mode::Random => "random",
            Mode::Targeted => "targeted",
            Mode::Both => "both",
        },
        config.avoid,
        config.fault_permille,
        if warmup_only { " (warm-up round only)" } else { "" }
    );
    pre_touch();
    let code = round(WARMUP);
    if code != 0 {
        return code;
    }
    if warmup_only {
        println!("fuzz: warm-up round done");
        return 0;
    }
    let before = Snapshot::take();
    let t0 = sys::tsc();
    let code = round(MEASURED);
    if code != 0 {
        return code;
    }
    let elapsed = sys::tsc() - t0;
    let (random, targeted) = (RUN.random_calls.load(Relaxed), RUN.targeted_calls.load(Relaxed));
    let (random_ticks, targeted_ticks) = (RUN.random_ticks.load(Relaxed), RUN.targeted_ticks.load(Relaxed));
    let details = details_line();
    let race_rates = races::rates();
    let (mut after, mut leaks) = Snapshot::settled_against(&before);
    // A round that reached higher peaks than the warm-up (more threads or
    // objects at once) leaves the kernel's tables bigger: growth, not a
    // leak. A smaller round after it (the warm-up's size, so below those
    // peaks) must then leave the counters alone.
    let mut baseline = before;
    for again in 1..=setup().config.leak_rounds as u64 {
        if leaks == 0 {
            break;
        }
        println!("fuzz: leak check: {} after round {again}; a smaller round tells growth from a leak", after.difference(&baseline));
        baseline = after;
        let code = round(MEASURED + again);
        if code != 0 {
            return code;
        }
        (after, leaks) = Snapshot::settled_against(&baseline);
    }
    println!("{details}");
    races::print_rates(&race_rates);
    summary(elapsed, (random, targeted), (random_ticks, targeted_ticks), &baseline, &after, leaks);
    if leaks != 0 {
        return exit_code::LEAK;
    }
    0
}

/// The page-aligned end of this program's loaded image (data and bss
/// included), from the program headers of its own ELF, the boot module
/// whose first segment starts at `text.0`.
fn image_end(text: (u64, u64)) -> Option<u64> {
    const PT_LOAD: u32 = 1;
    let word = |b: &[u8], at: usize, n: usize| -> Option<u64> {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b.get(at..at + n)?);
        Some(u64::from_le_bytes(v))
    };
    rt::boot::modules().find_map(|m| {
        let elf = m.bytes();
        if elf.get(..4) != Some(b"\x7fELF") {
            return None;
        }
        let (phoff, phentsize, phnum) = (word(elf, 0x20, 8)? as usize, word(elf, 0x36, 2)? as usize, word(elf, 0x38, 2)? as usize);
        let (mut lowest, mut end) = (u64::MAX, 0);
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            if word(elf, ph, 4)? as u32 == PT_LOAD {
                let (vaddr, memsz) = (word(elf, ph + 16, 8)?, word(elf, ph + 40, 8)?);
                lowest = lowest.min(vaddr);
                end = end.max(vaddr + memsz);
            }
        }
        (lowest == text.0 && end > text.1).then_some(end.next_multiple_of(fuzzlib::gen::PAGE))
    })
}

/// Touches every page of the root's memory the fuzzer uses, so the
/// kernel supplies those frames before the leak baseline, not during the round.
fn pre_touch() {
    let pages = |start: u64, bytes: u64| (0..bytes / fuzzlib::gen::PAGE).map(move |p| start + p * fuzzlib::gen::PAGE);
    let slots = pages(layout::SLOTS, controller::slots_needed() as u64 * layout::SLOT_BYTES);
    let stacks = pages(layout::ROOT_STACKS, layout::ROOT_STACK_COUNT * layout::ROOT_STACK_BYTES);
    for page in slots.chain(stacks) {
        // SAFETY: the root's demand-zero memory set aside for the slots and
        // root stacks; nothing uses it yet.
        unsafe { core::ptr::write_volatile(page as *mut u64, 0) };
    }
    for i in 0..controller::slots_needed() {
        // SAFETY: as above; no thread uses the slots yet.
        unsafe { layout::control_at(slot_base(i)) }.shared.inflight_nr.store(IDLE, Relaxed);
    }
    // The main thread's own stack (16 pages below 0x7fff0000, kernel/src/loader.rs):
    // touch the pages below the one in use.
    let here = &pages as *const _ as u64 & !(fuzzlib::gen::PAGE - 1);
    let mut page = 0x7fff_0000 - 16 * fuzzlib::gen::PAGE;
    while page + fuzzlib::gen::PAGE < here {
        // SAFETY: stack pages below the live part of this thread's stack,
        // which nothing uses (the deepest frames this program makes are
        // far shallower than 64 KiB).
        unsafe { core::ptr::write_volatile(page as *mut u64, 0) };
        page += fuzzlib::gen::PAGE;
    }
}

/// Touches every page of the slots' discard areas again: fuzzed
/// region_discard calls gave some of their frames back, and the leak check
/// counts frames exactly. Their content does not matter.
fn retouch_discard_areas() {
    for i in 0..controller::slots_needed() {
        let area = slot_base(i) + layout::DISCARD_OFFSET;
        for page in (0..layout::DISCARD_BYTES / fuzzlib::gen::PAGE).map(|p| area + p * fuzzlib::gen::PAGE) {
            // SAFETY: the discard area is root memory whose content nothing
            // relies on (cells map it for region_discard alone).
            unsafe { core::ptr::write_volatile(page as *mut u64, 0) };
        }
    }
}

/// Runs one round on the controller thread while this thread watches; returns an exit code.
fn round(kind: u64) -> i32 {
    RUN.reset();
    let entry = controller::controller_main as extern "C" fn(u64) -> ! as usize as u64;
    let controller = match obj::thread_create_raw(obj::self_space(), entry, layout::root_stack_top(0), kind) {
        Ok(t) => t,
        Err(e) => {
            println!("fuzz: cannot start the controller: {e:?}");
            return exit_code::SETUP;
        }
    };
    if let Err(why) = watch() {
        fire(why);
        return exit_code::HUNG;
    }
    let _ = obj::thread_wait(controller, true);
    let _ = obj::close(controller);
    match RUN.verdict.load(Relaxed) {
        verdict::OK => 0,
        verdict::HUNG => {
            fire("a call did not return");
            exit_code::HUNG
        }
        verdict::SETUP => exit_code::SETUP,
        _ => {
            println!(
                "fuzz: seed {}: FAILED in the {} round",
                setup().config.seed,
                match kind {
                    WARMUP => "warm-up",
                    MEASURED => "measured",
                    _ => "leak-check",
                }
            );
            exit_code::FAILED
        }
    }
}

/// Waits for the controller to finish the round; `Err` when it, or the
/// fuzzing it drives, stopped making progress.
fn watch() -> Result<(), &'static str> {
    let limit = setup().watchdog_ticks();
    let mut beat = (RUN.heartbeat.load(Relaxed), sys::tsc());
    let mut activity = (RUN.activity.load(Relaxed), sys::tsc());
    let mut last_report = (sys::tsc(), 0u64, 0u64);
    while RUN.done.load(Acquire) == 0 {
        obj::yield_now();
        let now = sys::tsc();
        if setup().config.progress && now - last_report.0 > setup().tsc_hz {
            let (r, t) = (RUN.random_calls.load(Relaxed), RUN.targeted_calls.load(Relaxed));
            let secs = (now - last_report.0) as f64 / setup().tsc_hz as f64;
            let (dr, dt) = (r.saturating_sub(last_report.1), t.saturating_sub(last_report.2));
            let (frames, heap, threads) = Snapshot::peek();
            println!(
                "fuzz: progress: {} phase, {r} random ({:.0}/s), {t} targeted ({:.0}/s), {} support; free frames {frames}, heap {heap}, threads {threads}",
                phase::NAMES.get(RUN.phase.load(Relaxed) as usize).unwrap_or(&"?"),
                dr as f64 / secs,
                dt as f64 / secs,
                RUN.support_calls.load(Relaxed)
            );
            last_report = (now, r, t);
        }
        let b = RUN.heartbeat.load(Relaxed);
        if b != beat.0 {
            beat = (b, now);
        } else if now - beat.1 > limit {
            return Err("the controller made no progress");
        }
        let a = RUN.activity.load(Relaxed);
        let fuzzing = matches!(RUN.phase.load(Relaxed), phase::RANDOM | phase::TARGETED);
        if a != activity.0 || !fuzzing {
            activity = (a, now);
        } else if now - activity.1 > limit {
            return Err("no fuzzed call completed");
        }
    }
    Ok(())
}

/// The watchdog fired: say what everyone was doing, ask the kernel for
/// its hang report.
fn fire(why: &str) {
    let s = setup();
    let p = RUN.phase.load(Relaxed) as usize;
    println!(
        "fuzz: WATCHDOG: {why} for {} s (seed {}, phase {})",
        s.config.watchdog_secs,
        s.config.seed,
        phase::NAMES.get(p).unwrap_or(&"?")
    );
    for i in 0..controller::race_slot_base() {
        report_cell(i);
    }
    races::report();
    match sys::hang_report() {
        Ok(_) => println!("fuzz: the kernel's hang report is above"),
        Err(e) => println!("fuzz: hang_report (call 77) failed: {e:?}"),
    }
    println!("fuzz: seed {}: HANG", s.config.seed);
}

/// Prints what slot `i`'s worker is doing and did last.
pub fn report_cell(i: usize) {
    // SAFETY: slot addresses are root memory set aside for the cells.
    let sh = unsafe { &layout::control_at(slot_base(i)).shared };
    let nr_ = sh.inflight_nr.load(Relaxed);
    let calls = sh.calls.load(Relaxed);
    if nr_ == IDLE {
        println!("fuzz:   cell {i}: state {}, {calls} calls, between calls", sh.state.load(Relaxed));
    } else {
        let age_ms = sys::tsc().saturating_sub(sh.inflight_tsc.load(Relaxed)) / (setup().tsc_hz / 1000).max(1);
        let r: [u64; 8] = core::array::from_fn(|k| sh.inflight_regs[k].load(Relaxed));
        println!(
            "fuzz:   cell {i}: state {}, {calls} calls, in call {nr_}{} for {age_ms} ms: rdi {:#x} rsi {:#x} rdx {:#x} r10 {:#x} r8 {:#x} r9 {:#x} r12 {:#x} r13 {:#x}",
            sh.state.load(Relaxed),
            if sh.inflight_class.load(Relaxed) & INFLIGHT_MAY_BLOCK != 0 { " (may block)" } else { "" },
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7]
        );
    }
    if calls > 0 {
        worker::print_recent(sh);
    }
}

/// The kernel frees the stacks of threads that are gone only when it next
/// destroys a space (`sched::reap`); destroying an empty one frees those of
/// the threads whose last handle was just closed, so the counts compare.
fn flush_dead_threads() {
    if let Ok(s) = obj::space_create(obj::self_space()) {
        let _ = obj::space_destroy(s);
    }
}

/// How far the kernel heap in use may move between identical states: the
/// shape of its B-trees (and so their node count) depends on the order of
/// the insertions and removals that led there, and that order is random here.
const HEAP_NOISE_BYTES: u64 = 1024;

/// The kernel's resource counters the leak check compares.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    free_frames: u64,
    /// Kernel heap bytes in use and kernel threads not yet freed (0 when
    /// the kernel's system_info does not report them).
    heap_bytes: u64,
    threads: u64,
}

impl Snapshot {
    /// The counters right now, without flushing (for progress lines).
    fn peek() -> (u64, u64, u64) {
        let (w, _) = sys::system_info().unwrap_or(([0; 16], 0));
        (w[1], w[6], w[7])
    }

    fn take() -> Snapshot {
        flush_dead_threads();
        retouch_discard_areas();
        let (w, len) = sys::system_info().unwrap_or(([0; 16], 0));
        let full = len >= 64;
        Snapshot { free_frames: w[1], heap_bytes: if full { w[6] } else { 0 }, threads: if full { w[7] } else { 0 } }
    }

    /// How many counters moved since `base`: frames and threads exactly;
    /// the heap by more than [`HEAP_NOISE_BYTES`].
    fn leaks_against(&self, base: &Snapshot) -> u32 {
        let heap = self.heap_bytes.abs_diff(base.heap_bytes) > HEAP_NOISE_BYTES;
        (self.free_frames != base.free_frames) as u32 + heap as u32 + (self.threads != base.threads) as u32
    }

    /// How `self` differs from `base`, for a message.
    fn difference(&self, base: &Snapshot) -> Difference {
        Difference {
            frames: base.free_frames as i64 - self.free_frames as i64,
            heap: self.heap_bytes as i64 - base.heap_bytes as i64,
            threads: self.threads as i64 - base.threads as i64,
        }
    }

    /// Takes snapshots until they match `before` (the kernel may still be
    /// freeing what the round's last threads held) or half a second passed;
    /// returns the last one and how many counters differ.
    fn settled_against(before: &Snapshot) -> (Snapshot, u32) {
        let deadline = sys::tsc() + setup().tsc_hz / 2;
        loop {
            let now = Snapshot::take();
            let leaks = now.leaks_against(before);
            if leaks == 0 || sys::tsc() > deadline {
                return (now, leaks);
            }
            obj::yield_now();
        }
    }
}

/// What the measured round did besides its calls.
fn details_line() -> Details {
    Details {
        support: RUN.support_calls.load(Relaxed),
        recycles: RUN.recycles.load(Relaxed),
        kills: RUN.kills_in_flight.load(Relaxed),
        random_ticks: RUN.random_ticks.load(Relaxed),
        targeted_ticks: RUN.targeted_ticks.load(Relaxed),
    }
}

struct Details {
    support: u64,
    recycles: u64,
    kills: u64,
    random_ticks: u64,
    targeted_ticks: u64,
}

impl core::fmt::Display for Details {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let hz = setup().tsc_hz as f64;
        write!(
            f,
            "fuzz: details: {} support calls, {} cells recycled ({} while their worker was mid-call), {:.1} s random, {:.1} s targeted",
            self.support,
            self.recycles,
            self.kills,
            self.random_ticks as f64 / hz,
            self.targeted_ticks as f64 / hz
        )
    }
}

struct Difference {
    frames: i64,
    heap: i64,
    threads: i64,
}

impl core::fmt::Display for Difference {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{} frames, {} heap bytes and {} kernel threads more in use", self.frames, self.heap, self.threads)
    }
}

fn summary(
    elapsed: u64,
    (random, targeted): (u64, u64),
    (random_ticks, targeted_ticks): (u64, u64),
    before: &Snapshot,
    after: &Snapshot,
    leaks: u32,
) {
    let s = setup();
    let secs = |ticks: u64| ticks as f64 / s.tsc_hz as f64;
    let rate = |calls: u64, ticks: u64| if ticks == 0 { 0 } else { (calls as f64 / secs(ticks)) as u64 };
    println!(
        "fuzz: leak check: free frames {} before, {} after; kernel heap {} bytes before, {} after; kernel threads {} before, {} after",
        before.free_frames, after.free_frames, before.heap_bytes, after.heap_bytes, before.threads, after.threads
    );
    println!(
        "fuzz: seed {}: {random} random calls, {targeted} targeted calls, {:.1} seconds, {} calls/s random, {} calls/s targeted, {leaks} leaks",
        s.config.seed,
        secs(elapsed),
        rate(random, random_ticks),
        rate(targeted, targeted_ticks)
    );
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("fuzz: this program runs under the Matryoshka kernel as the root program (`just fuzz`)");
    std::process::exit(2);
}
