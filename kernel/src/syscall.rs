//! System calls: numbers, arguments, error codes and their handlers.
//!
//! ABI (x86_64): `syscall` with the number in rax and arguments in rdi, rsi,
//! rdx, r10, r8, r9; the result comes back in rax: a non-negative value on
//! success, or a negative [`SysError`]. All other registers are preserved.
//! This is the first slice of the ABI (issue 3 grows it into the Fluke
//! object API); every argument is validated, and a bad one is an error code,
//! never a kernel fault.

use crate::arch::x86_64::syscall::{copy_from_user, leave_user, SyscallFrame, UserExit};
use crate::console::print_line;
use core::sync::atomic::{AtomicU64, Ordering};

pub const SYS_NULL: u64 = 0;
pub const SYS_CONSOLE_WRITE: u64 = 1;
pub const SYS_EXIT: u64 = 2;

/// Longest console write accepted in one call.
pub const CONSOLE_WRITE_MAX: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum SysError {
    /// No system call has this number.
    NoSuchCall = -1,
    /// A pointer argument is outside the caller's user memory or unmapped.
    BadPointer = -2,
    /// A size argument is out of range.
    BadSize = -3,
}

/// Console writes from user code, for tests.
pub static CONSOLE_WRITES: AtomicU64 = AtomicU64::new(0);

pub fn dispatch(frame: &mut SyscallFrame) -> i64 {
    let result = match frame.rax {
        SYS_NULL => Ok(0),
        SYS_CONSOLE_WRITE => console_write(frame.rdi, frame.rsi),
        SYS_EXIT => leave_user(UserExit::Exited(frame.rdi)),
        _ => Err(SysError::NoSuchCall),
    };
    match result {
        Ok(v) => v,
        Err(e) => e as i64,
    }
}

fn console_write(ptr: u64, len: u64) -> Result<i64, SysError> {
    if len > CONSOLE_WRITE_MAX {
        return Err(SysError::BadSize);
    }
    let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
    let buf = &mut buf[..len as usize];
    copy_from_user(buf, ptr).map_err(|()| SysError::BadPointer)?;
    let text = core::str::from_utf8(buf).unwrap_or("<invalid UTF-8>");
    print_line(format_args!("user: {}", text.trim_end_matches('\n')));
    CONSOLE_WRITES.fetch_add(1, Ordering::Relaxed);
    Ok(len as i64)
}
