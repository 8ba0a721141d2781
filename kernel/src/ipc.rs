//! Ports, portsets and synchronous (idempotent) IPC: call, and
//! reply-and-wait, with six-word messages carried in registers.
//!
//! Clients call a *port*; server threads wait on the *portset* the port
//! belongs to and learn from the port's *alias* which port a request came
//! through. A request or reply may carry bytes and a capability as well
//! (`ipc_call_buf`, `ipc_reply_wait_buf`). The bytes are copied once, by the
//! server, straight between the two memories: it pulls a request's bytes
//! from its client's buffer when it receives the request (and the rest
//! later, piece by piece, with [`read_request`]) and pushes its reply's
//! bytes into the client's receive buffer before it wakes the client; the
//! client is blocked in its call all the while ([`CallBuffers`],
//! [`PartnerCopy`]). A capability is staged in the kernel ([`Payload`]), as
//! are the bytes of connection messages (`crate::reliable`).
//!
//! * Same CPU: when a server already waits and may run on the caller's CPU,
//!   the client hands its CPU straight to it (`sched::block_and_handoff`: no
//!   run queue), and the reply hands it straight back. `fastpath=off` on the
//!   command line routes these wake-ups through the run queue, for comparison.
//! * Across CPUs: a party that waits for its partner on another CPU first
//!   spins (`ipc_spin=N` iterations, default 4000) watching for the
//!   message, and blocks only if it does not come — so a busy pair never
//!   pays for an IPI and a halt. `ipc_spin=0` always blocks.

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use fastpath::servers::Place;

use crate::arch::cpu;
use crate::sched::{self, Thread};

static SPIN_LIMIT: AtomicU32 = AtomicU32::new(4000);

/// How long a waiter spins for a partner on another CPU before blocking.
pub fn set_spin_limit(iterations: u32) {
    SPIN_LIMIT.store(iterations, Ordering::Relaxed);
}

pub fn spin_limit() -> u32 {
    SPIN_LIMIT.load(Ordering::Relaxed)
}

/// How long a waiter spins now: not at all while another thread is ready
/// on its CPU, since the partner may be that very thread (it cannot run
/// until the waiter blocks) and spinning only delays whatever runs next.
fn spin_budget() -> u32 {
    if sched::others_ready_here() {
        0
    } else {
        spin_limit()
    }
}

/// What travels with a message besides its registers: bytes and at most one
/// object (with the rights the receiver's new handle gets).
pub struct Payload {
    pub bytes: alloc::vec::Vec<u8>,
    pub object: Option<(crate::object::space::Object, crate::object::handle::Rights)>,
    /// The kernel memory the staged bytes take, charged to the sender's
    /// quota until the payload is delivered or dropped: otherwise every
    /// thread a quota allows could pin 64 KiB of kernel heap in a call
    /// nobody answers.
    pub _charge: crate::object::quota::Charge,
}

/// A payload, if any, in flight.
pub type Carried = Option<alloc::boxed::Box<Payload>>;

/// Where a client's payloads are, in its own memory: the bytes it sends with
/// its request and where its reply's bytes go. Valid while its call lasts
/// (a server copies from and to them then); all zero outside a call.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct CallBuffers {
    pub send_ptr: u64,
    pub send_len: u64,
    pub recv_ptr: u64,
    pub recv_capacity: u64,
}

/// A reply payload's fate as its client learns it: the reply's length, and
/// whether its bytes could be written to the client's receive buffer.
pub type Pushed = Option<(u64, bool)>;

/// Why a server's copy to or from its client's memory did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerCopy {
    /// The server holds no request.
    NoClient,
    /// The client gave up on the call (stopped, killed, timed out).
    Abandoned,
    /// The server's own buffer is not user memory it may use.
    LocalFault,
    /// The client's buffer is not (any more) user memory it may use.
    RemoteFault,
}

