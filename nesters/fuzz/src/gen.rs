//! Structure-aware system-call generation: which call to make next and
//! with which arguments — handles that are live, closed, of the wrong type
//! or forged; pointers that are valid, read-only, straddle into an unmapped
//! page, sit at the end of the user half, are non-canonical or in the kernel
//! half; sizes at every boundary; unknown rights and flag bits — plus what
//! the result must be (an invariant) and what the call does to the worker's
//! handle pool. Pure logic: the worker (src/worker.rs) makes the calls.

use matryoshka_rt::nr;

use crate::args::{avoid, ONLY_UNKNOWN_BIT};
use crate::pool::{Entry, Pool, DEAD, DISCARD_AREA, NO_ANCESTRY, SELF, UNKNOWN_KIND};
use crate::rng::Rng;

pub const PAGE: u64 = 4096;
/// The first page of the top of the user half (never mapped in a cell).
pub const USER_TOP_PAGE: u64 = 0x0000_7fff_ffff_f000;
/// The first non-canonical address above the user half.
pub const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// The start of the kernel half (the physmap).
pub const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
/// The kernel image.
pub const KERNEL_IMAGE: u64 = 0xffff_ffff_8020_0000;
/// The kernel heap.
pub const KERNEL_HEAP: u64 = 0xffff_ff80_0000_0000;

/// ABI limits (kernel/ABI.md).
pub const CONSOLE_MAX: u64 = 256;
pub const HANDLE_QUOTA: u64 = 4096;
pub const STATE_V1: u64 = 152;
pub const STATE_V2: u64 = 664;
pub const MEMORY_STATE: u64 = 40;
pub const OBJECT_STATE: u64 = 48;
pub const QUEUED_MAX: u64 = 32;
pub const QUEUED_RECORD: u64 = 56;
pub const PAYLOAD_MAX: u64 = 64 * 1024;
pub const PRIORITY_MAX: u64 = 63;
pub const ALL_RIGHTS: u64 = (1 << 11) - 1;
pub const ALL_MEMORY_RIGHTS: u64 = 7;

/// Words of the staging area a generated call may point at (a thread state
/// record, queued messages).
pub const STAGING_WORDS: usize = 512;

/// ABI object type codes (the shared `matryoshka-abi` crate).
pub mod kind {
    pub use matryoshka_abi::object_type::*;
}

/// The stackless code a fuzzed thread may be started at (src/victims.rs).
pub mod victim {
    pub const SPIN: usize = 0;
    pub const YIELD_LOOP: usize = 1;
    pub const NULL_LOOP: usize = 2;
    /// `exit(rdi)`.
    pub const EXIT: usize = 3;
    /// `ud2`.
    pub const FAULT: usize = 4;
    /// `ipc_reply_wait(rdi)` forever, echoing each request.
    pub const SERVE: usize = 5;
    /// `ipc_receive(rdi)` forever.
    pub const RECEIVE: usize = 6;
    /// A few null calls, then `exit(0)`.
    pub const BRIEF: usize = 7;
    pub const KINDS: usize = 8;
}

/// What the generator knows about the calling thread's world.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env {
    /// Writable memory, followed by an unmapped page.
    pub scratch: u64,
    pub scratch_len: u64,
    /// One readable, not writable page, followed by an unmapped page; it
    /// starts with [`Env::ro_text_len`] bytes of printable text.
    pub ro: u64,
    pub ro_text_len: u64,
    /// Where a generated call's in-memory records go ([`STAGING_WORDS`] words).
    pub staging: u64,
    /// Code start (the program's `_start`).
    pub text: u64,
    pub victims: [u64; victim::KINDS],
    /// A range of the caller's address space where nothing is mapped
    /// except what fuzzed `mapping_create` calls put there.
    pub map_area: u64,
    pub map_area_len: u64,
    /// Writable memory whose content nothing relies on, the only memory a
    /// fuzzed `region_discard` may succeed on (the root re-touches it
    /// before each leak snapshot, so discarded frames come back).
    pub discard: u64,
    pub discard_len: u64,
    /// The caller's own memory: a mapping over it must be refused.
    pub own: [(u64, u64); 2],
    pub cpus: u64,
    /// How many bytes `system_info` writes at most (48, 64, 80 or 96, by kernel version).
    pub system_info_max: u64,
    /// [`crate::args::avoid`] bits.
    pub avoid: u32,
    /// [`crate::args::Config::only`].
    pub only: u128,
}

impl Env {
    fn scratch_end(&self) -> u64 {
        self.scratch + self.scratch_len
    }
}

/// Whether a call may block: those go to a helper thread the worker can
/// kill, so the worker itself never waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Direct,
    Blocking,
}

/// What the result must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Any documented result.
    Any,
    /// An error: success would break the ABI (a forged or closed handle, a
    /// kernel pointer, a size or flag out of range, ...).
    MustFail,
    Exactly(i64),
    /// One of two error codes.
    Error(i64, i64),
    /// On success, `handle_info` says the handle names this type.
    HandleType(u32),
    /// Success with a value of at least this (`time_now`: the clock never
    /// goes back).
    NotBelow(i64),
    /// An error, or a value in 0..=this (`region_discard`: frames freed).
    UpTo(i64),
}

/// What a successful call does to the worker's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The result is a new handle in the caller's table: to a new object
    /// (`object` 0) or to `object` again; `parent` is a new space's parent.
    Creates {
        kind: u32,
        flags: u32,
        object: u64,
        parent: u64,
    },
    /// A new handle at exactly `value` in the caller's table (`handle_transfer_at`).
    CreatesAt {
        value: u64,
        kind: u32,
        flags: u32,
        object: u64,
        parent: u64,
    },
    /// The handle `value` was closed.
    Closes(u64),
    /// Space `object` (handle `value`) was destroyed and the handle closed
    /// (also when the call says the space was already dead).
    Destroys {
        value: u64,
        object: u64,
    },
    /// The result is a handle value in another space's table.
    Foreign,
    /// A handle may have been placed in the caller's table at a chosen value.
    ForgetClosed,
}

/// Where a handle argument came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Live(Entry),
    Closed,
    /// A value the kernel never issued in any table (generation out of reach).
    Forged,
    /// A value meaningful in another space.
    Foreign,
}

impl Origin {
    fn invalid(self) -> bool {
        matches!(self, Origin::Closed | Origin::Forged)
    }
    fn entry(self) -> Option<Entry> {
        match self {
            Origin::Live(e) => Some(e),
            _ => None,
        }
    }
    fn is_self(self) -> bool {
        self.entry().is_some_and(|e| e.flags & SELF != 0)
    }
    fn is_dead(self) -> bool {
        self.entry().is_some_and(|e| e.flags & DEAD != 0)
    }
    fn object(self) -> u64 {
        self.entry().map_or(0, |e| e.object)
    }
}

/// Register slots of [`Call::regs`].
pub mod reg {
    pub const RDI: usize = 0;
    pub const RSI: usize = 1;
    pub const RDX: usize = 2;
    pub const R10: usize = 3;
    pub const R8: usize = 4;
    pub const R9: usize = 5;
    pub const R12: usize = 6;
    pub const R13: usize = 7;
}

/// One generated system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub nr: u64,
    /// rdi, rsi, rdx, r10, r8, r9, r12, r13.
    pub regs: [u64; 8],
    /// A payload descriptor (ipc_*_buf, conn_*_buf): the executor puts it
    /// in memory and points r13 at it when `desc_in_r13`.
    pub desc: [u64; 8],
    pub desc_in_r13: bool,
    /// r14 for `ipc_call_buf_timed` (its timeout); other calls get a canary there.
    pub r14: u64,
    pub class: Class,
    pub check: Check,
    pub effect: Effect,
}

impl Call {
    fn new(nr: u64) -> Call {
        Call { nr, regs: [0; 8], desc: [0; 8], desc_in_r13: false, r14: 0, class: Class::Direct, check: Check::Any, effect: Effect::None }
    }
}

/// Up to this many calls run one after the other on one helper thread
/// (a connection's connect, sends and receives must come from one thread).
pub const MAX_STEPS: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct Script {
    pub steps: [Call; MAX_STEPS],
    pub len: usize,
}

/// Whether `ret`, if negative, is an error code call `nr_` may return:
/// -1..=-10, and TimedOut (-11) for the timed call alone.
pub fn defined_error(nr_: u64, ret: i64) -> bool {
    ret >= 0 || (-10..=-1).contains(&ret) || (ret == TIMED_OUT && nr_ == nr::IPC_CALL_BUF_TIMED)
}

const TIMED_OUT: i64 = -11;

/// Judges a result against the call's check; `Err` names the broken rule.
pub fn verdict(call: &Call, ret: i64) -> Result<(), &'static str> {
    if !defined_error(call.nr, ret) {
        return Err("an error code the ABI does not define");
    }
    match call.check {
        Check::Any => Ok(()),
        Check::MustFail if ret >= 0 => Err("succeeded, but its arguments must make it fail"),
        Check::MustFail => Ok(()),
        Check::Exactly(v) if ret != v => Err("returned another value than the ABI says"),
        Check::Exactly(_) => Ok(()),
        Check::Error(a, b) if ret != a && ret != b => Err("did not fail with the error the ABI says"),
        Check::Error(..) => Ok(()),
        Check::HandleType(t) if ret >= 0 && (ret & 0xff) as u32 != t => {
            Err("handle_info names another type than the handle was created with")
        }
        Check::HandleType(_) if ret >= 0 && (ret as u64 >> 8) & !ALL_RIGHTS != 0 => Err("handle_info reports unknown right bits"),
        Check::HandleType(_) => Ok(()),
        Check::NotBelow(v) if ret < v => Err("returned less than an earlier call did (the clock went back, or an error)"),
        Check::NotBelow(_) => Ok(()),
        Check::UpTo(v) if ret > v => Err("returned more than the ABI allows"),
        Check::UpTo(_) => Ok(()),
    }
}

