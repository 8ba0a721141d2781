//! TLB shootdown: after changing a kernel mapping, invalidate it on every
//! CPU and wait until all of them have done so.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::idt::VECTOR_IPI_TLB;
use super::{apic, cpu, percpu, smp};

/// Past this many pages a full flush is cheaper than single invalidations.
const FULL_FLUSH_THRESHOLD: u64 = 32;

static SHOOTDOWN_LOCK: spin::Mutex<()> = spin::Mutex::new(());
static REQUEST_START: AtomicU64 = AtomicU64::new(0);
static REQUEST_PAGES: AtomicU64 = AtomicU64::new(0);
static PENDING_ACKS: AtomicU32 = AtomicU32::new(0);

fn flush_local(start: u64, pages: u64) {
    if pages > FULL_FLUSH_THRESHOLD {
        // SAFETY: reloading CR3 with its current value flushes non-global entries.
        unsafe { cpu::write_cr3(cpu::read_cr3()) };
        if cpu::read_cr4() & (1 << 7) != 0 {
            // Toggling CR4.PGE flushes global entries too.
            // SAFETY: PGE was set, so clearing and restoring it is supported.
            unsafe {
                let cr4 = cpu::read_cr4();
                cpu::write_cr4(cr4 & !(1 << 7));
                cpu::write_cr4(cr4);
            }
        }
    } else {
        for i in 0..pages {
            cpu::invlpg(start + i * 4096);
        }
    }
}

/// Invalidates `[start, start + pages * 4 KiB)` on every online CPU and
/// returns once all have acknowledged. Must be called with interrupts
/// enabled, so two CPUs shooting down at once cannot deadlock.
pub fn shootdown(start: u64, pages: u64) {
    flush_local(start, pages);
    let online = smp::online_count();
    if online <= 1 {
        return;
    }
    debug_assert!(cpu::interrupts_enabled(), "shootdown with interrupts masked could deadlock");
    let _guard = SHOOTDOWN_LOCK.lock();
    let me = percpu::this_cpu_index();
    REQUEST_START.store(start, Ordering::Relaxed);
    REQUEST_PAGES.store(pages, Ordering::Relaxed);
    PENDING_ACKS.store(online as u32 - 1, Ordering::Release);
    for index in 0..smp::cpu_count() {
        let target = percpu::cpu(index);
        if index != me && target.online.load(Ordering::Acquire) {
            apic::send_ipi(target.apic_id.load(Ordering::Relaxed), VECTOR_IPI_TLB);
        }
    }
    while PENDING_ACKS.load(Ordering::Acquire) != 0 {
        cpu::pause();
    }
}

pub fn on_shootdown_ipi() {
    flush_local(REQUEST_START.load(Ordering::Relaxed), REQUEST_PAGES.load(Ordering::Relaxed));
    percpu::this_cpu().tlb_shootdowns_handled.fetch_add(1, Ordering::Relaxed);
    PENDING_ACKS.fetch_sub(1, Ordering::AcqRel);
}
