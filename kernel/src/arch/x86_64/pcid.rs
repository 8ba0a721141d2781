//! Process-context identifiers: tagged address-space switches.
//!
//! With CR4.PCIDE set, every TLB entry and paging-structure-cache entry
//! belongs to the 12-bit PCID in CR3's low bits when it was made, and a CR3
//! load with bit 63 set invalidates nothing (Intel SDM vol. 3A, 4.10.1 and
//! 4.10.4.1). Each user address space gets its own tag for its whole life,
//! the kernel's own table has tag 0, and the value a space is loaded with
//! (its *CR3 token*: table address | tag | bit 63) is what threads keep, so
//! the IPC fast path loads it exactly as it loads an untagged root today.
//!
//! The rule that makes a no-flush load safe everywhere: **no CPU ever holds
//! a stale entry for any tag**. Translations are never left behind lazily:
//! * an invalidation (`tlb::shootdown`) names a range but not a space, so
//!   on every CPU it drops the range from the current tag (INVLPG, which also
//!   drops global entries for the range whatever the tag) and, for a user
//!   range, every other tag's non-global entries too (INVPCID all-context,
//!   or toggling CR4.PGE where INVPCID is missing);
//! * kernel mappings are global (CR4.PGE), so they are shared by every tag
//!   and an INVLPG of a kernel page reaches all of them;
//! * a dead space's tag is *retired*, not freed: its entries may linger in
//!   any CPU's TLB, so retired tags come back only after an all-context
//!   flush on every CPU (one IPI round per 4094 space creations at most).
//!
//! Without PCID (or with `pcid=off`) tokens are plain table addresses and
//! nothing here changes what the kernel does.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{cpu, percpu};

/// CR3 bit 63 with CR4.PCIDE set: keep the TLB's entries for the tag.
pub const NO_FLUSH: u64 = 1 << 63;
/// CR3 bits 11:0 with CR4.PCIDE set.
pub const TAG_MASK: u64 = 0xfff;
/// Tags user spaces get: 1..=4095 (0 is the kernel's own table).
const TAGS: usize = 4096;
const CR4_PGE: u64 = 1 << 7;
const CR4_PCIDE: u64 = 1 << 17;

static PCID_ON: AtomicBool = AtomicBool::new(false);
static INVPCID_ON: AtomicBool = AtomicBool::new(false);

/// Decides, once on the boot CPU before any CPU sets CR4, whether the
/// kernel tags its address spaces: the CPU has PCID and global pages (the
/// kernel half must be shared by every tag) and the command line did not
/// say `pcid=off`.
pub fn decide(features: &cpu::Features, wanted: bool) {
    let on = wanted && features.pcid && features.global_pages;
    PCID_ON.store(on, Ordering::Relaxed);
    INVPCID_ON.store(on && features.invpcid, Ordering::Relaxed);
}

/// Whether address spaces are tagged (CR4.PCIDE on every CPU).
#[inline(always)]
pub fn enabled() -> bool {
    PCID_ON.load(Ordering::Relaxed)
}

/// Whether invalidations use INVPCID (present, and PCID in use).
pub fn invpcid_enabled() -> bool {
    INVPCID_ON.load(Ordering::Relaxed)
}

/// CR4 bits this CPU sets for PCID: PCIDE if the kernel tags its spaces.
/// Set while CR3 holds the kernel's table with tag 0, as the SDM requires
/// (MOV to CR4 faults if it sets PCIDE while CR3[11:0] is not 0).
pub fn cr4_bits() -> u64 {
    if enabled() {
        CR4_PCIDE
    } else {
        0
    }
}

/// The CR3 token of the table at `root` with `tag` (tag 0 and no bit 63
/// without PCID).
pub fn token(root: u64, tag: u16) -> u64 {
    if enabled() {
        root | tag as u64 | NO_FLUSH
    } else {
        root
    }
}

/// The tag in a token.
pub fn tag_of(token: u64) -> u16 {
    (token & TAG_MASK) as u16
}

/// The token of the address space this CPU runs on now (CR3 reads bit 63 as 0).
pub fn current_token() -> u64 {
    let cr3 = cpu::read_cr3();
    if enabled() {
        cr3 | NO_FLUSH
    } else {
        cr3
    }
}

/// Tags in use (bit set) and retired ones (dead spaces' tags waiting for
/// the all-context flush that lets them be reused).
struct TagPool {
    used: [u64; TAGS / 64],
    retired: [u64; TAGS / 64],
    /// Where the search for a free tag starts (round robin, so a retired
    /// tag is reused as late as possible).
    next: usize,
}

static POOL: spin::Mutex<TagPool> = spin::Mutex::new(TagPool { used: [0; TAGS / 64], retired: [0; TAGS / 64], next: 1 });

/// All-context flush rounds made to recycle retired tags.
static RECYCLES: AtomicU64 = AtomicU64::new(0);

impl TagPool {
    fn take_free(&mut self) -> Option<u16> {
        for k in 0..TAGS {
            let tag = (self.next + k) % TAGS;
            let (word, bit) = (tag / 64, 1u64 << (tag % 64));
            if tag != 0 && (self.used[word] | self.retired[word]) & bit == 0 {
                self.used[word] |= bit;
                self.next = (tag + 1) % TAGS;
                return Some(tag as u16);
            }
        }
        None
    }

    fn any_retired(&self) -> bool {
        self.retired.iter().any(|&w| w != 0)
    }
}

