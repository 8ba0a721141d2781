//! The local APIC in x2APIC mode (MSRs) where the CPU has it, xAPIC (MMIO)
//! otherwise. QEMU's TCG has no x2APIC, so both paths are real.
//!
//! Written here rather than taken from the x2apic crate because IPIs are on
//! the IPC wake-up path and the kernel needs direct control of ICR waits,
//! NMI delivery and the timer modes.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cpu::{self, read_msr, write_msr, MSR_APIC_BASE};
use super::idt::{VECTOR_APIC_ERROR, VECTOR_SPURIOUS};

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_VA: AtomicU64 = AtomicU64::new(0);

const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xB0;
const REG_SVR: u32 = 0xF0;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3E0;

const LVT_MASKED: u32 = 1 << 16;
pub const TIMER_PERIODIC: u32 = 1 << 17;
pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;

const ICR_FIXED: u64 = 0;
const ICR_NMI: u64 = 4 << 8;
const ICR_INIT: u64 = 5 << 8;
const ICR_STARTUP: u64 = 6 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u64 = 1 << 14;
const ICR_ALL_EXCLUDING_SELF: u64 = 3 << 18;

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        read_msr(0x800 + (reg >> 4)) as u32
    } else {
        let va = XAPIC_VA.load(Ordering::Relaxed) + reg as u64;
        // SAFETY: the xAPIC page is mapped uncached at XAPIC_VA by `init_bsp`.
        unsafe { core::ptr::read_volatile(va as *const u32) }
    }
}

fn write(reg: u32, value: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: x2APIC registers are MSRs 0x800 + reg/16 (Intel SDM 10.12.1).
        unsafe { write_msr(0x800 + (reg >> 4), value as u64) };
    } else {
        let va = XAPIC_VA.load(Ordering::Relaxed) + reg as u64;
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(va as *mut u32, value) };
    }
}

pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

/// Chooses the mode and maps the xAPIC registers. Boot CPU only, once.
pub fn init_bsp(has_x2apic: bool) -> Result<(), super::paging::MapError> {
    X2APIC.store(has_x2apic, Ordering::Relaxed);
    if !has_x2apic {
        let base = read_msr(MSR_APIC_BASE) & 0x000f_ffff_ffff_f000;
        let va = super::paging::map_mmio(0, base)?;
        XAPIC_VA.store(va, Ordering::Relaxed);
    }
    Ok(())
}

/// Enables this CPU's local APIC. Every CPU calls it for itself.
pub fn init_this_cpu() {
    let mut base = read_msr(MSR_APIC_BASE);
    base |= 1 << 11;
    if is_x2apic() {
        base |= 1 << 10;
    }
    // SAFETY: sets the global-enable (and x2APIC) bits the mode chosen in
    // `init_bsp` requires; the base address is unchanged.
    unsafe { write_msr(MSR_APIC_BASE, base) };
    write(REG_TPR, 0);
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_ERROR, VECTOR_APIC_ERROR as u32);
    write(REG_ESR, 0);
    write(REG_SVR, 0x100 | VECTOR_SPURIOUS as u32);
    eoi();
}

pub fn id() -> u32 {
    if is_x2apic() {
        read(REG_ID)
    } else {
        read(REG_ID) >> 24
    }
}

pub fn eoi() {
    write(REG_EOI, 0);
}

pub fn read_error_status() -> u32 {
    write(REG_ESR, 0);
    read(REG_ESR)
}

fn send_icr(dest: u32, command: u64) {
    if is_x2apic() {
        // SAFETY: the x2APIC ICR is one 64-bit MSR: destination in bits 63:32.
        unsafe { write_msr(0x830, ((dest as u64) << 32) | command) };
    } else {
        cpu::without_interrupts(|| {
            wait_icr_idle();
            write(REG_ICR_HIGH, dest << 24);
            write(REG_ICR_LOW, command as u32);
            wait_icr_idle();
        });
    }
}

fn wait_icr_idle() {
    for _ in 0..1_000_000 {
        if read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
            return;
        }
        cpu::pause();
    }
}

pub fn send_ipi(dest_apic_id: u32, vector: u8) {
    send_icr(dest_apic_id, ICR_FIXED | vector as u64);
}

pub fn send_nmi_all_but_self() {
    send_icr(0, ICR_NMI | ICR_ALL_EXCLUDING_SELF);
}

pub fn send_init(dest_apic_id: u32) {
    send_icr(dest_apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

pub fn send_startup(dest_apic_id: u32, page: u8) {
    send_icr(dest_apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | page as u64);
}

/// Programs the timer LVT. `mode` is `TIMER_PERIODIC`, `TIMER_TSC_DEADLINE` or 0 (one-shot).
pub fn timer_setup(vector: u8, mode: u32, divide_by_16: bool, initial_count: u32) {
    write(REG_TIMER_DIVIDE, if divide_by_16 { 0b0011 } else { 0b1011 });
    write(REG_LVT_TIMER, vector as u32 | mode);
    if mode != TIMER_TSC_DEADLINE {
        write(REG_TIMER_INITIAL, initial_count);
    }
}

pub fn timer_stop() {
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INITIAL, 0);
}

pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}

/// Masks the legacy 8259 PICs (after moving them off the exception vectors)
/// so only the APIC delivers interrupts.
pub fn disable_legacy_pic() {
    use super::cpu::outb;
    outb(0x20, 0x11);
    outb(0xA0, 0x11);
    outb(0x21, 0x20);
    outb(0xA1, 0x28);
    outb(0x21, 4);
    outb(0xA1, 2);
    outb(0x21, 1);
    outb(0xA1, 1);
    outb(0x21, 0xff);
    outb(0xA1, 0xff);
}
