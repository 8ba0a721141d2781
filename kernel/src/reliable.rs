//! Reliable IPC: half-duplex connections between two threads (Fluke's
//! third flavour, after one-way and idempotent).
//!
//! A client thread connects through a port with a first message; a server
//! thread waiting on the portset accepts it. From then on one end at a time
//! is the *sender*: each message goes to the receiver exactly once and in
//! order, handed over when both are in the kernel (a rendezvous, so the
//! sender is held until the receiver takes it: flow control without kernel
//! buffers). A message sent with OVER reverses the direction. Either end
//! may disconnect: the other's next receive says so; a sender whose
//! receiver disconnected gets `Dead` (its message is lost, as in Fluke).
//!
//! The connection is thread state. A thread has two *sides*: 0, the
//! connection it made as a client, and 1, the one it accepted as a server.
//! A message in transit stays in the blocked sender's registers until the
//! receiver takes it, so a stopped thread is always exported as about to
//! make its call again (Fluke's atomic API), and `thread_get_connection` /
//! `thread_set_connection` export and rebuild the links themselves.

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::Ordering;

use crate::ipc::{self, Carried, Port, Portset};
use crate::sched::{self, Thread};

pub const CLIENT_SIDE: usize = 0;
pub const SERVER_SIDE: usize = 1;

/// `send` flag: the receiver becomes the sender after this message.
pub const OVER: u64 = 1;

/// What a receive returns besides the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Data,
    /// The last message of this direction: the receiver sends next.
    Over,
    /// The other end disconnected (no message).
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    /// The caller was stopped or killed while it waited (nothing happened).
    Interrupted,
    /// No connection on that side, or the caller is not the end that may
    /// do this now (a receiver sending, a sender receiving, connecting twice).
    WrongState,
    /// The other end disconnected or exited.
    Gone,
}

/// Threads waiting to connect and to accept on one portset.
#[derive(Default)]
pub struct Rendezvous {
    connectors: VecDeque<Arc<Thread>>,
    acceptors: VecDeque<Arc<Thread>>,
}

/// One connection between a client end and a server end.
pub struct Connection {
    state: spin::Mutex<ConnState>,
}

struct ConnState {
    /// The threads at the client and server ends (an end not yet attached,
    /// while a rebuilt pair is being linked, is empty).
    ends: [Weak<Thread>; 2],
    /// Which end sends now.
    sender: usize,
    /// The sender is blocked with this message (and its flags) until the
    /// receiver takes it.
    pending: Option<([u64; 6], u64, Carried)>,
    /// The receiver is blocked waiting for a message.
    receiving: bool,
    closed: bool,
}

/// Per-thread connection state (in its IPC slot).
#[derive(Default)]
pub struct Links {
    /// By side: the connection and which end of it this thread is.
    pub sides: [Option<Arc<Connection>>; 2],
    /// A connection offered to a waiting connector or acceptor, with the
    /// first message's alias and words (acceptor).
    offer: Option<Arc<Connection>>,
    /// What a blocked receiver was handed.
    inbox: Option<(Received, [u64; 6], Carried)>,
    /// The first message a connector waits to hand over.
    first: [u64; 6],
    alias: u64,
}

impl Connection {
    fn new(client: &Arc<Thread>, server: &Arc<Thread>) -> Arc<Connection> {
        Arc::new(Connection {
            state: spin::Mutex::new(ConnState {
                ends: [Arc::downgrade(client), Arc::downgrade(server)],
                sender: CLIENT_SIDE,
                pending: None,
                receiving: false,
                closed: false,
            }),
        })
    }
}

fn links(t: &Thread) -> spin::MutexGuard<'_, crate::sched::IpcSlot> {
    t.ipc.lock()
}

/// `connect(port, first)`: waits for a server accepting on the port's
/// portset, hands it `first` and becomes the connection's sender.
pub fn connect(port: &Port, first: [u64; 6]) -> Result<(), ConnError> {
    let me = sched::current();
    if links(&me).links.sides[CLIENT_SIDE].is_some() {
        return Err(ConnError::WrongState);
    }
    me.delivered.store(false, Ordering::Relaxed);
    let ps = &port.portset;
    let acceptor = {
        let mut r = ps.rendezvous.lock();
        let a = r.acceptors.pop_front();
        if a.is_none() {
            let mut slot = links(&me);
            (slot.links.first, slot.links.alias) = (first, port.alias);
            drop(slot);
            r.connectors.push_back(me.clone());
        }
        a
    };
    if let Some(server) = acceptor {
        let conn = Connection::new(&me, &server);
        links(&me).links.sides[CLIENT_SIDE] = Some(conn.clone());
        let mut s = links(&server);
        (s.links.first, s.links.alias, s.links.offer) = (first, port.alias, Some(conn));
        drop(s);
        server.delivered.store(true, Ordering::Release);
        sched::wake(&server);
        return Ok(());
    }
    match ipc::wait_for_partner(&me, true) {
        Ok(()) => {}
        // Still queued: withdraw. Gone from the queue: an acceptor took us
        // and is about to say so; the connection stands.
        Err(_) if withdraw(&ps.rendezvous, &me, true) => return Err(ConnError::Interrupted),
        Err(_) => ipc::wait_for_partner_uninterruptibly(&me),
    }
    let offer = links(&me).links.offer.take().expect("an acceptor offers a connection");
    links(&me).links.sides[CLIENT_SIDE] = Some(offer);
    Ok(())
}

