//! The controller: runs one round (random phase, then the targeted races),
//! keeps a worker on every CPU, reaps finished and dead workers, recycles
//! cells while their workers are mid-call (kill vs. in-flight call), and
//! notices a call that should have returned long ago.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use fuzzlib::args::{avoid, Mode};
use fuzzlib::rng::Rng;
use matryoshka_rt::{self as rt, println, SysError};

use crate::cells::{exit_status, Cell, Resources};
use crate::layout::{self, state, IDLE, INFLIGHT_MAY_BLOCK};
use crate::run::{phase, setup, verdict, Failure, MEASURED, RUN};

/// Slots of the race cells come after the workers'.
pub fn race_slot_base() -> usize {
    let s = setup();
    (s.cpus * s.config.workers_per_cpu as u64) as usize
}

pub fn slots_needed() -> usize {
    race_slot_base() + crate::races::MAX_INSTANCES
}

/// Entry of the controller thread (a root thread); `round` is WARMUP,
/// MEASURED or a repeat (MEASURED + n, of the warm-up's size: it only has
/// to show that the counters stay put).
pub extern "C" fn controller_main(round: u64) -> ! {
    let v = match run_round(round) {
        Ok(()) => verdict::OK,
        Err(Failure) if RUN.hung_slot.load(Relaxed) != 0 => verdict::HUNG,
        Err(Failure) => verdict::FAILED,
    };
    RUN.verdict.store(v, Relaxed);
    RUN.phase.store(phase::DONE, Relaxed);
    RUN.done.store(1, Release);
    rt::exit(0)
}

fn run_round(round: u64) -> Result<(), Failure> {
    let s = setup();
    let cfg = &s.config;
    let mut rng = Rng::derive(cfg.seed, 0xc0_0000 + round);
    let mut res = Resources::create(slots_needed())?;
    let (random, targeted) = if round == MEASURED { (cfg.calls, cfg.targeted_calls) } else { (cfg.warmup_calls, cfg.warmup_calls) };
    let result = (|| {
        if cfg.mode != Mode::Targeted && random > 0 {
            RUN.phase.store(phase::RANDOM, Relaxed);
            random_phase(&res, &mut rng, random)?;
        }
        if cfg.mode != Mode::Random && targeted > 0 {
            RUN.phase.store(phase::TARGETED, Relaxed);
            crate::races::targeted_phase(&res, targeted)?;
        }
        Ok(())
    })();
    RUN.phase.store(phase::TEARDOWN, Relaxed);
    RUN.beat();
    let torn_down = res.destroy();
    result.and(torn_down)
}

/// The cells of the random phase and what the controller knows of them.
struct Workers {
    cells: [Cell; layout::MAX_SLOTS],
    incarnations: [u64; layout::MAX_SLOTS],
    n: usize,
    /// Random and support calls of workers that are gone.
    gone_calls: u64,
    gone_support: u64,
}

fn random_phase(res: &Resources, rng: &mut Rng, target: u64) -> Result<(), Failure> {
    let s = setup();
    let t0 = crate::sys::tsc();
    let n = (s.cpus * s.config.workers_per_cpu as u64) as usize;
    let mut w =
        Workers { cells: [Cell::default(); layout::MAX_SLOTS], incarnations: [0; layout::MAX_SLOTS], n, gone_calls: 0, gone_support: 0 };
    for (i, c) in w.cells.iter_mut().enumerate() {
        c.slot = i;
    }
    if s.config.fault_permille > 0 {
        // From now on a seeded share of the kernel's allocations fail: every
        // call must then end in success or NoMemory, and leak nothing.
        fault_inject(2, s.config.seed ^ 0xfa17, s.config.fault_permille as u64);
    }
    for i in 0..n {
        start_cell(&mut w, res, rng, i)?;
    }
    let result = (|| loop {
        RUN.beat();
        let (calls, support, progress) = w.totals();
        RUN.random_calls.store(calls, Relaxed);
        RUN.support_calls.store(support, Relaxed);
        RUN.activity.store(progress, Relaxed);
        if calls >= target {
            return Ok(());
        }
        for i in 0..n {
            if w.cells[i].live {
                inspect(&mut w, res, rng, i)?;
            } else {
                start_cell(&mut w, res, rng, i)?;
            }
        }
        let i = rng.below(n as u64) as usize;
        if s.config.avoid & avoid::KILL_INFLIGHT == 0 && w.cells[i].live && rng.chance(256) {
            RUN.kills_in_flight.fetch_add(1, Relaxed);
            recycle(&mut w, res, rng, i)?;
        }
        rt::object::yield_now();
    })();
    if s.config.fault_permille > 0 {
        fault_inject(0, 0, 0);
    }
    // Every cell dies now, whatever its worker is doing.
    for i in 0..n {
        let c = &mut w.cells[i];
        if s.config.avoid & avoid::DESTROY_DEAD != 0 {
            c.stop_worker()?;
        }
        let destroyed = c.destroy();
        w.account(i);
        destroyed?;
    }
    let (calls, support, _) = w.totals();
    RUN.random_calls.store(calls, Relaxed);
    RUN.support_calls.store(support, Relaxed);
    RUN.random_ticks.store(crate::sys::tsc() - t0, Relaxed);
    result
}

