//! `just reproduce`: Fluke's evaluation (OSDI'96: each type of nester layer
//! slows an application by "typically 0–35%") regenerated with one command.
//!
//! Boots the system twice with `-smp 1`: under `-icount shift=0,align=off,
//! sleep=off` (the guest TSC counts retired instructions: deterministic,
//! one repetition) and under plain TCG (host time; repetitions interleaved,
//! medians), and has the shell run `reprobench`, which runs every workload
//! (hello, mk: 20 compiles through the file server, ipcload: 2000 small
//! requests to a server in another space) bare and under stacks of
//! `passthru` 1..8 deep. For each cell it reports start-up and steady
//! state apart, the slowdown against bare, and the crossings (IPC calls and
//! kernel-resolved faults) that explain it: the extra IPC calls of a layer
//! times the cost of one call (from ipcload's bare run) against the
//! measured difference.
//!
//! Writes JSON lines (one per cell, schema in perf/README.md) to stdout and
//! `build/reproduce/cells.jsonl`, a Markdown table with Fluke's figures
//! beside ours to `build/reproduce/results.md` (and stderr), and keeps
//! every run in an SQLite store (`results/matryoshka.sqlite`, or
//! `--db PATH`): git commit, date, machine, mode and every cell.
//! `--quick` is the CI-sized subset (depths 0, 1, 8; 3 TCG repetitions).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use matryoshka_boot::qemu::{run_captured, Control, QemuRun, Serial};
use matryoshka_boot::workspace;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    about = "Reproduce Fluke's per-layer evaluation: every workload bare and under nester stacks; JSON lines, a table, an SQLite history"
)]
struct Args {
    /// The CI-sized subset: depths 0, 1 and 8, three TCG repetitions.
    #[arg(long)]
    quick: bool,
    /// TCG repetitions per cell (medians are reported); at least 5 for the full matrix.
    #[arg(long)]
    reps: Option<u32>,
    /// Use the existing build/kernel.elf and build/boot.cpio.
    #[arg(long)]
    no_build: bool,
    /// Seconds each boot may take.
    #[arg(long, default_value_t = 3000)]
    timeout: u64,
    /// The results store.
    #[arg(long)]
    db: Option<PathBuf>,
}

/// Fluke's published figures, printed beside ours.
const FLUKE: &str = "Fluke (OSDI'96): each type of nester layer slows an application by typically 0–35% (talk slides: 0–30% per layer); \
null IPC round trip 13.5 µs ≈ 2,700 cycles on a 200 MHz Pentium Pro.";

/// One run of one cell as the guest reported it.
#[derive(Debug, Clone)]
struct Run {
    workload: String,
    stack: Vec<String>,
    status: u64,
    total: u64,
    steady: u64,
    ipc: u64,
    faults: u64,
    cr3: u64,
}

fn parse_run(v: &Value) -> Option<Run> {
    Some(Run {
        workload: v["workload"].as_str()?.to_string(),
        stack: v["stack"].as_array()?.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        status: v["status"].as_u64()?,
        total: v["total"].as_u64()?,
        steady: v["steady"].as_u64()?,
        ipc: v["ipc"].as_u64()?,
        faults: v["faults"].as_u64()?,
        // Older guests do not report it.
        cr3: v["cr3"].as_u64().unwrap_or(0),
    })
}

