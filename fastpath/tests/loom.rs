//! Loom model checking of the port queue and the doorbell handshake.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p fastpath --release --test loom`.
//! Loom explores every interleaving (and the permitted stale reads of the
//! C11 model, with `fence(SeqCst)` modelled exactly) of these small models.
//! A receiver that sleeps through a message is parked forever, which loom
//! reports as a deadlock.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use fastpath::{Doorbell, PortQueue, SleepDecision};

/// Runs `f` under loom with at most `preemptions` preemptions per execution
/// (the usual loom bound for the bigger models, `None` for exhaustive;
/// `LOOM_MAX_PREEMPTIONS` overrides it) and prints
/// how many executions were explored (visible with `--nocapture`).
fn model(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
    let runs = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    let bound = builder.preemption_bound;
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f()
    });
    eprintln!("loom: {} executions explored (preemption bound {bound:?})", runs.load(StdOrdering::Relaxed));
}

/// Two producers and one consumer on a 2-slot queue, no retries: every
/// accepted message comes out exactly once (from the consumer or the final
/// drain), rejected ones come back unchanged, and producer order holds.
#[test]
fn two_producers_one_consumer() {
    model(Some(3), || {
        let q = Arc::new(PortQueue::<u32, 2>::new());
        let p1 = {
            let q = q.clone();
            thread::spawn(move || [q.try_push(10).is_ok(), q.try_push(11).is_ok()])
        };
        let p2 = {
            let q = q.clone();
            thread::spawn(move || q.try_push(20).is_ok())
        };
        let c = {
            let q = q.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..2 {
                    if let Some(v) = q.try_pop() {
                        got.push(v);
                    }
                }
                got
            })
        };
        let [a10, a11] = p1.join().unwrap();
        let a20 = p2.join().unwrap();
        let mut got = c.join().unwrap();
        while let Some(v) = q.try_pop() {
            got.push(v);
        }

        let mut expected = Vec::new();
        for (ok, v) in [(a10, 10), (a11, 11), (a20, 20)] {
            if ok {
                expected.push(v);
            }
        }
        // P1's first push meets at most P2's message in the queue.
        assert!(a10, "a 2-slot queue holding at most one message rejected a push");
        let pos10 = got.iter().position(|&v| v == 10);
        let pos11 = got.iter().position(|&v| v == 11);
        if let (Some(x), Some(y)) = (pos10, pos11) {
            assert!(x < y, "producer order broken: {got:?}");
        }
        let mut sorted = got.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected, "lost or duplicated message: got {got:?}");
    });
}

/// Two consumers race for the messages of one producer (the consumer side
/// of MPMC): each message is taken exactly once, and each consumer sees the
/// producer's messages in order.
#[test]
fn one_producer_two_consumers() {
    model(Some(3), || {
        let q = Arc::new(PortQueue::<u32, 2>::new());
        let consumer = || {
            let q = q.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..2 {
                    if let Some(v) = q.try_pop() {
                        got.push(v);
                    }
                }
                got
            })
        };
        let (c1, c2) = (consumer(), consumer());
        assert_eq!(q.try_push(1), Ok(()));
        assert_eq!(q.try_push(2), Ok(()));
        let got1 = c1.join().unwrap();
        let got2 = c2.join().unwrap();
        for got in [&got1, &got2] {
            assert!(got.windows(2).all(|w| w[0] < w[1]), "order broken: {got:?}");
        }
        let mut all: Vec<u32> = got1.into_iter().chain(got2).collect();
        while let Some(v) = q.try_pop() {
            all.push(v);
        }
        all.sort_unstable();
        assert_eq!(all, [1, 2], "lost or duplicated message");
    });
}

/// One producer, one consumer, four messages through a 2-slot queue: the
/// ring wraps twice, full and empty are hit, order is preserved.
#[test]
fn spsc_wrap_around() {
    model(None, || {
        let q = Arc::new(PortQueue::<usize, 2>::new());
        let p = {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..4 {
                    let mut v = i;
                    while let Err(back) = q.try_push(v) {
                        v = back;
                        thread::yield_now();
                    }
                }
            })
        };
        for i in 0..4 {
            loop {
                if let Some(v) = q.try_pop() {
                    assert_eq!(v, i);
                    break;
                }
                thread::yield_now();
            }
        }
        p.join().unwrap();
        assert_eq!(q.try_pop(), None);
        assert_eq!(q.len_hint(), 0);
    });
}

/// Values left in the queue are dropped exactly once when it is dropped,
/// while a consumer races the producer.
#[test]
fn drop_remaining() {
    struct D(Arc<AtomicUsize>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    model(None, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let q = Arc::new(PortQueue::<D, 2>::new());
        let c = {
            let q = q.clone();
            thread::spawn(move || drop(q.try_pop()))
        };
        assert!(q.try_push(D(drops.clone())).is_ok());
        assert!(q.try_push(D(drops.clone())).is_ok());
        c.join().unwrap();
        drop(q);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    });
}

