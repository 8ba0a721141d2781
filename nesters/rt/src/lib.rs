//! Runtime for Matryoshka user programs (`no_std`, `x86_64-unknown-none`).
//!
//! * raw system calls ([`syscall0`], [`syscall1`], [`syscall2`]) over the
//!   kernel ABI: number in rax, arguments in rdi, rsi, rdx, r10, r8, r9,
//!   result in rax (negative = error); `syscall` itself clobbers rcx and r11,
//!   the kernel preserves everything else;
//! * safe wrappers returning `Result<_, SysError>`: [`null`],
//!   [`console_write`], [`exit`];
//! * [`print!`]/[`println!`] through a 256-byte buffer (one console write per
//!   line, longer lines split into 256-byte writes);
//! * a panic handler that prints the panic and exits with code 101;
//! * [`entry!`], which defines `_start` for a program's `fn() -> i32` main.
//!
//! A program links with `user.ld` (beside this crate's Cargo.toml) from its
//! build.rs; see `nesters/init/build.rs`.

#![no_std]

pub mod boot;
pub mod heap;
pub mod object;
pub mod sync;
pub mod ipc;
pub mod memory;

use core::arch::asm;
use core::fmt;

/// System call numbers (kernel/src/syscall.rs).
pub mod nr {
    pub const NULL: u64 = 0;
    pub const CONSOLE_WRITE: u64 = 1;
    pub const EXIT: u64 = 2;
    pub const YIELD: u64 = 3;
    pub const SYSTEM_INFO: u64 = 4;
    pub const HANDLE_CLOSE: u64 = 16;
    pub const HANDLE_DUPLICATE: u64 = 17;
    pub const HANDLE_INFO: u64 = 18;
    pub const SPACE_CREATE: u64 = 19;
    pub const SPACE_DESTROY: u64 = 20;
    pub const SPACE_ENUMERATE: u64 = 21;
    pub const THREAD_CREATE: u64 = 22;
    pub const THREAD_KILL: u64 = 23;
    pub const THREAD_WAIT: u64 = 24;
    pub const MUTEX_CREATE: u64 = 25;
    pub const MUTEX_WAIT: u64 = 26;
    pub const MUTEX_WAKE: u64 = 27;
    pub const COND_CREATE: u64 = 28;
    pub const COND_WAIT: u64 = 29;
    pub const COND_WAKE: u64 = 30;
    pub const PORTSET_CREATE: u64 = 31;
    pub const PORT_CREATE: u64 = 32;
    pub const IPC_CALL: u64 = 33;
    pub const IPC_REPLY_WAIT: u64 = 34;
    pub const THREAD_SET_AFFINITY: u64 = 35;
    pub const READ_TSC: u64 = 36;
    pub const REGION_CREATE: u64 = 37;
    pub const MAPPING_CREATE: u64 = 38;
    pub const REGION_PROTECT: u64 = 39;
    pub const REGION_DESTROY: u64 = 40;
    pub const MAPPING_DESTROY: u64 = 41;
    pub const SPACE_SET_KEEPER: u64 = 42;
    pub const REGION_SET_KEEPER: u64 = 43;
    pub const THREAD_STOP: u64 = 44;
    pub const THREAD_RESUME: u64 = 45;
    pub const THREAD_GET_STATE: u64 = 46;
    pub const THREAD_SET_STATE: u64 = 47;
    pub const THREAD_CREATE_STOPPED: u64 = 48;
    pub const HANDLE_TRANSFER: u64 = 49;
    pub const HANDLE_IMPORT: u64 = 50;
    pub const HANDLE_TRANSFER_AT: u64 = 51;
    pub const MEMORY_OBJECT_STATE: u64 = 52;
    pub const IPC_SEND: u64 = 53;
    pub const IPC_RECEIVE: u64 = 54;
    pub const OBJECT_GET_STATE: u64 = 55;
    pub const REFERENCE_CREATE: u64 = 56;
    pub const REFERENCE_COMPARE: u64 = 57;
    pub const THREAD_SET_SCHEDULER: u64 = 58;
    pub const THREAD_SET_PRIORITY: u64 = 59;
    pub const IPC_CALL_BUF: u64 = 60;
    pub const IPC_REPLY_WAIT_BUF: u64 = 61;
    pub const CONN_CONNECT: u64 = 62;
    pub const CONN_ACCEPT: u64 = 63;
    pub const CONN_SEND: u64 = 64;
    pub const CONN_RECEIVE: u64 = 65;
    pub const CONN_SEND_OVER_RECEIVE: u64 = 66;
    pub const CONN_DISCONNECT: u64 = 67;
    pub const THREAD_GET_CONNECTION: u64 = 68;
    pub const THREAD_SET_CONNECTION: u64 = 69;
    pub const THREAD_SET_DONATION_ONLY: u64 = 70;
    pub const THREAD_DONATE: u64 = 71;
    pub const PORTSET_TAKE_MESSAGES: u64 = 72;
    pub const PORTSET_PUT_MESSAGES: u64 = 73;
    pub const CONN_SEND_BUF: u64 = 74;
    pub const CONN_RECEIVE_BUF: u64 = 75;
    pub const BOOT_ARGS: u64 = 76;
    pub const HANG_REPORT: u64 = 77;
    pub const SPACE_SET_QUOTA: u64 = 78;
    pub const FAULT_INJECT: u64 = 79;
}

