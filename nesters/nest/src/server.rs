//! A server: one portset, a pool of threads receiving on it, and the
//! deduplication of sequenced requests.
//!
//! Every thread of the pool waits in `ipc_reply_wait` on the portset. A
//! request may block its thread (a pipe read, a wait for a child); the pool
//! keeps at least one thread free to receive by starting another whenever
//! the last free one takes a request, up to [`MAX_THREADS`]. So one client
//! that blocks never stops the server for the others, and clients on every
//! CPU are served at once.
//!
//! Sequenced requests (word 1 ≠ 0): a client stopped after the server took
//! its request calls again when it resumes (PROTOCOLS.md), so one request
//! may reach the pool twice, and the two copies may be handled by two pool
//! threads at once or arrive in either order (the first copy's thread may be
//! preempted between its receive and its dispatch while the client goes on).
//! So the pool keeps, per port alias, the numbers it is handling now and a
//! window of the last [`WINDOW`] answered numbers with their reply words
//! (payloads only for the newest, at most [`WINDOW_BYTES`]): a number in
//! the window gets its remembered reply without calling the service; a
//! number being handled waits for that copy to finish and then gets its
//! reply. A late first copy (its thread preempted between receive and
//! dispatch while the client's repeat was answered and the client went on)
//! needs only the number: its reply goes to the stopped copy and is dropped.
//! One that comes later still, its number out of the window, arrives out of
//! order (a higher number of the same counter was answered): the pool asks
//! the kernel whether that copy's client still waits (`client_waiting`) and
//! drops the copy if not. A repeat
//! whose payload was evicted meanwhile (other clients of the same alias
//! read more than [`WINDOW_BYTES`] since) gets `Gone` rather than a second
//! effect or wrong bytes. Replies that carry
//! a capability are not remembered (the capability went to the stopped
//! copy): services whose such requests are not idempotent replay them
//! themselves.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use matryoshka_rt::ipc::{self, Payload};
use matryoshka_rt::object::{self as obj, Handle};
use matryoshka_rt::sync::{Cond, Mutex};

use crate::proto::{reply_err, Error, Words, MAX_PAYLOAD};

/// Most threads one server runs.
pub const MAX_THREADS: usize = 256;
/// Most answered requests remembered per alias (their words: 80 bytes each).
pub const WINDOW: usize = 256;
/// Most reply payload bytes remembered per alias (the newest reply's are kept whatever their size).
pub const WINDOW_BYTES: usize = 128 * 1024;
/// Stack of each pool thread.
const STACK_BYTES: usize = 64 * 1024;

/// A request as the service sees it.
pub struct Request<'a> {
    /// The alias of the port it came through (the server's name for the client or object).
    pub alias: u64,
    pub words: Words,
    pub bytes: &'a [u8],
    /// A capability that came with it (now the server's handle; the service owns it).
    pub handle: Option<Handle>,
}

impl Request<'_> {
    pub fn op(&self) -> u64 {
        self.words[0]
    }
    pub fn seq(&self) -> u64 {
        self.words[1]
    }
    /// The payload as a path or name (UTF-8, no NUL, at most `max` bytes).
    pub fn text(&self, max: usize) -> Result<&str, Error> {
        if self.bytes.len() > max {
            return Err(Error::TooLong);
        }
        let s = core::str::from_utf8(self.bytes).map_err(|_| Error::Invalid)?;
        if s.contains('\0') {
            return Err(Error::Invalid);
        }
        Ok(s)
    }
}

/// A reply: words, payload bytes, and a capability to pass (closed in the
/// server after it was sent when `close_after` is set: servers hand out new
/// ports that way and keep no handle to them).
pub struct Reply {
    pub words: Words,
    pub bytes: Vec<u8>,
    pub handle: Option<Handle>,
    pub close_after: bool,
}

impl Reply {
    pub fn ok(results: [u64; 5]) -> Reply {
        Reply { words: crate::proto::reply_ok(results), bytes: Vec::new(), handle: None, close_after: false }
    }
    pub fn err(e: Error) -> Reply {
        Reply { words: reply_err(e), bytes: Vec::new(), handle: None, close_after: false }
    }
    pub fn from(r: Result<Reply, Error>) -> Reply {
        r.unwrap_or_else(Reply::err)
    }
    pub fn with_bytes(mut self, bytes: Vec<u8>) -> Reply {
        self.bytes = bytes;
        self
    }
    /// Passes `h` and closes the server's handle once it is sent.
    pub fn giving(mut self, h: Handle) -> Reply {
        self.handle = Some(h);
        self.close_after = true;
        self
    }
    /// Passes a copy of `h`; the server keeps its handle.
    pub fn lending(mut self, h: Handle) -> Reply {
        self.handle = Some(h);
        self.close_after = false;
        self
    }
}

