//! Fatal errors: Rust panics and unexpected CPU exceptions on any CPU.
//!
//! The first CPU to fail stops every other CPU with an NMI, then prints one
//! report (message or register dump, then a symbolized backtrace) and, when
//! the command line says `exit=qemu`, ends QEMU with the failure code.
//! A CPU that fails while another report is under way just stops.

extern crate alloc;

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::arch::idt::{TrapFrame, EXCEPTION_NAMES};
use crate::arch::{apic, cpu, paging, percpu, smp, stack};
use crate::console::{self, print_line};
use crate::symbols::SymbolTable;

const NO_OWNER: usize = usize::MAX;
static PANIC_OWNER: AtomicUsize = AtomicUsize::new(NO_OWNER);
static CPUS_STOPPED: AtomicUsize = AtomicUsize::new(0);
pub static EXIT_QEMU_ON_PANIC: AtomicBool = AtomicBool::new(false);

extern "C" {
    static __ksyms_start: u8;
    static __ksyms_end: u8;
}

pub fn symbol_table() -> Option<SymbolTable<'static>> {
    // SAFETY: `.ksyms` is a read-only section of the kernel image between
    // these linker symbols, mapped for the kernel's lifetime.
    let bytes = unsafe {
        let start = core::ptr::addr_of!(__ksyms_start);
        let len = core::ptr::addr_of!(__ksyms_end) as usize - start as usize;
        core::slice::from_raw_parts(start, len)
    };
    SymbolTable::new(bytes)
}

/// Claims the report for this CPU. Returns false if another CPU (or this
/// one, recursively) is already reporting.
fn claim() -> bool {
    let me = percpu::this_cpu_index();
    match PANIC_OWNER.compare_exchange(NO_OWNER, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(owner) if owner == me => {
            console::enter_panic_mode();
            print_line(format_args!("PANIC while reporting a panic; halting"));
            false
        }
        Err(_) => false,
    }
}

fn stop_other_cpus() {
    let others = smp::online_count().saturating_sub(1);
    if others == 0 {
        return;
    }
    apic::send_nmi_all_but_self();
    // Give them up to ~100 ms to acknowledge; a wedged CPU must not block the report.
    let deadline = cpu::read_tsc() + crate::arch::time::tsc_hz() / 10;
    while CPUS_STOPPED.load(Ordering::Acquire) < others && cpu::read_tsc() < deadline {
        cpu::pause();
    }
}

fn print_frame(n: usize, addr: u64, is_return_address: bool, symbols: &Option<SymbolTable<'static>>) {
    // A return address points after the call (possibly past the caller's
    // last byte, for calls that never return): look up the call itself.
    let probe = if is_return_address { addr.saturating_sub(1) } else { addr };
    match symbols.as_ref().and_then(|t| t.lookup(probe)) {
        Some((name, off)) => print_line(format_args!("  #{n} {addr:#018x} {name}+{:#x}", off + (addr - probe))),
        None => print_line(format_args!("  #{n} {addr:#018x} ?")),
    }
}

/// `name+offset` of `addr` (a return address is looked up as its call).
pub fn describe_address(symbols: &Option<SymbolTable<'static>>, addr: u64, is_return_address: bool) -> alloc::string::String {
    let probe = if is_return_address { addr.saturating_sub(1) } else { addr };
    match symbols.as_ref().and_then(|t| t.lookup(probe)) {
        Some((name, off)) => alloc::format!("{name}+{:#x}", off + (addr - probe)),
        None => "?".into(),
    }
}

/// The return addresses of the frame-pointer chain from `rbp`, as many as
/// fit in `out`; returns how many it wrote. Reads only mapped kernel stack
/// words, so it is safe on any CPU's stack, even one that moves meanwhile.
pub fn collect_return_addresses(mut rbp: u64, out: &mut [u64]) -> usize {
    let mut n = 0;
    while n < out.len() {
        if rbp == 0 || !rbp.is_multiple_of(8) || rbp < paging::PHYSMAP_BASE || !paging::is_mapped(rbp) || !paging::is_mapped(rbp + 8) {
            break;
        }
        // SAFETY: both words were just checked to be mapped kernel memory.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret < paging::KERNEL_VMA_OFFSET {
            break;
        }
        out[n] = ret;
        n += 1;
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    n
}

