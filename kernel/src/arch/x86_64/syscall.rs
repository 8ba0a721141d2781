//! Ring 3: the `syscall` entry path, entering user mode, and leaving it again.
//!
//! Entry: `swapgs`, park the user stack pointer in the per-CPU block, switch
//! to the per-CPU kernel entry stack, save every user register in a
//! [`SyscallFrame`], call [`crate::syscall::dispatch`], restore, `sysretq`.
//! Interrupts and exceptions from ring 3 arrive on the same stack through
//! TSS.rsp0 and `isr_common` (which swaps GS when it came from ring 3).
//!
//! Until threads and the scheduler exist, a kernel context runs user code
//! with [`run_user`]: it saves its callee-saved registers and stack pointer,
//! `iretq`s to ring 3, and gets control back (as the return value of
//! `run_user`) when the user program exits or faults.

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use super::gdt::{self, KERNEL_CS};
use super::idt::TrapFrame;
use super::paging::USER_TOP;
use super::percpu::{self, PerCpu};
use super::{cpu, stack};

const USER_DS: u64 = 0x18 | 3;
const USER_CS: u64 = 0x20 | 3;
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
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r9: u64,
    pub r8: u64,
    pub r10: u64,
    pub rdx: u64,
    pub rsi: u64,
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
    push rsi
    push rdx
    push r10
    push r8
    push r9
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    xor ebp, ebp
    mov rdi, rsp
    call {dispatch}
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    pop r9
    pop r8
    pop r10
    pop rdx
    pop rsi
    pop rdi
    pop rax
    pop rcx
    pop r11
    pop rsp
    swapgs
    sysretq
    .size syscall_entry, . - syscall_entry

    .global run_user_asm
    .type run_user_asm, @function
run_user_asm:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rsi], rsp
    push {user_ds}
    push qword ptr [rdi + 8]
    push 0x202
    push {user_cs}
    push qword ptr [rdi]
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    swapgs
    iretq
    .size run_user_asm, . - run_user_asm

    .global resume_kernel_asm
    .type resume_kernel_asm, @function
resume_kernel_asm:
    mov rsp, rdi
    mov rax, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    .size resume_kernel_asm, . - resume_kernel_asm
    .text
"#,
    user_rsp = const offset_of!(PerCpu, syscall_user_rsp),
    kernel_rsp = const offset_of!(PerCpu, syscall_kernel_rsp),
    dispatch = sym syscall_dispatch,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
);

extern "C" {
    fn syscall_entry();
    fn run_user_asm(start: *const [u64; 2], saved_rsp: *mut u64) -> u64;
    fn resume_kernel_asm(saved_rsp: u64, value: u64) -> !;
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

/// How a user program gave control back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserExit {
    Exited(u64),
    /// A CPU exception in ring 3: vector, error code, rip and (page faults) address.
    Fault { vector: u8, error_code: u64, rip: u64, address: u64 },
}

/// The kernel context waiting in `run_user` on this CPU (saved rsp), and
/// where the exit reason goes. One per CPU: user code runs on behalf of it.
struct Waiter {
    saved_rsp: u64,
    exit: Option<UserExit>,
}

static WAITERS: [spin::Mutex<Waiter>; percpu::MAX_CPUS] =
    [const { spin::Mutex::new(Waiter { saved_rsp: 0, exit: None }) }; percpu::MAX_CPUS];

/// Runs user code in the address space `root` from `rip` with stack `rsp`
/// until it exits or faults. Interrupts stay as they were.
pub fn run_user(root: u64, rip: u64, rsp: u64) -> UserExit {
    assert!(rip < USER_TOP && rsp <= USER_TOP, "user entry point in the kernel half");
    let was_enabled = cpu::interrupts_enabled();
    cpu::disable_interrupts();
    let kernel_cr3 = cpu::read_cr3();
    // SAFETY: `root` shares the kernel half with the current tables, so the
    // running code, stack and data stay mapped after the switch.
    unsafe { cpu::write_cr3(root) };
    let cpu_index = percpu::this_cpu_index();
    let slot: *mut u64 = {
        let mut w = WAITERS[cpu_index].lock();
        w.exit = None;
        &mut w.saved_rsp as *mut u64
    };
    let start = [rip, rsp];
    // SAFETY: run_user_asm saves this context's callee-saved registers and
    // stack pointer into `slot` (a static per-CPU cell) and enters ring 3;
    // control comes back only through resume_kernel_asm with that rsp.
    unsafe { run_user_asm(&start, slot) };
    // SAFETY: back on the kernel context; restore its address space.
    unsafe { cpu::write_cr3(kernel_cr3) };
    let exit = WAITERS[cpu_index].lock().exit.take().expect("resumed without an exit reason");
    if was_enabled {
        cpu::enable_interrupts();
    }
    exit
}

/// Ends the user run on this CPU and resumes the waiting kernel context.
pub fn leave_user(exit: UserExit) -> ! {
    cpu::disable_interrupts();
    let saved = {
        let mut w = WAITERS[percpu::this_cpu_index()].lock();
        w.exit = Some(exit);
        w.saved_rsp
    };
    // SAFETY: `saved` is the stack pointer run_user_asm recorded on this CPU;
    // that frame is still live because run_user has not returned.
    unsafe { resume_kernel_asm(saved, 0) }
}

/// Called by the IDT dispatcher for an exception taken in ring 3.
pub fn user_exception(frame: &TrapFrame) -> ! {
    let address = if frame.vector == 14 { cpu::read_cr2() } else { 0 };
    leave_user(UserExit::Fault { vector: frame.vector as u8, error_code: frame.error_code, rip: frame.rip, address })
}

extern "C" fn syscall_dispatch(frame: &mut SyscallFrame) {
    // sysret to a non-canonical rip would fault in ring 0 (on Intel): a
    // syscall at the very top of the user half is a fault instead.
    if frame.rip >= USER_TOP {
        leave_user(UserExit::Fault { vector: 13, error_code: 0, rip: frame.rip, address: 0 });
    }
    frame.rax = crate::syscall::dispatch(frame) as u64;
}

/// Copies `dst.len()` bytes from user address `src` in the current address
/// space. Fails (nothing copied) unless every byte is mapped user-readable.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), ()> {
    let len = dst.len() as u64;
    let end = src.checked_add(len).ok_or(())?;
    if end > USER_TOP {
        return Err(());
    }
    let root = cpu::read_cr3() & 0x000f_ffff_ffff_f000;
    let mut page = src & !0xfff;
    while page < end {
        super::paging::user_entry(root, page).ok_or(())?;
        page += 0x1000;
    }
    // SAFETY: every page of [src, end) was just checked to be present and
    // user-accessible in the current address space, and user memory is only
    // unmapped by this CPU's own kernel code (no concurrent unmapping yet).
    // stac/clac open SMAP for the copy alone.
    unsafe {
        if super::features().smap {
            core::arch::asm!("stac", options(nomem, nostack));
        }
        core::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len());
        if super::features().smap {
            core::arch::asm!("clac", options(nomem, nostack));
        }
    }
    Ok(())
}
