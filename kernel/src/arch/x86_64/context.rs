//! Switching between kernel threads: callee-saved registers and the stack
//! pointer, nothing else (the kernel never uses x87/SSE; user x87/SSE state
//! is switched lazily, on first use, by `sched::lazyfpu` with `fpu`).

core::arch::global_asm!(
    r#"
    .section .text.context_switch, "ax"
    .global switch_context
    .type switch_context, @function
switch_context:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    .size switch_context, . - switch_context

    .global thread_first_entry
    .type thread_first_entry, @function
thread_first_entry:
    mov rdi, r12
    mov rsi, r13
    xor ebp, ebp
    call {start}
    ud2
    .size thread_first_entry, . - thread_first_entry
    .text
"#,
    start = sym crate::sched::thread_start,
);

extern "C" {
    fn switch_context(save_rsp: *mut u64, load_rsp: u64);
    fn thread_first_entry();
}

/// Saves the running context's stack pointer in `*save` and resumes the one
/// whose stack pointer is `load`; returns when something switches back.
///
/// # Safety
/// `load` must be a stack pointer saved by `switch_context` or prepared by
/// [`prepare_stack`], on a stack nothing else runs on; interrupts are off.
pub unsafe fn switch(save: *mut u64, load: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { switch_context(save, load) }
}

/// Lays out a new thread's stack so that the first switch to it calls
/// `sched::thread_start(entry, arg)`. Returns the stack pointer to load.
pub fn prepare_stack(top: u64, entry: u64, arg: u64) -> u64 {
    // After the six pops and `ret`, rsp == top: 16-byte aligned before the `call`.
    let frame: [u64; 7] = [
        0,     // r15
        0,     // r14
        arg,   // r13
        entry, // r12
        0,     // rbx
        0,     // rbp
        thread_first_entry as unsafe extern "C" fn() as usize as u64,
    ];
    let rsp = top - (frame.len() as u64) * 8;
    // SAFETY: the 56 bytes below `top` belong to a freshly mapped stack that
    // no thread runs on yet.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), rsp as *mut u64, frame.len()) };
    rsp
}

/// Enters ring 3 at `rip` with stack `rsp` and `args` in rdi and rsi, on the current
/// (thread) kernel stack, which becomes the thread's entry stack for
/// syscalls and interrupts.
pub fn enter_user(rip: u64, rsp: u64, args: (u64, u64)) -> ! {
    // SAFETY: builds an iret frame with the user selectors and IF set, clears
    // every general register but rdi and rsi (the arguments) so no kernel value leaks, swaps to the user GS
    // base and leaves ring 0. The caller checked rip/rsp are user addresses.
    unsafe {
        core::arch::asm!(
            "push 0x1b",
            "push {rsp}",
            "push 0x202",
            "push 0x23",
            "push {rip}",
            "xor eax, eax", "xor ebx, ebx", "xor ecx, ecx", "xor edx, edx",
            "xor ebp, ebp",
            "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d", "xor r11d, r11d",
            "xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d", "xor r15d, r15d",
            "swapgs",
            "iretq",
            rsp = in(reg) rsp,
            rip = in(reg) rip,
            in("rdi") args.0,
            in("rsi") args.1,
            options(noreturn),
        )
    }
}

extern "C" {
    fn isr_return();
}

/// Enters ring 3 with every general register, rip and rflags from `regs`
/// (a thread created stopped and given its state by set_state): builds an
/// interrupt frame at the top of the current kernel stack and leaves through
/// the common interrupt return path.
pub fn enter_user_with(regs: &crate::sched::UserRegisters) -> ! {
    use super::idt::TrapFrame;
    let g = regs.gpr;
    // gpr order: rax rbx rcx rdx rsi rdi rbp rsp r8 .. r15
    let frame = TrapFrame {
        rax: g[0],
        rbx: g[1],
        rcx: g[2],
        rdx: g[3],
        rsi: g[4],
        rdi: g[5],
        rbp: g[6],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        vector: 0,
        error_code: 0,
        rip: regs.rip,
        cs: 0x23,
        rflags: sanitize_user_rflags(regs.rflags),
        rsp: g[7],
        ss: 0x1b,
    };
    // Below everything live on this stack (this function's locals included):
    // nothing returns here, and the next kernel entry starts from TSS.rsp0.
    let at = (super::cpu::read_rsp() - 1024 - core::mem::size_of::<TrapFrame>() as u64) & !0xf;
    // SAFETY: `at` lies in this thread's own kernel stack below the live
    // frames (a thread stack has 16 KiB; thread_start uses little of it);
    // isr_return pops exactly a TrapFrame, swaps to
    // the user GS base (cs is a ring-3 selector) and irets to ring 3 with
    // rights the caller validated (user rip/rsp, sanitized rflags).
    unsafe {
        core::ptr::write(at as *mut TrapFrame, frame);
        core::arch::asm!("mov rsp, {at}", "jmp {ret}", at = in(reg) at, ret = sym isr_return, options(noreturn));
    }
}

