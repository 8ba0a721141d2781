//! The hang report: when no CPU makes progress, print what every CPU is
//! doing and why every thread waits, so a hang reads like a panic.
//!
//! A report is asked for by the root program (`hang_report`, call 77: the
//! fuzzer's watchdog) or by the kernel's own watchdog (`watchdog=SECONDS`
//! on the command line: a timer tick on any CPU that sees no progress for
//! that long). The reporting CPU sends every other CPU an NMI; each records
//! where it was interrupted and the return addresses on its stack into its
//! slot and goes on, and the reporter prints the slots, each CPU's run
//! queue, and every thread the scheduler knows. Unlike a panic, the system
//! keeps running afterwards.
//!
//! Progress is a timer tick that interrupted user mode. A program that
//! spends nearly all its time in system calls still shows up: system calls
//! run with interrupts off, so a tick that came meanwhile is taken the
//! moment `sysret` turns them on again, in user mode. The watchdog counts
//! only while user threads exist, so a kernel idling after its root program
//! ended is not a hang (nor is every user thread blocked: that is a
//! deadlock, which the report is also for).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::idt::TrapFrame;
use crate::arch::{apic, cpu, percpu, smp};
use crate::console::print_line;

const FRAMES: usize = 16;

struct CpuSlot {
    taken: AtomicBool,
    rip: AtomicU64,
    cs: AtomicU64,
    rflags: AtomicU64,
    thread: AtomicU64,
    return_addresses: [AtomicU64; FRAMES],
}

static SLOTS: [CpuSlot; percpu::MAX_CPUS] = [const {
    CpuSlot {
        taken: AtomicBool::new(false),
        rip: AtomicU64::new(0),
        cs: AtomicU64::new(0),
        rflags: AtomicU64::new(0),
        thread: AtomicU64::new(0),
        return_addresses: [const { AtomicU64::new(0) }; FRAMES],
    }
}; percpu::MAX_CPUS];

/// Set while a report collects the other CPUs' state (their NMIs are for it).
static COLLECTING: AtomicBool = AtomicBool::new(false);
/// One report at a time.
static REPORTING: AtomicBool = AtomicBool::new(false);
static ACKS: AtomicUsize = AtomicUsize::new(0);

/// Ticks of user mode per CPU. Only its own CPU writes a counter (a load
/// and a store, no locked instruction), each on its own cache line.
#[repr(align(64))]
struct Progress(AtomicU64);
static PROGRESS: [Progress; percpu::MAX_CPUS] = [const { Progress(AtomicU64::new(0)) }; percpu::MAX_CPUS];

