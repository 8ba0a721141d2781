//! A per-CPU run queue: one FIFO per priority and a bitmap of the non-empty
//! ones, so picking the next thread is a find-first-set and a pop.

extern crate alloc;

use alloc::collections::VecDeque;

pub const PRIORITIES: usize = 64;
/// Higher numbers run first.
pub const MAX_PRIORITY: u8 = (PRIORITIES - 1) as u8;

pub struct RunQueue<T> {
    levels: [VecDeque<T>; PRIORITIES],
    nonempty: u64,
    len: usize,
}

impl<T> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RunQueue<T> {
    pub const fn new() -> Self {
        RunQueue { levels: [const { VecDeque::new() }; PRIORITIES], nonempty: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest priority with a queued thread.
    pub fn highest(&self) -> Option<u8> {
        (self.nonempty != 0).then(|| 63 - self.nonempty.leading_zeros() as u8)
    }

    /// Queues `item` behind everything else at `priority` (clamped to MAX_PRIORITY).
    pub fn push(&mut self, priority: u8, item: T) {
        let p = priority.min(MAX_PRIORITY) as usize;
        self.levels[p].push_back(item);
        self.nonempty |= 1 << p;
        self.len += 1;
    }

    /// Takes the oldest item of the highest priority.
    pub fn pop(&mut self) -> Option<(u8, T)> {
        let p = self.highest()?;
        let level = &mut self.levels[p as usize];
        let item = level.pop_front()?;
        if level.is_empty() {
            self.nonempty &= !(1 << p);
        }
        self.len -= 1;
        Some((p, item))
    }

    /// Removes and returns the first item for which `matches` is true.
    pub fn remove_first(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<T> {
        for p in 0..PRIORITIES {
            if let Some(i) = self.levels[p].iter().position(&mut matches) {
                let item = self.levels[p].remove(i);
                if self.levels[p].is_empty() {
                    self.nonempty &= !(1 << p);
                }
                self.len -= 1;
                return item;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn highest_priority_first_fifo_within_a_level() {
        let mut q = RunQueue::new();
        q.push(3, "a");
        q.push(10, "b");
        q.push(3, "c");
        q.push(200, "d"); // clamped to 63
        assert_eq!(q.highest(), Some(63));
        assert_eq!(q.pop(), Some((63, "d")));
        assert_eq!(q.pop(), Some((10, "b")));
        assert_eq!(q.pop(), Some((3, "a")));
        assert_eq!(q.pop(), Some((3, "c")));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_first_keeps_bitmap_right() {
        let mut q = RunQueue::new();
        q.push(5, 1);
        q.push(7, 2);
        assert_eq!(q.remove_first(|&x| x == 2), Some(2));
        assert_eq!(q.highest(), Some(5));
        assert_eq!(q.remove_first(|&x| x == 9), None);
        assert_eq!(q.len(), 1);
    }

    proptest! {
        #[test]
        fn matches_a_sorted_model(ops in proptest::collection::vec((any::<bool>(), 0u8..64), 0..300)) {
            let mut q = RunQueue::new();
            let mut model: Vec<(u8, usize)> = Vec::new(); // (priority, sequence)
            for (i, (push, prio)) in ops.into_iter().enumerate() {
                if push {
                    q.push(prio, i);
                    model.push((prio, i));
                } else {
                    // Model: highest priority, then lowest sequence number.
                    let best = model.iter().enumerate()
                        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
                        .map(|(idx, _)| idx);
                    let expected = best.map(|idx| model.remove(idx));
                    prop_assert_eq!(q.pop(), expected);
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