/// Runs `copy` on the calling server's current client, unless the client
/// abandoned the call. The client counts the copy in flight first and then
/// checks the call's epoch (both sequentially consistent); a client that
/// abandons its call moves the epoch on and then waits until no copy is in
/// flight ([`wait_for_copies`]): so either the server sees the abandonment
/// and copies nothing, or the client waits until the copy is over. No copy
/// reaches a client's memory once its call has returned, and a client's
/// memory is not freed during one (its space's destruction joins it first).
fn with_client<R>(copy: impl FnOnce(&Thread, CallBuffers) -> R) -> Result<R, PartnerCopy> {
    let me = sched::current();
    let (client, epoch) = {
        let slot = me.ipc.lock();
        (slot.partner.clone().ok_or(PartnerCopy::NoClient)?, slot.partner_epoch)
    };
    let buffers = client.ipc.lock().call_buffers;
    client.copies_in_flight.fetch_add(1, Ordering::SeqCst);
    let result = if client.call_epoch.load(Ordering::SeqCst) == epoch { Ok(copy(&client, buffers)) } else { Err(PartnerCopy::Abandoned) };
    client.copies_in_flight.fetch_sub(1, Ordering::Release);
    result
}

/// A client that abandoned its call waits for a server's copy to or from
/// its memory that began before (bounded: one payload's copy).
fn wait_for_copies(me: &Thread) {
    while me.copies_in_flight.load(Ordering::SeqCst) != 0 {
        cpu::pause();
    }
}

/// Copies `len` bytes between the calling server's memory at `local` and
/// its client's at `remote` (`to_client`: into the client's).
fn copy_with_client(client: &Thread, to_client: bool, local: u64, remote: u64, len: u64) -> Result<(), PartnerCopy> {
    use crate::arch::x86_64::syscall::{copy_cross_space, CopySide};
    let resolve = |page: u64, write: bool| {
        let space = client.space().ok_or(())?;
        let access = if write { crate::object::vm::Rights::WRITE } else { crate::object::vm::Rights::READ };
        crate::object::memory::fault(&space, page, access).map_err(|_| ())
    };
    cpu::without_interrupts(|| copy_cross_space(to_client, local, client.page_table_root(), remote, len, resolve)).map_err(
        |side| match side {
            CopySide::Local => PartnerCopy::LocalFault,
            CopySide::Remote => PartnerCopy::RemoteFault,
        },
    )
}

/// The calling server's current request: copies up to `len` of its bytes,
/// from `offset` on, to `dst` in the server's memory; returns the request's
/// whole length and how many bytes were copied.
pub fn read_request(offset: u64, dst: u64, len: u64) -> Result<(u64, u64), PartnerCopy> {
    with_client(|client, b| {
        let n = len.min(b.send_len.saturating_sub(offset));
        copy_with_client(client, false, dst, b.send_ptr + offset.min(b.send_len), n).map(|()| (b.send_len, n))
    })?
}

/// Copies the reply's `len` bytes at `src` in the calling server's memory
/// into its client's receive buffer (as much as fits). Returns what the
/// client learns with the reply (`None`: no client waits for one).
pub fn push_reply(src: u64, len: u64) -> Result<Pushed, PartnerCopy> {
    match with_client(|client, b| copy_with_client(client, true, src, b.recv_ptr, len.min(b.recv_capacity))) {
        Ok(Ok(())) => Ok(Some((len, true))),
        Ok(Err(PartnerCopy::RemoteFault)) => Ok(Some((len, false))),
        Ok(Err(e)) => Err(e),
        Err(PartnerCopy::NoClient | PartnerCopy::Abandoned) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A one-way message as it waits in a portset's queue: (alias, words).
pub type OnewayMessage = (u64, [u64; 6]);
/// One-way messages a portset holds before senders see it full.
/// (Small enough that a portset is built on a kernel stack before it moves
/// to the heap; in-place construction would allow bigger queues.)
pub const ONEWAY_CAPACITY: usize = 32;

/// Where clients queue and servers wait.
pub struct Portset {
    inner: spin::Mutex<PortsetInner>,
    /// Clients queued in `inner.clients`, readable without the lock by spinning servers.
    pending: AtomicUsize,
    /// One-way messages: a lock-free queue (fastpath::PortQueue) any CPU
    /// pushes to; the receiver is woken only if it announced it sleeps.
    oneway: fastpath::PortQueue<OnewayMessage, ONEWAY_CAPACITY>,
    doorbell: fastpath::Doorbell,
    oneway_receiver: spin::Mutex<Option<Arc<Thread>>>,
    /// Threads connecting and accepting (reliable IPC, `crate::reliable`).
    pub(crate) rendezvous: spin::Mutex<crate::reliable::Rendezvous>,
    /// One-way receivers waiting while another sleeps on the doorbell.
    standby: sched::WaitQueue,
    standby_count: AtomicUsize,
}

struct PortsetInner {
    /// Servers blocked in reply-and-wait, oldest first.
    servers: fastpath::servers::ServerQueue<Arc<Thread>>,
    /// Clients whose request no server has taken yet (request in their slot).
    clients: VecDeque<Arc<Thread>>,
}

/// The servers waiting on a portset, locked (see `Portset::try_servers`).
pub(crate) struct Servers<'a>(spin::MutexGuard<'a, PortsetInner>);

impl Servers<'_> {
    /// The oldest waiting server.
    #[inline(always)]
    pub(crate) fn first(&self) -> Option<&Arc<Thread>> {
        self.0.servers.front()
    }

    #[inline(always)]
    pub(crate) fn take_first(&mut self) -> Option<Arc<Thread>> {
        self.0.servers.pop_front()
    }

    /// If no client is queued, where one more waiting server goes without
    /// allocating (if anywhere).
    #[inline(always)]
    pub(crate) fn room_for_server(&self) -> Option<Place> {
        if !self.0.clients.is_empty() {
            return None;
        }
        self.0.servers.place_without_allocating()
    }

    /// Adds a waiting server where `room_for_server` said, which holds as
    /// long as this guard did not change the queue since.
    #[inline(always)]
    pub(crate) fn push(&mut self, place: Place, server: Arc<Thread>) {
        self.0.servers.push_back_at(place, server);
    }
}

