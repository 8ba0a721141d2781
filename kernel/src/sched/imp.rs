//! The scheduler proper (bare metal only; the run queue is host-tested).

extern crate alloc;

use alloc::sync::{Arc, Weak};

use crate::object::space::Space;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::lazyfpu;
use super::runqueue::{Queueable, RunLink, RunQueue};
use crate::arch::x86_64::context;
use crate::arch::x86_64::syscall::UserExit;
use crate::arch::x86_64_exports::*;

pub const KERNEL_PRIORITY: u8 = 32;
pub const USER_PRIORITY: u8 = 16;
const KERNEL_STACK_PAGES: u64 = 4;
/// Timer ticks a user thread runs before others of its priority get a turn.
pub(super) const TIME_SLICE_TICKS: u32 = 2;

const READY: u8 = 0;
pub(super) const RUNNING: u8 = 1;
const BLOCKED: u8 = 2;
const EXITED: u8 = 3;
/// Stopped for its parent (get_state/set_state); only `resume` restarts it.
const STOPPED: u8 = 4;
/// Blocked in IPC by the fast path at its user frame: its kernel stack holds
/// only its user registers, so the fast path may switch straight to them
/// (`sched::fastipc`); anything else that wakes it runs the continuation
/// that finishes the call the general way.
pub(super) const PARKED: u8 = 5;

/// `Thread::attention` bits.
const ATTENTION_KILL: u8 = 1;
const ATTENTION_STOP: u8 = 2;
const ATTENTION_DONATION: u8 = 4;
/// Set for good in every thread created with the fast path off
/// (`fastpath=off`), so the fast path's one check of `attention` covers it.
const ATTENTION_GENERAL_PATH_ONLY: u8 = 8;

/// Why a BLOCKED thread waits (`Thread::wait`), for the hang report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WaitReason {
    None = 0,
    /// IPC: a call's reply, a server's next request, a one-way message, a connection.
    Ipc = 1,
    /// A mutex or condition variable.
    Mutex = 2,
    Cond = 3,
    /// Another thread's exit (`thread_wait`, a space's destruction).
    Join = 4,
    /// Another thread's stop (`thread_stop`).
    Stop = 5,
    /// A deadline (`sleep_ticks`).
    Sleep = 6,
    /// Its donation to another thread (`thread_donate`).
    Donating = 7,
    /// A turn to receive on a portset another receiver sleeps on.
    Standby = 8,
}

impl WaitReason {
    fn from_u8(v: u8) -> WaitReason {
        use WaitReason::*;
        [None, Ipc, Mutex, Cond, Join, Stop, Sleep, Donating, Standby].get(v as usize).copied().unwrap_or(None)
    }
}

/// In which IPC role a thread parked (`Thread::parked_as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedAs {
    /// In `call`, waiting for the reply.
    Client = 1,
    /// In `reply_wait`, waiting for a request on `IpcSlot::waiting_on`.
    Server = 2,
}

/// Where a stopped thread's user registers are on its kernel stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An interrupt or exception frame (`idt::TrapFrame`): every register.
    Trap,
    /// A system-call frame (`syscall::SyscallFrame`): rcx and r11 are the
    /// CPU's (rip and rflags), as the syscall ABI says.
    Syscall,
}