/// Longest console write the kernel accepts in one call.
pub const CONSOLE_WRITE_MAX: usize = 256;

/// Exit code of a program that panicked.
pub const PANIC_EXIT_CODE: u64 = 101;

/// A system call's error, as the kernel returns it (a negative rax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysError {
    /// -1: no system call has this number.
    NoSuchCall,
    /// -2: a pointer argument is outside the caller's user memory or unmapped.
    BadPointer,
    /// -3: a size argument is out of range.
    BadSize,
    /// -4: the handle was never issued in this space, or is closed.
    BadHandle,
    /// -5: the handle names an object of another type.
    WrongType,
    /// -6: the handle lacks a right the call needs.
    MissingRights,
    /// -7: not enough memory or handle-table room.
    NoMemory,
    /// -8: an argument is out of its documented range.
    InvalidArgument,
    /// -9: the object was destroyed (or the thread faulted or was killed).
    Dead,
    /// -10: the thread has not exited yet.
    WouldBlock,
    /// Any other negative value (a kernel newer than this runtime).
    Other(i64),
}

impl SysError {
    /// The kernel's raw code for this error.
    pub fn code(self) -> i64 {
        match self {
            SysError::NoSuchCall => -1,
            SysError::BadPointer => -2,
            SysError::BadSize => -3,
            SysError::BadHandle => -4,
            SysError::WrongType => -5,
            SysError::MissingRights => -6,
            SysError::NoMemory => -7,
            SysError::InvalidArgument => -8,
            SysError::Dead => -9,
            SysError::WouldBlock => -10,
            SysError::Other(c) => c,
        }
    }
}

/// Splits a raw rax result into a value or an error.
pub fn decode(raw: i64) -> Result<u64, SysError> {
    match raw {
        r if r >= 0 => Ok(r as u64),
        -1 => Err(SysError::NoSuchCall),
        -2 => Err(SysError::BadPointer),
        -3 => Err(SysError::BadSize),
        -4 => Err(SysError::BadHandle),
        -5 => Err(SysError::WrongType),
        -6 => Err(SysError::MissingRights),
        -7 => Err(SysError::NoMemory),
        -8 => Err(SysError::InvalidArgument),
        -9 => Err(SysError::Dead),
        -10 => Err(SysError::WouldBlock),
        r => Err(SysError::Other(r)),
    }
}

