//! The boot matrix.

use std::time::Duration;

use matryoshka_boot::qemu::{Feed, Mode, EXIT_FAILURE, EXIT_SUCCESS};

use crate::protocol::Expect;

/// The root program a scenario boots with (the boot module `init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootProgram {
    /// build/init.elf: the ABI checks (`root_program`), benchmarks, stress.
    Init,
    /// build/fuzz.elf: the system-call fuzzer (`test=fuzz`).
    Fuzz,
}

/// What runs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// The system's QEMU (7.2 on the build machines).
    Qemu,
    /// QEMU 10, unpacked from bookworm-backports (`just setup`): x2APIC under TCG.
    Qemu10,
    /// Bochs 2.7 booting the GRUB ISO: PCID, INVPCID, x2APIC, TSC-deadline.
    /// It cannot exit with the kernel's status, so the run ends on the
    /// kernel's serial verdict (the KTEST `done` record or a panic report).
    Bochs,
}

/// One boot of the kernel with its expectations.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub mode: Mode,
    pub cpus: u32,
    /// Value of the kernel's `test=` argument.
    pub test: String,
    pub expect: Expect,
    pub expected_exit: i32,
    /// Wall-clock limit under TCG (scaled by `--timeout-scale`).
    pub timeout: Duration,
    /// More kernel command-line words (e.g. `fastpath=off`).
    pub extra: &'static str,
    pub root_program: RootProgram,
    /// The root program's arguments (after a lone `--` on the command line).
    pub user_args: String,
    /// Text that must appear in the serial log (e.g. the fuzzer's summary).
    pub must_print: Vec<String>,
    /// What is typed on the serial console, and when (an interactive session).
    pub input: Vec<Feed>,
    pub emulator: Emulator,
}

impl Scenario {
    fn tests(mode: Mode, cpus: u32, timeout_s: u64) -> Scenario {
        Scenario {
            name: format!("{}-{}cpu", mode.name(), cpus),
            mode,
            cpus,
            test: "all".into(),
            expect: Expect::Tests,
            expected_exit: EXIT_SUCCESS,
            timeout: Duration::from_secs(timeout_s),
            extra: "",
            root_program: RootProgram::Init,
            user_args: String::new(),
            must_print: Vec::new(),
            input: Vec::new(),
            emulator: Emulator::Qemu,
        }
    }

    /// The PCID scenario under Bochs (slow: ~50 s to boot and run these):
    /// the TLB cases, user mode and user threads on every CPU, with tagged
    /// address spaces. Bochs ignores CR3's no-flush bit (`tlbtags=flushed`,
    /// see kernel/src/tlbtests.rs); the log must show PCID, INVPCID,
    /// x2APIC and the TSC-deadline timer in use.
    fn bochs_pcid(cpus: u32, timeout_s: u64) -> Scenario {
        Scenario {
            name: format!("bochs-pcid-{cpus}cpu"),
            test: "tlb_shootdown,tlb_tag_kept,tlb_tagged_revoke,tlb_tag_reuse,user_mode,user_threads_all_cpus".into(),
            extra: "tlbtags=flushed",
            must_print: vec![
                "tlb: address spaces tagged".into(),
                "invpcid=true".into(),
                "tick timer TSC-deadline".into(),
                "APIC x2APIC".into(),
            ],
            emulator: Emulator::Bochs,
            ..Scenario::tests(Mode::BiosIso, cpus, timeout_s)
        }
    }

    /// Every in-kernel test and init's checks under QEMU 10, whose TCG
    /// emulates x2APIC (7.2's does not): the x2APIC path of the APIC code.
    fn qemu10_x2apic(cpus: u32, timeout_s: u64) -> Scenario {
        Scenario {
            name: format!("qemu10-x2apic-{cpus}cpu"),
            must_print: vec!["APIC x2APIC".into()],
            emulator: Emulator::Qemu10,
            ..Scenario::tests(Mode::Direct, cpus, timeout_s)
        }
    }

    /// A bounded fuzz run (nesters/fuzz as the root program): it must pass
    /// its own invariants and leak check and print its summary.
    fn fuzz(cpus: u32, seed: u64, calls: u64, timeout_s: u64) -> Scenario {
        Scenario {
            name: format!("fuzz-{cpus}cpu-seed{seed}"),
            test: "fuzz".into(),
            extra: "watchdog=60",
            root_program: RootProgram::Fuzz,
            user_args: if FUZZ_AVOID.is_empty() {
                format!("--seed {seed} --calls {calls}")
            } else {
                format!("--seed {seed} --calls {calls} --avoid {FUZZ_AVOID}")
            },
            must_print: vec![format!("fuzz: seed {seed}: "), " 0 leaks".into()],
            ..Scenario::tests(Mode::Direct, cpus, timeout_s)
        }
    }

