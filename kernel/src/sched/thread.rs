//! Threads: the control block, its states and attention bits, the kernel
//! stacks of exited threads, and the registry the hang report lists.

extern crate alloc;

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::donation::*;
use super::runqueue::{Queueable, RunLink};
use super::scheduler::*;
use super::waitqueue::*;
use crate::arch::x86_64::context;
use crate::arch::x86_64::percpu::MAX_CPUS;
use crate::arch::x86_64::syscall::UserExit;
use crate::arch::x86_64_exports::*;
use crate::object::space::Space;

pub const KERNEL_PRIORITY: u8 = 32;
pub const USER_PRIORITY: u8 = 16;
pub(super) const KERNEL_STACK_PAGES: u64 = 4;
/// Timer ticks a user thread runs before others of its priority get a turn.
pub(super) const TIME_SLICE_TICKS: u32 = 2;
/// `deadline_cpu` when no clock list holds the thread.
pub(super) const NO_CPU: usize = usize::MAX;

pub(super) const READY: u8 = 0;
pub(super) const RUNNING: u8 = 1;
pub(super) const BLOCKED: u8 = 2;
pub(super) const EXITED: u8 = 3;
/// Stopped for its parent (get_state/set_state); only `resume` restarts it.
pub(super) const STOPPED: u8 = 4;
/// Blocked in IPC by the fast path at its user frame: its kernel stack holds
/// only its user registers, so the fast path may switch straight to them
/// (`sched::fastipc`); anything else that wakes it runs the continuation
/// that finishes the call the general way.
pub(super) const PARKED: u8 = 5;

/// `Thread::attention` bits.
pub(super) const ATTENTION_KILL: u8 = 1;
pub(super) const ATTENTION_STOP: u8 = 2;
pub(super) const ATTENTION_DONATION: u8 = 4;
/// Set for good in every thread created with the fast path off
/// (`fastpath=off`), so the fast path's one check of `attention` covers it.
pub(super) const ATTENTION_GENERAL_PATH_ONLY: u8 = 8;

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
    /// Serial console input (`console_read`).
    ConsoleInput = 9,
}