/// System call `n` without arguments; returns the raw rax.
///
/// # Safety
/// The kernel validates every argument, but a call can have effects on the
/// program (`EXIT` does not return): the caller knows what `n` does.
#[inline(always)]
pub unsafe fn syscall0(n: u64) -> i64 {
    let ret: i64;
    asm!("syscall", inlateout("rax") n as i64 => ret, lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

/// System call `n` with one argument; returns the raw rax.
///
/// # Safety
/// As for [`syscall0`].
#[inline(always)]
pub unsafe fn syscall1(n: u64, a0: u64) -> i64 {
    let ret: i64;
    asm!("syscall", inlateout("rax") n as i64 => ret, in("rdi") a0, lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

/// System call `n` with two arguments; returns the raw rax.
///
/// # Safety
/// As for [`syscall0`]; memory the arguments point at may be read or
/// written by the kernel.
#[inline(always)]
pub unsafe fn syscall2(n: u64, a0: u64, a1: u64) -> i64 {
    let ret: i64;
    asm!(
        "syscall",
        inlateout("rax") n as i64 => ret,
        in("rdi") a0,
        in("rsi") a1,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack)
    );
    ret
}

/// System call `n` with four arguments (rdi, rsi, rdx, r10); returns the raw rax.
///
/// # Safety
/// As for [`syscall2`].
#[inline(always)]
pub unsafe fn syscall4(n: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    asm!(
        "syscall",
        inlateout("rax") n as i64 => ret,
        in("rdi") a0,
        in("rsi") a1,
        in("rdx") a2,
        in("r10") a3,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack)
    );
    ret
}

/// The null system call: does nothing, returns 0.
pub fn null() -> Result<u64, SysError> {
    // SAFETY: SYS_NULL has no effect.
    decode(unsafe { syscall0(nr::NULL) })
}

/// Writes `bytes` (at most [`CONSOLE_WRITE_MAX`]) to the console as one line.
pub fn console_write(bytes: &[u8]) -> Result<usize, SysError> {
    console_write_raw(bytes.as_ptr() as u64, bytes.len() as u64).map(|n| n as usize)
}

/// `CONSOLE_WRITE` with an arbitrary pointer and length: the kernel checks
/// both, so a bad pointer is an error, never a fault.
pub fn console_write_raw(ptr: u64, len: u64) -> Result<u64, SysError> {
    // SAFETY: the kernel only reads [ptr, ptr+len) after validating it.
    decode(unsafe { syscall2(nr::CONSOLE_WRITE, ptr, len) })
}

/// The root program's argument string (the kernel command line after a
/// lone `--`), copied into `buf`; returns the part that fit. Only the root
/// space may ask (`MissingRights` otherwise).
pub fn boot_args(buf: &mut [u8]) -> Result<&str, SysError> {
    // SAFETY: the kernel writes at most buf.len() bytes to buf after validating it.
    let total = decode(unsafe { syscall2(nr::BOOT_ARGS, buf.as_mut_ptr() as u64, buf.len() as u64) })? as usize;
    let got = &buf[..total.min(buf.len())];
    core::str::from_utf8(got).map_err(|_| SysError::InvalidArgument)
}

/// Asks the kernel to print its hang report (every CPU's and thread's
/// state); for a root program's watchdog.
pub fn hang_report() -> Result<u64, SysError> {
    // SAFETY: HANG_REPORT only prints.
    decode(unsafe { syscall0(nr::HANG_REPORT) })
}

/// Ends the program with `code`.
pub fn exit(code: u64) -> ! {
    // SAFETY: SYS_EXIT does not return to this program.
    unsafe { syscall1(nr::EXIT, code) };
    // A kernel that returned from EXIT is broken; do not run on.
    loop {
        core::hint::spin_loop();
    }
}

/// A formatter that collects output and sends it in console writes: one per
/// line, or per [`CONSOLE_WRITE_MAX`] bytes of a longer line.
pub struct Console {
    buf: [u8; CONSOLE_WRITE_MAX],
    len: usize,
}

impl Console {
    pub const fn new() -> Self {
        Console { buf: [0; CONSOLE_WRITE_MAX], len: 0 }
    }

    /// Sends what is buffered (errors are dropped: there is nowhere to report them).
    pub fn flush(&mut self) {
        if self.len > 0 {
            let _ = console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.flush();
                continue;
            }
            if self.len == CONSOLE_WRITE_MAX {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let mut c = Console::new();
    let _ = fmt::Write::write_fmt(&mut c, args);
    c.flush();
}

/// Prints to the console (flushed at the end of the call: each call is at
/// least one console line).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Defines the program's entry point `_start`, which records the handle
/// to the program's own space (passed by the kernel in rdi; see
/// [`object::self_space`]), calls `$main` (a `fn() -> i32`) and exits with
/// its result.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "C" fn _start(self_space: u64, start_flags: u64) -> ! {
            $crate::object::set_self_space(self_space);
            $crate::object::set_start_flags(start_flags);
            let main: fn() -> i32 = $main;
            $crate::exit(main() as u64)
        }
    };
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {}", info);
    exit(PANIC_EXIT_CODE)
}
