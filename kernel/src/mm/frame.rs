//! Physical frame allocator.
//!
//! A bitmap over all physical frames (bit set = free) holds the truth; each
//! CPU keeps a small cache of single frames in front of it so the common
//! allocate/free pair takes no shared lock. Every CPU counts what it
//! allocated and freed, and `log_stats` prints those counts per CPU.
//! Running out of memory is an `Err(FrameError::OutOfMemory)`, never a panic.

pub const FRAME_SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    OutOfMemory,
    /// The frame was not allocated (double free or a stray address).
    NotAllocated,
    /// The address is not frame-aligned or beyond the managed memory.
    BadAddress,
}

/// The allocator's source of truth: one bit per frame, set when free.
pub struct FrameBitmap<'a> {
    words: &'a mut [u64],
    frames: u64,
    free: u64,
    /// Word index where the next single-frame search starts.
    hint: usize,
}

impl<'a> FrameBitmap<'a> {
    /// Creates a bitmap for `frames` frames, all of them in use.
    pub fn new(words: &'a mut [u64], frames: u64) -> Self {
        assert!(words.len() as u64 * 64 >= frames, "bitmap storage too small");
        words.fill(0);
        FrameBitmap { words, frames, free: 0, hint: 0 }
    }

    pub fn words_needed(frames: u64) -> usize {
        frames.div_ceil(64) as usize
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn free_frames(&self) -> u64 {
        self.free
    }

    pub fn is_free(&self, frame: u64) -> bool {
        frame < self.frames && self.words[(frame / 64) as usize] & (1 << (frame % 64)) != 0
    }

    /// Marks `[first, first + count)` free; frames already free stay free.
    pub fn mark_free(&mut self, first: u64, count: u64) {
        for f in first..(first + count).min(self.frames) {
            let (w, b) = ((f / 64) as usize, f % 64);
            if self.words[w] & (1 << b) == 0 {
                self.words[w] |= 1 << b;
                self.free += 1;
            }
        }
    }

    /// Marks `[first, first + count)` used; frames already used stay used.
    pub fn mark_used(&mut self, first: u64, count: u64) {
        for f in first..(first + count).min(self.frames) {
            let (w, b) = ((f / 64) as usize, f % 64);
            if self.words[w] & (1 << b) != 0 {
                self.words[w] &= !(1 << b);
                self.free -= 1;
            }
        }
    }

    /// Takes one free frame, lowest-address-first from the search hint.
    pub fn alloc_one(&mut self) -> Option<u64> {
        let n = self.words.len();
        for i in 0..n {
            let w = (self.hint + i) % n;
            let word = self.words[w];
            if word != 0 {
                let bit = word.trailing_zeros() as u64;
                let frame = w as u64 * 64 + bit;
                if frame >= self.frames {
                    continue;
                }
                self.words[w] &= !(1 << bit);
                self.free -= 1;
                self.hint = w;
                return Some(frame);
            }
        }
        None
    }

    /// Takes `count` contiguous free frames whose first frame is a multiple
    /// of `align` (frames, a power of two) and which end at or below `limit`.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64, limit: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let limit = limit.min(self.frames);
        let mut start = 0;
        while start + count <= limit {
            match (start..start + count).rev().find(|&f| !self.is_free(f)) {
                None => {
                    self.mark_used(start, count);
                    return Some(start);
                }
                Some(used) => start = (used + 1).next_multiple_of(align),
            }
        }
        None
    }

    /// Returns `count` frames starting at `first`; any of them already free is an error
    /// and then nothing is changed.
    pub fn free_range(&mut self, first: u64, count: u64) -> Result<(), FrameError> {
        if first + count > self.frames {
            return Err(FrameError::BadAddress);
        }
        if (first..first + count).any(|f| self.is_free(f)) {
            return Err(FrameError::NotAllocated);
        }
        self.mark_free(first, count);
        if ((first / 64) as usize) < self.hint {
            self.hint = (first / 64) as usize;
        }
        Ok(())
    }
}

