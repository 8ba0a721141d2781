//! The kernel command line: `key=value` words separated by spaces.
//!
//! Known keys: `log=error|warn|info|debug|trace`,
//! `test=all|panic|stack_overflow|bench|<case>,<case>`, `fastpath=on|off`, `pcid=on|off`, `tlbtags=kept|flushed`, `ipc_spin=N`,
//! `exit=qemu`. Unknown words are kept and reported, never fatal. Everything
//! after a lone `--` is the root program's argument string (`boot_args`),
//! which the kernel does not interpret.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestSelection<'a> {
    None,
    All,
    /// The deliberate-panic scenario.
    Panic,
    /// The kernel-stack-overflow scenario (must end in a guard-page report).
    StackOverflow,
    /// Run the root program's benchmarks (`test=bench`) instead of tests.
    Bench,
    /// A comma-separated list of case names.
    Only(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelArgs<'a> {
    pub log_level: LogLevel,
    pub test: TestSelection<'a>,
    pub exit_qemu: bool,
    /// `fastpath=off` routes IPC wake-ups through the run queue (for comparison).
    pub fastpath: bool,
    /// `pcid=off` keeps address-space switches untagged (every CR3 load
    /// flushes) on a CPU that has PCID, to compare.
    pub pcid: bool,
    /// `tlbtags=flushed`: the `tlb_tag_kept` test expects the CPU to flush a
    /// tag's translations on every CR3 load despite the no-flush bit (Bochs
    /// 2.7 ignores the hint); `kept` (the default) expects a real TLB.
    pub tlb_tags_kept: bool,
    /// `ipc_spin=N`: iterations a cross-CPU IPC waiter spins before blocking.
    pub ipc_spin: Option<u32>,
    /// The first word the parser did not understand, for a warning.
    pub first_unknown: Option<&'a str>,
    /// What follows a lone `--`: the root program's arguments (trimmed).
    pub user_args: &'a str,
    /// `watchdog=SECONDS`: print a hang report when no CPU made progress that long.
    pub watchdog_seconds: Option<u64>,
    /// `failalloc=N|random:SEED:PERMILLE`: allocation faults to inject
    /// while the root program runs (`mm::inject`).
    pub fail_alloc: Option<crate::mm::inject::Plan>,
}

impl<'a> KernelArgs<'a> {
    pub fn parse(line: &'a str) -> Self {
        let mut args = KernelArgs {
            log_level: LogLevel::Info,
            test: TestSelection::None,
            exit_qemu: false,
            fastpath: true,
            pcid: true,
            tlb_tags_kept: true,
            ipc_spin: None,
            first_unknown: None,
            user_args: "",
            watchdog_seconds: None,
            fail_alloc: None,
        };
        let (line, user_args) = split_user_args(line);
        args.user_args = user_args;
        for word in line.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let understood = match key {
                "log" => match value {
                    "error" => Some(LogLevel::Error),
                    "warn" => Some(LogLevel::Warn),
                    "info" => Some(LogLevel::Info),
                    "debug" => Some(LogLevel::Debug),
                    "trace" => Some(LogLevel::Trace),
                    _ => None,
                }
                .map(|l| args.log_level = l)
                .is_some(),
                "test" => {
                    args.test = match value {
                        "" | "none" => TestSelection::None,
                        "all" => TestSelection::All,
                        "panic" => TestSelection::Panic,
                        "stack_overflow" => TestSelection::StackOverflow,
                        "bench" => TestSelection::Bench,
                        list => TestSelection::Only(list),
                    };
                    true
                }
                "ipc_spin" => {
                    args.ipc_spin = value.parse().ok();
                    args.ipc_spin.is_some()
                }
                "failalloc" => {
                    args.fail_alloc = crate::mm::inject::Plan::parse(value);
                    args.fail_alloc.is_some()
                }
                "watchdog" => {
                    args.watchdog_seconds = value.parse().ok().filter(|&s| s > 0);
                    args.watchdog_seconds.is_some()
                }
                "fastpath" => {
                    args.fastpath = value != "off";
                    value == "on" || value == "off"
                }
                "pcid" => {
                    args.pcid = value != "off";
                    value == "on" || value == "off"
                }
                "tlbtags" => {
                    args.tlb_tags_kept = value != "flushed";
                    value == "kept" || value == "flushed"
                }
                "exit" => {
                    args.exit_qemu = value == "qemu";
                    value == "qemu" || value == "none"
                }
                _ => false,
            };
            if !understood && args.first_unknown.is_none() {
                args.first_unknown = Some(word);
            }
        }
        args
    }

    /// Whether the test selection includes case `name`.
    pub fn selects(&self, name: &str) -> bool {
        match self.test {
            TestSelection::All => true,
            TestSelection::Only(list) => list.split(',').any(|n| n == name),
            TestSelection::None | TestSelection::Panic | TestSelection::StackOverflow | TestSelection::Bench => false,
        }
    }
}