fn boot(root: &Path, kernel: &Path, archive: &Path, args: &Args, icount: bool, reps: u32, depths: &str) -> Result<Vec<Run>> {
    let mode = if icount { "icount" } else { "tcg" };
    let work = workspace::build_dir(root).join("reproduce");
    let cmdline = format!("exit=qemu log=warn -- reprobench --reps {reps} --depths {depths}");
    let q = QemuRun::new(kernel.to_path_buf(), &work).init(Some(archive)).cpus(1).icount(icount).cmdline(cmdline).serial(Serial::Stdio);
    q.prepare()?;
    let log = work.join(format!("boot-{mode}.log"));
    let mut runs = Vec::new();
    let mut bad = Vec::new();
    let captured = run_captured(q.command()?, &log, Duration::from_secs(args.timeout), |line| {
        if let Some(at) = line.find("REPRO {") {
            match serde_json::from_str::<Value>(&line[at + 6..]).ok().as_ref().and_then(parse_run) {
                Some(r) => runs.push(r),
                None => bad.push(line.to_string()),
            }
        }
        Control::Continue
    })
    .with_context(|| format!("boot ({mode})"))?;
    if let Some(l) = bad.first() {
        bail!("{mode}: a malformed result line: {l} (log: {})", log.display());
    }
    if captured.timed_out {
        bail!("{mode}: timed out after {} s (log: {})", args.timeout, log.display());
    }
    if captured.code() != Some(matryoshka_boot::qemu::EXIT_SUCCESS) {
        bail!("{mode}: the guest failed ({}); log: {}", matryoshka_boot::qemu::describe_exit(captured.code()), log.display());
    }
    if let Some(r) = runs.iter().find(|r| r.status != 0) {
        bail!("{mode}: {} under {:?} exited with {} (log: {})", r.workload, r.stack, r.status, log.display());
    }
    Ok(runs)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// A cell: one workload under one stack in one mode, its runs' medians.
struct Cell {
    workload: String,
    stack: Vec<String>,
    mode: &'static str,
    total: u64,
    steady: u64,
    ipc: u64,
    faults: u64,
    cr3: u64,
}

fn cells(runs: &[Run], mode: &'static str) -> Vec<Cell> {
    let mut by: BTreeMap<(String, usize), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by.entry((r.workload.clone(), r.stack.len())).or_default().push(r);
    }
    by.into_values()
        .map(|rs| Cell {
            workload: rs[0].workload.clone(),
            stack: rs[0].stack.clone(),
            mode,
            total: median(rs.iter().map(|r| r.total).collect()),
            steady: median(rs.iter().map(|r| r.steady).collect()),
            ipc: median(rs.iter().map(|r| r.ipc).collect()),
            faults: median(rs.iter().map(|r| r.faults).collect()),
            cr3: median(rs.iter().map(|r| r.cr3).collect()),
        })
        .collect()
}

fn pct(value: u64, bare: u64) -> f64 {
    if bare == 0 {
        return 0.0;
    }
    ((value as f64 / bare as f64 - 1.0) * 1000.0).round() / 10.0
}

fn git_commit(root: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    format!("{} ({cpus} CPUs, {model})", host.trim())
}

/// Keeps the run and its cells.
fn store(db: &Path, root: &Path, quick: bool, cells: &[Value]) -> Result<i64> {
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut conn = rusqlite::Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, tool TEXT NOT NULL, git_commit TEXT NOT NULL, \
           date TEXT NOT NULL, machine TEXT NOT NULL, quick INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS cells (run INTEGER NOT NULL REFERENCES runs(id), workload TEXT NOT NULL, \
           stack TEXT NOT NULL, mode TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL, bare REAL, \
           slowdown_pct REAL, json TEXT NOT NULL);",
    )?;
    let tx = conn.transaction()?;
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    tx.execute(
        "INSERT INTO runs (tool, git_commit, date, machine, quick) VALUES ('reproduce', ?1, ?2, ?3, ?4)",
        rusqlite::params![git_commit(root), date, machine(), quick as i64],
    )?;
    let run = tx.last_insert_rowid();
    for c in cells {
        tx.execute(
            "INSERT INTO cells (run, workload, stack, mode, value, unit, bare, slowdown_pct, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                run,
                c["workload"].as_str(),
                c["stack"].to_string(),
                c["mode"].as_str(),
                c["value"].as_f64(),
                c["unit"].as_str(),
                c["bare"].as_f64(),
                c["slowdown_pct"].as_f64(),
                c.to_string()
            ],
        )?;
    }
    tx.commit()?;
    Ok(run)
}

fn main() -> ExitCode {
    let args = match matryoshka_boot::cli::parse::<Args>("reproduce") {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => matryoshka_boot::cli::fail("reproduce", &e),
    }
}

