//! init: the root user program. The kernel loads it from the boot module
//! named `init` and runs it in ring 3. For now it checks the system call ABI
//! from a real Rust program and exits 0 when every check passed, or with the
//! number of the first failed check.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::{self as rt, println, SysError};

#[cfg(target_os = "none")]
rt::entry!(init_main);

/// A kernel address (the kernel image): never readable from ring 3.
const KERNEL_ADDRESS: u64 = 0xffff_ffff_8020_0000;

/// In .data: must arrive with its initial value and be writable.
static DATA_WORD: AtomicU64 = AtomicU64::new(0x5eed_0000_0000_0001);
/// In .bss: must arrive zeroed and be writable.
static BSS_WORD: AtomicU64 = AtomicU64::new(0);

/// One self-check: `Err` says what went wrong.
type Check = fn() -> Result<(), &'static str>;

fn init_main() -> i32 {
    println!("init: hello from the root program");
    let checks: [(&str, Check); 6] = [
        ("data and bss", data_and_bss),
        ("null call", null_call),
        ("console write", console_write),
        ("kernel pointer", kernel_pointer),
        ("oversized write", oversized_write),
        ("unknown call", unknown_call),
    ];
    for (i, (name, check)) in checks.iter().enumerate() {
        if let Err(why) = check() {
            println!("init: check {} ({name}) failed: {why}", i + 1);
            return i as i32 + 1;
        }
    }
    println!("init: all checks passed");
    0
}

fn data_and_bss() -> Result<(), &'static str> {
    if DATA_WORD.load(Ordering::Relaxed) != 0x5eed_0000_0000_0001 {
        return Err(".data does not hold its initial value");
    }
    if BSS_WORD.load(Ordering::Relaxed) != 0 {
        return Err(".bss is not zeroed");
    }
    DATA_WORD.fetch_add(1, Ordering::Relaxed);
    BSS_WORD.fetch_add(1, Ordering::Relaxed);
    if DATA_WORD.load(Ordering::Relaxed) != 0x5eed_0000_0000_0002 || BSS_WORD.load(Ordering::Relaxed) != 1 {
        return Err("writes to .data/.bss did not stick");
    }
    Ok(())
}

fn null_call() -> Result<(), &'static str> {
    match rt::null() {
        Ok(0) => Ok(()),
        _ => Err("SYS_NULL did not return 0"),
    }
}

fn console_write() -> Result<(), &'static str> {
    let text = b"init: console write returned its length";
    match rt::console_write(text) {
        Ok(n) if n == text.len() => Ok(()),
        _ => Err("SYS_CONSOLE_WRITE did not return the length written"),
    }
}

fn kernel_pointer() -> Result<(), &'static str> {
    match rt::console_write_raw(KERNEL_ADDRESS, 8) {
        Err(SysError::BadPointer) => Ok(()),
        _ => Err("a write from a kernel address was not refused with BadPointer"),
    }
}

fn oversized_write() -> Result<(), &'static str> {
    let big = [b'x'; rt::CONSOLE_WRITE_MAX + 44];
    match rt::console_write(&big) {
        Err(SysError::BadSize) => Ok(()),
        _ => Err("a 300-byte write was not refused with BadSize"),
    }
}

fn unknown_call() -> Result<(), &'static str> {
    // SAFETY: an unassigned number has no effect.
    match rt::decode(unsafe { rt::syscall0(0x7777) }) {
        Err(SysError::NoSuchCall) => Ok(()),
        _ => Err("system call 0x7777 did not fail with NoSuchCall"),
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("init: this program runs under the Matryoshka kernel (`just build` packs it as the `init` boot module)");
    std::process::exit(2);
}