    /// The nester stack's tests: the system boots and its shell runs `systest`.
    fn system(cpus: u32, timeout_s: u64) -> Scenario {
        Scenario {
            name: format!("system-direct-{cpus}cpu"),
            test: "system".into(),
            extra: "watchdog=120",
            user_args: "systest".into(),
            must_print: vec!["systest: 14 passed, 0 failed".into()],
            ..Scenario::tests(Mode::Direct, cpus, timeout_s)
        }
    }

    /// An interactive session on the serial console: the system boots into
    /// the shell (no command), the harness types command lines, a job is
    /// interrupted with Ctrl-C, and `exit 3` ends the shell.
    fn console(cpus: u32, timeout_s: u64) -> Scenario {
        let every = Duration::from_secs(1);
        Scenario {
            name: format!("console-direct-{cpus}cpu"),
            test: "console".into(),
            extra: "watchdog=120",
            // Typed input is echoed on the typed line (`msh$ ...`); the quotes
            // keep each trigger below out of that echo, so it matches the
            // command's output only.
            input: vec![
                Feed::after("init: console input on", "echo abc  def\r"),
                Feed::after("abc def", "echo st\"\"arted; sleep 30; echo after\"\"-sleep=$?\r"),
                // Ctrl-C until the interrupted list goes on (sleep's status).
                Feed::after("started", "\x03").repeat_until("after-sleep=", every),
                Feed::after("after-sleep=", "ech\x7fho typed-and-\"\"erased\r"),
                Feed::after("typed-and-erased", "exit 3\r"),
            ],
            must_print: vec![
                "abc def".into(),
                "after-sleep=130".into(),
                "typed-and-erased".into(),
                "init: the shell exited with status 3".into(),
            ],
            ..Scenario::tests(Mode::Direct, cpus, timeout_s)
        }
    }

    /// The kernel command line for this scenario.
    pub fn cmdline(&self, log_level: &str) -> String {
        let mut line = format!("exit=qemu test={} log={log_level}", self.test);
        if !self.extra.is_empty() {
            line = format!("{line} {}", self.extra);
        }
        if !self.user_args.is_empty() {
            line = format!("{line} -- {}", self.user_args);
        }
        line
    }
}

/// What the fuzz scenarios leave out while a kernel bug the fuzzer found
/// is open (nesters/fuzz/README.md, `--avoid`): the copy-vs-revoke race on
/// 4 loaded CPUs sometimes crashed with a kernel stack in use twice (the
/// fuzzer's finding 8). Dead threads' stacks now wait for a grace period
/// before they are freed (sched/thread.rs, `reap`), the likely cause; 16
/// loaded runs with the race passed since, and this goes back to "" once
/// more runs confirm it. init check 33 still runs that race.
pub const FUZZ_AVOID: &str = "copy-revoke";

/// Every scenario, in the order they are listed.
pub fn matrix() -> Vec<Scenario> {
    vec![
        Scenario::tests(Mode::Direct, 1, 120),
        Scenario::tests(Mode::Direct, 2, 120),
        Scenario::tests(Mode::Direct, 4, 120),
        Scenario::tests(Mode::Direct, 8, 180),
        Scenario::tests(Mode::BiosIso, 4, 180),
        Scenario::tests(Mode::UefiIso, 2, 240),
        Scenario::tests(Mode::PxeBios, 2, 240),
        Scenario::tests(Mode::PxeUefi, 2, 300),
        // The IPC general path alone (no direct hand-off, no spinning): the
        // same tests, init's IPC checks included, must give the same results.
        Scenario { name: "slowpath-direct-2cpu".into(), extra: "fastpath=off ipc_spin=0", ..Scenario::tests(Mode::Direct, 2, 120) },
        Scenario { name: "ipc-stress-direct-2cpu".into(), test: "ipc_stress".into(), ..Scenario::tests(Mode::Direct, 2, 720) },
        // The system-call fuzzer: 2 and 4 CPUs, two seeds each, a million
        // calls in all (half of them random). Four vCPUs on a two-core host
        // make cross-CPU calls far slower, so those runs are shorter.
        Scenario::fuzz(2, 1, 200_000, 420),
        Scenario::fuzz(2, 2, 200_000, 420),
        Scenario::fuzz(4, 3, 60_000, 540),
        Scenario::fuzz(4, 4, 60_000, 540),
        // The nester stack: init boots fs, pm and the shell, which runs
        // the stack's own tests (nesters/coreutils/src/bin/systest.rs).
        Scenario::system(2, 300),
        Scenario::system(4, 420),
        Scenario::console(2, 240),
        // What QEMU 7.2's TCG lacks: PCID (Bochs) and x2APIC (QEMU 10).
        Scenario::bochs_pcid(2, 300),
        Scenario::qemu10_x2apic(2, 120),
        Scenario {
            name: "panic-direct-2cpu".into(),
            mode: Mode::Direct,
            cpus: 2,
            test: "panic".into(),
            expect: Expect::Panic { function: "deliberate_panic".into(), message: "deliberate panic".into() },
            expected_exit: EXIT_FAILURE,
            timeout: Duration::from_secs(120),
            extra: "",
            root_program: RootProgram::Init,
            user_args: String::new(),
            must_print: Vec::new(),
            input: Vec::new(),
            emulator: Emulator::Qemu,
        },
        Scenario {
            name: "stack-overflow-direct-2cpu".into(),
            mode: Mode::Direct,
            cpus: 2,
            test: "stack_overflow".into(),
            expect: Expect::Panic { function: "recurse_forever".into(), message: "kernel stack overflow".into() },
            expected_exit: EXIT_FAILURE,
            timeout: Duration::from_secs(120),
            extra: "",
            root_program: RootProgram::Init,
            user_args: String::new(),
            must_print: Vec::new(),
            input: Vec::new(),
            emulator: Emulator::Qemu,
        },
    ]
}

