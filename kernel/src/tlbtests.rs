//! In-guest tests that a stale translation cannot survive in any CPU's TLB,
//! with tagged address spaces (PCID: Bochs) and without (QEMU's TCG).
//!
//! Each case reads a user page of a test address space on every CPU by
//! loading the space's CR3 token there exactly as a switch does
//! (`pcid::read_user_word_in`: with PCID a no-flush load, so whatever the
//! CPU kept for the tag is used).
//!
//! Whether the cases can fail depends on the CPU, and `tlb_tag_kept` finds
//! out: it remaps a page every CPU has cached and skips the shootdown on
//! purpose. A real TLB with PCID keeps the old page across the no-flush
//! load; then the two other cases each first run their scenario with the
//! kernel's invalidation for it switched off (test-only flags in `tlb` and
//! `pcid`), where they must see the stale page, and then for real. Bochs
//! 2.7 accepts PCID but ignores the no-flush bit (it flushes on every CR3
//! load), so there a missing invalidation for an unloaded tag cannot show:
//! its scenario says so (`tlbtags=flushed`), `tlb_tag_kept` checks that
//! this is still what Bochs does, and the demonstrations are left out.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::x86_64_exports::*;
use crate::mm::frame::{self, FRAME_SIZE};

type CaseResult = Result<(), String>;

/// A named in-kernel test case.
type Case = (&'static str, fn() -> CaseResult);

pub const CASES: &[Case] = &[("tlb_tag_kept", tlb_tag_kept), ("tlb_tagged_revoke", tlb_tagged_revoke), ("tlb_tag_reuse", tlb_tag_reuse)];

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The user address every case maps its test page at.
const VA: u64 = 0x5000_0000;
const OLD: u64 = 0x01d0_01d0_01d0_01d0;
const NEW: u64 = 0x0e30_0e30_0e30_0e30;

static READ_TOKEN: AtomicU64 = AtomicU64::new(0);
static READ_VALUE: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];
static READ_OK: [AtomicBool; percpu::MAX_CPUS] = [const { AtomicBool::new(false) }; percpu::MAX_CPUS];

fn read_here(slot: usize) {
    let got = pcid::read_user_word_in(READ_TOKEN.load(Ordering::Relaxed), VA);
    READ_OK[slot].store(got.is_some(), Ordering::Relaxed);
    READ_VALUE[slot].store(got.unwrap_or(0), Ordering::Relaxed);
}

/// What CPU `cpu` reads at VA in the address space `token` (None: it faulted).
fn read_on(cpu: usize, token: u64) -> Option<u64> {
    READ_TOKEN.store(token, Ordering::Relaxed);
    smp::run_on(cpu, read_here, cpu);
    READ_OK[cpu].load(Ordering::Relaxed).then(|| READ_VALUE[cpu].load(Ordering::Relaxed))
}

fn cpus() -> core::ops::Range<usize> {
    0..smp::online_count()
}

/// A frame holding `value` in its first word.
fn page_with(value: u64) -> Result<u64, String> {
    let pa = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
    // SAFETY: a fresh frame owned by the test; the physmap maps it.
    unsafe { core::ptr::write_volatile(paging::phys_to_virt(pa) as *mut u64, value) };
    Ok(pa)
}

/// An address space with `pa` mapped read-only at VA.
fn space_with(pa: u64) -> Result<u64, String> {
    let root = paging::new_user_root().map_err(|e| format!("address space: {e:?}"))?;
    paging::map_user_page(root, VA, pa, false, false).map_err(|e| format!("{e:?}"))?;
    Ok(root)
}

/// Every CPU reads VA in `root`, which must give `want`; `what` says when.
fn expect_everywhere(root: u64, want: Option<u64>, what: &str) -> CaseResult {
    for cpu in cpus() {
        let got = read_on(cpu, root);
        check!(got == want, "{what}: cpu{cpu} read {got:x?}, wanted {want:x?} (tagged spaces: {})", pcid::enabled());
    }
    Ok(())
}

