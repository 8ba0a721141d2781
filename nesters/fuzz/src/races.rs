//! The targeted phase: tight loops on two CPUs that race one operation
//! against another on the same object.
//!
//! * copy vs. revoke: a thread in a cell makes calls that copy from or to a
//!   buffer (space_enumerate, thread_get_state, object_get_state,
//!   system_info, queued messages, an IPC payload, a console write) while a
//!   root thread protects the buffer's region to nothing, read-only and back,
//!   destroys its mapping, or destroys the region and builds it again;
//! * destroy vs. use: space_destroy of a cell while its threads make calls;
//! * thread control: stop, resume, get_state, set_state, wait and kill of
//!   one thread from two root threads at once;
//! * close vs. use: one thread of a cell closes the handle another uses.
//!
//! One instance per pair of CPUs runs at once; each race gets an equal
//! share of the phase's calls.

use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use fuzzlib::args::avoid;
use fuzzlib::gen::{kind, victim, PAGE};
use fuzzlib::rng::Rng;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, rights, Handle};
use matryoshka_rt::{self as rt, ipc, nr, println, SysError};

use crate::cells::{exit_status, Cell, Resources};
use crate::layout::{self, root_stack_top, slot_base, RaceBlock, IN_CELL, MAP_AREA, RACE_BUFFER_BYTES, RACE_BUFFER_OFFSET, RACE_BUFFER_VA};
use crate::run::{close_quietly, must, setup, spin_ticks, Failure, RUN};
use crate::sys;

pub const MAX_INSTANCES: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Race {
    CopyRevoke,
    DestroyUse,
    ThreadControl,
    CloseUse,
}

const RACES: [(Race, u32, &str); 4] = [
    (Race::CopyRevoke, avoid::COPY_REVOKE, "copy vs revoke"),
    (Race::DestroyUse, avoid::DESTROY_USE, "destroy vs use"),
    (Race::ThreadControl, avoid::THREAD_CONTROL, "kill/stop/resume/set_state"),
    (Race::CloseUse, avoid::CLOSE_USE, "close vs use"),
];

/// Each race's share of the phase's calls (per cent of the enabled races'
/// total): stopping a thread takes a switch on its CPU, so the thread
/// control race makes far fewer calls per second than the others.
const SHARE: [u64; 4] = [35, 20, 15, 30];

