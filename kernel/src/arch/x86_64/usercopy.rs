//! Fault-recovering copies between kernel and user memory.
//!
//! A system call checks that a user buffer is mapped before it copies, but
//! another CPU may revoke the buffer's pages in between (`region_protect`,
//! `region_destroy`, `mapping_destroy`): it clears the entries at once and
//! shoots the TLBs down afterwards. A plain `memcpy` would then take a page
//! fault in ring 0. The copy here is one `rep movsb` whose address is known
//! to the page-fault handler: a fault on it resumes at a recovery label that
//! reports the failure, so a revoked page is an error to the caller, never
//! a kernel fault.
//!
//! Copies run with interrupts off, like the rest of a system call; each is
//! at most one payload (64 KiB), so a TLB shootdown another CPU started
//! waits at most that long for this CPU's acknowledgement.

core::arch::global_asm!(
    ".section .text.user_copy, \"ax\"",
    ".global user_copy_bytes",
    ".type user_copy_bytes, @function",
    // rdi = destination, rsi = source, rdx = length; eax = 0 copied, 1 faulted.
    "user_copy_bytes:",
    "    mov rcx, rdx",
    ".global user_copy_faultable",
    "user_copy_faultable:",
    "    rep movsb",
    "    xor eax, eax",
    "    ret",
    ".global user_copy_recover",
    "user_copy_recover:",
    "    mov eax, 1",
    "    ret",
    ".size user_copy_bytes, . - user_copy_bytes",
    ".text",
);

extern "C" {
    fn user_copy_bytes(dst: *mut u8, src: *const u8, len: usize) -> u32;
    static user_copy_faultable: u8;
    static user_copy_recover: u8;
}

/// Where a ring-0 page fault at `rip` resumes, if `rip` is the copy
/// instruction: the recovery label (the copy then reports failure).
pub fn recovery_for(rip: u64) -> Option<u64> {
    // Only the labels' addresses are taken; nothing is read through them.
    let (faultable, recover) = (core::ptr::addr_of!(user_copy_faultable) as u64, core::ptr::addr_of!(user_copy_recover) as u64);
    (rip == faultable).then_some(recover)
}

/// Copies `len` bytes from `src` to `dst`, one side of which is user memory
/// that may disappear during the copy; false if a page fault cut it short
/// (part of the destination may then be written).
///
/// # Safety
/// The kernel side of the copy is valid for `len` bytes; the user side lies
/// entirely below the user-half limit (so a fault there is a user page
/// missing, never kernel memory being hit), and SMAP's window is open.
pub unsafe fn copy_recovering(dst: *mut u8, src: *const u8, len: usize) -> bool {
    // SAFETY: the caller's contract; faults on the user side are recovered
    // by the page-fault handler (`recovery_for`).
    unsafe { user_copy_bytes(dst, src, len) == 0 }
}
