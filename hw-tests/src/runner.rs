//! Running scenarios under QEMU and reporting them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use matryoshka_boot::emulators::{self, BochsRun};
use matryoshka_boot::qemu::{self, Accel, Feed, Firmware, Mode, QemuRun, Serial};
use serde_json::json;

use crate::protocol::Check;
use crate::protocol::{evaluate, LogAnalysis, Outcome, Verdict};
use crate::scenario::{Emulator, RootProgram, Scenario};

/// How long QEMU may keep running after the kernel printed its verdict
/// (`done` record or `all CPUs stopped`).
pub const EXIT_GRACE: Duration = Duration::from_secs(20);

/// Settings shared by every scenario of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub kernel: PathBuf,
    /// The root user program, passed as the boot module `init`.
    pub init: PathBuf,
    /// The system-call fuzzer, the root program of the fuzz scenarios.
    pub fuzz: PathBuf,
    /// `build/hw-tests`: logs and per-scenario images.
    pub out_dir: PathBuf,
    pub accel: Accel,
    pub firmware: Firmware,
    pub timeout_scale: f64,
    pub log_level: String,
    pub memory_mb: u32,
}

/// The result of one scenario.
#[derive(Debug)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub log: PathBuf,
    pub elapsed: Duration,
    /// Set when the scenario could not even be started (image build, spawn).
    pub error: Option<String>,
    pub verdict: Verdict,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.verdict.passed()
    }

    /// Machine-readable `HWTEST {...}` lines: one per case, one per check,
    /// one for the scenario.
    pub fn hwtest_lines(&self) -> Vec<String> {
        let name = &self.scenario.name;
        let mut out = Vec::new();
        for c in &self.verdict.cases {
            let mut v = json!({"scenario": name, "case": c.name, "status": c.status});
            if let Some(r) = &c.record {
                if let Some(cpu) = r.cpu {
                    v["cpu"] = json!(cpu);
                }
                if let Some(m) = r.micros {
                    v["micros"] = json!(m);
                }
                if let Some(d) = r.detail.as_deref().filter(|d| !d.is_empty()) {
                    v["detail"] = json!(d);
                }
            }
            out.push(format!("HWTEST {v}"));
        }
        for c in &self.verdict.checks {
            let mut v = json!({"scenario": name, "check": c.name, "status": if c.ok { "pass" } else { "fail" }});
            if !c.ok && !c.detail.is_empty() {
                v["detail"] = json!(c.detail);
            }
            out.push(format!("HWTEST {v}"));
        }
        let mut v = json!({
            "scenario": name,
            "status": if self.passed() { "pass" } else { "fail" },
            "seconds": (self.elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "log": self.log.display().to_string(),
        });
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        out.push(format!("HWTEST {v}"));
        out
    }
}

/// Boot one scenario and judge it.
pub fn run_scenario(s: &Scenario, cfg: &RunConfig) -> ScenarioReport {
    let start = Instant::now();
    let log = cfg.out_dir.join(format!("{}.log", s.name));
    let work = cfg.out_dir.join(&s.name);
    let mut report =
        ScenarioReport { scenario: s.clone(), log: log.clone(), elapsed: Duration::ZERO, error: None, verdict: Verdict::default() };
    match boot(s, cfg, &work, &log) {
        Ok(v) => report.verdict = v,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            let _ = std::fs::write(&log, format!("[hw-tests] scenario could not run: {msg}\n"));
            report.error = Some(msg);
        }
    }
    report.elapsed = start.elapsed();
    report
}

fn boot(s: &Scenario, cfg: &RunConfig, work: &Path, log: &Path) -> Result<Verdict> {
    if s.emulator == Emulator::Bochs {
        return boot_bochs(s, cfg, work, log);
    }
    let firmware = if s.mode == Mode::Direct { cfg.firmware } else { Firmware::Seabios };
    let root_program = match s.root_program {
        RootProgram::Init => &cfg.init,
        RootProgram::Fuzz => &cfg.fuzz,
    };
    let run = QemuRun::new(&cfg.kernel, work)
        .init(Some(root_program))
        .mode(s.mode)
        .cpus(s.cpus)
        .accel(cfg.accel)
        .memory_mb(cfg.memory_mb)
        .firmware(firmware)
        .cmdline(s.cmdline(&cfg.log_level))
        .serial(Serial::Stdio);
    let run = if s.emulator == Emulator::Qemu10 {
        let dir = emulators::qemu10_dir();
        if !emulators::qemu10_binary(&dir).is_file() {
            anyhow::bail!("QEMU 10 is not unpacked in {} (run `just setup`)", dir.display());
        }
        let mut run = run;
        run.qemu = emulators::qemu10_binary(&dir);
        emulators::qemu10_args(&dir).into_iter().fold(run, |r, a| r.extra_arg(a))
    } else {
        run
    };
    run.prepare()?;
    let mut cmd = run.command()?;
    let mut line = run.shell_line()?;
    if s.emulator == Emulator::Qemu10 {
        let (var, value) = emulators::qemu10_env(&emulators::qemu10_dir());
        cmd.env(var, &value);
        line = format!("{var}={} {line}", qemu::shell_quote(&value.display().to_string()));
    }
    let timeout = Duration::from_secs_f64(s.timeout.as_secs_f64() * cfg.timeout_scale);
    let mut analysis = LogAnalysis::for_expect(&s.expect);
    for text in &s.must_print {
        analysis = analysis.watch(text.clone());
    }
    // Once the kernel has reported its verdict QEMU must exit promptly; a
    // kernel that never writes to isa-debug-exit fails fast, not after the
    // whole timeout.
    let captured = qemu::run_captured_with_input(cmd, log, timeout, s.input.clone(), |l| {
        analysis.feed(l);
        if analysis.finished() {
            qemu::Control::ExitWithin(EXIT_GRACE)
        } else {
            qemu::Control::Continue
        }
    })?;
    // Record the command used at the end of the log for reproduction.
    {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(f, "[hw-tests] command: {line}");
            let _ = writeln!(f, "[hw-tests] {}", qemu::describe_exit(captured.code()));
        }
    }
    let outcome = Outcome { exit_code: captured.code(), timed_out: captured.timed_out };
    let mut verdict = evaluate(&analysis, &s.expect, s.cpus, s.expected_exit, outcome);
    verdict.checks.extend(printed_checks(&analysis, &s.must_print));
    Ok(verdict)
}