impl Workers {
    /// (random calls, support calls, progress) of all workers, gone and live.
    fn totals(&self) -> (u64, u64, u64) {
        let mut t = (self.gone_calls, self.gone_support, self.gone_calls);
        for c in self.cells[..self.n].iter().filter(|c| c.live) {
            let sh = &c.control().shared;
            t.0 += sh.calls.load(Relaxed);
            t.1 += sh.support_calls.load(Relaxed);
            t.2 += sh.progress.load(Relaxed);
        }
        t
    }

    /// Moves the counts of cell `i`'s worker (gone now) to the totals.
    fn account(&mut self, i: usize) {
        let sh = &self.cells[i].control().shared;
        self.gone_calls += sh.calls.swap(0, Relaxed);
        self.gone_support += sh.support_calls.swap(0, Relaxed);
        sh.progress.store(0, Relaxed);
    }
}

/// Arms (mode 2: fail `b` per mille of allocations, seeded with `a`) or
/// disarms (mode 0) the kernel's allocation fault injector (root only).
fn fault_inject(mode: u64, a: u64, b: u64) {
    // SAFETY: fault_inject takes no pointers; it changes how kernel
    // allocations behave, which the whole phase is prepared for.
    let r = unsafe { crate::sys::raw(matryoshka_rt::nr::FAULT_INJECT, [mode, a, b, 0, 0, 0, 0, 0]) };
    if r.ret < 0 {
        println!("fuzz: fault_inject({mode}, {a:#x}, {b}) failed with {}", r.ret);
    }
}

fn budget(rng: &mut Rng) -> u64 {
    rng.range(300, 4000)
}

/// Builds cell `i` and starts its worker. While the kernel's allocation
/// fault injector is armed, running out of memory is expected: the cell
/// stays empty and the controller tries again later.
fn start_cell(w: &mut Workers, res: &Resources, rng: &mut Rng, i: usize) -> Result<(), Failure> {
    let cpus = setup().cpus;
    let injecting = setup().config.fault_permille > 0;
    let started = Cell::try_build(i, res, rng).and_then(|mut c| {
        c.incarnation = w.incarnations[i];
        match c.try_start_worker(i as u64 % cpus, budget(rng)) {
            Ok(()) => Ok(c),
            Err(e) => {
                c.discard();
                Err(e)
            }
        }
    });
    w.incarnations[i] += 1;
    match started {
        Ok(c) => {
            w.cells[i] = c;
            Ok(())
        }
        Err((_, SysError::NoMemory)) if injecting => {
            w.cells[i] = Cell { slot: i, ..Cell::default() };
            Ok(())
        }
        Err((what, e)) => {
            println!("fuzz: FAIL: {what} failed with {e:?}");
            Err(Failure)
        }
    }
}

/// Replaces cell `i`'s worker: a new worker in the same space (once), or a new space.
fn recycle(w: &mut Workers, res: &Resources, rng: &mut Rng, i: usize) -> Result<(), Failure> {
    RUN.recycles.fetch_add(1, Relaxed);
    let cpus = setup().cpus;
    let c = &mut w.cells[i];
    if c.generation == 0 && rng.chance(400) {
        c.stop_worker()?;
        check_not_failed(c)?;
        w.account(i);
        let c = &mut w.cells[i];
        c.generation = 1;
        c.incarnation = w.incarnations[i];
        w.incarnations[i] += 1;
        return c.start_worker(i as u64 % cpus, budget(rng));
    }
    if setup().config.avoid & avoid::DESTROY_DEAD != 0 {
        // The worker may be destroying a space of its own cell right now:
        // two destroys of one space at once tear it down twice.
        c.stop_worker()?;
    }
    c.destroy()?;
    check_not_failed(&w.cells[i])?;
    w.account(i);
    start_cell(w, res, rng, i)
}

fn check_not_failed(c: &Cell) -> Result<(), Failure> {
    if c.control().shared.state.load(Acquire) == state::FAILED {
        println!("fuzz: the worker of cell {} failed (see above)", c.slot);
        return Err(Failure);
    }
    Ok(())
}

/// Looks at cell `i`'s worker: finished (recycle), failed or dead (the
/// round fails), stuck in a call that must return (a hang), or busy.
fn inspect(w: &mut Workers, res: &Resources, rng: &mut Rng, i: usize) -> Result<(), Failure> {
    let c = &w.cells[i];
    let sh = &c.control().shared;
    match exit_status(c.worker) {
        None => {
            let nr_ = sh.inflight_nr.load(Acquire);
            let since = sh.inflight_tsc.load(Relaxed);
            let may_block = sh.inflight_class.load(Relaxed) & INFLIGHT_MAY_BLOCK != 0;
            let age = crate::sys::tsc().saturating_sub(since);
            if nr_ != IDLE && !may_block && age > setup().watchdog_ticks() {
                println!("fuzz: HANG: the worker of cell {i} has been in call {nr_} for {} s", age / setup().tsc_hz);
                crate::report_cell(i);
                RUN.hung_slot.store(i as u64 + 1, Relaxed);
                return Err(Failure);
            }
            Ok(())
        }
        Some(Ok(0)) if sh.state.load(Acquire) == state::FINISHED => recycle(w, res, rng, i),
        Some(r) => {
            let st = sh.state.load(Acquire);
            if st != state::FAILED {
                println!("fuzz: FAIL: the worker of cell {i} ended with {r:?} in state {st} (a worker never faults or exits early)");
                crate::report_cell(i);
            }
            Err(Failure)
        }
    }
}
