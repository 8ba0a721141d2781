//! Matryoshka: a microkernel for recursive virtual machines (Fluke's nested
//! process model) on SMP x86_64.
//!
//! This crate is the kernel binary. Built for `x86_64-unknown-none` it boots
//! through Multiboot2 (GRUB: ISO, USB, PXE) or PVH (QEMU `-kernel`). Built for
//! the host it only runs the unit tests of its pure-logic modules
//! (`cargo test -p kernel`); the host binary itself refuses to run.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// Per-CPU tables are indexed by CPU number: `for cpu in 0..n { X[cpu] }`
// says which CPU each entry is for more plainly than an enumerate.
#![allow(clippy::needless_range_loop)]

#[cfg(target_os = "none")]
extern crate alloc;

pub mod bootinfo;
pub mod cmdline;
#[cfg(target_os = "none")]
pub mod hang;
pub mod mm;
pub mod object;
pub mod symbols;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod archive;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod ipc;
#[cfg(target_os = "none")]
mod ktest;
#[cfg(target_os = "none")]
mod loader;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
mod reliable;
pub mod sched;
#[cfg(target_os = "none")]
mod syscall;
#[cfg(target_os = "none")]
mod tlbtests;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("kernel: this binary runs on bare metal; build it with `just build` and boot it with `just qemu-smp`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
pub use boot::kernel_entry_bsp;

#[cfg(target_os = "none")]
pub fn boot_usable_memory() -> mm::rangeset::RangeSet<256> {
    boot::usable_memory(boot::boot_info())
}

/// The boot module holding the root user program (see
/// [`bootinfo::BootInfo::init_module`]).
#[cfg(target_os = "none")]
pub fn boot_init_module() -> Option<bootinfo::BootModule> {
    boot::boot_info().init_module().copied()
}

/// The root program's ELF image: the `init` boot module itself, or, when that
/// module is the boot archive (cpio newc, as `mkboot` builds it), the
/// archive's `bin/init`. The archive as a whole still reaches the root
/// program as its boot module (the nesters' programs and data files).
#[cfg(target_os = "none")]
pub fn root_program_image() -> Result<&'static [u8], &'static str> {
    let m = boot_init_module().ok_or("no boot module holds the root program (mkboot passes build/boot.cpio as the module `init`)")?;
    if m.end <= m.start {
        return Err("the init module is empty");
    }
    // SAFETY: boot modules stay in RAM the frame allocator never hands out,
    // and the physmap covers all RAM; nothing writes to them.
    let bytes =
        unsafe { core::slice::from_raw_parts(crate::arch::x86_64::paging::phys_to_virt(m.start) as *const u8, (m.end - m.start) as usize) };
    archive::root_program(bytes)
}

/// The parsed kernel command line.
#[cfg(target_os = "none")]
pub fn kernel_args() -> cmdline::KernelArgs<'static> {
    boot::args()
}

/// Arms the allocation fault injector as the command line says
/// (`failalloc=`), just before a root program starts.
#[cfg(target_os = "none")]
pub fn arm_fault_injection_from_cmdline() {
    if let Some(plan) = kernel_args().fail_alloc {
        log::info!("failalloc: injecting {plan:?} into the root program's allocations");
        mm::inject::INJECTOR.arm(plan);
    }
}

/// Every boot module, for the root program's module area.
#[cfg(target_os = "none")]
pub fn boot_modules() -> &'static [bootinfo::BootModule] {
    boot::boot_info().modules()
}

#[cfg(target_os = "none")]
mod boot {
    use core::sync::atomic::Ordering;

    use crate::arch::x86_64_exports::*;
    use crate::bootinfo::{BootInfo, MemKind};
    use crate::cmdline::{KernelArgs, TestSelection};
    use crate::mm::frame::{self, FRAME_SIZE};
    use crate::mm::rangeset::RangeSet;
    use crate::{console, ktest, mm, panic};

    static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();
    static BOOT_CPU_STACK_PAGES: u64 = 32;

    extern "C" {
        static __boot_start: u8;
        static __kernel_end: u8;
    }

