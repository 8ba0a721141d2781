//! The IDT: one 16-byte entry stub per vector, a common save/restore path,
//! and the dispatcher that turns vectors into kernel events.

use core::sync::atomic::Ordering;

use super::{apic, gdt, percpu, tlb};

pub const VECTOR_TIMER: u8 = 0x40;
pub const VECTOR_IPI_RESCHEDULE: u8 = 0xF0;
pub const VECTOR_IPI_TLB: u8 = 0xF1;
pub const VECTOR_IPI_CALL: u8 = 0xF2;
pub const VECTOR_APIC_ERROR: u8 = 0xFE;
pub const VECTOR_SPURIOUS: u8 = 0xFF;

/// Registers saved on every interrupt or exception, in push order reversed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TrapFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Vectors whose exceptions push an error code themselves: 8, 10-14, 17, 21, 29, 30.
core::arch::global_asm!(
    r#"
    .section .text.isr_stubs, "ax"
    .balign 16
    .global isr_stub_table
isr_stub_table:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0
    .endif
    push vec
    jmp isr_common
    .set vec, vec + 1
    .endr

    .type isr_common, @function
isr_common:
    test byte ptr [rsp + 24], 3
    jz 1f
    swapgs
1:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    cld
    mov rdi, rsp
    call {dispatch}
    .global isr_return
isr_return:
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    test byte ptr [rsp + 24], 3
    jz 2f
    swapgs
2:
    add rsp, 16
    iretq
    .size isr_common, . - isr_common
    .text
"#,
    dispatch = sym trap_dispatch,
);

extern "C" {
    static isr_stub_table: u8;
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

fn ist_for(vector: usize) -> u8 {
    match vector {
        2 => gdt::IST_NMI,
        8 => gdt::IST_DOUBLE_FAULT,
        18 => gdt::IST_MACHINE_CHECK,
        _ => 0,
    }
}

/// Fills the shared IDT. Runs once on the boot CPU before interrupts are enabled.
pub fn init() {
    let base = core::ptr::addr_of!(isr_stub_table) as u64;
    // SAFETY: called once on the boot CPU before any CPU loads the IDT.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for vector in 0..256 {
        let handler = base + 16 * vector as u64;
        let low = (handler & 0xffff)
            | ((gdt::KERNEL_CS as u64) << 16)
            | ((ist_for(vector) as u64) << 32)
            | (0x8Eu64 << 40) // present, DPL 0, 64-bit interrupt gate
            | (((handler >> 16) & 0xffff) << 48);
        idt.0[vector * 2] = low;
        idt.0[vector * 2 + 1] = handler >> 32;
    }
}

/// Loads the shared IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit: (core::mem::size_of::<Idt>() - 1) as u16, base: core::ptr::addr_of!(IDT) as u64 };
    // SAFETY: the IDT is a static, filled by `init` before any CPU loads it.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(nostack)) };
}

pub const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range exceeded",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack-segment fault",
    "general protection fault",
    "page fault",
    "reserved (15)",
    "x87 floating-point",
    "alignment check",
    "machine check",
    "SIMD floating-point",
    "virtualization",
    "control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved (31)",
];

/// What a page fault tried to do, from its error code (Intel SDM vol. 3,
/// 4.7: bit 1 write, bit 4 instruction fetch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAccess {
    Read,
    Write,
    Execute,
}

impl FaultAccess {
    pub fn of_error_code(error_code: u64) -> FaultAccess {
        if error_code & (1 << 4) != 0 {
            FaultAccess::Execute
        } else if error_code & (1 << 1) != 0 {
            FaultAccess::Write
        } else {
            FaultAccess::Read
        }
    }
}

/// The frame's address when it holds user registers (the interrupt came from ring 3).
fn user_frame(frame: &mut TrapFrame) -> Option<u64> {
    (frame.cs & 3 == 3).then_some(frame as *mut TrapFrame as u64)
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    match vector {
        2 => crate::panic::on_nmi(frame),
        // Device not available: a user thread's first x87/SSE instruction
        // since it was switched in (the kernel never uses them).
        7 if frame.cs & 3 == 3 => crate::sched::fpu_first_use(),
        0..=31 if frame.cs & 3 == 3 => {
            let e = crate::object::keeper::UserException {
                vector: frame.vector,
                error_code: frame.error_code,
                rip: frame.rip,
                rsp: frame.rsp,
                address: if frame.vector == 14 { super::cpu::read_cr2() } else { 0 },
                page_fault: (frame.vector == 14).then(|| FaultAccess::of_error_code(frame.error_code)),
            };
            match crate::object::keeper::handle_user_exception(&e) {
                crate::object::keeper::Outcome::Resume => {}
                // Stopped while its keeper handled it: export the thread as
                // about to run the faulting instruction again.
                crate::object::keeper::Outcome::Restart => {
                    crate::sched::stop_point(frame as *mut TrapFrame as u64, crate::sched::FrameKind::Trap)
                }
                crate::object::keeper::Outcome::End => super::syscall::user_exception(frame),
            }
        }
        // A user copy hit a page another CPU revoked after the check: the
        // copy reports failure instead (see `usercopy`).
        14 if let Some(recover) = super::usercopy::recovery_for(frame.rip) => frame.rip = recover,
        0..=31 => crate::panic::fatal_exception(frame),
        VECTOR_TIMER => {
            percpu::this_cpu().ticks.fetch_add(1, Ordering::Relaxed);
            super::time::on_timer_interrupt();
            apic::eoi();
            crate::hang::on_tick(frame.cs & 3 == 3);
            if percpu::this_cpu_index() == 0 {
                crate::console::poll_input();
            }
            // Interrupts were on: no switch was half done on this CPU.
            crate::sched::quiescent_point(percpu::this_cpu_index());
            crate::sched::on_interrupt(user_frame(frame), true);
        }
        VECTOR_IPI_RESCHEDULE => {
            percpu::this_cpu().ipis_received.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
            crate::sched::on_interrupt(user_frame(frame), false);
        }
        VECTOR_IPI_TLB => {
            tlb::on_shootdown_ipi();
            apic::eoi();
        }
        VECTOR_IPI_CALL => {
            super::smp::on_call_ipi();
            apic::eoi();
        }
        VECTOR_APIC_ERROR => {
            let status = apic::read_error_status();
            log::warn!("apic: error interrupt, ESR={status:#x}");
            apic::eoi();
        }
        VECTOR_SPURIOUS => {}
        0x20..=0x2f => {
            // A legacy PIC line fired despite the mask (spurious IRQ 7/15): no EOI to the APIC.
        }
        _ => {
            log::warn!("unexpected interrupt vector {vector:#x}");
            apic::eoi();
        }
    }
}
