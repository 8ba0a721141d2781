//! Ring 3: the `syscall` entry path, entering user mode, and leaving it again.
//!
//! Entry: `swapgs`, park the user stack pointer in the per-CPU block, switch
//! to the running thread's kernel stack, save every user register in a
//! [`SyscallFrame`] at its top, call [`crate::syscall::dispatch`], restore,
//! `sysretq`.
//!
//! IPC `call` and `reply_wait` first try the fast path
//! (`crate::sched::fast_call` / `fast_reply_wait`, `fastpath::ipc`): when it is taken it returns
//! the user frame of the thread to run next, and the stub leaves through that
//! frame instead. A thread that parks there keeps only its frame on its
//! kernel stack; below the frame the stub leaves room for the switch frame
//! that resumes it in [`resume_parked`] if the general path wakes it.
//! Interrupts and exceptions from ring 3 arrive on the same stack through
//! TSS.rsp0 and `isr_common` (which swaps GS when it came from ring 3).
//!
//! User code runs as scheduler threads (`sched::spawn_user`); [`run_user`]
//! is the simple form: run one program as a thread on this CPU and wait.

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use super::gdt::{self, KERNEL_CS};
use super::idt::TrapFrame;
use super::paging::USER_TOP;
use super::percpu::{self, PerCpu};
use super::{cpu, stack};

const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_FMASK: u32 = 0xC000_0084;
const ENTRY_STACK_PAGES: u64 = 8;

/// The user registers as the entry stub saved them (lowest address first).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyscallFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub rbp: u64,
    pub rbx: u64,
    // The six IPC message registers, adjacent and in message order: the
    // general path reads them as one array (`SyscallFrame::message`) and the
    // fast path's exit loads them from the caller's frame in one run.
    pub rsi: u64,
    pub rdx: u64,
    pub r10: u64,
    pub r8: u64,
    pub r9: u64,
    pub r12: u64,
    pub rdi: u64,
    /// Syscall number on entry, result on return.
    pub rax: u64,
    /// User rip (the CPU put it in rcx).
    pub rip: u64,
    /// User rflags (the CPU put them in r11).
    pub rflags: u64,
    pub rsp: u64,
}

core::arch::global_asm!(
    r#"
    .section .text.syscall_entry, "ax"
    .global syscall_entry
    .type syscall_entry, @function
syscall_entry:
    swapgs
    mov gs:[{user_rsp}], rsp
    mov rsp, gs:[{kernel_rsp}]
    push qword ptr gs:[{user_rsp}]
    push r11
    push rcx
    push rax
    push rdi
    push r12
    push r9
    push r8
    push r10
    push rdx
    push rsi
    push rbx
    push rbp
    push r13
    push r14
    push r15
    xor ebp, ebp
    lea rcx, [rax - {first_fast}]
    cmp rcx, 1
    jb 4f
    je 2f
1:
    mov rdi, rsp
    call {dispatch}
syscall_exit:
    pop r15
    pop r14
    pop r13
    pop rbp
    pop rbx
    pop rsi
    pop rdx
    pop r10
    pop r8
    pop r9
    pop r12
    // The general path pays one jump so that the fast path, below, does
    // not: the rest of the way out is shared.
    jmp 6f
2:
    mov rdi, rsp
    sub rsp, {parked_room}
    call {fast_reply_wait}
5:
    cmp rax, 1
    je 3f
    add rsp, {parked_room}
    test rax, rax
    jz 1b
    // Switch. The message goes from the caller's frame (at rsp) straight
    // into the message registers; then leave through the next thread's
    // frame, past its message slots, and let other CPUs have the parked
    // caller (its stack and frame are no longer in use).
    mov rcx, rdx
    mov rsi, [rsp + {message}]
    mov rdx, [rsp + {message} + 8]
    mov r10, [rsp + {message} + 16]
    mov r8, [rsp + {message} + 24]
    mov r9, [rsp + {message} + 32]
    mov r12, [rsp + {message} + 40]
    mov rsp, rax
    mov byte ptr [rcx], 0
    pop r15
    pop r14
    pop r13
    pop rbp
    pop rbx
    add rsp, 48
6:
    pop rdi
    pop rax
    pop rcx
    pop r11
    pop rsp
    swapgs
    sysretq
3:
    // Parked, partner left to the scheduler: still below the room.
    call {leave_parked}
    // Picked again at once: finish the call the general way.
    add rsp, {parked_room}
    jmp ipc_parked_resume
4:
    mov rdi, rsp
    sub rsp, {parked_room}
    call {fast_call}
    jmp 5b
    .size syscall_entry, . - syscall_entry

    .global ipc_parked_resume
    .type ipc_parked_resume, @function
ipc_parked_resume:
    mov rdi, rsp
    call {resume}
    jmp syscall_exit
    .size ipc_parked_resume, . - ipc_parked_resume

    .text
"#,
    user_rsp = const offset_of!(PerCpu, syscall_user_rsp),
    kernel_rsp = const offset_of!(PerCpu, syscall_kernel_rsp),
    dispatch = sym syscall_dispatch,
    first_fast = const matryoshka_abi::call::IPC_CALL,
    parked_room = const PARKED_ROOM,
    message = const MESSAGE_OFFSET,
    fast_call = sym crate::sched::fast_call,
    fast_reply_wait = sym crate::sched::fast_reply_wait,
    leave_parked = sym crate::sched::leave_parked,
    resume = sym resume_parked,
);

