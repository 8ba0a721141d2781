//! Where everything lives: the root's memory (thread stacks, one slot per
//! cell), the address space of a cell (the nested space a worker runs in),
//! and the control block a cell's worker shares with the controller.
//!
//! A slot is one page-aligned piece of the root's demand-zero memory,
//! exported as one region; the cell maps it at [`CELL_VA`] (stack, control
//! block, helper stacks, scratch) and its read-only page at [`RO_VA`], and
//! the root's text at the same address as in the root. Nothing else of the
//! root is mapped, so the code that runs in a cell uses no statics.

use core::cell::UnsafeCell;
use core::sync::atomic::AtomicU64;

use fuzzlib::gen::{Env, Gen, MAX_STEPS, PAGE, STAGING_WORDS};
use fuzzlib::rng::Rng;

pub const ROOT_ANONYMOUS: u64 = matryoshka_rt::memory::ROOT_ANONYMOUS_BASE;
/// Stacks of the root's own threads (controller, race threads).
pub const ROOT_STACKS: u64 = ROOT_ANONYMOUS;
pub const ROOT_STACK_BYTES: u64 = 64 * 1024;
pub const ROOT_STACK_COUNT: u64 = 24;
/// The slots, one per cell.
pub const SLOTS: u64 = ROOT_ANONYMOUS + (16 << 20);
pub const SLOT_BYTES: u64 = 0x40000;
/// Room for 64 workers (8 CPUs, 8 per CPU) and the race cells.
pub const MAX_SLOTS: usize = 80;

// Offsets inside a slot (and, from CELL_VA, addresses inside a cell).
pub const STACK_OFFSET: u64 = 0;
pub const STACK_BYTES: u64 = 0x10000;
pub const CONTROL_OFFSET: u64 = 0x10000;
pub const CONTROL_BYTES: u64 = 0x8000;
pub const HELPER_STACKS_OFFSET: u64 = 0x18000;
pub const HELPER_STACK_BYTES: u64 = 0x2000;
/// Two worker generations per space, three helpers each.
pub const HELPER_SLOTS: usize = 6;
pub const HELPERS_PER_WORKER: usize = 3;
pub const SCRATCH_OFFSET: u64 = 0x24000;
/// 64 KiB (the largest payload) and a page more.
pub const SCRATCH_BYTES: u64 = 0x11000;
/// Mapped read-write into the cell: stack .. end of scratch. The page after
/// scratch stays unmapped (the target of straddling pointers).
pub const RW_BYTES: u64 = SCRATCH_OFFSET + SCRATCH_BYTES;
/// Mapped read-only at RO_VA.
pub const RO_OFFSET: u64 = 0x35000;
/// The buffer of the copy-vs-revocation race: its own region, so revoking it
/// leaves the rest of the cell alone.
pub const RACE_BUFFER_OFFSET: u64 = 0x36000;
pub const RACE_BUFFER_BYTES: u64 = 2 * PAGE;
/// The discard area: pages whose content nothing relies on, mapped
/// read-write at DISCARD_VA, the only memory a fuzzed region_discard may
/// free (the root touches them again before each leak snapshot).
pub const DISCARD_OFFSET: u64 = 0x38000;
pub const DISCARD_BYTES: u64 = 8 * PAGE;
const _: () = assert!(DISCARD_OFFSET >= RACE_BUFFER_OFFSET + RACE_BUFFER_BYTES && DISCARD_OFFSET + DISCARD_BYTES <= SLOT_BYTES);

pub const CELL_VA: u64 = 0x1000_0000;
pub const RO_VA: u64 = CELL_VA + 0x40000;
pub const RACE_BUFFER_VA: u64 = CELL_VA + 0x80000;
pub const DISCARD_VA: u64 = CELL_VA + 0x60000;
/// Everything above is the cell's own memory: fuzzed mappings must not land there.
pub const CELL_END: u64 = CELL_VA + 0x10_0000;
/// Where fuzzed mappings into the cell may go.
pub const MAP_AREA: u64 = 0x4000_0000;
pub const MAP_AREA_BYTES: u64 = 256 * PAGE;

