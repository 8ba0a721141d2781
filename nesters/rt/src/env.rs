//! What a program is started with, in the System V x86_64 process layout
//! (psABI §3.4.1) that the nester library's loader writes on the new
//! stack: `argc`, the `argv` pointers, a null, the `envp` pointers, a null,
//! then the auxiliary vector as (type, value) pairs up to `AT_NULL`, then
//! the strings. The loader passes the stack pointer in rdx as well, so
//! `_start` needs no assembly; the root program, which the kernel starts
//! with rdx = 0, has no arguments here (it reads `crate::boot_args`).
//!
//! Matryoshka's own auxiliary entries (types from [`AT_MATRYOSHKA_BASE`])
//! tell the program where its heap is and which handle is its parent's
//! port (the Parent protocol, `nesters/PROTOCOLS.md`).

use core::sync::atomic::{AtomicU64, Ordering};

pub const AT_NULL: u64 = 0;
pub const AT_PAGESZ: u64 = 6;
pub const AT_ENTRY: u64 = 9;
/// First Matryoshka-specific auxiliary type (well above Linux's, which end below 64).
pub const AT_MATRYOSHKA_BASE: u64 = 0x4d00;
/// Start of the program's heap (writable, demand-backed memory nothing else uses).
pub const AT_HEAP_BASE: u64 = AT_MATRYOSHKA_BASE;
/// Size of the heap in bytes.
pub const AT_HEAP_SIZE: u64 = AT_MATRYOSHKA_BASE + 1;
/// The handle (in the program's table) of its parent's port.
pub const AT_PARENT_PORT: u64 = AT_MATRYOSHKA_BASE + 2;
/// The program's process id, as its process manager numbers it (0: none).
pub const AT_PID: u64 = AT_MATRYOSHKA_BASE + 3;

/// Most auxiliary entries remembered.
const MAX_AUX: usize = 16;

static STACK: AtomicU64 = AtomicU64::new(0);

/// Records the start stack (`_start` does this before `main`) and sets up
/// the heap from `AT_HEAP_BASE` / `AT_HEAP_SIZE` if the loader gave one.
#[doc(hidden)]
pub fn init(sysv_stack: u64) {
    STACK.store(sysv_stack, Ordering::Relaxed);
    if let (Some(base), Some(size)) = (aux(AT_HEAP_BASE), aux(AT_HEAP_SIZE)) {
        // SAFETY: the loader reserved [base, base+size) as this program's
        // heap, writable and used for nothing else, for its whole life.
        unsafe { crate::heap::init(base, size) };
    }
}

fn word(at: u64) -> u64 {
    // SAFETY: only called for addresses inside the start block the loader
    // wrote on this program's stack, which stays mapped while it runs (the
    // loader checked the layout; a program never pops above its start rsp).
    unsafe { core::ptr::read(at as *const u64) }
}

fn c_str(ptr: u64) -> &'static str {
    if ptr == 0 {
        return "";
    }
    let mut len = 0usize;
    // SAFETY: the loader wrote NUL-terminated strings above the vectors.
    while unsafe { core::ptr::read((ptr + len as u64) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: [ptr, ptr+len) was just read byte by byte.
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// Number of arguments (0 for the root program).
pub fn argc() -> usize {
    match STACK.load(Ordering::Relaxed) {
        0 => 0,
        sp => word(sp) as usize,
    }
}

/// Argument `i` (argv\[0\] is the program's name as its spawner gave it).
pub fn arg(i: usize) -> Option<&'static str> {
    let sp = STACK.load(Ordering::Relaxed);
    (i < argc()).then(|| c_str(word(sp + 8 + 8 * i as u64)))
}

/// Every argument, argv\[0\] first.
pub fn args() -> impl Iterator<Item = &'static str> {
    (0..argc()).filter_map(arg)
}

/// Address of the `envp` vector (after argv's null).
fn envp() -> Option<u64> {
    match STACK.load(Ordering::Relaxed) {
        0 => None,
        sp => Some(sp + 8 + 8 * (argc() as u64 + 1)),
    }
}

/// Every environment entry, `NAME=value`.
pub fn vars() -> impl Iterator<Item = &'static str> {
    let mut at = envp();
    core::iter::from_fn(move || {
        let p = at?;
        let s = word(p);
        if s == 0 {
            at = None;
            return None;
        }
        at = Some(p + 8);
        Some(c_str(s))
    })
}

/// The value of environment variable `name`.
pub fn var(name: &str) -> Option<&'static str> {
    vars().find_map(|kv| kv.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// The auxiliary vector's value for `key`.
pub fn aux(key: u64) -> Option<u64> {
    let mut p = envp()?;
    while word(p) != 0 {
        p += 8;
    }
    p += 8;
    for _ in 0..MAX_AUX * 4 {
        match word(p) {
            AT_NULL => return None,
            k if k == key => return Some(word(p + 8)),
            _ => p += 16,
        }
    }
    None
}

/// The handle of the parent's port, if the program has a parent that serves it.
pub fn parent_port() -> Option<crate::object::Handle> {
    aux(AT_PARENT_PORT).filter(|&h| h != 0).map(crate::object::Handle)
}

/// This program's process id (0 if no process manager started it).
pub fn pid() -> u64 {
    aux(AT_PID).unwrap_or(0)
}