/// Shared state of a doorbell model: the receiver's queue and doorbell, and
/// counts of sleeps and rings.
struct Port {
    q: PortQueue<usize, 2>,
    db: Doorbell,
    rings: AtomicUsize,
    /// Senders that are done, including their ring.
    finished: AtomicUsize,
}

impl Port {
    fn new() -> Arc<Self> {
        Arc::new(Port { q: PortQueue::new(), db: Doorbell::new(), rings: AtomicUsize::new(0), finished: AtomicUsize::new(0) })
    }

    /// Waits for `n` senders to finish. Not `JoinHandle::join`: loom's
    /// `unpark` wrongly wakes a thread blocked in `join`, and a late ring
    /// (a harmless spurious doorbell) may arrive while the receiver joins.
    fn wait_senders(&self, n: usize) {
        while self.finished.load(Ordering::Acquire) < n {
            thread::yield_now();
        }
    }
}

fn sender(port: Arc<Port>, receiver: thread::Thread, message: usize) {
    thread::spawn(move || {
        port.q.try_push(message).expect("2-slot queue has room for 2 messages");
        if port.db.notify().0 {
            port.rings.fetch_add(1, Ordering::Relaxed);
            receiver.unpark(); // the doorbell IPI
        }
        port.finished.fetch_add(1, Ordering::Release);
    });
}

/// The receiver (the model's main thread) waits for `count` messages with
/// `Doorbell::wait`, halting with `park`. A lost wakeup parks it forever
/// and loom fails with a deadlock. Every sleep must have been ended by a ring.
fn receive(port: &Port, count: usize) -> Vec<usize> {
    let mut sleeps = 0;
    let mut got = Vec::new();
    for _ in 0..count {
        got.push(port.db.wait(
            0,
            || port.q.try_pop(),
            || {
                sleeps += 1;
                thread::park();
            },
        ));
    }
    assert!(sleeps <= port.rings.load(Ordering::Relaxed), "a sleep ended without a doorbell ring");
    got
}

/// One sender, one receiver that sleeps: the receiver never sleeps forever
/// with a message in the queue.
#[test]
fn doorbell_one_sender() {
    model(None, || {
        let port = Port::new();
        sender(port.clone(), thread::current(), 7);
        assert_eq!(receive(&port, 1), [7]);
        port.wait_senders(1);
        assert!(port.rings.load(Ordering::Relaxed) <= 1);
    });
}

/// Two senders race each other and the receiver's announcement: each
/// announcement is rung at most once and no message is slept through.
#[test]
fn doorbell_two_senders() {
    model(Some(3), || {
        let port = Port::new();
        sender(port.clone(), thread::current(), 1);
        sender(port.clone(), thread::current(), 2);
        let mut got = receive(&port, 2);
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        port.wait_senders(2);
        assert!(port.rings.load(Ordering::Relaxed) <= 2);
    });
}

/// The explicit ticket API: after committing to sleep, a message pushed by
/// the sender always comes with `NeedsIpi(true)`; and if the re-check saw
/// no message but the sender had already pushed, the sender rang.
#[test]
fn doorbell_commit_implies_ring() {
    model(None, || {
        let port = Port::new();
        let s = {
            let port = port.clone();
            thread::spawn(move || {
                port.q.try_push(5).unwrap();
                port.db.notify().0
            })
        };
        let ticket = port.db.prepare_to_sleep();
        let recheck = port.q.try_pop();
        let decision = ticket.commit_or_cancel(recheck.is_some());
        let rang = s.join().unwrap();
        match decision {
            // Committed to sleep with the queue empty at the re-check: the
            // message came later, so its sender must have been told to ring.
            SleepDecision::Sleep => assert!(rang, "committed to sleep but the sender was not told to ring"),
            SleepDecision::WakeupPending => assert!(rang),
            SleepDecision::Cancelled => assert_eq!(recheck, Some(5)),
        }
        if recheck.is_none() {
            assert_eq!(port.q.try_pop(), Some(5));
        }
    });
}

/// Negative control: a receiver that skips the re-check between announcing
/// and committing can commit to sleep after a message arrived without any
/// sender being told to ring (a lost wakeup), and the model must find it.
#[test]
#[should_panic(expected = "lost wakeup")]
fn doorbell_without_recheck_loses_wakeups() {
    model(None, || {
        let port = Port::new();
        let s = {
            let port = port.clone();
            thread::spawn(move || {
                port.q.try_push(9).unwrap();
                port.db.notify().0
            })
        };
        let polled = port.q.try_pop();
        let ticket = port.db.prepare_to_sleep();
        // BUG (deliberate): no re-check of the queue here.
        let decision = ticket.commit_or_cancel(false);
        let rang = s.join().unwrap();
        if polled.is_none() && decision == SleepDecision::Sleep && !rang {
            panic!("lost wakeup: asleep with a message queued and no doorbell rung");
        }
    });
}
