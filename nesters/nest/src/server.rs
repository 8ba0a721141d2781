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
use alloc::sync::Arc;
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
    /// Its payload; all of it, unless the service reads this request's
    /// payload itself ([`Service::reads_payload`]): then the first bytes
    /// (at most its [`Service::receive_capacity`]), the rest still in the
    /// client's memory for `ipc::request_read`.
    pub bytes: &'a [u8],
    /// The payload's whole length.
    pub len: usize,
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
    pub bytes: ReplyBytes,
    pub handle: Option<Handle>,
    pub close_after: bool,
}

/// A reply's payload: the service's own bytes, or bytes shared with the
/// deduplication window (a remembered reply is sent again without a copy).
pub enum ReplyBytes {
    Owned(Vec<u8>),
    Shared(Shared),
}

/// Bytes of a page a service shares with its replies (a file server's
/// file pages): a reply sends part of one without copying it.
pub const PAGE: usize = 4096;
pub type Page = Arc<[u8; PAGE]>;

/// Payload bytes shared by a reply and the window.
#[derive(Clone)]
pub enum Shared {
    /// A service's vector, shared as it is when the reply is remembered.
    Vec(Arc<Vec<u8>>),
    /// Bytes a service put in one shared allocation itself ([`Reply::with_shared`]).
    Slice(Arc<[u8]>),
    /// `[start, end)` of a page ([`Reply::with_page`]).
    Page(Page, u16, u16),
}

impl core::ops::Deref for Shared {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Shared::Vec(v) => v,
            Shared::Slice(s) => s,
            Shared::Page(p, start, end) => &p[*start as usize..*end as usize],
        }
    }
}

impl core::ops::Deref for ReplyBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReplyBytes::Owned(v) => v,
            ReplyBytes::Shared(a) => a,
        }
    }
}