/// The text the read-only page starts with (a console write that succeeds prints it).
pub const RO_TEXT: &[u8] = b"fuzz: console probe";

/// Root address of slot `i`.
pub fn slot_base(i: usize) -> u64 {
    SLOTS + i as u64 * SLOT_BYTES
}

pub fn root_stack_top(i: u64) -> u64 {
    ROOT_STACKS + (i + 1) * ROOT_STACK_BYTES
}

/// Worker states.
pub mod state {
    pub const STARTING: u64 = 0;
    pub const RUNNING: u64 = 1;
    pub const FINISHED: u64 = 2;
    pub const FAILED: u64 = 3;
}

/// `Shared::inflight_nr` when no call is in flight.
pub const IDLE: u64 = u64::MAX;
/// Bit of `Shared::inflight_class`: the call may block (the controller
/// does not call it a hang).
pub const INFLIGHT_MAY_BLOCK: u64 = 1;

pub const RECENT: usize = 16;

/// What the worker and the controller both read and write, concurrently.
#[repr(C)]
pub struct Shared {
    pub state: AtomicU64,
    /// The controller asks the worker to finish.
    pub stop: AtomicU64,
    /// Random calls made (direct, and helper steps that started).
    pub calls: AtomicU64,
    /// Calls of the fuzzer's own machinery (helper threads, closing surplus handles).
    pub support_calls: AtomicU64,
    /// Bumped after every call: the controller's and watchdog's sign of life.
    pub progress: AtomicU64,
    pub inflight_nr: AtomicU64,
    pub inflight_class: AtomicU64,
    pub inflight_tsc: AtomicU64,
    pub inflight_regs: [AtomicU64; 8],
    /// The last calls: (nr, rdi, result), oldest overwritten first.
    pub recent: [[AtomicU64; 3]; RECENT],
    pub recent_next: AtomicU64,
    /// Counters of the race loops (targeted phase): calls made on each side.
    pub race_calls: [AtomicU64; 2],
}

/// A script a helper thread runs (one blocking call, or a short sequence
/// on one connection).
#[repr(C)]
pub struct Mailbox {
    pub len: u64,
    pub nr: [u64; MAX_STEPS],
    pub regs: [[u64; 8]; MAX_STEPS],
    /// Payload descriptors (r13 points here when the step has one).
    pub desc: [[u64; 8]; MAX_STEPS],
    pub desc_in_r13: [u64; MAX_STEPS],
    /// r14 of each step (the timeout of `ipc_call_buf_timed`).
    pub r14: [u64; MAX_STEPS],
    pub started: AtomicU64,
    pub done: AtomicU64,
    pub results: [AtomicU64; MAX_STEPS],
}

/// A helper thread of the worker.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Helper {
    /// The worker's own handle to it (never in the fuzzed pool); 0 if the slot is free.
    pub handle: u64,
    pub deadline: u64,
    /// Index into `Control::mailboxes` and the helper stacks.
    pub slot: u64,
    /// When it was killed (0: it runs).
    pub dying_since: u64,
}

/// The worker's own state; the controller writes it only before the worker starts.
#[repr(C)]
pub struct Private {
    pub env: Env,
    pub gen: Gen,
    pub cell: u64,
    pub incarnation: u64,
    /// Random calls to make before finishing.
    pub budget: u64,
    pub trace: u64,
    /// Which three of the six helper slots this worker generation uses.
    pub helper_set: u64,
    /// The worker's handle to its own space (CREATE, never in the pool).
    pub self_space: u64,
    /// TSC ticks per microsecond.
    pub tsc_per_us: u64,
    /// The watchdog's time, in TSC ticks.
    pub watchdog_ticks: u64,
    pub helpers: [Helper; HELPERS_PER_WORKER],
    pub staging: [u64; STAGING_WORDS],
    pub desc: [u64; 8],
}

