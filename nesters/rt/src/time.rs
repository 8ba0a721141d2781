//! Time: the kernel's monotonic clock (nanoseconds since boot, from the
//! TSC) and sleeping until a deadline. Deadlines are met at the timer tick
//! after them (the kernel's tick is 10 ms), never early.

use crate::{decode, nr, syscall0, syscall1, SysError};

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    // SAFETY: no arguments, no effects.
    decode(unsafe { syscall0(nr::TIME_NOW) }).unwrap_or(0)
}

/// Sleeps until `now_ns() >= deadline_ns` (returns at once if it already
/// is). A stop in the middle resumes the same sleep.
pub fn sleep_until(deadline_ns: u64) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::SLEEP_UNTIL, deadline_ns) }).map(|_| ())
}

/// Sleeps for at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) -> Result<(), SysError> {
    sleep_until(now_ns().saturating_add(ns))
}

/// Nanoseconds per millisecond, for readable call sites.
pub const MS: u64 = 1_000_000;