/// What a server does with each request. Called from any pool thread at
/// once: implementations lock their own state.
pub trait Service: Sync + Send + 'static {
    fn handle(&self, req: Request) -> Reply;
    /// The alias will not be used again (its object was closed): forget
    /// what is remembered for it.
    fn sequenced(&self, _op: u64) -> bool {
        true
    }
}

/// A remembered reply.
struct Answered {
    seq: u64,
    words: Words,
    /// The reply payload, `None` once evicted (see [`WINDOW_BYTES`]).
    bytes: Option<Vec<u8>>,
}

/// What the pool knows of one alias's sequenced requests.
#[derive(Default)]
struct AliasLog {
    /// Numbers a pool thread is handling now.
    in_flight: Vec<u64>,
    /// Recent answers, oldest first.
    answered: VecDeque<Answered>,
    /// Payload bytes held in `answered`.
    bytes: usize,
}

impl AliasLog {
    fn find(&self, seq: u64) -> Option<&Answered> {
        self.answered.iter().rev().find(|a| a.seq == seq)
    }
    /// Whether a number just above `seq` (the same client's counter) was
    /// answered: `seq` then arrives out of order, maybe a late stale copy.
    fn answered_after(&self, seq: u64) -> bool {
        self.answered.iter().any(|a| a.seq.wrapping_sub(seq).wrapping_sub(1) < 1 << 32)
    }
    fn remember(&mut self, a: Answered) {
        self.bytes += a.bytes.as_ref().map_or(0, Vec::len);
        self.answered.push_back(a);
        if self.answered.len() > WINDOW {
            if let Some(old) = self.answered.pop_front() {
                self.bytes -= old.bytes.as_ref().map_or(0, Vec::len);
            }
        }
        // Drop the oldest payloads first; the newest is always kept.
        let newest = self.answered.len() - 1;
        for a in self.answered.iter_mut().take(newest) {
            if self.bytes <= WINDOW_BYTES {
                break;
            }
            if a.bytes.as_ref().is_some_and(|b| !b.is_empty()) {
                self.bytes -= a.bytes.take().map_or(0, |b| b.len());
            }
        }
    }
}

struct Pool {
    portset: Handle,
    space: Handle,
    service: &'static dyn Service,
    free: AtomicUsize,
    threads: AtomicUsize,
    logs: Mutex<BTreeMap<u64, AliasLog>>,
    /// Signalled whenever a sequenced request is answered (its repeats wait on it).
    answered: Cond,
}

/// Forgets the remembered replies of `alias` (call when its object closes).
pub fn forget(server: &Server, alias: u64) {
    server.0.logs.lock().remove(&alias);
}