/// Whether the CPU keeps a tag's translations across a no-flush CR3 load
/// (a real TLB with PCID), as `tlb_tag_kept` observed it.
static TAGS_KEPT: AtomicBool = AtomicBool::new(false);
/// What `tlb_tag_kept` expects with PCID (`tlbtags=` on the command line).
static EXPECT_TAGS_KEPT: AtomicBool = AtomicBool::new(true);

pub fn expect_tags_kept(kept: bool) {
    EXPECT_TAGS_KEPT.store(kept, Ordering::Relaxed);
}

/// Whether a missing invalidation can show on this CPU: with PCID on a
/// TLB that keeps tags (probed by `tlb_tag_kept` when it ran before).
fn demonstrable() -> bool {
    let able = pcid::enabled() && TAGS_KEPT.load(Ordering::Relaxed);
    if pcid::enabled() && !able {
        log::info!("tlbtests: no demonstration: this CPU does not keep a tag's translations across a no-flush CR3 load");
    }
    able
}

/// Sets a test-only "skip this invalidation" flag while it lives.
struct Skipping(&'static AtomicBool);

impl Skipping {
    fn new(flag: &'static AtomicBool) -> Skipping {
        flag.store(true, Ordering::Relaxed);
        Skipping(flag)
    }
}

impl Drop for Skipping {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
        // Whatever the skipped invalidation left behind goes now, on every
        // CPU, so no later test or space meets it.
        tlb::flush_user_everywhere();
    }
}