/// A tag for a new address space (0 without PCID), or None when all 4095
/// belong to live spaces. When only retired tags are left, every CPU
/// flushes every tag's entries first (an IPI round), then they are free.
/// Takes no lock across the round, so it may run with interrupts off as a
/// system call does.
pub fn allocate_tag() -> Option<u16> {
    if !enabled() {
        return Some(0);
    }
    loop {
        let (tag, retired) = cpu::without_interrupts(|| {
            let mut pool = POOL.lock();
            match pool.take_free() {
                Some(tag) => (Some(tag), [0; TAGS / 64]),
                // Take the retired set out: these tags are reused only after
                // the flush below has reached every CPU.
                None if pool.any_retired() => (None, core::mem::replace(&mut pool.retired, [0; TAGS / 64])),
                None => (None, [0; TAGS / 64]),
            }
        });
        if tag.is_some() {
            return tag;
        }
        if retired.iter().all(|&w| w == 0) {
            return None;
        }
        if !SKIP_RECYCLE_FLUSH.load(Ordering::Relaxed) {
            super::tlb::flush_user_everywhere();
        }
        RECYCLES.fetch_add(1, Ordering::Relaxed);
        cpu::without_interrupts(|| {
            let mut pool = POOL.lock();
            for (used, gone) in pool.used.iter_mut().zip(retired) {
                *used &= !gone;
            }
        });
    }
}

/// A dead space's tag: no CPU runs on the space any more, but its entries
/// may still sit in any CPU's TLB, so the tag waits for a flush round.
pub fn retire_tag(tag: u16) {
    if !enabled() || tag == 0 {
        return;
    }
    let (word, bit) = (tag as usize / 64, 1u64 << (tag % 64));
    cpu::without_interrupts(|| POOL.lock().retired[word] |= bit);
}

/// Flush rounds made so far to recycle retired tags.
pub fn recycles() -> u64 {
    RECYCLES.load(Ordering::Relaxed)
}

/// For the `tlb_tag_reuse` test's demonstration only: recycle retired tags
/// without the flush round (the invalidation that makes reuse safe).
pub static SKIP_RECYCLE_FLUSH: AtomicBool = AtomicBool::new(false);

/// Flushes that dropped translations wholesale on each CPU: CR3 loads
/// without bit 63 (every address-space switch without PCID is counted
/// by the switch paths instead), CR4.PGE toggles and all-context INVPCIDs.
static FULL_FLUSHES: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

pub fn count_full_flush() {
    let c = &FULL_FLUSHES[percpu::this_cpu_index()];
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

pub fn full_flushes() -> u64 {
    FULL_FLUSHES.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// INVPCID type 3: every tag's non-global entries.
const INVPCID_ALL_NON_GLOBAL: u64 = 3;
/// INVPCID type 2: every tag's entries, global ones included.
const INVPCID_ALL: u64 = 2;

fn invpcid(kind: u64, tag: u16, address: u64) {
    let descriptor: [u64; 2] = [tag as u64, address];
    // SAFETY: only called with INVPCID present (CPUID) and CR4.PCIDE set on
    // this CPU (`invpcid_enabled`); the descriptor is a valid 16-byte
    // operand with bits 63:12 of its first word zero, and an invalidation
    // cannot break memory safety (at worst it costs page walks).
    unsafe { core::arch::asm!("invpcid {}, [{}]", in(reg) kind, in(reg) descriptor.as_ptr(), options(nostack, preserves_flags)) };
}

/// Drops every tag's entries on this CPU (`with_global`: the kernel's
/// global ones too), the current tag's included.
pub fn flush_all_tags(with_global: bool) {
    count_full_flush();
    if invpcid_enabled() {
        invpcid(if with_global { INVPCID_ALL } else { INVPCID_ALL_NON_GLOBAL }, 0, 0);
    } else {
        // Changing CR4.PGE drops every entry of every PCID, global ones
        // included (SDM 4.10.4.1).
        let cr4 = cpu::read_cr4();
        // SAFETY: PGE is set (PCID is used only with global pages), so
        // clearing it for one instruction and restoring it is supported.
        unsafe {
            cpu::write_cr4(cr4 & !CR4_PGE);
            cpu::write_cr4(cr4);
        }
    }
}

/// Test support (the `tlb_*` cases): reads the u64 at user address `va` of
/// the address space `token` on this CPU, loading it exactly as a switch to
/// it does (with PCID: no flush, so whatever the TLB holds for its tag is
/// used), then loads back the address space this CPU ran on. None if the
/// read faulted (no translation).
pub fn read_user_word_in(token: u64, va: u64) -> Option<u64> {
    if va.checked_add(8).is_none_or(|end| end > super::paging::USER_TOP) {
        return None;
    }
    cpu::without_interrupts(|| {
        let previous = current_token();
        let mut word = 0u64;
        // SAFETY: the caller passes a live address space's token; every
        // address space maps the kernel half (this code, its stack) the
        // same way, so execution goes on unchanged after the load.
        unsafe { cpu::write_cr3(token) };
        let copied = super::syscall::with_user_access(|| {
            // SAFETY: the kernel side is this 8-byte local; the user side
            // lies below USER_TOP (checked above), so a fault there is a
            // missing user translation, which the copy recovers from.
            unsafe { super::usercopy::copy_recovering((&mut word as *mut u64).cast::<u8>(), va as *const u8, 8) }
        });
        // SAFETY: `previous` is the address space this CPU ran on a moment
        // ago (the current thread's, still live: interrupts are off).
        unsafe { cpu::write_cr3(previous) };
        copied.then_some(word)
    })
}