fn run(args: &Args) -> Result<()> {
    let root = workspace::root()?;
    let (kernel, archive) = workspace::images(&root, args.no_build)?;
    let depths = if args.quick { "0,1,8" } else { "0,1,2,3,4,5,6,7,8" };
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 5 });
    eprintln!("reproduce: booting under -icount (retired instructions)");
    let icount = cells(&boot(&root, &kernel, &archive, args, true, 1, depths)?, "icount");
    eprintln!("reproduce: booting under plain TCG ({reps} interleaved repetitions, medians)");
    let tcg = cells(&boot(&root, &kernel, &archive, args, false, reps, depths)?, "tcg");

    // The cost of one crossing: a bare ipcload request (one IPC round trip
    // to the file server and its work), in each mode.
    let per_call = |cells: &[Cell]| {
        cells.iter().find(|c| c.workload == "ipcload" && c.stack.is_empty()).map(|c| c.steady as f64 / c.ipc.max(1) as f64).unwrap_or(0.0)
    };
    let mut out = Vec::new();
    for (set, unit) in [(&icount, "instructions"), (&tcg, "cycles")] {
        let cost = per_call(set);
        for c in set.iter() {
            let bare = set.iter().find(|b| b.workload == c.workload && b.stack.is_empty()).unwrap_or(c);
            let extra_ipc = c.ipc as f64 - bare.ipc as f64;
            let measured = c.total as f64 - bare.total as f64;
            // Below 0.1% of the bare figure the difference is layout noise:
            // a share of it means nothing.
            let explained = if c.stack.is_empty() || measured.abs() < bare.total as f64 / 1000.0 {
                Value::Null
            } else {
                json!(((extra_ipc * cost / measured) * 1000.0).round() / 10.0)
            };
            out.push(json!({
                "workload": c.workload,
                "stack": c.stack,
                "mode": c.mode,
                "value": c.total,
                "unit": unit,
                "bare": bare.total,
                "slowdown_pct": pct(c.total, bare.total),
                "startup": c.total.saturating_sub(c.steady),
                "steady": c.steady,
                "steady_slowdown_pct": pct(c.steady, bare.steady),
                "crossings": {"ipc": c.ipc, "faults": c.faults, "cr3_loads": c.cr3},
                "explained_pct": explained,
            }));
        }
    }
    let dir = workspace::build_dir(&root).join("reproduce");
    std::fs::create_dir_all(&dir)?;
    let mut jsonl = String::new();
    for v in &out {
        println!("{v}");
        writeln!(jsonl, "{v}")?;
    }
    std::fs::write(dir.join("cells.jsonl"), &jsonl)?;

    // The table: one row per workload and depth, both modes side by side.
    let mut md = String::new();
    writeln!(md, "# Matryoshka against Fluke's evaluation\n\n{FLUKE}\n")?;
    let ipc_rt = per_call(&icount);
    writeln!(
        md,
        "Matryoshka: one IPC round trip to the file server with its `stat` work, bare: {ipc_rt:.0} instructions (icount), {:.0} cycles (TCG).\n",
        per_call(&tcg)
    )?;
    writeln!(
        md,
        "| workload | passthru layers | instructions | vs bare | steady vs bare | start-up instr. | IPC calls | faults | explained by IPC | TCG cycles | TCG vs bare |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    let n = out.len() / 2;
    for (i, v) in out[..n].iter().enumerate() {
        let t = out[n..].iter().find(|t| t["workload"] == v["workload"] && t["stack"] == v["stack"]).unwrap_or(&out[n + i.min(n - 1)]);
        let cell = |x: &Value| if x.is_null() { "–".to_string() } else { x.to_string() };
        writeln!(
            md,
            "| {} | {} | {} | {}% | {}% | {} | {} | {} | {} | {} | {}% |",
            v["workload"].as_str().unwrap_or("?"),
            v["stack"].as_array().map_or(0, |s| s.len()),
            v["value"],
            v["slowdown_pct"],
            v["steady_slowdown_pct"],
            v["startup"],
            v["crossings"]["ipc"],
            v["crossings"]["faults"],
            if v["explained_pct"].is_null() { "–".to_string() } else { format!("{}%", v["explained_pct"]) },
            t["value"],
            cell(&t["slowdown_pct"])
        )?;
    }
    std::fs::write(dir.join("results.md"), &md)?;
    eprintln!("\n{md}");
    let db = args.db.clone().unwrap_or_else(|| root.join("results").join("matryoshka.sqlite"));
    let id = store(&db, &root, args.quick, &out)?;
    eprintln!("reproduce: run {id} kept in {}; table in {}", db.display(), dir.join("results.md").display());
    Ok(())
}
