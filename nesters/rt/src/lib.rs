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
pub mod env;
pub mod heap;
pub mod ipc;
pub mod memory;
pub mod object;
pub mod sync;
pub mod time;

use core::arch::asm;
use core::fmt;

/// System call numbers (the shared `matryoshka-abi` crate).
pub mod nr {
    pub use matryoshka_abi::call::*;
}

/// Longest console write the kernel accepts in one call.
pub const CONSOLE_WRITE_MAX: usize = matryoshka_abi::CONSOLE_WRITE_MAX as usize;

/// Exit code of a program that panicked.
pub const PANIC_EXIT_CODE: u64 = matryoshka_abi::PANIC_EXIT_CODE;

use matryoshka_abi::Error as Abi;

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
    /// -11: the call's time ran out (a timed IPC call).
    TimedOut,
    /// Any other negative value (a kernel newer than this runtime).
    Other(i64),
}

impl SysError {
    /// The kernel's raw code for this error.
    pub fn code(self) -> i64 {
        match self {
            SysError::NoSuchCall => Abi::NoSuchCall.code(),
            SysError::BadPointer => Abi::BadPointer.code(),
            SysError::BadSize => Abi::BadSize.code(),
            SysError::BadHandle => Abi::BadHandle.code(),
            SysError::WrongType => Abi::WrongType.code(),
            SysError::MissingRights => Abi::MissingRights.code(),
            SysError::NoMemory => Abi::NoMemory.code(),
            SysError::InvalidArgument => Abi::InvalidArgument.code(),
            SysError::Dead => Abi::Dead.code(),
            SysError::WouldBlock => Abi::WouldBlock.code(),
            SysError::TimedOut => Abi::TimedOut.code(),
            SysError::Other(c) => c,
        }
    }
}

/// Splits a raw rax result into a value or an error.
pub fn decode(raw: i64) -> Result<u64, SysError> {
    if raw >= 0 {
        return Ok(raw as u64);
    }
    Err(match Abi::from_code(raw) {
        Some(Abi::NoSuchCall) => SysError::NoSuchCall,
        Some(Abi::BadPointer) => SysError::BadPointer,
        Some(Abi::BadSize) => SysError::BadSize,
        Some(Abi::BadHandle) => SysError::BadHandle,
        Some(Abi::WrongType) => SysError::WrongType,
        Some(Abi::MissingRights) => SysError::MissingRights,
        Some(Abi::NoMemory) => SysError::NoMemory,
        Some(Abi::InvalidArgument) => SysError::InvalidArgument,
        Some(Abi::Dead) => SysError::Dead,
        Some(Abi::WouldBlock) => SysError::WouldBlock,
        Some(Abi::TimedOut) => SysError::TimedOut,
        None => SysError::Other(raw),
    })
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
/// it was started with (rdi: the root program's own space from the kernel;
/// for a loaded program its parent's port, see [`env`]), the start flags
/// (rsi) and the System V start block (rdx, 0 for the root), sets up the
/// heap the loader gave it, calls `$main` (a `fn() -> i32`) and exits with
/// its result.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "C" fn _start(first_handle: u64, start_flags: u64, sysv_stack: u64) -> ! {
            $crate::object::set_self_space(if sysv_stack == 0 { first_handle } else { 0 });
            $crate::object::set_start_flags(start_flags);
            $crate::env::init(sysv_stack);
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

/// Writes `bytes` (at most [`CONSOLE_WRITE_MAX`]) to the serial console as
/// they are, without the `user:` prefix and newline of [`console_write`].
/// Only the root space may (its console server serves everyone else).
/// Waits for serial console input and moves up to `buf.len()` (≤ 256)
/// raw bytes of it into `buf`; returns how many. Root program only.
pub fn console_read(buf: &mut [u8]) -> Result<usize, SysError> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` after validating it.
    decode(unsafe { syscall2(nr::CONSOLE_READ, buf.as_mut_ptr() as u64, buf.len() as u64) }).map(|n| n as usize)
}

pub fn console_put(bytes: &[u8]) -> Result<usize, SysError> {
    // SAFETY: the kernel only reads [ptr, ptr+len) after validating it.
    decode(unsafe { syscall2(nr::CONSOLE_PUT, bytes.as_ptr() as u64, bytes.len() as u64) }).map(|n| n as usize)
}
