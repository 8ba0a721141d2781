//! Parsing the kernel's serial log (KTEST protocol, panic report, SMP
//! bring-up line) and judging it against a scenario's expectations.

use serde_json::Value;

/// Marker that starts a test-protocol record anywhere in a line.
pub const KTEST_MARKER: &str = "KTEST ";

/// One `case` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseRecord {
    pub name: String,
    pub status: String,
    pub cpu: Option<u64>,
    pub micros: Option<u64>,
    pub detail: Option<String>,
}

impl CaseRecord {
    pub fn passed(&self) -> bool {
        self.status == "pass"
    }
}

/// Everything of interest seen in a serial log so far. Feed it lines in
/// order with [`LogAnalysis::feed`].
#[derive(Clone, Debug, Default)]
pub struct LogAnalysis {
    pub lines: usize,
    pub plans: Vec<Vec<String>>,
    pub cases: Vec<CaseRecord>,
    /// `(passed, failed)` of every `done` record.
    pub dones: Vec<(u64, u64)>,
    /// KTEST records that could not be understood, with the reason.
    pub malformed: Vec<String>,
    pub panic_lines: Vec<String>,
    pub backtrace_headers: usize,
    /// Lines that look like backtrace frames (`#N 0x...`).
    pub frame_lines: Vec<String>,
    pub all_stopped: usize,
    /// Every `smp: A/B CPUs online` seen, as `(A, B)`.
    pub smp_online: Vec<(u32, u32)>,
    /// Strings to look for (see [`LogAnalysis::watch`]) ...
    pub watched: Vec<String>,
    /// ... and those that appeared in some line.
    pub messages_seen: Vec<String>,
}

fn parse_smp(line: &str) -> Option<(u32, u32)> {
    let rest = &line[line.find("smp: ")? + 5..];
    let (frac, tail) = rest.split_once(' ')?;
    if !tail.starts_with("CPUs online") {
        return None;
    }
    let (a, b) = frac.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn is_frame_line(line: &str) -> bool {
    // `#<digits> 0x<hex>` somewhere in the line.
    let mut rest = line;
    while let Some(i) = rest.find('#') {
        let after = &rest[i + 1..];
        let digits = after.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && after[digits..].trim_start().starts_with("0x") {
            return true;
        }
        rest = after;
    }
    false
}

impl LogAnalysis {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also record whether any line contains `needle`.
    pub fn watch(mut self, needle: impl Into<String>) -> Self {
        self.watched.push(needle.into());
        self
    }

    /// An analysis that watches for what `expect` needs.
    pub fn for_expect(expect: &Expect) -> Self {
        match expect {
            Expect::Tests => Self::new(),
            Expect::Panic { message, .. } => Self::new().watch(message.clone()),
        }
    }

    /// Analyse a whole log at once.
    pub fn from_text(text: &str) -> Self {
        Self::new().feed_text(text)
    }

    /// Feed every line of `text`.
    pub fn feed_text(mut self, text: &str) -> Self {
        for line in text.lines() {
            self.feed(line);
        }
        self
    }

    pub fn feed(&mut self, line: &str) {
        self.lines += 1;
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(i) = line.find(KTEST_MARKER) {
            self.feed_ktest(&line[i + KTEST_MARKER.len()..]);
            return;
        }
        if line.contains("PANIC") {
            self.panic_lines.push(line.to_string());
        }
        if line.contains("backtrace:") {
            self.backtrace_headers += 1;
        }
        if is_frame_line(line) {
            self.frame_lines.push(line.to_string());
        }
        if line.contains("all CPUs stopped") {
            self.all_stopped += 1;
        }
        if let Some(s) = parse_smp(line) {
            self.smp_online.push(s);
        }
        for w in &self.watched {
            if line.contains(w.as_str()) && !self.messages_seen.contains(w) {
                self.messages_seen.push(w.clone());
            }
        }
    }

    /// The kernel has printed its final verdict (a `done` record or the end
    /// of a panic report), so QEMU should be about to exit.
    pub fn finished(&self) -> bool {
        !self.dones.is_empty() || self.all_stopped > 0
    }

    fn feed_ktest(&mut self, json: &str) {
        let v: Value = match serde_json::from_str(json.trim()) {
            Ok(v) => v,
            Err(e) => {
                self.malformed.push(format!("invalid JSON ({e}): {json}"));
                return;
            }
        };
        let event = v.get("event").and_then(Value::as_str).unwrap_or("");
        match event {
            "plan" => match v.get("cases").and_then(Value::as_array) {
                Some(list) => {
                    let names: Option<Vec<String>> = list.iter().map(|c| c.as_str().map(str::to_string)).collect();
                    match names {
                        Some(n) => self.plans.push(n),
                        None => self.malformed.push(format!("plan with a non-string case: {json}")),
                    }
                }
                None => self.malformed.push(format!("plan without a cases array: {json}")),
            },
            "case" => {
                let name = v.get("name").and_then(Value::as_str);
                let status = v.get("status").and_then(Value::as_str);
                match (name, status) {
                    (Some(name), Some(status)) => self.cases.push(CaseRecord {
                        name: name.to_string(),
                        status: status.to_string(),
                        cpu: v.get("cpu").and_then(Value::as_u64),
                        micros: v.get("micros").and_then(Value::as_u64),
                        detail: v.get("detail").and_then(Value::as_str).map(str::to_string),
                    }),
                    _ => self.malformed.push(format!("case without name/status: {json}")),
                }
            }
            "done" => {
                let p = v.get("passed").and_then(Value::as_u64);
                let f = v.get("failed").and_then(Value::as_u64);
                match (p, f) {
                    (Some(p), Some(f)) => self.dones.push((p, f)),
                    _ => self.malformed.push(format!("done without passed/failed counts: {json}")),
                }
            }
            "" => self.malformed.push(format!("record without an event: {json}")),
            // Unknown events are tolerated so the kernel can add new ones.
            _ => {}
        }
    }
}

/// What a scenario expects from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Run test cases: all planned cases reported once and passing, no
    /// panic, `done` consistent.
    Tests,
    /// Deliberate panic: exactly one PANIC line, a backtrace frame naming
    /// `function`, a line containing `message`, and `all CPUs stopped`.
    Panic { function: String, message: String },
}

