//! Small wrappers around privileged instructions, and CPU feature discovery.

use core::sync::atomic::{AtomicBool, Ordering};
use raw_cpuid::CpuId;

static NX_SUPPORTED: AtomicBool = AtomicBool::new(false);
static PCID_SUPPORTED: AtomicBool = AtomicBool::new(false);

/// The CPU features the kernel adapts to, read once on the boot CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub nx: bool,
    pub x2apic: bool,
    pub tsc_deadline: bool,
    pub invariant_tsc: bool,
    pub pcid: bool,
    pub invpcid: bool,
    pub smep: bool,
    pub smap: bool,
    pub umip: bool,
    pub huge_1g: bool,
    pub global_pages: bool,
    pub tsc_hz_from_cpuid: Option<u64>,
}

pub fn detect_features() -> Features {
    let cpuid = CpuId::new();
    let mut f = Features::default();
    if let Some(info) = cpuid.get_feature_info() {
        f.x2apic = info.has_x2apic();
        f.tsc_deadline = info.has_tsc_deadline();
        f.pcid = info.has_pcid();
        f.global_pages = info.has_pge();
    }
    if let Some(ext) = cpuid.get_extended_processor_and_feature_identifiers() {
        f.nx = ext.has_execute_disable();
        f.huge_1g = ext.has_1gib_pages();
    }
    if let Some(ext) = cpuid.get_extended_feature_info() {
        f.smep = ext.has_smep();
        f.smap = ext.has_smap();
        f.umip = ext.has_umip();
        f.invpcid = ext.has_invpcid();
    }
    if let Some(apm) = cpuid.get_advanced_power_mgmt_info() {
        f.invariant_tsc = apm.has_invariant_tsc();
    }
    if let Some(tsc) = cpuid.get_tsc_info() {
        f.tsc_hz_from_cpuid = tsc.tsc_frequency().filter(|&hz| hz > 0);
    }
    NX_SUPPORTED.store(f.nx, Ordering::Relaxed);
    PCID_SUPPORTED.store(f.pcid, Ordering::Relaxed);
    f
}

pub fn nx_supported() -> bool {
    NX_SUPPORTED.load(Ordering::Relaxed)
}

pub fn read_tsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no memory is touched otherwise.
    unsafe { core::arch::asm!("pushfq; pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

pub fn enable_interrupts() {
    // SAFETY: the IDT and every handler are installed before any CPU calls this.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
}

pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
}

/// Runs `f` with interrupts masked, restoring the previous state afterwards.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_enabled = interrupts_enabled();
    if was_enabled {
        disable_interrupts();
    }
    let r = f();
    if was_enabled {
        enable_interrupts();
    }
    r
}

/// Enables interrupts and halts atomically (`sti; hlt`), so a wake-up
/// interrupt that arrives between the two cannot be missed.
pub fn enable_interrupts_and_halt() {
    // SAFETY: sti's one-instruction shadow covers hlt; handlers are installed.
    unsafe { core::arch::asm!("sti; hlt", options(nomem, nostack)) };
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masking interrupts and halting only stops this CPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

pub fn pause() {
    core::hint::spin_loop();
}

pub fn read_msr(msr: u32) -> u64 {
    // SAFETY: callers pass architectural MSRs that exist on every x86_64 CPU
    // or that they have checked for with CPUID.
    unsafe { x86::msr::rdmsr(msr) }
}

/// # Safety
/// Writing an MSR can change paging, segmentation or interrupt behaviour; the
/// caller states why the value is correct.
pub unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { x86::msr::wrmsr(msr, value) }
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

/// # Safety
/// `value` must point at a PML4 that maps the running code, stack and data.
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) value, options(nostack)) };
}

pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: no side effects.
    unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

/// # Safety
/// The caller keeps PE, PG and WP set and changes only bits whose effect it
/// has accounted for (the FPU control bits).
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) value, options(nostack)) };
}

pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// # Safety
/// The caller has checked with CPUID that every bit it sets is supported.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) value, options(nostack)) };
}

pub fn invlpg(addr: u64) {
    // SAFETY: invalidating a TLB entry is always safe; at worst it costs a walk.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

pub fn read_rbp() -> u64 {
    let v: u64;
    // SAFETY: copies a register.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_rsp() -> u64 {
    let v: u64;
    // SAFETY: copies a register.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: used only for the legacy devices the kernel drives (COM1, PIT,
    // PIC masks, debug-exit), whose ports have no memory side effects.
    unsafe { x86::io::outb(port, value) }
}

pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`.
    unsafe { x86::io::inb(port) }
}

pub const MSR_EFER: u32 = 0xC000_0080;
pub const MSR_GS_BASE: u32 = 0xC000_0101;
pub const MSR_APIC_BASE: u32 = 0x1B;
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
