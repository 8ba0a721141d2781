//! The fuzzer's arguments: the kernel command line after a lone `--`
//! (`boot_args`), e.g. `--seed 7 --calls 200000 --mode both`.

/// Which fuzzing phases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Random,
    Targeted,
    Both,
}

/// Races and calls that can be left out while a known kernel bug is open
/// (`--avoid copy-revoke,stop-exit`): bits of [`Config::avoid`].
pub mod avoid {
    /// The copy-vs-revocation race (user copies while the buffer's region is
    /// protected or destroyed).
    pub const COPY_REVOKE: u32 = 1 << 0;
    /// Donation-only threads (`thread_set_donation_only(t, 1)`), which
    /// space_destroy and kills may hang on.
    pub const DONATION: u32 = 1 << 1;
    /// `thread_stop` of threads that may be exiting.
    pub const STOP_EXIT: u32 = 1 << 2;
    /// The destroy-while-in-use race (space_destroy while its threads run).
    pub const DESTROY_USE: u32 = 1 << 3;
    /// The kill/stop/resume/set_state race on one thread.
    pub const THREAD_CONTROL: u32 = 1 << 4;
    /// The handle_close-vs-use race.
    pub const CLOSE_USE: u32 = 1 << 5;
    /// Random recycling of cells while their workers are mid-call.
    pub const KILL_INFLIGHT: u32 = 1 << 6;
    /// Blocking `mutex_wait` / `cond_wait` (on helper threads the worker
    /// kills): a kill that arrives as the thread goes to sleep is lost.
    pub const KILL_WAIT: u32 = 1 << 8;
    /// `space_destroy` of a space that already died with an ancestor, or
    /// while its ancestor is being destroyed (the kernel tears it down twice).
    pub const DESTROY_DEAD: u32 = 1 << 7;

    /// Names accepted by `--avoid`, with their bits.
    pub const NAMES: &[(&str, u32)] = &[
        ("copy-revoke", COPY_REVOKE),
        ("donation", DONATION),
        ("stop-exit", STOP_EXIT),
        ("destroy-use", DESTROY_USE),
        ("thread-control", THREAD_CONTROL),
        ("close-use", CLOSE_USE),
        ("kill-inflight", KILL_INFLIGHT),
        ("destroy-dead", DESTROY_DEAD),
        ("kill-wait", KILL_WAIT),
    ];
}

/// Everything the command line sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub seed: u64,
    /// Random calls to make (in the measured round).
    pub calls: u64,
    /// Calls the targeted race loops make in all (default: `calls`).
    pub targeted_calls: u64,
    /// Random calls of the warm-up round (before the leak baseline).
    pub warmup_calls: u64,
    pub workers_per_cpu: u32,
    pub mode: Mode,
    /// [`avoid`] bits.
    pub avoid: u32,
    /// Seconds without progress before the watchdog fires.
    pub watchdog_secs: u64,
    /// Print every random call before making it (slow; for reproducing a crash).
    pub trace: bool,
    /// Print the call counts and rates every second.
    pub progress: bool,
    /// During the random phase, this share (per mille) of the kernel's
    /// allocations fail (the fault injector, call 79).
    pub fault_permille: u32,
    /// How many times the measured round may be repeated when the kernel's
    /// counters moved, to tell growth (which stops) from a leak (which does not).
    pub leak_rounds: u32,
    /// When not all ones: only these call numbers (bit n = call n; bit 127 =
    /// the unknown numbers) are generated (`--only 37,38,39`).
    pub only: u128,
}

/// The bit of `Config::only` that stands for call numbers the kernel does not have.
pub const ONLY_UNKNOWN_BIT: u32 = 127;

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            calls: 100_000,
            targeted_calls: 100_000,
            warmup_calls: 25_000,
            workers_per_cpu: 2,
            mode: Mode::Both,
            avoid: 0,
            watchdog_secs: 20,
            trace: false,
            progress: false,
            fault_permille: 0,
            leak_rounds: 3,
            only: u128::MAX,
        }
    }
}

/// Why the arguments were refused: a message and the word it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgError<'a> {
    pub message: &'static str,
    pub word: &'a str,
}