/// How the QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
}

/// Result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Per-case verdict after matching results to the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseVerdict {
    pub name: String,
    /// `pass`, `fail`, `missing` (planned, no result), `unplanned`
    /// (result for a case not in the plan) or `duplicate` (more than one result).
    pub status: String,
    pub record: Option<CaseRecord>,
}

impl CaseVerdict {
    pub fn ok(&self) -> bool {
        self.status == "pass"
    }
}

/// The judgement of one scenario run.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub cases: Vec<CaseVerdict>,
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok) && self.cases.iter().all(CaseVerdict::ok)
    }
    pub fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        v.extend(self.cases.iter().filter(|c| !c.ok()).map(|c| format!("case {}: {}", c.name, c.status)));
        v
    }
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check { name, ok, detail: detail.into() }
}

/// Judge a finished run.
pub fn evaluate(a: &LogAnalysis, expect: &Expect, cpus: u32, expected_exit: i32, outcome: Outcome) -> Verdict {
    let mut v = Verdict::default();
    v.checks.push(check("no_timeout", !outcome.timed_out, if outcome.timed_out { "QEMU did not exit before the timeout" } else { "" }));
    v.checks.push(check(
        "exit_status",
        outcome.exit_code == Some(expected_exit),
        format!("expected {expected_exit}, got {}", outcome.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "none (killed)".into())),
    ));
    let want = (cpus, cpus);
    v.checks.push(check(
        "smp_online",
        a.smp_online.contains(&want),
        if a.smp_online.is_empty() {
            format!("no `smp: {cpus}/{cpus} CPUs online` line")
        } else {
            format!("expected {cpus}/{cpus}, saw {:?}", a.smp_online)
        },
    ));
    v.checks.push(check("protocol", a.malformed.is_empty(), a.malformed.first().cloned().unwrap_or_default()));
    match expect {
        Expect::Tests => evaluate_tests(a, &mut v),
        Expect::Panic { function, message } => {
            v.checks.push(check("single_panic", a.panic_lines.len() == 1, format!("{} PANIC lines", a.panic_lines.len())));
            let named = a.frame_lines.iter().any(|l| l.contains(function.as_str()));
            v.checks.push(check(
                "backtrace",
                a.backtrace_headers > 0 && named,
                if a.backtrace_headers == 0 {
                    "no `backtrace:` line".to_string()
                } else if !named {
                    format!("no backtrace frame names {function} ({} frame lines)", a.frame_lines.len())
                } else {
                    String::new()
                },
            ));
            v.checks.push(check("panic_message", a.messages_seen.iter().any(|m| m == message), format!("no line contains `{message}`")));
            v.checks.push(check("all_cpus_stopped", a.all_stopped > 0, if a.all_stopped == 0 { "no `all CPUs stopped` line" } else { "" }));
        }
    }
    v
}