/// A CPU's stack of single free frames in front of the bitmap.
pub struct FrameCache {
    frames: [u64; FrameCache::CAPACITY],
    len: usize,
}

impl Default for FrameCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCache {
    pub const CAPACITY: usize = 64;
    /// How many frames a refill takes from, or a drain gives back to, the bitmap.
    pub const BATCH: usize = 32;

    pub const fn new() -> Self {
        FrameCache { frames: [0; Self::CAPACITY], len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pop(&mut self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.frames[self.len])
    }

    /// Pushes a frame; returns it back if the cache is full.
    pub fn push(&mut self, frame: u64) -> Result<(), u64> {
        if self.len == Self::CAPACITY {
            return Err(frame);
        }
        self.frames[self.len] = frame;
        self.len += 1;
        Ok(())
    }

    pub fn contains(&self, frame: u64) -> bool {
        self.frames[..self.len].contains(&frame)
    }

    /// Refills up to `BATCH` frames from the bitmap; returns how many it got.
    pub fn refill(&mut self, bitmap: &mut FrameBitmap<'_>) -> usize {
        let mut got = 0;
        while got < Self::BATCH && self.len < Self::CAPACITY {
            match bitmap.alloc_one() {
                Some(f) => {
                    self.frames[self.len] = f;
                    self.len += 1;
                    got += 1;
                }
                None => break,
            }
        }
        got
    }

    /// Gives `BATCH` frames (or all, with `everything`) back to the bitmap.
    pub fn drain(&mut self, bitmap: &mut FrameBitmap<'_>, everything: bool) {
        let keep = if everything { 0 } else { self.len.saturating_sub(Self::BATCH) };
        while self.len > keep {
            self.len -= 1;
            // Cached frames are allocated in the bitmap, so this cannot fail.
            let _ = bitmap.free_range(self.frames[self.len], 1);
        }
    }
}

#[cfg(target_os = "none")]
pub use global::*;

#[cfg(target_os = "none")]
mod global {
    use super::*;
    use crate::arch::cpu::without_interrupts;
    use crate::arch::paging::phys_to_virt;
    use crate::arch::percpu::{this_cpu_index, MAX_CPUS};
    use crate::mm::rangeset::Range;
    use core::sync::atomic::{AtomicU64, Ordering};

    static BITMAP: spin::Mutex<Option<FrameBitmap<'static>>> = spin::Mutex::new(None);
    static CACHES: [spin::Mutex<FrameCache>; MAX_CPUS] = [const { spin::Mutex::new(FrameCache::new()) }; MAX_CPUS];
    static ALLOCATED_BY_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static FREED_BY_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static MANAGED_FRAMES: AtomicU64 = AtomicU64::new(0);

    /// Sets the allocator up over `usable` (sorted, frame-aligned ranges).
    /// The bitmap itself is carved from the first usable range below 4 GiB
    /// that holds it (the early physmap covers only the low 4 GiB).
    pub fn init(usable: &[Range]) -> Result<(), FrameError> {
        let top = usable.iter().map(|r| r.end).max().ok_or(FrameError::OutOfMemory)?;
        let frames = top / FRAME_SIZE;
        let words = FrameBitmap::words_needed(frames);
        let bytes = (words as u64 * 8).next_multiple_of(FRAME_SIZE);
        let home = usable.iter().find(|r| r.len() >= bytes && r.start + bytes <= 1 << 32).ok_or(FrameError::OutOfMemory)?;
        let storage_pa = home.start;
        // SAFETY: `storage_pa..+bytes` is usable RAM that nothing else owns
        // (it is marked used below), reached through the boot physmap.
        let storage = unsafe { core::slice::from_raw_parts_mut(phys_to_virt(storage_pa) as *mut u64, words) };
        let mut bitmap = FrameBitmap::new(storage, frames);
        for r in usable {
            bitmap.mark_free(r.start / FRAME_SIZE, r.len() / FRAME_SIZE);
        }
        bitmap.mark_used(storage_pa / FRAME_SIZE, bytes / FRAME_SIZE);
        MANAGED_FRAMES.store(bitmap.free_frames(), Ordering::Relaxed);
        *BITMAP.lock() = Some(bitmap);
        Ok(())
    }