/// A scenario under Bochs: the GRUB ISO with the scenario's command line,
/// `c` for Bochs's debugger, and the run stopped once the kernel printed its
/// verdict. Bochs cannot exit with the kernel's status, so the verdict is
/// the serial log's: the exit-status check passes only when that verdict was
/// printed (a miss, a hang or a timeout fails; failed cases and panics fail
/// their own checks).
fn boot_bochs(s: &Scenario, cfg: &RunConfig, work: &Path, log: &Path) -> Result<Verdict> {
    let root_program = match s.root_program {
        RootProgram::Init => &cfg.init,
        RootProgram::Fuzz => &cfg.fuzz,
    };
    std::fs::create_dir_all(work)?;
    let iso = work.join("matryoshka.iso");
    matryoshka_boot::image::build_iso(&cfg.kernel, Some(root_program), &s.cmdline(&cfg.log_level), &iso)?;
    let run = BochsRun { iso, cpus: s.cpus, memory_mb: cfg.memory_mb, ips: 200_000_000, work_dir: work.to_path_buf() };
    run.prepare()?;
    let timeout = Duration::from_secs_f64(s.timeout.as_secs_f64() * cfg.timeout_scale);
    let mut analysis = LogAnalysis::for_expect(&s.expect);
    for text in &s.must_print {
        analysis = analysis.watch(text.clone());
    }
    let start_debugger = vec![Feed { after: None, send: b"c\n".to_vec(), until: None, every: Duration::from_secs(1) }];
    let captured = qemu::run_captured_with_input(run.command(), log, timeout, start_debugger, |l| {
        analysis.feed(l);
        if analysis.finished() {
            qemu::Control::Stop
        } else {
            qemu::Control::Continue
        }
    })?;
    {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(f, "[hw-tests] command: {}", run.shell_line());
        }
    }
    let outcome = Outcome { exit_code: captured.stopped.then_some(s.expected_exit), timed_out: captured.timed_out };
    let mut verdict = evaluate(&analysis, &s.expect, s.cpus, s.expected_exit, outcome);
    verdict.checks.extend(printed_checks(&analysis, &s.must_print));
    Ok(verdict)
}

/// One check per text the scenario requires in its log.
pub fn printed_checks(analysis: &LogAnalysis, must_print: &[String]) -> Vec<Check> {
    must_print
        .iter()
        .map(|text| {
            let seen = analysis.messages_seen.contains(text);
            Check { name: "printed", ok: seen, detail: if seen { String::new() } else { format!("no line contains `{text}`") } }
        })
        .collect()
}

/// The last `n` lines of a file (for failure reports).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|s| s.to_string()).collect()
}

/// Run `scenarios` with at most `jobs` at once, calling `done` (serialized)
/// as each finishes. Reports come back in the scenarios' order.
pub fn run_all(scenarios: &[Scenario], cfg: &RunConfig, jobs: usize, done: impl Fn(&ScenarioReport) + Sync) -> Vec<ScenarioReport> {
    // Longest timeouts first: they are the slow ones, so the tail is short.
    let mut order: Vec<usize> = (0..scenarios.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(scenarios[i].timeout));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<ScenarioReport>>> = Mutex::new((0..scenarios.len()).map(|_| None).collect());
    let print_lock = Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(scenarios.len().max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = order.get(k) else { break };
                let r = run_scenario(&scenarios[i], cfg);
                {
                    let _g = print_lock.lock().unwrap();
                    done(&r);
                }
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.expect("every scenario ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_text_is_checked() {
        let must = vec!["fuzz: seed 1: ".to_string(), " 0 leaks".to_string()];
        let mut a = LogAnalysis::new();
        for t in &must {
            a = a.watch(t.clone());
        }
        a.feed("[cpu0] user: fuzz: seed 1: 10 random calls, 0 targeted calls, 1.0 seconds, 10 calls/s random, 0 calls/s targeted, 2 leaks");
        let checks = printed_checks(&a, &must);
        assert_eq!(checks.len(), 2);
        assert!(checks[0].ok);
        assert!(!checks[1].ok);
        assert!(checks[1].detail.contains("0 leaks"));
    }
}