impl WaitReason {
    fn from_u8(v: u8) -> WaitReason {
        use WaitReason::*;
        [None, Ipc, Mutex, Cond, Join, Stop, Sleep, Donating, Standby, ConsoleInput].get(v as usize).copied().unwrap_or(None)
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

pub use crate::arch::x86_64::context::{FrameKind, UserRegisters};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedError {
    OutOfMemory,
    /// The affinity mask names no online CPU.
    NoAllowedCpu,
    /// The entry point or stack is not a user address.
    BadUserAddress,
}

pub(super) enum Body {
    Kernel {
        entry: fn(usize),
        arg: usize,
    },
    User {
        rip: u64,
        rsp: u64,
        args: (u64, u64),
    },
    /// A CPU's boot context, adopted as a thread.
    Adopted,
}

pub struct Thread {
    pub name: &'static str,
    pub(super) state: AtomicU8,
    pub(super) on_cpu: AtomicBool,
    /// Set when the thread first runs (`thread_start`): a second start means
    /// its prepared context was switched to twice (the fuzzer's finding 8
    /// ended in such a double start), which must stop the kernel with a
    /// clear report rather than run on a stack in use.
    pub(super) started: AtomicBool,
    pub(super) context_rsp: UnsafeCell<u64>,
    pub(super) stack: spin::Mutex<Option<stack::KernelStack>>,
    pub(super) stack_top: u64,
    pub(super) priority: AtomicU8,
    pub(super) affinity: AtomicU64,
    /// The CPU the thread runs on, or last ran or was queued on.
    pub(super) cpu: AtomicUsize,
    /// Every CPU the thread has been switched in on (bit per CPU).
    pub(super) ran_on: AtomicU64,
    /// Address space root for user threads; 0 means the kernel's.
    pub(super) root: u64,
    pub(super) body: Body,
    /// What the thread must attend to at its next kernel entry or exit
    /// (ATTENTION_KILL, _STOP), whether it runs on donated time
    /// (_DONATION), and whether the fast path is off (_GENERAL_PATH_ONLY):
    /// one byte, so the IPC fast path checks all at once.
    pub(super) attention: AtomicU8,
    pub(super) exit: spin::Mutex<ExitSlot>,
    /// The space a user thread belongs to (none for kernel threads and the
    /// bare user threads of kernel tests).
    pub(super) space: Weak<Space>,
    /// IPC in progress (see crate::ipc).
    pub ipc: spin::Mutex<IpcSlot>,
    /// Set (Release) by the IPC partner once the awaited message is in
    /// `ipc`; outside the slot's lock so waiters poll it without locking.
    pub delivered: AtomicBool,
    /// Counts the calls this thread abandoned (stopped, killed or timed out
    /// after a server may have taken the request). A server records it when
    /// it takes a request and delivers its reply only if it is unchanged:
    /// a reply to an abandoned call must not land in a later one. Written
    /// only by the thread itself, while it runs.
    pub call_epoch: AtomicU64,
    /// Copies a server is making between its memory and this thread's (a
    /// client blocked in a call: its request's payload, or its reply's).
    /// A client that abandons its call waits until this is 0 again, so no
    /// copy reaches its memory once the call has returned (see
    /// `crate::ipc::PartnerCopy`).
    pub copies_in_flight: AtomicU32,
    /// The TSC value at which the blocking call this thread is in gives up
    /// (`sleep_until`, a timed IPC call); 0: none. Written only by the
    /// thread itself.
    pub(super) deadline: AtomicU64,
    /// The CPU whose clock list holds this thread's deadline wake-up, or
    /// `NO_CPU`.
    pub(super) deadline_cpu: AtomicUsize,
    /// While stopped: the address and kind of its user register frame.
    pub(super) stopped_frame: spin::Mutex<Option<(u64, FrameKind)>>,
    /// A thread created stopped starts from these registers.
    pub(super) pending_start: spin::Mutex<Option<UserRegisters>>,
    /// Threads waiting for this one to stop.
    pub(super) stop_waiters: WaitQueue,
    /// Where the thread's CPU-time events go (its scheduler port).
    pub(super) scheduler: spin::Mutex<Option<Arc<crate::ipc::Port>>>,
    /// The role it parked in (a `ParkedAs`), written by the thread itself
    /// before it parks and read by its continuation.
    pub(super) parked_as: AtomicU8,
    /// Its x87/SSE state while no CPU holds it (see `lazyfpu`).
    pub(super) fpu: spin::Mutex<fpu::FpuArea>,
    /// 0, or 1 + the CPU whose registers hold its x87/SSE state.
    pub(super) fpu_cpu: AtomicUsize,
    /// Runs only on time another thread donates (`donate`); becoming
    /// runnable on its own is announced on its scheduler port instead.
    pub(super) donation_only: AtomicBool,
    /// The thread whose CPU it runs on now, waiting in `donate`.
    pub(super) donor: spin::Mutex<Option<Arc<Thread>>>,
    /// How the donation this thread made ended (a `DonationEnd`), or PENDING.
    pub(super) donation_end: AtomicU8,
    /// Runnable, donation-only and in no run queue: waiting for a donor.
    pub(super) awaiting_donor: AtomicBool,
    /// Why it waits while BLOCKED (a `WaitReason`), for the hang report.
    pub(super) wait: AtomicU8,
    /// Counted in LIVE_USER_THREADS until it exits (or is freed unstarted).
    pub(super) counted_as_live_user: AtomicBool,
    /// Its place in a run queue (the queue allocates nothing).
    pub(super) run_link: RunLink<Thread>,
    /// Its index in REGISTRY.
    pub(super) registry_index: AtomicUsize,
    /// Its space's number in the memory engine, for reports (which must not
    /// take a reference to the space: dropping it could free threads).
    pub(super) space_number: Option<u32>,
    /// The kernel memory it pins, charged to its space's quota until it is freed.
    pub(super) quota_charge: spin::Mutex<Option<crate::object::quota::Charge>>,
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
    /// Server: the partner's `call_epoch` when its request was taken.
    pub partner_epoch: u64,
    /// Client: the payload staged with its request until a server takes
    /// it. Server: the payload of the request it received.
    pub request_payload: crate::ipc::Carried,
    /// Client: the payload that came with its reply.
    pub reply_payload: crate::ipc::Carried,
    /// Client: set (with `delivered`) when its server exited instead of replying.
    pub server_gone: bool,
    /// Client: where its request's payload is and where its reply's goes,
    /// in its own memory (a server copies straight from and to them).
    pub call_buffers: crate::ipc::CallBuffers,
    /// Client: the reply payload's length, and whether the server could
    /// write it to `call_buffers` (false: the client's buffer was bad).
    pub reply_pushed: Option<(u64, bool)>,
    /// Reliable connections (see crate::reliable).
    pub links: crate::reliable::Links,
    /// The portset a server parked by the fast path waits on; kept after
    /// it runs again, so a server that waits on the same portset each time
    /// parks without touching a reference count.
    pub waiting_on: Option<Arc<crate::ipc::Portset>>,
}

pub(super) struct ExitSlot {
    pub(super) reason: Option<UserExit>,
    pub(super) joiners: Vec<Arc<Thread>>,
}

// SAFETY: `context_rsp` is written only by the CPU switching away from the
// thread and read only by the CPU switching to it, which first waits for
// `on_cpu` to clear (Release/Acquire); all other fields are atomics or locks.
unsafe impl Sync for Thread {}
// SAFETY: as above; a Thread holds no CPU-local references.
unsafe impl Send for Thread {}

impl Thread {
    /// The call this thread is in will take no reply: a server that took
    /// its request drops its reply (`call_epoch`). Called by the thread
    /// itself, holding its IPC slot or the portset's lock, so a server's
    /// check and delivery (under the client's slot) see it or come before.
    pub fn abandon_call(&self) {
        self.call_epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn new(name: &'static str, body: Body, root: u64, priority: u8, affinity: u64) -> Result<Arc<Thread>, SchedError> {
        Thread::new_in(name, body, root, priority, affinity, Weak::new())
    }

    /// `new` for a thread of `space` (set before the thread is shared: the
    /// registry's weak reference would stop a later `Arc::get_mut`).
    pub(super) fn new_in(
        name: &'static str,
        body: Body,
        root: u64,
        priority: u8,
        affinity: u64,
        space: Weak<Space>,
    ) -> Result<Arc<Thread>, SchedError> {
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
            started: AtomicBool::new(false),
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
            call_epoch: AtomicU64::new(0),
            copies_in_flight: AtomicU32::new(0),
            deadline: AtomicU64::new(0),
            deadline_cpu: AtomicUsize::new(NO_CPU),
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

    /// The page-table root of its address space (0: the kernel's).
    pub fn page_table_root(&self) -> u64 {
        self.root
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
            // with interrupts off, so the stack waits for `reap`. And it
            // waits for a grace period: the last reference to a thread can
            // go while a CPU still runs on its stack (the IPC fast path
            // moves a caller's reference out of `current` before the entry
            // stub leaves its stack), so the stack is freed only once every
            // CPU has passed a quiescent point since (`quiescent_point`).
            let dead = DeadStack { stack: s, seen: quiescent_snapshot() };
            cpu::without_interrupts(|| DEAD_STACKS.lock().push(dead));
        }
    }
}

/// A freed thread's kernel stack and every CPU's quiescent count when it died.
pub(super) struct DeadStack {
    stack: stack::KernelStack,
    seen: [u64; MAX_CPUS],
}

pub(super) static DEAD_STACKS: spin::Mutex<Vec<DeadStack>> = spin::Mutex::new(Vec::new());

/// Per CPU, how many quiescent points it has passed: moments when it runs
/// on the stack of a thread that its `current` slot keeps alive, with
/// interrupts on or in an interrupt that could only arrive with them on
/// (the timer tick, a finished switch, the idle loop). A CPU that passed one
/// after a stack died is not running on that stack.
static QUIESCENT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Per CPU: it is halted in its idle loop (on the idle thread's stack, and
/// it will only ever resume there), which is as good as a quiescent point
/// for as long as it lasts.
static IDLING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// The idle loop is about to halt (`true`) or has woken (`false`).
pub fn set_idling(cpu: usize, idling: bool) {
    if let Some(f) = IDLING.get(cpu) {
        f.store(idling, Ordering::Release);
    }
}

/// This CPU is at a quiescent point (see [`QUIESCENT`]).
pub fn quiescent_point(cpu: usize) {
    if let Some(q) = QUIESCENT.get(cpu) {
        q.fetch_add(1, Ordering::Release);
    }
    // Awake and busy again (an interrupt may switch away from the idle
    // thread before the idle loop clears the flag itself).
    set_idling(cpu, false);
}

fn quiescent_snapshot() -> [u64; MAX_CPUS] {
    core::array::from_fn(|i| QUIESCENT[i].load(Ordering::Acquire))
}

/// Has every online CPU passed a quiescent point since `seen`? CPUs that
/// are not online never ran a thread.
fn grace_period_over(seen: &[u64; MAX_CPUS]) -> bool {
    let online = READY_CPUS.load(Ordering::Acquire);
    (0..MAX_CPUS).all(|i| online & (1 << i) == 0 || QUIESCENT[i].load(Ordering::Acquire) != seen[i] || IDLING[i].load(Ordering::Acquire))
}

/// Every thread not yet freed, by address: what the hang report lists. A
/// thread takes itself out (under this lock) first thing when it is freed,
/// so an address found here under the lock names a live thread.
pub(super) static REGISTRY: spin::Mutex<Vec<usize>> = spin::Mutex::new(Vec::new());
pub(super) const NOT_REGISTERED: usize = usize::MAX;
/// Threads whose memory is not freed yet.
pub(super) static LIVE_THREADS: AtomicU64 = AtomicU64::new(0);

pub(super) fn registry_add(t: &Arc<Thread>) -> Result<(), SchedError> {
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
pub(super) fn registry_remove(t: &Thread) {
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
pub(super) static LIVE_USER_THREADS: AtomicU64 = AtomicU64::new(0);

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
pub(super) fn set_wait(t: &Thread, reason: WaitReason) {
    t.wait.store(reason as u8, Ordering::Relaxed);
}

/// Frees the kernel stacks of threads that are gone and that no CPU can
/// still be running on. Interrupts must be on.
pub fn reap() {
    // This CPU is on its current thread's stack: quiescent.
    quiescent_point(crate::arch::x86_64::percpu::this_cpu_index());
    let ready: Vec<DeadStack> = cpu::without_interrupts(|| {
        let mut dead = DEAD_STACKS.lock();
        let (ready, waiting): (Vec<DeadStack>, Vec<DeadStack>) =
            core::mem::take(&mut *dead).into_iter().partition(|d| grace_period_over(&d.seen));
        *dead = waiting;
        ready
    });
    for d in ready {
        stack::free(d.stack);
    }
}

/// `reap`, waiting (at most about `max_ticks` timer ticks) until every dead
/// stack is past its grace period: for callers that count frames after.
pub fn reap_all(max_ticks: u64) {
    let ticks = || crate::arch::x86_64::percpu::this_cpu().ticks.load(Ordering::Relaxed);
    let until = ticks() + max_ticks;
    loop {
        reap();
        if cpu::without_interrupts(|| DEAD_STACKS.lock().is_empty()) || ticks() >= until {
            return;
        }
        cpu::pause();
    }
}