/// One running race instance, shared between its runner thread, its
/// partner thread (thread control) and the controller.
struct Instance {
    race: AtomicU64,
    budget: AtomicU64,
    cpus: [AtomicU64; 2],
    /// Calls made by the root-side threads of the instance.
    calls: AtomicU64,
    partner_calls: AtomicU64,
    partner_stop: AtomicU64,
    /// The thread the thread-control race works on (a root handle).
    target: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Instance {
    const fn new() -> Instance {
        Instance {
            race: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            cpus: [AtomicU64::new(0), AtomicU64::new(0)],
            calls: AtomicU64::new(0),
            partner_calls: AtomicU64::new(0),
            partner_stop: AtomicU64::new(0),
            target: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

static INSTANCES: [Instance; MAX_INSTANCES] = [const { Instance::new() }; MAX_INSTANCES];

/// Calls and TSC ticks of each race in the last targeted phase, for the summary.
static RACE_CALLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static RACE_TICKS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// (calls, TSC ticks) of each race in the last targeted phase.
pub fn rates() -> [(u64, u64); 4] {
    core::array::from_fn(|k| (RACE_CALLS[k].load(Relaxed), RACE_TICKS[k].load(Relaxed)))
}

/// One line per race that ran (`rates` of the measured round): its calls and rate.
pub fn print_rates(rates: &[(u64, u64); 4]) {
    let hz = setup().tsc_hz as f64;
    for (k, (_, _, name)) in RACES.iter().enumerate() {
        let (calls, ticks) = rates[k];
        if ticks > 0 {
            println!("fuzz: race {name}: {calls} calls, {:.1} s, {} calls/s", ticks as f64 / hz, (calls as f64 * hz / ticks as f64) as u64);
        }
    }
}

/// Root thread stacks: 0 is the controller's, then runners, then partners.
fn runner_stack(i: usize) -> u64 {
    root_stack_top(1 + i as u64)
}
fn partner_stack(i: usize) -> u64 {
    root_stack_top(1 + (MAX_INSTANCES + i) as u64)
}

fn race_block(i: usize) -> &'static RaceBlock {
    // SAFETY: the race slots are root memory set aside for the race cells.
    unsafe { &layout::control_at(slot_base(crate::controller::race_slot_base() + i)).race }
}

/// Calls made by instance `i` so far (root side and cell side).
fn instance_calls(i: usize) -> u64 {
    let rb = race_block(i);
    INSTANCES[i].calls.load(Relaxed) + INSTANCES[i].partner_calls.load(Relaxed) + rb.calls[0].load(Relaxed) + rb.calls[1].load(Relaxed)
}

pub fn targeted_phase(res: &Resources, target: u64) -> Result<(), Failure> {
    let s = setup();
    let t0 = sys::tsc();
    let mut enabled = [RACES[0]; 4];
    let mut n = 0;
    for r in RACES.iter().filter(|(_, bit, _)| s.config.avoid & bit == 0) {
        enabled[n] = *r;
        n += 1;
    }
    let races = &enabled[..n];
    let instances = ((s.cpus / 2) as usize).clamp(1, MAX_INSTANCES);
    let mut total = 0;
    for a in RACE_CALLS.iter().chain(RACE_TICKS.iter()) {
        a.store(0, Relaxed);
    }
    for &(race, _, name) in races {
        let race_t0 = sys::tsc();
        let weights: u64 = races.iter().map(|&(r, _, _)| SHARE[r as usize]).sum();
        let share = target * SHARE[race as usize] / weights.max(1);
        let per_instance = (share / instances as u64).max(1);
        // The runners build their own cells from the shared resources.
        RESOURCES_TEXT.store(res.text.0, Relaxed);
        RESOURCES_DATA.store(res.data.0, Relaxed);
        for (i, slot) in RESOURCES_SLOT.iter().enumerate().take(instances) {
            slot.store(res.slots[crate::controller::race_slot_base() + i], Relaxed);
        }
        let mut threads = [0u64; MAX_INSTANCES];
        for (i, t) in threads.iter_mut().enumerate().take(instances) {
            let inst = &INSTANCES[i];
            for a in [&inst.calls, &inst.partner_calls, &inst.partner_stop, &inst.target, &inst.done, &inst.failed] {
                a.store(0, Relaxed);
            }
            reset_race_block(race_block(i));
            inst.race.store(race as u64, Relaxed);
            inst.budget.store(per_instance, Relaxed);
            let (a, b) = ((2 * i as u64) % s.cpus, (2 * i as u64 + 1) % s.cpus);
            inst.cpus[0].store(a, Relaxed);
            inst.cpus[1].store(b, Relaxed);
            let h = must("thread_create of a race runner", obj::thread_create(obj::self_space(), runner_main, runner_stack(i), i as u64))?;
            must("thread_set_affinity of a race runner", obj::thread_set_affinity(h, 1 << b))?;
            *t = h.0;
        }
        let mut failed = false;
        loop {
            RUN.beat();
            let calls: u64 = (0..instances).map(instance_calls).sum();
            RUN.targeted_calls.store(total + calls, Relaxed);
            RUN.activity.store(total + calls, Relaxed);
            if (0..instances).all(|i| INSTANCES[i].done.load(Acquire) != 0) {
                total += calls;
                RACE_CALLS[race as usize].store(calls, Relaxed);
                RACE_TICKS[race as usize].store(sys::tsc() - race_t0, Relaxed);
                break;
            }
            rt::object::yield_now();
        }
        for (i, &t) in threads.iter().enumerate().take(instances) {
            let _ = obj::thread_wait(Handle(t), true);
            close_quietly(t);
            if INSTANCES[i].failed.load(Relaxed) != 0 {
                println!("fuzz: FAIL: race '{name}' (instance {i}) broke an invariant (see above)");
                failed = true;
            }
        }
        if failed {
            RUN.targeted_ticks.store(sys::tsc() - t0, Relaxed);
            return Err(Failure);
        }
    }
    RUN.targeted_calls.store(total, Relaxed);
    RUN.targeted_ticks.store(sys::tsc() - t0, Relaxed);
    Ok(())
}

static RESOURCES_TEXT: AtomicU64 = AtomicU64::new(0);
static RESOURCES_DATA: AtomicU64 = AtomicU64::new(0);
static RESOURCES_SLOT: [AtomicU64; MAX_INSTANCES] = [const { AtomicU64::new(0) }; MAX_INSTANCES];

/// For the watchdog: what every race instance has done.
pub fn report() {
    if RUN.phase.load(Relaxed) != crate::run::phase::TARGETED {
        return;
    }
    for (i, inst) in INSTANCES.iter().enumerate() {
        let rb = race_block(i);
        println!(
            "fuzz:   race instance {i}: race {} done {}, root-side calls {} + {}, cell-side calls {} + {}, target {:#x}",
            inst.race.load(Relaxed),
            inst.done.load(Relaxed),
            inst.calls.load(Relaxed),
            inst.partner_calls.load(Relaxed),
            rb.calls[0].load(Relaxed),
            rb.calls[1].load(Relaxed),
            inst.target.load(Relaxed)
        );
    }
}

fn reset_race_block(rb: &RaceBlock) {
    rb.stop.store(0, Relaxed);
    rb.budget.store(u64::MAX, Relaxed);
    for a in rb.calls.iter().chain(rb.last_failure.iter()).chain(rb.handles.iter()).chain(rb.desc.iter()) {
        a.store(0, Relaxed);
    }
    rb.failures.store(0, Relaxed);
    rb.current.store(0, Relaxed);
}

/// Entry of a race runner (a root thread) for instance `i`.
extern "C" fn runner_main(i: u64) -> ! {
    let i = i as usize;
    let inst = &INSTANCES[i];
    let race = match inst.race.load(Relaxed) {
        0 => Race::CopyRevoke,
        1 => Race::DestroyUse,
        2 => Race::ThreadControl,
        _ => Race::CloseUse,
    };
    let mut rng = Rng::derive(setup().config.seed, 0x4ace_0000 + i as u64 * 16 + race as u64);
    let res = Resources { text: Handle(RESOURCES_TEXT.load(Relaxed)), data: Handle(RESOURCES_DATA.load(Relaxed)), slots: slots_for(i) };
    let slot = crate::controller::race_slot_base() + i;
    let r = match race {
        Race::CopyRevoke => copy_revoke(i, slot, &res, &mut rng),
        Race::DestroyUse => destroy_use(i, slot, &res, &mut rng),
        Race::ThreadControl => thread_control(i, slot, &res, &mut rng),
        Race::CloseUse => close_use(i, slot, &res, &mut rng),
    };
    if r.is_err() {
        inst.failed.store(1, Relaxed);
    }
    inst.done.store(1, Release);
    rt::exit(0)
}

/// A Resources value whose slot list has this instance's region at its slot index.
fn slots_for(i: usize) -> [u64; layout::MAX_SLOTS] {
    let mut s = [0; layout::MAX_SLOTS];
    s[crate::controller::race_slot_base() + i] = RESOURCES_SLOT[i].load(Relaxed);
    s
}

fn count(i: usize, n: u64) {
    INSTANCES[i].calls.fetch_add(n, Relaxed);
}

fn budget_left(i: usize) -> bool {
    instance_calls(i) < INSTANCES[i].budget.load(Relaxed)
}

/// Waits (polling, so the controller's heartbeat goes on) until `t` ends;
/// kills it after `patience_ms`.
fn wait_or_kill(t: u64, patience_ms: u64) {
    let s = setup();
    let deadline = sys::tsc() + patience_ms * s.tsc_per_us() * 1000;
    while exit_status(t).is_none() {
        if sys::tsc() > deadline {
            let _ = obj::thread_kill(Handle(t));
            let _ = obj::thread_wait(Handle(t), true);
            break;
        }
        obj::yield_now();
    }
}

fn report_cell_failures(name: &str, rb: &RaceBlock) -> Result<(), Failure> {
    let n = rb.failures.load(Relaxed);
    if n == 0 {
        return Ok(());
    }
    let [nr_, ret, rule] = [0, 1, 2].map(|k| rb.last_failure[k].load(Relaxed));
    println!("fuzz: FAIL: {name}: {n} broken invariants in the cell; the last: call {nr_} returned {} (rule {rule})", ret as i64);
    Err(Failure)
}

/// Notes a broken invariant of a cell-side race thread.
fn cell_failure(rb: &RaceBlock, nr_: u64, ret: i64, rule: u64) {
    rb.failures.fetch_add(1, Relaxed);
    rb.last_failure[0].store(nr_, Relaxed);
    rb.last_failure[1].store(ret as u64, Relaxed);
    rb.last_failure[2].store(rule, Relaxed);
}

fn is_abi_error(ret: i64) -> bool {
    (-10..=-1).contains(&ret)
}

// ---- copy vs revoke --------------------------------------------------

const BAD_POINTER: i64 = -2;
const BAD_SIZE: i64 = -3;
const INVALID_ARGUMENT: i64 = -8;
const DEAD: i64 = -9;
const BAD_HANDLE: i64 = -4;
const WOULD_BLOCK: i64 = -10;

fn copy_revoke(i: usize, slot: usize, res: &Resources, rng: &mut Rng) -> Result<(), Failure> {
    let me = obj::self_space();
    let cell = Cell::build(slot, res, rng)?;
    let leaf = cell.leaf();
    let buffer_at = slot_base(slot) + RACE_BUFFER_OFFSET;
    let mut region = must("race buffer region", m::region_create(me, buffer_at, RACE_BUFFER_BYTES, m::READ | m::WRITE))?;
    let mut mapping =
        must("race buffer mapping", m::mapping_create(region, leaf, RACE_BUFFER_VA, 0, RACE_BUFFER_BYTES, m::READ | m::WRITE))?;
    let ps = must("portset", ipc::portset_create())?;
    let port = must("port", ipc::port_create(ps, 7))?;
    let stopped = must("thread_create_stopped", obj::thread_create_stopped(leaf))?;
    let rb = race_block(i);
    let in_cell = |h: Handle, r: u32| must("handle_transfer into a race cell", obj::transfer(leaf, h, r)).map(|h| h.0);
    rb.handles[0].store(cell.self_in_cell[0], Relaxed);
    rb.handles[1].store(in_cell(ps, rights::ALL)?, Relaxed);
    rb.handles[2].store(in_cell(port, rights::ALL)?, Relaxed);
    rb.handles[3].store(in_cell(stopped, rights::ALL)?, Relaxed);
    let victims = crate::victims::entry_points();
    let server = must("race server", obj::thread_create_raw(leaf, victims[victim::SERVE], 0, rb.handles[1].load(Relaxed)))?;
    let copier_entry = copier_main as extern "C" fn(u64) -> ! as usize as u64;
    let copier = must("copier thread", obj::thread_create_raw(leaf, copier_entry, IN_CELL.stack_top(), IN_CELL.control()))?;
    must("copier affinity", obj::thread_set_affinity(copier, 1 << INSTANCES[i].cpus[0].load(Relaxed)))?;
    count(i, 12);
    let mut result = Ok(());
    let mut j = 0u64;
    while budget_left(i) && result.is_ok() {
        j += 1;
        let step = match j % 16 {
            12 => {
                // Unmap and map again.
                let r = m::mapping_destroy(mapping)
                    .and_then(|_| m::mapping_create(region, leaf, RACE_BUFFER_VA, 0, RACE_BUFFER_BYTES, m::READ | m::WRITE));
                count(i, 2);
                r.map(|h| mapping = h)
            }
            13 if j % 64 == 13 => {
                // Destroy the region (revoking the mapping) and build both again.
                let r = m::region_destroy(region)
                    .and_then(|_| m::region_create(me, buffer_at, RACE_BUFFER_BYTES, m::READ | m::WRITE))
                    .and_then(|r| {
                        region = r;
                        close_quietly(mapping.0);
                        m::mapping_create(r, leaf, RACE_BUFFER_VA, 0, RACE_BUFFER_BYTES, m::READ | m::WRITE)
                    });
                count(i, 4);
                r.map(|h| mapping = h)
            }
            k => {
                count(i, 1);
                m::region_protect(region, [0, m::READ, m::READ | m::WRITE][(k % 3) as usize])
            }
        };
        if let Err(e) = step {
            println!("fuzz: FAIL: copy vs revoke: revoking the buffer failed with {e:?} (step {j})");
            result = Err(Failure);
        }
        spin_ticks(rng.below(2000));
    }
    rb.stop.store(1, Release);
    wait_or_kill(copier.0, 2000);
    result = result.and(report_cell_failures("copy vs revoke", rb));
    let mut cell = cell;
    let destroyed = cell.destroy();
    let _ = m::region_destroy(region);
    for h in [mapping, ps, port, stopped, server, copier] {
        close_quietly(h.0);
    }
    result.and(destroyed)
}

/// The cell side of copy vs revoke: calls that copy through the buffer,
/// whose memory the root revokes and restores all the while. Each may
/// succeed or fail with BadPointer, nothing else (and never crash the kernel).
extern "C" fn copier_main(control: u64) -> ! {
    // SAFETY: started with its slot's control block address, mapped for the cell's life.
    let rb = unsafe { &(*(control as *const layout::Control)).race };
    let h = |k: usize| rb.handles[k].load(Relaxed);
    let (space, ps, port, stopped) = (h(0), h(1), h(2), h(3));
    let buf = RACE_BUFFER_VA;
    let desc = rb.desc.as_ptr() as u64;
    let mut n = 0u64;
    while rb.stop.load(Relaxed) == 0 {
        n += 1;
        // Besides success and BadPointer, the errors each call may give.
        let (nr_, regs, extra_ok): (u64, [u64; 8], &[i64]) = match n % 9 {
            0 => (nr::SPACE_ENUMERATE, [space, buf + PAGE - 24, 4, 0, 0, 0, 0, 0], &[]),
            1 => (nr::THREAD_GET_STATE, [stopped, buf + 100, 664, 0, 0, 0, 0, 0], &[]),
            2 => (nr::OBJECT_GET_STATE, [ps, buf + PAGE - 24, 48, 0, 0, 0, 0, 0], &[]),
            3 => (nr::SYSTEM_INFO, [buf + PAGE - 32, 64, 0, 0, 0, 0, 0, 0], &[]),
            4 => (nr::PORTSET_PUT_MESSAGES, [ps, buf + PAGE - 56, 2, 0, 0, 0, 0, 0], &[]),
            5 => (nr::PORTSET_TAKE_MESSAGES, [ps, buf + PAGE - 100, 4, 0, 0, 0, 0, 0], &[]),
            6 => (nr::THREAD_SET_STATE, [stopped, buf + PAGE - 64, 152, 0, 0, 0, 0, 0], &[INVALID_ARGUMENT, BAD_SIZE]),
            7 if n % 1024 == 7 => (nr::CONSOLE_WRITE, [buf + PAGE - 4, 8, 0, 0, 0, 0, 0, 0], &[]),
            _ => {
                let d = [buf + PAGE - 200, 400, 0, buf, 2 * PAGE, 0, 0, 0];
                for (slot, v) in rb.desc.iter().zip(d) {
                    slot.store(v, Relaxed);
                }
                (nr::IPC_CALL_BUF, [port, n, 0, 0, 0, 0, 0, desc], &[DEAD])
            }
        };
        // SAFETY: every pointer names the race buffer (which the kernel must
        // copy through safely, mapped or not) or the descriptor.
        let r = unsafe { sys::raw(nr_, regs) };
        rb.calls[0].fetch_add(1, Relaxed);
        if r.ret < 0 && r.ret != BAD_POINTER && !extra_ok.contains(&r.ret) {
            cell_failure(rb, nr_, r.ret, 1);
        }
    }
    rt::exit(0)
}

// ---- destroy vs use --------------------------------------------------

fn destroy_use(i: usize, slot: usize, res: &Resources, rng: &mut Rng) -> Result<(), Failure> {
    let cpus = [INSTANCES[i].cpus[0].load(Relaxed), INSTANCES[i].cpus[1].load(Relaxed)];
    let rb = race_block(i);
    let entry = busy_main as extern "C" fn(u64) -> ! as usize as u64;
    let mut done_calls = 0;
    while budget_left(i) {
        let mut cell = Cell::build_shallow(slot, res, rng)?;
        rb.handles[0].store(cell.self_in_cell[0], Relaxed);
        rb.handles[1].store((setup().config.avoid & avoid::DONATION == 0) as u64, Relaxed);
        rb.handles[2].store((setup().config.avoid & avoid::DESTROY_DEAD == 0) as u64, Relaxed);
        let mut threads = [0u64; 2];
        for (k, t) in threads.iter_mut().enumerate() {
            let h = must(
                "busy thread",
                obj::thread_create_raw(cell.leaf(), entry, IN_CELL.helper_stack_top(k as u64), IN_CELL.control() + k as u64),
            )?;
            must("busy thread affinity", obj::thread_set_affinity(h, 1 << cpus[k]))?;
            *t = h.0;
        }
        count(i, 14);
        // Let them get going for a random while, then pull the space out from under them.
        let want = rng.below(600);
        let deadline = sys::tsc() + 5_000 * setup().tsc_per_us();
        while rb.calls[0].load(Relaxed) + rb.calls[1].load(Relaxed) < want && sys::tsc() < deadline {
            core::hint::spin_loop();
        }
        cell.destroy()?;
        count(i, 1);
        for t in threads {
            // Destroyed with their space: waiting must say so at once.
            if !matches!(obj::thread_wait(Handle(t), false), Err(SysError::Dead)) {
                println!("fuzz: FAIL: destroy vs use: a thread of a destroyed space is not Dead");
                return Err(Failure);
            }
            close_quietly(t);
        }
        report_cell_failures("destroy vs use", rb)?;
        done_calls += rb.calls[0].swap(0, Relaxed) + rb.calls[1].swap(0, Relaxed);
        INSTANCES[i].partner_calls.store(done_calls, Relaxed);
    }
    Ok(())
}

/// A thread of a cell that is about to be destroyed: creates, uses and
/// closes objects of its own space as fast as it can. Errors are expected
/// once the space dies; only codes outside the ABI count.
extern "C" fn busy_main(arg: u64) -> ! {
    let control = arg & !(PAGE - 1);
    let k = (arg & 1) as usize;
    // SAFETY: started with its slot's control block address (plus its index), mapped for the cell's life.
    let rb = unsafe { &(*(control as *const layout::Control)).race };
    let me = rb.handles[0].load(Relaxed);
    let donation = rb.handles[1].load(Relaxed) != 0;
    // Destroying a child while the root destroys this space tears the child down twice (FINDINGS 1).
    let destroy_children = rb.handles[2].load(Relaxed) != 0;
    let scratch = IN_CELL.scratch() + k as u64 * 0x8000;
    let victims = crate::victims::entry_points();
    let call = |n: u64, regs: [u64; 8]| -> i64 {
        // SAFETY: the only pointers are this thread's half of the scratch area.
        let r = unsafe { sys::raw(n, regs) };
        rb.calls[k].fetch_add(1, Relaxed);
        if r.ret < 0 && !is_abi_error(r.ret) {
            cell_failure(rb, n, r.ret, 2);
        }
        r.ret
    };
    let a = |v: i64| v.max(0) as u64;
    let mut i = 0u64;
    loop {
        i += 1;
        let ps = a(call(nr::PORTSET_CREATE, [0; 8]));
        let port = a(call(nr::PORT_CREATE, [ps, i, 0, 0, 0, 0, 0, 0]));
        call(nr::IPC_SEND, [port, i, 2, 3, 4, 5, 6, 0]);
        call(nr::PORTSET_TAKE_MESSAGES, [ps, scratch, 1, 0, 0, 0, 0, 0]);
        let mutex = a(call(nr::MUTEX_CREATE, [0; 8]));
        call(nr::MUTEX_WAKE, [mutex, 1, 0, 0, 0, 0, 0, 0]);
        let dup = a(call(nr::HANDLE_DUPLICATE, [port, rights::ALL as u64, 0, 0, 0, 0, 0, 0]));
        call(nr::HANDLE_CLOSE, [dup, 0, 0, 0, 0, 0, 0, 0]);
        let region = a(call(nr::REGION_CREATE, [me, scratch, PAGE, m::READ | m::WRITE, 0, 0, 0, 0]));
        let va = MAP_AREA + (k as u64 * 64 + i % 64) * PAGE;
        let mapping = a(call(nr::MAPPING_CREATE, [region, me, va, 0, PAGE, m::READ | m::WRITE, 0, 0]));
        call(nr::SPACE_ENUMERATE, [me, scratch, 16, 0, 0, 0, 0, 0]);
        call(nr::MAPPING_DESTROY, [mapping, 0, 0, 0, 0, 0, 0, 0]);
        call(nr::REGION_DESTROY, [region, 0, 0, 0, 0, 0, 0, 0]);
        let t = a(call(nr::THREAD_CREATE, [me, victims[victim::NULL_LOOP], 0, 0, 0, 0, 0, 0]));
        if donation && i.is_multiple_of(8) {
            // Left alive, donation-only: the space's destruction must still reap it.
            call(nr::THREAD_SET_DONATION_ONLY, [t, 1, 0, 0, 0, 0, 0, 0]);
        } else {
            call(nr::THREAD_KILL, [t, 0, 0, 0, 0, 0, 0, 0]);
        }
        call(nr::HANDLE_CLOSE, [t, 0, 0, 0, 0, 0, 0, 0]);
        let child = a(call(nr::SPACE_CREATE, [me, 0, 0, 0, 0, 0, 0, 0]));
        if destroy_children {
            call(nr::SPACE_DESTROY, [child, 0, 0, 0, 0, 0, 0, 0]);
        } else {
            call(nr::HANDLE_CLOSE, [child, 0, 0, 0, 0, 0, 0, 0]);
        }
        for h in [port, ps, mutex] {
            call(nr::HANDLE_CLOSE, [h, 0, 0, 0, 0, 0, 0, 0]);
        }
    }
}

// ---- kill vs stop vs resume vs set_state ----------------------------

fn thread_control(i: usize, slot: usize, res: &Resources, rng: &mut Rng) -> Result<(), Failure> {
    let inst = &INSTANCES[i];
    let stop_exit_ok = setup().config.avoid & avoid::STOP_EXIT == 0;
    let mut cell = Cell::build(slot, res, rng)?;
    let victims = crate::victims::entry_points();
    let new_target = |rng: &mut Rng| {
        let kind =
            if stop_exit_ok && rng.chance(256) { victim::BRIEF } else { rng.pick(&[victim::NULL_LOOP, victim::YIELD_LOOP, victim::SPIN]) };
        obj::thread_create_raw(cell.leaf(), victims[kind], 0, 0)
    };
    inst.target.store(must("race target thread", new_target(rng))?.0, Release);
    let partner = must("race partner", obj::thread_create(obj::self_space(), partner_main, partner_stack(i), i as u64))?;
    must("race partner affinity", obj::thread_set_affinity(partner, 1 << inst.cpus[0].load(Relaxed)))?;
    count(i, 8);
    let mut result = Ok(());
    let mut state = obj::ThreadState { version_flags: 0, gpr: [0; 16], rip: 0, rflags: 0, fpu: [0; 512] };
    while budget_left(i) && result.is_ok() {
        if stop_exit_ok && rng.chance(4) {
            // Replace the target: the partner may be using it right now.
            let old = inst.target.load(Acquire);
            let _ = obj::thread_kill(Handle(old));
            match new_target(rng) {
                Ok(t) => inst.target.store(t.0, Release),
                Err(e) => {
                    println!("fuzz: FAIL: thread control: creating a target failed with {e:?}");
                    result = Err(Failure);
                }
            }
            spin_ticks(rng.below(1000));
            close_quietly(old);
            count(i, 3);
            continue;
        }
        let t = Handle(inst.target.load(Acquire));
        if let Err(rule) = control_step(t, rng, &mut state, victims) {
            println!("fuzz: FAIL: thread control: {rule}");
            result = Err(Failure);
        }
        count(i, 1);
    }
    inst.partner_stop.store(1, Release);
    wait_or_kill(partner.0, 5000);
    close_quietly(partner.0);
    let t = inst.target.load(Acquire);
    let _ = obj::thread_kill(Handle(t));
    close_quietly(t);
    let destroyed = cell.destroy();
    result.and(destroyed)
}

/// One random operation on thread `t`; `Err` names a broken rule.
fn control_step(t: Handle, rng: &mut Rng, state: &mut obj::ThreadState, victims: [u64; victim::KINDS]) -> Result<(), &'static str> {
    let code = |r: Result<(), SysError>| r.err().map_or(0, |e| e.code());
    match rng.below(7) {
        0 => {
            let c = code(obj::thread_stop(t));
            if c != 0 && !matches!(c, DEAD | BAD_HANDLE) {
                return Err("thread_stop failed with an unexpected error");
            }
        }
        1 => {
            let c = code(obj::thread_resume(t));
            if c != 0 && !matches!(c, INVALID_ARGUMENT | DEAD | BAD_HANDLE) {
                return Err("thread_resume failed with an unexpected error");
            }
        }
        2 | 3 => match obj::thread_get_state(t) {
            Ok(s) => {
                *state = s;
                if rng.chance(256) {
                    // Restart it elsewhere: another stackless victim.
                    state.rip = victims[rng.pick(&[victim::NULL_LOOP, victim::YIELD_LOOP, victim::SPIN])];
                }
                let c = code(obj::thread_set_state(t, state));
                if c == BAD_POINTER || c == INVALID_ARGUMENT || c == -3 {
                    return Err("thread_set_state refused a record thread_get_state just exported");
                }
            }
            Err(e) if matches!(e.code(), WOULD_BLOCK | DEAD | BAD_HANDLE) => {}
            Err(_) => return Err("thread_get_state failed with an unexpected error"),
        },
        4 => {
            if let Err(e) = obj::thread_wait(t, false) {
                if !matches!(e.code(), WOULD_BLOCK | DEAD | BAD_HANDLE) {
                    return Err("thread_wait failed with an unexpected error");
                }
            }
        }
        5 => {
            let cpus = setup().cpus;
            let c = code(obj::thread_set_affinity(t, 1 << rng.below(cpus)));
            if c != 0 && c != BAD_HANDLE && c != DEAD {
                return Err("thread_set_affinity to an online CPU failed");
            }
        }
        _ => {
            if let Err(e) = obj::info(t) {
                if e.code() != BAD_HANDLE {
                    return Err("handle_info failed with an unexpected error");
                }
            }
        }
    }
    Ok(())
}

/// The second CPU of the thread-control race.
extern "C" fn partner_main(i: u64) -> ! {
    let inst = &INSTANCES[i as usize];
    let mut rng = Rng::derive(setup().config.seed, 0x9a27_0000 + i);
    let mut state = obj::ThreadState { version_flags: 0, gpr: [0; 16], rip: 0, rflags: 0, fpu: [0; 512] };
    let victims = crate::victims::entry_points();
    while inst.partner_stop.load(Acquire) == 0 {
        let t = Handle(inst.target.load(Acquire));
        if let Err(rule) = control_step(t, &mut rng, &mut state, victims) {
            println!("fuzz: FAIL: thread control (partner): {rule}");
            inst.failed.store(1, Relaxed);
        }
        inst.partner_calls.fetch_add(1, Relaxed);
    }
    rt::exit(0)
}

// ---- close vs use --------------------------------------------------

fn close_use(i: usize, slot: usize, res: &Resources, rng: &mut Rng) -> Result<(), Failure> {
    let mut cell = Cell::build(slot, res, rng)?;
    let rb = race_block(i);
    rb.handles[0].store(cell.self_in_cell[0], Relaxed);
    rb.budget.store(INSTANCES[i].budget.load(Relaxed), Relaxed);
    let mut threads = [0u64; 2];
    let entries = [closer_main as extern "C" fn(u64) -> !, user_main];
    for (k, t) in threads.iter_mut().enumerate() {
        let entry = entries[k] as usize as u64;
        let h =
            must("close-vs-use thread", obj::thread_create_raw(cell.leaf(), entry, IN_CELL.helper_stack_top(k as u64), IN_CELL.control()))?;
        must("close-vs-use affinity", obj::thread_set_affinity(h, 1 << INSTANCES[i].cpus[k].load(Relaxed)))?;
        *t = h.0;
    }
    count(i, 10);
    while budget_left(i) && threads.iter().any(|&t| exit_status(t).is_none()) {
        obj::yield_now();
    }
    rb.stop.store(1, Release);
    for t in threads {
        wait_or_kill(t, 2000);
        close_quietly(t);
    }
    let r = report_cell_failures("close vs use", rb);
    let destroyed = cell.destroy();
    r.and(destroyed)
}

fn within_budget(rb: &RaceBlock) -> bool {
    rb.calls[0].load(Relaxed) + rb.calls[1].load(Relaxed) < rb.budget.load(Relaxed)
}

const CLOSE_USE_KINDS: [u32; 5] = [kind::PORTSET, kind::MUTEX, kind::COND, kind::PORT, kind::REFERENCE];

/// Creates an object, publishes its handle, and closes it again, forever.
extern "C" fn closer_main(control: u64) -> ! {
    // SAFETY: started with its slot's control block address, mapped for the cell's life.
    let rb = unsafe { &(*(control as *const layout::Control)).race };
    let me = rb.handles[0].load(Relaxed);
    let call = |n: u64, regs: [u64; 8]| -> i64 {
        // SAFETY: no pointer arguments but the take call's scratch buffer.
        let r = unsafe { sys::raw(n, regs) }.ret;
        rb.calls[0].fetch_add(1, Relaxed);
        r
    };
    let ports = call(nr::PORTSET_CREATE, [0; 8]).max(0) as u64;
    let mut seq = 0u64;
    while rb.stop.load(Relaxed) == 0 && within_budget(rb) {
        let k = CLOSE_USE_KINDS[(seq % 5) as usize];
        let (n, regs) = match k {
            kind::PORTSET => (nr::PORTSET_CREATE, [0; 8]),
            kind::MUTEX => (nr::MUTEX_CREATE, [0; 8]),
            kind::COND => (nr::COND_CREATE, [0; 8]),
            kind::PORT => (nr::PORT_CREATE, [ports, seq, 0, 0, 0, 0, 0, 0]),
            _ => (nr::REFERENCE_CREATE, [me, 0, 0, 0, 0, 0, 0, 0]),
        };
        let v = call(n, regs);
        if v <= 0 {
            cell_failure(rb, n, v, 3);
            continue;
        }
        let e = &rb.history[(seq % 64) as usize];
        e[0].store(v as u64, Relaxed);
        e[1].store(k as u64, Relaxed);
        rb.current.store(seq + 1, Release);
        spin_ticks((seq % 7) * 40);
        let closed = call(nr::HANDLE_CLOSE, [v as u64, 0, 0, 0, 0, 0, 0, 0]);
        if closed != 0 {
            cell_failure(rb, nr::HANDLE_CLOSE, closed, 4);
        }
        if seq.is_multiple_of(16) {
            call(nr::PORTSET_TAKE_MESSAGES, [ports, IN_CELL.scratch(), 32, 0, 0, 0, 0, 0]);
        }
        seq += 1;
    }
    rt::exit(0)
}

/// Uses whatever handle the closer published last; every call must either
/// work on an object of the published type or fail with BadHandle.
extern "C" fn user_main(control: u64) -> ! {
    // SAFETY: started with its slot's control block address, mapped for the cell's life.
    let rb = unsafe { &(*(control as *const layout::Control)).race };
    let buf = IN_CELL.scratch() + 0x8000;
    let call = |n: u64, regs: [u64; 8]| -> i64 {
        // SAFETY: the only pointer is this thread's part of the scratch area.
        let r = unsafe { sys::raw(n, regs) }.ret;
        rb.calls[1].fetch_add(1, Relaxed);
        r
    };
    let mut i = 0u64;
    while rb.stop.load(Relaxed) == 0 && within_budget(rb) {
        let s = rb.current.load(Acquire);
        if s == 0 {
            continue;
        }
        let e = &rb.history[((s - 1) % 64) as usize];
        let (v, k) = (e[0].load(Relaxed), e[1].load(Relaxed) as u32);
        i += 1;
        let (n, ret, rule) = match i % 5 {
            0 => {
                let r = call(nr::HANDLE_INFO, [v, 0, 0, 0, 0, 0, 0, 0]);
                (nr::HANDLE_INFO, r, if r >= 0 && (r & 0xff) as u32 != k { 10 } else { 0 })
            }
            1 => {
                let r = call(nr::OBJECT_GET_STATE, [v, buf, 48, 0, 0, 0, 0, 0]);
                // SAFETY: buf is this thread's scratch memory, just written by the kernel.
                let ty = unsafe { core::ptr::read_volatile(buf as *const u64) };
                (nr::OBJECT_GET_STATE, r, if r >= 0 && ty != k as u64 { 11 } else { 0 })
            }
            2 | 3 => {
                let n = if i % 5 == 2 { nr::HANDLE_DUPLICATE } else { nr::REFERENCE_CREATE };
                let r = call(n, [v, rights::GET_STATE as u64, 0, 0, 0, 0, 0, 0]);
                let closed = if r > 0 { call(nr::HANDLE_CLOSE, [r as u64, 0, 0, 0, 0, 0, 0, 0]) } else { 0 };
                (n, r, if closed != 0 { 12 } else { 0 })
            }
            _ if k == kind::PORT => {
                let r = call(nr::IPC_SEND, [v, i, 0, 0, 0, 0, 0, 0]);
                (nr::IPC_SEND, if r == WOULD_BLOCK { 0 } else { r }, 0)
            }
            _ => {
                let r = call(nr::REFERENCE_COMPARE, [v, v, 0, 0, 0, 0, 0, 0]);
                (nr::REFERENCE_COMPARE, r, if r >= 0 && r != 1 { 13 } else { 0 })
            }
        };
        // The ring slot was reused meanwhile: the pair read may not belong together.
        if e[0].load(Relaxed) != v || e[1].load(Relaxed) as u32 != k {
            continue;
        }
        if rule != 0 || (ret < 0 && ret != BAD_HANDLE) {
            cell_failure(rb, n, ret, if rule != 0 { rule } else { 14 });
        }
    }
    rt::exit(0)
}
