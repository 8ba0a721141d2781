//! Everything that touches x86_64 registers, descriptor tables, the APIC and
//! the boot protocol lives under this module. The rest of the kernel talks to
//! it through small safe functions.

pub mod apic;
pub mod boot;
pub mod bootinfo;
pub mod context;
pub mod cpu;
pub mod fpu;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod pcid;
pub mod percpu;
pub mod serial;
pub mod smp;
pub mod stack;
pub mod syscall;
pub mod time;
pub mod tlb;
pub mod usercopy;

/// Writes to QEMU's `isa-debug-exit` device (I/O port 0xf4). QEMU exits with
/// status `(code << 1) | 1`: 0x10 gives 33 (the harness's "pass"), 0x11 gives 35.
/// On hardware without the device the write is ignored and we halt.
pub fn qemu_exit(code: u8) -> ! {
    // SAFETY: port 0xf4 is QEMU's debug-exit device when present; on other
    // machines nothing decodes it and the write has no effect.
    unsafe { x86::io::outb(0xf4, code) };
    cpu::halt_forever()
}

use self::gdt::IST_STACK_PAGES;

/// Per-CPU architecture setup, run by every CPU on its own kernel stack:
/// GDT/TSS with IST stacks, the shared IDT, and protection bits in CR4.
pub fn init_this_cpu(index: usize) {
    let mut ist_tops = [0u64; 3];
    for top in ist_tops.iter_mut() {
        match stack::alloc(IST_STACK_PAGES as u64) {
            Ok(s) => *top = s.top,
            Err(e) => panic!("cpu{index}: cannot allocate an IST stack: {e:?}"),
        }
    }
    gdt::load(percpu::cpu(index), ist_tops);
    idt::load();
    if let Err(e) = syscall::init_this_cpu() {
        panic!("cpu{index}: cannot set up the syscall entry stack: {e:?}");
    }
    let f = features();
    let mut cr4 = cpu::read_cr4();
    if f.global_pages {
        cr4 |= 1 << 7;
    }
    if f.umip {
        cr4 |= 1 << 11;
    }
    if f.smep {
        cr4 |= 1 << 20;
    }
    if f.smap {
        cr4 |= 1 << 21;
    }
    // PCIDE: CR3 holds the kernel's table with tag 0 here, as setting it requires.
    cr4 |= pcid::cr4_bits();
    // SAFETY: each bit is set only when CPUID reports the feature; the kernel
    // never executes or (outside future audited copy routines) touches user
    // pages; PCIDE is set while CR3's PCID bits are 0 (the kernel's table).
    unsafe { cpu::write_cr4(cr4) };
    fpu::init_this_cpu();
    if f.nx {
        // SAFETY: EFER.NXE is supported (CPUID) and page tables already use NX.
        unsafe { cpu::write_msr(cpu::MSR_EFER, cpu::read_msr(cpu::MSR_EFER) | (1 << 11)) };
    }
}

static FEATURES: spin::Once<cpu::Features> = spin::Once::new();

pub fn features() -> cpu::Features {
    *FEATURES.call_once(cpu::detect_features)
}

/// The arch modules the rest of the kernel uses, in one import.
pub mod exports {
    pub use super::{apic, bootinfo, cpu, fpu, idt, paging, pcid, percpu, smp, stack, time, tlb};
}