#[inline]
fn count_progress() {
    let p = &PROGRESS[percpu::this_cpu_index()].0;
    p.store(p.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}
/// The watchdog's limit in ticks (0: off), its last look at PROGRESS and
/// the ticks since it last changed.
static WATCHDOG_TICKS: AtomicU64 = AtomicU64::new(0);
static SEEN_PROGRESS: AtomicU64 = AtomicU64::new(0);
static STALLED_TICKS: AtomicU64 = AtomicU64::new(0);
/// Reports made, for tests and system_info.
pub static REPORTS: AtomicU64 = AtomicU64::new(0);

/// Turns the kernel watchdog on (`watchdog=SECONDS`).
pub fn set_watchdog_seconds(seconds: u64) {
    WATCHDOG_TICKS.store(seconds.saturating_mul(crate::arch::time::TICK_HZ), Ordering::Relaxed);
}

/// From the timer interrupt of the boot CPU's tick (one watchdog clock):
/// a tick of user mode is progress; no progress for the limit is a hang.
pub fn on_tick(from_user: bool) {
    if from_user {
        count_progress();
    }
    let limit = WATCHDOG_TICKS.load(Ordering::Relaxed);
    if limit == 0 || percpu::this_cpu_index() != 0 {
        return;
    }
    let now = PROGRESS.iter().fold(0u64, |sum, p| sum.wrapping_add(p.0.load(Ordering::Relaxed)));
    if now != SEEN_PROGRESS.swap(now, Ordering::Relaxed) || crate::sched::live_user_threads() == 0 {
        STALLED_TICKS.store(0, Ordering::Relaxed);
        return;
    }
    if STALLED_TICKS.fetch_add(1, Ordering::Relaxed) + 1 == limit {
        report("watchdog: no CPU made progress", limit / crate::arch::time::TICK_HZ);
        // Under the test harness a hang is a failure: end the run now, with
        // the report in the log, instead of waiting for the harness's timeout.
        if crate::panic::EXIT_QEMU_ON_PANIC.load(Ordering::Relaxed) {
            crate::arch::qemu_exit(0x11);
        }
    }
}

/// NMI handler's part: records this CPU's state if a report is collecting.
/// Returns true if the NMI was the report's.
pub fn on_nmi(frame: &TrapFrame) -> bool {
    if !COLLECTING.load(Ordering::Acquire) {
        return false;
    }
    let slot = &SLOTS[percpu::this_cpu_index()];
    slot.rip.store(frame.rip, Ordering::Relaxed);
    slot.cs.store(frame.cs, Ordering::Relaxed);
    slot.rflags.store(frame.rflags, Ordering::Relaxed);
    slot.thread.store(crate::sched::current_thread_address(), Ordering::Relaxed);
    let mut addresses = [0u64; FRAMES];
    let n = crate::panic::collect_return_addresses(frame.rbp, &mut addresses);
    for (i, a) in slot.return_addresses.iter().enumerate() {
        a.store(if i < n { addresses[i] } else { 0 }, Ordering::Relaxed);
    }
    slot.taken.store(true, Ordering::Release);
    ACKS.fetch_add(1, Ordering::AcqRel);
    true
}

/// Prints the report (`why`, and `seconds` without progress when the
/// watchdog asks). Returns false if another report is under way.
pub fn report(why: &str, seconds: u64) -> bool {
    if REPORTING.swap(true, Ordering::AcqRel) {
        return false;
    }
    cpu::without_interrupts(|| {
        let me = percpu::this_cpu_index();
        for slot in &SLOTS {
            slot.taken.store(false, Ordering::Relaxed);
        }
        ACKS.store(0, Ordering::Release);
        COLLECTING.store(true, Ordering::Release);
        let others = smp::online_count().saturating_sub(1);
        if others > 0 {
            apic::send_nmi_all_but_self();
            // Up to ~100 ms: a CPU that does not answer is reported as such.
            let deadline = cpu::read_tsc() + crate::arch::time::tsc_hz() / 10;
            while ACKS.load(Ordering::Acquire) < others && cpu::read_tsc() < deadline {
                cpu::pause();
            }
        }
        COLLECTING.store(false, Ordering::Release);
        REPORTS.fetch_add(1, Ordering::Relaxed);
        if seconds > 0 {
            print_line(format_args!("HANG REPORT: {why} for {seconds} s"));
        } else {
            print_line(format_args!("HANG REPORT: {why}"));
        }
        let symbols = crate::panic::symbol_table();
        for index in 0..smp::cpu_count() {
            if !percpu::cpu(index).online.load(Ordering::Acquire) {
                continue;
            }
            let (current, queued) = crate::sched::cpu_snapshot(index);
            let queued = if queued == usize::MAX { "locked".into() } else { alloc::format!("{queued}") };
            if index == me {
                let (name, address) = current.unwrap_or(("?", 0));
                print_line(format_args!("  cpu{index}: reporting; thread {name}@{address:#x}; run queue {queued}"));
                continue;
            }
            let slot = &SLOTS[index];
            if !slot.taken.load(Ordering::Acquire) {
                print_line(format_args!("  cpu{index}: did not answer the NMI; run queue {queued}"));
                continue;
            }
            let rip = slot.rip.load(Ordering::Relaxed);
            let ring = slot.cs.load(Ordering::Relaxed) & 3;
            let interrupts = if slot.rflags.load(Ordering::Relaxed) & (1 << 9) != 0 { "on" } else { "off" };
            print_line(format_args!(
                "  cpu{index}: at {rip:#x} {} (ring {ring}, interrupts {interrupts}); thread@{:#x}; run queue {queued}",
                crate::panic::describe_address(&symbols, rip, false),
                slot.thread.load(Ordering::Relaxed)
            ));
            for a in slot.return_addresses.iter().map(|a| a.load(Ordering::Relaxed)).take_while(|&a| a != 0) {
                print_line(format_args!("      from {a:#x} {}", crate::panic::describe_address(&symbols, a, true)));
            }
        }
        let (mut threads, mut exited) = (0usize, 0usize);
        crate::sched::for_each_thread(|t| {
            threads += 1;
            if t.state == "exited" {
                // Kept only by handles; nothing to say about them one by one.
                exited += 1;
                return;
            }
            let mut flags = alloc::string::String::new();
            for (bit, name) in [(1u8, " kill"), (2, " stop"), (4, " donated")] {
                if t.attention & bit != 0 {
                    flags.push_str(name);
                }
            }
            print_line(format_args!(
                "  thread {}@{:#x} space {}: {}{} on cpu{}{}{}",
                t.name,
                t.address,
                t.space.map_or("-".into(), |s| alloc::format!("{s}")),
                t.state,
                if t.state == "blocked" { alloc::format!(" ({:?})", t.wait) } else { "".into() },
                t.cpu,
                if t.on_cpu { " (on it)" } else { "" },
                if flags.is_empty() { "".into() } else { alloc::format!("; asked to{flags}") },
            ));
        });
        print_line(format_args!("HANG REPORT END: {threads} threads, {exited} of them exited (not listed)"));
    });
    REPORTING.store(false, Ordering::Release);
    true
}
