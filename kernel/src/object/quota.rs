//! Kernel-memory quotas: every kernel object a space creates is charged to
//! it, and a parent bounds what its whole subtree may take.
//!
//! Each space has a [`Quota`]: a limit and the bytes charged, and a link to
//! its parent's quota. A charge to a space is a charge to it and to every
//! ancestor, and it succeeds only if no level's limit is exceeded, so the
//! limit a parent sets for a child bounds the child's whole subtree (Fluke's
//! nested resource control: a nester hands down part of what it was given).
//! The root quota is what the kernel can spare for user-created objects
//! (see `mm::frame`'s reserve), so a hostile program runs out of quota long
//! before the kernel runs out of memory.
//!
//! Costs are fixed estimates per object kind (the memory the object pins:
//! a thread's kernel stack and control block, a space's top-level page
//! table, a handle-table entry), charged when the object is created and
//! released when it is freed, so a quota never drifts.

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

/// No limit of its own (only its ancestors' apply).
pub const UNLIMITED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded;

pub struct Quota {
    limit: AtomicU64,
    used: AtomicU64,
    parent: Option<Arc<Quota>>,
}

impl Quota {
    /// The root of a quota tree, with `limit` bytes.
    pub fn root(limit: u64) -> Arc<Quota> {
        Arc::new(Quota { limit: AtomicU64::new(limit), used: AtomicU64::new(0), parent: None })
    }

    /// A child quota: no limit of its own until one is set.
    pub fn child(parent: &Arc<Quota>) -> Arc<Quota> {
        Arc::new(Quota { limit: AtomicU64::new(UNLIMITED), used: AtomicU64::new(0), parent: Some(parent.clone()) })
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Sets this level's limit. A limit below what is already used is
    /// allowed: nothing is taken back, but new charges fail until enough is
    /// freed.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Release);
    }

    /// The smallest room left at any level from here to the root.
    pub fn available(&self) -> u64 {
        let mut room = u64::MAX;
        let mut level = Some(self);
        while let Some(q) = level {
            room = room.min(q.limit().saturating_sub(q.used()));
            level = q.parent.as_deref();
        }
        room
    }

    /// Charges `bytes` to this quota and every ancestor, or to none of them.
    pub fn charge(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        let mut level = Some(self);
        while let Some(q) = level {
            if q.try_add(bytes).is_err() {
                // Undo the levels below the one that refused.
                let mut undo = Some(self);
                while let Some(u) = undo {
                    if core::ptr::eq(u, q) {
                        break;
                    }
                    u.used.fetch_sub(bytes, Ordering::AcqRel);
                    undo = u.parent.as_deref();
                }
                return Err(QuotaExceeded);
            }
            level = q.parent.as_deref();
        }
        Ok(())
    }

    /// Returns `bytes` charged earlier to this quota and its ancestors.
    pub fn uncharge(&self, bytes: u64) {
        let mut level = Some(self);
        while let Some(q) = level {
            let before = q.used.fetch_sub(bytes, Ordering::AcqRel);
            debug_assert!(before >= bytes, "a quota was uncharged more than it was charged");
            level = q.parent.as_deref();
        }
    }

    fn try_add(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(bytes).filter(|&u| u <= limit))
            .map(|_| ())
            .map_err(|_| QuotaExceeded)
    }
}

/// Bytes charged to a quota for as long as this value lives (one object's
/// cost); dropping it returns them.
pub struct Charge {
    quota: Arc<Quota>,
    bytes: u64,
}

impl Charge {
    pub fn new(quota: &Arc<Quota>, bytes: u64) -> Result<Charge, QuotaExceeded> {
        quota.charge(bytes)?;
        Ok(Charge { quota: quota.clone(), bytes })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.quota.uncharge(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_child_is_bounded_by_every_ancestor() {
        let root = Quota::root(1000);
        let mid = Quota::child(&root);
        let leaf = Quota::child(&mid);
        mid.set_limit(300);
        assert!(leaf.charge(200).is_ok());
        assert_eq!(leaf.charge(200), Err(QuotaExceeded), "mid's limit applies to the leaf");
        assert_eq!((leaf.used(), mid.used(), root.used()), (200, 200, 200), "a refused charge leaves nothing behind");
        assert_eq!(leaf.available(), 100);
        assert!(root.charge(800).is_ok());
        assert_eq!(leaf.charge(1), Err(QuotaExceeded), "the root is full");
        leaf.uncharge(200);
        assert_eq!((leaf.used(), mid.used(), root.used()), (0, 0, 800));
    }

    #[test]
    fn a_charge_is_returned_when_dropped() {
        let root = Quota::root(100);
        let child = Quota::child(&root);
        let c = Charge::new(&child, 60).unwrap();
        assert!(Charge::new(&child, 60).is_err());
        drop(c);
        assert_eq!(root.used(), 0);
        assert!(Charge::new(&child, 100).is_ok());
    }

    #[test]
    fn lowering_a_limit_below_use_only_stops_new_charges() {
        let root = Quota::root(100);
        let c = Charge::new(&root, 80).unwrap();
        root.set_limit(50);
        assert!(root.charge(1).is_err());
        drop(c);
        assert!(root.charge(50).is_ok());
    }

    #[test]
    fn no_overflow_near_the_top() {
        let root = Quota::root(UNLIMITED);
        assert!(root.charge(u64::MAX - 1).is_ok());
        assert!(root.charge(2).is_err());
    }

    proptest! {
        /// Any sequence of charges and releases on a three-level tree keeps
        /// every level's use equal to the sum of its subtree's live charges
        /// and never above any limit.
        #[test]
        fn use_is_the_sum_of_live_charges(
            limits in proptest::array::uniform3(0u64..2000),
            ops in proptest::collection::vec((0usize..3, 1u64..500, any::<bool>()), 0..200),
        ) {
            let root = Quota::root(limits[0]);
            let mid = Quota::child(&root);
            mid.set_limit(limits[1]);
            let leaf = Quota::child(&mid);
            leaf.set_limit(limits[2]);
            let levels = [root.clone(), mid.clone(), leaf.clone()];
            let mut live: Vec<(usize, Charge)> = Vec::new();
            for (level, bytes, release) in ops {
                if release && !live.is_empty() {
                    live.remove(bytes as usize % live.len());
                } else if let Ok(c) = Charge::new(&levels[level], bytes) {
                    live.push((level, c));
                }
                for (depth, q) in levels.iter().enumerate() {
                    let expected: u64 = live.iter().filter(|(l, _)| *l >= depth).map(|(_, c)| c.bytes()).sum();
                    prop_assert_eq!(q.used(), expected);
                    prop_assert!(q.used() <= limits[depth]);
                }
            }
        }
    }
}