/// Whether the other end may be running on another CPU (worth spinning for).
fn peer_remote(c: &ConnState, side: usize) -> bool {
    c.ends[1 - side].upgrade().is_none_or(|p| p.cpu() != crate::arch::percpu::this_cpu_index())
}

/// Removes `me` from the connectors (or acceptors) if it is still queued.
fn withdraw(r: &spin::Mutex<Rendezvous>, me: &Arc<Thread>, connector: bool) -> bool {
    let mut r = r.lock();
    let queue = if connector { &mut r.connectors } else { &mut r.acceptors };
    let before = queue.len();
    queue.retain(|t| !Arc::ptr_eq(t, me));
    queue.len() < before
}

/// `accept(portset)`: waits for a connecting client; returns the alias of
/// the port it came through and its first message. The caller receives next.
pub fn accept(portset: &Portset) -> Result<(u64, [u64; 6]), ConnError> {
    let me = sched::current();
    if links(&me).links.sides[SERVER_SIDE].is_some() {
        return Err(ConnError::WrongState);
    }
    me.delivered.store(false, Ordering::Relaxed);
    let connector = {
        let mut r = portset.rendezvous.lock();
        let c = r.connectors.pop_front();
        if c.is_none() {
            r.acceptors.push_back(me.clone());
        }
        c
    };
    if let Some(client) = connector {
        let conn = Connection::new(&client, &me);
        let (first, alias) = {
            let mut c = links(&client);
            c.links.offer = Some(conn.clone());
            (c.links.first, c.links.alias)
        };
        client.delivered.store(true, Ordering::Release);
        sched::wake(&client);
        links(&me).links.sides[SERVER_SIDE] = Some(conn);
        return Ok((alias, first));
    }
    match ipc::wait_for_partner(&me, true) {
        Ok(()) => {}
        Err(_) if withdraw(&portset.rendezvous, &me, false) => return Err(ConnError::Interrupted),
        Err(_) => ipc::wait_for_partner_uninterruptibly(&me),
    }
    let mut slot = links(&me);
    let conn = slot.links.offer.take().expect("a connector offers a connection");
    slot.links.sides[SERVER_SIDE] = Some(conn);
    Ok((slot.links.alias, slot.links.first))
}

/// The caller's connection on `side` and which end of it the caller is.
fn side_of(me: &Thread, side: usize) -> Result<Arc<Connection>, ConnError> {
    links(me).links.sides.get(side).cloned().flatten().ok_or(ConnError::WrongState)
}

/// `send(side, message, flags, payload)`: hands `message` (and the
/// payload) to the receiver, waiting until it takes it. With OVER the
/// caller receives next.
pub fn send(side: usize, message: [u64; 6], flags: u64, payload: Carried) -> Result<(), ConnError> {
    let me = sched::current();
    let conn = side_of(&me, side)?;
    me.delivered.store(false, Ordering::Relaxed);
    let (receiver, remote) = {
        let mut c = conn.state.lock();
        let remote = peer_remote(&c, side);
        if c.closed {
            drop(c);
            forget(&me, side);
            return Err(ConnError::Gone);
        }
        if c.sender != side || c.pending.is_some() {
            return Err(ConnError::WrongState);
        }
        if flags & OVER != 0 {
            c.sender = 1 - side;
        }
        if c.receiving {
            c.receiving = false;
            let receiver = c.ends[1 - side].upgrade();
            if let Some(r) = &receiver {
                links(r).links.inbox = Some((if flags & OVER != 0 { Received::Over } else { Received::Data }, message, payload));
            }
            (Some(receiver), remote)
        } else {
            c.pending = Some((message, flags, payload));
            (None, remote)
        }
    };
    match receiver {
        Some(Some(r)) => {
            r.delivered.store(true, Ordering::Release);
            sched::wake(&r);
            return Ok(());
        }
        Some(None) => return Err(ConnError::Gone),
        None => {}
    }
    match ipc::wait_for_partner(&me, remote) {
        Ok(()) => {}
        Err(_) => {
            let mut c = conn.state.lock();
            if let Some(untaken) = c.pending.take() {
                // Not taken: the call never happened.
                if flags & OVER != 0 {
                    c.sender = side;
                }
                drop(c);
                drop(untaken);
                return Err(ConnError::Interrupted);
            }
            drop(c);
            // Taken (the receiver is about to say so) or dropped by a disconnect.
            ipc::wait_for_partner_uninterruptibly(&me);
        }
    }
    if links(&me).links.inbox.take().is_some_and(|(r, _, _)| r == Received::Disconnected) {
        forget(&me, side);
        return Err(ConnError::Gone);
    }
    Ok(())
}