// The fast path handles exactly these two calls, numbered side by side.
const _: () = assert!(matryoshka_abi::call::IPC_REPLY_WAIT == matryoshka_abi::call::IPC_CALL + 1);

/// Bytes the entry stub keeps free below the frame during the fast path:
/// a parked thread's resume switch frame goes there.
const PARKED_ROOM: u64 = 64;
/// The switch frame `switch_context` pops: six callee-saved registers and
/// the return address.
const SWITCH_FRAME_WORDS: usize = 7;
const _: () = assert!((SWITCH_FRAME_WORDS * 8) as u64 <= PARKED_ROOM && PARKED_ROOM.is_multiple_of(16));

/// Size of the user frame at the top of a thread's kernel stack.
pub const FRAME_BYTES: u64 = core::mem::size_of::<SyscallFrame>() as u64;

const MESSAGE_OFFSET: usize = offset_of!(SyscallFrame, rsi);
// The entry stub's fast-path exit pops five registers, skips the message
// (six words) and pops the rest: the frame must keep this order.
const _: () = assert!(
    offset_of!(SyscallFrame, r15) == 0
        && offset_of!(SyscallFrame, r14) == 8
        && offset_of!(SyscallFrame, r13) == 16
        && offset_of!(SyscallFrame, rbp) == 24
        && offset_of!(SyscallFrame, rbx) == 32
        && MESSAGE_OFFSET == 40
        && offset_of!(SyscallFrame, rdi) == 88
        && offset_of!(SyscallFrame, rax) == 96
        && offset_of!(SyscallFrame, rip) == 104
        && offset_of!(SyscallFrame, rflags) == 112
        && offset_of!(SyscallFrame, rsp) == 120
);
const _: () = assert!(
    offset_of!(SyscallFrame, rdx) == MESSAGE_OFFSET + 8
        && offset_of!(SyscallFrame, r10) == MESSAGE_OFFSET + 16
        && offset_of!(SyscallFrame, r8) == MESSAGE_OFFSET + 24
        && offset_of!(SyscallFrame, r9) == MESSAGE_OFFSET + 32
        && offset_of!(SyscallFrame, r12) == MESSAGE_OFFSET + 40
);

impl SyscallFrame {
    /// The IPC message registers (rsi, rdx, r10, r8, r9, r12) as one array.
    #[inline(always)]
    pub fn message(&self) -> &[u64; 6] {
        // SAFETY: the six fields are adjacent u64s in this order (asserted
        // above) inside the repr(C) struct, and the pointer derives from
        // the whole struct.
        unsafe { &*((self as *const Self as *const u8).add(MESSAGE_OFFSET) as *const [u64; 6]) }
    }

