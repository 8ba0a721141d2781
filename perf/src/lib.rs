//! Shared measurement code for the queue benchmarks: the criterion benches in
//! `benches/queues.rs` and the `queue-counters` binary both drive the queues
//! through these functions, so they measure the same workloads.
//!
//! Workloads (all move `u64` messages):
//! * [`transfer`]: `p` producer threads push, `c` consumer threads pop, until
//!   a fixed number of messages went through; the consumers check the sum so
//!   a broken queue cannot produce a fast number.
//! * [`pingpong`]: one message bounces between two threads over two queues;
//!   each round trip is one cross-thread send and reply, the shape of a
//!   synchronous IPC call to another CPU.
//!
//! Full/empty are handled by spinning, with a `yield_now` every
//! [`YIELD_EVERY`] failed attempts so oversubscribed runs (more threads than
//! cores) still progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use fastpath::PortQueue;

#[cfg(target_os = "linux")]
pub mod counters;

/// Failed push/pop attempts between two `yield_now` calls.
pub const YIELD_EVERY: u32 = 1024;

/// A bounded queue of `u64` under test.
pub trait BenchQueue: Sync {
    /// Short name for reports.
    const NAME: &'static str;
    /// Non-blocking push; gives the value back when full.
    fn push(&self, v: u64) -> Result<(), u64>;
    /// Non-blocking pop.
    fn pop(&self) -> Option<u64>;
}

impl<const N: usize> BenchQueue for PortQueue<u64, N> {
    const NAME: &'static str = "PortQueue";
    #[inline]
    fn push(&self, v: u64) -> Result<(), u64> {
        self.try_push(v)
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        self.try_pop()
    }
}

impl BenchQueue for ArrayQueue<u64> {
    const NAME: &'static str = "crossbeam ArrayQueue";
    #[inline]
    fn push(&self, v: u64) -> Result<(), u64> {
        ArrayQueue::push(self, v)
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        ArrayQueue::pop(self)
    }
}

