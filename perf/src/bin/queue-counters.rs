//! Cross-thread queue transfer and ping-pong with perf-event counters.
//!
//! Prints one JSON object per line on stdout, human-readable text on stderr:
//!
//! ```text
//! {"bench":"queue_spsc_transfer","queue":"PortQueue","capacity":1024,"iterations":51,
//!  "unit":"ns_per_message","median_ns":X,"p99_ns":X,"messages":N,
//!  "counters":{...},"counters_per_message":{...},"counter_mode":"software","counter_note":"..."}
//! ```
//!
//! Usage: `cargo run -p perf --release --bin queue-counters [-- --quick]`.
//! `--quick` runs fewer rounds (a smoke test, numbers are noisier).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use fastpath::PortQueue;
use perf::counters::{self, Mode, Probe};
use perf::{pingpong, transfer, transfer_spsc, BenchQueue};

const CAPACITY: usize = 1024;

/// The `q`-quantile (0..=1) of sorted `v` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn json_map<V: std::fmt::Display>(m: &BTreeMap<&str, V>) -> String {
    let body: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", json_str(k), v)).collect();
    format!("{{{}}}", body.join(","))
}

struct Report<'a> {
    bench: &'a str,
    queue: &'a str,
    /// ns per message (transfer) or per round trip (ping-pong), one per sample.
    samples: Vec<f64>,
    unit: &'a str,
    /// Messages (or round trips) covered by the counters.
    operations: u64,
    mode: Mode,
    note: &'a str,
    probe: &'a Probe,
    extra: String,
}

impl Report<'_> {
    fn emit(mut self) {
        self.samples.sort_by(f64::total_cmp);
        let median = quantile(&self.samples, 0.5);
        let p99 = quantile(&self.samples, 0.99);
        let (counts, errors) = self.probe.take();
        let per_op: BTreeMap<&str, String> = counts.iter().map(|(k, v)| (*k, per_op_number(*v as f64 / self.operations as f64))).collect();
        let mode = match self.mode {
            Mode::Hardware => "hardware",
            Mode::Software => "software",
            Mode::Unavailable => "none",
        };
        let mut note = self.note.to_string();
        if !errors.is_empty() {
            let _ = write!(note, "; per-thread counter errors: {}", errors.join(", "));
        }
        println!(
            "{{\"bench\":{},\"queue\":{},\"capacity\":{},\"iterations\":{},\"unit\":{},\"median_ns\":{:.2},\"p99_ns\":{:.2},\"operations\":{},{}\"counters\":{},\"counters_per_op\":{},\"counter_mode\":{},\"counter_note\":{}}}",
            json_str(self.bench),
            json_str(self.queue),
            CAPACITY,
            self.samples.len(),
            json_str(self.unit),
            median,
            p99,
            self.operations,
            self.extra,
            json_map(&counts),
            json_map(&per_op),
            json_str(mode),
            json_str(&note),
        );
        let per_op_text: Vec<String> = per_op.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "{:<26} {:<22} median {:>9.1} ns  p99 {:>9.1} ns  ({}, {} samples)  per op: {}",
            self.bench,
            self.queue,
            median,
            p99,
            self.unit,
            self.samples.len(),
            if per_op_text.is_empty() { "-".to_string() } else { per_op_text.join(" ") }
        );
    }
}

/// A JSON number with about 4 significant digits (exponent form below 0.1).
fn per_op_number(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.3e}")
    }
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// Producers -> consumers transfer through `q`, one report per queue.
/// One producer and one consumer use the dedicated SPSC workload.
fn transfer_report<Q: BenchQueue>(q: &Q, (producers, consumers): (usize, usize), rounds: usize, per_round: u64, mode: Mode, note: &str) {
    let run = |probe: &dyn Fn() -> Duration| (0..rounds).map(|_| ns_per(probe(), per_round)).collect::<Vec<_>>();
    let spsc = producers == 1 && consumers == 1;
    if spsc {
        transfer_spsc(q, per_round, &perf::NoProbe);
    } else {
        transfer(q, producers, consumers, per_round, &perf::NoProbe);
    }
    let probe = Probe::new(mode);
    let samples = run(&|| {
        if spsc {
            transfer_spsc(q, per_round, &probe)
        } else {
            transfer(q, producers, consumers, per_round, &probe)
        }
    });
    Report {
        bench: if spsc { "queue_spsc_transfer" } else { "queue_mpmc_2p2c_transfer" },
        queue: Q::NAME,
        samples,
        unit: "ns_per_message",
        operations: rounds as u64 * per_round,
        mode,
        note,
        probe: &probe,
        extra: format!("\"producers\":{producers},\"consumers\":{consumers},\"messages_per_iteration\":{per_round},"),
    }
    .emit();
}

fn pingpong_rtt<Q: BenchQueue>(there: &Q, back: &Q, rounds: u64, mode: Mode, note: &str) {
    pingpong(there, back, rounds / 10, None, &perf::NoProbe);
    let probe = Probe::new(mode);
    let mut samples_ns = Vec::with_capacity(rounds as usize);
    pingpong(there, back, rounds, Some(&mut samples_ns), &probe);
    Report {
        bench: "queue_pingpong_rtt",
        queue: Q::NAME,
        samples: samples_ns.into_iter().map(|v| v as f64).collect(),
        unit: "ns_per_round_trip",
        operations: rounds,
        mode,
        note,
        probe: &probe,
        extra: String::new(),
    }
    .emit();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round, rtts) = if quick { (11, 100_000, 50_000) } else { (51, 200_000, 200_000) };

    let (mode, note) = counters::detect();
    eprintln!("queue-counters: {} CPUs; counters: {note}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    if mode != Mode::Hardware {
        eprintln!("NOTE: no hardware cycle/instruction counts on this machine; see counter_note in the JSON.");
    }

    let port: Box<PortQueue<u64, CAPACITY>> = Box::new(PortQueue::new());
    let array = ArrayQueue::new(CAPACITY);
    transfer_report(&*port, (1, 1), rounds, per_round, mode, &note);
    transfer_report(&array, (1, 1), rounds, per_round, mode, &note);
    transfer_report(&*port, (2, 2), rounds, per_round, mode, &note);
    transfer_report(&array, (2, 2), rounds, per_round, mode, &note);

    let (a, b): (Box<PortQueue<u64, CAPACITY>>, Box<PortQueue<u64, CAPACITY>>) = (Box::new(PortQueue::new()), Box::new(PortQueue::new()));
    pingpong_rtt(&*a, &*b, rtts, mode, &note);
    let (c, d) = (ArrayQueue::new(CAPACITY), ArrayQueue::new(CAPACITY));
    pingpong_rtt(&c, &d, rtts, mode, &note);
}