/// User registers of a thread that has not run yet (created stopped).
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRegisters {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedError {
    OutOfMemory,
    /// The affinity mask names no online CPU.
    NoAllowedCpu,
    /// The entry point or stack is not a user address.
    BadUserAddress,
}

enum Body {
    Kernel { entry: fn(usize), arg: usize },
    User { rip: u64, rsp: u64, args: (u64, u64) },
    /// A CPU's boot context, adopted as a thread.
    Adopted,
}

pub struct Thread {
    pub name: &'static str,
    pub(super) state: AtomicU8,
    pub(super) on_cpu: AtomicBool,
    pub(super) context_rsp: UnsafeCell<u64>,
    stack: spin::Mutex<Option<stack::KernelStack>>,
    pub(super) stack_top: u64,
    priority: AtomicU8,
    affinity: AtomicU64,
    /// The CPU the thread runs on, or last ran or was queued on.
    cpu: AtomicUsize,
    /// Every CPU the thread has been switched in on (bit per CPU).
    ran_on: AtomicU64,
    /// Address space root for user threads; 0 means the kernel's.
    pub(super) root: u64,
    body: Body,
    /// What the thread must attend to at its next kernel entry or exit
    /// (ATTENTION_KILL, _STOP), whether it runs on donated time
    /// (_DONATION), and whether the fast path is off (_GENERAL_PATH_ONLY):
    /// one byte, so the IPC fast path checks all at once.
    pub(super) attention: AtomicU8,
    exit: spin::Mutex<ExitSlot>,
    /// The space a user thread belongs to (none for kernel threads and the
    /// bare user threads of kernel tests).
    space: Weak<Space>,
    /// IPC in progress (see crate::ipc).
    pub ipc: spin::Mutex<IpcSlot>,
    /// Set (Release) by the IPC partner once the awaited message is in
    /// `ipc`; outside the slot's lock so waiters poll it without locking.
    pub delivered: AtomicBool,
    /// While stopped: the address and kind of its user register frame.
    stopped_frame: spin::Mutex<Option<(u64, FrameKind)>>,
    /// A thread created stopped starts from these registers.
    pending_start: spin::Mutex<Option<UserRegisters>>,
    /// Threads waiting for this one to stop.
    stop_waiters: WaitQueue,
    /// Where the thread's CPU-time events go (its scheduler port).
    scheduler: spin::Mutex<Option<Arc<crate::ipc::Port>>>,
    /// The role it parked in (a `ParkedAs`), written by the thread itself
    /// before it parks and read by its continuation.
    pub(super) parked_as: AtomicU8,
    /// Its x87/SSE state while no CPU holds it (see `lazyfpu`).
    pub(super) fpu: spin::Mutex<fpu::FpuArea>,
    /// 0, or 1 + the CPU whose registers hold its x87/SSE state.
    pub(super) fpu_cpu: AtomicUsize,
    /// Runs only on time another thread donates (`donate`); becoming
    /// runnable on its own is announced on its scheduler port instead.
    donation_only: AtomicBool,
    /// The thread whose CPU it runs on now, waiting in `donate`.
    donor: spin::Mutex<Option<Arc<Thread>>>,
    /// How the donation this thread made ended (a `DonationEnd`), or PENDING.
    donation_end: AtomicU8,
    /// Runnable, donation-only and in no run queue: waiting for a donor.
    awaiting_donor: AtomicBool,
    /// Why it waits while BLOCKED (a `WaitReason`), for the hang report.
    wait: AtomicU8,
    /// Counted in LIVE_USER_THREADS until it exits (or is freed unstarted).
    counted_as_live_user: AtomicBool,
    /// Its place in a run queue (the queue allocates nothing).
    run_link: RunLink<Thread>,
    /// Its index in REGISTRY.
    registry_index: AtomicUsize,
    /// Its space's number in the memory engine, for reports (which must not
    /// take a reference to the space: dropping it could free threads).
    space_number: Option<u32>,
    /// The kernel memory it pins, charged to its space's quota until it is freed.
    quota_charge: spin::Mutex<Option<crate::object::quota::Charge>>,
}

impl Queueable for Thread {
    fn run_link(&self) -> &RunLink<Thread> {
        &self.run_link
    }
}

/// A thread's IPC state: the message it carries or receives and its partner.
#[derive(Default)]
pub struct IpcSlot {
    /// The message in transit: the request (client) or the request received (server).
    pub message: [u64; 6],
    /// The reply a client receives.
    pub reply: [u64; 6],
    /// The alias of the port a server's current request came through.
    pub alias: u64,
    /// Server: the client to reply to. Client: none.
    pub partner: Option<Arc<Thread>>,
    /// Client: the payload staged with its request until a server takes
    /// it. Server: the payload of the request it received.
    pub request_payload: crate::ipc::Carried,
    /// Client: the payload that came with its reply.
    pub reply_payload: crate::ipc::Carried,
    /// Client: set (with `delivered`) when its server exited instead of replying.
    pub server_gone: bool,
    /// Reliable connections (see crate::reliable).
    pub links: crate::reliable::Links,
    /// The portset a server parked by the fast path waits on; kept after
    /// it runs again, so a server that waits on the same portset each time
    /// parks without touching a reference count.
    pub waiting_on: Option<Arc<crate::ipc::Portset>>,
}

struct ExitSlot {
    reason: Option<UserExit>,
    joiners: Vec<Arc<Thread>>,
}

// SAFETY: `context_rsp` is written only by the CPU switching away from the
// thread and read only by the CPU switching to it, which first waits for
// `on_cpu` to clear (Release/Acquire); all other fields are atomics or locks.
unsafe impl Sync for Thread {}
// SAFETY: as above; a Thread holds no CPU-local references.
unsafe impl Send for Thread {}

impl Thread {
    fn new(name: &'static str, body: Body, root: u64, priority: u8, affinity: u64) -> Result<Arc<Thread>, SchedError> {
        Thread::new_in(name, body, root, priority, affinity, Weak::new())
    }

    /// `new` for a thread of `space` (set before the thread is shared: the
    /// registry's weak reference would stop a later `Arc::get_mut`).
    fn new_in(name: &'static str, body: Body, root: u64, priority: u8, affinity: u64, space: Weak<Space>) -> Result<Arc<Thread>, SchedError> {
        // The control block's allocation (Arc::try_new is not stable), as
        // a fault-injection point; before the stack, which nothing would
        // free if this failed after it.
        crate::mm::inject::allocation_point().map_err(|_| SchedError::OutOfMemory)?;
        let (stack, top) = match body {
            Body::Adopted => (None, percpu::this_cpu().stack_top.load(Ordering::Relaxed)),
            _ => {
                let s = stack::alloc(KERNEL_STACK_PAGES).map_err(|_| SchedError::OutOfMemory)?;
                let top = s.top;
                (Some(s), top)
            }
        };
        let space_number = space.upgrade().map(|s| s.vm_id().raw());
        // Arc::try_new is not stable yet; the heap grows on demand and a
        // failure here would be the heap's window (1 GiB) running out.
        let t = Arc::new(Thread {
            name,
            state: AtomicU8::new(READY),
            on_cpu: AtomicBool::new(false),
            context_rsp: UnsafeCell::new(0),
            stack: spin::Mutex::new(stack),
            stack_top: top,
            priority: AtomicU8::new(priority),
            affinity: AtomicU64::new(affinity),
            cpu: AtomicUsize::new(percpu::this_cpu_index()),
            ran_on: AtomicU64::new(0),
            root,
            body,
            attention: AtomicU8::new(if direct_handoff_enabled() { 0 } else { ATTENTION_GENERAL_PATH_ONLY }),
            exit: spin::Mutex::new(ExitSlot { reason: None, joiners: Vec::new() }),
            space,
            ipc: spin::Mutex::new(IpcSlot::default()),
            delivered: AtomicBool::new(false),
            stopped_frame: spin::Mutex::new(None),
            pending_start: spin::Mutex::new(None),
            stop_waiters: WaitQueue::new(WaitReason::Stop),
            scheduler: spin::Mutex::new(None),
            parked_as: AtomicU8::new(0),
            fpu: spin::Mutex::new(fpu::FpuArea::INITIAL),
            fpu_cpu: AtomicUsize::new(0),
            donation_only: AtomicBool::new(false),
            donor: spin::Mutex::new(None),
            donation_end: AtomicU8::new(DONATION_PENDING),
            awaiting_donor: AtomicBool::new(false),
            wait: AtomicU8::new(WaitReason::None as u8),
            counted_as_live_user: AtomicBool::new(false),
            run_link: RunLink::new(),
            registry_index: AtomicUsize::new(NOT_REGISTERED),
            space_number,
            quota_charge: spin::Mutex::new(None),
        });
        registry_add(&t)?;
        if matches!(t.body, Body::User { .. }) {
            LIVE_USER_THREADS.fetch_add(1, Ordering::Relaxed);
            t.counted_as_live_user.store(true, Ordering::Relaxed);
        }
        if !matches!(t.body, Body::Adopted) {
            let rsp = context::prepare_stack(top, Arc::as_ptr(&t) as u64, 0);
            // SAFETY: nobody runs or switches to the thread yet.
            unsafe { *t.context_rsp.get() = rsp };
        }
        Ok(t)
    }

    pub fn priority(&self) -> u8 {
        self.priority.load(Ordering::Relaxed)
    }

    pub fn cpu(&self) -> usize {
        self.cpu.load(Ordering::Acquire)
    }

    pub fn ran_on(&self) -> u64 {
        self.ran_on.load(Ordering::Acquire)
    }

    /// Whether the thread's affinity allows `cpu`.
    pub fn may_run_on(&self, cpu: usize) -> bool {
        self.allowed_on(cpu)
    }

    pub fn space(&self) -> Option<Arc<Space>> {
        self.space.upgrade()
    }

    /// The space of the thread running on this CPU, borrowed without
    /// touching its reference counts (the IPC fast path's accessor).
    ///
    /// # Safety
    /// `self` is the current thread of this CPU and interrupts are off, and
    /// the reference is dropped before it blocks: a space outlives the
    /// running of its threads (`Space::destroy` joins them before it lets
    /// go of the space, and until then its parent's child list holds it).
    pub(super) unsafe fn running_space(&self) -> Option<&Space> {
        if self.space.strong_count() == 0 {
            return None;
        }
        // SAFETY: alive (above and the contract); `Weak` keeps the allocation.
        Some(unsafe { &*self.space.as_ptr() })
    }

    pub fn kill_requested(&self) -> bool {
        self.attention.load(Ordering::Acquire) & ATTENTION_KILL != 0
    }

    /// Whether it runs on a donor's time now (`donor` is set).
    pub(super) fn on_donation(&self) -> bool {
        self.attention.load(Ordering::Acquire) & ATTENTION_DONATION != 0
    }

    pub fn set_scheduler(&self, port: Option<Arc<crate::ipc::Port>>) {
        cpu::without_interrupts(|| *self.scheduler.lock() = port);
    }

    /// Changes the thread's priority (0..=63; user threads default to 16);
    /// it takes effect the next time the thread is queued.
    pub fn set_priority(&self, priority: u8) {
        self.priority.store(priority.min(super::runqueue::MAX_PRIORITY), Ordering::Release);
    }

    pub fn stop_requested(&self) -> bool {
        self.attention.load(Ordering::Acquire) & ATTENTION_STOP != 0
    }

    pub fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) == STOPPED
    }

    /// While stopped: where its user registers are (None: never ran yet).
    pub fn stopped_frame(&self) -> Option<(u64, FrameKind)> {
        *self.stopped_frame.lock()
    }

    /// The start registers of a thread created stopped that has not run.
    pub fn pending_start(&self) -> &spin::Mutex<Option<UserRegisters>> {
        &self.pending_start
    }

    /// The exit reason, once the thread has exited.
    pub fn exit_reason(&self) -> Option<UserExit> {
        if self.has_exited() {
            self.exit.lock().reason
        } else {
            None
        }
    }

    pub fn has_exited(&self) -> bool {
        self.state.load(Ordering::Acquire) == EXITED
    }

    /// The role it last parked in by the IPC fast path.
    pub fn parked_as(&self) -> ParkedAs {
        if self.parked_as.load(Ordering::Acquire) == ParkedAs::Server as u8 {
            ParkedAs::Server
        } else {
            ParkedAs::Client
        }
    }

    pub(super) fn allowed_on(&self, cpu: usize) -> bool {
        self.affinity.load(Ordering::Acquire) & (1 << cpu) != 0
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        registry_remove(self);
        LIVE_THREADS.fetch_sub(1, Ordering::Relaxed);
        if self.counted_as_live_user.swap(false, Ordering::Relaxed) {
            LIVE_USER_THREADS.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(s) = self.stack.get_mut().take() {
            // Freeing needs a TLB shootdown (interrupts on); drops can happen
            // with interrupts off, so the stack waits for `reap`.
            cpu::without_interrupts(|| DEAD_STACKS.lock().push(s));
        }
    }
}

