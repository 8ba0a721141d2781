//! Per-CPU GDT and TSS, with IST stacks for NMI, double fault and machine check.

use super::percpu::PerCpu;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
// User selectors (0x18|3 data, 0x20|3 code) follow the kernel's in the order
// `sysret` expects; the GDT below defines them.
pub const TSS_SELECTOR: u16 = 0x28;

/// IST slots (1-based, as the IDT encodes them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;
pub const IST_STACK_PAGES: usize = 4;

#[repr(C, align(16))]
pub struct Gdt([u64; 7]);

impl Gdt {
    pub const fn new() -> Self {
        Gdt([0; 7])
    }
}

#[repr(C, packed(4))]
pub struct Tss {
    _reserved0: u32,
    pub rsp: [u64; 3],
    _reserved1: u64,
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    pub iomap_base: u16,
}

impl Tss {
    pub const fn new() -> Self {
        Tss {
            _reserved0: 0,
            rsp: [0; 3],
            _reserved1: 0,
            ist: [0; 7],
            _reserved2: 0,
            _reserved3: 0,
            iomap_base: core::mem::size_of::<Tss>() as u16,
        }
    }
}

fn tss_descriptor(base: u64, limit: u32) -> (u64, u64) {
    let low = (limit as u64 & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89u64 << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

/// Sets the stack the CPU switches to on an interrupt or exception from ring 3.
#[inline]
pub fn set_ring0_stack(percpu: &'static PerCpu, top: u64) {
    // SAFETY: only the owning CPU calls this (for itself); the CPU reads
    // rsp0 only when it takes an interrupt from ring 3, which cannot happen
    // while this CPU is in the kernel writing it.
    unsafe { (*percpu.tss.get()).rsp[0] = top };
}

/// Fills and loads this CPU's GDT and TSS. `ist_tops` are the tops of the
/// double-fault, NMI and machine-check stacks.
pub fn load(percpu: &'static PerCpu, ist_tops: [u64; 3]) {
    // SAFETY: only the owning CPU calls this, once, before anything else
    // references its GDT or TSS (see PerCpu's Sync impl).
    let (gdt, tss) = unsafe { (&mut *percpu.gdt.get(), &mut *percpu.tss.get()) };
    tss.ist[(IST_DOUBLE_FAULT - 1) as usize] = ist_tops[0];
    tss.ist[(IST_NMI - 1) as usize] = ist_tops[1];
    tss.ist[(IST_MACHINE_CHECK - 1) as usize] = ist_tops[2];
    let (tss_low, tss_high) = tss_descriptor(tss as *const Tss as u64, core::mem::size_of::<Tss>() as u32 - 1);
    gdt.0 = [
        0,
        0x00af_9a00_0000_ffff, // kernel code, 64-bit
        0x00cf_9200_0000_ffff, // kernel data
        0x00cf_f200_0000_ffff, // user data (DPL 3)
        0x00af_fa00_0000_ffff, // user code, 64-bit (DPL 3)
        tss_low,
        tss_high,
    ];
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit: core::mem::size_of::<Gdt>() as u16 - 1, base: gdt as *const Gdt as u64 };
    // SAFETY: the GDT lives in a static PerCpu; the selectors reloaded below
    // index its kernel code/data entries, and the TSS entry is well formed.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) TSS_SELECTOR as u64,
            tmp = out(reg) _,
        );
    }
}