const NO_SUCH_CALL: i64 = -1;
const BAD_SIZE: i64 = -3;
const MISSING_RIGHTS: i64 = -6;
const INVALID_ARGUMENT: i64 = -8;

/// Threads a worker incarnation may create (victims), so the kernel's
/// thread count stays bounded.
pub const THREADS_PER_INCARNATION: u32 = 6;

/// The generator of one worker: its random stream and what it knows.
#[derive(Clone, Copy, Debug)]
pub struct Gen {
    pub rng: Rng,
    pub pool: Pool,
    pub threads_left: u32,
    /// The largest `time_now` the worker has seen (0: none yet); the worker
    /// sets it after each successful `time_now`.
    pub last_time: u64,
}

/// How a pointer argument was chosen, and whether accessing `len` bytes
/// through it must fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointer {
    pub addr: u64,
    pub must_fail: bool,
}

impl Gen {
    pub fn new(rng: Rng) -> Gen {
        Gen { rng, pool: Pool::new(), threads_left: THREADS_PER_INCARNATION, last_time: 0 }
    }

    // ---- argument generators -------------------------------------------

    /// A handle argument for a call that wants an object of `want`.
    pub fn handle(&mut self, want: u32) -> (u64, Origin) {
        let r = self.rng.below(100);
        if r < 70 {
            let n = self.pool.count(want);
            if n > 0 {
                let e = self.pool.nth(want, self.rng.below(n as u64) as usize).unwrap_or_default();
                return (e.value, Origin::Live(e));
            }
        }
        if r < 82 && !self.pool.is_empty() {
            let e = self.pool.live()[self.rng.below(self.pool.len() as u64) as usize];
            return (e.value, Origin::Live(e));
        }
        if r < 90 && !self.pool.closed().is_empty() {
            return (self.rng.pick(self.pool.closed()), Origin::Closed);
        }
        if r >= 97 && !self.pool.foreign().is_empty() {
            return (self.rng.pick(self.pool.foreign()), Origin::Foreign);
        }
        (self.forged(), Origin::Forged)
    }

    /// A handle value no table ever held: 0, or a generation the kernel
    /// cannot have reached (bits 32..63 count a slot's reuses).
    pub fn forged(&mut self) -> u64 {
        match self.rng.below(5) {
            0 => 0,
            1 => u64::MAX,
            2 => (self.rng.range(1, 4096)) | (0xffff_fff0 + self.rng.below(16)) << 32,
            3 if !self.pool.is_empty() => {
                let v = self.rng.pick(self.pool.live()).value;
                (v & 0xffff_ffff) | ((v >> 32) ^ 0x8000_0000) << 32
            }
            _ => (self.rng.below(1 << 32)) | 0xffff_0000_0000_0000,
        }
    }

    /// Right bits for a handle: mostly a subset of the known ones, sometimes
    /// an unknown bit (which must be refused).
    pub fn rights(&mut self) -> (u64, bool) {
        match self.rng.below(10) {
            0 => (ALL_RIGHTS, false),
            1 => (0, false),
            2 => (ALL_RIGHTS | 1 << self.rng.range(11, 63), true),
            3 => (u64::MAX, true),
            _ => (self.rng.next_u64() & ALL_RIGHTS, false),
        }
    }

    /// Memory rights (1 read, 2 write, 4 execute), sometimes with unknown bits.
    pub fn memory_rights(&mut self) -> (u64, bool) {
        match self.rng.below(10) {
            0 => (8 | self.rng.below(8), true),
            1 => (1 << self.rng.range(3, 63), true),
            _ => (self.rng.below(8), false),
        }
    }

    /// A size near a boundary of `limit` (the largest valid size).
    pub fn size(&mut self, limit: u64) -> u64 {
        match self.rng.below(12) {
            0 => 0,
            1 => 1,
            2 => PAGE - 1,
            3 => PAGE,
            4 => PAGE + 1,
            5 => limit.saturating_sub(1),
            6 | 7 => limit,
            8 => limit.saturating_add(1),
            9 => u64::MAX,
            10 => self.rng.below(limit.saturating_add(1)),
            _ => self.rng.below(64),
        }
    }

    /// A pointer for accessing `len` bytes (`output`: the kernel writes them).
    pub fn pointer(&mut self, env: &Env, len: u64, output: bool) -> Pointer {
        let accessed = len > 0;
        match self.rng.weighted(&[45, 10, 10, 4, 3, 5, 5, 10, 5, 3]) {
            0 => {
                // Writable scratch: fits unless `len` exceeds it.
                let room = env.scratch_len.saturating_sub(len);
                let mut off = self.rng.below(room + 1);
                if self.rng.chance(256) {
                    off &= !(PAGE - 1);
                }
                Pointer { addr: env.scratch + off, must_fail: len > env.scratch_len - off }
            }
            1 => {
                let off = self.rng.below(PAGE);
                Pointer { addr: env.ro + off, must_fail: accessed && (output || len > PAGE - off) }
            }
            2 => {
                // The last k bytes of scratch: the rest of the access hits the unmapped page.
                let k = match self.rng.below(4) {
                    0 => 1,
                    1 => 8,
                    2 => (len / 2).max(1),
                    _ => len.saturating_sub(1).max(1),
                }
                .min(env.scratch_len);
                Pointer { addr: env.scratch_end() - k, must_fail: len > k }
            }
            3 => Pointer { addr: env.scratch_end() + self.rng.below(PAGE), must_fail: accessed },
            4 => Pointer { addr: self.rng.below(16), must_fail: accessed },
            5 => Pointer { addr: USER_TOP_PAGE + self.rng.pick(&[0, 1, 8, PAGE - 8, PAGE - 1]), must_fail: accessed },
            6 => Pointer {
                addr: self.rng.pick(&[NON_CANONICAL, NON_CANONICAL + PAGE, 0x7fff_ffff_ffff_ffff, 0x8000_0000_0000_0000]),
                must_fail: accessed,
            },
            7 => Pointer {
                addr: self.rng.pick(&[KERNEL_HALF, KERNEL_IMAGE, KERNEL_HEAP, u64::MAX - 7, u64::MAX - PAGE + 1, 0xffff_ff00_0000_0000]),
                must_fail: accessed,
            },
            8 => Pointer {
                addr: env.map_area + self.rng.below(env.map_area_len / PAGE) * PAGE + self.rng.pick(&[0, 0, 8, PAGE - 8]),
                must_fail: false,
            },
            _ => {
                // Unaligned inside scratch.
                let off = (self.rng.below(env.scratch_len.saturating_sub(len) + 1) | 1).min(env.scratch_len);
                Pointer { addr: env.scratch + off, must_fail: len > env.scratch_len - off }
            }
        }
    }

    /// A page-aligned (mostly) address for region_create / mapping_create.
    fn memory_address(&mut self, env: &Env) -> u64 {
        match self.rng.below(12) {
            0 | 1 => env.scratch + self.rng.below(env.scratch_len / PAGE) * PAGE,
            2 => env.ro,
            3 => env.text,
            4..=6 => env.map_area + self.rng.below(env.map_area_len / PAGE) * PAGE,
            7 => USER_TOP_PAGE,
            8 => NON_CANONICAL - PAGE,
            9 => env.scratch + 1 + self.rng.below(PAGE - 1),
            10 => self.rng.pick(&[KERNEL_HALF, KERNEL_IMAGE, NON_CANONICAL]),
            _ => {
                // Anywhere, except over the caller's own memory: a region
                // there could be mapped writable elsewhere and let a fuzzed
                // copy-out scribble on the worker's state.
                let a = self.rng.below(1 << 40) & !(PAGE - 1);
                if env.own.iter().any(|&(lo, hi)| (lo.saturating_sub(64 * PAGE)..hi).contains(&a)) {
                    env.map_area
                } else {
                    a
                }
            }
        }
    }