static DEAD_STACKS: spin::Mutex<Vec<stack::KernelStack>> = spin::Mutex::new(Vec::new());

/// Every thread not yet freed, by address: what the hang report lists. A
/// thread takes itself out (under this lock) first thing when it is freed,
/// so an address found here under the lock names a live thread.
static REGISTRY: spin::Mutex<Vec<usize>> = spin::Mutex::new(Vec::new());
const NOT_REGISTERED: usize = usize::MAX;
/// Threads whose memory is not freed yet.
static LIVE_THREADS: AtomicU64 = AtomicU64::new(0);

fn registry_add(t: &Arc<Thread>) -> Result<(), SchedError> {
    // Counted here even when the registry has no room: the failed thread's
    // drop takes it off again.
    LIVE_THREADS.fetch_add(1, Ordering::Relaxed);
    cpu::without_interrupts(|| {
        let mut r = REGISTRY.lock();
        crate::mm::heap::fallible(|| r.try_reserve(1)).map_err(|_| SchedError::OutOfMemory)?;
        t.registry_index.store(r.len(), Ordering::Relaxed);
        r.push(Arc::as_ptr(t) as usize);
        Ok(())
    })
}

/// Takes a freed thread out of the registry (swapping the last entry into
/// its place). Allocates nothing.
fn registry_remove(t: &Thread) {
    cpu::without_interrupts(|| {
        let mut r = REGISTRY.lock();
        let index = t.registry_index.load(Ordering::Relaxed);
        if index >= r.len() || r[index] != t as *const Thread as usize {
            return; // never registered
        }
        r.swap_remove(index);
        if let Some(&moved) = r.get(index) {
            // SAFETY: every address in the registry names a live thread
            // while the lock is held (a thread leaves it before it is freed).
            unsafe { (*(moved as *const Thread)).registry_index.store(index, Ordering::Relaxed) };
        }
    })
}

/// User threads that have not exited (the hang watchdog counts only while
/// there are some).
static LIVE_USER_THREADS: AtomicU64 = AtomicU64::new(0);

pub fn live_user_threads() -> u64 {
    LIVE_USER_THREADS.load(Ordering::Relaxed)
}

/// The address of this CPU's current thread (0 before it schedules), for
/// the hang report's NMI handler.
pub fn current_thread_address() -> u64 {
    let (_, s) = here();
    // SAFETY: owning CPU, with interrupts off (an NMI handler, or a caller
    // that masked them); `current` is one pointer-sized word, and only its
    // address is taken, nothing is dereferenced.
    unsafe { (*s.current.get()).as_ref().map_or(0, |t| Arc::as_ptr(t) as u64) }
}

/// Threads not yet freed (exited ones included until their last handle goes).
pub fn live_threads() -> u64 {
    LIVE_THREADS.load(Ordering::Relaxed)
}

/// What the hang report prints of one thread.
pub struct ThreadSnapshot {
    pub name: &'static str,
    pub address: u64,
    pub state: &'static str,
    pub wait: WaitReason,
    pub cpu: usize,
    pub on_cpu: bool,
    pub attention: u8,
    pub space: Option<u64>,
}

/// Calls `f` with a snapshot of every live thread, holding the registry's
/// lock (threads being freed meanwhile wait); interrupts must be off, and
/// `f` must not free a thread.
pub fn for_each_thread(mut f: impl FnMut(&ThreadSnapshot)) {
    let r = REGISTRY.lock();
    for &address in r.iter() {
        // SAFETY: a registered address names a live thread while the lock
        // is held (see REGISTRY).
        let t = unsafe { &*(address as *const Thread) };
        let state = match t.state.load(Ordering::Acquire) {
            READY => "ready",
            RUNNING => "running",
            BLOCKED => "blocked",
            EXITED => "exited",
            STOPPED => "stopped",
            PARKED => "parked",
            _ => "?",
        };
        f(&ThreadSnapshot {
            name: t.name,
            address: address as u64,
            state,
            wait: WaitReason::from_u8(t.wait.load(Ordering::Relaxed)),
            cpu: t.cpu(),
            on_cpu: t.on_cpu.load(Ordering::Acquire),
            attention: t.attention.load(Ordering::Acquire),
            space: t.space_number.map(u64::from),
        });
    }
}

