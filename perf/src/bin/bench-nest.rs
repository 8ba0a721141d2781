//! `just bench-nest`: the nester stack's benchmarks (issue 12): spawn and
//! wait, pipe round trip and 64 KiB stream, file open+close, stat, 4 KiB
//! pread and pwrite, and memory per process, each bare and under 1 and 8
//! stacked `passthru` layers.
//!
//! It boots the system twice, under plain TCG (TSC cycles: median and p99)
//! and under `-icount shift=0,align=off,sleep=off` (the guest TSC counts
//! retired instructions: deterministic), and has the shell run
//! `nestbench` bare, then under `passthru` once and eight times. Prints
//! one JSON object per benchmark and depth on stdout (`instructions_per_op`,
//! `median_cycles`, `p99_cycles`, and `vs_bare_pct`, the instruction
//! difference against the bare run), then a table on stderr.

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
#[command(about = "Run the nester stack's benchmarks bare and under stacked passthru; print JSON lines and a table")]
struct Args {
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Use the existing build/kernel.elf and build/boot.cpio.
    #[arg(long)]
    no_build: bool,
    /// Seconds each boot may take.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

/// Depths measured.
const LAYERS: [u32; 3] = [0, 1, 8];

fn command_line() -> String {
    LAYERS.iter().map(|&n| format!("{}nestbench --layers {n}", "passthru -- ".repeat(n as usize))).collect::<Vec<_>>().join("; ")
}

fn boot(root: &std::path::Path, kernel: &PathBuf, archive: &PathBuf, args: &Args, icount: bool) -> Result<Vec<Value>> {
    let name = format!("bench-nest-{}", if icount { "icount" } else { "tsc" });
    let work = workspace::build_dir(root).join("bench");
    let cmdline = format!("exit=qemu log=warn -- {}", command_line());
    let q = QemuRun::new(kernel, &work).init(Some(archive)).cpus(args.cpus).icount(icount).cmdline(cmdline).serial(Serial::Stdio);
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
    let args = match matryoshka_boot::cli::parse::<Args>("bench-nest") {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => matryoshka_boot::cli::fail("bench-nest", &e),
    }
}

fn run(args: &Args) -> Result<()> {
    let root = workspace::root()?;
    let (kernel, archive) = workspace::images(&root, args.no_build)?;
    let mut merged: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for icount in [false, true] {
        eprintln!("bench-nest: booting the system {}", if icount { "under -icount" } else { "(TSC cycles)" });
        for v in boot(&root, &kernel, &archive, args, icount)? {
            let name = v["bench"].as_str().context("benchmark line without a name")?.to_string();
            let layers = v["layers"].as_u64().unwrap_or(0);
            let entry = merged.entry((name.clone(), layers)).or_insert_with(|| json!({"bench": name, "layers": layers, "cpus": args.cpus}));
            if name == "memory_per_process" {
                for k in ["frames", "bytes", "kernel_heap_bytes"] {
                    entry[k] = v[k].clone();
                }
            } else if icount {
                entry["instructions_per_op"] = v["median_cycles"].clone();
            } else {
                for k in ["iterations", "median_cycles", "p99_cycles"] {
                    entry[k] = v[k].clone();
                }
            }
        }
    }
    let bare: BTreeMap<String, f64> = merged
        .iter()
        .filter(|((_, l), _)| *l == 0)
        .filter_map(|((n, _), v)| v["instructions_per_op"].as_f64().map(|i| (n.clone(), i)))
        .collect();
    for ((name, _), v) in merged.iter_mut() {
        if let (Some(b), Some(i)) = (bare.get(name), v["instructions_per_op"].as_f64()) {
            v["vs_bare_pct"] = json!(((i - b) / b * 1000.0).round() / 10.0);
        }
    }
    for v in merged.values() {
        println!("{v}");
    }
    eprintln!();
    eprintln!(
        "{:<22} {:>6} {:>10} {:>14} {:>12} {:>14} {:>10}",
        "bench", "layers", "iterations", "median cycles", "p99 cycles", "instructions", "vs bare"
    );
    let cell = |v: &Value| if v.is_null() { "-".to_string() } else { v.to_string() };
    for v in merged.values() {
        let extra = if v["frames"].is_null() { cell(&v["instructions_per_op"]) } else { format!("{} frames", v["frames"]) };
        eprintln!(
            "{:<22} {:>6} {:>10} {:>14} {:>12} {:>14} {:>9}%",
            v["bench"].as_str().unwrap_or("?"),
            cell(&v["layers"]),
            cell(&v["iterations"]),
            cell(&v["median_cycles"]),
            cell(&v["p99_cycles"]),
            extra,
            cell(&v["vs_bare_pct"])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_stacks_passthru() {
        assert_eq!(
            super::command_line(),
            "nestbench --layers 0; passthru -- nestbench --layers 1; passthru -- passthru -- passthru -- passthru -- passthru -- passthru -- passthru -- passthru -- nestbench --layers 8"
        );
    }
}
