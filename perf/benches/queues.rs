//! Criterion benchmarks of the port queue against crossbeam's ArrayQueue.
//!
//! * `single_thread/push_pop`: one push then one pop on an empty queue, on
//!   one thread (the uncontended cost of the two operations).
//! * `single_thread/burst_64`: 64 pushes then 64 pops (per message).
//! * `spsc_transfer`: 1 producer thread to 1 consumer thread (per message).
//! * `mpmc_2p2c_transfer`: 2 producers and 2 consumers (per message; with
//!   more threads than this machine's 2 cores it includes yields).
//! * `pingpong_rtt`: one message there and back between two threads over two
//!   queues (per round trip).
//!
//! Cross-thread benches use `iter_custom` with linear sampling, so the
//! per-message slope excludes the fixed thread start/join cost.
//! Run: `cargo bench -p perf --bench queues` (add a filter such as `spsc`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use crossbeam_queue::ArrayQueue;
use fastpath::PortQueue;
use perf::{pingpong, transfer, transfer_spsc, BenchQueue, NoProbe};

const CAP: usize = 1024;

fn port() -> Box<PortQueue<u64, CAP>> {
    Box::new(PortQueue::new())
}

fn array() -> ArrayQueue<u64> {
    ArrayQueue::new(CAP)
}

fn configure<M: criterion::measurement::Measurement>(g: &mut BenchmarkGroup<'_, M>) {
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(30);
}

fn push_pop<Q: BenchQueue>(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, q: &Q) {
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("push_pop/{}", Q::NAME), |b| {
        b.iter(|| {
            q.push(black_box(7)).unwrap();
            black_box(q.pop().unwrap())
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function(format!("burst_64/{}", Q::NAME), |b| {
        b.iter(|| {
            for i in 0..64 {
                q.push(black_box(i)).unwrap();
            }
            for _ in 0..64 {
                black_box(q.pop().unwrap());
            }
        })
    });
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_thread");
    configure(&mut g);
    push_pop(&mut g, &*port());
    push_pop(&mut g, &array());
    g.finish();
}

fn cross_thread_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    configure(&mut g);
    g.sampling_mode(SamplingMode::Linear);
    g.throughput(Throughput::Elements(1));
    g
}

fn spsc(c: &mut Criterion) {
    let mut g = cross_thread_group(c, "spsc_transfer");
    let (p, a) = (port(), array());
    g.bench_function("PortQueue", |b| b.iter_custom(|n| transfer_spsc(&*p, n, &NoProbe)));
    g.bench_function("crossbeam ArrayQueue", |b| b.iter_custom(|n| transfer_spsc(&a, n, &NoProbe)));
    g.finish();
}

fn mpmc(c: &mut Criterion) {
    let mut g = cross_thread_group(c, "mpmc_2p2c_transfer");
    let (p, a) = (port(), array());
    g.bench_function("PortQueue", |b| b.iter_custom(|n| transfer(&*p, 2, 2, n, &NoProbe)));
    g.bench_function("crossbeam ArrayQueue", |b| b.iter_custom(|n| transfer(&a, 2, 2, n, &NoProbe)));
    g.finish();
}

fn rtt(c: &mut Criterion) {
    let mut g = cross_thread_group(c, "pingpong_rtt");
    let (p1, p2) = (port(), port());
    let (a1, a2) = (array(), array());
    g.bench_function("PortQueue", |b| b.iter_custom(|n| pingpong(&*p1, &*p2, n, None, &NoProbe)));
    g.bench_function("crossbeam ArrayQueue", |b| b.iter_custom(|n| pingpong(&a1, &a2, n, None, &NoProbe)));
    g.finish();
}

criterion_group!(queues, single_thread, spsc, mpmc, rtt);
criterion_main!(queues);
