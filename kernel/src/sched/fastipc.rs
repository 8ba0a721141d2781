//! The kernel's mechanisms for the IPC fast path (`fastpath::ipc` fixes
//! their order): handle lookups, claiming a parked partner, parking the
//! caller at its user frame, and the direct switch.
//!
//! A *parked* thread (state `PARKED`) blocked in `call` or `reply_wait`
//! through the fast path. Its kernel stack holds only its user registers
//! (the [`SyscallFrame`] at the top) and, just below them, a switch frame
//! that resumes it in `syscall::resume_parked`. So there are two ways back:
//!
//! * the fast path on its CPU claims it (CAS `PARKED` → `RUNNING`), writes
//!   the result into its frame and `sysret`s from there, the message
//!   carried over in registers by the entry stub;
//! * anything else (the general path, a kill, a stop) wakes it like any
//!   blocked thread (`PARKED` → `READY`); the scheduler switches to the
//!   switch frame and the continuation finishes the call the general way.
//!
//! The CAS decides which of the two happens, exactly once. A thread is
//! claimed only where it last ran and while no CPU is on its stack, so the
//! fast path never waits for a thread. Before its commit it only tries
//! locks (the handle table, the portset, the caller's IPC slot) and falls
//! back to the general path when one is held; after it, it takes the IPC
//! slots of the caller and the claimed partner, which no one holds for more
//! than a few instructions.

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use fastpath::ipc::{Client, Kernel, Message};

use super::scheduler::{has_ready_thread, here_scheduling, running_on_unchecked, CpuSched};
use super::thread::{ParkedAs, Thread, PARKED, RUNNING};
use crate::arch::x86_64::paging::USER_TOP;
use crate::arch::x86_64::syscall::{self as entry, SyscallFrame, FRAME_BYTES};
use crate::ipc::Portset;
use crate::object::handle::{Handle, HandleTable, Rights};
use crate::object::space::{Object, Space};

/// What the syscall entry stub does after a fast path. `frame` 0: not
/// taken, run the general path. `frame` 1: the caller parked, call
/// `leave_parked`. Otherwise: load the message registers from the caller's
/// frame, make `frame` the stack pointer, clear the byte at `prev_on_cpu`
/// (the parked caller's `on_cpu`: from then on another CPU may take the
/// caller and its frame) and return to user mode through `frame` with every
/// other register from it.
#[repr(C)]
pub struct FastSwitch {
    pub frame: u64,
    pub prev_on_cpu: u64,
}

const NOT_TAKEN: FastSwitch = FastSwitch { frame: 0, prev_on_cpu: 0 };
const LEAVE_PARKED: FastSwitch = FastSwitch { frame: 1, prev_on_cpu: 0 };

/// Called by the syscall entry stub for `ipc_call`, interrupts off, on the
/// caller's kernel stack below its `frame`.
pub extern "C" fn fast_call(frame: &SyscallFrame) -> FastSwitch {
    fastpath::ipc::call(&ThisCpu::new(frame), frame.rdi).unwrap_or(NOT_TAKEN)
}

/// `fast_call` for `ipc_reply_wait`.
pub extern "C" fn fast_reply_wait(frame: &SyscallFrame) -> FastSwitch {
    fastpath::ipc::reply_wait(&ThisCpu::new(frame), frame.rdi, frame.message()).unwrap_or(NOT_TAKEN)
}

/// An object of the caller's handle table, borrowed while the fast path
/// keeps the table locked: the table's own reference keeps it alive, so the
/// fast path touches no reference count.
pub struct Held<T: 'static> {
    _table: spin::MutexGuard<'static, HandleTable<Object>>,
    object: *const T,
}

impl<T> Held<T> {
    #[inline(always)]
    fn map<U>(self, part: impl FnOnce(&T) -> &U) -> Held<U> {
        let object: *const U = part(&self);
        Held { _table: self._table, object }
    }
}

impl<T> core::ops::Deref for Held<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: `object` lives in (or is kept alive by) an entry of the
        // table, which cannot change while `_table` holds its lock.
        unsafe { &*self.object }
    }
}

struct ThisCpu<'f> {
    cpu: usize,
    sched: &'static CpuSched,
    me: &'static Thread,
    frame: &'f SyscallFrame,
}

/// The user frame at the top of `t`'s kernel stack.
#[inline(always)]
fn frame_of(t: &Thread) -> u64 {
    t.stack_top - FRAME_BYTES
}

