//! Ports, portsets and synchronous (idempotent) IPC: call, and
//! reply-and-wait, with six-word messages carried in registers.
//!
//! Clients call a *port*; server threads wait on the *portset* the port
//! belongs to and learn from the port's *alias* which port a request came
//! through. When a server is already waiting, the client hands its CPU
//! straight to it (`sched::block_and_handoff`: no run queue), and the reply
//! hands it straight back — the same-CPU fast path; `fastpath=off` on the
//! command line routes every wake-up through the run queue instead, for
//! comparison. Cross-CPU requests wake the server on its own CPU.

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::sync::Arc;

use crate::arch::cpu;
use crate::sched::{self, Thread};

/// Where clients queue and servers wait.
pub struct Portset {
    inner: spin::Mutex<PortsetInner>,
}

struct PortsetInner {
    /// Servers blocked in reply-and-wait, oldest first.
    servers: VecDeque<Arc<Thread>>,
    /// Clients whose request no server has taken yet (request in their slot).
    clients: VecDeque<Arc<Thread>>,
}

pub struct Port {
    pub portset: Arc<Portset>,
    pub alias: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcError {
    /// The caller was killed while it waited.
    Interrupted,
}

impl Default for Portset {
    fn default() -> Self {
        Self::new()
    }
}

impl Portset {
    pub fn new() -> Portset {
        Portset { inner: spin::Mutex::new(PortsetInner { servers: VecDeque::new(), clients: VecDeque::new() }) }
    }
}

/// Blocks (the caller is already marked blocked) until `delivered` is set
/// in the caller's slot, or the caller is killed.
fn wait_delivered(me: &Arc<Thread>, handoff: Option<Arc<Thread>>) -> Result<(), IpcError> {
    match handoff {
        Some(next) => sched::block_and_handoff(&next),
        None => sched::schedule(),
    }
    loop {
        if me.ipc.lock().delivered {
            return Ok(());
        }
        if me.kill_requested() {
            return Err(IpcError::Interrupted);
        }
        // Spurious wake-up: block again until the partner delivers.
        sched::mark_current_blocked();
        if me.ipc.lock().delivered {
            // Delivered between the check and the block: undo and return.
            let _ = sched::wake(me);
            sched::schedule();
            return Ok(());
        }
        sched::schedule();
    }
}

/// Sends `message` through `port` and waits for the reply. Interrupts off.
pub fn call(port: &Port, message: [u64; 6]) -> Result<[u64; 6], IpcError> {
    let me = sched::current();
    {
        let mut slot = me.ipc.lock();
        slot.message = message;
        slot.delivered = false;
    }
    let server = {
        let mut ps = port.portset.inner.lock();
        sched::mark_current_blocked();
        match ps.servers.pop_front() {
            Some(server) => Some(server),
            None => {
                me.ipc.lock().alias = port.alias;
                ps.clients.push_back(me.clone());
                None
            }
        }
    };
    if let Some(server) = &server {
        let mut s = server.ipc.lock();
        s.message = message;
        s.alias = port.alias;
        s.partner = Some(me.clone());
        s.delivered = true;
    }
    let result = wait_delivered(&me, server);
    if result.is_err() {
        // Killed before a server took the request: withdraw it.
        cpu::without_interrupts(|| port.portset.inner.lock().clients.retain(|c| !Arc::ptr_eq(c, &me)));
    }
    result?;
    let reply = me.ipc.lock().reply;
    Ok(reply)
}

/// Replies to the server's current client (if any), then waits for the next
/// request on `portset`. Returns (alias, message). Interrupts off.
pub fn reply_wait(portset: &Portset, reply: [u64; 6]) -> Result<(u64, [u64; 6]), IpcError> {
    let me = sched::current();
    let client = me.ipc.lock().partner.take();
    if let Some(c) = &client {
        let mut slot = c.ipc.lock();
        slot.reply = reply;
        slot.delivered = true;
    }
    me.ipc.lock().delivered = false;
    let queued = {
        let mut ps = portset.inner.lock();
        match ps.clients.pop_front() {
            Some(next_client) => Some(next_client),
            None => {
                sched::mark_current_blocked();
                ps.servers.push_back(me.clone());
                None
            }
        }
    };
    if let Some(next_client) = queued {
        // A request was already waiting: take it and keep running.
        let (message, alias) = {
            let c = next_client.ipc.lock();
            (c.message, c.alias)
        };
        let mut slot = me.ipc.lock();
        slot.message = message;
        slot.alias = alias;
        slot.partner = Some(next_client);
        drop(slot);
        if let Some(c) = client {
            sched::wake(&c);
        }
        let slot = me.ipc.lock();
        let received = (slot.alias, slot.message);
        drop(slot);
        return Ok(received);
    }
    let result = wait_delivered(&me, client);
    if result.is_err() {
        cpu::without_interrupts(|| portset.inner.lock().servers.retain(|s| !Arc::ptr_eq(s, &me)));
    }
    result?;
    let slot = me.ipc.lock();
    let received = (slot.alias, slot.message);
    drop(slot);
    Ok(received)
}