    fn with_bitmap<R>(f: impl FnOnce(&mut FrameBitmap<'static>) -> R) -> Option<R> {
        BITMAP.lock().as_mut().map(f)
    }

    /// Allocates one frame (not zeroed) and returns its physical address.
    /// An allocation point of the fault injector (`mm::inject`).
    pub fn alloc() -> Result<u64, FrameError> {
        if crate::mm::inject::INJECTOR.should_fail() {
            return Err(FrameError::OutOfMemory);
        }
        alloc_uninjected()
    }

    /// `alloc` that the fault injector never fails: for the heap's own
    /// growth, whose failure no caller could see (a failure to grow the heap
    /// is the allocation that asked, and that one is an injection point).
    pub fn alloc_uninjected() -> Result<u64, FrameError> {
        without_interrupts(|| {
            let cpu = this_cpu_index();
            let mut cache = CACHES[cpu].lock();
            if cache.is_empty() {
                with_bitmap(|b| cache.refill(b));
            }
            let frame = cache.pop().ok_or(FrameError::OutOfMemory)?;
            ALLOCATED_BY_CPU[cpu].fetch_add(1, Ordering::Relaxed);
            Ok(frame * FRAME_SIZE)
        })
    }

    fn zero(pa: u64, frames: u64) {
        // SAFETY: the frames were just allocated, so this code owns them, and
        // the physmap maps them writable.
        unsafe { core::ptr::write_bytes(phys_to_virt(pa) as *mut u8, 0, (frames * FRAME_SIZE) as usize) };
    }

    pub fn alloc_zeroed() -> Result<u64, FrameError> {
        let pa = alloc()?;
        zero(pa, 1);
        Ok(pa)
    }

    /// Frames handed out and not freed, on all CPUs.
    fn frames_in_use() -> u64 {
        let allocated: u64 = ALLOCATED_BY_CPU.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let freed: u64 = FREED_BY_CPU.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        allocated.saturating_sub(freed)
    }

    /// Frames only the kernel may take: user memory (demand-zero pages)
    /// stops short of them, so the kernel's own allocations — its heap,
    /// thread stacks, the structures of every object a quota allowed —
    /// find memory even when user programs have taken all they could.
    pub fn kernel_reserve_frames() -> u64 {
        (MANAGED_FRAMES.load(Ordering::Relaxed) / 4).max(2048)
    }

    /// The root space's kernel-memory quota: half the reserve (the other
    /// half covers what is not charged: the heap's own overhead, page
    /// tables, the records of user memory).
    pub fn user_object_budget() -> u64 {
        kernel_reserve_frames() / 2 * FRAME_SIZE
    }

    /// A zeroed frame for user memory: fails (OutOfMemory) rather than dip
    /// into the kernel's reserve.
    pub fn alloc_user_zeroed() -> Result<u64, FrameError> {
        let managed = MANAGED_FRAMES.load(Ordering::Relaxed);
        if managed.saturating_sub(frames_in_use()) <= kernel_reserve_frames() {
            return Err(FrameError::OutOfMemory);
        }
        alloc_zeroed()
    }

    /// A zeroed frame whose address is below `limit` (for structures that
    /// 32-bit or real-mode code must reach).
    pub fn alloc_zeroed_below(limit: u64) -> Result<u64, FrameError> {
        let pa = alloc_contiguous_below(1, 1, limit)?;
        zero(pa, 1);
        Ok(pa)
    }

    /// `count` physically contiguous frames aligned to `align` frames.
    pub fn alloc_contiguous(count: u64, align: u64) -> Result<u64, FrameError> {
        alloc_contiguous_below(count, align, u64::MAX)
    }

    fn alloc_contiguous_below(count: u64, align: u64, limit: u64) -> Result<u64, FrameError> {
        if crate::mm::inject::INJECTOR.should_fail() {
            return Err(FrameError::OutOfMemory);
        }
        without_interrupts(|| {
            let frame = with_bitmap(|b| b.alloc_contiguous(count, align, limit / FRAME_SIZE)).flatten().ok_or(FrameError::OutOfMemory)?;
            ALLOCATED_BY_CPU[this_cpu_index()].fetch_add(count, Ordering::Relaxed);
            Ok(frame * FRAME_SIZE)
        })
    }

    /// True if `frame` sits in any CPU's cache. `own` is the caller's cache,
    /// already locked; other caches are only tried, never waited for (a CPU
    /// holding its cache lock is inside alloc/free and holds no frame of ours).
    fn cached_anywhere(own_cpu: usize, own: &FrameCache, first: u64, count: u64) -> bool {
        CACHES.iter().enumerate().any(|(i, c)| {
            let hit = |c: &FrameCache| (first..first + count).any(|f| c.contains(f));
            if i == own_cpu {
                hit(own)
            } else {
                c.try_lock().map(|c| hit(&c)).unwrap_or(false)
            }
        })
    }

    pub fn free(pa: u64) -> Result<(), FrameError> {
        if !pa.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::BadAddress);
        }
        let frame = pa / FRAME_SIZE;
        without_interrupts(|| {
            let cpu = this_cpu_index();
            let mut cache = CACHES[cpu].lock();
            let mut bitmap = BITMAP.lock();
            let bitmap = bitmap.as_mut().ok_or(FrameError::BadAddress)?;
            if frame >= bitmap.frames() {
                return Err(FrameError::BadAddress);
            }
            if bitmap.is_free(frame) || cached_anywhere(cpu, &cache, frame, 1) {
                return Err(FrameError::NotAllocated);
            }
            if let Err(frame) = cache.push(frame) {
                cache.drain(bitmap, false);
                let _ = cache.push(frame);
            }
            FREED_BY_CPU[cpu].fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Frees `count` contiguous frames from `alloc_contiguous`.
    pub fn free_contiguous(pa: u64, count: u64) -> Result<(), FrameError> {
        if !pa.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::BadAddress);
        }
        let first = pa / FRAME_SIZE;
        without_interrupts(|| {
            let cpu = this_cpu_index();
            let cache = CACHES[cpu].lock();
            let mut bitmap = BITMAP.lock();
            let bitmap = bitmap.as_mut().ok_or(FrameError::BadAddress)?;
            if first.checked_add(count).is_none_or(|end| end > bitmap.frames()) {
                return Err(FrameError::BadAddress);
            }
            if cached_anywhere(cpu, &cache, first, count) {
                return Err(FrameError::NotAllocated);
            }
            bitmap.free_range(first, count)?;
            FREED_BY_CPU[cpu].fetch_add(count, Ordering::Relaxed);
            Ok(())
        })
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FrameStats {
        /// Frames the allocator manages (usable RAM less its own bitmap).
        pub managed: u64,
        /// Frames free in the bitmap or sitting in a CPU cache.
        pub free: u64,
        pub cached: u64,
    }

    pub fn stats() -> FrameStats {
        without_interrupts(|| {
            let cached: u64 = CACHES.iter().map(|c| c.lock().len() as u64).sum();
            let in_bitmap = with_bitmap(|b| b.free_frames()).unwrap_or(0);
            FrameStats { managed: MANAGED_FRAMES.load(Ordering::Relaxed), free: in_bitmap + cached, cached }
        })
    }

    pub fn per_cpu_counts(cpu: usize) -> (u64, u64, usize) {
        (
            ALLOCATED_BY_CPU[cpu].load(Ordering::Relaxed),
            FREED_BY_CPU[cpu].load(Ordering::Relaxed),
            without_interrupts(|| CACHES[cpu].lock().len()),
        )
    }

    /// Logs totals and, per online CPU, frames allocated, freed and cached.
    pub fn log_stats(cpus: usize) {
        let s = stats();
        log::info!(
            "mem: {} MiB managed, {} MiB free, {} MiB used",
            (s.managed * FRAME_SIZE) >> 20,
            (s.free * FRAME_SIZE) >> 20,
            ((s.managed - s.free) * FRAME_SIZE) >> 20
        );
        for cpu in 0..cpus {
            let (allocated, freed, cached) = per_cpu_counts(cpu);
            log::info!("mem: cpu{cpu} allocated {allocated} frames, freed {freed}, cached {cached}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn bitmap(storage: &mut Vec<u64>, frames: u64) -> FrameBitmap<'_> {
        storage.resize(FrameBitmap::words_needed(frames), 0);
        FrameBitmap::new(storage, frames)
    }

    #[test]
    fn alloc_until_empty_then_error() {
        let mut s = Vec::new();
        let mut b = bitmap(&mut s, 130);
        b.mark_free(10, 100);
        let mut got = BTreeSet::new();
        while let Some(f) = b.alloc_one() {
            assert!((10..110).contains(&f));
            assert!(got.insert(f), "frame {f} handed out twice");
        }
        assert_eq!(got.len(), 100);
        assert_eq!(b.free_frames(), 0);
        assert_eq!(b.free_range(10, 1), Ok(()));
        assert_eq!(b.free_range(10, 1), Err(FrameError::NotAllocated), "double free is caught");
        assert_eq!(b.free_range(200, 1), Err(FrameError::BadAddress));
    }

    #[test]
    fn contiguous_respects_alignment_and_limit() {
        let mut s = Vec::new();
        let mut b = bitmap(&mut s, 1024);
        b.mark_free(3, 1000);
        let f = b.alloc_contiguous(16, 16, 1024).unwrap();
        assert_eq!(f % 16, 0);
        assert!(f >= 3);
        assert_eq!(b.alloc_contiguous(16, 1, 20), None, "limit below any free run");
        assert_eq!(b.alloc_contiguous(2000, 1, 1024), None);
    }

    #[test]
    fn cache_refills_and_drains_through_bitmap() {
        let mut s = Vec::new();
        let mut b = bitmap(&mut s, 256);
        b.mark_free(0, 256);
        let mut c = FrameCache::new();
        assert_eq!(c.refill(&mut b), FrameCache::BATCH);
        assert_eq!(b.free_frames(), 256 - FrameCache::BATCH as u64);
        c.drain(&mut b, true);
        assert_eq!(b.free_frames(), 256);
        assert!(c.is_empty());
    }

    proptest! {
        #[test]
        fn bitmap_matches_model(ops in proptest::collection::vec((0u8..3, 0u64..300, 1u64..8), 1..200)) {
            let mut s = Vec::new();
            let mut b = bitmap(&mut s, 300);
            b.mark_free(0, 300);
            let mut allocated = BTreeSet::new();
            for (op, at, count) in ops {
                match op {
                    0 => if let Some(f) = b.alloc_one() {
                        prop_assert!(allocated.insert(f));
                    } else {
                        prop_assert_eq!(allocated.len(), 300);
                    },
                    1 => if let Some(f) = b.alloc_contiguous(count, 1, 300) {
                        for x in f..f + count { prop_assert!(allocated.insert(x)); }
                    },
                    _ => {
                        let all_allocated = (at..at + count).all(|f| allocated.contains(&f));
                        let r = b.free_range(at, count);
                        if at + count > 300 {
                            prop_assert_eq!(r, Err(FrameError::BadAddress));
                        } else if all_allocated {
                            prop_assert_eq!(r, Ok(()));
                            for f in at..at + count { allocated.remove(&f); }
                        } else {
                            prop_assert_eq!(r, Err(FrameError::NotAllocated));
                        }
                    }
                }
                prop_assert_eq!(b.free_frames(), 300 - allocated.len() as u64);
            }
        }
    }
}
