//! A per-CPU run queue: one FIFO per priority and a bitmap of the non-empty
//! ones, so picking the next thread is a find-first-set and a pop.
//!
//! The FIFOs are intrusive: each item carries the link to the item queued
//! behind it ([`RunLink`]), so queueing allocates nothing. That matters on
//! the kill path: destroying a space queues every one of its threads so they
//! can exit, and a queue that had to grow there could fail for want of
//! memory at the one moment the kernel is trying to give memory back.
//! An item sits in at most one run queue at a time (the scheduler queues
//! only READY threads, and each becomes READY exactly once per wake-up).

extern crate alloc;

use alloc::sync::Arc;

pub const PRIORITIES: usize = 64;
/// Higher numbers run first.
pub const MAX_PRIORITY: u8 = (PRIORITIES - 1) as u8;

/// The link an item holds to the next item of its run-queue level. Only
/// the queue the item sits in touches it, under that queue's lock; the
/// mutex costs an uncontended acquire and keeps this free of `unsafe`.
pub struct RunLink<T> {
    next: spin::Mutex<Option<Arc<T>>>,
}

impl<T> RunLink<T> {
    pub const fn new() -> Self {
        RunLink { next: spin::Mutex::new(None) }
    }
}

impl<T> Default for RunLink<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// An item that can be queued: it owns a [`RunLink`].
pub trait Queueable: Sized {
    fn run_link(&self) -> &RunLink<Self>;
}

struct Level<T: Queueable> {
    head: Option<Arc<T>>,
    tail: Option<Arc<T>>,
}

impl<T: Queueable> Level<T> {
    const fn new() -> Self {
        Level { head: None, tail: None }
    }

    fn push_back(&mut self, item: Arc<T>) {
        debug_assert!(item.run_link().next.lock().is_none(), "an item is queued twice");
        match self.tail.replace(item.clone()) {
            Some(old_tail) => *old_tail.run_link().next.lock() = Some(item),
            None => self.head = Some(item),
        }
    }

    fn pop_front(&mut self) -> Option<Arc<T>> {
        let item = self.head.take()?;
        self.head = item.run_link().next.lock().take();
        if self.head.is_none() {
            self.tail = None;
        }
        Some(item)
    }

    fn is_empty(&self) -> bool {
        self.head.is_none()
    }
}

impl<T: Queueable> Drop for Level<T> {
    fn drop(&mut self) {
        // Unlink one by one: dropping the head would otherwise drop the
        // whole chain recursively.
        while self.pop_front().is_some() {}
    }
}

pub struct RunQueue<T: Queueable> {
    levels: [Level<T>; PRIORITIES],
    nonempty: u64,
    len: usize,
}

impl<T: Queueable> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Queueable> RunQueue<T> {
    pub const fn new() -> Self {
        RunQueue { levels: [const { Level::new() }; PRIORITIES], nonempty: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest priority with a queued item.
    pub fn highest(&self) -> Option<u8> {
        (self.nonempty != 0).then(|| 63 - self.nonempty.leading_zeros() as u8)
    }

    /// Queues `item` behind everything else at `priority` (clamped to
    /// MAX_PRIORITY). Never allocates.
    pub fn push(&mut self, priority: u8, item: Arc<T>) {
        let p = priority.min(MAX_PRIORITY) as usize;
        self.levels[p].push_back(item);
        self.nonempty |= 1 << p;
        self.len += 1;
    }

    /// Takes the oldest item of the highest priority.
    pub fn pop(&mut self) -> Option<(u8, Arc<T>)> {
        let p = self.highest()?;
        let level = &mut self.levels[p as usize];
        let item = level.pop_front()?;
        if level.is_empty() {
            self.nonempty &= !(1 << p);
        }
        self.len -= 1;
        Some((p, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Item {
        id: usize,
        link: RunLink<Item>,
    }

    impl Queueable for Item {
        fn run_link(&self) -> &RunLink<Item> {
            &self.link
        }
    }

    fn item(id: usize) -> Arc<Item> {
        Arc::new(Item { id, link: RunLink::new() })
    }

    fn pop_id(q: &mut RunQueue<Item>) -> Option<(u8, usize)> {
        q.pop().map(|(p, i)| (p, i.id))
    }

    #[test]
    fn highest_priority_first_fifo_within_a_level() {
        let mut q = RunQueue::new();
        q.push(3, item(1));
        q.push(10, item(2));
        q.push(3, item(3));
        q.push(200, item(4)); // clamped to 63
        assert_eq!(q.highest(), Some(63));
        assert_eq!(pop_id(&mut q), Some((63, 4)));
        assert_eq!(pop_id(&mut q), Some((10, 2)));
        assert_eq!(pop_id(&mut q), Some((3, 1)));
        assert_eq!(pop_id(&mut q), Some((3, 3)));
        assert_eq!(pop_id(&mut q), None);
        assert!(q.is_empty());
    }

    #[test]
    fn an_item_can_be_queued_again_once_popped() {
        let mut q = RunQueue::new();
        let a = item(1);
        q.push(5, a.clone());
        q.push(5, item(2));
        let (_, first) = q.pop().unwrap();
        assert!(Arc::ptr_eq(&first, &a));
        assert!(a.link.next.lock().is_none(), "a popped item keeps no link");
        q.push(5, a);
        assert_eq!(pop_id(&mut q), Some((5, 2)));
        assert_eq!(pop_id(&mut q), Some((5, 1)));
    }

    #[test]
    fn dropping_a_long_queue_releases_every_item() {
        let items: Vec<Arc<Item>> = (0..100_000).map(item).collect();
        let mut q = RunQueue::new();
        for i in &items {
            q.push(1, i.clone());
        }
        drop(q);
        assert!(items.iter().all(|i| Arc::strong_count(i) == 1));
    }

    proptest! {
        #[test]
        fn matches_a_sorted_model(ops in proptest::collection::vec((any::<bool>(), 0u8..64), 0..300)) {
            let mut q = RunQueue::new();
            let mut model: Vec<(u8, usize)> = Vec::new(); // (priority, sequence)
            for (i, (push, prio)) in ops.into_iter().enumerate() {
                if push {
                    q.push(prio, item(i));
                    model.push((prio, i));
                } else {
                    // Model: highest priority, then lowest sequence number.
                    let best = model.iter().enumerate()
                        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
                        .map(|(idx, _)| idx);
                    let expected = best.map(|idx| model.remove(idx));
                    prop_assert_eq!(pop_id(&mut q), expected);
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