pub struct Port {
    pub portset: Arc<Portset>,
    pub alias: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcError {
    /// The caller was killed while it waited.
    Interrupted,
    /// The server that took the request exited without replying.
    ServerGone,
    /// The caller's deadline (`sched::set_deadline`) passed first.
    TimedOut,
}

impl Default for Portset {
    fn default() -> Self {
        Self::new()
    }
}

impl Portset {
    pub fn new() -> Portset {
        Portset {
            inner: spin::Mutex::new(PortsetInner {
                // Room up front: the fast path adds a server only where
                // that needs no allocation.
                servers: fastpath::servers::ServerQueue::with_capacity(4),
                clients: VecDeque::new(),
            }),
            pending: AtomicUsize::new(0),
            oneway: fastpath::PortQueue::new(),
            doorbell: fastpath::Doorbell::new(),
            oneway_receiver: spin::Mutex::new(None),
            rendezvous: spin::Mutex::new(crate::reliable::Rendezvous::default()),
            standby: sched::WaitQueue::new(sched::WaitReason::Standby),
            standby_count: AtomicUsize::new(0),
        }
    }

    /// One-way messages waiting (a hint: senders and receivers run concurrently).
    pub fn queued_oneway(&self) -> usize {
        self.oneway.len_hint()
    }

    /// The oldest queued client with its call epoch, read under the
    /// portset's lock: a client that abandons its call while queued
    /// withdraws (or counts the abandonment) under the same lock, so the
    /// epoch a server records is the one of the call it took.
    fn pop_client(&self, inner: &mut PortsetInner) -> Option<(Arc<Thread>, u64)> {
        let c = inner.clients.pop_front()?;
        self.pending.fetch_sub(1, Ordering::Release);
        let epoch = c.call_epoch.load(Ordering::Acquire);
        Some((c, epoch))
    }

    fn push_client(&self, inner: &mut PortsetInner, c: Arc<Thread>) {
        inner.clients.push_back(c);
        self.pending.fetch_add(1, Ordering::Release);
    }

    /// A one-way receiver leaves with a message: if others stand by and no
    /// one sleeps on the doorbell, one of them takes over (or takes the
    /// next message), so queued messages never wait for a receiver that
    /// is asleep elsewhere.
    #[inline]
    fn hand_over_doorbell(&self) {
        if self.standby_count.load(Ordering::Acquire) != 0 && self.oneway_receiver.lock().is_none() {
            self.standby.wake(1);
        }
    }

    /// The fast path's access to the waiting servers, if the lock is free
    /// right now (it never waits for it).
    #[inline(always)]
    pub(crate) fn try_servers(&self) -> Option<Servers<'_>> {
        self.inner.try_lock().map(Servers)
    }

