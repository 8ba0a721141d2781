//! TLB shootdown: after changing a mapping, invalidate it on every CPU and
//! wait until all of them have done so.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::idt::VECTOR_IPI_TLB;
use super::{apic, cpu, paging, pcid, percpu, smp};

/// Past this many pages a full flush is cheaper than single invalidations.
const FULL_FLUSH_THRESHOLD: u64 = 32;

static SHOOTDOWN_LOCK: spin::Mutex<()> = spin::Mutex::new(());
static REQUEST_START: AtomicU64 = AtomicU64::new(0);
static REQUEST_PAGES: AtomicU64 = AtomicU64::new(0);
/// Per CPU: a request it has not carried out yet. A flag per CPU rather
/// than a count of acknowledgements, so a CPU may carry a request out by
/// polling (while it waits with interrupts off) and the IPI that arrives
/// later finds nothing left to do.
static PENDING: [AtomicBool; percpu::MAX_CPUS] = [const { AtomicBool::new(false) }; percpu::MAX_CPUS];

fn flush_local(start: u64, pages: u64) {
    if pcid::enabled() {
        return flush_local_tagged(start, pages);
    }
    if pages > FULL_FLUSH_THRESHOLD {
        pcid::count_full_flush();
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

/// With PCID the range may be cached under any tag, not only the one this
/// CPU runs on now (see `pcid`: no tag may keep a stale entry). A kernel
/// range is global, so INVLPG reaches it in every tag; a user range also
/// leaves every tag's non-global entries behind.
fn flush_local_tagged(start: u64, pages: u64) {
    if pages == 0 {
        return;
    }
    let kernel_range = start >= paging::USER_TOP;
    if kernel_range && pages <= FULL_FLUSH_THRESHOLD {
        for i in 0..pages {
            cpu::invlpg(start + i * 4096);
        }
    } else if !SKIP_OTHER_TAGS.load(Ordering::Relaxed) {
        pcid::flush_all_tags(kernel_range);
    } else {
        // The `tlb_tagged_revoke` demonstration: the current tag only.
        for i in 0..pages.min(FULL_FLUSH_THRESHOLD) {
            cpu::invlpg(start + i * 4096);
        }
    }
}

/// For the `tlb_tagged_revoke` test's demonstration only: a user-range
/// shootdown invalidates the tag each CPU runs on and leaves the others'
/// entries, the mistake a tagged kernel must not make.
pub static SKIP_OTHER_TAGS: AtomicBool = AtomicBool::new(false);

/// Every CPU drops every tag's non-global entries (recycling dead spaces'
/// tags); returns once all have.
pub fn flush_user_everywhere() {
    shootdown(0, paging::USER_TOP / 4096);
}

/// Carries out the request addressed to this CPU, if there is one.
fn serve_pending() {
    if PENDING[percpu::this_cpu_index()].swap(false, Ordering::AcqRel) {
        flush_local(REQUEST_START.load(Ordering::Acquire), REQUEST_PAGES.load(Ordering::Acquire));
        percpu::this_cpu().tlb_shootdowns_handled.fetch_add(1, Ordering::Relaxed);
    }
}

/// Invalidates `[start, start + pages * 4 KiB)` on every online CPU and
/// returns once all have done so. Works with interrupts on or off: while it
/// waits (for another shootdown to finish, or for the other CPUs), it
/// serves requests addressed to its own CPU, so two CPUs shooting down at
/// once cannot wait for each other.
/// Shootdowns started so far (each flushes the range on every online CPU).
static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);

pub fn shootdowns() -> u64 {
    SHOOTDOWNS.load(Ordering::Relaxed)
}

pub fn shootdown(start: u64, pages: u64) {
    SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
    flush_local(start, pages);
    let online = smp::online_count();
    if online <= 1 {
        return;
    }
    let _guard = loop {
        if let Some(guard) = SHOOTDOWN_LOCK.try_lock() {
            break guard;
        }
        serve_pending();
        cpu::pause();
    };
    let me = percpu::this_cpu_index();
    REQUEST_START.store(start, Ordering::Release);
    REQUEST_PAGES.store(pages, Ordering::Release);
    for index in 0..smp::cpu_count() {
        let target = percpu::cpu(index);
        if index != me && target.online.load(Ordering::Acquire) {
            PENDING[index].store(true, Ordering::Release);
            apic::send_ipi(target.apic_id.load(Ordering::Relaxed), VECTOR_IPI_TLB);
        }
    }
    for flag in PENDING.iter().take(smp::cpu_count()) {
        while flag.load(Ordering::Acquire) {
            cpu::pause();
        }
    }
}

pub fn on_shootdown_ipi() {
    serve_pending();
}