/// Walks the frame-pointer chain from `rbp`, printing symbolized return addresses.
pub fn print_backtrace(first_pc: Option<u64>, mut rbp: u64) {
    let symbols = symbol_table();
    if symbols.is_none() {
        print_line(format_args!("backtrace: (no symbol table embedded; run `mkboot embed-symbols`)"));
    } else {
        print_line(format_args!("backtrace:"));
    }
    let mut n = 0;
    if let Some(pc) = first_pc {
        print_frame(n, pc, false, &symbols);
        n += 1;
    }
    let (mut last, mut repeats) = (0u64, 0usize);
    for _ in 0..4096 {
        if rbp == 0 || !rbp.is_multiple_of(8) || rbp < paging::PHYSMAP_BASE || !paging::is_mapped(rbp) || !paging::is_mapped(rbp + 8) {
            break;
        }
        // SAFETY: both words were just checked to be mapped kernel memory.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret < paging::KERNEL_VMA_OFFSET {
            break; // the bottom of a stack: the trampoline's or boot stub's call
        }
        if ret == last {
            repeats += 1; // deep recursion: fold identical frames into one line
        } else {
            if repeats > 0 {
                print_line(format_args!("  ... previous frame repeated {repeats} more times"));
                repeats = 0;
            }
            if n >= 48 {
                print_line(format_args!("  ... (backtrace truncated)"));
                return;
            }
            print_frame(n, ret, true, &symbols);
            n += 1;
            last = ret;
        }
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    if repeats > 0 {
        print_line(format_args!("  ... previous frame repeated {repeats} more times"));
    }
}

fn finish() -> ! {
    print_line(format_args!(
        "all CPUs stopped ({} of {} stopped by NMI, this CPU halts)",
        CPUS_STOPPED.load(Ordering::Acquire),
        smp::online_count().saturating_sub(1)
    ));
    if EXIT_QEMU_ON_PANIC.load(Ordering::Relaxed) {
        crate::arch::qemu_exit(0x11);
    }
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cpu::disable_interrupts();
    if !claim() {
        cpu::halt_forever();
    }
    stop_other_cpus();
    console::enter_panic_mode();
    match info.location() {
        Some(loc) => print_line(format_args!("PANIC at {}:{}:{}: {}", loc.file(), loc.line(), loc.column(), info.message())),
        None => print_line(format_args!("PANIC: {}", info.message())),
    }
    print_backtrace(None, cpu::read_rbp());
    finish()
}

/// An exception the kernel cannot handle (all of them, until user mode exists).
pub fn fatal_exception(frame: &TrapFrame) -> ! {
    if !claim() {
        cpu::halt_forever();
    }
    stop_other_cpus();
    console::enter_panic_mode();
    let v = frame.vector as usize;
    print_line(format_args!("PANIC: CPU exception {v} ({}), error code {:#x}", EXCEPTION_NAMES[v], frame.error_code));
    if v == 14 {
        let addr = cpu::read_cr2();
        let why = if stack::is_guard_page(addr) { " (kernel stack overflow into a guard page)" } else { "" };
        print_line(format_args!("  faulting address {addr:#018x}{why}"));
    }
    if v == 8 && stack::is_guard_page(frame.rsp.saturating_sub(8)) {
        print_line(format_args!("  stack pointer {:#018x} is in a guard page: kernel stack overflow", frame.rsp));
    }
    print_registers(frame);
    print_backtrace(Some(frame.rip), frame.rbp);
    finish()
}

fn print_registers(f: &TrapFrame) {
    print_line(format_args!("  rip {:#018x} cs {:#06x} rflags {:#010x} rsp {:#018x} ss {:#06x}", f.rip, f.cs, f.rflags, f.rsp, f.ss));
    print_line(format_args!("  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}", f.rax, f.rbx, f.rcx, f.rdx));
    print_line(format_args!("  rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}", f.rsi, f.rdi, f.rbp, f.r8));
    print_line(format_args!("  r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}", f.r9, f.r10, f.r11, f.r12));
    print_line(format_args!("  r13 {:#018x} r14 {:#018x} r15 {:#018x}", f.r13, f.r14, f.r15));
    print_line(format_args!(
        "  cr0 {:#018x} cr2 {:#018x} cr3 {:#018x} cr4 {:#018x}",
        cpu::read_cr0(),
        cpu::read_cr2(),
        cpu::read_cr3(),
        cpu::read_cr4()
    ));
}

/// NMI: during a panic it is the stop signal; otherwise it is logged.
pub fn on_nmi(frame: &TrapFrame) {
    if PANIC_OWNER.load(Ordering::Acquire) != NO_OWNER {
        CPUS_STOPPED.fetch_add(1, Ordering::AcqRel);
        cpu::halt_forever();
    }
    if crate::hang::on_nmi(frame) {
        return;
    }
    log::warn!("unexpected NMI at {:#x}", frame.rip);
}