    /// A client abandons its call (stopped, killed, timed out): out of the
    /// queue if no server took it yet; if one did, the call's epoch moves
    /// on, so that server's reply is dropped instead of answering a later call.
    fn withdraw_client(&self, me: &Arc<Thread>) {
        cpu::without_interrupts(|| {
            let mut inner = self.inner.lock();
            let before = inner.clients.len();
            inner.clients.retain(|c| !Arc::ptr_eq(c, me));
            if inner.clients.len() < before {
                self.pending.fetch_sub(1, Ordering::Release);
            } else {
                me.abandon_call();
            }
        });
    }
}

fn delivered(me: &Arc<Thread>) -> bool {
    me.delivered.load(Ordering::Acquire)
}

/// Spins up to the spin limit for the partner's delivery; true if it came.
fn spin_for_delivery(me: &Arc<Thread>) -> bool {
    for _ in 0..spin_budget() {
        if delivered(me) {
            return true;
        }
        cpu::pause();
    }
    delivered(me)
}

/// Blocks until `delivered` is set in the caller's slot, or the caller is
/// killed. The caller is not marked blocked yet (unless `handoff` is given,
/// in which case it is and the CPU goes straight to that thread).
fn wait_delivered(me: &Arc<Thread>, handoff: Option<Arc<Thread>>) -> Result<(), IpcError> {
    if let Some(next) = handoff {
        // The caller marked itself blocked; a delivery, kill or stop that
        // already happened may have found it still running, so do not sleep
        // past it.
        if delivered(me) || me.kill_requested() || me.stop_requested() {
            let _ = sched::wake(me);
        }
        sched::arm_deadline(me);
        sched::block_and_handoff(&next);
    }
    loop {
        if delivered(me) {
            return Ok(());
        }
        if me.kill_requested() || me.stop_requested() {
            return Err(IpcError::Interrupted);
        }
        if sched::deadline_passed(me) {
            return Err(IpcError::TimedOut);
        }
        sched::arm_deadline(me);
        sched::mark_current_blocked();
        if delivered(me) || me.kill_requested() || me.stop_requested() || sched::deadline_passed(me) {
            // Delivered, or asked to die or stop, between the check and the
            // block (the fence in mark_current_blocked orders this look
            // after the block): the waker may have missed us, so undo the
            // block ourselves and look again.
            let _ = sched::wake(me);
            sched::schedule();
            continue;
        }
        sched::schedule();
    }
}

/// Waits until a partner sets the caller's `delivered` (spinning first if
/// it may be running on another CPU), or fails if the caller is stopped or
/// killed.
pub(crate) fn wait_for_partner(me: &Arc<Thread>, partner_remote: bool) -> Result<(), IpcError> {
    if partner_remote && spin_for_delivery(me) {
        return Ok(());
    }
    wait_delivered(me, None)
}

/// Waits for a delivery a partner has already committed to (it is on its
/// way), ignoring stop and kill requests.
pub(crate) fn wait_for_partner_uninterruptibly(me: &Arc<Thread>) {
    while !delivered(me) {
        sched::mark_current_blocked();
        if delivered(me) {
            let _ = sched::wake(me);
        }
        sched::schedule();
    }
}

/// Sends `message` (and `payload`) through `port` and waits for the reply
/// and the payload that came with it. Interrupts off.
/// General-path calls made on each CPU (the fast path counts its own
/// switches): with them a harness counts the crossings of a run.
static GENERAL_CALLS: [AtomicU64; crate::arch::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::arch::percpu::MAX_CPUS];