fn evaluate_tests(a: &LogAnalysis, v: &mut Verdict) {
    v.checks.push(check("no_panic", a.panic_lines.is_empty(), a.panic_lines.first().cloned().unwrap_or_default()));
    let plan_ok = a.plans.len() == 1 && !a.plans[0].is_empty();
    v.checks.push(check(
        "plan",
        plan_ok,
        match a.plans.len() {
            0 => "no plan record".to_string(),
            1 if a.plans[0].is_empty() => "the plan lists no cases".to_string(),
            1 => format!("{} cases planned", a.plans[0].len()),
            n => format!("{n} plan records (expected one)"),
        },
    ));
    // Match results to the (first) plan.
    let plan: Vec<String> = a.plans.first().cloned().unwrap_or_default();
    let mut seen_plan_dup = Vec::new();
    for (i, name) in plan.iter().enumerate() {
        if plan[..i].contains(name) {
            seen_plan_dup.push(name.clone());
            continue;
        }
        let results: Vec<&CaseRecord> = a.cases.iter().filter(|c| &c.name == name).collect();
        let (status, record) = match results.as_slice() {
            [] => ("missing".to_string(), None),
            [r] => (if r.passed() { "pass" } else { "fail" }.to_string(), Some((*r).clone())),
            [r, ..] => ("duplicate".to_string(), Some((*r).clone())),
        };
        v.cases.push(CaseVerdict { name: name.clone(), status, record });
    }
    let mut unplanned: Vec<&CaseRecord> = Vec::new();
    for c in &a.cases {
        if !plan.contains(&c.name) && !unplanned.iter().any(|u| u.name == c.name) {
            unplanned.push(c);
        }
    }
    for c in unplanned {
        v.cases.push(CaseVerdict { name: c.name.clone(), status: "unplanned".into(), record: Some(c.clone()) });
    }
    if !seen_plan_dup.is_empty() {
        v.checks.push(check("plan_unique", false, format!("cases planned twice: {}", seen_plan_dup.join(", "))));
    }
    let passed = a.cases.iter().filter(|c| c.passed()).count() as u64;
    let failed = a.cases.len() as u64 - passed;
    v.checks.push(check(
        "done",
        a.dones.len() == 1 && a.dones[0] == (passed, failed),
        match a.dones.as_slice() {
            [] => "no done record".to_string(),
            [(p, f)] if (*p, *f) == (passed, failed) => format!("{p} passed, {f} failed"),
            [(p, f)] => {
                format!("done says {p} passed/{f} failed but case records say {passed}/{failed}")
            }
            d => format!("{} done records (expected one)", d.len()),
        },
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
SeaBIOS (version 1.16.2-debian-1.16.2-1)\r
Booting from ROM..\r
[cpu0] INFO  boot: Matryoshka starting\r
[cpu0] INFO  smp: 4/4 CPUs online\r
[cpu0] INFO  KTEST {\"event\":\"plan\",\"cases\":[\"frame_alloc\",\"page_map\"]}\r
[cpu0] INFO  KTEST {\"event\":\"case\",\"name\":\"frame_alloc\",\"status\":\"pass\",\"cpu\":0,\"micros\":123,\"detail\":\"\"}\r
KTEST {\"event\":\"case\",\"name\":\"page_map\",\"status\":\"pass\",\"cpu\":1,\"micros\":7}\r
[cpu0] INFO  KTEST {\"event\":\"done\",\"passed\":2,\"failed\":0}\r
";

    fn ok_outcome() -> Outcome {
        Outcome { exit_code: Some(33), timed_out: false }
    }

    fn failed_checks(v: &Verdict) -> Vec<&'static str> {
        v.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn all_pass() {
        let a = LogAnalysis::from_text(GOOD);
        assert!(a.finished());
        assert!(!LogAnalysis::from_text("smp: 1/1 CPUs online").finished());
        assert_eq!(a.smp_online, vec![(4, 4)]);
        let v = evaluate(&a, &Expect::Tests, 4, 33, ok_outcome());
        assert!(v.passed(), "{:?}", v.failures());
        assert_eq!(v.cases.len(), 2);
        assert_eq!(v.cases[0].record.as_ref().unwrap().micros, Some(123));
        assert_eq!(v.cases[1].record.as_ref().unwrap().cpu, Some(1));
    }

    #[test]
    fn wrong_cpu_count_or_exit() {
        let a = LogAnalysis::from_text(GOOD);
        let v = evaluate(&a, &Expect::Tests, 8, 33, ok_outcome());
        assert_eq!(failed_checks(&v), vec!["smp_online"]);
        let v = evaluate(&a, &Expect::Tests, 4, 33, Outcome { exit_code: Some(0), timed_out: false });
        assert_eq!(failed_checks(&v), vec!["exit_status"]);
        let v = evaluate(&a, &Expect::Tests, 4, 33, Outcome { exit_code: None, timed_out: true });
        assert_eq!(failed_checks(&v), vec!["no_timeout", "exit_status"]);
        let a = LogAnalysis::from_text("smp: 3/4 CPUs online\n");
        assert_eq!(a.smp_online, vec![(3, 4)]);
        let v = evaluate(&a, &Expect::Tests, 4, 33, ok_outcome());
        assert!(failed_checks(&v).contains(&"smp_online"));
    }

    #[test]
    fn failed_case() {
        let log = GOOD
            .replace(r#""name":"page_map","status":"pass""#, r#""name":"page_map","status":"fail""#)
            .replace(r#""passed":2,"failed":0"#, r#""passed":1,"failed":1"#);
        let v = evaluate(&LogAnalysis::from_text(&log), &Expect::Tests, 4, 35, Outcome { exit_code: Some(35), timed_out: false });
        assert!(!v.passed());
        assert!(failed_checks(&v).is_empty(), "{:?}", failed_checks(&v));
        assert_eq!(v.cases[1].status, "fail");
    }

    #[test]
    fn missing_case_and_done() {
        let log: String =
            GOOD.lines().filter(|l| !l.contains("page_map\",\"status") && !l.contains("done")).map(|l| format!("{l}\n")).collect();
        let v = evaluate(&LogAnalysis::from_text(&log), &Expect::Tests, 4, 33, ok_outcome());
        assert_eq!(v.cases[1].status, "missing");
        assert_eq!(failed_checks(&v), vec!["done"]);
        assert!(!v.passed());
    }

    #[test]
    fn done_count_mismatch() {
        let log = GOOD.replace(r#""passed":2"#, r#""passed":3"#);
        let v = evaluate(&LogAnalysis::from_text(&log), &Expect::Tests, 4, 33, ok_outcome());
        assert_eq!(failed_checks(&v), vec!["done"]);
    }

    #[test]
    fn duplicate_plan_and_case() {
        let plan = GOOD.lines().find(|l| l.contains("\"plan\"")).unwrap();
        let case = GOOD.lines().find(|l| l.contains("frame_alloc\",\"status")).unwrap();
        let log = format!("{GOOD}{plan}\n{case}\n");
        let a = LogAnalysis::from_text(&log);
        assert_eq!(a.plans.len(), 2);
        let v = evaluate(&a, &Expect::Tests, 4, 33, ok_outcome());
        assert!(failed_checks(&v).contains(&"plan"));
        assert_eq!(v.cases[0].status, "duplicate");
    }

    #[test]
    fn unplanned_case_and_empty_plan() {
        let log = format!("{GOOD}KTEST {{\"event\":\"case\",\"name\":\"extra\",\"status\":\"pass\"}}\n");
        let v = evaluate(&LogAnalysis::from_text(&log), &Expect::Tests, 4, 33, ok_outcome());
        assert!(v.cases.iter().any(|c| c.name == "extra" && c.status == "unplanned"));
        assert!(!v.passed());
        let log = "smp: 1/1 CPUs online\nKTEST {\"event\":\"plan\",\"cases\":[]}\nKTEST {\"event\":\"done\",\"passed\":0,\"failed\":0}\n";
        let v = evaluate(&LogAnalysis::from_text(log), &Expect::Tests, 1, 33, ok_outcome());
        assert_eq!(failed_checks(&v), vec!["plan"]);
    }

    #[test]
    fn panic_in_test_run_fails() {
        let log = format!("{GOOD}[cpu2] PANIC at kernel/src/mm.rs:10:5: oops\n");
        let v = evaluate(&LogAnalysis::from_text(&log), &Expect::Tests, 4, 33, ok_outcome());
        assert_eq!(failed_checks(&v), vec!["no_panic"]);
    }

    #[test]
    fn garbage_lines_are_ignored_but_bad_ktest_is_not() {
        let noise =
            "\x1b[2J\x1b[01;01H\u{fffd}\u{fffd}garbage\nGRUB loading.\nWelcome to GRUB!\n\n   \n#not a frame\nsmp: x/y CPUs online\n";
        let log = format!("{noise}{GOOD}{noise}");
        let a = LogAnalysis::from_text(&log);
        assert!(a.frame_lines.is_empty() && a.panic_lines.is_empty());
        assert!(evaluate(&a, &Expect::Tests, 4, 33, ok_outcome()).passed());
        for bad in [
            "KTEST {\"event\":\"case\",\"name\":\"x\"",
            "KTEST not json",
            "KTEST {\"event\":\"case\",\"status\":\"pass\"}",
            "KTEST {\"event\":\"plan\",\"cases\":[1,2]}",
            "KTEST {\"event\":\"done\"}",
            "KTEST {\"cases\":[]}",
        ] {
            let a = LogAnalysis::from_text(&format!("{GOOD}{bad}\n"));
            assert_eq!(a.malformed.len(), 1, "{bad}");
            let v = evaluate(&a, &Expect::Tests, 4, 33, ok_outcome());
            assert_eq!(failed_checks(&v), vec!["protocol"], "{bad}");
        }
        // Unknown events are tolerated.
        let a = LogAnalysis::from_text(&format!("{GOOD}KTEST {{\"event\":\"note\",\"x\":1}}\n"));
        assert!(a.malformed.is_empty());
    }

    const PANIC_LOG: &str = "\
[cpu0] INFO  smp: 2/2 CPUs online\n\
[cpu1] PANIC at kernel/src/ktest.rs:40:5: deliberate panic\n\
[cpu1] backtrace:\n\
[cpu1]   #0 0xffffffff80012345 kernel::ktest::deliberate_panic+0x25\n\
[cpu1]   #1 0xffffffff80010000 kernel::ktest::run+0x100\n\
[cpu1] all CPUs stopped\n";

    fn panic_expect() -> Expect {
        Expect::Panic { function: "deliberate_panic".into(), message: "deliberate panic".into() }
    }

    fn analyse(expect: &Expect, text: &str) -> LogAnalysis {
        LogAnalysis::for_expect(expect).feed_text(text)
    }

    #[test]
    fn panic_scenario_passes() {
        let a = analyse(&panic_expect(), PANIC_LOG);
        assert_eq!(a.frame_lines.len(), 2);
        let v = evaluate(&a, &panic_expect(), 2, 35, Outcome { exit_code: Some(35), timed_out: false });
        assert!(v.passed(), "{:?}", v.failures());
    }

    #[test]
    fn panic_scenario_failures() {
        let out = Outcome { exit_code: Some(35), timed_out: false };
        let twice = format!("{PANIC_LOG}[cpu0] PANIC at kernel/src/x.rs:1:1: again\n");
        let v = evaluate(&analyse(&panic_expect(), &twice), &panic_expect(), 2, 35, out);
        assert_eq!(failed_checks(&v), vec!["single_panic"]);
        let no_frame = PANIC_LOG.replace("deliberate_panic+", "something_else+");
        let v = evaluate(&analyse(&panic_expect(), &no_frame), &panic_expect(), 2, 35, out);
        assert_eq!(failed_checks(&v), vec!["backtrace"]);
        let no_stop = PANIC_LOG.replace("all CPUs stopped", "");
        let v = evaluate(&analyse(&panic_expect(), &no_stop), &panic_expect(), 2, 35, out);
        assert_eq!(failed_checks(&v), vec!["all_cpus_stopped"]);
        let v = evaluate(&analyse(&panic_expect(), PANIC_LOG), &panic_expect(), 2, 35, Outcome { exit_code: Some(0), timed_out: false });
        assert_eq!(failed_checks(&v), vec!["exit_status"]);
        let other_msg = PANIC_LOG.replace("deliberate panic", "oops");
        let v = evaluate(&analyse(&panic_expect(), &other_msg), &panic_expect(), 2, 35, out);
        assert_eq!(failed_checks(&v), vec!["panic_message"]);
    }

    #[test]
    fn stack_overflow_report() {
        let log = "\
[cpu0] INFO  smp: 2/2 CPUs online\n\
[cpu1] PANIC: CPU exception 8 (double fault), error code 0x0\n\
[cpu1]   stack pointer 0xffffff0000030ed0 is in a guard page: kernel stack overflow\n\
[cpu1] backtrace:\n\
[cpu1]   #0 0xffffffff8020c3e0 kernel::ktest::recurse_forever+0x80\n\
[cpu1]   ... previous frame repeated 60 more times\n\
[cpu1] all CPUs stopped (1 of 1 stopped by NMI, this CPU halts)\n";
        let e = Expect::Panic { function: "recurse_forever".into(), message: "kernel stack overflow".into() };
        let v = evaluate(&analyse(&e, log), &e, 2, 35, Outcome { exit_code: Some(35), timed_out: false });
        assert!(v.passed(), "{:?}", v.failures());
    }
}