    pub fn boot_info() -> &'static BootInfo {
        BOOT_INFO.get().expect("boot info is decoded first thing")
    }

    pub fn args() -> KernelArgs<'static> {
        KernelArgs::parse(boot_info().cmdline.as_str())
    }

    /// Usable RAM: the loader's usable regions minus low memory (BIOS data,
    /// the AP trampoline), the kernel image, boot modules and loader data.
    pub fn usable_memory(info: &BootInfo) -> RangeSet<256> {
        let mut set = RangeSet::<256>::new();
        for r in info.memory().iter().filter(|r| r.kind == MemKind::Usable) {
            let _ = set.add(r.start, r.end);
        }
        for r in info.memory().iter().filter(|r| r.kind != MemKind::Usable) {
            let _ = set.remove(r.start, r.end);
        }
        let _ = set.remove(0, 1 << 20);
        let (image_start, image_end) =
            (core::ptr::addr_of!(__boot_start) as u64, paging::kernel_image_virt_to_phys(core::ptr::addr_of!(__kernel_end) as u64));
        let _ = set.remove(image_start, image_end);
        for m in info.modules() {
            let _ = set.remove(m.start, m.end);
        }
        if let Some((start, end)) = info.keep {
            let _ = set.remove(start, end);
        }
        set.align_inward(FRAME_SIZE);
        set
    }

    /// First Rust code on the boot CPU, on the boot stack, with the boot
    /// page tables. `magic`/`info` are the loader's eax/ebx.
    #[no_mangle]
    pub extern "C" fn kernel_entry_bsp(magic: u32, info: u32) -> ! {
        percpu::install(0, 0);
        idt::init();
        idt::load();
        console::init(crate::cmdline::LogLevel::Info);
        let info = match bootinfo::decode(magic, info) {
            Ok(i) => BOOT_INFO.call_once(|| i),
            Err(e) => panic!("cannot read the boot information ({e:?}); eax={magic:#x} ebx={info:#x}"),
        };
        let args = args();
        console::set_level(args.log_level);
        panic::EXIT_QEMU_ON_PANIC.store(args.exit_qemu, Ordering::Relaxed);
        crate::sched::set_direct_handoff(args.fastpath);
        if let Some(seconds) = args.watchdog_seconds {
            crate::hang::set_watchdog_seconds(seconds);
        }
        if let Some(n) = args.ipc_spin {
            crate::ipc::set_spin_limit(n);
        }
        log::info!("Matryoshka {} booting via {}; command line '{}'", env!("CARGO_PKG_VERSION"), info.loader, info.cmdline.as_str());
        if let Some(word) = args.first_unknown {
            log::warn!("cmdline: ignoring '{word}'");
        }
        let f = crate::arch::features();
        log::info!(
            "cpu: nx={} x2apic={} tsc-deadline={} invariant-tsc={} pcid={} smep={} smap={} umip={}",
            f.nx,
            f.x2apic,
            f.tsc_deadline,
            f.invariant_tsc,
            f.pcid,
            f.smep,
            f.smap,
            f.umip
        );
        let usable = usable_memory(info);
        for r in info.memory() {
            log::debug!("memory: {:#014x}-{:#014x} {:?}", r.start, r.end, r.kind);
        }
        for m in info.modules() {
            log::info!("module: {:#x}-{:#x} '{}'", m.start, m.end, m.name.as_str());
        }
        match info.init_module() {
            Some(m) => log::info!("module: {:#x} is the root program ({} KiB)", m.start, (m.end - m.start) >> 10),
            None => log::warn!("module: none holds the root program (init)"),
        }
        if let Err(e) = frame::init(usable.as_slice()) {
            panic!("frame allocator: {e:?} (usable memory: {} KiB)", usable.total() >> 10);
        }
        let phys_top = info.memory().iter().map(|r| r.end).max().unwrap_or(1 << 32);
        if let Err(e) = paging::init_kernel_address_space(phys_top, f.global_pages) {
            panic!("kernel page tables: {e:?}");
        }
        pcid::decide(&f, args.pcid);
        paging::set_kernel_token();
        log::info!(
            "tlb: address spaces {} (pcid={} invpcid={} on the CPU; pcid={} on the command line)",
            if pcid::enabled() { "tagged, kernel pages global" } else { "untagged: every switch flushes" },
            f.pcid,
            f.invpcid,
            if args.pcid { "on" } else { "off" }
        );
        if let Err(e) = mm::heap::init() {
            panic!("kernel heap: {e:?}");
        }
        let stack = stack::alloc(BOOT_CPU_STACK_PAGES).unwrap_or_else(|e| panic!("boot CPU stack: {e:?}"));
        percpu::cpu(0).stack_top.store(stack.top, Ordering::Relaxed);
        stack::switch_to(stack.top, bsp_main)
    }

    /// The rest of boot, on the boot CPU's guarded stack.
    extern "C" fn bsp_main() -> ! {
        let f = crate::arch::features();
        crate::arch::init_this_cpu(0);
        apic::disable_legacy_pic();
        if let Err(e) = apic::init_bsp(f.x2apic) {
            panic!("local APIC: {e:?}");
        }
        apic::init_this_cpu();
        percpu::install(0, apic::id());
        let tsc_hz = time::calibrate_tsc(f.tsc_hz_from_cpuid);
        time::calibrate_apic_timer(f.tsc_deadline);
        log::info!(
            "time: TSC {}.{:03} MHz, tick timer {} at {} Hz, APIC {}",
            tsc_hz / 1_000_000,
            tsc_hz / 1000 % 1000,
            time::timer_mode_name(),
            time::TICK_HZ,
            if apic::is_x2apic() { "x2APIC" } else { "xAPIC" }
        );
        let cpus = smp::discover_cpus(boot_info().rsdp);
        time::start_this_cpu_timer();
        if let Err(e) = crate::sched::init_this_cpu(true) {
            panic!("scheduler: {e:?}");
        }
        percpu::this_cpu().online.store(true, Ordering::Release);
        cpu::enable_interrupts();
        smp::start_aps(&cpus);
        log::info!("smp: {}/{} CPUs online", smp::online_count(), cpus.len());
        frame::log_stats(smp::online_count());
        let args = args();
        match args.test {
            TestSelection::None => {
                match crate::root_program_image() {
                    Ok(image) => {
                        log::info!("starting the root program ({} KiB) as the system", image.len() >> 10);
                        crate::arm_fault_injection_from_cmdline();
                        match crate::loader::run_with_flags(image, crate::loader::START_SYSTEM) {
                            Ok(exit) => {
                                log::info!("the root program ended: {exit:?}");
                                if args.exit_qemu {
                                    // `just run`: the command's status is in init's END line;
                                    // the verdict here is that the system ran and shut down.
                                    crate::arch::qemu_exit(if exit == crate::arch::x86_64::syscall::UserExit::Exited(0) {
                                        0x10
                                    } else {
                                        0x11
                                    });
                                }
                            }
                            Err(e) => log::error!("the root program was refused: {e:?}"),
                        }
                    }
                    Err(why) => log::warn!("{why}"),
                }
                log::info!("boot complete; idling (in QEMU, Ctrl-A X quits)");
                crate::sched::exit_current(crate::arch::x86_64::syscall::UserExit::Exited(0))
            }
            TestSelection::Panic => ktest::deliberate_panic_on_last_cpu(),
            TestSelection::StackOverflow => ktest::overflow_stack_on_last_cpu(),
            TestSelection::Bench => {
                let ok = ktest::run_root_benchmarks(&args);
                if args.exit_qemu {
                    crate::arch::qemu_exit(if ok { 0x10 } else { 0x11 });
                }
                crate::sched::exit_current(crate::arch::x86_64::syscall::UserExit::Exited(0))
            }
            _ => {
                let failed = ktest::run(&args);
                if args.exit_qemu {
                    crate::arch::qemu_exit(if failed == 0 { 0x10 } else { 0x11 });
                }
                crate::sched::exit_current(crate::arch::x86_64::syscall::UserExit::Exited(0))
            }
        }
    }
}
