//! `just bench-ipc`: boots the kernel in QEMU with `test=bench` and collects
//! the root program's benchmark lines.
//!
//! Four boots: the IPC fast path on and off (`fastpath=off`), each once
//! under plain TCG (TSC cycles: median and p99 over many iterations) and
//! once under `-icount shift=0,align=off,sleep=off`, where the guest TSC
//! counts retired instructions — deterministic from run to run, so the
//! `instructions_per_op` column is what a regression dashboard should watch.
//! Prints one JSON object per benchmark on stdout, then a table and the
//! fast/slow ratio on stderr. Each same-CPU round trip runs twice: with
//! client and server threads of one space (`ipc_rt_fastpath`,
//! `ipc_rt_slowpath`) and with the server in a child space
//! (`ipc_rt_cross_space`, `ipc_rt_cross_space_slowpath`), so that every leg
//! switches address spaces. The same-CPU round trips also carry their two
//! legs (`call_leg_*`, `reply_leg_*`: one thread's TSC stamp just before
//! its `syscall` to the other's just after, less what the stamping costs),
//! in cycles and, from the `-icount` boots, in instructions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use matryoshka_boot::qemu::{run_captured, Control, QemuRun, Serial};
use matryoshka_boot::workspace;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Run the in-guest IPC benchmarks and print JSON lines and a table")]
struct Args {
    /// CPUs to give the guest (cross-CPU benchmarks need at least 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Use the existing build/kernel.elf and build/boot.cpio.
    #[arg(long)]
    no_build: bool,
    /// Seconds each boot may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

struct Run {
    fastpath: bool,
    icount: bool,
}

fn boot(root: &std::path::Path, kernel: &PathBuf, init: &PathBuf, args: &Args, run: &Run) -> Result<Vec<Value>> {
    let name = format!("bench-{}-{}", if run.fastpath { "fast" } else { "slow" }, if run.icount { "icount" } else { "tsc" });
    let work = workspace::build_dir(root).join("bench");
    // The slow-path boot also turns cross-CPU spinning off: its cross-CPU
    // number is the blocking (IPI) round trip, the fast boot's the polled one.
    let cmdline = format!("test=bench exit=qemu log=warn {}", if run.fastpath { "fastpath=on" } else { "fastpath=off ipc_spin=0" });
    let q = QemuRun::new(kernel, &work).init(Some(init)).cpus(args.cpus).icount(run.icount).cmdline(cmdline).serial(Serial::Stdio);
    q.prepare()?;
    let mut lines = Vec::new();
    let log = work.join(format!("{name}.log"));
    let captured = run_captured(q.command()?, &log, Duration::from_secs(args.timeout), |line| {
        if let Some(at) = line.find("{\"bench\"") {
            lines.push(line[at..].to_string());
        }
        Control::Continue
    })
    .with_context(|| format!("boot {name}"))?;
    if captured.timed_out {
        bail!("{name}: timed out after {} s (log: {})", args.timeout, log.display());
    }
    if captured.code() != Some(matryoshka_boot::qemu::EXIT_SUCCESS) {
        bail!("{name}: the guest failed ({}); log: {}", matryoshka_boot::qemu::describe_exit(captured.code()), log.display());
    }
    lines.iter().map(|l| serde_json::from_str(l).with_context(|| format!("{name}: bad benchmark line {l}"))).collect()
}

fn main() -> ExitCode {
    let args = match matryoshka_boot::cli::parse::<Args>("bench-ipc") {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => matryoshka_boot::cli::fail("bench-ipc", &e),
    }
}

fn run(args: &Args) -> Result<()> {
    let root = workspace::root()?;
    let (kernel, init) = workspace::images(&root, args.no_build)?;
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for run in [
        Run { fastpath: true, icount: false },
        Run { fastpath: false, icount: false },
        Run { fastpath: true, icount: true },
        Run { fastpath: false, icount: true },
    ] {
        eprintln!(
            "bench-ipc: booting with fastpath={} {}",
            if run.fastpath { "on" } else { "off" },
            if run.icount { "under -icount" } else { "(TSC cycles)" }
        );
        for v in boot(&root, &kernel, &init, args, &run)? {
            let name = v["bench"].as_str().context("benchmark line without a name")?.to_string();
            // These appear in both boots; keep the fast-path boot's.
            if !run.fastpath && (name == "null_syscall" || name == "ipc_oneway_throughput") {
                continue;
            }
            let key = match v.get("pairs") {
                Some(p) => format!("{name}/{p}"),
                None => name.clone(),
            };
            let entry = merged.entry(key).or_insert_with(|| json!({"bench": name}));
            if run.icount {
                entry["instructions_per_op"] = v["median_cycles"].clone();
                for leg in ["call_leg", "reply_leg"] {
                    if !v[format!("{leg}_median_cycles")].is_null() {
                        entry[format!("{leg}_instructions")] = v[format!("{leg}_median_cycles")].clone();
                    }
                }
            } else {
                for key in [
                    "cpus",
                    "iterations",
                    "median_cycles",
                    "p99_cycles",
                    "pairs",
                    "msgs_per_sec",
                    "call_leg_median_cycles",
                    "reply_leg_median_cycles",
                ] {
                    if !v[key].is_null() {
                        entry[key] = v[key].clone();
                    }
                }
            }
        }
    }
    for v in merged.values() {
        println!("{v}");
    }
    eprintln!();
    eprintln!(
        "{:<28} {:>6} {:>10} {:>14} {:>12} {:>14} {:>14}",
        "bench", "cpus", "iterations", "median cycles", "p99 cycles", "instructions", "msgs/s (pairs)"
    );
    let cell = |v: &Value| if v.is_null() { "-".to_string() } else { v.to_string() };
    for v in merged.values() {
        let rate = if v["msgs_per_sec"].is_null() { String::new() } else { format!("{} ({})", v["msgs_per_sec"], v["pairs"]) };
        eprintln!(
            "{:<28} {:>6} {:>10} {:>14} {:>12} {:>14} {:>14}",
            v["bench"].as_str().unwrap_or("?"),
            cell(&v["cpus"]),
            cell(&v["iterations"]),
            cell(&v["median_cycles"]),
            cell(&v["p99_cycles"]),
            cell(&v["instructions_per_op"]),
            rate
        );
    }
    let get = |b: &str, k: &str| merged.get(b).and_then(|v| v[k].as_f64());
    for (what, fast, slow) in [
        ("same-CPU round trip", "ipc_rt_fastpath", "ipc_rt_slowpath"),
        ("cross-space round trip", "ipc_rt_cross_space", "ipc_rt_cross_space_slowpath"),
    ] {
        if let (Some(f), Some(s)) = (get(fast, "instructions_per_op"), get(slow, "instructions_per_op")) {
            eprintln!("\n{what}, slow path / fast path: {:.2}x in instructions", s / f);
        }
        if let (Some(f), Some(s)) = (get(fast, "median_cycles"), get(slow, "median_cycles")) {
            eprintln!("{what}, slow path / fast path: {:.2}x in median TSC cycles (noisy under TCG)", s / f);
        }
    }
    eprintln!();
    for bench in ["ipc_rt_fastpath", "ipc_rt_cross_space", "ipc_rt_slowpath", "ipc_rt_cross_space_slowpath"] {
        if let (Some(call), Some(reply)) = (get(bench, "call_leg_instructions"), get(bench, "reply_leg_instructions")) {
            eprintln!("{bench}, syscall to sysret: call leg {call} instructions, reply_wait leg {reply}");
        }
    }
    // What switching address spaces adds to each fast-path leg.
    let leg = |b: &str, l: &str| get(b, &format!("{l}_leg_instructions"));
    if let (Some(sc), Some(sr), Some(xc), Some(xr)) = (
        leg("ipc_rt_fastpath", "call"),
        leg("ipc_rt_fastpath", "reply"),
        leg("ipc_rt_cross_space", "call"),
        leg("ipc_rt_cross_space", "reply"),
    ) {
        eprintln!("fast path, cross-space less same-space: call leg {:+} instructions, reply_wait leg {:+}", xc - sc, xr - sr);
    }
    Ok(())
}