    #[inline(always)]
    pub fn message_mut(&mut self) -> &mut [u64; 6] {
        // SAFETY: as in `message`, with exclusive access to the struct.
        unsafe { &mut *((self as *mut Self as *mut u8).add(MESSAGE_OFFSET) as *mut [u64; 6]) }
    }
}

/// Gives a thread that parks at its user frame `frame` (the top of its
/// kernel stack, in the room the entry stub keeps free) a switch frame that
/// resumes it in [`resume_parked`]; returns the stack pointer to switch to.
///
/// # Safety
/// `frame` is the user frame at the top of the calling thread's own kernel
/// stack, entered through the fast-path branch of `syscall_entry` (so the
/// room below it is unused).
#[inline]
pub unsafe fn prepare_parked_resume(frame: u64) -> u64 {
    extern "C" {
        fn ipc_parked_resume();
    }
    let rsp = frame - (SWITCH_FRAME_WORDS * 8) as u64;
    let words = rsp as *mut u64;
    // Only rbp (a clean end for backtraces) and the return address matter:
    // the other callee-saved registers are dead in the continuation.
    // SAFETY: [rsp, frame) lies in the room below the frame that the entry
    // stub keeps free on the caller's own stack (the contract above).
    unsafe {
        words.add(SWITCH_FRAME_WORDS - 2).write(0);
        words.add(SWITCH_FRAME_WORDS - 1).write(ipc_parked_resume as unsafe extern "C" fn() as usize as u64);
    }
    rsp
}

extern "C" {
    fn syscall_entry();
}

/// Sets up `syscall` on this CPU and gives it a kernel entry stack.
pub fn init_this_cpu() -> Result<(), super::paging::MapError> {
    let entry_stack = stack::alloc(ENTRY_STACK_PAGES)?;
    let me = percpu::this_cpu();
    me.syscall_kernel_rsp.store(entry_stack.top, Ordering::Relaxed);
    gdt::set_ring0_stack(me, entry_stack.top);
    // SAFETY: STAR/LSTAR/FMASK configure `syscall` to enter at
    // `syscall_entry` with the kernel selectors and interrupts, direction,
    // trap and alignment-check flags cleared; EFER.SCE enables the instruction.
    unsafe {
        cpu::write_msr(MSR_STAR, ((KERNEL_CS as u64) << 32) | (0x10u64 << 48));
        cpu::write_msr(MSR_LSTAR, syscall_entry as unsafe extern "C" fn() as usize as u64);
        cpu::write_msr(MSR_FMASK, (1 << 9) | (1 << 10) | (1 << 8) | (1 << 18));
        cpu::write_msr(cpu::MSR_EFER, cpu::read_msr(cpu::MSR_EFER) | 1);
    }
    Ok(())
}

/// How a thread ended (what its joiner, for now its parent, learns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserExit {
    Exited(u64),
    /// A CPU exception in ring 3: vector, error code, rip and (page faults) address.
    Fault {
        vector: u8,
        error_code: u64,
        rip: u64,
        address: u64,
    },
    /// Ended by `sched::kill`.
    Killed,
    /// The thread could not be created.
    NotStarted,
}

/// Points the syscall entry stack and TSS.rsp0 at a thread's kernel stack.
#[inline]
pub fn set_kernel_entry_stack(top: u64) {
    // SAFETY: the GS base points at this CPU's PerCpu (this runs only once
    // the CPU schedules threads); these are the two stores of
    // `syscall_kernel_rsp.store` and `gdt::set_ring0_stack`, written through
    // `gs:` to skip loading the PerCpu address. The CPU reads rsp0 only on
    // an interrupt from ring 3, which cannot come while it runs this.
    unsafe {
        core::arch::asm!(
            "mov gs:[{entry_rsp}], {top}",
            "mov gs:[{rsp0}], {top}",
            top = in(reg) top,
            entry_rsp = const offset_of!(PerCpu, syscall_kernel_rsp),
            rsp0 = const offset_of!(PerCpu, tss) + offset_of!(gdt::Tss, rsp),
            options(nostack, preserves_flags)
        )
    };
}