/// The flags user code may set: arithmetic flags, DF and TF; IF always on;
/// IOPL, NT, RF, VM, AC and the rest cleared.
pub fn sanitize_user_rflags(rflags: u64) -> u64 {
    const USER_SETTABLE: u64 = 0x0cd5 | (1 << 8) | (1 << 10); // CF PF AF ZF SF TF DF OF
    (rflags & USER_SETTABLE) | (1 << 9) | (1 << 1)
}

/// Where a stopped thread's user registers are on its kernel stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An interrupt or exception frame (`idt::TrapFrame`): every register.
    Trap,
    /// A system-call frame (`syscall::SyscallFrame`): rcx and r11 are the
    /// CPU's (rip and rflags), as the syscall ABI says.
    Syscall,
}

/// A thread's user registers, as exported and rebuilt (kernel/ABI.md's
/// thread state record): rax rbx rcx rdx rsi rdi rbp rsp r8..r15, rip, rflags.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRegisters {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
}

/// Reads the user registers held by a stopped thread's frame; true when it
/// stopped in a system call (rcx and r11 then hold rip and rflags).
///
/// # Safety
/// `frame` is the address of a frame of `kind` on the kernel stack of a
/// thread that is stopped (so nothing changes or frees the frame meanwhile).
pub unsafe fn read_user_frame(frame: u64, kind: FrameKind) -> (UserRegisters, bool) {
    match kind {
        FrameKind::Trap => {
            // SAFETY: the caller's contract.
            let f = unsafe { &*(frame as *const super::idt::TrapFrame) };
            let gpr = [f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15];
            (UserRegisters { gpr, rip: f.rip, rflags: f.rflags }, false)
        }
        FrameKind::Syscall => {
            // SAFETY: the caller's contract.
            let f = unsafe { &*(frame as *const super::syscall::SyscallFrame) };
            let gpr = [f.rax, f.rbx, f.rip, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.rflags, f.r12, f.r13, f.r14, f.r15];
            (UserRegisters { gpr, rip: f.rip, rflags: f.rflags }, true)
        }
    }
}

/// Rewrites the user registers held by a stopped thread's frame (a system
/// call's frame keeps rcx and r11 for the `sysret`: rip and rflags).
///
/// # Safety
/// As `read_user_frame`; `regs` is validated (user-half rip and rsp,
/// sanitized rflags) by the caller.
pub unsafe fn write_user_frame(frame: u64, kind: FrameKind, regs: &UserRegisters) {
    let g = &regs.gpr;
    match kind {
        FrameKind::Trap => {
            // SAFETY: the caller's contract.
            let f = unsafe { &mut *(frame as *mut super::idt::TrapFrame) };
            (f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp) = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
            (f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15) = (g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
            (f.rip, f.rflags) = (regs.rip, regs.rflags);
        }
        FrameKind::Syscall => {
            // SAFETY: the caller's contract.
            let f = unsafe { &mut *(frame as *mut super::syscall::SyscallFrame) };
            (f.rax, f.rbx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp) = (g[0], g[1], g[3], g[4], g[5], g[6], g[7]);
            (f.r8, f.r9, f.r10, f.r12, f.r13, f.r14, f.r15) = (g[8], g[9], g[10], g[12], g[13], g[14], g[15]);
            (f.rip, f.rflags) = (regs.rip, regs.rflags);
        }
    }
}