/// What the threads of a race cell share with the root's side of the race.
#[repr(C)]
pub struct RaceBlock {
    pub stop: AtomicU64,
    /// The cell's threads stop by themselves once their calls reach it.
    pub budget: AtomicU64,
    /// Calls made by the cell's threads, one counter each.
    pub calls: [AtomicU64; 2],
    /// Broken invariants: how many, and the last one (nr, result, which rule).
    pub failures: AtomicU64,
    pub last_failure: [AtomicU64; 3],
    /// Handles (values in the cell's table) the cell's threads work with.
    pub handles: [AtomicU64; 8],
    /// The close-vs-use race: sequence number of the current object ...
    pub current: AtomicU64,
    /// ... and a ring of (handle value, type) by sequence number.
    pub history: [[AtomicU64; 2]; 64],
    /// A payload descriptor for the copying thread (never revoked).
    pub desc: [AtomicU64; 8],
}

#[repr(C)]
pub struct Control {
    pub shared: Shared,
    pub private: UnsafeCell<Private>,
    /// Helper scripts, outside `Private`: a helper of the previous worker
    /// generation may still write its mailbox while the next worker runs.
    pub mailboxes: [UnsafeCell<Mailbox>; HELPER_SLOTS],
    pub race: RaceBlock,
}

const _: () = assert!(core::mem::size_of::<Control>() as u64 <= CONTROL_BYTES);

/// Memory addresses of one slot, as seen from the root (`base`) or from inside the cell (`CELL_VA`).
#[derive(Clone, Copy)]
pub struct SlotView {
    pub base: u64,
}

impl SlotView {
    pub fn control(&self) -> u64 {
        self.base + CONTROL_OFFSET
    }
    pub fn stack_top(&self) -> u64 {
        self.base + STACK_OFFSET + STACK_BYTES
    }
    pub fn helper_stack_top(&self, i: u64) -> u64 {
        self.base + HELPER_STACKS_OFFSET + (i + 1) * HELPER_STACK_BYTES
    }
    pub fn scratch(&self) -> u64 {
        self.base + SCRATCH_OFFSET
    }
}

pub const IN_CELL: SlotView = SlotView { base: CELL_VA };

/// The environment of a worker in a cell.
pub fn cell_env(
    victims: [u64; fuzzlib::gen::victim::KINDS],
    text: (u64, u64),
    cpus: u64,
    system_info_max: u64,
    avoid: u32,
    only: u128,
) -> Env {
    Env {
        scratch: IN_CELL.scratch(),
        scratch_len: SCRATCH_BYTES,
        ro: RO_VA,
        ro_text_len: RO_TEXT.len() as u64,
        staging: IN_CELL.control() + core::mem::offset_of!(Control, private) as u64 + core::mem::offset_of!(Private, staging) as u64,
        text: text.0,
        victims,
        map_area: MAP_AREA,
        map_area_len: MAP_AREA_BYTES,
        discard: DISCARD_VA,
        discard_len: DISCARD_BYTES,
        own: [(CELL_VA, CELL_END), text],
        cpus,
        system_info_max,
        avoid,
        only,
    }
}

/// The control block of the slot at root address `base`.
///
/// # Safety
/// `base` is a slot's root address (mapped, pre-touched, used for nothing else).
pub unsafe fn control_at(base: u64) -> &'static Control {
    // SAFETY: by the caller's contract the slot's control block is mapped
    // for the program's life; Control is valid for any bit pattern it gets
    // (atomics and plain integers), and the zero pattern of fresh memory.
    unsafe { &*((base + CONTROL_OFFSET) as *const Control) }
}

/// A fresh generator stream for a worker incarnation.
pub fn worker_rng(seed: u64, cell: u64, incarnation: u64) -> Rng {
    Rng::derive(seed, (cell << 32) | incarnation)
}