/// Splits `line` at the first word that is exactly `--`: (kernel words, user arguments).
fn split_user_args(line: &str) -> (&str, &str) {
    let mut offset = 0;
    for word in line.split_ascii_whitespace() {
        // Words are subslices of `line`: their offset is pointer arithmetic.
        let start = word.as_ptr() as usize - line.as_ptr() as usize;
        if word == "--" {
            return (&line[..start], line[start + 2..].trim());
        }
        offset = start + word.len();
    }
    (&line[..offset], "")
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_args_follow_a_lone_double_dash() {
        let a = KernelArgs::parse("log=warn -- --seed 7 --calls 100");
        assert_eq!(a.log_level, LogLevel::Warn);
        assert_eq!(a.user_args, "--seed 7 --calls 100");
        assert_eq!(a.first_unknown, None, "user arguments are not kernel words");
        let b = KernelArgs::parse("exit=qemu --x -- a -- b");
        assert_eq!(b.first_unknown, Some("--x"));
        assert_eq!(b.user_args, "a -- b");
        assert_eq!(KernelArgs::parse("log=info").user_args, "");
        assert_eq!(KernelArgs::parse("--").user_args, "");
    }

    use super::*;

    #[test]
    fn defaults() {
        let a = KernelArgs::parse("");
        assert_eq!(a.log_level, LogLevel::Info);
        assert_eq!(a.test, TestSelection::None);
        assert!(!a.exit_qemu);
        assert!(a.pcid, "PCID is used wherever the CPU has it unless pcid=off");
    }

    #[test]
    fn pcid_switch() {
        assert!(!KernelArgs::parse("pcid=off").pcid);
        assert!(KernelArgs::parse("pcid=on").pcid);
        assert_eq!(KernelArgs::parse("pcid=maybe").first_unknown, Some("pcid=maybe"));
        assert!(KernelArgs::parse("").tlb_tags_kept);
        assert!(!KernelArgs::parse("tlbtags=flushed").tlb_tags_kept);
    }

    #[test]
    fn full_line() {
        let a = KernelArgs::parse("  log=debug test=frame_alloc,tlb_shootdown exit=qemu ");
        assert_eq!(a.log_level, LogLevel::Debug);
        assert!(a.exit_qemu);
        assert!(a.selects("tlb_shootdown"));
        assert!(!a.selects("tlb"));
        assert_eq!(a.first_unknown, None);
    }

    #[test]
    fn unknown_words_are_reported_not_fatal() {
        let a = KernelArgs::parse("log=loud quiet test=all");
        assert_eq!(a.first_unknown, Some("log=loud"));
        assert_eq!(a.log_level, LogLevel::Info);
        assert!(a.selects("anything"));
    }

    #[test]
    fn panic_selects_no_regular_case() {
        let a = KernelArgs::parse("test=panic");
        assert_eq!(a.test, TestSelection::Panic);
        assert!(!a.selects("frame_alloc"));
    }
}