impl Reply {
    pub fn ok(results: [u64; 5]) -> Reply {
        Reply { words: crate::proto::reply_ok(results), bytes: ReplyBytes::Owned(Vec::new()), handle: None, close_after: false }
    }
    pub fn err(e: Error) -> Reply {
        Reply { words: reply_err(e), bytes: ReplyBytes::Owned(Vec::new()), handle: None, close_after: false }
    }
    pub fn from(r: Result<Reply, Error>) -> Reply {
        r.unwrap_or_else(Reply::err)
    }
    pub fn with_bytes(mut self, bytes: Vec<u8>) -> Reply {
        self.bytes = ReplyBytes::Owned(bytes);
        self
    }
    /// `with_bytes` for bytes already in one shared allocation: if the reply
    /// is remembered, the window shares them without a second allocation.
    pub fn with_shared(mut self, bytes: Arc<[u8]>) -> Reply {
        self.bytes = ReplyBytes::Shared(Shared::Slice(bytes));
        self
    }
    /// `with_bytes` for `[start, end)` of a shared page: sent from the page
    /// itself, no copy (the service copies the page before changing it
    /// while a reply or the window holds it).
    pub fn with_page(mut self, page: Page, start: usize, end: usize) -> Reply {
        debug_assert!(start <= end && end <= PAGE);
        self.bytes = ReplyBytes::Shared(Shared::Page(page, start as u16, end as u16));
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
    /// Makes the payload shareable (no copy) and returns what the window
    /// keeps of it.
    fn keep(&mut self) -> Kept {
        if self.bytes.is_empty() {
            return Kept::Empty;
        }
        let shared = match core::mem::replace(&mut self.bytes, ReplyBytes::Owned(Vec::new())) {
            ReplyBytes::Owned(v) => Shared::Vec(Arc::new(v)),
            ReplyBytes::Shared(a) => a,
        };
        self.bytes = ReplyBytes::Shared(shared.clone());
        Kept::Bytes(shared)
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
    /// How many payload bytes each request brings into the pool thread's
    /// receive buffer. A longer payload's rest is read before `handle`,
    /// unless the service reads it itself.
    fn receive_capacity(&self) -> usize {
        MAX_PAYLOAD
    }
    /// Whether `handle` reads the payload of requests of `op` itself with
    /// `ipc::request_read`, straight to where it belongs (a file server's
    /// writes, into the file): the request's bytes are then only the
    /// first [`Service::receive_capacity`] ones.
    fn reads_payload(&self, _op: u64) -> bool {
        false
    }
}

/// What the window keeps of a remembered reply's payload.
enum Kept {
    /// The reply had none.
    Empty,
    /// The bytes, shared with the reply that was sent.
    Bytes(Shared),
    /// Dropped to stay within [`WINDOW_BYTES`]: a repeat gets `Gone`.
    Evicted,
}

impl Kept {
    fn len(&self) -> usize {
        match self {
            Kept::Bytes(b) => b.len(),
            _ => 0,
        }
    }
}

/// A remembered reply.
struct Answered {
    seq: u64,
    words: Words,
    bytes: Kept,
}

/// Slots of [`AliasLog::present`]: a prime above [`WINDOW`], so the
/// consecutive numbers one client sends never share a slot within a
/// window (and a new number's slot is empty), whatever the base.
const PRESENT_SLOTS: usize = WINDOW + 1;

/// What the pool knows of one alias's sequenced requests.
struct AliasLog {
    /// Numbers a pool thread is handling now.
    in_flight: Vec<u64>,
    /// Recent answers, oldest first.
    answered: VecDeque<Answered>,
    /// Payload bytes held in `answered`.
    bytes: usize,
    /// How many of the oldest entries of `answered` hold no payload (so
    /// eviction starts after them instead of walking them each time).
    drained: usize,
    /// Per slot (`seq % PRESENT_SLOTS`), how many answered numbers fall in
    /// it: a number whose slot is 0 is not in the window, found without
    /// walking it (almost every request is a new number).
    present: [u16; PRESENT_SLOTS],
    /// The highest answered number of each client counter seen on this
    /// alias (counters start at random bases, so numbers within 2^32 of
    /// each other are one counter's), newest counters last, at most
    /// [`COUNTERS`]: what tells an out-of-order number without a walk.
    highest: Vec<u64>,
}

/// Client counters remembered per alias (programs sharing one reference).
const COUNTERS: usize = 16;

/// Whether `a` and `b` are numbers of the same client counter.
fn same_counter(a: u64, b: u64) -> bool {
    a.wrapping_sub(b) < 1 << 32 || b.wrapping_sub(a) < 1 << 32
}

impl Default for AliasLog {
    fn default() -> Self {
        AliasLog {
            in_flight: Vec::new(),
            answered: VecDeque::new(),
            bytes: 0,
            drained: 0,
            present: [0; PRESENT_SLOTS],
            highest: Vec::new(),
        }
    }
}

impl AliasLog {
    fn slot(seq: u64) -> usize {
        (seq % PRESENT_SLOTS as u64) as usize
    }
    fn find(&self, seq: u64) -> Option<&Answered> {
        if self.present[Self::slot(seq)] == 0 {
            return None;
        }
        self.answered.iter().rev().find(|a| a.seq == seq)
    }
    /// Whether a number just above `seq` (the same client's counter) was
    /// answered: `seq` then arrives out of order, maybe a late stale copy.
    fn answered_after(&self, seq: u64) -> bool {
        self.highest.iter().any(|&h| h.wrapping_sub(seq).wrapping_sub(1) < 1 << 32)
    }
    fn remember(&mut self, a: Answered) {
        match self.highest.iter_mut().find(|h| same_counter(**h, a.seq)) {
            Some(h) => {
                if a.seq.wrapping_sub(*h) < 1 << 32 {
                    *h = a.seq;
                }
            }
            None => {
                if self.highest.len() == COUNTERS {
                    self.highest.remove(0);
                }
                self.highest.push(a.seq);
            }
        }
        self.bytes += a.bytes.len();
        self.present[Self::slot(a.seq)] += 1;
        self.answered.push_back(a);
        if self.answered.len() > WINDOW {
            if let Some(old) = self.answered.pop_front() {
                self.bytes -= old.bytes.len();
                self.present[Self::slot(old.seq)] -= 1;
                self.drained = self.drained.saturating_sub(1);
            }
        }
        // Drop the oldest payloads first; the newest is always kept.
        let newest = self.answered.len() - 1;
        while self.bytes > WINDOW_BYTES && self.drained < newest {
            let a = &mut self.answered[self.drained];
            if let Kept::Bytes(b) = &a.bytes {
                self.bytes -= b.len();
                a.bytes = Kept::Evicted;
            }
            self.drained += 1;
        }
    }
}

/// The pool's deduplication state, under one lock.
#[derive(Default)]
struct Logs {
    aliases: BTreeMap<u64, Box<AliasLog>>,
    /// Repeats waiting for their first copy's answer (the answer wakes them
    /// only when there are some: a wake-up is a system call).
    waiting: usize,
}

struct Pool {
    portset: Handle,
    space: Handle,
    service: &'static dyn Service,
    free: AtomicUsize,
    threads: AtomicUsize,
    logs: Mutex<Logs>,
    /// Signalled whenever a sequenced request is answered (its repeats wait on it).
    answered: Cond,
}

/// Forgets the remembered replies of `alias` (call when its object closes).
pub fn forget(server: &Server, alias: u64) {
    server.0.logs.lock().aliases.remove(&alias);
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
    /// Serves on the calling thread too (never returns): what [`run`]
    /// does, for a program that keeps the `Server` (to `forget` aliases).
    pub fn serve(self) -> ! {
        serve(self.0)
    }
}

/// Starts serving `portset` with `service` on `threads` threads (at least
/// one) in this program's space `space` (which needs CREATE); returns at
/// once. The pool grows as requests block.
pub fn start(space: Handle, portset: Handle, service: &'static dyn Service, threads: usize) -> Result<Server, Error> {
    let logs = Mutex::new(Logs::default()).map_err(Error::from)?;
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
        Ok(server) => server.serve(),
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
    let capacity = pool.service.receive_capacity().min(MAX_PAYLOAD);
    let mut reply = Reply::ok([0; 5]);
    let mut first = true;
    loop {
        pool.free.fetch_add(1, Ordering::AcqRel);
        let mut payload = Payload { send: &reply.bytes[..], handle: reply.handle, recv: &mut recv[..capacity] };
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
        let whole = got.len.min(MAX_PAYLOAD);
        let mut len = whole.min(capacity);
        if whole > len && !pool.service.reads_payload(words[0]) {
            // The rest, straight from the client's memory.
            match ipc::request_read(len as u64, &mut recv[len..whole]) {
                Ok(n) => len += n,
                // The client gave up on the call: its reply is dropped.
                Err(_) => {
                    if let Some(h) = got.handle {
                        let _ = obj::close(h);
                    }
                    reply = Reply::err(Error::Gone);
                    continue;
                }
            }
        }
        let req = Request { alias, words, bytes: &recv[..len], len: got.len, handle: got.handle };
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
            let log = logs.aliases.entry(alias).or_default();
            if let Some(a) = log.find(seq) {
                return match &a.bytes {
                    Kept::Empty => Reply { words: a.words, bytes: ReplyBytes::Owned(Vec::new()), handle: None, close_after: false },
                    Kept::Bytes(b) => Reply { words: a.words, bytes: ReplyBytes::Shared(b.clone()), handle: None, close_after: false },
                    Kept::Evicted => Reply::err(Error::Gone),
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
            logs.waiting += 1;
            logs = pool.answered.wait(logs);
            logs.waiting -= 1;
        }
    }
    let mut reply = pool.service.handle(req);
    let wake = {
        let mut logs = pool.logs.lock();
        // Gone if the alias was forgotten meanwhile (its object closed).
        if let Some(log) = logs.aliases.get_mut(&alias) {
            log.in_flight.retain(|&s| s != seq);
            if reply.handle.is_none() {
                let bytes = reply.keep();
                log.remember(Answered { seq, words: reply.words, bytes });
            }
        }
        logs.waiting > 0
    };
    if wake {
        pool.answered.notify_all();
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(seq: u64, len: usize) -> Answered {
        Answered {
            seq,
            words: [0, seq, 0, 0, 0, 0],
            bytes: if len == 0 { Kept::Empty } else { Kept::Bytes(Shared::Vec(Arc::new(vec![7; len]))) },
        }
    }

    #[test]
    fn the_window_finds_the_last_answers_and_forgets_older_ones() {
        for base in [1u64, 255, 256, 257, u64::MAX - 600] {
            let mut log = AliasLog::default();
            for i in 0..1000u64 {
                let seq = base.wrapping_add(i);
                assert!(log.find(seq).is_none(), "{seq} is new");
                log.remember(answer(seq, 0));
                assert_eq!(log.find(seq).map(|a| a.words[1]), Some(seq));
                if i >= WINDOW as u64 {
                    assert!(log.find(seq.wrapping_sub(WINDOW as u64)).is_none());
                    assert!(log.find(seq.wrapping_sub(WINDOW as u64 - 1)).is_some());
                }
            }
            assert_eq!(log.answered.len(), WINDOW);
            assert_eq!(log.present.iter().map(|&c| c as usize).sum::<usize>(), WINDOW);
        }
    }

    #[test]
    fn out_of_order_numbers_are_told_per_client_counter() {
        let mut log = AliasLog::default();
        // Two programs share the alias, their counters far apart (one wraps).
        let (a, b) = (1u64 << 50, u64::MAX - 5);
        for i in 0..300u64 {
            log.remember(answer(a + i, 0));
            log.remember(answer(b.wrapping_add(i), 0));
        }
        assert_eq!(log.highest, [a + 299, b.wrapping_add(299)]);
        // In order: new numbers of either counter are not out of order.
        assert!(!log.answered_after(a + 300) && !log.answered_after(b.wrapping_add(300)));
        // Late copies of old numbers (even beyond the window) are.
        assert!(log.answered_after(a) && log.answered_after(a + 298) && log.answered_after(b));
        // A third, unrelated counter is not.
        assert!(!log.answered_after(1 << 40));
        for c in 0..COUNTERS as u64 {
            log.remember(answer((c + 2) << 36, 0));
        }
        assert_eq!(log.highest.len(), COUNTERS);
    }

    #[test]
    fn numbers_sharing_a_slot_are_told_apart() {
        let mut log = AliasLog::default();
        let step = PRESENT_SLOTS as u64;
        for i in 0..10 {
            log.remember(answer(5 + i * step, 0));
        }
        for i in 0..10 {
            assert_eq!(log.find(5 + i * step).map(|a| a.seq), Some(5 + i * step));
        }
        assert!(log.find(5 + 10 * step).is_none());
    }

    #[test]
    fn payloads_are_evicted_oldest_first_and_the_newest_is_kept() {
        let mut log = AliasLog::default();
        let big = WINDOW_BYTES / 4;
        for seq in 1..=6 {
            log.remember(answer(seq, big));
            assert!(log.bytes <= WINDOW_BYTES);
        }
        let kept: Vec<bool> = (1..=6).map(|s| matches!(log.find(s).unwrap().bytes, Kept::Bytes(_))).collect();
        assert_eq!(kept, [false, false, true, true, true, true]);
        // An empty reply in between stays answerable, a larger-than-window one is kept alone.
        log.remember(answer(7, 0));
        log.remember(answer(8, WINDOW_BYTES * 2));
        assert!(matches!(log.find(7).unwrap().bytes, Kept::Empty));
        assert!(matches!(log.find(8).unwrap().bytes, Kept::Bytes(_)));
        assert!((1..=6).all(|s| matches!(log.find(s).unwrap().bytes, Kept::Evicted)));
        assert_eq!(log.bytes, WINDOW_BYTES * 2);
        log.remember(answer(9, 1));
        assert!(matches!(log.find(8).unwrap().bytes, Kept::Evicted));
        assert_eq!(log.bytes, 1);
    }

    #[test]
    fn a_kept_reply_shares_its_bytes() {
        let mut r = Reply::ok([1, 0, 0, 0, 0]).with_bytes(vec![1, 2, 3]);
        let Kept::Bytes(k) = r.keep() else { panic!("bytes kept") };
        assert_eq!(&r.bytes[..], &[1, 2, 3]);
        assert!(matches!((&r.bytes, &k), (ReplyBytes::Shared(Shared::Vec(s)), Shared::Vec(k)) if Arc::ptr_eq(s, k)));
        let one: Arc<[u8]> = Arc::from(&[4u8, 5][..]);
        let mut r = Reply::ok([0; 5]).with_shared(one.clone());
        assert!(matches!(r.keep(), Kept::Bytes(Shared::Slice(k)) if Arc::ptr_eq(&k, &one)));
        assert_eq!(&r.bytes[..], &[4, 5]);
        assert!(matches!(Reply::ok([0; 5]).keep(), Kept::Empty));
    }
}