/// Runs user code in the address space `root` from `rip` with stack `rsp`
/// as a thread on this CPU and waits for it to exit or fault.
pub fn run_user(root: u64, rip: u64, rsp: u64) -> UserExit {
    let me = 1u64 << percpu::this_cpu_index();
    match crate::sched::spawn_user("user", root, (rip, rsp, 0), crate::sched::USER_PRIORITY, me) {
        Ok(t) => {
            let exit = crate::sched::join(&t);
            drop(t);
            crate::sched::reap_all(10);
            exit
        }
        Err(_) => UserExit::NotStarted,
    }
}

/// Ends the calling user thread.
pub fn leave_user(exit: UserExit) -> ! {
    crate::sched::exit_current(exit)
}

/// Called by the IDT dispatcher for an exception taken in ring 3.
pub fn user_exception(frame: &TrapFrame) -> ! {
    if crate::sched::current().kill_requested() {
        leave_user(UserExit::Killed);
    }
    let address = if frame.vector == 14 { cpu::read_cr2() } else { 0 };
    leave_user(UserExit::Fault { vector: frame.vector as u8, error_code: frame.error_code, rip: frame.rip, address })
}

extern "C" fn syscall_dispatch(frame: &mut SyscallFrame) {
    // sysret to a non-canonical rip would fault in ring 0 (on Intel): a
    // syscall at the very top of the user half is a fault instead.
    if frame.rip >= USER_TOP {
        leave_user(UserExit::Fault { vector: 13, error_code: 0, rip: frame.rip, address: 0 });
    }
    let number = frame.rax;
    let result = crate::syscall::dispatch(frame);
    complete(frame, number, result);
}

/// Where a thread parked by the IPC fast path continues when the general
/// path switches to it: finishes its call the general way.
extern "C" fn resume_parked(frame: &mut SyscallFrame) {
    crate::sched::finish_switch();
    let number = frame.rax;
    let result = crate::syscall::finish_parked_ipc(frame);
    complete(frame, number, result);
}

/// Puts a system call's result in the frame and honours a kill or stop
/// before the return to user mode.
fn complete(frame: &mut SyscallFrame, number: u64, result: i64) {
    if result == crate::syscall::RESTART {
        // Interrupted before it took effect (the thread is being stopped):
        // export it as about to make the same call again.
        frame.rip -= 2; // the `syscall` instruction
        frame.rax = number;
    } else if result == crate::syscall::RESTART_AS_SET {
        // Its first part took effect: export it as about to make the call
        // that remains, which the handler put in rax.
        frame.rip -= 2;
    } else {
        frame.rax = result as u64;
    }
    // One load decides the common case: nothing to attend to.
    let (kill, stop) = crate::sched::current_kill_or_stop();
    if kill {
        leave_user(UserExit::Killed);
    }
    if stop {
        crate::sched::stop_point(frame as *mut SyscallFrame as u64, crate::sched::FrameKind::Syscall);
    }
}

/// Checks that `[addr, addr + len)` is mapped user memory in the current
/// address space (writable too, if `write`).
fn check_user_range(addr: u64, len: u64, write: bool) -> Result<(), ()> {
    if len == 0 {
        // Nothing is touched (an empty Rust slice's pointer may be dangling).
        return Ok(());
    }
    let end = addr.checked_add(len).ok_or(())?;
    if end > USER_TOP {
        return Err(());
    }
    let root = cpu::read_cr3() & 0x000f_ffff_ffff_f000;
    let mut page = addr & !0xfff;
    while page < end {
        let usable = |e: Option<u64>| e.is_some_and(|e| !write || e & super::paging::WRITABLE != 0);
        if !usable(super::paging::user_entry(root, page)) {
            // Not mapped yet (demand paging, a mapping's first touch): resolve it like a fault.
            let space = crate::sched::current().space().ok_or(())?;
            let access = if write { crate::object::vm::Rights::WRITE } else { crate::object::vm::Rights::READ };
            crate::object::memory::fault(&space, page, access).map_err(|_| ())?;
            if !usable(super::paging::user_entry(root, page)) {
                return Err(());
            }
        }
        page += 0x1000;
    }
    Ok(())
}

