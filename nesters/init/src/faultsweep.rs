//! The fault-injection sweep: a scenario that touches every kind of kernel
//! object is run once per allocation point, with that point made to fail
//! (`fault_inject`, the kernel's `mm::inject`). Every call must then either
//! succeed or fail with `NoMemory` (or `Dead` for a call on an object whose
//! creation was cut short, which cannot happen here: the scenario stops at
//! the first NoMemory), the kernel must not panic or hang, and once the
//! scenario has cleaned up, every frame and all kernel heap it took must be
//! back. The sweep ends at the first run in which the armed point was never
//! reached: every point of the scenario has then failed once.

use matryoshka_rt::ipc;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, FaultPlan, Handle};
use matryoshka_rt::{self as rt, SysError};

/// More runs than this means the scenario's point count is not stable.
const MAX_POINTS: u64 = 400;
/// Kernel heap the sweep may leave in use beyond the baseline: containers
/// that grew once (the thread registry, the freed-stack list) keep their
/// capacity. A leak per run would pass this within a few dozen runs.
const HEAP_SLACK: u64 = 4096;

/// The call that met the injected failure in the last run (pointer and
/// length of its name), for the report of a leak.
static STOPPED_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn stopped_at() -> &'static str {
    let v = STOPPED_AT.swap(0, core::sync::atomic::Ordering::Relaxed);
    if v == 0 {
        return "no call (a fault or a clean-up)";
    }
    // SAFETY: the value was made from a &'static str's pointer (48 bits in
    // the user half) and length by `step`.
    unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts((v & ((1 << 48) - 1)) as *const u8, (v >> 48) as usize)) }
}

const BACKING: u64 = m::ROOT_ANONYMOUS_BASE + 0x180_0000;

extern "C" fn exits(_: u64) -> ! {
    rt::exit(5)
}

/// What the scenario made, for its clean-up.
#[derive(Default)]
struct Made {
    handles: [Option<Handle>; 12],
    child: Option<Handle>,
}

impl Made {
    fn keep(&mut self, h: Handle) {
        if let Some(slot) = self.handles.iter_mut().find(|s| s.is_none()) {
            *slot = Some(h);
        }
    }

    fn clean_up(&mut self) {
        for h in self.handles.iter_mut().filter_map(Option::take) {
            let _ = obj::close(h);
        }
        if let Some(c) = self.child.take() {
            let _ = obj::space_destroy(c);
        }
    }
}

/// A call's outcome: its value, or the end of the scenario (Ok: it met the
/// injected NoMemory; Err: any other failure, which is a kernel bug).
fn step<T>(what: &'static str, r: Result<T, SysError>) -> Result<Option<T>, &'static str> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(SysError::NoMemory) => {
            STOPPED_AT.store(what.as_ptr() as u64 | (what.len() as u64) << 48, core::sync::atomic::Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => {
            rt::println!("init: fault sweep: {what} failed with {e:?}");
            Err("a call under fault injection failed with something other than NoMemory")
        }
    }
}

macro_rules! step {
    ($what:expr, $call:expr) => {
        match step($what, $call)? {
            Some(v) => v,
            None => return Ok(()),
        }
    };
}

/// Creates one of every kind of object and uses it once.
fn scenario(me: Handle, made: &mut Made) -> Result<(), &'static str> {
    let child = step!("space_create", obj::space_create(me));
    made.child = Some(child);
    let ps = step!("portset_create", ipc::portset_create());
    made.keep(ps);
    let port = step!("port_create", ipc::port_create(ps, 9));
    made.keep(port);
    let in_child = step!("transfer", obj::transfer(child, port, obj::rights::SEND));
    let _ = in_child;
    let dup = step!("duplicate", obj::duplicate(port, obj::rights::SEND));
    made.keep(dup);
    let reference = step!("reference_create", obj::reference_create(port));
    made.keep(reference);
    let mutex = step!("mutex", rt::sync::Mutex::new(0u32));
    drop(mutex);
    let region = step!("region_create", m::region_create(me, BACKING, 4 * 4096, m::READ | m::WRITE));
    made.keep(region);
    let mapping = step!("mapping_create", m::mapping_create(region, child, 0x2000_0000, 0, 4 * 4096, m::READ));
    made.keep(mapping);
    let stopped = step!("thread_create_stopped", obj::thread_create_stopped(child));
    made.keep(stopped);
    let mut records = [obj::Record::default(); 8];
    step!("space_enumerate", obj::space_enumerate(child, &mut records));
    step!("send", ipc::send(port, [1, 2, 3, 4, 5, 6]));
    let runner = step!("thread_create", obj::thread_create(me, exits, super::stack_top(3), 0));
    made.keep(runner);
    match obj::thread_wait(runner, true) {
        Ok(5) => {}
        // Its first page fault or its stack may be what failed: a fault.
        Err(SysError::Dead) => {}
        _ => return Err("a thread under fault injection ended oddly"),
    }
    Ok(())
}

pub fn check() -> Result<(), &'static str> {
    let me = obj::self_space();
    // SAFETY: the root's demand-zero memory, touched once so the region's pages exist.
    unsafe { core::ptr::write_volatile(BACKING as *mut u64, 0) };
    // A warm-up run with nothing failing lets the kernel grow what it keeps.
    let mut made = Made::default();
    scenario(me, &mut made)?;
    made.clean_up();
    let base = obj::system_info().map_err(|_| "system_info")?;
    let mut point = 1;
    loop {
        if point > MAX_POINTS {
            return Err("the scenario has more allocation points than expected");
        }
        let mut made = Made::default();
        STOPPED_AT.store(0, core::sync::atomic::Ordering::Relaxed);
        obj::fault_inject(FaultPlan::Nth(point)).map_err(|_| "fault_inject")?;
        let outcome = scenario(me, &mut made);
        let passed = obj::fault_inject(FaultPlan::Off).map_err(|_| "fault_inject")?;
        made.clean_up();
        if let Err(e) = outcome {
            rt::println!("init: fault sweep: with allocation point {point} failing");
            return Err(e);
        }
        let now = obj::system_info().map_err(|_| "system_info")?;
        if now.free_frames < base.free_frames {
            rt::println!(
                "init: fault sweep: point {point} ({}): {} frames fewer, {} kernel threads (before: {})",
                stopped_at(),
                base.free_frames - now.free_frames,
                now.kernel_threads,
                base.kernel_threads
            );
            return Err("a failed allocation leaked frames");
        }
        if now.kernel_heap_used > base.kernel_heap_used + HEAP_SLACK {
            rt::println!(
                "init: fault sweep: point {point} ({}): kernel heap {} bytes over",
                stopped_at(),
                now.kernel_heap_used - base.kernel_heap_used
            );
            return Err("a failed allocation leaked kernel heap");
        }
        if passed < point {
            // The armed point was never reached: every point has failed once.
            rt::println!("init: fault sweep: {} allocation points, each failed once", point - 1);
            return Ok(());
        }
        point += 1;
    }
}
