//! Regions and mappings: lending memory to other spaces (Fluke's memory model).
//!
//! A region exports a range of a space with maximum rights; a mapping
//! imports a region into a space. Compositions nest to any depth; revoking
//! or narrowing a region affects everything derived from it.

use crate::object::Handle;
use crate::{decode, nr, syscall1, syscall2, syscall4, SysError};

/// Memory rights bits.
pub const READ: u64 = matryoshka_abi::memory_rights::READ;
pub const WRITE: u64 = matryoshka_abi::memory_rights::WRITE;
pub const EXECUTE: u64 = matryoshka_abi::memory_rights::EXECUTE;

/// Where the root program's demand-zero memory starts (64 GiB of it, RWX to lend).
pub const ROOT_ANONYMOUS_BASE: u64 = 0x10_0000_0000;

pub fn region_create(space: Handle, start: u64, size: u64, max: u64) -> Result<Handle, SysError> {
    // SAFETY: no memory is accessed by the call itself.
    decode(unsafe { syscall4(nr::REGION_CREATE, space.0, start, size, max) }).map(Handle)
}

pub fn mapping_create(region: Handle, space: Handle, va: u64, offset: u64, size: u64, rights: u64) -> Result<Handle, SysError> {
    let ret: i64;
    // SAFETY: six register arguments; the kernel validates all of them.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr::MAPPING_CREATE as i64 => ret,
            in("rdi") region.0,
            in("rsi") space.0,
            in("rdx") va,
            in("r10") offset,
            in("r8") size,
            in("r9") rights,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    decode(ret).map(Handle)
}

/// Changes a region's maximum rights; derived mappings lose what it removes.
pub fn region_protect(region: Handle, max: u64) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::REGION_PROTECT, region.0, max) }).map(|_| ())
}

/// Gives back the frames behind `[offset, offset+size)` of `region`
/// (page-aligned; needs MAP_WRITE): the memory reads as zeros afterwards,
/// in every space that maps it. Returns how many frames were freed.
pub fn region_discard(region: Handle, offset: u64, size: u64) -> Result<u64, SysError> {
    // SAFETY: no memory of this program is accessed by the call; pages of
    // it that lie in the range read as zeros afterwards, which the caller asked for.
    decode(unsafe { syscall4(nr::REGION_DISCARD, region.0, offset, size, 0) })
}

pub fn region_destroy(region: Handle) -> Result<(), SysError> {
    // SAFETY: revokes mappings in other spaces; this program's own memory is unaffected.
    decode(unsafe { syscall1(nr::REGION_DESTROY, region.0) }).map(|_| ())
}

pub fn mapping_destroy(mapping: Handle) -> Result<(), SysError> {
    // SAFETY: as region_destroy.
    decode(unsafe { syscall1(nr::MAPPING_DESTROY, mapping.0) }).map(|_| ())
}

extern "C" {
    static __image_start: u8;
    static __readonly_end: u8;
}

/// This program's text and read-only data: `[start, end)`.
pub fn readonly_image() -> (u64, u64) {
    (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__readonly_end) as u64)
}

/// Sends faults in the region's unbacked pages to `port` (a user-level
/// pager); `None` clears it. Message: `[1, offset in region, access, address, 0, 0]`;
/// reply `[0, ..]` to retry the access, anything else to end the thread.
pub fn region_set_keeper(region: Handle, port: Option<Handle>) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::REGION_SET_KEEPER, region.0, port.map_or(0, |p| p.0)) }).map(|_| ())
}

/// Kinds of keeper messages (word 0).
pub mod keeper {
    pub const PAGE_FAULT: u64 = 1;
    pub const EXCEPTION: u64 = 2;
    pub const PROTECTION: u64 = 3;
    /// A thread used up a time slice (to its scheduler port, one-way).
    pub const CPU_TIME: u64 = 4;
}