/// Runs `f` with SMAP's user-access window open.
pub(super) fn with_user_access<R>(f: impl FnOnce() -> R) -> R {
    let smap = super::features().smap;
    // SAFETY: stac/clac only toggle RFLAGS.AC, which SMAP consults; the
    // window is closed again before returning.
    unsafe {
        if smap {
            core::arch::asm!("stac", options(nomem, nostack));
        }
        let r = f();
        if smap {
            core::arch::asm!("clac", options(nomem, nostack));
        }
        r
    }
}

/// How often a copy is tried: after a fault the range is checked (pages not
/// mapped yet are brought in: demand zero, a mapping's first touch) and the
/// copy tried again; a page revoked for good fails the check.
const COPY_ATTEMPTS: usize = 3;

/// Copies `dst.len()` bytes from user address `src` in the current address
/// space. Fails unless every byte is mapped user-readable, also when another
/// CPU revokes the memory during the copy (then `dst` may be partly written).
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), ()> {
    // SAFETY: `dst` is kernel memory valid for writes of its length.
    unsafe { copy_in(dst.as_mut_ptr(), dst.len(), src) }
}

/// `copy_from_user` into `len` bytes at `dst`.
///
/// # Safety
/// `dst` must be kernel memory valid for writes of `len` bytes.
unsafe fn copy_in(dst: *mut u8, len: usize, src: u64) -> Result<(), ()> {
    user_range_bounded(src, len)?;
    for _ in 0..COPY_ATTEMPTS {
        // SAFETY: `dst` is valid for `len` bytes (the caller's promise); the
        // user range lies below USER_TOP (just checked), and a fault on it
        // is recovered.
        if with_user_access(|| unsafe { super::usercopy::copy_recovering(dst, src as *const u8, len) }) {
            return Ok(());
        }
        check_user_range(src, len as u64, false)?;
    }
    Err(())
}

/// The range lies in the user half: a fault a copy takes there is a user
/// page missing, never kernel memory. (Copies try first and check the page
/// tables only when one faults: walking them before every copy cost more
/// than most copies.)
fn user_range_bounded(addr: u64, len: usize) -> Result<(), ()> {
    match addr.checked_add(len as u64) {
        Some(end) if end <= USER_TOP => Ok(()),
        _ => Err(()),
    }
}

/// Appends `len` bytes from user address `src` to `dst` (which must have
/// room for them: `try_reserve` first), without zero-filling them first
/// (a payload is staged this way: the fill cost as much as the copy).
/// Fails as `copy_from_user`; then `dst` keeps its old length.
pub fn copy_from_user_append(dst: &mut alloc::vec::Vec<u8>, len: usize, src: u64) -> Result<(), ()> {
    let spare = dst.spare_capacity_mut();
    if spare.len() < len {
        return Err(());
    }
    // SAFETY: `spare` is kernel memory with room for `len` bytes (checked);
    // MaybeUninit<u8> has u8's layout.
    unsafe { copy_in(spare.as_mut_ptr().cast::<u8>(), len, src)? };
    // SAFETY: the copy initialized the `len` bytes after the old length.
    unsafe { dst.set_len(dst.len() + len) };
    Ok(())
}

/// Checks, without copying, that `[addr, addr + len)` is user memory of the
/// current space the caller may read (pages not mapped yet are brought in):
/// a caller whose payload a server will copy later learns of a bad buffer
/// at once.
pub fn check_user_readable(addr: u64, len: u64) -> Result<(), ()> {
    check_user_range(addr, len, false)
}