impl<'f> ThisCpu<'f> {
    #[inline(always)]
    fn new(frame: &'f SyscallFrame) -> Self {
        let (cpu, sched) = here_scheduling();
        // SAFETY: a system call comes from a user thread, which is this
        // CPU's current thread while it runs.
        let me = unsafe { running_on_unchecked(sched) };
        ThisCpu { cpu, sched, me, frame }
    }

    /// Claims a parked thread for this CPU: it last ran here (so this CPU
    /// is off its stack) and may run here.
    #[inline(always)]
    fn claim(&self, t: &Thread) -> bool {
        t.cpu() == self.cpu
            && t.allowed_on(self.cpu)
            && !t.on_cpu.load(Ordering::Acquire)
            && t.state.compare_exchange(PARKED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Parks the caller at its user frame in `role`.
    #[inline(always)]
    fn park_caller(&self, role: ParkedAs) {
        // SAFETY: the caller entered through the fast-path branch of the
        // entry stub, so its frame is at the top of its own kernel stack
        // (checked in `caller_ready`) with the stub's free room below.
        let resume_rsp = unsafe { entry::prepare_parked_resume(frame_of(self.me)) };
        // SAFETY: only the thread itself writes its saved stack pointer while
        // it runs; other CPUs read it after `on_cpu` clears (entry stub).
        unsafe { *self.me.context_rsp.get() = resume_rsp };
        self.me.parked_as.store(role as u8, Ordering::Release);
        self.me.state.store(PARKED, Ordering::Release);
    }

    /// Takes the scheduler's reference to the caller, for a direct switch
    /// (which installs the next thread before anything reads `current`).
    #[inline(always)]
    fn take_current(&self) -> Arc<Thread> {
        // SAFETY: owning CPU, interrupts off; `current` holds the caller
        // (`me` was read from it) until this takes it.
        unsafe { (*self.sched.current.get()).take().unwrap_unchecked() }
    }

    /// The part `pick` chooses of the object behind a handle of the
    /// caller's with `needed` rights, if the handle table is free right now.
    #[inline(always)]
    fn lookup<T>(&self, handle: u64, needed: Rights, pick: impl FnOnce(&Object) -> Option<&T>) -> Option<Held<T>> {
        // SAFETY: the caller runs on this CPU with interrupts off, and no
        // other CPU can run it (and so let it exit and its space die) until
        // the entry stub clears its `on_cpu`, after every `Held` is gone.
        let space: &'static Space = unsafe { self.me.running_space() }?;
        let table = space.handles.try_lock()?;
        let object: *const T = table.pick(Handle::from_raw(handle), needed, pick)?;
        Some(Held { _table: table, object })
    }

    #[inline(always)]
    fn clone_current(&self) -> Arc<Thread> {
        // SAFETY: owning CPU, interrupts off; `current` holds the caller.
        unsafe { (*self.sched.current.get()).clone().unwrap_unchecked() }
    }
}

impl Kernel for ThisCpu<'_> {
    type Thread = Arc<Thread>;
    type Portset = Held<Arc<Portset>>;
    type Switch = FastSwitch;

    #[inline(always)]
    fn caller_ready(&self) -> bool {
        // The fast path is on for this thread, no kill or stop is pending,
        // and it does not run on donated time (which goes back to its donor
        // when the caller blocks): one load.
        self.me.attention.load(Ordering::Acquire) == 0
            // sysret to a non-canonical rip would fault in ring 0: the
            // general path turns that into a fault for the caller.
            && self.frame.rip < USER_TOP
            && self.frame as *const SyscallFrame as u64 + FRAME_BYTES == self.me.stack_top
    }

    #[inline(always)]
    fn send_port(&self, handle: u64) -> Option<(Held<Arc<Portset>>, u64)> {
        let port = self.lookup(handle, Rights::SEND, |object| match object {
            Object::Port(port) => Some(&**port),
            _ => None,
        })?;
        let alias = port.alias;
        Some((port.map(|p| &p.portset), alias))
    }

    #[inline(always)]
    fn receive_portset(&self, handle: u64) -> Option<Held<Arc<Portset>>> {
        self.lookup(handle, Rights::RECEIVE, |object| match object {
            Object::Portset(portset) => Some(portset),
            _ => None,
        })
    }

    #[inline(always)]
    fn claim_waiting_server(&self, portset: &Held<Arc<Portset>>) -> Option<Arc<Thread>> {
        let mut servers = portset.try_servers()?;
        if !self.claim(servers.first()?) {
            return None;
        }
        servers.take_first()
    }

    #[inline(always)]
    fn park_caller_as_server(&self, portset: &Held<Arc<Portset>>) -> Option<Client<Arc<Thread>>> {
        let mut slot = self.me.ipc.try_lock()?;
        let mut servers = portset.try_servers()?;
        let place = servers.room_for_server()?;
        // The portset keeps the caller's reference from `current`, which a
        // direct switch then refills, or a copy of it if the scheduler runs.
        // A client that gave up on its call since (its epoch moved on)
        // gets no reply: it may be parked in a later call by now.
        let epoch = slot.partner_epoch;
        let partner = slot.partner.take().filter(|c| c.call_epoch.load(Ordering::Acquire) == epoch);
        let (client, me) = match partner {
            Some(c) if self.claim(&c) => (Client::Claimed(c), self.take_current()),
            // Blocked the general way, but it runs here next.
            Some(c) if c.cpu() == self.cpu => (Client::Blocked(Some(c)), self.clone_current()),
            None if has_ready_thread(self.sched) => (Client::Blocked(None), self.clone_current()),
            // A client on another CPU, or nothing else to run here: the
            // general path spins for it (cross-CPU polling).
            unchanged => {
                slot.partner = unchanged;
                return None;
            }
        };
        self.me.delivered.store(false, Ordering::Relaxed);
        let waiting_on = slot.waiting_on.as_ref().map_or(core::ptr::null(), Arc::as_ptr);
        if waiting_on != Arc::as_ptr(portset) {
            slot.waiting_on = Some(Arc::clone(portset));
        }
        self.park_caller(ParkedAs::Server);
        servers.push(place, me);
        Some(client)
    }

    #[inline(always)]
    fn park_caller_as_client_of(&self, server: &Arc<Thread>) {
        self.me.delivered.store(false, Ordering::Relaxed);
        self.park_caller(ParkedAs::Client);
        let epoch = self.me.call_epoch.load(Ordering::Relaxed);
        let mut slot = server.ipc.lock();
        slot.partner = Some(self.take_current());
        slot.partner_epoch = epoch;
    }

    #[inline(always)]
    fn deliver_to_slot(&self, to: &Arc<Thread>, message: &Message) {
        to.ipc.lock().reply = *message;
        to.delivered.store(true, Ordering::Release);
    }

    #[inline(always)]
    fn schedule(&self, next: Option<Arc<Thread>>) -> FastSwitch {
        // SAFETY: owning CPU, interrupts off; `leave_parked` takes it next.
        unsafe { *self.sched.parked_handoff.get() = next };
        LEAVE_PARKED
    }

    #[inline(always)]
    fn switch_to(&self, next: Arc<Thread>, result: u64) -> FastSwitch {
        // Read once: after the store through the raw frame pointer below
        // the compiler cannot tell that `stack_top` did not change, and
        // read it again (an instruction on each leg).
        let stack_top = next.stack_top;
        let frame = stack_top - FRAME_BYTES;
        // SAFETY: `next` is claimed (RUNNING, owned by this CPU, which no
        // longer runs on its stack): nothing else touches its user frame at
        // the top of its kernel stack, which stays mapped while it lives.
        // The entry stub fills in the message registers on the way out.
        unsafe { (*(frame as *mut SyscallFrame)).rax = result };
        next.on_cpu.store(true, Ordering::Relaxed);
        entry::set_kernel_entry_stack(stack_top);
        // Lazy FPU: at most CR0.TS changes here, the registers stay.
        super::lazyfpu::on_switch(self.sched, &next);
        // CR3 holds the caller's root (it entered from its own space): no
        // need to read it back.
        // SAFETY: both threads are user threads of live spaces; CR3 holds
        // the caller's root (it entered from its own space).
        unsafe { crate::arch::paging::switch_user_space_from(self.me.root, next.root, &self.sched.fast_cr3_loads) };
        // The time slice goes on: the server runs on the rest of the
        // caller's turn (restarting it here let a ping-pong pair keep the
        // CPU from every other thread in its run queue).
        // Only this CPU writes its count: no atomic read-modify-write.
        let switches = &self.sched.fast_switches;
        switches.store(switches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let current = self.sched.current.get();
        // SAFETY: owning CPU, interrupts off; `park_caller_as_*` took the
        // caller's reference out just before, so the slot is empty and
        // there is nothing to drop.
        unsafe {
            debug_assert!((*current).is_none());
            current.write(Some(next));
        }
        FastSwitch { frame, prev_on_cpu: self.me.on_cpu.as_ptr() as u64 }
    }
}
