//! User x87/SSE state: one FXSAVE area per thread, switched lazily.
//!
//! The kernel itself never uses x87 or SSE (it is built soft-float), so the
//! registers always hold some *user* thread's state. The scheduler keeps
//! CR0.TS set while the running thread is not the CPU's FPU owner; the
//! thread's first x87/SSE instruction then traps (#NM, vector 7) and
//! `sched` saves the old owner's registers and loads the new one's. A
//! switch between threads that do not use the FPU — the IPC fast path's
//! usual case — costs one compare. AVX and later state components are not
//! enabled (XCR0 is left alone), so the FXSAVE image is the whole state.

use core::sync::atomic::{AtomicU32, Ordering};

use super::cpu;

/// Bytes of an FXSAVE image.
pub const AREA_BYTES: usize = 512;

/// One thread's x87/SSE registers in FXSAVE layout (Intel SDM vol. 1,
/// 10.5.1): FCW at byte 0, MXCSR at byte 24, ST0–7 from byte 32, XMM0–15
/// from byte 160.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct FpuArea(pub [u8; AREA_BYTES]);

const MXCSR_OFFSET: usize = 24;
const MXCSR_MASK_OFFSET: usize = 28;
/// Every MXCSR exception masked, round to nearest (the reset value).
const MXCSR_DEFAULT: u32 = 0x1f80;
/// x87 exceptions masked, 64-bit precision, round to nearest (what FNINIT sets).
const FCW_DEFAULT: u16 = 0x037f;

impl FpuArea {
    /// The state a new thread starts with: what FNINIT and a reset MXCSR give.
    pub const INITIAL: FpuArea = {
        let mut bytes = [0u8; AREA_BYTES];
        let fcw = FCW_DEFAULT.to_le_bytes();
        bytes[0] = fcw[0];
        bytes[1] = fcw[1];
        let mxcsr = MXCSR_DEFAULT.to_le_bytes();
        let mut i = 0;
        while i < 4 {
            bytes[MXCSR_OFFSET + i] = mxcsr[i];
            i += 1;
        }
        FpuArea(bytes)
    };

    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes([self.0[MXCSR_OFFSET], self.0[MXCSR_OFFSET + 1], self.0[MXCSR_OFFSET + 2], self.0[MXCSR_OFFSET + 3]])
    }

    /// Whether FXRSTOR accepts this image: it faults (#GP) on MXCSR bits the
    /// CPU does not support, so user-supplied state is checked first.
    pub fn loadable(&self) -> bool {
        self.mxcsr() & !MXCSR_MASK.load(Ordering::Relaxed) == 0
    }
}

/// The MXCSR bits this CPU supports (from FXSAVE's MXCSR_MASK field).
static MXCSR_MASK: AtomicU32 = AtomicU32::new(0xffbf);

/// Enables x87/SSE for ring 3 on this CPU, with CR0.TS set (no owner yet).
pub fn init_this_cpu() {
    const CR0_MP: u64 = 1 << 1;
    const CR0_EM: u64 = 1 << 2;
    const CR0_TS: u64 = 1 << 3;
    const CR0_NE: u64 = 1 << 5;
    const CR4_OSFXSR: u64 = 1 << 9;
    const CR4_OSXMMEXCPT: u64 = 1 << 10;
    // SAFETY: every x86_64 CPU has FXSR and SSE; these bits only let ring 3
    // use them (with native error reporting) and make the first use trap.
    unsafe {
        cpu::write_cr4(cpu::read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);
        cpu::write_cr0((cpu::read_cr0() | CR0_MP | CR0_NE) & !(CR0_EM | CR0_TS));
    }
    let mut probe = FpuArea([0; AREA_BYTES]);
    // SAFETY: TS is clear and `probe` is a 16-byte aligned FXSAVE area.
    unsafe {
        core::arch::asm!("fninit");
        save(&mut probe);
    }
    let mask = u32::from_le_bytes([
        probe.0[MXCSR_MASK_OFFSET],
        probe.0[MXCSR_MASK_OFFSET + 1],
        probe.0[MXCSR_MASK_OFFSET + 2],
        probe.0[MXCSR_MASK_OFFSET + 3],
    ]);
    // A zero mask means the CPU predates the field: 0xffbf applies (SDM 11.6.6).
    MXCSR_MASK.store(if mask == 0 { 0xffbf } else { mask }, Ordering::Relaxed);
    disable();
}

/// Sets CR0.TS: the next x87/SSE instruction traps with #NM.
#[inline]
pub fn disable() {
    // SAFETY: TS only makes FPU instructions trap; the kernel uses none.
    unsafe { cpu::write_cr0(cpu::read_cr0() | (1 << 3)) };
}

/// Clears CR0.TS: x87/SSE instructions run on the registers as they are.
#[inline]
pub fn enable() {
    // SAFETY: clts only changes whether FPU instructions trap.
    unsafe { core::arch::asm!("clts", options(nomem, nostack, preserves_flags)) };
}

/// Stores the x87/SSE registers into `area`.
///
/// # Safety
/// CR0.TS is clear (`enable`), and the registers hold the state that
/// belongs in `area`.
#[inline]
pub unsafe fn save(area: &mut FpuArea) {
    // SAFETY: `area` is 512 writable bytes, 16-byte aligned (FpuArea's repr).
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area as *mut FpuArea, options(nostack, preserves_flags)) };
}

/// Loads the x87/SSE registers from `area`.
///
/// # Safety
/// CR0.TS is clear, and `area` is `loadable` (it came from `save`, is
/// `INITIAL`, or was checked).
#[inline]
pub unsafe fn restore(area: &FpuArea) {
    // SAFETY: `area` is 512 readable bytes, 16-byte aligned, with a valid MXCSR.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area as *const FpuArea, options(nostack, preserves_flags, readonly)) };
}
