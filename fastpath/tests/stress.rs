//! Multi-thread stress tests with std threads: every message is delivered
//! exactly once, and each consumer sees every producer's messages in the
//! order that producer pushed them.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;

use fastpath::PortQueue;

/// A message: producer id in the high bits, per-producer sequence number low.
fn msg(producer: usize, seq: usize) -> u64 {
    ((producer as u64) << 32) | seq as u64
}

fn run<const N: usize>(producers: usize, consumers: usize, per_producer: usize) {
    let q: PortQueue<u64, N> = PortQueue::new();
    let done = AtomicBool::new(false);
    let popped = AtomicUsize::new(0);
    let total = producers * per_producer;
    let start = Barrier::new(producers + consumers);

    let observed: Vec<Vec<u64>> = thread::scope(|s| {
        for p in 0..producers {
            let (q, start) = (&q, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..per_producer {
                    let mut m = msg(p, i);
                    let mut spins = 0u32;
                    while let Err(back) = q.try_push(m) {
                        assert_eq!(back, msg(p, i), "full queue returned another value");
                        m = back;
                        spins += 1;
                        if spins.is_multiple_of(64) {
                            thread::yield_now();
                        }
                    }
                }
            });
        }
        let handles: Vec<_> = (0..consumers)
            .map(|_| {
                let (q, done, popped, start) = (&q, &done, &popped, &start);
                s.spawn(move || {
                    start.wait();
                    let mut seen = Vec::new();
                    let mut idle = 0u32;
                    loop {
                        match q.try_pop() {
                            Some(m) => {
                                seen.push(m);
                                idle = 0;
                                if popped.fetch_add(1, Ordering::Relaxed) + 1 == total {
                                    done.store(true, Ordering::Relaxed);
                                }
                            }
                            None if done.load(Ordering::Relaxed) => break,
                            None => {
                                idle += 1;
                                if idle.is_multiple_of(64) {
                                    thread::yield_now();
                                }
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Per-producer FIFO within each consumer's observed subsequence.
    for seen in &observed {
        let mut last = vec![None::<u64>; producers];
        for &m in seen {
            let p = (m >> 32) as usize;
            let i = m & 0xffff_ffff;
            if let Some(prev) = last[p] {
                assert!(i > prev, "consumer saw producer {p}'s message {i} after {prev}");
            }
            last[p] = Some(i);
        }
    }
    // Exactly once overall.
    let mut all: Vec<u64> = observed.into_iter().flatten().collect();
    assert_eq!(all.len(), total, "lost or duplicated messages");
    all.sort_unstable();
    let expected: Vec<u64> = (0..producers).flat_map(|p| (0..per_producer).map(move |i| msg(p, i))).collect();
    assert_eq!(all, expected);
    assert_eq!(q.len_hint(), 0);
    assert_eq!(q.try_pop(), None);
}

#[test]
fn spsc_tiny_queue() {
    run::<2>(1, 1, 200_000);
}

#[test]
fn mpsc_4_producers() {
    run::<8>(4, 1, 25_000);
}

#[test]
fn mpmc_3x3_small_queue() {
    run::<4>(3, 3, 50_000);
}

#[test]
fn mpmc_4x2_large_queue() {
    run::<256>(4, 2, 50_000);
}