/// A decimal or `0x` hexadecimal number; `_` separators are allowed.
fn number(word: &str) -> Option<u64> {
    let (digits, radix) = match word.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (word, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars().filter(|&c| c != '_') {
        value = value.checked_mul(radix)?.checked_add(c.to_digit(radix as u32)? as u64)?;
        any = true;
    }
    any.then_some(value)
}

/// Parses the argument string. Unknown words are errors, so a typo does
/// not silently run the defaults.
pub fn parse(line: &str) -> Result<Config, ArgError<'_>> {
    let mut c = Config::default();
    let mut targeted_given = false;
    let mut warmup_given = false;
    let mut words = line.split_ascii_whitespace();
    while let Some(flag) = words.next() {
        let err = |message| ArgError { message, word: flag };
        if flag == "--trace" {
            c.trace = true;
            continue;
        }
        if flag == "--progress" {
            c.progress = true;
            continue;
        }
        let value = words.next().ok_or(err("needs a value"))?;
        let bad = |message| ArgError { message, word: value };
        match flag {
            "--seed" => c.seed = number(value).ok_or(bad("not a number"))?,
            "--calls" => c.calls = number(value).ok_or(bad("not a number"))?,
            "--targeted-calls" => {
                c.targeted_calls = number(value).ok_or(bad("not a number"))?;
                targeted_given = true;
            }
            "--warmup-calls" => {
                c.warmup_calls = number(value).ok_or(bad("not a number"))?;
                warmup_given = true;
            }
            "--workers-per-cpu" => {
                let k = number(value).ok_or(bad("not a number"))?;
                if !(1..=8).contains(&k) {
                    return Err(bad("--workers-per-cpu takes 1 to 8"));
                }
                c.workers_per_cpu = k as u32;
            }
            "--mode" => {
                c.mode = match value {
                    "random" => Mode::Random,
                    "targeted" => Mode::Targeted,
                    "both" => Mode::Both,
                    _ => return Err(bad("--mode takes random, targeted or both")),
                }
            }
            "--avoid" => {
                for name in value.split(',').filter(|n| !n.is_empty()) {
                    let bit =
                        avoid::NAMES.iter().find(|(n, _)| *n == name).ok_or(ArgError { message: "unknown --avoid name", word: name })?.1;
                    c.avoid |= bit;
                }
            }
            "--watchdog-secs" => {
                c.watchdog_secs = number(value).ok_or(bad("not a number"))?;
                if c.watchdog_secs == 0 {
                    return Err(bad("--watchdog-secs must be at least 1"));
                }
            }
            "--fault-permille" => {
                c.fault_permille = number(value).filter(|&n| n <= 1000).ok_or(bad("--fault-permille takes 0 to 1000"))? as u32
            }
            "--leak-rounds" => c.leak_rounds = number(value).filter(|&n| n <= 10).ok_or(bad("--leak-rounds takes 0 to 10"))? as u32,
            "--only" => {
                c.only = 0;
                for n in value.split(',').filter(|n| !n.is_empty()) {
                    let bit = if n == "unknown" {
                        ONLY_UNKNOWN_BIT as u64
                    } else {
                        number(n).ok_or(ArgError { message: "not a call number", word: n })?
                    };
                    if bit > 127 {
                        return Err(ArgError { message: "call numbers go up to 127", word: n });
                    }
                    c.only |= 1u128 << bit;
                }
            }
            _ => return Err(err("unknown argument")),
        }
    }
    if !targeted_given {
        c.targeted_calls = c.calls;
    }
    if !warmup_given {
        c.warmup_calls = (c.calls / 4).clamp(2_000, 50_000);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.seed, 1);
        assert_eq!(c.calls, 100_000);
        assert_eq!(c.targeted_calls, 100_000);
        assert_eq!(c.warmup_calls, 25_000);
        assert_eq!(c.workers_per_cpu, 2);
        assert_eq!(c.mode, Mode::Both);
        assert_eq!(c.only, u128::MAX);
    }

    #[test]
    fn every_flag() {
        let c = parse("--seed 0x10 --calls 2_000 --workers-per-cpu 3 --mode random --avoid copy-revoke,stop-exit --trace --watchdog-secs 5 --targeted-calls 7 --warmup-calls 9 --only 37,38,unknown --fault-permille 20 --progress --leak-rounds 1").unwrap();
        assert_eq!(c.fault_permille, 20);
        assert!(c.progress);
        assert_eq!(c.leak_rounds, 1);
        assert_eq!(c.seed, 16);
        assert_eq!(c.calls, 2000);
        assert_eq!(c.workers_per_cpu, 3);
        assert_eq!(c.mode, Mode::Random);
        assert_eq!(c.avoid, avoid::COPY_REVOKE | avoid::STOP_EXIT);
        assert!(c.trace);
        assert_eq!(c.watchdog_secs, 5);
        assert_eq!(c.targeted_calls, 7);
        assert_eq!(c.warmup_calls, 9);
        assert_eq!(c.only, (1 << 37) | (1 << 38) | (1 << 127));
    }

    #[test]
    fn derived_defaults_follow_calls() {
        let c = parse("--calls 500").unwrap();
        assert_eq!(c.targeted_calls, 500);
        assert_eq!(c.warmup_calls, 2_000);
    }

    #[test]
    fn errors_name_the_word() {
        assert_eq!(parse("--seed").unwrap_err(), ArgError { message: "needs a value", word: "--seed" });
        assert_eq!(parse("--seed x1").unwrap_err().word, "x1");
        assert_eq!(parse("--calls 99999999999999999999999").unwrap_err().word, "99999999999999999999999");
        assert_eq!(parse("--bogus 1").unwrap_err().message, "unknown argument");
        assert_eq!(parse("--mode fast").unwrap_err().word, "fast");
        assert_eq!(parse("--avoid nothing").unwrap_err().word, "nothing");
        assert_eq!(parse("--workers-per-cpu 0").unwrap_err().word, "0");
        assert_eq!(parse("--only 200").unwrap_err().word, "200");
        assert_eq!(parse("--watchdog-secs 0").unwrap_err().word, "0");
    }
}