    fn memory_size(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => 0,
            1 => 1,
            2 => PAGE - 1,
            3 | 4 => PAGE,
            5 => 2 * PAGE,
            6 => 16 * PAGE,
            7 => !(PAGE - 1),
            8 => NON_CANONICAL,
            _ => self.rng.range(1, 64) * PAGE,
        }
    }

    fn message(&mut self) -> [u64; 6] {
        let mut m = [0u64; 6];
        for w in m.iter_mut() {
            *w = match self.rng.below(4) {
                0 => 0,
                1 if !self.pool.is_empty() => self.rng.pick(self.pool.live()).value,
                2 => self.rng.below(256),
                _ => self.rng.next_u64(),
            };
        }
        m
    }

    fn set_message(&mut self, c: &mut Call) {
        let m = self.message();
        c.regs[reg::RSI..=reg::R12].copy_from_slice(&m);
    }

    fn any_word(&mut self) -> u64 {
        match self.rng.below(6) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => 1 << self.rng.below(64),
            4 if !self.pool.is_empty() => self.rng.pick(self.pool.live()).value,
            _ => self.rng.next_u64(),
        }
    }

    /// A descriptor for the payload calls: {send ptr, send len, handle,
    /// receive ptr, receive capacity, out, out, reserved}. Returns whether
    /// the call must fail because of it.
    fn descriptor(&mut self, env: &Env, c: &mut Call, reserved: u64) -> bool {
        let send_len = self.size(PAYLOAD_MAX);
        let send = self.pointer(env, send_len.min(PAYLOAD_MAX + 1), false);
        let recv_cap = self.size(PAYLOAD_MAX);
        let recv = self.pointer(env, 0, true);
        let (handle, origin) = if self.rng.chance(512) { (0, Origin::Foreign) } else { self.handle(kind::PORT) };
        c.desc = [send.addr, send_len, handle, recv.addr, recv_cap, self.any_word(), self.any_word(), reserved];
        let mut must_fail = send_len > PAYLOAD_MAX || recv_cap > PAYLOAD_MAX || send.must_fail || (handle != 0 && origin.invalid());
        match self.rng.below(10) {
            0 => {
                c.regs[reg::R13] = self.pointer(env, 64, false).addr;
                // Only a bad pointer is sure to fail; a scratch one holds leftovers.
                must_fail = false;
            }
            1 => {
                c.regs[reg::R13] = self.rng.pick(&[0, KERNEL_IMAGE, NON_CANONICAL, USER_TOP_PAGE + PAGE - 8]);
                must_fail = true;
            }
            _ => c.desc_in_r13 = true,
        }
        must_fail
    }

    // ---- call selection ----------------------------------------------

    fn weight(&self, nr_: u64, env: &Env) -> u32 {
        let creating = matches!(nr_, 17 | 19 | 25 | 28 | 31 | 32 | 37 | 38 | 48 | 49 | 50 | 51 | 56 | 22);
        let closing = matches!(nr_, 16 | 20 | 40 | 41);
        let base: u32 = match nr_ {
            nr::EXIT => 0,
            nr::THREAD_CREATE | nr::THREAD_CREATE_STOPPED if self.threads_left == 0 => 0,
            nr::THREAD_SET_DONATION_ONLY | nr::THREAD_DONATE if env.avoid & avoid::DONATION != 0 => 0,
            nr::THREAD_STOP if env.avoid & avoid::STOP_EXIT != 0 => 0,
            nr::MUTEX_WAIT | nr::COND_WAIT if env.avoid & avoid::KILL_WAIT != 0 => 0,
            // A donation to a spinning donation-only thread lasts a whole time slice.
            nr::NULL | nr::YIELD | nr::READ_TSC | nr::BOOT_ARGS | nr::THREAD_DONATE | nr::THREAD_SET_DONATION_ONLY => 1,
            nr::CONN_SEND..=nr::CONN_DISCONNECT | nr::CONN_SEND_BUF | nr::CONN_RECEIVE_BUF => 1,
            nr::SPACE_DESTROY | nr::THREAD_KILL | nr::REGION_DESTROY | nr::MAPPING_DESTROY | nr::MUTEX_WAIT | nr::COND_WAIT => 2,
            nr::IPC_CALL | nr::IPC_REPLY_WAIT | nr::IPC_RECEIVE | nr::IPC_CALL_BUF | nr::IPC_REPLY_WAIT_BUF => 2,
            nr::CONN_CONNECT | nr::CONN_ACCEPT | nr::HANDLE_IMPORT | nr::HANDLE_TRANSFER_AT => 2,
            nr::REGION_CREATE | nr::MAPPING_CREATE | nr::HANDLE_CLOSE | nr::HANDLE_DUPLICATE | nr::HANDLE_INFO => 5,
            nr::HANG_REPORT | nr::FAULT_INJECT | nr::CONSOLE_READ | nr::IPC_CLIENT_WAITING | nr::IPC_REQUEST_READ => 1,
            nr::SLEEP_UNTIL | nr::IPC_CALL_BUF_TIMED => 2,
            4 | 1 => 3,
            16..=LAST_CALL => 3,
            _ => 0,
        };
        let boost = if self.pool.len() + 4 >= crate::pool::LIVE_SLOTS && closing {
            6
        } else if self.pool.len() < 8 && creating {
            3
        } else {
            1
        };
        base * boost
    }

    /// Chooses the next call number: 0..=85 (77, 79 and 83 are refused
    /// outside the root space) or one the kernel does not have.
    pub fn pick_nr(&mut self, env: &Env) -> u64 {
        let mut weights = [0u32; UNKNOWN_SLOT + 1];
        for (n, w) in weights.iter_mut().enumerate().take(LAST_CALL as usize + 1) {
            if env.only & (1u128 << n) != 0 {
                *w = self.weight(n as u64, env);
            }
        }
        if env.only & (1u128 << ONLY_UNKNOWN_BIT) != 0 {
            weights[UNKNOWN_SLOT] = 3;
        }
        if weights.iter().all(|&w| w == 0) {
            return nr::NULL;
        }
        match self.rng.weighted(&weights) {
            UNKNOWN_SLOT => self.unknown_nr(),
            n => n as u64,
        }
    }

    /// A number no call has, including ones that alias real calls when
    /// the kernel looks at fewer than 64 bits.
    fn unknown_nr(&mut self) -> u64 {
        // Calls past LAST_CALL that the kernel has (newer ones the fuzzer
        // does not generate yet) are not "unknown": draw again.
        loop {
            let n = match self.rng.below(6) {
                0 => self.rng.range(5, 15),
                1 => self.rng.range(LAST_CALL + 1, 1000),
                2 => (1 << 32) | self.rng.pick(&[0, 1, 3, 16, 33]),
                3 => 0x8000_0000_0000_0000 | self.rng.below(80),
                4 => u64::MAX - self.rng.below(4),
                _ => self.rng.next_u64() | 1 << 40,
            };
            if matryoshka_abi::call::name(n).is_none() {
                return n;
            }
        }
    }

    /// The next call (and, for a connection, the calls that follow it on the same thread).
    pub fn next(&mut self, env: &Env, staging: &mut [u64; STAGING_WORDS]) -> Script {
        let nr_ = self.pick_nr(env);
        let first = self.call(nr_, env, staging);
        let mut script = Script { steps: [first; MAX_STEPS], len: 1 };
        if first.class == Class::Blocking && matches!(nr_, nr::CONN_CONNECT | nr::CONN_ACCEPT | nr::IPC_REPLY_WAIT | nr::IPC_REPLY_WAIT_BUF)
        {
            let side = if nr_ == nr::CONN_CONNECT { 0 } else { 1 };
            for i in 1..1 + self.rng.below(MAX_STEPS as u64) as usize {
                script.steps[i] = match nr_ {
                    nr::CONN_CONNECT | nr::CONN_ACCEPT => self.connection_step(env, side),
                    _ if self.rng.chance(256) => {
                        // A server that took a request reads its payload
                        // piece by piece (the client may have died or
                        // timed out, or sent a bad buffer meanwhile).
                        let mut c = Call::new(nr::IPC_REQUEST_READ);
                        self.request_read_args(env, &mut c);
                        c.class = Class::Blocking;
                        c.check = Check::UpTo(c.regs[reg::RDX].min(matryoshka_abi::PAYLOAD_MAX) as i64);
                        c
                    }
                    _ if self.rng.chance(256) => {
                        // A server that took a request asks whether its
                        // client still waits (it may have timed out or died).
                        let mut c = Call::new(nr::IPC_CLIENT_WAITING);
                        c.class = Class::Blocking;
                        c.check = Check::UpTo(1);
                        c
                    }
                    _ => {
                        // A server answers a few requests in a row.
                        let mut c = first;
                        self.set_message(&mut c);
                        c
                    }
                };
                script.len = i + 1;
            }
        }
        script
    }

    /// A call on connection side `side` of a thread that just connected or accepted.
    /// `ipc_request_read(offset, buf, len)`: offsets in and past a payload,
    /// buffers good and bad, lengths up to past the 64 KiB limit.
    fn request_read_args(&mut self, env: &Env, c: &mut Call) {
        let limit = matryoshka_abi::PAYLOAD_MAX;
        let len = if self.rng.chance(128) { limit + 1 + self.rng.below(PAGE) } else { self.size(limit) };
        let p = self.pointer(env, len.min(limit), true);
        c.regs[reg::RDI] = self.rng.pick(&[0, 0, 1, PAGE, limit, u64::MAX]);
        c.regs[reg::RSI] = p.addr;
        c.regs[reg::RDX] = len;
    }

    fn connection_step(&mut self, env: &Env, side: u64) -> Call {
        let nr_ = self.rng.pick(&[
            nr::CONN_SEND,
            nr::CONN_RECEIVE,
            nr::CONN_SEND_OVER_RECEIVE,
            nr::CONN_DISCONNECT,
            nr::CONN_SEND_BUF,
            nr::CONN_RECEIVE_BUF,
        ]);
        let mut c = Call::new(nr_);
        c.class = Class::Blocking;
        c.regs[reg::RDI] = if self.rng.chance(64) { 1 - side } else { side };
        self.set_message(&mut c);
        match nr_ {
            nr::CONN_SEND => c.regs[reg::R13] = self.rng.pick(&[0, 1, 1, 2]),
            nr::CONN_SEND_BUF => {
                let flags = self.rng.pick(&[0, 1, 4]);
                self.descriptor(env, &mut c, flags);
            }
            nr::CONN_RECEIVE_BUF => {
                self.descriptor(env, &mut c, 0);
                if self.rng.chance(768) {
                    c.desc[1] = 0;
                }
            }
            _ => {}
        }
        c
    }

    /// Arguments, class, check and effect for call `nr_`.
    pub fn call(&mut self, nr_: u64, env: &Env, staging: &mut [u64; STAGING_WORDS]) -> Call {
        let mut c = Call::new(nr_);
        let mut must_fail = false;
        // The primary handle (rdi) for the calls that take one.
        let primary = |g: &mut Gen, c: &mut Call, want: u32| -> Origin {
            let (v, o) = g.handle(want);
            c.regs[reg::RDI] = v;
            o
        };
        match nr_ {
            nr::NULL => c.check = Check::Exactly(0),
            nr::YIELD | nr::READ_TSC => {}
            nr::CONSOLE_WRITE => {
                if self.rng.chance(32) {
                    // A rare write that succeeds: fixed text, so the log stays readable.
                    c.regs = [env.ro, env.ro_text_len, 0, 0, 0, 0, 0, 0];
                    c.check = Check::Exactly(env.ro_text_len as i64);
                } else {
                    let len = self.size(CONSOLE_MAX);
                    let p = self.pointer(env, len.min(CONSOLE_MAX + 1), false);
                    c.regs[reg::RDI] = p.addr;
                    c.regs[reg::RSI] = len;
                    // Only failing writes, apart from the one above: a valid
                    // pointer is swapped for a bad one (successes print lines).
                    if !p.must_fail && len <= CONSOLE_MAX {
                        c.regs[reg::RDI] = self.rng.pick(&[KERNEL_IMAGE, NON_CANONICAL, USER_TOP_PAGE, 8]);
                        if len == 0 {
                            c.regs[reg::RSI] = 1;
                        }
                    }
                    must_fail = true;
                }
            }
            nr::SYSTEM_INFO => {
                let len = self.rng.pick(&[0, 1, 23, 24, 25, 47, 48, 49, 63, 64, 65, 79, 80, 81, 95, 96, 97, PAGE, u64::MAX]);
                let written = len.min(env.system_info_max);
                let p = self.pointer(env, if len >= 24 { written } else { 0 }, true);
                c.regs[reg::RDI] = p.addr;
                c.regs[reg::RSI] = len;
                if len < 24 {
                    c.check = Check::Error(-3, -3);
                } else if p.must_fail {
                    must_fail = true;
                } else if p.addr >= env.scratch && p.addr + written <= env.scratch_end() {
                    c.check = Check::Exactly(written as i64);
                }
            }
            nr::HANDLE_CLOSE => {
                let o = {
                    let k = self_kind_any(&mut self.rng);
                    primary(self, &mut c, k)
                };
                must_fail = o.invalid();
                c.effect = Effect::Closes(c.regs[reg::RDI]);
            }
            nr::HANDLE_DUPLICATE => {
                let o = {
                    let k = self_kind_any(&mut self.rng);
                    primary(self, &mut c, k)
                };
                let (r, unknown) = self.rights();
                c.regs[reg::RSI] = r;
                must_fail = o.invalid() || unknown;
                c.effect = creates_like(o);
            }
            nr::HANDLE_INFO => {
                let o = {
                    let k = self_kind_any(&mut self.rng);
                    primary(self, &mut c, k)
                };
                must_fail = o.invalid();
                if let Some(e) = o.entry().filter(|e| e.kind != UNKNOWN_KIND) {
                    c.check = Check::HandleType(e.kind);
                }
            }
            nr::SPACE_CREATE => {
                let o = primary(self, &mut c, kind::SPACE);
                // A dead space has no children (kernel/ABI.md: Dead).
                must_fail = o.invalid() || o.is_dead();
                c.effect = Effect::Creates { kind: kind::SPACE, flags: 0, object: 0, parent: o.object() };
            }
            nr::SPACE_DESTROY => {
                let mut o = primary(self, &mut c, kind::SPACE);
                // Only spaces known to be alive: not dead ones, nor imported
                // handles of unknown ancestry.
                let maybe_dead =
                    o.is_dead() || o.entry().is_some_and(|e| e.object == 0 || e.kind != kind::SPACE || e.flags & NO_ANCESTRY != 0);
                if maybe_dead && env.avoid & avoid::DESTROY_DEAD != 0 {
                    c.regs[reg::RDI] = self.forged();
                    o = Origin::Forged;
                }
                // Never its own space (and the worker's handles to it lack
                // DESTROY); a dead one is Dead (and its handle closed).
                must_fail = o.invalid() || o.is_self() || o.is_dead();
                c.effect = Effect::Destroys { value: c.regs[reg::RDI], object: o.object() };
            }
            nr::SPACE_ENUMERATE => {
                let o = primary(self, &mut c, kind::SPACE);
                let max = self.size(HANDLE_QUOTA);
                let p = self.pointer(env, max.min(HANDLE_QUOTA) * 16, true);
                c.regs[reg::RSI] = p.addr;
                c.regs[reg::RDX] = max;
                // A bad buffer is not sure to fail: an empty table copies nothing.
                must_fail = o.invalid() || max > HANDLE_QUOTA;
            }
            nr::THREAD_CREATE => {
                let o = primary(self, &mut c, kind::SPACE);
                self.threads_left = self.threads_left.saturating_sub(1);
                let v = self.rng.below(victim::KINDS as u64) as usize;
                let (rip, bad_rip) = self.entry_point(env, v);
                let (rsp, _) = self.stack_pointer(env);
                // thread_create refuses kernel-half stacks; a non-canonical
                // one is the thread's own problem (its first push faults).
                let bad_rsp = rsp >= KERNEL_HALF;
                c.regs[reg::RSI] = rip;
                c.regs[reg::RDX] = rsp;
                c.regs[reg::R10] = self.victim_arg(v);
                must_fail = o.invalid() || bad_rip || bad_rsp || o.is_dead();
                c.effect = Effect::Creates { kind: kind::THREAD, flags: 0, object: 0, parent: 0 };
            }
            nr::THREAD_CREATE_STOPPED => {
                let o = primary(self, &mut c, kind::SPACE);
                self.threads_left = self.threads_left.saturating_sub(1);
                must_fail = o.invalid();
                c.effect = Effect::Creates { kind: kind::THREAD, flags: 0, object: 0, parent: 0 };
            }
            nr::THREAD_KILL | nr::THREAD_STOP | nr::THREAD_RESUME | nr::THREAD_DONATE => {
                let o = primary(self, &mut c, kind::THREAD);
                must_fail = o.invalid();
            }
            nr::THREAD_WAIT => {
                let o = primary(self, &mut c, kind::THREAD);
                let block = self.rng.pick(&[0, 0, 0, 1, 1, 2, u64::MAX]);
                c.regs[reg::RSI] = block;
                must_fail = o.invalid() || block > 1;
                if block == 1 && !must_fail {
                    c.class = Class::Blocking;
                }
            }
            nr::MUTEX_CREATE | nr::COND_CREATE | nr::PORTSET_CREATE => {
                let k = match nr_ {
                    nr::MUTEX_CREATE => kind::MUTEX,
                    nr::COND_CREATE => kind::COND,
                    _ => kind::PORTSET,
                };
                c.effect = Effect::Creates { kind: k, flags: 0, object: 0, parent: 0 };
            }
            nr::MUTEX_WAIT | nr::COND_WAIT => {
                let o = primary(self, &mut c, if nr_ == nr::MUTEX_WAIT { kind::MUTEX } else { kind::COND });
                let p = self.pointer(env, 4, false);
                let addr = if self.rng.chance(900) { p.addr & !3 } else { p.addr };
                let any = self.rng.next_u64();
                let expected = self.rng.pick(&[0, 0, 1, u32::MAX as u64, 1 << 32, any]);
                c.regs[reg::RSI] = addr;
                c.regs[reg::RDX] = expected;
                must_fail = o.invalid() || addr % 4 != 0 || expected > u32::MAX as u64 || (p.must_fail && addr == p.addr);
                if !must_fail {
                    c.class = Class::Blocking;
                }
            }
            nr::MUTEX_WAKE | nr::COND_WAKE => {
                let o = primary(self, &mut c, if nr_ == nr::MUTEX_WAKE { kind::MUTEX } else { kind::COND });
                c.regs[reg::RSI] = self.rng.pick(&[0, 1, 2, u32::MAX as u64, u64::MAX]);
                must_fail = o.invalid();
            }
            nr::PORT_CREATE => {
                let o = primary(self, &mut c, kind::PORTSET);
                c.regs[reg::RSI] = self.any_word();
                must_fail = o.invalid();
                c.effect = Effect::Creates { kind: kind::PORT, flags: 0, object: 0, parent: 0 };
            }
            nr::IPC_CALL | nr::IPC_SEND | nr::CONN_CONNECT => {
                let o = primary(self, &mut c, kind::PORT);
                self.set_message(&mut c);
                must_fail = o.invalid();
                if !must_fail && nr_ != nr::IPC_SEND {
                    c.class = Class::Blocking;
                }
            }
            nr::IPC_REPLY_WAIT | nr::IPC_RECEIVE | nr::CONN_ACCEPT => {
                let o = primary(self, &mut c, kind::PORTSET);
                self.set_message(&mut c);
                must_fail = o.invalid();
                if !must_fail {
                    c.class = Class::Blocking;
                }
            }
            nr::IPC_CALL_BUF | nr::IPC_REPLY_WAIT_BUF | nr::IPC_CALL_BUF_TIMED => {
                let calling = nr_ != nr::IPC_REPLY_WAIT_BUF;
                let o = primary(self, &mut c, if calling { kind::PORT } else { kind::PORTSET });
                self.set_message(&mut c);
                let reserved = if self.rng.chance(64) { 1 << self.rng.below(64) } else { 0 };
                let bad = self.descriptor(env, &mut c, reserved);
                if nr_ == nr::IPC_CALL_BUF_TIMED {
                    // Nanoseconds; u64::MAX: none. Even 0 waits for the
                    // next tick, so every valid call may block.
                    let any = self.rng.next_u64();
                    c.r14 = self.rng.pick(&[0, 1, 1_000, 1_000_000, 10_000_000, 30_000_000, 1 << 40, 1 << 63, u64::MAX, any]);
                }
                // reply_wait takes a request before it looks at its receive
                // part; the reserved word counts only in a real descriptor.
                must_fail = o.invalid() || (calling && (bad || (reserved != 0 && c.desc_in_r13)));
                if !must_fail {
                    c.class = Class::Blocking;
                }
            }
            nr::CONN_SEND
            | nr::CONN_RECEIVE
            | nr::CONN_SEND_OVER_RECEIVE
            | nr::CONN_DISCONNECT
            | nr::CONN_SEND_BUF
            | nr::CONN_RECEIVE_BUF => {
                // The worker never connects (only its helpers do): every
                // side of its own is free, so these fail at once.
                c.regs[reg::RDI] = self.rng.pick(&[0, 1, 2, u64::MAX]);
                self.set_message(&mut c);
                match nr_ {
                    nr::CONN_SEND => c.regs[reg::R13] = self.rng.pick(&[0, 1, 2, u64::MAX]),
                    nr::CONN_SEND_BUF | nr::CONN_RECEIVE_BUF => {
                        let flags = self.rng.pick(&[0, 1]);
                        self.descriptor(env, &mut c, flags);
                    }
                    _ => {}
                }
                must_fail = true;
            }
            nr::THREAD_SET_AFFINITY => {
                let o = primary(self, &mut c, kind::THREAD);
                let online = if env.cpus >= 64 { u64::MAX } else { (1u64 << env.cpus) - 1 };
                let mask = match self.rng.below(6) {
                    0 => 0,
                    1 => online,
                    2 => 1 << self.rng.below(env.cpus.max(1)),
                    3 => !online,
                    4 => u64::MAX,
                    _ => self.rng.next_u64(),
                };
                c.regs[reg::RSI] = mask;
                must_fail = o.invalid() || mask & online == 0;
            }
            nr::REGION_CREATE => {
                let o = primary(self, &mut c, kind::SPACE);
                // Sometimes exactly the caller's discard area: the only
                // region a fuzzed region_discard may succeed on.
                let area = o.is_self() && self.rng.chance(128);
                let (start, size) = if area { (env.discard, env.discard_len) } else { (self.memory_address(env), self.memory_size()) };
                let (max, unknown) = self.memory_rights();
                c.regs[reg::RSI] = start;
                c.regs[reg::RDX] = size;
                c.regs[reg::R10] = max;
                must_fail = o.invalid()
                    || unknown
                    || size == 0
                    || !start.is_multiple_of(PAGE)
                    || start.checked_add(size).is_none_or(|end| end > NON_CANONICAL);
                c.effect = Effect::Creates { kind: kind::REGION, flags: if area { DISCARD_AREA } else { 0 }, object: 0, parent: 0 };
            }
            nr::MAPPING_CREATE => {
                let o = primary(self, &mut c, kind::REGION);
                let (space, so) = self.handle(kind::SPACE);
                let va = self.memory_address(env);
                let offset = self.rng.pick(&[0, 0, 0, PAGE, 2 * PAGE, 1, !(PAGE - 1)]);
                let size = self.memory_size();
                let (rights, unknown) = self.memory_rights();
                c.regs[reg::RSI] = space;
                c.regs[reg::RDX] = va;
                c.regs[reg::R10] = offset;
                c.regs[reg::R8] = size;
                c.regs[reg::R9] = rights;
                let end = va.checked_add(size);
                let over_own = so.is_self() && size > 0 && env.own.iter().any(|&(lo, hi)| end.is_some_and(|e| va < hi && lo < e));
                must_fail = o.invalid()
                    || so.invalid()
                    || unknown
                    || size == 0
                    || !va.is_multiple_of(PAGE)
                    || end.is_none_or(|e| e > NON_CANONICAL)
                    || over_own
                    || so.is_dead();
                c.effect = Effect::Creates { kind: kind::MAPPING, flags: 0, object: 0, parent: 0 };
            }
            nr::REGION_PROTECT => {
                let o = primary(self, &mut c, kind::REGION);
                c.regs[reg::RSI] = self.memory_rights().0;
                must_fail = o.invalid();
            }
            nr::REGION_DESTROY | nr::MAPPING_DESTROY => {
                let o = primary(self, &mut c, if nr_ == nr::REGION_DESTROY { kind::REGION } else { kind::MAPPING });
                must_fail = o.invalid();
                c.effect = Effect::Closes(c.regs[reg::RDI]);
            }
            nr::SPACE_SET_KEEPER | nr::REGION_SET_KEEPER | nr::THREAD_SET_SCHEDULER => {
                let want = match nr_ {
                    nr::SPACE_SET_KEEPER => kind::SPACE,
                    nr::REGION_SET_KEEPER => kind::REGION,
                    _ => kind::THREAD,
                };
                let o = primary(self, &mut c, want);
                c.regs[reg::RSI] = if self.rng.chance(256) { 0 } else { self.handle(kind::PORT).0 };
                must_fail = o.invalid();
            }
            nr::THREAD_GET_STATE => {
                let o = primary(self, &mut c, kind::THREAD);
                let len = self.rng.pick(&[0, STATE_V1 - 1, STATE_V1, STATE_V1 + 1, STATE_V2 - 1, STATE_V2, STATE_V2 + 1, u64::MAX]);
                let written = if len >= STATE_V2 {
                    STATE_V2
                } else if len >= STATE_V1 {
                    STATE_V1
                } else {
                    0
                };
                let p = self.pointer(env, written, true);
                c.regs[reg::RSI] = p.addr;
                c.regs[reg::RDX] = len;
                must_fail = o.invalid() || len < STATE_V1 || p.must_fail;
            }
            nr::THREAD_SET_STATE => {
                let o = primary(self, &mut c, kind::THREAD);
                let (len, bad_record) = self.state_record(env, staging);
                let p = if self.rng.chance(900) {
                    Pointer { addr: env.staging, must_fail: false }
                } else {
                    self.pointer(env, len.min(STATE_V2), false)
                };
                c.regs[reg::RSI] = p.addr;
                c.regs[reg::RDX] = len;
                must_fail = o.invalid() || len < STATE_V1 || p.must_fail || (p.addr == env.staging && bad_record);
            }
            nr::HANDLE_TRANSFER => {
                let (space, so) = self.handle(kind::SPACE);
                let (h, ho) = {
                    let k = self_kind_any(&mut self.rng);
                    self.handle(k)
                };
                let (rights, unknown) = self.rights();
                c.regs[..3].copy_from_slice(&[space, h, rights]);
                must_fail = so.invalid() || ho.invalid() || unknown;
                c.effect = if so.is_self() {
                    creates_like(ho)
                } else if so.entry().is_some_and(|e| e.kind == kind::SPACE) {
                    Effect::Foreign
                } else {
                    Effect::None
                };
            }
            nr::HANDLE_IMPORT => {
                let (space, so) = self.handle(kind::SPACE);
                let h = if !so.is_self() && !self.pool.foreign().is_empty() && self.rng.chance(768) {
                    self.rng.pick(self.pool.foreign())
                } else {
                    {
                        let k = self_kind_any(&mut self.rng);
                        self.handle(k)
                    }
                    .0
                };
                let (rights, unknown) = self.rights();
                c.regs[..3].copy_from_slice(&[space, h, rights]);
                must_fail = so.invalid() || unknown;
                c.effect = Effect::Creates { kind: UNKNOWN_KIND, flags: 0, object: 0, parent: 0 };
            }
            nr::HANDLE_TRANSFER_AT => {
                let (space, so) = self.handle(kind::SPACE);
                let (h, ho) = {
                    let k = self_kind_any(&mut self.rng);
                    self.handle(k)
                };
                let (rights, unknown) = self.rights();
                let value = match self.rng.below(5) {
                    0 => 0,
                    1 if !self.pool.closed().is_empty() => self.rng.pick(self.pool.closed()),
                    2 if !self.pool.is_empty() => self.rng.pick(self.pool.live()).value,
                    _ => self.rng.range(1, 200) | self.rng.below(4) << 32,
                };
                c.regs[..4].copy_from_slice(&[space, h, rights, value]);
                let taken = so.is_self() && self.pool.find(value).is_some();
                must_fail = so.invalid() || ho.invalid() || unknown || value == 0 || taken;
                c.effect = match (so.is_self(), so.entry()) {
                    (true, _) => Effect::CreatesAt {
                        value,
                        kind: ho.entry().map_or(UNKNOWN_KIND, |e| e.kind),
                        flags: ho.entry().map_or(0, |e| e.flags),
                        object: ho.object(),
                        parent: ho.entry().map_or(0, |e| e.parent),
                    },
                    (false, Some(e)) if e.kind == kind::SPACE => Effect::None,
                    _ => Effect::ForgetClosed,
                };
            }
            nr::MEMORY_OBJECT_STATE | nr::OBJECT_GET_STATE => {
                let (want, record) = if nr_ == nr::MEMORY_OBJECT_STATE {
                    (if self.rng.chance(512) { kind::REGION } else { kind::MAPPING }, MEMORY_STATE)
                } else {
                    (self_kind_any(&mut self.rng), OBJECT_STATE)
                };
                let o = primary(self, &mut c, want);
                let len = self.rng.pick(&[0, record - 1, record, record + 1, u64::MAX]);
                let p = self.pointer(env, if len >= record { record } else { 0 }, true);
                c.regs[reg::RSI] = p.addr;
                c.regs[reg::RDX] = len;
                must_fail = o.invalid() || len < record || p.must_fail;
            }
            nr::REFERENCE_CREATE => {
                let o = {
                    let k = self_kind_any(&mut self.rng);
                    primary(self, &mut c, k)
                };
                must_fail = o.invalid();
                c.effect = Effect::Creates { kind: kind::REFERENCE, flags: 0, object: 0, parent: 0 };
            }
            nr::REFERENCE_COMPARE => {
                let o = {
                    let k = self_kind_any(&mut self.rng);
                    primary(self, &mut c, k)
                };
                let (b, bo) = {
                    let k = self_kind_any(&mut self.rng);
                    self.handle(k)
                };
                c.regs[reg::RSI] = b;
                must_fail = o.invalid() || bo.invalid();
            }
            nr::THREAD_SET_PRIORITY => {
                let o = primary(self, &mut c, kind::THREAD);
                // Only the default among valid priorities: a spinning thread
                // above the workers' would starve a CPU, and one below them
                // would never run to its end after a kill.
                let p = self.rng.pick(&[16, 16, PRIORITY_MAX + 1, 1000, (1 << 32) | 16, u64::MAX]);
                c.regs[reg::RSI] = p;
                must_fail = o.invalid() || p > PRIORITY_MAX;
            }
            nr::THREAD_GET_CONNECTION => {
                let o = primary(self, &mut c, kind::THREAD);
                let side = self.rng.pick(&[0, 1, 2, u64::MAX]);
                let p = self.pointer(env, 16, true);
                c.regs[reg::RSI] = side;
                c.regs[reg::RDX] = p.addr;
                must_fail = o.invalid() || side > 1;
            }
            nr::THREAD_SET_CONNECTION => {
                let o = primary(self, &mut c, kind::THREAD);
                let side = self.rng.pick(&[0, 1, 2, u64::MAX]);
                let peer_kind = if self.rng.chance(512) { kind::THREAD } else { kind::REFERENCE };
                let peer = if self.rng.chance(200) { 0 } else { self.handle(peer_kind).0 };
                let flags = self.rng.pick(&[0, 2, 1, 4, u64::MAX]);
                c.regs[reg::RSI] = side;
                c.regs[reg::RDX] = peer;
                c.regs[reg::R10] = flags;
                must_fail = o.invalid() || side > 1 || flags & !2 != 0;
            }
            nr::THREAD_SET_DONATION_ONLY => {
                let o = primary(self, &mut c, kind::THREAD);
                let on = self.rng.pick(&[0, 1, 2, u64::MAX]);
                c.regs[reg::RSI] = on;
                must_fail = o.invalid() || on > 1;
            }
            nr::PORTSET_TAKE_MESSAGES | nr::PORTSET_PUT_MESSAGES => {
                let o = primary(self, &mut c, kind::PORTSET);
                let n = self.rng.pick(&[0, 1, 2, QUEUED_MAX, QUEUED_MAX + 1, u64::MAX]);
                let bytes = n.min(QUEUED_MAX) * QUEUED_RECORD;
                let put = nr_ == nr::PORTSET_PUT_MESSAGES;
                let p = if put && self.rng.chance(700) {
                    for w in staging.iter_mut().take((bytes / 8) as usize) {
                        *w = self.any_word();
                    }
                    Pointer { addr: env.staging, must_fail: false }
                } else {
                    self.pointer(env, bytes, !put)
                };
                c.regs[reg::RSI] = p.addr;
                c.regs[reg::RDX] = n;
                must_fail = o.invalid() || n > QUEUED_MAX;
            }
            nr::BOOT_ARGS => {
                let len = self.size(256);
                c.regs[reg::RDI] = self.pointer(env, len, true).addr;
                c.regs[reg::RSI] = len;
                // The root space's alone.
                c.check = Check::Error(MISSING_RIGHTS, MISSING_RIGHTS);
            }
            nr::HANG_REPORT => c.check = Check::Error(MISSING_RIGHTS, MISSING_RIGHTS),
            nr::FAULT_INJECT => {
                // The root's alone: a child must not arm the kernel's fault injector.
                let mode = self.rng.pick(&[0, 1, 2, 3, u64::MAX]);
                let a = self.any_word();
                let b = self.rng.pick(&[0, 1, 1000, 1001]);
                c.regs[..3].copy_from_slice(&[mode, a, b]);
                c.check = Check::Error(MISSING_RIGHTS, MISSING_RIGHTS);
            }
            nr::TIME_NOW => {
                // No arguments: the registers are noise the kernel must leave alone.
                for r in c.regs.iter_mut() {
                    *r = self.any_word();
                }
                c.check = Check::NotBelow(self.last_time as i64);
            }
            nr::SLEEP_UNTIL => {
                // `last_time` is a time the worker has seen, so never in the future.
                let t = self.last_time;
                let (deadline, past) = match self.rng.below(9) {
                    0 => (0, true),
                    1 => (1, true),
                    2 => (1_000, true),
                    3 => (t, true),
                    4 => (t.saturating_sub(self.rng.below(1 << 34)), true),
                    // Soon: passed or not by the time the kernel looks.
                    5 => (t + self.rng.pick(&[1, 1_000, 1_000_000, 10_000_000, 50_000_000]), false),
                    6 => (u64::MAX, false),
                    7 => (1 << 63 | self.rng.below(1 << 62), false),
                    _ => (t + 3_600_000_000_000, false),
                };
                for r in c.regs.iter_mut() {
                    *r = self.any_word();
                }
                c.regs[reg::RDI] = deadline;
                if past {
                    c.check = Check::Exactly(0);
                } else {
                    c.class = Class::Blocking;
                }
            }
            nr::CONSOLE_READ => {
                let len = self.size(CONSOLE_MAX);
                let p = self.pointer(env, len.min(CONSOLE_MAX), true);
                c.regs[reg::RDI] = p.addr;
                c.regs[reg::RSI] = len;
                // The root space's alone, refused before the size or the
                // buffer is looked at: a worker (never in the root space)
                // gets MissingRights whatever it passes, and never blocks.
                c.check = Check::Error(MISSING_RIGHTS, MISSING_RIGHTS);
            }
            nr::REGION_DISCARD => {
                let o = primary(self, &mut c, kind::REGION);
                let area = o.entry().is_some_and(|e| e.flags & DISCARD_AREA != 0 && e.kind == kind::REGION);
                let len = env.discard_len;
                let (offset, size, bad) = if area {
                    let offset = self.rng.pick(&[0, 0, 0, PAGE, len - PAGE, len, 1, PAGE - 1, !(PAGE - 1)]);
                    let size =
                        self.rng.pick(&[PAGE, PAGE, 2 * PAGE, len, len, len.wrapping_sub(offset), 0, 1, PAGE + 1, len + PAGE, !(PAGE - 1)]);
                    let bad = size == 0
                        || !offset.is_multiple_of(PAGE)
                        || !size.is_multiple_of(PAGE)
                        || offset.checked_add(size).is_none_or(|end| end > len);
                    (offset, size, bad)
                } else {
                    // Any other region may reach memory the fuzzer relies on
                    // (stacks, control blocks, the read-only text): only
                    // requests the kernel must refuse whole.
                    let (offset, size) = match self.rng.below(4) {
                        0 => (self.rng.pick(&[0, PAGE]), 0),
                        1 => (1 + self.rng.below(4) * PAGE, PAGE),
                        2 => (0, self.rng.pick(&[1, PAGE - 1, PAGE + 1])),
                        // Beyond every region (none is larger than the user half).
                        _ => (self.rng.pick(&[NON_CANONICAL, NON_CANONICAL + PAGE, !(PAGE - 1)]), PAGE),
                    };
                    (offset, size, true)
                };
                c.regs[reg::RSI] = offset;
                c.regs[reg::RDX] = size;
                must_fail = o.invalid() || bad;
                // Frames freed: at most the pages asked for (an error when
                // the handle lacks MAP_WRITE or the region lost its write right).
                c.check = Check::UpTo((size / PAGE) as i64);
            }
            nr::IPC_REQUEST_READ => {
                self.request_read_args(env, &mut c);
                // The worker never holds a request: InvalidArgument, or
                // BadSize for a length over 64 KiB (checked first).
                c.check = Check::Error(INVALID_ARGUMENT, BAD_SIZE);
            }
            nr::IPC_CLIENT_WAITING => {
                for r in c.regs.iter_mut() {
                    *r = self.any_word();
                }
                // The worker never takes a request (its receives fail at
                // once), so it has no client: 0. Helpers that serve ask too.
                c.check = Check::Exactly(0);
            }
            nr::SPACE_SET_QUOTA => {
                let o = primary(self, &mut c, kind::SPACE);
                let any = self.rng.next_u64();
                c.regs[reg::RSI] = self.rng.pick(&[0, 1, PAGE, 64 * 1024, 1 << 20, 16 << 20, u64::MAX, any]);
                // Never its own space (nor an ancestor).
                must_fail = o.invalid() || o.is_self();
            }
            _ => {
                // Numbers without a call: every argument register is noise.
                for r in c.regs.iter_mut() {
                    *r = self.any_word();
                }
                c.check = Check::Error(NO_SUCH_CALL, NO_SUCH_CALL);
            }
        }
        if must_fail {
            c.check = Check::MustFail;
            c.class = Class::Direct;
        }
        c
    }

    /// An entry point for a new thread: mostly victim `v`, sometimes an
    /// address without code or outside the user half (which must be refused).
    fn entry_point(&mut self, env: &Env, v: usize) -> (u64, bool) {
        match self.rng.below(12) {
            0 => (0, false),
            1 => (env.map_area, false),
            2 => (env.text, false),
            3 => (self.rng.pick(&[KERNEL_IMAGE, NON_CANONICAL, u64::MAX]), true),
            _ => (env.victims[v], false),
        }
    }

    /// A stack pointer; true when it is not a user address. The top of the
    /// user half itself is a valid (empty) stack.
    fn stack_pointer(&mut self, env: &Env) -> (u64, bool) {
        match self.rng.below(8) {
            0 => (0, false),
            1 => {
                let rsp = self.rng.pick(&[KERNEL_HALF, NON_CANONICAL + PAGE, NON_CANONICAL, !15]);
                (rsp, rsp > NON_CANONICAL)
            }
            2 => (env.ro + PAGE, false),
            _ => (env.scratch + (self.rng.below(env.scratch_len / 16) * 16), false),
        }
    }

    /// The argument (rdi) a victim starts with: the handle it serves for
    /// the server and receiver, anything for the others.
    fn victim_arg(&mut self, v: usize) -> u64 {
        match v {
            victim::SERVE | victim::RECEIVE => self.handle(kind::PORTSET).0,
            _ => self.any_word(),
        }
    }

    /// Writes a thread state record into `staging`; returns the length to
    /// pass and whether the record itself must be refused (unknown version,
    /// rip or rsp outside the user half, MXCSR with reserved bits).
    pub fn state_record(&mut self, env: &Env, staging: &mut [u64; STAGING_WORDS]) -> (u64, bool) {
        let version = self.rng.pick(&[1, 1, 2, 2, 2, 0, 3]);
        let flags = self.rng.below(2) << 32;
        staging[0] = version | flags;
        for w in staging[1..17].iter_mut() {
            *w = self.any_word();
        }
        let v = self.rng.below(victim::KINDS as u64) as usize;
        let (rip, bad_rip) = self.entry_point(env, v);
        let (rsp, bad_rsp) = self.stack_pointer(env);
        staging[6] = self.victim_arg(v);
        staging[8] = rsp;
        staging[17] = rip;
        staging[18] = self.rng.next_u64() & 0x3f_7fff;
        // FXSAVE image: FCW 0x37f, MXCSR, the rest zero.
        for w in staging[19..83].iter_mut() {
            *w = 0;
        }
        staging[19] = 0x37f;
        let mxcsr = self.rng.pick(&[0x1f80, 0x1f80, 0x9fc0, 0xffff, 0x1_0000, 0xffff_ffff]);
        // MXCSR is bytes 24..28 of the image (word 22's low half); the high
        // half is MXCSR_MASK, which a restore ignores.
        staging[22] = mxcsr | (self.rng.next_u64() << 32);
        let len = self.rng.pick(&[STATE_V1, STATE_V1, STATE_V2, STATE_V2, STATE_V1 - 1, STATE_V2 - 1, STATE_V2 + 8, 0, u64::MAX]);
        let bad_version = !(version == 1 || (version == 2 && len >= STATE_V2));
        let bad_mxcsr = version == 2 && len >= STATE_V2 && mxcsr > 0xffff;
        (len, bad_version || bad_rip || bad_rsp || bad_mxcsr)
    }
}