/// General-path IPC calls so far, on all CPUs.
pub fn general_calls() -> u64 {
    GENERAL_CALLS.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

pub fn call(port: &Port, message: [u64; 6], payload: Carried, buffers: CallBuffers) -> Result<([u64; 6], Carried, Pushed), IpcError> {
    // Only this CPU writes its count: no read-modify-write needed.
    let count = &GENERAL_CALLS[crate::arch::percpu::this_cpu_index()];
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    let me = sched::current();
    let stale = {
        let mut slot = me.ipc.lock();
        slot.message = message;
        slot.alias = port.alias;
        slot.request_payload = payload;
        slot.call_buffers = buffers;
        slot.reply_pushed = None;
        slot.server_gone = false;
        me.delivered.store(false, Ordering::Relaxed);
        slot.reply_payload.take()
    };
    drop(stale);
    let ps = &port.portset;
    let server = cpu::without_interrupts(|| {
        let mut inner = ps.inner.lock();
        let server = inner.servers.pop_front();
        if server.is_none() {
            ps.push_client(&mut inner, me.clone());
        }
        server
    });
    let here = crate::arch::percpu::this_cpu_index();
    let result = match server {
        Some(server) => {
            let payload = me.ipc.lock().request_payload.take();
            {
                let mut s = server.ipc.lock();
                s.request_payload = payload;
                s.message = message;
                s.alias = port.alias;
                s.partner = Some(me.clone());
                s.partner_epoch = me.call_epoch.load(Ordering::Relaxed);
                server.delivered.store(true, Ordering::Release);
            }
            if sched::direct_handoff_enabled() && server.may_run_on(here) {
                sched::mark_current_blocked();
                wait_delivered(&me, Some(server))
            } else {
                sched::wake(&server);
                if spin_for_delivery(&me) {
                    Ok(())
                } else {
                    wait_delivered(&me, None)
                }
            }
        }
        // Queued: a server spinning on another CPU may take it at once.
        None => {
            if spin_for_delivery(&me) {
                Ok(())
            } else {
                wait_delivered(&me, None)
            }
        }
    };
    if result.is_err() {
        // Stopped, killed or timed out: withdraw the request, or (a server
        // took it) make sure its reply is dropped and its copies are over.
        ps.withdraw_client(&me);
        wait_for_copies(&me);
    }
    let mut slot = me.ipc.lock();
    // The buffers are the call's only while it lasts: a later call of the
    // fast path (which has none) must not find them.
    slot.call_buffers = CallBuffers::default();
    result?;
    if core::mem::take(&mut slot.server_gone) {
        return Err(IpcError::ServerGone);
    }
    Ok((slot.reply, slot.reply_payload.take(), slot.reply_pushed.take()))
}

/// An exiting thread that took a request and has not replied: its client
/// fails with `ServerGone` instead of waiting forever. Interrupts off.
pub fn abandon_client(me: &Thread) {
    let (client, epoch) = {
        let mut slot = me.ipc.lock();
        (slot.partner.take(), slot.partner_epoch)
    };
    let Some(client) = client else { return };
    {
        let mut slot = client.ipc.lock();
        if client.call_epoch.load(Ordering::Acquire) != epoch {
            return; // it gave up on that call
        }
        slot.server_gone = true;
        client.delivered.store(true, Ordering::Release);
    }
    sched::wake(&client);
}

/// Whether the calling server's current client still waits for its reply
/// (it has not abandoned that call: stopped, killed or timed out). A server
/// that sees a copy of a request late asks before applying it: a copy whose
/// client gave up is stale (its repeat was or will be delivered).
pub fn client_waiting() -> bool {
    let me = sched::current();
    let slot = me.ipc.lock();
    slot.partner.as_ref().is_some_and(|c| c.call_epoch.load(Ordering::Acquire) == slot.partner_epoch)
}

/// A client the fast path parked, woken by anything but the fast path's
/// reply: waits for its reply like `call`. Interrupts off.
pub fn await_reply() -> Result<[u64; 6], IpcError> {
    let me = sched::current();
    if let Err(e) = wait_delivered(&me, None) {
        // Its server holds the request: drop that server's reply.
        cpu::without_interrupts(|| {
            let _slot = me.ipc.lock();
            me.abandon_call();
        });
        wait_for_copies(&me);
        return Err(e);
    }
    let mut slot = me.ipc.lock();
    if core::mem::take(&mut slot.server_gone) {
        return Err(IpcError::ServerGone);
    }
    // A plain call: a payload sent along is not received.
    let discarded = slot.reply_payload.take();
    let reply = slot.reply;
    drop(slot);
    drop(discarded);
    Ok(reply)
}

/// A server the fast path parked, woken by anything but the fast path's
/// call: waits for its request like `reply_wait`. Interrupts off.
pub fn await_request() -> Result<(u64, [u64; 6]), IpcError> {
    let me = sched::current();
    let portset = me.ipc.lock().waiting_on.clone().expect("a parked server waits on a portset");
    // A plain reply_wait: a payload sent along is not received.
    finish_wait(&me, &portset, None).map(|(alias, message, _)| (alias, message))
}

/// Takes `client`'s queued request as the server's current one.
fn accept(me: &Arc<Thread>, (client, epoch): (Arc<Thread>, u64)) -> (u64, [u64; 6], Carried) {
    let (message, alias, payload) = {
        let mut c = client.ipc.lock();
        (c.message, c.alias, c.request_payload.take())
    };
    let mut slot = me.ipc.lock();
    slot.message = message;
    slot.alias = alias;
    slot.partner = Some(client);
    slot.partner_epoch = epoch;
    (alias, message, payload)
}

/// Replies (with `payload`) to the server's current client (if any), then
/// waits for the next request on `portset`. Returns (alias, message, the
/// request's payload). Interrupts off.
/// `pushed` tells the client how its reply's bytes fared ([`push_reply`]).
pub fn reply_wait(portset: &Portset, reply: [u64; 6], mut payload: Carried, pushed: Pushed) -> Result<(u64, [u64; 6], Carried), IpcError> {
    let me = sched::current();
    let (client, epoch, stale) = {
        let mut slot = me.ipc.lock();
        (slot.partner.take(), slot.partner_epoch, slot.request_payload.take())
    };
    drop(stale);
    let mut undelivered = None;
    let client = client.filter(|c| {
        let mut slot = c.ipc.lock();
        if c.call_epoch.load(Ordering::Acquire) != epoch {
            // The client gave up on that call (stopped, killed, timed
            // out): the reply is dropped, never delivered to a later call.
            undelivered = payload.take();
            return false;
        }
        slot.reply = reply;
        slot.reply_payload = payload.take();
        slot.reply_pushed = pushed;
        c.delivered.store(true, Ordering::Release);
        true
    });
    drop(undelivered);
    me.delivered.store(false, Ordering::Relaxed);
    let here = crate::arch::percpu::this_cpu_index();
    // A client blocked on this CPU gets the CPU back directly once we block;
    // one on another CPU is woken now (a no-op while it still spins).
    let (handoff_to, remote_client) = match client {
        Some(c) if sched::direct_handoff_enabled() && c.cpu() == here && c.may_run_on(here) => (Some(c), None),
        other => (None, other),
    };
    if let Some(c) = remote_client {
        sched::wake(&c);
    }
    let queued = cpu::without_interrupts(|| {
        let mut inner = portset.inner.lock();
        portset.pop_client(&mut inner)
    });
    if let Some(next_client) = queued {
        if let Some(c) = &handoff_to {
            sched::wake(c);
        }
        return Ok(accept(&me, next_client));
    }
    if let Some(c) = handoff_to {
        let registered = cpu::without_interrupts(|| {
            let mut inner = portset.inner.lock();
            match portset.pop_client(&mut inner) {
                Some(next) => Err(next),
                None => {
                    sched::mark_current_blocked();
                    inner.servers.push_back(me.clone());
                    Ok(())
                }
            }
        });
        return match registered {
            Err(next) => {
                sched::wake(&c);
                Ok(accept(&me, next))
            }
            Ok(()) => finish_wait(&me, portset, Some(c)),
        };
    }
    for _ in 0..spin_budget() {
        if portset.pending.load(Ordering::Acquire) > 0 {
            let next = cpu::without_interrupts(|| {
                let mut inner = portset.inner.lock();
                portset.pop_client(&mut inner)
            });
            if let Some(next) = next {
                return Ok(accept(&me, next));
            }
        }
        cpu::pause();
    }
    let registered = cpu::without_interrupts(|| {
        let mut inner = portset.inner.lock();
        match portset.pop_client(&mut inner) {
            Some(next) => Err(next),
            None => {
                inner.servers.push_back(me.clone());
                Ok(())
            }
        }
    });
    match registered {
        Err(next) => Ok(accept(&me, next)),
        Ok(()) => finish_wait(&me, portset, None),
    }
}

/// A server registered in `servers` waits for a client to deliver.
fn finish_wait(me: &Arc<Thread>, portset: &Portset, handoff: Option<Arc<Thread>>) -> Result<(u64, [u64; 6], Carried), IpcError> {
    if let Err(e) = wait_delivered(me, handoff) {
        let withdrawn = cpu::without_interrupts(|| {
            let mut inner = portset.inner.lock();
            let before = inner.servers.len();
            inner.servers.retain(|s| !Arc::ptr_eq(s, me));
            inner.servers.len() < before
        });
        if withdrawn {
            return Err(e);
        }
        // A client took this server just before the stop or kill and is
        // delivering its request: receive it (the stop lands once the
        // call returns) rather than restart and answer that client with
        // the previous client's reply.
        wait_for_partner_uninterruptibly(me);
    }
    let mut slot = me.ipc.lock();
    Ok((slot.alias, slot.message, slot.request_payload.take()))
}

/// One-way send (at most once): queues `message` on the port's portset
/// without waiting. Returns false (nothing queued) when the queue is full.
/// Wakes the receiver only if it announced it sleeps.
pub fn send(port: &Port, message: [u64; 6]) -> bool {
    queue_oneway(&port.portset, (port.alias, message))
}

/// Queues one message on `ps` and rings a sleeping receiver; false if full.
fn queue_oneway(ps: &Portset, message: OnewayMessage) -> bool {
    if ps.oneway.try_push(message).is_err() {
        return false;
    }
    if ps.doorbell.notify().0 {
        // The sleeper stays registered until it is awake again (it gives
        // the doorbell up itself), so no other receiver announces in between.
        let receiver = cpu::without_interrupts(|| ps.oneway_receiver.lock().clone());
        if let Some(r) = receiver {
            sched::wake(&r);
        }
    }
    true
}

/// Takes up to `max` queued one-way messages, oldest first, as (alias,
/// words): a portset's queue is kernel-held state a parent exports.
pub fn take_queued(portset: &Portset, max: usize) -> alloc::vec::Vec<OnewayMessage> {
    core::iter::from_fn(|| portset.oneway.try_pop()).take(max).collect()
}

/// Queues `messages` in order, as if they had been sent (to rebuild a
/// portset from exported state); returns how many fit.
pub fn put_queued(portset: &Portset, messages: &[OnewayMessage]) -> usize {
    messages.iter().take_while(|m| queue_oneway(portset, **m)).count()
}

/// Receives the next one-way message on `portset`: polls, spins briefly,
/// then sleeps until a sender rings. Interrupts off.
pub fn receive(portset: &Portset) -> Result<(u64, [u64; 6]), IpcError> {
    let me = sched::current();
    loop {
        if let Some(m) = portset.oneway.try_pop() {
            portset.hand_over_doorbell();
            return Ok(m);
        }
        for _ in 0..spin_budget() {
            if !portset.oneway.is_empty() {
                break;
            }
            cpu::pause();
        }
        if let Some(m) = portset.oneway.try_pop() {
            portset.hand_over_doorbell();
            return Ok(m);
        }
        if me.kill_requested() || me.stop_requested() {
            portset.hand_over_doorbell();
            return Err(IpcError::Interrupted);
        }
        // One receiver at a time sleeps on the doorbell; the others stand
        // by until it leaves (it then wakes one), so no sleeper is displaced.
        let someone_else_sleeps = || portset.oneway_receiver.lock().as_ref().is_some_and(|t| !Arc::ptr_eq(t, &me));
        {
            let mut sleeper = portset.oneway_receiver.lock();
            if sleeper.as_ref().is_some_and(|t| !Arc::ptr_eq(t, &me)) {
                drop(sleeper);
                portset.standby_count.fetch_add(1, Ordering::AcqRel);
                portset.standby.wait_if(|| someone_else_sleeps() && portset.oneway.is_empty());
                portset.standby_count.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            // Blocked and registered before announcing: a ring between the
            // commit and the switch finds us blocked and wakes us.
            sched::mark_current_blocked();
            *sleeper = Some(me.clone());
        }
        let ticket = portset.doorbell.prepare_to_sleep();
        // A kill or stop that came before the block above may have missed
        // it: cancel the sleep then too (the loop's head ends the call).
        match ticket.commit_or_cancel(!portset.oneway.is_empty() || me.kill_requested() || me.stop_requested()) {
            fastpath::doorbell::SleepDecision::Sleep => sched::schedule(),
            _ => {
                let _ = sched::wake(&me);
                sched::schedule();
            }
        }
        // Awake before giving up the doorbell: a receiver that takes it over
        // next announces its sleep after this, never before.
        let _ = portset.doorbell.woken();
        {
            let mut sleeper = portset.oneway_receiver.lock();
            if sleeper.as_ref().is_some_and(|t| Arc::ptr_eq(t, &me)) {
                *sleeper = None;
            }
        }
    }
}