/// Pushes `v`, spinning (and now and then yielding) while the queue is full.
#[inline]
pub fn push_spin<Q: BenchQueue>(q: &Q, mut v: u64) {
    let mut tries = 0u32;
    loop {
        match q.push(v) {
            Ok(()) => return,
            Err(back) => v = back,
        }
        tries += 1;
        if tries.is_multiple_of(YIELD_EVERY) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Pops a value, spinning (and now and then yielding) while the queue is empty.
#[inline]
pub fn pop_spin<Q: BenchQueue>(q: &Q) -> u64 {
    let mut tries = 0u32;
    loop {
        if let Some(v) = q.pop() {
            return v;
        }
        tries += 1;
        if tries.is_multiple_of(YIELD_EVERY) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Called by every benchmark thread around its measured work, so the
/// counters binary can open per-thread perf counters. `start` runs before
/// the common start barrier, `stop` after the thread's last message.
pub trait ThreadProbe: Sync {
    /// Per-thread state between `start` and `stop`.
    type Token;
    /// The thread is about to start its measured work.
    fn start(&self) -> Self::Token;
    /// The thread finished its measured work.
    fn stop(&self, token: Self::Token);
}

/// A probe that measures nothing (the criterion benches).
pub struct NoProbe;

impl ThreadProbe for NoProbe {
    type Token = ();
    fn start(&self) {}
    fn stop(&self, _: ()) {}
}

/// Moves `messages` messages from `producers` threads to `consumers` threads
/// through `q`, and returns the wall time from the common start to the last
/// thread's end (thread creation excluded).
///
/// Messages are `1..=messages`; the last producer to finish then pushes one
/// `0` per consumer, and each consumer stops at its first `0` (all real
/// messages are ahead of those in the queue), so there is no shared counter
/// per message. Panics if a message is lost or duplicated (the consumers'
/// sum is checked).
pub fn transfer<Q: BenchQueue, P: ThreadProbe>(q: &Q, producers: usize, consumers: usize, messages: u64, probe: &P) -> Duration {
    assert!(producers > 0 && consumers > 0);
    let start = Barrier::new(producers + consumers + 1);
    let producers_done = AtomicU64::new(0);
    let sum = AtomicU64::new(0);
    let elapsed = thread::scope(|s| {
        for p in 0..producers as u64 {
            let (start, q, producers_done) = (&start, q, &producers_done);
            s.spawn(move || {
                let token = probe.start();
                start.wait();
                // Producer p sends p+1, p+1+producers, ... up to messages.
                let mut v = p + 1;
                while v <= messages {
                    push_spin(q, v);
                    v += producers as u64;
                }
                if producers_done.fetch_add(1, Ordering::AcqRel) + 1 == producers as u64 {
                    for _ in 0..consumers {
                        push_spin(q, 0);
                    }
                }
                probe.stop(token);
            });
        }
        for _ in 0..consumers {
            let (start, q, sum) = (&start, q, &sum);
            s.spawn(move || {
                let token = probe.start();
                start.wait();
                let mut local = 0u64;
                loop {
                    match pop_spin(q) {
                        0 => break,
                        v => local = local.wrapping_add(v),
                    }
                }
                sum.fetch_add(local, Ordering::Relaxed);
                probe.stop(token);
            });
        }
        start.wait();
        // The scope joins every thread before returning.
        Instant::now()
    })
    .elapsed();
    let expected = messages * (messages + 1) / 2;
    assert_eq!(sum.load(Ordering::Relaxed), expected, "{}: lost or duplicated messages", Q::NAME);
    elapsed
}

/// Single-consumer version of [`transfer`] where the consumer counts locally
/// (no shared counter on the consumer side): the 1-producer/1-consumer case.
pub fn transfer_spsc<Q: BenchQueue, P: ThreadProbe>(q: &Q, messages: u64, probe: &P) -> Duration {
    let start = Barrier::new(3);
    let mut sum = 0u64;
    let elapsed = thread::scope(|s| {
        let (start_p, start_c) = (&start, &start);
        s.spawn(move || {
            let token = probe.start();
            start_p.wait();
            for v in 1..=messages {
                push_spin(q, v);
            }
            probe.stop(token);
        });
        let sum = &mut sum;
        s.spawn(move || {
            let token = probe.start();
            start_c.wait();
            for _ in 0..messages {
                *sum = sum.wrapping_add(pop_spin(q));
            }
            probe.stop(token);
        });
        start.wait();
        Instant::now()
    })
    .elapsed();
    assert_eq!(sum, messages * (messages + 1) / 2, "{}: lost or duplicated messages", Q::NAME);
    elapsed
}

/// `rounds` round trips of one message: this thread pushes to `there`, an
/// echo thread pops it and pushes it to `back`, this thread pops it. Returns
/// the total time; when `samples` is given, also records every round trip's
/// time in nanoseconds (which adds two clock reads per round).
pub fn pingpong<Q: BenchQueue, P: ThreadProbe>(
    there: &Q,
    back: &Q,
    rounds: u64,
    mut samples: Option<&mut Vec<u64>>,
    probe: &P,
) -> Duration {
    let start = Barrier::new(2);
    thread::scope(|s| {
        let start_echo = &start;
        s.spawn(move || {
            let token = probe.start();
            start_echo.wait();
            for _ in 0..rounds {
                let v = pop_spin(there);
                push_spin(back, v + 1);
            }
            probe.stop(token);
        });
        let token = probe.start();
        start.wait();
        let t0 = Instant::now();
        for i in 0..rounds {
            let t = samples.as_ref().map(|_| Instant::now());
            push_spin(there, i);
            let v = pop_spin(back);
            if let (Some(t), Some(samples)) = (t, samples.as_deref_mut()) {
                samples.push(t.elapsed().as_nanos() as u64);
            }
            assert_eq!(v, i + 1, "{}: echo returned the wrong message", Q::NAME);
        }
        let elapsed = t0.elapsed();
        probe.stop(token);
        elapsed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_run_and_check() {
        let q: PortQueue<u64, 8> = PortQueue::new();
        transfer_spsc(&q, 10_000, &NoProbe);
        transfer(&q, 2, 2, 10_000, &NoProbe);
        let (a, b): (PortQueue<u64, 2>, PortQueue<u64, 2>) = (PortQueue::new(), PortQueue::new());
        let mut samples = Vec::new();
        pingpong(&a, &b, 1000, Some(&mut samples), &NoProbe);
        assert_eq!(samples.len(), 1000);
        let c = ArrayQueue::new(8);
        transfer(&c, 1, 2, 10_000, &NoProbe);
    }
}