/// Some object type to ask for when any handle will do.
fn self_kind_any(rng: &mut Rng) -> u32 {
    rng.range(1, 9) as u32
}

/// The effect of a call returning another handle to `o`'s object.
fn creates_like(o: Origin) -> Effect {
    match o.entry() {
        Some(e) => Effect::Creates { kind: e.kind, flags: e.flags, object: e.object, parent: e.parent },
        None => Effect::Creates { kind: UNKNOWN_KIND, flags: 0, object: 0, parent: 0 },
    }
}

/// The highest call number generated: the kernel has none in 86..=94,
/// and 95 (console_put, the root's alone) is left out (unknown_nr skips it).
pub const LAST_CALL: u64 = nr::IPC_REQUEST_READ;
/// Index of the "a number without a call" choice in `pick_nr`'s weights.
const UNKNOWN_SLOT: usize = LAST_CALL as usize + 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            scratch: 0x1002_0000,
            scratch_len: 17 * PAGE,
            ro: 0x1004_0000,
            ro_text_len: 19,
            staging: 0x1001_0000,
            text: 0x40_0000,
            victims: [0x40_1000; victim::KINDS],
            map_area: 0x4000_0000,
            map_area_len: 64 * PAGE,
            discard: 0x1006_0000,
            discard_len: 8 * PAGE,
            own: [(0x1000_0000, 0x1010_0000), (0x40_0000, 0x50_0000)],
            cpus: 4,
            system_info_max: 48,
            avoid: 0,
            only: u128::MAX,
        }
    }

    #[test]
    fn pointers_know_when_an_access_must_fail() {
        let e = env();
        let mut g = Gen::new(Rng::new(5));
        for len in [0u64, 1, 8, 152, 664, PAGE, 3 * PAGE] {
            for _ in 0..2000 {
                let p = g.pointer(&e, len, true);
                let in_scratch = p.addr >= e.scratch && p.addr.checked_add(len).is_some_and(|end| end <= e.scratch + e.scratch_len);
                let in_map_area = (e.map_area..e.map_area + e.map_area_len + PAGE).contains(&p.addr);
                if len > 0 && !in_scratch && !in_map_area {
                    assert!(p.must_fail, "{:#x}+{len} is not in scratch but may succeed", p.addr);
                }
                if in_scratch {
                    assert!(!p.must_fail, "{:#x}+{len} is in scratch but must fail", p.addr);
                }
            }
        }
    }

    #[test]
    fn sizes_hit_the_boundaries() {
        let mut g = Gen::new(Rng::new(9));
        let mut seen = [false; 6];
        for _ in 0..5000 {
            match g.size(CONSOLE_MAX) {
                0 => seen[0] = true,
                255 => seen[1] = true,
                256 => seen[2] = true,
                257 => seen[3] = true,
                u64::MAX => seen[4] = true,
                4095 => seen[5] = true,
                _ => {}
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn every_call_number_is_generated_and_exit_never() {
        let e = env();
        let mut g = Gen::new(Rng::new(1));
        let mut staging = [0u64; STAGING_WORDS];
        let mut seen = [0u32; LAST_CALL as usize + 1];
        let mut unknown = 0;
        for i in 0..200_000 {
            // Keep the pool stocked with one of each type so every call is reachable.
            if i % 1000 == 0 {
                g = Gen::new(Rng::new(i));
                for k in 1..=9 {
                    g.pool.add(Entry {
                        value: k as u64 | 1 << 32,
                        object: k as u64 | 1 << 32,
                        parent: 0,
                        kind: k,
                        flags: if k == 1 { SELF } else { 0 },
                    });
                }
            }
            let s = g.next(&e, &mut staging);
            for c in &s.steps[..s.len] {
                match c.nr {
                    n if n <= LAST_CALL => seen[n as usize] += 1,
                    _ => unknown += 1,
                }
            }
        }
        assert_eq!(seen[nr::EXIT as usize], 0);
        for n in (0..=LAST_CALL as usize).filter(|&n| n != 2 && !(5..=15).contains(&n)) {
            assert!(seen[n] > 0, "call {n} never generated");
        }
        assert!(unknown + seen[5..=15].iter().sum::<u32>() > 0);
    }

    #[test]
    fn only_restricts_the_numbers() {
        let mut e = env();
        e.only = (1 << 37) | (1 << 38);
        let mut g = Gen::new(Rng::new(2));
        for _ in 0..1000 {
            let n = g.pick_nr(&e);
            assert!(n == 37 || n == 38, "{n}");
        }
    }

    #[test]
    fn forged_and_closed_handles_must_fail() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(3));
        g.pool.close(0x5_0000_0003);
        for _ in 0..5000 {
            let c = g.call(nr::HANDLE_INFO, &e, &mut staging);
            if c.regs[0] == 0x5_0000_0003 || c.regs[0] == 0 || c.regs[0] == u64::MAX {
                assert_eq!(c.check, Check::MustFail);
            }
            assert_eq!(c.class, Class::Direct);
        }
    }

    #[test]
    fn blocking_calls_are_marked() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(4));
        g.pool.add(Entry { value: 0x1_0000_0001, object: 1, parent: 0, kind: kind::PORT, flags: 0 });
        g.pool.add(Entry { value: 0x1_0000_0002, object: 2, parent: 0, kind: kind::PORTSET, flags: 0 });
        let mut blocking = 0;
        for _ in 0..2000 {
            for n in [nr::IPC_CALL, nr::IPC_RECEIVE, nr::CONN_CONNECT] {
                let c = g.call(n, &e, &mut staging);
                if c.check != Check::MustFail {
                    assert_eq!(c.class, Class::Blocking, "{c:?}");
                    blocking += 1;
                }
            }
            let c = g.call(nr::IPC_SEND, &e, &mut staging);
            assert_eq!(c.class, Class::Direct);
        }
        assert!(blocking > 1000);
    }

    #[test]
    fn unknown_numbers_skip_every_call_the_kernel_has() {
        let mut g = Gen::new(Rng::new(11));
        for _ in 0..20_000 {
            let n = g.unknown_nr();
            assert!(matryoshka_abi::call::name(n).is_none(), "{n}");
            assert!(n != nr::CONSOLE_PUT && !(nr::TIME_NOW..=nr::IPC_REQUEST_READ).contains(&n));
        }
    }

    #[test]
    fn clock_calls() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(12));
        g.last_time = 5_000_000_000;
        let (mut past, mut blocking) = (0, 0);
        for _ in 0..5000 {
            let c = g.call(nr::TIME_NOW, &e, &mut staging);
            assert_eq!((c.class, c.check), (Class::Direct, Check::NotBelow(5_000_000_000)));
            let c = g.call(nr::SLEEP_UNTIL, &e, &mut staging);
            let deadline = c.regs[reg::RDI];
            if deadline <= g.last_time {
                // In the past: returns at once.
                assert_eq!((c.class, c.check), (Class::Direct, Check::Exactly(0)), "{c:?}");
                past += 1;
            } else {
                assert_eq!(c.class, Class::Blocking, "{c:?}");
                blocking += 1;
            }
        }
        assert!(past > 1000 && blocking > 1000, "{past} {blocking}");
        let mut c = Call::new(nr::TIME_NOW);
        c.check = Check::NotBelow(10);
        assert!(verdict(&c, 10).is_ok() && verdict(&c, 11).is_ok());
        assert!(verdict(&c, 9).is_err() && verdict(&c, -9).is_err());
        // TimedOut is the timed call's alone.
        assert!(verdict(&c, -11).is_err());
        let mut c = Call::new(nr::IPC_CALL_BUF_TIMED);
        assert!(verdict(&c, -11).is_ok() && verdict(&c, -12).is_err());
        c.nr = nr::IPC_CALL_BUF;
        assert!(verdict(&c, -11).is_err());
    }

    #[test]
    fn timed_calls_carry_a_timeout_and_block() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(13));
        g.pool.add(Entry { value: 0x1_0000_0001, object: 1, parent: 0, kind: kind::PORT, flags: 0 });
        let (mut blocking, mut none) = (0, 0);
        for _ in 0..3000 {
            let c = g.call(nr::IPC_CALL_BUF_TIMED, &e, &mut staging);
            if c.check == Check::MustFail {
                assert_eq!(c.class, Class::Direct);
            } else {
                assert_eq!(c.class, Class::Blocking, "{c:?}");
                blocking += 1;
            }
            none += (c.r14 == u64::MAX) as u32;
            // Other calls carry no r14 input.
            assert_eq!(g.call(nr::IPC_CALL_BUF, &e, &mut staging).r14, 0);
        }
        assert!(blocking > 500 && none > 50, "{blocking} {none}");
        assert!(crate::args::ONLY_UNKNOWN_BIT as u64 > LAST_CALL);
    }

    #[test]
    fn root_only_calls_are_refused_and_the_worker_has_no_client() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(14));
        let mut sizes = [false; 3];
        for _ in 0..3000 {
            let c = g.call(nr::CONSOLE_READ, &e, &mut staging);
            assert_eq!((c.class, c.check), (Class::Direct, Check::Error(MISSING_RIGHTS, MISSING_RIGHTS)));
            match c.regs[reg::RSI] {
                0 => sizes[0] = true,
                CONSOLE_MAX => sizes[1] = true,
                n if n > CONSOLE_MAX => sizes[2] = true,
                _ => {}
            }
            let c = g.call(nr::IPC_CLIENT_WAITING, &e, &mut staging);
            assert_eq!((c.class, c.check), (Class::Direct, Check::Exactly(0)));
            let c = g.call(nr::IPC_REQUEST_READ, &e, &mut staging);
            assert_eq!((c.class, c.check), (Class::Direct, Check::Error(INVALID_ARGUMENT, BAD_SIZE)));
        }
        assert!(sizes.iter().all(|&s| s), "{sizes:?}");
    }

    #[test]
    fn region_discard_succeeds_only_on_the_discard_area() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(15));
        g.pool.add(Entry { value: 0x1_0000_0001, object: 1, parent: 0, kind: kind::SPACE, flags: SELF });
        // A region over anything else (its range unknown) and one over the discard area.
        g.pool.add(Entry { value: 0x1_0000_0002, object: 2, parent: 0, kind: kind::REGION, flags: 0 });
        g.pool.add(Entry { value: 0x1_0000_0003, object: 3, parent: 0, kind: kind::REGION, flags: DISCARD_AREA });
        let mut ok = 0;
        for _ in 0..5000 {
            let c = g.call(nr::REGION_DISCARD, &e, &mut staging);
            assert_eq!(c.class, Class::Direct);
            let (offset, size) = (c.regs[reg::RSI], c.regs[reg::RDX]);
            if c.regs[reg::RDI] == 0x1_0000_0003 {
                let fits =
                    size > 0 && offset % PAGE == 0 && size % PAGE == 0 && offset.checked_add(size).is_some_and(|end| end <= e.discard_len);
                if fits {
                    assert_eq!(c.check, Check::UpTo((size / PAGE) as i64));
                    ok += 1;
                } else {
                    assert_eq!(c.check, Check::MustFail, "{c:?}");
                }
            } else {
                assert_eq!(c.check, Check::MustFail, "{c:?}");
            }
        }
        assert!(ok > 200, "{ok}");
        // region_create marks exactly the discard area of its own space.
        let mut marked = 0;
        for _ in 0..20_000 {
            let c = g.call(nr::REGION_CREATE, &e, &mut staging);
            if let Effect::Creates { flags, .. } = c.effect {
                if flags & DISCARD_AREA != 0 {
                    assert_eq!((c.regs[reg::RDI], c.regs[reg::RSI], c.regs[reg::RDX]), (0x1_0000_0001, e.discard, e.discard_len));
                    marked += 1;
                }
            }
        }
        assert!(marked > 20, "{marked}");
        let mut c = Call::new(nr::REGION_DISCARD);
        c.check = Check::UpTo(2);
        assert!(verdict(&c, 2).is_ok() && verdict(&c, -6).is_ok() && verdict(&c, 3).is_err());
    }

    #[test]
    fn verdicts() {
        let mut c = Call::new(nr::NULL);
        c.check = Check::Exactly(0);
        assert!(verdict(&c, 0).is_ok());
        assert!(verdict(&c, 1).is_err());
        assert!(verdict(&c, -11).is_err());
        c.check = Check::MustFail;
        assert!(verdict(&c, -4).is_ok());
        assert!(verdict(&c, 5).is_err());
        c.check = Check::HandleType(kind::PORT);
        assert!(verdict(&c, 3 | 0x7ff << 8).is_ok());
        assert!(verdict(&c, 4).is_err());
        assert!(verdict(&c, 3 | 0x800 << 8).is_err());
        assert!(verdict(&c, -4).is_ok());
        c.check = Check::Error(-6, -1);
        assert!(verdict(&c, -1).is_ok());
        assert!(verdict(&c, 0).is_err());
    }

    #[test]
    fn state_records_flag_what_must_be_refused() {
        let e = env();
        let mut staging = [0u64; STAGING_WORDS];
        let mut g = Gen::new(Rng::new(6));
        let mut bad = 0;
        for _ in 0..2000 {
            let (len, refused) = g.state_record(&e, &mut staging);
            let rip = staging[17];
            if rip >= NON_CANONICAL || staging[8] > NON_CANONICAL || ![1, 2].contains(&(staging[0] & 0xffff_ffff)) {
                assert!(refused);
            }
            bad += refused as u32;
            let _ = len;
        }
        assert!(bad > 100 && bad < 1900);
    }
}
