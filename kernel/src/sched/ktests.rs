//! In-guest test cases for threads and the scheduler (run by `ktest`).

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super as sched;
use super::{SchedError, Thread, USER_PRIORITY};
use crate::arch::x86_64::syscall::UserExit;
use crate::arch::x86_64_exports::*;
use crate::mm::frame::{self, FRAME_SIZE};

type CaseResult = Result<(), String>;

/// A named in-kernel test case.
pub type Case = (&'static str, fn() -> CaseResult);

pub const CASES: &[Case] = &[
    ("kernel_threads", kernel_threads),
    ("sched_errors", sched_errors),
    ("user_threads_all_cpus", user_threads_all_cpus),
    ("preemption", preemption),
    ("migration", migration),
];

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

static SEEN_CPU: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; percpu::MAX_CPUS];

fn record_cpu(slot: usize) {
    SEEN_CPU[slot].store(percpu::this_cpu_index() as u64, Ordering::Relaxed);
    sched::sleep_ticks(1);
    if SEEN_CPU[slot].load(Ordering::Relaxed) != percpu::this_cpu_index() as u64 {
        SEEN_CPU[slot].store(u64::MAX - 1, Ordering::Relaxed); // moved while pinned
    }
}

fn kernel_threads() -> CaseResult {
    let n = smp::online_count();
    let mut threads = Vec::new();
    for i in 0..n {
        SEEN_CPU[i].store(u64::MAX, Ordering::Relaxed);
        threads.push(sched::spawn_kernel("ktest", record_cpu, i, 1 << i).map_err(|e| format!("spawn: {e:?}"))?);
    }
    for (i, t) in threads.iter().enumerate() {
        let exit = sched::join(t);
        check!(exit == UserExit::Exited(0), "thread {i} ended with {exit:?}");
        check!(SEEN_CPU[i].load(Ordering::Relaxed) == i as u64, "thread pinned to cpu{i} ran on {}", SEEN_CPU[i].load(Ordering::Relaxed));
        check!(t.ran_on() == 1 << i, "thread pinned to cpu{i} ran on mask {:#x}", t.ran_on());
    }
    drop(threads);
    sched::reap_all(10);
    Ok(())
}

fn sched_errors() -> CaseResult {
    let root = paging::new_user_root().map_err(|e| format!("{e:?}"))?;
    let r = sched::spawn_user("bad", root, (0xffff_ffff_8000_0000, 0x1000, 0), USER_PRIORITY, 0);
    check!(matches!(r, Err(SchedError::BadUserAddress)), "kernel entry point accepted: {:?}", r.map(|_| ()));
    let r = sched::spawn_user("bad", root, (0x1000, 0xffff_8000_0000_0000, 0), USER_PRIORITY, 0);
    check!(matches!(r, Err(SchedError::BadUserAddress)), "kernel stack accepted");
    let absent = 1u64 << 63;
    let r = sched::spawn_kernel("bad", |_| {}, 0, absent);
    check!(matches!(r, Err(SchedError::NoAllowedCpu)), "affinity with no online CPU accepted");
    paging::destroy_user_root(root);
    Ok(())
}

// A user program that counts forever: `inc qword [rdi]` in a loop.
core::arch::global_asm!(
    r#"
    .section .rodata.user_programs, "a"
    .global user_counter_start
    .global user_counter_end
user_counter_start:
1:  lock inc qword ptr [rdi]
    jmp 1b
user_counter_end:
    .text
"#
);

extern "C" {
    static user_counter_start: u8;
    static user_counter_end: u8;
}

const CODE_VA: u64 = 0x40_0000;
const DATA_VA: u64 = 0x60_0000;
const STACKS_TOP: u64 = 0x7fff_0000;

/// One address space running the counter program: a code page, a data page
/// of counters (one u64 per thread) and one stack page per thread.
struct CounterSpace {
    root: u64,
    data: u64,
    threads: Vec<Arc<Thread>>,
}

impl CounterSpace {
    fn new() -> Result<Self, String> {
        let (root, data) = crate::ktest::user_test_space(
            core::ptr::addr_of!(user_counter_start),
            core::ptr::addr_of!(user_counter_end),
            CODE_VA,
            DATA_VA,
        )?;
        Ok(CounterSpace { root, data, threads: Vec::new() })
    }