/// `receive(side)`: the next message (and its payload) from the sender, or
/// `Disconnected`.
pub fn receive(side: usize) -> Result<(Received, [u64; 6], Carried), ConnError> {
    let me = sched::current();
    let conn = side_of(&me, side)?;
    me.delivered.store(false, Ordering::Relaxed);
    let (taken, remote) = {
        let mut c = conn.state.lock();
        let remote = peer_remote(&c, side);
        if let Some((message, flags, payload)) = c.pending.take() {
            let sender = c.ends[1 - side].upgrade();
            drop(c);
            if let Some(s) = sender {
                s.delivered.store(true, Ordering::Release);
                sched::wake(&s);
            }
            (Some((if flags & OVER != 0 { Received::Over } else { Received::Data }, message, payload)), remote)
        } else if c.closed {
            drop(c);
            forget(&me, side);
            return Ok((Received::Disconnected, [0; 6], None));
        } else if c.sender == side {
            return Err(ConnError::WrongState);
        } else {
            c.receiving = true;
            (None, remote)
        }
    };
    if let Some(received) = taken {
        return Ok(received);
    }
    match ipc::wait_for_partner(&me, remote) {
        Ok(()) => {}
        Err(_) => {
            let mut c = conn.state.lock();
            if c.receiving {
                c.receiving = false;
                return Err(ConnError::Interrupted);
            }
            drop(c);
            ipc::wait_for_partner_uninterruptibly(&me);
        }
    }
    let received = links(&me).links.inbox.take().unwrap_or((Received::Disconnected, [0; 6], None));
    if received.0 == Received::Disconnected {
        forget(&me, side);
    }
    Ok(received)
}

/// `disconnect(side)`: ends the connection; a receiver waiting at the other
/// end learns it, a sender waiting there fails with `Gone`.
pub fn disconnect(side: usize) -> Result<(), ConnError> {
    let me = sched::current();
    let conn = links(&me).links.sides.get_mut(side).and_then(Option::take).ok_or(ConnError::WrongState)?;
    close(&conn, side);
    Ok(())
}

/// Closes `conn` from end `side` and wakes the other end if it waits.
fn close(conn: &Connection, side: usize) {
    let (waiting, lost) = {
        let mut c = conn.state.lock();
        if c.closed {
            return;
        }
        c.closed = true;
        let waiting = c.receiving || c.pending.is_some();
        c.receiving = false;
        let lost = c.pending.take();
        (if waiting { c.ends[1 - side].upgrade() } else { None }, lost)
    };
    // A message the receiver never took is lost with the connection.
    drop(lost);
    if let Some(peer) = waiting {
        links(&peer).links.inbox = Some((Received::Disconnected, [0; 6], None));
        peer.delivered.store(true, Ordering::Release);
        sched::wake(&peer);
    }
}

/// Drops the caller's link on `side` (its connection is closed).
fn forget(me: &Thread, side: usize) {
    let gone = links(me).links.sides[side].take();
    drop(gone);
}

/// An exiting thread disconnects both its sides.
pub fn on_exit(me: &Thread) {
    let sides = core::mem::take(&mut links(me).links.sides);
    for (side, conn) in sides.iter().enumerate() {
        if let Some(c) = conn {
            close(c, side);
        }
    }
}

/// A stopped thread's link on `side`, for export: the thread at the other
/// end (if attached), whether this end sends now, and whether it is closed.
pub fn get_link(t: &Thread, side: usize) -> Option<(Option<Arc<Thread>>, bool, bool)> {
    let conn = links(t).links.sides.get(side).cloned().flatten()?;
    let c = conn.state.lock();
    Some((c.ends[1 - side].upgrade(), c.sender == side, c.closed))
}

/// Rebuilds a stopped thread's link on `side` to `peer` (None clears it):
/// it joins the peer's opposite link if that one already names `t` (the
/// roles must agree), else it starts a connection the peer's link joins later.
pub fn set_link(t: &Arc<Thread>, side: usize, peer: Option<&Arc<Thread>>, sending: bool) -> Result<(), ConnError> {
    let old = links(t).links.sides.get_mut(side).and_then(Option::take);
    if let Some(c) = old {
        close(&c, side);
    }
    let Some(peer) = peer else { return Ok(()) };
    if Arc::ptr_eq(t, peer) {
        return Err(ConnError::WrongState);
    }
    let theirs = links(peer).links.sides[1 - side].clone();
    let conn = match theirs {
        Some(c) => {
            let mut s = c.state.lock();
            let names_us = s.ends[side].upgrade().is_some_and(|x| Arc::ptr_eq(&x, t));
            let unattached = s.ends[side].strong_count() == 0;
            if !(names_us || unattached) || (s.sender == side) != sending || s.closed {
                return Err(ConnError::WrongState);
            }
            s.ends[side] = Arc::downgrade(t);
            drop(s);
            c
        }
        None => {
            let (client, server) = if side == CLIENT_SIDE { (t, peer) } else { (peer, t) };
            let c = Connection::new(client, server);
            {
                let mut s = c.state.lock();
                s.sender = if sending { side } else { 1 - side };
                // The peer attaches when its own link is set.
                s.ends[1 - side] = Weak::new();
            }
            c
        }
    };
    links(t).links.sides[side] = Some(conn);
    Ok(())
}
