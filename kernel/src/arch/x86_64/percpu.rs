//! Per-CPU data, reached through the GS base.
//!
//! Each CPU owns one [`PerCpu`] in a static array; its GS base points at it
//! and the first word holds its own address, so `this_cpu()` is one `mov`
//! from `gs:0`. (When user mode arrives, `swapgs` keeps the kernel's GS base
//! in `IA32_KERNEL_GS_BASE` while user code runs.)

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::gdt::{Gdt, Tss};

pub const MAX_CPUS: usize = 64;

/// A function another CPU asked this CPU to run (see `smp::run_on`).
#[derive(Clone, Copy)]
pub struct RemoteCall {
    pub func: fn(usize),
    pub arg: usize,
}

#[repr(C, align(64))]
pub struct PerCpu {
    /// Must stay the first field: `this_cpu()` reads it at `gs:0`.
    self_ptr: AtomicUsize,
    /// Stack the `syscall` entry switches to (read by the entry stub at a fixed offset).
    pub syscall_kernel_rsp: AtomicU64,
    /// Where the entry stub parks the user stack pointer while it switches.
    pub syscall_user_rsp: AtomicU64,
    pub index: AtomicU32,
    pub apic_id: AtomicU32,
    pub online: AtomicBool,
    /// Timer interrupts taken on this CPU.
    pub ticks: AtomicU64,
    /// Reschedule/test IPIs taken on this CPU.
    pub ipis_received: AtomicU64,
    pub tlb_shootdowns_handled: AtomicU64,
    pub stack_top: AtomicU64,
    pub call_request: spin::Mutex<Option<RemoteCall>>,
    pub calls_done: AtomicU64,
    /// The scheduler's state for this CPU (opaque here; set by the
    /// scheduler), so a system call reaches it with one `gs:` load.
    pub scheduler_state: AtomicUsize,
    /// This CPU's GDT and TSS; written only by this CPU while it starts.
    pub(super) gdt: UnsafeCell<Gdt>,
    pub(super) tss: UnsafeCell<Tss>,
}

// SAFETY: the UnsafeCell fields (GDT, TSS) are written only by the owning CPU
// during its bring-up, before any other code can observe them; every other
// field is atomic or lock-protected.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            self_ptr: AtomicUsize::new(0),
            syscall_kernel_rsp: AtomicU64::new(0),
            syscall_user_rsp: AtomicU64::new(0),
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            ipis_received: AtomicU64::new(0),
            tlb_shootdowns_handled: AtomicU64::new(0),
            stack_top: AtomicU64::new(0),
            call_request: spin::Mutex::new(None),
            calls_done: AtomicU64::new(0),
            scheduler_state: AtomicUsize::new(0),
            gdt: UnsafeCell::new(Gdt::new()),
            tss: UnsafeCell::new(Tss::new()),
        }
    }

    #[inline]
    pub fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed) as usize
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
static GS_READY: AtomicBool = AtomicBool::new(false);

pub fn cpu(index: usize) -> &'static PerCpu {
    &CPUS[index]
}

/// Points this CPU's GS base at `CPUS[index]`. Called first thing on every CPU.
pub fn install(index: usize, apic_id: u32) {
    let percpu = &CPUS[index];
    let addr = percpu as *const PerCpu as usize;
    percpu.self_ptr.store(addr, Ordering::Relaxed);
    percpu.index.store(index as u32, Ordering::Relaxed);
    percpu.apic_id.store(apic_id, Ordering::Relaxed);
    // SAFETY: the address is a static PerCpu that lives forever; GS is not
    // used for anything else in the kernel.
    unsafe { super::cpu::write_msr(super::cpu::MSR_GS_BASE, addr as u64) };
    GS_READY.store(true, Ordering::Release);
}

#[inline]
pub fn this_cpu() -> &'static PerCpu {
    if !GS_READY.load(Ordering::Acquire) {
        return &CPUS[0];
    }
    let addr: usize;
    // SAFETY: once GS_READY is set on the boot CPU, every CPU that runs kernel
    // code has installed its GS base (APs do so before touching anything else).
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) addr, options(nostack, preserves_flags, readonly)) };
    if addr == 0 {
        return &CPUS[0];
    }
    // SAFETY: gs:0 holds the address of a static PerCpu (see `install`).
    unsafe { &*(addr as *const PerCpu) }
}

/// This CPU's index and `scheduler_state`, read straight through `gs:`
/// (the IPC fast path's accessor). Only for code that runs once this CPU
/// schedules threads (system-call entry, thread switches): its GS base is
/// installed by then, so this skips `this_cpu`'s early-boot checks.
#[inline(always)]
pub fn this_cpu_index_and_scheduler() -> (usize, usize) {
    debug_assert!(GS_READY.load(Ordering::Relaxed));
    let (index, state): (u32, usize);
    // SAFETY: a CPU installs its GS base before it starts its scheduler, so
    // it points at this CPU's PerCpu and these are plain loads of two of its
    // fields.
    unsafe {
        core::arch::asm!(
            "mov {index:e}, gs:[{index_at}]",
            "mov {state}, gs:[{state_at}]",
            index = out(reg) index,
            state = out(reg) state,
            index_at = const core::mem::offset_of!(PerCpu, index),
            state_at = const core::mem::offset_of!(PerCpu, scheduler_state),
            options(nostack, preserves_flags, readonly)
        )
    };
    (index as usize, state)
}

#[inline]
pub fn this_cpu_index() -> usize {
    this_cpu().index()
}