/// A running server (to reach its pool's bookkeeping).
#[derive(Clone, Copy)]
pub struct Server(&'static Pool);

impl Server {
    /// Threads the pool runs now.
    pub fn threads(&self) -> usize {
        self.0.threads.load(Ordering::Relaxed)
    }
    pub fn forget(&self, alias: u64) {
        forget(self, alias)
    }
}

/// Starts serving `portset` with `service` on `threads` threads (at least
/// one) in this program's space `space` (which needs CREATE); returns at
/// once. The pool grows as requests block.
pub fn start(space: Handle, portset: Handle, service: &'static dyn Service, threads: usize) -> Result<Server, Error> {
    let logs = Mutex::new(BTreeMap::new()).map_err(Error::from)?;
    let answered = Cond::new().map_err(Error::from)?;
    let pool: &'static Pool =
        Box::leak(Box::new(Pool { portset, space, service, free: AtomicUsize::new(0), threads: AtomicUsize::new(0), logs, answered }));
    for _ in 0..threads.max(1) {
        spawn_thread(pool)?;
    }
    Ok(Server(pool))
}

/// Serves `portset` on the calling thread too (never returns); the pool
/// still grows with extra threads as requests block.
pub fn run(space: Handle, portset: Handle, service: &'static dyn Service, threads: usize) -> ! {
    match start(space, portset, service, threads.saturating_sub(1)) {
        Ok(server) => serve(server.0),
        Err(e) => {
            matryoshka_rt::println!("server: cannot start its threads: {e}");
            matryoshka_rt::exit(1)
        }
    }
}

fn spawn_thread(pool: &'static Pool) -> Result<(), Error> {
    if pool.threads.fetch_add(1, Ordering::AcqRel) >= MAX_THREADS {
        pool.threads.fetch_sub(1, Ordering::AcqRel);
        return Err(Error::NoMemory);
    }
    let stack = vec![0u8; STACK_BYTES].leak();
    let top = (stack.as_ptr() as u64 + STACK_BYTES as u64) & !15;
    match obj::thread_create(pool.space, pool_thread, top - 8, pool as *const Pool as u64) {
        Ok(h) => {
            let _ = obj::close(h);
            Ok(())
        }
        Err(e) => {
            pool.threads.fetch_sub(1, Ordering::AcqRel);
            Err(e.into())
        }
    }
}

extern "C" fn pool_thread(arg: u64) -> ! {
    // SAFETY: `arg` is the leaked, never-freed Pool that `spawn_thread` passed.
    let pool: &'static Pool = unsafe { &*(arg as *const Pool) };
    serve(pool)
}

fn serve(pool: &'static Pool) -> ! {
    let mut recv = vec![0u8; MAX_PAYLOAD];
    let mut reply = Reply::ok([0; 5]);
    let mut first = true;
    loop {
        pool.free.fetch_add(1, Ordering::AcqRel);
        let mut payload = Payload { send: &reply.bytes, handle: reply.handle, recv: &mut recv };
        let received = if first {
            // Nothing to reply to yet: the kernel drops a reply with no client.
            first = false;
            ipc::reply_wait_payload(pool.portset, [0; 6], &mut payload)
        } else {
            ipc::reply_wait_payload(pool.portset, reply.words, &mut payload)
        };
        if reply.close_after {
            if let Some(h) = reply.handle {
                let _ = obj::close(h);
            }
        }
        let (alias, words, got) = match received {
            Ok(r) => r,
            Err(e) => {
                // The portset is gone (the server is being torn down) or the
                // thread was killed: nothing more to serve.
                pool.free.fetch_sub(1, Ordering::AcqRel);
                matryoshka_rt::println!("server: receive failed ({e:?}); thread ends");
                pool.threads.fetch_sub(1, Ordering::AcqRel);
                matryoshka_rt::exit(0)
            }
        };
        if pool.free.fetch_sub(1, Ordering::AcqRel) == 1 {
            // We were the last free thread: make sure someone is receiving
            // while this request runs (it may block).
            let _ = spawn_thread(pool);
        }
        let len = got.len.min(recv.len());
        let req = Request { alias, words, bytes: &recv[..len], handle: got.handle };
        reply = dispatch(pool, req);
    }
}

fn dispatch(pool: &'static Pool, req: Request) -> Reply {
    let (alias, seq, op) = (req.alias, req.seq(), req.op());
    if seq == 0 || !pool.service.sequenced(op) {
        return pool.service.handle(req);
    }
    {
        let mut logs = pool.logs.lock();
        loop {
            let log = logs.entry(alias).or_default();
            if let Some(a) = log.find(seq) {
                return match &a.bytes {
                    Some(bytes) => Reply { words: a.words, bytes: bytes.clone(), handle: None, close_after: false },
                    None => Reply::err(Error::Gone),
                };
            }
            if !log.in_flight.contains(&seq) {
                // Out of order: a late copy whose client gave up on it (and
                // whose repeat was answered, perhaps beyond the window)
                // must not apply a second time. Its reply is dropped anyway.
                if log.answered_after(seq) && !ipc::client_waiting() {
                    return Reply::err(Error::Gone);
                }
                log.in_flight.push(seq);
                break;
            }
            // Another copy of this request is being handled: its answer is ours.
            logs = pool.answered.wait(logs);
        }
    }
    let reply = pool.service.handle(req);
    {
        let mut logs = pool.logs.lock();
        // Gone if the alias was forgotten meanwhile (its object closed).
        if let Some(log) = logs.get_mut(&alias) {
            log.in_flight.retain(|&s| s != seq);
            if reply.handle.is_none() {
                log.remember(Answered { seq, words: reply.words, bytes: Some(reply.bytes.clone()) });
            }
        }
    }
    pool.answered.notify_all();
    reply
}