/// Does the CPU keep a tag's translations across a no-flush CR3 load? Remap
/// a page that every CPU has cached and deliberately skip the shootdown.
/// Without PCID every load flushes, so each CPU must see the new page. With
/// PCID a real TLB keeps the old one on every CPU; Bochs 2.7 flushes anyway
/// (`tlbtags=flushed`): each CPU must behave as the command line says. After
/// the shootdown all see the new page.
fn tlb_tag_kept() -> CaseResult {
    let (old, new) = (page_with(OLD)?, page_with(NEW)?);
    let root = space_with(old)?;
    expect_everywhere(root, Some(OLD), "first read")?;
    paging::set_user_page(root, VA, new, false, false).map_err(|e| format!("{e:?}"))?;
    // No tlb::shootdown here, on purpose.
    let kept = pcid::enabled() && EXPECT_TAGS_KEPT.load(Ordering::Relaxed);
    let want = if kept { OLD } else { NEW };
    let what = match (pcid::enabled(), kept) {
        (false, _) => "remapped without a shootdown (untagged: the CR3 load flushed)",
        (true, true) => "remapped without a shootdown (a tagged TLB keeps the old page)",
        (true, false) => "remapped without a shootdown (tlbtags=flushed: this CPU ignores the no-flush bit)",
    };
    expect_everywhere(root, Some(want), what)?;
    TAGS_KEPT.store(kept, Ordering::Relaxed);
    tlb::shootdown(VA, 1);
    expect_everywhere(root, Some(NEW), "after the shootdown")?;
    paging::destroy_user_root_with(root, false);
    frame::free(old).map_err(|e| format!("{e:?}"))?;
    frame::free(new).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Revocation reaches tags that are not loaded: a CPU reads the page, goes
/// back to its own address space, another CPU revokes the page as
/// `object::memory` does (clear the entries, then shoot down), and when
/// the first CPU loads the space again its read must fault; after a new
/// page is mapped it must see that one. Run once with the shootdown's
/// other-tag flush skipped, where (with PCID) the stale page must show.
fn tlb_tagged_revoke() -> CaseResult {
    let (old, new) = (page_with(OLD)?, page_with(NEW)?);
    let me = percpu::this_cpu_index();
    // The reader is another CPU when there is one (the revoker is this one).
    let reader = cpus().find(|&c| c != me).unwrap_or(me);
    if demonstrable() {
        let _skip = Skipping::new(&tlb::SKIP_OTHER_TAGS);
        let root = space_with(old)?;
        check!(read_on(reader, root) == Some(OLD), "demonstration: first read");
        paging::unmap_user_range(root, VA, FRAME_SIZE);
        tlb::shootdown(VA, 1);
        let got = read_on(reader, root);
        check!(got == Some(OLD), "demonstration: with other tags left alone cpu{reader} read {got:x?}, wanted the stale page");
        paging::destroy_user_root_with(root, false);
    }
    for reader in cpus() {
        let root = space_with(old)?;
        check!(read_on(reader, root) == Some(OLD), "cpu{reader}: first read");
        paging::unmap_user_range(root, VA, FRAME_SIZE);
        tlb::shootdown(VA, 1);
        let got = read_on(reader, root);
        check!(got.is_none(), "cpu{reader} read {got:x?} from a page cpu{me} revoked (wanted a fault)");
        expect_everywhere(root, None, "revoked")?;
        // A new page where the old one was: present again, no shootdown
        // needed (nothing caches a missing translation).
        paging::set_user_page(root, VA, new, false, false).map_err(|e| format!("{e:?}"))?;
        check!(read_on(reader, root) == Some(NEW), "cpu{reader}: the new page after revocation");
        // And replacing a present page: the shootdown must reach the tag.
        paging::set_user_page(root, VA, old, false, false).map_err(|e| format!("{e:?}"))?;
        tlb::shootdown(VA, 1);
        expect_everywhere(root, Some(OLD), "replaced with a shootdown")?;
        paging::destroy_user_root_with(root, false);
    }
    frame::free(old).map_err(|e| format!("{e:?}"))?;
    frame::free(new).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// A dead space's tag is flushed on every CPU before another space gets
/// it: every CPU caches the page under a space's tag, the space dies (no
/// shootdown), address spaces are created until one gets the same tag
/// (without PCID: the first one), and every CPU must see that space's own
/// page. Run once with the recycling flush skipped, where (with PCID) the
/// dead space's page must show through.
fn tlb_tag_reuse() -> CaseResult {
    let (old, new) = (page_with(OLD)?, page_with(NEW)?);
    if demonstrable() {
        let _skip = Skipping::new(&pcid::SKIP_RECYCLE_FLUSH);
        let (reused, others) = reuse_tag_of_dead_space(old, new)?;
        let got: Vec<Option<u64>> = cpus().map(|cpu| read_on(cpu, reused)).collect();
        release(reused, others);
        check!(
            got.iter().all(|&g| g == Some(OLD)),
            "demonstration: with the recycling flush skipped the CPUs read {got:x?}, wanted the dead space's page everywhere"
        );
    }
    let recycles = pcid::recycles();
    let (reused, others) = reuse_tag_of_dead_space(old, new)?;
    let seen = expect_everywhere(reused, Some(NEW), "the new space with the dead one's tag");
    release(reused, others);
    seen?;
    if pcid::enabled() {
        check!(pcid::recycles() > recycles, "the tag came back without a recycling round");
    }
    frame::free(old).map_err(|e| format!("{e:?}"))?;
    frame::free(new).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Caches `old` at VA under a space's tag on every CPU, destroys the space
/// and creates spaces until one has its tag; maps `new` there. Returns that
/// space and the others made on the way.
fn reuse_tag_of_dead_space(old: u64, new: u64) -> Result<(u64, Vec<u64>), String> {
    let dead = space_with(old)?;
    let tag = paging::root_tag(dead);
    expect_everywhere(dead, Some(OLD), "the doomed space")?;
    paging::destroy_user_root_with(dead, false);
    let mut others = Vec::new();
    // 4095 tags: a full turn of the allocator brings the tag back.
    for _ in 0..=4096 {
        let root = paging::new_user_root().map_err(|e| format!("address space {}: {e:?}", others.len()))?;
        if paging::root_tag(root) == tag {
            paging::map_user_page(root, VA, new, false, false).map_err(|e| format!("{e:?}"))?;
            return Ok((root, others));
        }
        others.push(root);
    }
    release_all(others);
    Err(format!("tag {tag} did not come back in 4097 address spaces"))
}

fn release(root: u64, others: Vec<u64>) {
    paging::destroy_user_root_with(root, false);
    release_all(others);
}

fn release_all(roots: Vec<u64>) {
    for r in roots {
        paging::destroy_user_root(r);
    }
}