/// One CPU's scheduler, for the hang report: the current thread's name and
/// address, and how many threads its run queue holds. Interrupts off.
pub fn cpu_snapshot(cpu: usize) -> (Option<(&'static str, u64)>, usize) {
    let queued = CPUS[cpu].queue.try_lock().map_or(usize::MAX, |q| q.len());
    let current = if cpu == percpu::this_cpu_index() {
        // SAFETY: owning CPU, interrupts off.
        unsafe { (*CPUS[cpu].current.get()).as_ref().map(|t| (t.name, Arc::as_ptr(t) as u64)) }
    } else {
        None
    };
    (current, queued)
}

/// Records why the current thread is about to block.
fn set_wait(t: &Thread, reason: WaitReason) {
    t.wait.store(reason as u8, Ordering::Relaxed);
}

/// Frees the kernel stacks of threads that are gone. Interrupts must be on.
pub fn reap() {
    loop {
        let Some(s) = cpu::without_interrupts(|| DEAD_STACKS.lock().pop()) else { break };
        stack::free(s);
    }
}

pub(super) struct CpuSched {
    queue: spin::Mutex<RunQueue<Thread>>,
    /// Touched only by the owning CPU with interrupts off.
    pub(super) current: UnsafeCell<Option<Arc<Thread>>>,
    idle: UnsafeCell<Option<Arc<Thread>>>,
    /// The thread just switched away from, released by `finish_switch`.
    switched_from: UnsafeCell<Option<Arc<Thread>>>,
    pub(super) slice_left: AtomicU32,
    need_resched: AtomicBool,
    sleepers: spin::Mutex<Vec<(u64, Arc<Thread>)>>,
    /// The thread a caller that just parked wants to run next (`leave_parked`).
    pub(super) parked_handoff: UnsafeCell<Option<Arc<Thread>>>,
    /// Direct switches the IPC fast path made on this CPU (written by it only).
    pub(super) fast_switches: AtomicU64,
    /// Where a switch away from a parked thread saves the stack pointer it
    /// will never use (a parked thread resumes at its continuation).
    discarded_context: UnsafeCell<u64>,
    /// The thread whose x87/SSE state this CPU's registers hold.
    pub(super) fpu_owner: UnsafeCell<Option<Arc<Thread>>>,
    /// Whether CR0.TS is clear (the owner runs).
    pub(super) fpu_enabled: UnsafeCell<bool>,
    /// x87/SSE state loads on this CPU (written by it only).
    pub(super) fpu_loads: AtomicU64,
}

// SAFETY: the UnsafeCell fields are accessed only by the owning CPU with
// interrupts disabled; the rest is locked or atomic.
unsafe impl Sync for CpuSched {}

static CPUS: [CpuSched; percpu::MAX_CPUS] = [const {
    CpuSched {
        queue: spin::Mutex::new(RunQueue::new()),
        current: UnsafeCell::new(None),
        idle: UnsafeCell::new(None),
        switched_from: UnsafeCell::new(None),
        slice_left: AtomicU32::new(TIME_SLICE_TICKS),
        need_resched: AtomicBool::new(false),
        sleepers: spin::Mutex::new(Vec::new()),
        parked_handoff: UnsafeCell::new(None),
        discarded_context: UnsafeCell::new(0),
        fast_switches: AtomicU64::new(0),
        fpu_owner: UnsafeCell::new(None),
        fpu_enabled: UnsafeCell::new(false),
        fpu_loads: AtomicU64::new(0),
    }
}; percpu::MAX_CPUS];

static READY_CPUS: AtomicU64 = AtomicU64::new(0);

#[inline]
pub(super) fn here() -> (usize, &'static CpuSched) {
    let cpu = percpu::this_cpu_index();
    (cpu, &CPUS[cpu])
}

/// `here` on a path that starts from a system call (see
/// `percpu::this_cpu_index_and_scheduler`).
#[inline(always)]
pub(super) fn here_scheduling() -> (usize, &'static CpuSched) {
    let (cpu, state) = percpu::this_cpu_index_and_scheduler();
    debug_assert!(core::ptr::eq(state as *const CpuSched, &CPUS[cpu]));
    // SAFETY: `init_this_cpu` stored `&CPUS[cpu]` (a static) there before
    // this CPU scheduled anything.
    (cpu, unsafe { &*(state as *const CpuSched) })
}

/// `running_on` without the check that `s` has a current thread.
///
/// # Safety
/// As `running_on`, and `s` has a current thread (it does once the CPU
/// schedules: a system call, for one, comes from the current thread).
#[inline(always)]
pub(super) unsafe fn running_on_unchecked(s: &'static CpuSched) -> &'static Thread {
    debug_assert!(!cpu::interrupts_enabled());
    // SAFETY: as in `running_on`; `current` is set (the contract).
    unsafe { &*Arc::as_ptr((*s.current.get()).as_ref().unwrap_unchecked()) }
}

/// The running thread, borrowed: no reference count, no interrupt toggling
/// (the hot paths' accessor). Interrupts must be off.
#[inline]
pub fn me() -> &'static Thread {
    running_on(here().1)
}

/// `me()` for a caller that already has this CPU's scheduler state.
#[inline]
pub(super) fn running_on(s: &'static CpuSched) -> &'static Thread {
    debug_assert!(!cpu::interrupts_enabled());
    // SAFETY: interrupts are off, so `current` does not change under us, and
    // the thread whose stack we run on stays alive while it runs: its kernel
    // stack is freed only after its last reference is gone, which cannot
    // happen while it is current (the scheduler holds one) — and a thread
    // that blocks holds on through whatever queue it waits in, or exits and
    // never returns here.
    unsafe { &*Arc::as_ptr((*s.current.get()).as_ref().expect("scheduler not started on this CPU")) }
}

/// The running thread. Panics before `init_this_cpu`.
pub fn current() -> Arc<Thread> {
    cpu::without_interrupts(|| {
        let (_, s) = here();
        // SAFETY: owning CPU, interrupts off.
        unsafe { (*s.current.get()).clone() }.expect("scheduler not started on this CPU")
    })
}

/// Makes this CPU's running context a thread. The boot CPU's context becomes
/// a kernel thread (with a separate idle thread); an AP's becomes its idle thread.
pub fn init_this_cpu(is_boot_cpu: bool) -> Result<(), SchedError> {
    let (cpu, s) = here();
    percpu::this_cpu().scheduler_state.store(s as *const CpuSched as usize, Ordering::Relaxed);
    let me = Thread::new(if is_boot_cpu { "kmain" } else { "idle" }, Body::Adopted, 0, KERNEL_PRIORITY, 1 << cpu)?;
    me.state.store(RUNNING, Ordering::Relaxed);
    me.on_cpu.store(true, Ordering::Relaxed);
    me.ran_on.store(1 << cpu, Ordering::Relaxed);
    let idle = if is_boot_cpu {
        let idle = Thread::new("idle", Body::Kernel { entry: |_| idle_loop(), arg: 0 }, 0, 0, 1 << cpu)?;
        idle.state.store(RUNNING, Ordering::Relaxed);
        idle
    } else {
        me.clone()
    };
    cpu::without_interrupts(|| {
        // SAFETY: owning CPU, interrupts off.
        unsafe {
            *s.current.get() = Some(me);
            *s.idle.get() = Some(idle);
        }
    });
    READY_CPUS.fetch_or(1 << cpu, Ordering::AcqRel);
    Ok(())
}

/// The idle loop: run whatever is queued, else halt until an interrupt.
pub fn idle_loop() -> ! {
    loop {
        cpu::disable_interrupts();
        let (_, s) = here();
        if !s.queue.lock().is_empty() {
            schedule();
        }
        cpu::enable_interrupts_and_halt();
    }
}

fn is_idle(s: &CpuSched, t: &Arc<Thread>) -> bool {
    // SAFETY: owning CPU, interrupts off.
    unsafe { (*s.idle.get()).as_ref().is_some_and(|i| Arc::ptr_eq(i, t)) }
}

/// Puts a READY thread on the queue of a CPU it may run on, preferring the
/// one it last used, and pokes that CPU.
fn enqueue(t: Arc<Thread>) {
    if t.donation_only.load(Ordering::Acquire) {
        // It runs only when its scheduler donates time: tell it instead.
        t.awaiting_donor.store(true, Ordering::Release);
        // A thread being killed or stopped must run for the kernel's sake,
        // donor or not. `kill` and `stop` set the attention bit, then
        // release the thread from the donor wait; checking the bit only
        // after publishing the wait (both sides fenced) means one of the
        // two always sees the other, so the thread cannot be left waiting
        // for a donor that never comes.
        core::sync::atomic::fence(Ordering::SeqCst);
        if t.attention.load(Ordering::Acquire) & (ATTENTION_KILL | ATTENTION_STOP) != 0 {
            release_from_donor_wait(&t);
            return;
        }
        announce_runnable(&t);
        return;
    }
    enqueue_on_a_cpu(t);
}

/// A donation-only thread that must run for the kernel's sake (to stop or
/// to exit) goes to a run queue after all.
fn release_from_donor_wait(t: &Arc<Thread>) {
    // Pairs with the fence in `enqueue`.
    core::sync::atomic::fence(Ordering::SeqCst);
    if t.awaiting_donor.swap(false, Ordering::AcqRel) {
        enqueue_on_a_cpu(t.clone());
    }
}

fn enqueue_on_a_cpu(t: Arc<Thread>) {
    let ready = READY_CPUS.load(Ordering::Acquire);
    let allowed = t.affinity.load(Ordering::Acquire) & ready;
    let last = t.cpu.load(Ordering::Relaxed);
    let mut target = if allowed & (1 << last) != 0 { last } else if allowed != 0 { allowed.trailing_zeros() as usize } else { last };
    // A thread runs only where its x87/SSE state is live: that CPU saves
    // the state before the thread may move (it pops it, sees it may not
    // run there, and comes back here).
    if let Some(live) = lazyfpu::live_on(&t).filter(|&c| c != target) {
        let me = percpu::this_cpu_index();
        if live == me {
            cpu::without_interrupts(|| lazyfpu::release(&CPUS[me], &t));
        } else {
            target = live;
        }
    }
    t.cpu.store(target, Ordering::Release);
    let prio = t.priority();
    cpu::without_interrupts(|| CPUS[target].queue.lock().push(prio, t));
    let me = percpu::this_cpu_index();
    if target != me {
        smp::send_reschedule(target);
    } else {
        CPUS[me].need_resched.store(true, Ordering::Release);
    }
}

/// Picks the next thread for this CPU and switches to it. Interrupts must be
/// off. A still-running current thread is queued again (unless idle).
pub fn schedule() {
    schedule_saving(true)
}

/// `schedule`, where `save_context` false means the current thread is
/// parked: its context is not saved, because it resumes at its
/// continuation. Returns only if it picked the current thread again.
fn schedule_saving(save_context: bool) {
    debug_assert!(!cpu::interrupts_enabled());
    let (cpu, s) = here();
    s.need_resched.store(false, Ordering::Relaxed);
    // SAFETY: owning CPU, interrupts off.
    let prev = unsafe { (*s.current.get()).clone() }.expect("scheduler not started on this CPU");
    let donor = take_donor(&prev);
    if prev.donation_only.load(Ordering::Acquire) {
        // Its scheduler may donate from any CPU next: its x87/SSE state
        // must not stay behind in this CPU's registers.
        lazyfpu::release(s, &prev);
    }
    let still_runnable = !is_idle(s, &prev) && prev.state.compare_exchange(RUNNING, READY, Ordering::AcqRel, Ordering::Acquire).is_ok();
    if still_runnable && donor.is_none() {
        enqueue(prev.clone());
    } else if still_runnable {
        // Back to waiting for a donor; the donor learns it from `donate`.
        prev.awaiting_donor.store(true, Ordering::Release);
    }
    if let Some(donor) = donor {
        // The donated time ends here: the donor learns how, and gets its
        // CPU back directly when it can run here.
        let end = match prev.state.load(Ordering::Acquire) {
            READY => DonationEnd::Runnable,
            EXITED => DonationEnd::Exited,
            STOPPED => DonationEnd::Stopped,
            _ => DonationEnd::Blocked,
        };
        donor.donation_end.store(end as u8, Ordering::Release);
        if donor.allowed_on(cpu) && lazyfpu::runnable_here(&donor, cpu) && unblock(&donor) {
            s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
            switch_to(cpu, s, prev, donor, save_context);
            return;
        }
        wake(&donor);
    }
    let next = loop {
        let popped = s.queue.lock().pop();
        match popped {
            Some((_, t)) if !t.allowed_on(cpu) => enqueue(t), // migrating away
            Some((_, t)) => break t,
            // SAFETY: owning CPU, interrupts off.
            None => break unsafe { (*s.idle.get()).clone() }.expect("no idle thread"),
        }
    };
    s.need_resched.store(false, Ordering::Relaxed);
    s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
    if Arc::ptr_eq(&next, &prev) {
        let _ = prev.state.compare_exchange(READY, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        return;
    }
    switch_to(cpu, s, prev, next, save_context);
}

/// The syscall entry stub's exit for a caller the IPC fast path parked
/// without switching to its partner: gives the CPU to the thread the fast
/// path left in `parked_handoff` (if it may run here) or to the scheduler's
/// choice. Returns only if the scheduler picked the parked thread itself
/// (woken meanwhile); the stub then runs its continuation. Interrupts off.
pub extern "C" fn leave_parked() {
    let (cpu, s) = here();
    // SAFETY: owning CPU, interrupts off.
    match unsafe { (*s.parked_handoff.get()).take() } {
        Some(next) => hand_off(cpu, s, next, false),
        None => schedule_saving(false),
    }
}

/// Switches this CPU from `prev` (the current thread) to `next`; with
/// `save_context` false, `prev` is parked and its context is dropped.
fn switch_to(cpu: usize, s: &'static CpuSched, prev: Arc<Thread>, next: Arc<Thread>, save_context: bool) {
    // The thread may still be leaving another CPU (woken or migrated there).
    while next.on_cpu.load(Ordering::Acquire) {
        cpu::pause();
    }
    next.on_cpu.store(true, Ordering::Relaxed);
    let _ = next.state.compare_exchange(READY, RUNNING, Ordering::AcqRel, Ordering::Acquire);
    next.cpu.store(cpu, Ordering::Release);
    next.ran_on.fetch_or(1 << cpu, Ordering::AcqRel);
    if matches!(next.body, Body::User { .. }) {
        crate::arch::x86_64::syscall::set_kernel_entry_stack(next.stack_top);
    }
    lazyfpu::on_switch(s, &next);
    let want_root = if next.root != 0 { next.root } else { paging::kernel_root() };
    if cpu::read_cr3() & 0x000f_ffff_ffff_f000 != want_root {
        // SAFETY: every address space shares the kernel half, where this code
        // and both threads' kernel stacks live.
        unsafe { cpu::write_cr3(want_root) };
    }
    let save = if save_context { prev.context_rsp.get() } else { s.discarded_context.get() };
    // SAFETY: next is off every other CPU (on_cpu was clear), so its saved
    // context is complete.
    let load = unsafe { *next.context_rsp.get() };
    // SAFETY: owning CPU, interrupts off.
    unsafe {
        *s.current.get() = Some(next);
        *s.switched_from.get() = Some(prev);
    }
    // `prev` is kept alive by `switched_from` until `finish_switch`.
    // SAFETY: `save` belongs to prev (alive), `load` was saved by a switch
    // or prepared by prepare_stack; interrupts are off.
    unsafe { context::switch(save, load) };
    finish_switch();
}

/// Runs first on the new thread's stack after every switch: the previous
/// thread is now off this CPU.
pub fn finish_switch() {
    let (_, s) = here();
    // SAFETY: owning CPU, interrupts off.
    if let Some(prev) = unsafe { (*s.switched_from.get()).take() } {
        prev.on_cpu.store(false, Ordering::Release);
    }
}

/// First code of every new thread (called from `context::thread_first_entry`).
pub extern "C" fn thread_start(thread: u64, _: u64) -> ! {
    finish_switch();
    // SAFETY: the pointer came from `Arc::as_ptr` of this thread, which is
    // kept alive by the scheduler while it runs (it is `current`).
    let me = unsafe { &*(thread as *const Thread) };
    match me.body {
        Body::Kernel { entry, arg } => {
            cpu::enable_interrupts();
            entry(arg);
            exit_current(UserExit::Exited(0))
        }
        Body::User { .. } if me.kill_requested() => exit_current(UserExit::Killed),
        Body::User { rip, rsp, args } => {
            let pending = *me.pending_start.lock();
            match pending {
                Some(regs) => context::enter_user_with(&regs),
                None => context::enter_user(rip, rsp, args),
            }
        }
        Body::Adopted => unreachable!("adopted threads never start"),
    }
}

/// The allowed CPU with the fewest queued threads (new threads start there).
fn least_loaded(affinity: u64) -> usize {
    let allowed = affinity & all_cpus();
    (0..percpu::MAX_CPUS)
        .filter(|c| allowed & (1 << c) != 0)
        .min_by_key(|&c| cpu::without_interrupts(|| CPUS[c].queue.lock().len()))
        .unwrap_or(percpu::this_cpu_index())
}

fn all_cpus() -> u64 {
    READY_CPUS.load(Ordering::Acquire)
}

/// Starts a kernel thread on the CPUs in `affinity` (0 = any).
pub fn spawn_kernel(name: &'static str, entry: fn(usize), arg: usize, affinity: u64) -> Result<Arc<Thread>, SchedError> {
    let affinity = if affinity == 0 { all_cpus() } else { affinity };
    if affinity & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    let t = Thread::new(name, Body::Kernel { entry, arg }, 0, KERNEL_PRIORITY, affinity)?;
    enqueue(t.clone());
    Ok(t)
}

/// Starts a user thread in the address space `root` at `rip` with stack
/// `rsp` and `arg` in rdi.
pub fn spawn_user(
    name: &'static str,
    root: u64,
    (rip, rsp, arg): (u64, u64, u64),
    priority: u8,
    affinity: u64,
) -> Result<Arc<Thread>, SchedError> {
    let args = (arg, 0);
    if rip >= paging::USER_TOP || rsp > paging::USER_TOP || root == 0 {
        return Err(SchedError::BadUserAddress);
    }
    let affinity = if affinity == 0 { all_cpus() } else { affinity };
    if affinity & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    let t = Thread::new(name, Body::User { rip, rsp, args }, root, priority, affinity)?;
    enqueue(t.clone());
    Ok(t)
}

/// Starts a user thread belonging to `space` (in its address space).
pub fn spawn_user_in(
    name: &'static str,
    space: Arc<Space>,
    (rip, rsp, args): (u64, u64, (u64, u64)),
    priority: u8,
    affinity: u64,
    charge: crate::object::quota::Charge,
) -> Result<Arc<Thread>, SchedError> {
    if rip >= paging::USER_TOP || rsp > paging::USER_TOP {
        return Err(SchedError::BadUserAddress);
    }
    let affinity = if affinity == 0 { all_cpus() } else { affinity };
    if affinity & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    let t = Thread::new_in(name, Body::User { rip, rsp, args }, space.page_table_root(), priority, affinity, Arc::downgrade(&space))?;
    *t.quota_charge.lock() = Some(charge);
    t.cpu.store(least_loaded(affinity), Ordering::Relaxed);
    enqueue(t.clone());
    Ok(t)
}

static DIRECT_HANDOFF: AtomicBool = AtomicBool::new(true);

/// Turns the IPC direct hand-off off (`fastpath=off` on the command line),
/// so every IPC wake-up goes through the run queue. Only at boot, before
/// the first thread: threads carry the setting in `attention`.
pub fn set_direct_handoff(enabled: bool) {
    DIRECT_HANDOFF.store(enabled, Ordering::Relaxed);
}

pub fn direct_handoff_enabled() -> bool {
    DIRECT_HANDOFF.load(Ordering::Relaxed)
}

/// The current thread, already marked blocked, gives the CPU straight to
/// `next` (blocked, waiting for it): no run queue, no scheduling decision.
/// Falls back to wake + schedule when `next` may not run here or the
/// hand-off is turned off. Interrupts must be off.
pub fn block_and_handoff(next: &Arc<Thread>) {
    let (cpu, s) = here();
    hand_off(cpu, s, next.clone(), true);
}

/// `block_and_handoff`, also for a parked caller (`save_context` false).
/// Takes `next` by value: a parked caller's frame is abandoned, so nothing
/// may stay on it that owns a reference.
fn hand_off(cpu: usize, s: &'static CpuSched, next: Arc<Thread>, save_context: bool) {
    let on_donation = running_on(s).on_donation();
    if direct_handoff_enabled() && !on_donation && next.allowed_on(cpu) && lazyfpu::runnable_here(&next, cpu) && unblock(&next) {
        // SAFETY: owning CPU, interrupts off.
        let prev = unsafe { (*s.current.get()).clone() }.expect("scheduler not started on this CPU");
        s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
        switch_to(cpu, s, prev, next, save_context);
    } else {
        wake(&next);
        drop(next);
        schedule_saving(save_context);
    }
}

/// Marks the current thread blocked (it must then call `schedule` or
/// `block_and_handoff`, with interrupts off, and re-check why it woke).
///
/// The fence orders this store before the caller's re-check of its wake-up
/// condition (`delivered`, ...), as `unblock`'s fence orders a waker's
/// setting of the condition before its look at `state`. Without the pair,
/// a store buffer lets both sides read the old value (x86 reorders a store
/// with a later load): the waiter sees no delivery and the waker sees a
/// running thread, and the waiter sleeps with its reply in hand.
pub fn mark_current_blocked() {
    set_wait(me(), WaitReason::Ipc);
    me().state.store(BLOCKED, Ordering::Release);
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Direct switches the IPC fast path has made, on all CPUs.
pub fn fast_ipc_switches() -> u64 {
    CPUS.iter().map(|s| s.fast_switches.load(Ordering::Relaxed)).sum()
}

/// Loads of user x87/SSE state (lazy switches), on all CPUs.
pub fn fpu_loads() -> u64 {
    CPUS.iter().map(|s| s.fpu_loads.load(Ordering::Relaxed)).sum()
}

/// Whether a thread waits in this CPU's run queue (a hint, as below).
pub fn others_ready_here() -> bool {
    has_ready_thread(here().1)
}

/// Whether a thread waits in this CPU's run queue (a hint: never waits for the lock).
pub(super) fn has_ready_thread(s: &CpuSched) -> bool {
    s.queue.try_lock().is_some_and(|q| !q.is_empty())
}

/// Moves a blocked or parked thread to READY; false if it was neither.
fn unblock(t: &Thread) -> bool {
    // Pairs with the fence in `mark_current_blocked`: whatever the waker
    // set before this (the wake-up condition) is seen by a waiter that
    // blocks after this reads its state.
    core::sync::atomic::fence(Ordering::SeqCst);
    t.state.compare_exchange(BLOCKED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok()
        || t.state.compare_exchange(PARKED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Makes a blocked (or parked) thread runnable again; returns false if it was not blocked.
pub fn wake(t: &Arc<Thread>) -> bool {
    if unblock(t) {
        enqueue(t.clone());
        true
    } else {
        false
    }
}

/// Gives the CPU to another ready thread of at least the same priority.
pub fn yield_now() {
    cpu::without_interrupts(schedule);
}

/// Ends the current thread with `reason`, waking whoever joins it.
pub fn exit_current(reason: UserExit) -> ! {
    cpu::disable_interrupts();
    lazyfpu::forget_current();
    let me = current();
    crate::ipc::abandon_client(&me);
    crate::reliable::on_exit(&me);
    if let Some(space) = me.space() {
        space.forget_thread(&me);
    }
    if me.counted_as_live_user.swap(false, Ordering::Relaxed) {
        LIVE_USER_THREADS.fetch_sub(1, Ordering::Relaxed);
    }
    let joiners = {
        let mut slot = me.exit.lock();
        slot.reason = Some(reason);
        me.state.store(EXITED, Ordering::Release);
        core::mem::take(&mut slot.joiners)
    };
    for j in &joiners {
        wake(j);
    }
    drop(joiners);
    // Whoever waits for it to stop waits for "stopped or exited".
    me.stop_waiters.wake(usize::MAX);
    drop(me);
    schedule();
    unreachable!("an exited thread was scheduled again");
}

/// Waits until `t` has exited and is off every CPU; returns its exit reason.
pub fn join(t: &Arc<Thread>) -> UserExit {
    join_unless_killed(t, false).expect("an uninterruptible join returned early")
}

/// Like `join`, but gives up (None) if the calling thread is killed while
/// it waits (with `interruptible`).
pub fn join_unless_killed(t: &Arc<Thread>, interruptible: bool) -> Option<UserExit> {
    loop {
        if interruptible && (current().kill_requested() || current().stop_requested()) {
            return None;
        }
        let was = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        let done = {
            let mut slot = t.exit.lock();
            if t.state.load(Ordering::Acquire) == EXITED {
                true
            } else {
                let me = current();
                set_wait(&me, WaitReason::Join);
                me.state.store(BLOCKED, Ordering::Release);
                slot.joiners.push(me);
                false
            }
        };
        if !done {
            schedule();
        }
        if was {
            cpu::enable_interrupts();
        }
        if done {
            break;
        }
    }
    while t.on_cpu.load(Ordering::Acquire) {
        cpu::pause();
    }
    let reason = t.exit.lock().reason.expect("exited thread without a reason");
    Some(reason)
}

/// A queue of threads blocked in the kernel, woken by another thread.
pub struct WaitQueue {
    waiters: spin::Mutex<Vec<Arc<Thread>>>,
    /// What its waiters wait for (the hang report says).
    reason: WaitReason,
}

impl WaitQueue {
    pub const fn new(reason: WaitReason) -> Self {
        WaitQueue { waiters: spin::Mutex::new(Vec::new()), reason }
    }

    /// Blocks the current thread if `still_wanted()` holds, evaluated under
    /// the queue's lock (so a waker that changes the condition and then
    /// calls `wake` cannot be missed). Returns false without blocking if
    /// the condition no longer held. May return after a spurious wake-up.
    pub fn wait_if(&self, still_wanted: impl FnOnce() -> bool) -> bool {
        let was = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        let blocked = {
            let mut w = self.waiters.lock();
            if still_wanted() {
                let me = current();
                set_wait(&me, self.reason);
                me.state.store(BLOCKED, Ordering::Release);
                w.push(me);
                true
            } else {
                false
            }
        };
        if blocked {
            schedule();
            // Leave the queue if a kill (not a `wake`) ended the wait.
            let me = current();
            cpu::without_interrupts(|| self.waiters.lock().retain(|t| !Arc::ptr_eq(t, &me)));
        }
        if was {
            cpu::enable_interrupts();
        }
        blocked
    }

    /// Wakes up to `count` waiters, oldest first; returns how many.
    pub fn wake(&self, count: usize) -> usize {
        let woken: Vec<Arc<Thread>> = cpu::without_interrupts(|| {
            let mut w = self.waiters.lock();
            if count >= w.len() {
                // Everyone: hand the whole list over, allocating nothing
                // (the exit path wakes its stop waiters this way).
                return core::mem::take(&mut *w);
            }
            w.drain(..count).collect()
        });
        for t in &woken {
            wake(t);
        }
        woken.len()
    }
}

/// Blocks the current thread for at least `ticks` timer ticks.
pub fn sleep_ticks(ticks: u64) {
    cpu::without_interrupts(|| {
        let (cpu, s) = here();
        let me = current();
        let deadline = percpu::cpu(cpu).ticks.load(Ordering::Relaxed) + ticks.max(1);
        set_wait(&me, WaitReason::Sleep);
        me.state.store(BLOCKED, Ordering::Release);
        s.sleepers.lock().push((deadline, me));
        schedule();
    });
}

/// Asks a thread to exit at its next entry into the kernel. A thread
/// blocked in a system call is woken (every blocking call tolerates
/// spurious wake-ups and checks for a kill on its way out).
pub fn kill(t: &Arc<Thread>) {
    t.attention.fetch_or(ATTENTION_KILL, Ordering::AcqRel);
    wake(t);
    release_from_donor_wait(t);
    // A stopped thread runs again only to exit.
    if t.state.compare_exchange(STOPPED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        enqueue(t.clone());
    }
    let cpu = t.cpu();
    if cpu != percpu::this_cpu_index() {
        smp::send_reschedule(cpu);
    }
}

/// Restricts a thread to the CPUs in `mask`; it moves at its next switch.
pub fn set_affinity(t: &Arc<Thread>, mask: u64) -> Result<(), SchedError> {
    if mask & all_cpus() == 0 {
        return Err(SchedError::NoAllowedCpu);
    }
    t.affinity.store(mask, Ordering::Release);
    let cpu = t.cpu();
    if mask & (1 << cpu) == 0 {
        if cpu == percpu::this_cpu_index() {
            CPUS[cpu].need_resched.store(true, Ordering::Release);
        } else {
            smp::send_reschedule(cpu);
        }
    }
    Ok(())
}

/// Stops the current thread at a user-return boundary if its parent asked:
/// its user registers stay in `frame` (on its kernel stack) for
/// get_state/set_state until `resume`. Interrupts off.
pub fn stop_point(frame: u64, kind: FrameKind) {
    let me = current();
    if !me.stop_requested() || me.kill_requested() {
        return;
    }
    *me.stopped_frame.lock() = Some((frame, kind));
    lazyfpu::flush_current();
    me.state.store(STOPPED, Ordering::Release);
    me.stop_waiters.wake(usize::MAX);
    drop(me);
    schedule();
    let me = current();
    *me.stopped_frame.lock() = None;
    if me.kill_requested() {
        drop(me);
        exit_current(UserExit::Killed);
    }
}

/// Asks `t` to stop and waits until it has (or has exited). A thread
/// blocked in a system call is woken; the call is exported as restartable.
/// Returns false if the caller was killed while it waited.
pub fn stop(t: &Arc<Thread>) -> bool {
    t.attention.fetch_or(ATTENTION_STOP, Ordering::AcqRel);
    loop {
        if t.is_stopped() || t.has_exited() {
            return true;
        }
        if current().kill_requested() {
            return false;
        }
        // Interrupt a blocking call, or make a running thread enter the kernel.
        wake(t);
        release_from_donor_wait(t);
        let cpu = t.cpu();
        if cpu != percpu::this_cpu_index() {
            smp::send_reschedule(cpu);
        }
        t.stop_waiters.wait_if(|| !t.is_stopped() && !t.has_exited());
        if !t.is_stopped() && !t.has_exited() {
            // Woken before it stopped (it was running): give it a tick to get there.
            sleep_ticks(1);
        }
    }
}

/// Lets a stopped thread run again.
pub fn resume(t: &Arc<Thread>) -> bool {
    t.attention.fetch_and(!ATTENTION_STOP, Ordering::AcqRel);
    if t.state.compare_exchange(STOPPED, READY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        enqueue(t.clone());
        true
    } else {
        false
    }
}

/// Creates a user thread in `space` that does not run until `resume`; its
/// registers start as `regs` (set them with set_state first).
pub fn spawn_user_stopped(
    name: &'static str,
    space: Arc<Space>,
    regs: UserRegisters,
    charge: crate::object::quota::Charge,
) -> Result<Arc<Thread>, SchedError> {
    let affinity = all_cpus();
    let t = Thread::new_in(name, Body::User { rip: 0, rsp: 0, args: (0, 0) }, space.page_table_root(), USER_PRIORITY, affinity, Arc::downgrade(&space))?;
    *t.quota_charge.lock() = Some(charge);
    t.cpu.store(least_loaded(affinity), Ordering::Relaxed);
    *t.pending_start.lock() = Some(regs);
    t.attention.fetch_or(ATTENTION_STOP, Ordering::AcqRel);
    t.state.store(STOPPED, Ordering::Release);
    Ok(t)
}

/// Timer tick or reschedule IPI on this CPU. `user_frame`: the interrupted
/// user registers, when it interrupted ring 3.
pub fn on_interrupt(user_frame: Option<u64>, is_tick: bool) {
    let from_user = user_frame.is_some();
    let (cpu, s) = here();
    if READY_CPUS.load(Ordering::Acquire) & (1 << cpu) == 0 {
        return;
    }
    if is_tick {
        let now = percpu::cpu(cpu).ticks.load(Ordering::Relaxed);
        let due: Vec<Arc<Thread>> = {
            let mut sl = s.sleepers.lock();
            let mut due = Vec::new();
            sl.retain(|(deadline, t)| {
                if *deadline <= now {
                    due.push(t.clone());
                    false
                } else {
                    true
                }
            });
            due
        };
        for t in due {
            wake(&t);
        }
        let left = s.slice_left.load(Ordering::Relaxed);
        if left <= 1 {
            s.need_resched.store(true, Ordering::Relaxed);
        } else {
            s.slice_left.store(left - 1, Ordering::Relaxed);
        }
    } else {
        s.need_resched.store(true, Ordering::Relaxed);
    }
    // SAFETY: owning CPU, interrupts off (interrupt context).
    let cur = unsafe { (*s.current.get()).clone() };
    let Some(cur) = cur else { return };
    if from_user && cur.kill_requested() {
        drop(cur);
        exit_current(UserExit::Killed);
    }
    let preemptible = from_user || is_idle(s, &cur);
    let must_move = !cur.allowed_on(cpu);
    let wants_stop = cur.stop_requested();
    let slice_over = is_tick && from_user && s.need_resched.load(Ordering::Relaxed);
    if slice_over && !cur.on_donation() {
        // CPU time is an event like any other: tell the thread's scheduler
        // port (one-way, never blocking) that it used up a time slice. (A
        // donor learns it from `donate` instead.)
        let port = cur.scheduler.lock().clone();
        if let Some(port) = port {
            let _ = crate::ipc::send(&port, [crate::object::keeper::KIND_CPU_TIME, cpu as u64, percpu::cpu(cpu).ticks.load(Ordering::Relaxed), 0, 0, 0]);
        }
    }
    drop(cur);
    if preemptible && (s.need_resched.load(Ordering::Relaxed) || must_move) {
        schedule();
    }
    if let Some(frame) = user_frame {
        if wants_stop || current().stop_requested() {
            stop_point(frame, FrameKind::Trap);
        }
    }
}

/// How a donation ended, as `donate` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DonationEnd {
    /// The thread blocked (it is announced again when it becomes runnable).
    Blocked = 0,
    /// Its time slice ran out, or it yielded: still runnable.
    Runnable = 1,
    Exited = 2,
    Stopped = 3,
}

const DONATION_PENDING: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DonateError {
    /// Not a donation-only thread, the caller itself, or not able to run on this CPU.
    Invalid,
    /// Not runnable now (running, blocked, stopped, or another donor has it).
    NotRunnable,
    Exited,
    /// The caller was stopped or killed while the thread ran.
    Interrupted,
}

/// Makes `t` run only on donated time (or, with `on` false, again on the
/// kernel's run queues); takes effect the next time it becomes runnable.
pub fn set_donation_only(t: &Arc<Thread>, on: bool) {
    t.donation_only.store(on, Ordering::Release);
    if !on {
        release_from_donor_wait(t);
    }
}

/// A donation-only thread became runnable on its own: one-way message
/// `[5, cpu, tick, 0, 0, 0]` to its scheduler port.
fn announce_runnable(t: &Thread) {
    let port = cpu::without_interrupts(|| t.scheduler.lock().clone());
    if let Some(port) = port {
        let cpu = percpu::this_cpu_index();
        let _ = crate::ipc::send(&port, [crate::object::keeper::KIND_RUNNABLE, cpu as u64, percpu::cpu(cpu).ticks.load(Ordering::Relaxed), 0, 0, 0]);
    }
}

/// The donor `t` runs for, if any; the donation is over once taken.
fn take_donor(t: &Thread) -> Option<Arc<Thread>> {
    if !t.on_donation() {
        return None;
    }
    let donor = t.donor.lock().take();
    t.attention.fetch_and(!ATTENTION_DONATION, Ordering::AcqRel);
    donor
}

/// Gives the caller's CPU to the runnable donation-only thread `t` until
/// it blocks, exits, stops, yields or uses up a time slice (Fluke's CPU
/// donation: a user-level scheduler runs its threads on its own time).
/// Interrupts off.
pub fn donate(t: &Arc<Thread>) -> Result<DonationEnd, DonateError> {
    let (cpu, s) = here();
    let me = current();
    if Arc::ptr_eq(&me, t) || !t.donation_only.load(Ordering::Acquire) || !t.allowed_on(cpu) {
        return Err(DonateError::Invalid);
    }
    if !lazyfpu::runnable_here(t, cpu) {
        // Its x87/SSE state is still in another CPU's registers (it parked
        // there through the IPC fast path): only that CPU can run it now.
        return Err(DonateError::NotRunnable);
    }
    {
        let mut donor = t.donor.lock();
        if t.state.load(Ordering::Acquire) == EXITED {
            return Err(DonateError::Exited);
        }
        // The claim: it leaves the "waiting for a donor" set exactly once.
        if donor.is_some() || !t.awaiting_donor.swap(false, Ordering::AcqRel) {
            return Err(DonateError::NotRunnable);
        }
        debug_assert_eq!(t.state.load(Ordering::Acquire), READY);
        *donor = Some(me.clone());
        t.attention.fetch_or(ATTENTION_DONATION, Ordering::AcqRel);
    }
    me.donation_end.store(DONATION_PENDING, Ordering::Relaxed);
    set_wait(&me, WaitReason::Donating);
    me.state.store(BLOCKED, Ordering::Release);
    s.slice_left.store(TIME_SLICE_TICKS, Ordering::Relaxed);
    switch_to(cpu, s, me.clone(), t.clone(), true);
    // Back: the donation ended, or something else woke the caller.
    let end = me.donation_end.load(Ordering::Acquire);
    if end == DONATION_PENDING {
        // Woken by a kill or stop while `t` runs on: withdraw the donation
        // (unless it is ending right now, in which case `t` took it).
        let mut donor = t.donor.lock();
        if donor.as_ref().is_some_and(|d| Arc::ptr_eq(d, &me)) {
            *donor = None;
            t.attention.fetch_and(!ATTENTION_DONATION, Ordering::AcqRel);
        }
        return Err(DonateError::Interrupted);
    }
    Ok(match end {
        0 => DonationEnd::Blocked,
        1 => DonationEnd::Runnable,
        2 => DonationEnd::Exited,
        _ => DonationEnd::Stopped,
    })
}
