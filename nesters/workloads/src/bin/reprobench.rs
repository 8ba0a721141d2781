//! reprobench: the in-guest half of `just reproduce`. Runs each workload
//! bare and under each stack of nesters, `--reps` times, interleaved (every
//! cell once, then every cell again: drift on a shared machine hits all
//! cells alike), and prints one line per run:
//!
//! `REPRO {"workload":..,"stack":[outermost,..],"rep":i,"status":s,"total":T,"steady":S,"ipc":C,"faults":F,"cr3":L}`
//!
//! T is the TSC from spawn to wait (retired instructions under `-icount`),
//! S the workload's own `steady` report (its work without its start-up),
//! C the IPC calls in the whole system meanwhile (fast path and general)
//! F the page faults the kernel resolved and L the CR3 loads (TLB flushes
//! without PCID): the crossings that explain a layer's cost.
//!
//! Options: `--reps N` (default 1), `--depths 0,1,2,4,8` (passthru stack
//! depths; default 0 to 8), `--workloads hello,mk,ipcload` (default all).

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use matryoshka_nest::client::{Pm, SpawnRefs};
use matryoshka_nest::proto::slot;
use matryoshka_nest::{errln, io, outln};
use matryoshka_rt::object as obj;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

/// The workloads and their command lines.
const WORKLOADS: &[(&str, &[&str])] = &[("hello", &["hello"]), ("mk", &["mk", "/src", "/tmp/mk"]), ("ipcload", &["ipcload", "2000"])];

/// (IPC calls, fast path and general; faults the kernel resolved; CR3
/// loads, each a TLB flush without PCID) so far.
fn crossings() -> (u64, u64, u64) {
    obj::system_info().map(|i| (i.fast_ipc_switches + i.general_ipc_calls, i.kernel_faults, i.cr3_loads)).unwrap_or((0, 0, 0))
}

/// One run of `argv` under `depth` passthru layers: (status, total, steady).
fn once(pm: &Pm, depth: usize, argv: &[&str]) -> Result<(u64, u64, u64), String> {
    let mut full: Vec<&str> = Vec::new();
    for _ in 0..depth {
        full.extend_from_slice(&["passthru", "--"]);
    }
    full.extend_from_slice(argv);
    let path = format!("/bin/{}", full[0]);
    let (r, w) = pm.pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut refs = SpawnRefs::default();
    refs.refs[slot::STDOUT as usize] = Some(w.0);
    let t0 = workloads::tsc();
    let spawned = pm.spawn(&path, &full, &["PWD=/", "PATH=/bin"], &refs, 0);
    // Only our handle: a protocol close would end the pipe end the child holds too.
    let _ = matryoshka_rt::object::close(w.0);
    let child = spawned.map_err(|e| format!("spawn {}: {e}", full.join(" ")))?;
    // The pipe holds 64 KiB, far more than any workload prints: read it after the wait.
    let (_, status) = pm.wait(child.pid, true).map_err(|e| format!("wait: {e}"))?;
    let total = workloads::tsc() - t0;
    let out = r.read_to_end().unwrap_or_default();
    let _ = r.close();
    let text = String::from_utf8_lossy(&out);
    let steady = text.lines().rev().find_map(|l| l.strip_prefix("steady ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    Ok((status, total, steady))
}

fn run() -> i32 {
    let args: Vec<&str> = matryoshka_rt::env::args().skip(1).collect();
    let mut reps = 1;
    let mut depths: Vec<usize> = (0..=8).collect();
    let mut names: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (*a, it.next()) {
            ("--reps", Some(n)) => reps = n.parse().unwrap_or(1),
            ("--depths", Some(d)) => depths = d.split(',').filter_map(|x| x.parse().ok()).collect(),
            ("--workloads", Some(w)) => names = w.split(',').collect(),
            _ => {
                errln!("usage: reprobench [--reps N] [--depths 0,1,..] [--workloads hello,mk,ipcload]");
                return 2;
            }
        }
    }
    let Some(pm) = io::pm() else { return 1 };
    let mut failures = 0;
    for rep in 0..reps {
        for &(name, argv) in WORKLOADS.iter().filter(|w| names.contains(&w.0)) {
            for &depth in &depths {
                let before = crossings();
                let result = once(&pm, depth, argv);
                let after = crossings();
                match result {
                    Ok((status, total, steady)) => {
                        let stack: Vec<String> = (0..depth).map(|_| String::from("\"passthru\"")).collect();
                        outln!(
                            "REPRO {{\"workload\":\"{name}\",\"stack\":[{}],\"rep\":{rep},\"status\":{status},\"total\":{total},\"steady\":{steady},\"ipc\":{},\"faults\":{},\"cr3\":{}}}",
                            stack.join(","),
                            after.0 - before.0,
                            after.1 - before.1,
                            after.2 - before.2
                        );
                        failures += (status != 0) as i32;
                    }
                    Err(e) => {
                        errln!("reprobench: {name} under {depth} layers: {e}");
                        failures += 1;
                    }
                }
            }
        }
    }
    failures.min(1)
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