    fn spawn(&mut self, affinity: u64) -> Result<Arc<Thread>, String> {
        let i = self.threads.len() as u64;
        let stack_va = STACKS_TOP - (i + 1) * 2 * FRAME_SIZE;
        let stack = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
        paging::map_user_page(self.root, stack_va, stack, true, false).map_err(|e| format!("{e:?}"))?;
        let t = sched::spawn_user("counter", self.root, (CODE_VA, stack_va + FRAME_SIZE, DATA_VA + 8 * i), USER_PRIORITY, affinity)
            .map_err(|e| format!("spawn: {e:?}"))?;
        self.threads.push(t.clone());
        Ok(t)
    }

    fn count(&self, i: usize) -> u64 {
        // SAFETY: the data frame lives until `finish`; counters are aligned
        // u64s that user threads only increment atomically.
        unsafe { (*((paging::phys_to_virt(self.data) + 8 * i as u64) as *const AtomicU64)).load(Ordering::Relaxed) }
    }

    /// Kills and joins every thread, then frees the address space.
    fn finish(self) -> CaseResult {
        for t in &self.threads {
            sched::kill(t);
        }
        let mut result = Ok(());
        for (i, t) in self.threads.iter().enumerate() {
            let exit = sched::join(t);
            if exit != UserExit::Killed && result.is_ok() {
                result = Err(format!("counter thread {i} ended with {exit:?}, wanted Killed"));
            }
        }
        drop(self.threads);
        sched::reap_all(10);
        paging::destroy_user_root(self.root);
        result
    }
}

fn user_threads_all_cpus() -> CaseResult {
    let before = frame::stats().free;
    let n = smp::online_count();
    let mut space = CounterSpace::new()?;
    for i in 0..n {
        space.spawn(1 << i)?;
    }
    sched::sleep_ticks(20);
    let counts: Vec<u64> = (0..n).map(|i| space.count(i)).collect();
    let masks: Vec<u64> = space.threads.iter().map(|t| t.ran_on()).collect();
    space.finish()?;
    for i in 0..n {
        check!(counts[i] > 0, "user thread pinned to cpu{i} never ran (counts {counts:?})");
        check!(masks[i] == 1 << i, "user thread pinned to cpu{i} ran on mask {:#x}", masks[i]);
    }
    let after = frame::stats().free;
    check!(after == before, "threads and address space leaked {} frames", before as i64 - after as i64);
    Ok(())
}

fn preemption() -> CaseResult {
    let cpu = smp::online_count() - 1;
    let mut space = CounterSpace::new()?;
    space.spawn(1 << cpu)?;
    space.spawn(1 << cpu)?;
    sched::sleep_ticks(5);
    let first = (space.count(0), space.count(1));
    sched::sleep_ticks(20);
    let second = (space.count(0), space.count(1));
    space.finish()?;
    check!(second.0 > first.0 && second.1 > first.1, "two spinning threads on cpu{cpu} did not share it: {first:?} then {second:?}");
    Ok(())
}

fn migration() -> CaseResult {
    let n = smp::online_count();
    if n < 2 {
        return Ok(()); // nowhere to migrate to; sched_errors covers affinity checks
    }
    let (from, to) = (0, n - 1);
    let mut space = CounterSpace::new()?;
    let t = space.spawn(1 << from)?;
    sched::sleep_ticks(5);
    let on_from = (t.cpu(), t.ran_on());
    sched::set_affinity(&t, 1 << to).map_err(|e| format!("{e:?}"))?;
    sched::sleep_ticks(5);
    let moved_at = space.count(0);
    sched::sleep_ticks(10);
    let on_to = (t.cpu(), t.ran_on(), space.count(0));
    space.finish()?;
    check!(on_from == (from, 1 << from), "before migration: cpu {} mask {:#x}", on_from.0, on_from.1);
    check!(on_to.0 == to, "thread did not move to cpu{to} (on cpu{})", on_to.0);
    check!(on_to.1 == (1 << from) | (1 << to), "ran on mask {:#x}", on_to.1);
    check!(on_to.2 > moved_at, "thread stopped counting after migration");
    Ok(())
}
