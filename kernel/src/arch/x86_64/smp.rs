//! Multiprocessor bring-up and cross-CPU calls.
//!
//! CPUs come from the ACPI MADT. Each application processor is started with
//! INIT-SIPI-SIPI into a real-mode trampoline copied to physical 0x8000,
//! which switches straight to long mode on the kernel's page tables and
//! jumps to `ap_entry` on a guarded stack of its own.

extern crate alloc;

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use acpi::{madt::Madt, madt::MadtEntry, AcpiHandler, AcpiTables, PhysicalMapping};

use super::idt::{VECTOR_IPI_CALL, VECTOR_IPI_RESCHEDULE};
use super::percpu::{self, RemoteCall, MAX_CPUS};
use super::{apic, cpu, paging, stack, time};

const TRAMPOLINE_PA: u64 = 0x8000;
const AP_STACK_PAGES: u64 = 16;

static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);
static ONLINE: AtomicUsize = AtomicUsize::new(0);

pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Acquire)
}

pub fn online_count() -> usize {
    ONLINE.load(Ordering::Acquire)
}

#[derive(Clone)]
struct PhysmapHandler;

impl AcpiHandler for PhysmapHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let va = paging::phys_to_virt(physical_address as u64) as *mut T;
        // SAFETY: the physmap maps all physical memory, ACPI tables included,
        // for the kernel's whole lifetime, so the mapping never goes stale.
        unsafe { PhysicalMapping::new(physical_address, NonNull::new(va).expect("physmap is never null"), size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Local APIC IDs of every enabled CPU in the MADT, the boot CPU first.
pub fn discover_cpus(rsdp: Option<u64>) -> Vec<u32> {
    let bsp = apic::id();
    let mut ids = alloc::vec![bsp];
    let tables = match rsdp {
        // SAFETY: the address comes from the boot loader or the BIOS-area scan
        // and is checked (signature, checksum) by the acpi crate.
        Some(addr) => unsafe { AcpiTables::from_rsdp(PhysmapHandler, addr as usize) },
        None => {
            // SAFETY: scans the BIOS areas through the physmap.
            unsafe { AcpiTables::search_for_rsdp_bios(PhysmapHandler) }
        }
    };
    let tables = match tables {
        Ok(t) => t,
        Err(e) => {
            log::warn!("acpi: no usable tables ({e:?}); running on the boot CPU only");
            return ids;
        }
    };
    let madt = match tables.find_table::<Madt>() {
        Ok(m) => m,
        Err(e) => {
            log::warn!("acpi: no MADT ({e:?}); running on the boot CPU only");
            return ids;
        }
    };
    for entry in madt.get().entries() {
        let (id, flags) = match entry {
            MadtEntry::LocalApic(e) => (e.apic_id as u32, e.flags),
            MadtEntry::LocalX2Apic(e) => (e.x2apic_id, e.flags),
            _ => continue,
        };
        // Bit 0: enabled. CPUs that are only "online capable" (bit 1) are
        // hot-plug slots without a processor behind them yet.
        if flags & 1 == 0 || ids.contains(&id) {
            continue;
        }
        if ids.len() == MAX_CPUS {
            log::warn!("smp: more than {MAX_CPUS} CPUs; ignoring APIC ID {id}");
            continue;
        }
        ids.push(id);
    }
    ids
}

core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (0x8000 + ap_tramp_gdtr - ap_trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (0x8000 + ap_tramp_cr3 - ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl (0x8000 + ap_tramp_efer - ap_trampoline_start), %eax
    wrmsr
    movl %cr0, %eax
    // An AP leaves INIT with caching off (CD and NW set): turn it on.
    andl $0x9fffffff, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(0x8000 + ap_tramp_long - ap_trampoline_start)
    .code64
ap_tramp_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (0x8000 + ap_tramp_stack - ap_trampoline_start), %rsp
    movq (0x8000 + ap_tramp_arg - ap_trampoline_start), %rdi
    movq (0x8000 + ap_tramp_entry - ap_trampoline_start), %rax
    xorl %ebp, %ebp
    call *%rax
1:
    cli
    hlt
    jmp 1b
    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
ap_tramp_gdtr:
    .short 23
    .long 0x8000 + ap_tramp_gdt - ap_trampoline_start
    .balign 8
    .global ap_tramp_cr3
ap_tramp_cr3:   .quad 0
ap_tramp_efer:  .quad 0
ap_tramp_stack: .quad 0
ap_tramp_entry: .quad 0
ap_tramp_arg:   .quad 0
ap_trampoline_end:
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_tramp_cr3: u8;
}

/// Set by each AP once it has read its trampoline arguments.
static AP_STARTED: AtomicBool = AtomicBool::new(false);

struct TrampolineArgs {
    cr3: u64,
    efer: u64,
    stack: u64,
    entry: u64,
    arg: u64,
}

fn install_trampoline(args: &TrampolineArgs) {
    let (start, end, cr3_slot) = (
        core::ptr::addr_of!(ap_trampoline_start) as u64,
        core::ptr::addr_of!(ap_trampoline_end) as u64,
        core::ptr::addr_of!(ap_tramp_cr3) as u64,
    );
    let len = (end - start) as usize;
    let dst = paging::phys_to_virt(TRAMPOLINE_PA);
    // SAFETY: physical 0x8000..+len is below 1 MiB, which the frame allocator
    // never hands out, so the trampoline owns it; the source is the kernel's
    // read-only copy of the trampoline.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, dst as *mut u8, len);
        let slots = (dst + (cr3_slot - start)) as *mut u64;
        for (i, v) in [args.cr3, args.efer, args.stack, args.entry, args.arg].into_iter().enumerate() {
            core::ptr::write_volatile(slots.add(i), v);
        }
    }
}

/// Starts every CPU in `apic_ids[1..]` (index i gets `percpu::cpu(i)`).
pub fn start_aps(apic_ids: &[u32]) {
    CPU_COUNT.store(apic_ids.len(), Ordering::Release);
    ONLINE.store(1, Ordering::Release);
    if apic_ids.len() == 1 {
        return;
    }
    if let Err(e) = paging::set_low_identity_map(true) {
        log::error!("smp: cannot map the AP trampoline ({e:?}); running on the boot CPU only");
        return;
    }
    let efer_bits = 0x100 | if cpu::nx_supported() { 0x800 } else { 0 };
    for (index, &apic_id) in apic_ids.iter().enumerate().skip(1) {
        let stack = match stack::alloc(AP_STACK_PAGES) {
            Ok(s) => s,
            Err(e) => {
                log::error!("smp: no stack for CPU {index}: {e:?}");
                continue;
            }
        };
        percpu::cpu(index).stack_top.store(stack.top, Ordering::Relaxed);
        percpu::cpu(index).apic_id.store(apic_id, Ordering::Relaxed);
        AP_STARTED.store(false, Ordering::Release);
        install_trampoline(&TrampolineArgs {
            cr3: paging::kernel_root(),
            efer: efer_bits,
            stack: stack.top,
            entry: ap_entry as extern "C" fn(u64) -> ! as usize as u64,
            arg: index as u64,
        });
        let t0 = cpu::read_tsc();
        apic::send_init(apic_id);
        time::delay_us(10_000);
        apic::send_startup(apic_id, (TRAMPOLINE_PA >> 12) as u8);
        time::delay_us(200);
        if !AP_STARTED.load(Ordering::Acquire) {
            apic::send_startup(apic_id, (TRAMPOLINE_PA >> 12) as u8);
        }
        // Wait up to 500 ms for the CPU to report online.
        let deadline = cpu::read_tsc() + time::tsc_hz() / 2;
        while !percpu::cpu(index).online.load(Ordering::Acquire) && cpu::read_tsc() < deadline {
            cpu::pause();
        }
        if percpu::cpu(index).online.load(Ordering::Acquire) {
            let us = (cpu::read_tsc() - t0) / (time::tsc_hz() / 1_000_000).max(1);
            log::debug!("smp: cpu{index} (APIC {apic_id}) online after {us} us");
        } else {
            log::error!("smp: cpu{index} (APIC {apic_id}) did not come up");
        }
    }
    let _ = paging::set_low_identity_map(false);
    // Every AP is past the trampoline; drop any identity translations they cached.
    super::tlb::shootdown(0, 1 << 9);
}

extern "C" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    AP_STARTED.store(true, Ordering::Release);
    let apic_id = percpu::cpu(index).apic_id.load(Ordering::Relaxed);
    percpu::install(index, apic_id);
    super::init_this_cpu(index);
    apic::init_this_cpu();
    time::start_this_cpu_timer();
    if let Err(e) = crate::sched::init_this_cpu(false) {
        panic!("cpu{index}: scheduler: {e:?}");
    }
    percpu::this_cpu().online.store(true, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    crate::sched::idle_loop()
}

pub fn on_call_ipi() {
    let me = percpu::this_cpu();
    // The request stays posted while it runs, so no other caller can post
    // (and mistake this call's completion for its own) until it is done.
    let call = *me.call_request.lock();
    if let Some(RemoteCall { func, arg }) = call {
        func(arg);
        *me.call_request.lock() = None;
        me.calls_done.fetch_add(1, Ordering::Release);
    }
}

/// Runs `func(arg)` on CPU `index` (in interrupt context there) and waits
/// for it to finish. On the calling CPU it is a plain call.
pub fn run_on(index: usize, func: fn(usize), arg: usize) {
    if index == percpu::this_cpu_index() {
        func(arg);
        return;
    }
    let target = percpu::cpu(index);
    if !target.online.load(Ordering::Acquire) {
        return;
    }
    let before;
    loop {
        let mut slot = target.call_request.lock();
        if slot.is_none() {
            before = target.calls_done.load(Ordering::Acquire);
            *slot = Some(RemoteCall { func, arg });
            break;
        }
        drop(slot);
        cpu::pause();
    }
    apic::send_ipi(target.apic_id.load(Ordering::Relaxed), VECTOR_IPI_CALL);
    while target.calls_done.load(Ordering::Acquire) == before {
        cpu::pause();
    }
}

pub fn send_reschedule(index: usize) {
    apic::send_ipi(percpu::cpu(index).apic_id.load(Ordering::Relaxed), VECTOR_IPI_RESCHEDULE);
}