/// Copies `src` to user address `dst` in the current address space. Fails
/// unless every byte is mapped user-writable, also when another CPU revokes
/// the memory during the copy (then part of it may be written).
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), ()> {
    // SAFETY: `src` is kernel memory valid for reads of its length.
    unsafe { copy_out(dst, src.as_ptr(), src.len()) }
}

/// `copy_to_user` from `len` bytes at `src`.
///
/// # Safety
/// `src` must be kernel memory valid for reads of `len` bytes.
unsafe fn copy_out(dst: u64, src: *const u8, len: usize) -> Result<(), ()> {
    user_range_bounded(dst, len)?;
    for _ in 0..COPY_ATTEMPTS {
        // SAFETY: as in copy_in, with the roles swapped.
        if with_user_access(|| unsafe { super::usercopy::copy_recovering(dst as *mut u8, src, len) }) {
            return Ok(());
        }
        check_user_range(dst, len as u64, true)?;
    }
    Err(())
}

/// Which memory a cross-space copy failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopySide {
    /// The current address space's.
    Local,
    /// The other address space's.
    Remote,
}

/// Copies `len` bytes between user memory of the current address space at
/// `local` and user memory of another address space (page-table root
/// `remote_root`) at `remote`: into the other space with `to_remote`, out
/// of it otherwise. IPC moves a payload this way, once, straight from the
/// sender's memory into the receiver's (the other party is blocked in its
/// call meanwhile). Remote pages are reached through the physical map; one
/// that is not mapped yet (demand paging, a mapping's first touch) is
/// resolved by `resolve_remote(page, write)`. Fails (part of the bytes may
/// have moved) unless both ranges are user memory with the access needed.
///
/// The error names the side whose memory failed.
///
/// Interrupts must be off for the whole copy: a frame taken out of a page
/// table is freed only after a TLB shootdown that every CPU acknowledges,
/// and this CPU cannot acknowledge one before the copy is over, so no frame
/// read here is reused while it is written or read through the physical map.
pub fn copy_cross_space(
    to_remote: bool,
    local: u64,
    remote_root: u64,
    remote: u64,
    len: u64,
    mut resolve_remote: impl FnMut(u64, bool) -> Result<(), ()>,
) -> Result<(), CopySide> {
    debug_assert!(!cpu::interrupts_enabled(), "a cross-space copy runs with interrupts off");
    if len == 0 {
        return Ok(());
    }
    if local.checked_add(len).is_none_or(|end| end > USER_TOP) {
        return Err(CopySide::Local);
    }
    if remote.checked_add(len).is_none_or(|end| end > USER_TOP) {
        return Err(CopySide::Remote);
    }
    let usable = |e: Option<u64>| e.filter(|e| !to_remote || e & super::paging::WRITABLE != 0);
    let mut done = 0;
    while done < len {
        let at = remote + done;
        let page = at & !0xfff;
        let chunk = (0x1000 - (at & 0xfff)).min(len - done);
        let entry = match usable(super::paging::user_entry(remote_root, page)) {
            Some(e) => e,
            None => {
                resolve_remote(page, to_remote).map_err(|()| CopySide::Remote)?;
                usable(super::paging::user_entry(remote_root, page)).ok_or(CopySide::Remote)?
            }
        };
        let kernel = super::paging::phys_to_virt(super::paging::entry_frame(entry) + (at & 0xfff)) as *mut u8;
        // SAFETY: the physical map covers every frame, and this one stays
        // allocated until the copy is over (interrupts are off: see above);
        // `chunk` bytes stay within its page. No Rust reference to them
        // exists: they are user memory, only ever copied as bytes.
        unsafe {
            if to_remote {
                copy_in(kernel, chunk as usize, local + done).map_err(|()| CopySide::Local)?;
            } else {
                copy_out(local + done, kernel, chunk as usize).map_err(|()| CopySide::Local)?;
            }
        }
        done += chunk;
    }
    Ok(())
}