/// Does `name` match `pattern` (exact, or a glob with `*`)?
pub fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(j) => rest = &rest[j + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// Scenarios selected by `patterns` (all when empty). Errors name a
/// pattern that matches nothing.
pub fn select(all: Vec<Scenario>, patterns: &[String]) -> Result<Vec<Scenario>, String> {
    if patterns.is_empty() {
        return Ok(all);
    }
    for p in patterns {
        if !all.iter().any(|s| matches(p, &s.name)) {
            return Err(format!("no scenario matches `{p}` (see --list)"));
        }
    }
    Ok(all.into_iter().filter(|s| patterns.iter().any(|p| matches(p, &s.name))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_expected() {
        let m = matrix();
        let names: Vec<&str> = m.iter().map(|s| s.name.as_str()).collect();
        for n in [
            "direct-1cpu",
            "direct-2cpu",
            "direct-4cpu",
            "direct-8cpu",
            "bios-iso-4cpu",
            "uefi-iso-2cpu",
            "pxe-bios-2cpu",
            "pxe-uefi-2cpu",
            "panic-direct-2cpu",
            "stack-overflow-direct-2cpu",
            "fuzz-2cpu-seed1",
            "fuzz-4cpu-seed3",
            "bochs-pcid-2cpu",
            "qemu10-x2apic-2cpu",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let mut d = names.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), names.len());
    }

    #[test]
    fn globbing() {
        assert!(matches("direct-*", "direct-4cpu"));
        assert!(matches("*-2cpu", "pxe-bios-2cpu"));
        assert!(matches("pxe-*-2cpu", "pxe-uefi-2cpu"));
        assert!(!matches("pxe-*-4cpu", "pxe-uefi-2cpu"));
        assert!(matches("*", "x"));
        assert!(!matches("direct", "direct-1cpu"));
        assert_eq!(select(matrix(), &["direct-*".into()]).unwrap().len(), 4);
        assert!(select(matrix(), &["nope".into()]).is_err());
        assert_eq!(select(matrix(), &[]).unwrap().len(), matrix().len());
    }

    #[test]
    fn cmdline() {
        let m = matrix();
        assert_eq!(m[0].cmdline("info"), "exit=qemu test=all log=info");
        let panic = m.iter().find(|s| s.name == "panic-direct-2cpu").unwrap();
        assert_eq!(panic.cmdline("info"), "exit=qemu test=panic log=info");
        let bochs = m.iter().find(|s| s.name == "bochs-pcid-2cpu").unwrap();
        assert_eq!(bochs.emulator, Emulator::Bochs);
        assert!(bochs.cmdline("info").contains("test=tlb_shootdown,tlb_tag_kept,") && bochs.cmdline("info").ends_with("tlbtags=flushed"));
        let fuzz = m.iter().find(|s| s.name == "fuzz-2cpu-seed1").unwrap();
        assert_eq!(fuzz.root_program, RootProgram::Fuzz);
        let avoid = if FUZZ_AVOID.is_empty() { String::new() } else { format!(" --avoid {FUZZ_AVOID}") };
        assert_eq!(fuzz.cmdline("info"), format!("exit=qemu test=fuzz log=info watchdog=60 -- --seed 1 --calls 200000{avoid}"));
        assert!(fuzz.must_print.iter().any(|p| p == "fuzz: seed 1: "));
    }
}
