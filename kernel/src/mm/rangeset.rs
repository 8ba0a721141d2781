//! A fixed-capacity set of disjoint half-open `[start, end)` ranges.
//!
//! Boot code turns the firmware memory map into usable RAM with it: add every
//! usable region, then remove every reserved region, the kernel image, boot
//! modules and low memory. It needs no heap, so it works before one exists.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityExceeded;

#[derive(Clone)]
pub struct RangeSet<const N: usize> {
    ranges: [Range; N],
    len: usize,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RangeSet<N> {
    pub const fn new() -> Self {
        RangeSet { ranges: [Range { start: 0, end: 0 }; N], len: 0 }
    }

    pub fn as_slice(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(Range::len).sum()
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.as_slice().iter().any(|r| r.start <= addr && addr < r.end)
    }

    fn insert_at(&mut self, i: usize, r: Range) -> Result<(), CapacityExceeded> {
        if self.len == N {
            return Err(CapacityExceeded);
        }
        self.ranges.copy_within(i..self.len, i + 1);
        self.ranges[i] = r;
        self.len += 1;
        Ok(())
    }

    fn remove_at(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Adds `[start, end)`, merging with touching or overlapping ranges.
    pub fn add(&mut self, start: u64, end: u64) -> Result<(), CapacityExceeded> {
        if end <= start {
            return Ok(());
        }
        let mut new = Range { start, end };
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if r.end < new.start {
                i += 1;
                continue;
            }
            if r.start > new.end {
                break;
            }
            new.start = new.start.min(r.start);
            new.end = new.end.max(r.end);
            self.remove_at(i);
        }
        self.insert_at(i, new)
    }

    /// Removes `[start, end)` from the set, splitting ranges as needed.
    pub fn remove(&mut self, start: u64, end: u64) -> Result<(), CapacityExceeded> {
        if end <= start {
            return Ok(());
        }
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if r.end <= start || r.start >= end {
                i += 1;
                continue;
            }
            let left = Range { start: r.start, end: start.min(r.end) };
            let right = Range { start: end.max(r.start), end: r.end };
            self.remove_at(i);
            if !right.is_empty() {
                self.insert_at(i, right)?;
            }
            if !left.is_empty() {
                self.insert_at(i, left)?;
                i += 1;
            }
            if !right.is_empty() {
                i += 1;
            }
        }
        Ok(())
    }

    /// Shrinks every range inward to multiples of `align` (a power of two),
    /// dropping ranges that become empty.
    pub fn align_inward(&mut self, align: u64) {
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            let start = r.start.next_multiple_of(align);
            let end = r.end & !(align - 1);
            if end <= start {
                self.remove_at(i);
            } else {
                self.ranges[i] = Range { start, end };
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn add_merges_and_remove_splits() {
        let mut s = RangeSet::<8>::new();
        s.add(0, 10).unwrap();
        s.add(20, 30).unwrap();
        s.add(10, 20).unwrap();
        assert_eq!(s.as_slice(), &[Range { start: 0, end: 30 }]);
        s.remove(5, 7).unwrap();
        assert_eq!(s.as_slice(), &[Range { start: 0, end: 5 }, Range { start: 7, end: 30 }]);
        s.remove(0, 100).unwrap();
        assert!(s.as_slice().is_empty());
    }

    #[test]
    fn capacity_is_reported_not_overrun() {
        let mut s = RangeSet::<2>::new();
        s.add(0, 1).unwrap();
        s.add(5, 6).unwrap();
        assert_eq!(s.add(10, 11), Err(CapacityExceeded));
        assert_eq!(s.as_slice().len(), 2);
    }

    #[test]
    fn align_inward_drops_slivers() {
        let mut s = RangeSet::<4>::new();
        s.add(100, 5000).unwrap();
        s.add(8100, 21000).unwrap();
        s.align_inward(4096);
        assert_eq!(s.as_slice(), &[Range { start: 8192, end: 20480 }]);
    }

    proptest! {
        #[test]
        fn matches_a_set_of_points(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..40), 0..40)) {
            let mut s = RangeSet::<64>::new();
            let mut model = BTreeSet::new();
            for (add, start, len) in ops {
                if add {
                    s.add(start, start + len).unwrap();
                    model.extend(start..start + len);
                } else {
                    s.remove(start, start + len).unwrap();
                    for p in start..start + len { model.remove(&p); }
                }
            }
            let mut points = BTreeSet::new();
            for r in s.as_slice() { points.extend(r.start..r.end); }
            prop_assert_eq!(points, model);
            for w in s.as_slice().windows(2) {
                prop_assert!(w[0].end < w[1].start, "ranges stay sorted, disjoint and non-touching");
            }
        }
    }
}
