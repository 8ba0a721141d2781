//! Bounded lock-free multi-producer multi-consumer port queue.
//!
//! [`PortQueue<T, N>`] is the cross-CPU message queue of a port: senders on
//! any CPU push, receivers pop. It is the classic bounded MPMC ring with a
//! sequence number per slot (D. Vyukov's design):
//!
//! * `tail` and `head` are free-running `usize` positions; position `p` lives
//!   in slot `p & (N - 1)`. They wrap at `usize::MAX`, which is harmless
//!   because `N` is a power of two and divides 2^64.
//! * Slot `i` starts with `seq == i`. For position `p` in that slot:
//!   `seq == p` means *free for the producer of `p`*,
//!   `seq == p + 1` means *holds the message of `p`, ready for its consumer*,
//!   and the consumer then stores `seq = p + N`, which frees the slot for the
//!   producer one lap later.
//! * A producer reads `tail`, checks the slot's `seq`, and claims the position
//!   with a CAS on `tail`; then it writes the value and publishes it with a
//!   `Release` store of `seq`. A consumer mirrors this on `head`.
//!
//! `head` and `tail` each sit in their own [`CachePadded`] so producers and
//! consumers do not false-share one line; [`Backoff`] spaces out retries
//! after a lost CAS.
//!
//! # Progress and "momentary" full/empty
//! A failed CAS means another thread made progress, so the queue is
//! lock-free. As in every per-slot-sequence ring, a slot that was *claimed*
//! but not yet *published* (or consumed but not yet released) makes
//! [`try_pop`](PortQueue::try_pop) report empty (or
//! [`try_push`](PortQueue::try_push) report full) until the claiming thread
//! finishes its few instructions. Such a push or pop has not completed, so
//! nothing is lost; the producer that finishes publishing is the one that
//! notifies the receiver (see [`crate::doorbell`]).
//!
//! # Memory ordering
//! The `seq` store (`Release`) and load (`Acquire`) carry the slot hand-over:
//! the consumer's read of the value happens-before the next producer's write
//! to the slot, and the producer's write happens-before the consumer's read.
//! The `head`/`tail` CASes only decide *who* owns a position (atomicity of
//! the RMW is enough), so they are `Relaxed`.
//!
//! There is deliberately no separate SPSC queue: a prototype was not faster
//! than this one in the `perf` benchmarks (see `perf/README.md`), and the
//! kernel's cross-CPU queues have many senders per receiving CPU.

use core::fmt;
use core::mem::MaybeUninit;

use crossbeam_utils::{Backoff, CachePadded};

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

/// One ring slot: the sequence number and the (possibly uninitialised) value.
struct Slot<T> {
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    #[cfg(not(loom))]
    const fn new(seq: usize) -> Self {
        Self { seq: AtomicUsize::new(seq), value: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    #[cfg(loom)]
    fn new(seq: usize) -> Self {
        Self { seq: AtomicUsize::new(seq), value: UnsafeCell::new(MaybeUninit::uninit()) }
    }
}

/// A bounded lock-free MPMC queue of `N` slots (`N` a power of two, at least 2).
///
/// No allocation: the slots are inline, and [`PortQueue::new`] is a `const fn`
/// so a queue can live in a (per-CPU) `static`.
///
/// ```
/// use fastpath::queue::PortQueue;
/// static Q: PortQueue<u64, 4> = PortQueue::new();
/// assert_eq!(Q.try_push(7), Ok(()));
/// assert_eq!(Q.try_pop(), Some(7));
/// assert_eq!(Q.try_pop(), None);
/// ```
///
/// A capacity that is not a power of two (or is 1) does not compile:
///
/// ```compile_fail
/// let q: fastpath::PortQueue<u8, 3> = fastpath::PortQueue::new();
/// ```
pub struct PortQueue<T, const N: usize> {
    /// Next position to pop.
    head: CachePadded<AtomicUsize>,
    /// Next position to push.
    tail: CachePadded<AtomicUsize>,
    slots: [Slot<T>; N],
}

// SAFETY: values of `T` are only ever moved into the queue by one thread and
// moved out by one other thread; the queue never hands out `&T`, so moving a
// `T` across threads (`T: Send`) is all that sharing the queue requires. Each
// slot's value is accessed by exactly one thread at a time: the owner of a
// position is decided by the atomic CAS on `tail`/`head`, and the hand-over
// between the writer and the reader of a slot is ordered by the
// `Release`/`Acquire` pair on the slot's `seq`.
unsafe impl<T: Send, const N: usize> Sync for PortQueue<T, N> {}

// SAFETY: the queue owns its `T`s (inline, no pointers to thread-local
// state), so moving the whole queue to another thread moves those values,
// which `T: Send` allows.
unsafe impl<T: Send, const N: usize> Send for PortQueue<T, N> {}

impl<T, const N: usize> PortQueue<T, N> {
    const MASK: usize = N - 1;

    /// Compile-time check of the capacity, forced by every constructor.
    const CAPACITY_OK: () = assert!(N >= 2 && N.is_power_of_two(), "PortQueue capacity N must be a power of two and at least 2");

    /// An empty queue. `const`, so it can initialise a `static`.
    ///
    /// Fails to compile unless `N` is a power of two and at least 2 (with
    /// `N == 1` a full slot and the next lap's free slot would have the same
    /// sequence number).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_OK;
        let mut slots = [const { Slot::new(0) }; N];
        let mut i = 0;
        while i < N {
            slots[i] = Slot::new(i);
            i += 1;
        }
        Self { head: CachePadded::new(AtomicUsize::new(0)), tail: CachePadded::new(AtomicUsize::new(0)), slots }
    }

    /// An empty queue (loom build: loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_OK;
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots: core::array::from_fn(Slot::new),
        }
    }

    /// An empty queue whose positions start at `start` instead of 0, so tests
    /// can cross the `usize` wrap-around of the positions quickly.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn starting_at(start: usize) -> Self {
        let () = Self::CAPACITY_OK;
        let slots = core::array::from_fn(|i| {
            // The first position >= start that maps to slot i.
            Slot::new(start.wrapping_add(i.wrapping_sub(start) & Self::MASK))
        });
        Self { head: CachePadded::new(AtomicUsize::new(start)), tail: CachePadded::new(AtomicUsize::new(start)), slots }
    }

    /// The number of slots, `N`.
    #[inline]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Appends `value`, or gives it back in `Err` when the queue is full.
    ///
    /// "Full" includes the moment when the oldest message has been claimed
    /// by a consumer that has not finished reading it.
    pub fn try_push(&self, value: T) -> Result<(), T> {
        let backoff = Backoff::new();
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & Self::MASK];
            // Acquire: pairs with the consumer's Release in `try_pop`, so its
            // read of the old value is done before we overwrite it.
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                // The slot is free for position `pos`: claim it.
                match self.tail.compare_exchange_weak(pos, pos.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        // SAFETY: winning the CAS made us the only thread
                        // that owns position `pos`, and the slot is free
                        // (seq == pos, its previous value already moved out).
                        slot.value.with_mut(|p| unsafe { (*p).write(value) });
                        // Release: publishes the value to the consumer of `pos`.
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => {
                        pos = current;
                        backoff.spin();
                    }
                }
            } else if diff < 0 {
                // The slot still holds the message of `pos - N`: full.
                return Err(value);
            } else {
                // Another producer already took `pos`; our tail was stale.
                backoff.spin();
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the oldest message, or returns `None` when the queue is empty.
    ///
    /// "Empty" includes the moment when the next message's position has been
    /// claimed by a producer that has not finished publishing it.
    pub fn try_pop(&self) -> Option<T> {
        let backoff = Backoff::new();
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & Self::MASK];
            // Acquire: pairs with the producer's Release in `try_push`.
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                match self.head.compare_exchange_weak(pos, pos.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        // SAFETY: winning the CAS made us the only consumer of
                        // `pos`, and seq == pos + 1 (read with Acquire) means
                        // the producer's write of the value is visible.
                        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
                        // Release: our read is done before the producer of
                        // `pos + N` may overwrite the slot.
                        slot.seq.store(pos.wrapping_add(N), Ordering::Release);
                        return Some(value);
                    }
                    Err(current) => {
                        pos = current;
                        backoff.spin();
                    }
                }
            } else if diff < 0 {
                // Nothing published at `pos` yet: empty.
                return None;
            } else {
                // Another consumer already took `pos`; our head was stale.
                backoff.spin();
                pos = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether no message is ready at the head right now (the same test
    /// [`try_pop`](Self::try_pop) makes, without taking anything).
    pub fn is_empty(&self) -> bool {
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let seq = self.slots[pos & Self::MASK].seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                return false;
            } else if diff < 0 {
                return true;
            }
            pos = self.head.load(Ordering::Relaxed);
        }
    }

    /// Approximate number of messages: exact when no push or pop is in
    /// flight, otherwise some value in `0..=N` that was close at some point.
    pub fn len_hint(&self) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let len = tail.wrapping_sub(head) as isize;
        len.clamp(0, N as isize) as usize
    }
}

impl<T, const N: usize> Default for PortQueue<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Drop for PortQueue<T, N> {
    fn drop(&mut self) {
        if core::mem::needs_drop::<T>() {
            // With `&mut self` no push or pop is in flight, so every message
            // between head and tail is published and `try_pop` drains them.
            while self.try_pop().is_some() {}
        }
    }
}

impl<T, const N: usize> fmt::Debug for PortQueue<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortQueue").field("capacity", &N).field("len_hint", &self.len_hint()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::PortQueue;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn fifo_full_and_empty() {
        let q: PortQueue<u32, 4> = PortQueue::new();
        assert_eq!(q.capacity(), 4);
        assert!(q.is_empty());
        assert_eq!(q.try_pop(), None);
        for i in 0..4 {
            assert_eq!(q.try_push(i), Ok(()));
            assert_eq!(q.len_hint(), i as usize + 1);
        }
        assert_eq!(q.try_push(99), Err(99), "full queue gives the value back");
        assert!(!q.is_empty());
        for i in 0..4 {
            assert_eq!(q.try_pop(), Some(i));
        }
        assert_eq!(q.try_pop(), None);
        assert_eq!(q.len_hint(), 0);
    }

    #[test]
    fn many_laps() {
        let q: PortQueue<usize, 2> = PortQueue::new();
        for i in 0..1000 {
            q.try_push(i).unwrap();
            if i % 2 == 1 {
                assert_eq!(q.try_push(usize::MAX), Err(usize::MAX));
                assert_eq!(q.try_pop(), Some(i - 1));
                assert_eq!(q.try_pop(), Some(i));
                assert_eq!(q.try_pop(), None);
            }
        }
    }

    #[test]
    fn positions_wrap_around_usize() {
        let q: PortQueue<usize, 4> = PortQueue::starting_at(usize::MAX - 5);
        let mut model = VecDeque::new();
        for i in 0..64 {
            if i % 3 != 2 {
                let r = q.try_push(i);
                if model.len() < 4 {
                    assert_eq!(r, Ok(()));
                    model.push_back(i);
                } else {
                    assert_eq!(r, Err(i));
                }
            } else {
                assert_eq!(q.try_pop(), model.pop_front());
            }
            assert_eq!(q.len_hint(), model.len());
        }
        while let Some(v) = model.pop_front() {
            assert_eq!(q.try_pop(), Some(v));
        }
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn static_queue() {
        static Q: PortQueue<u64, 8> = PortQueue::new();
        Q.try_push(1).unwrap();
        Q.try_push(2).unwrap();
        assert_eq!(Q.try_pop(), Some(1));
        assert_eq!(Q.try_pop(), Some(2));
    }

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drop_drops_remaining_and_only_those() {
        let drops = Arc::new(AtomicUsize::new(0));
        {
            let q: PortQueue<Counted, 4> = PortQueue::new();
            for _ in 0..4 {
                assert!(q.try_push(Counted(drops.clone())).is_ok());
            }
            // Rejected value comes back and is dropped here, once.
            let rejected = q.try_push(Counted(drops.clone())).err().unwrap();
            drop(rejected);
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            drop(q.try_pop().unwrap());
            assert_eq!(drops.load(Ordering::SeqCst), 2);
            // Three remain in the queue.
        }
        assert_eq!(drops.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn zero_sized_and_large_values() {
        let q: PortQueue<(), 2> = PortQueue::new();
        q.try_push(()).unwrap();
        q.try_push(()).unwrap();
        assert_eq!(q.try_push(()), Err(()));
        assert_eq!(q.try_pop(), Some(()));

        let q: PortQueue<[u64; 16], 2> = PortQueue::new();
        q.try_push([7; 16]).unwrap();
        assert_eq!(q.try_pop(), Some([7; 16]));
    }

    #[test]
    fn head_and_tail_on_separate_lines() {
        let q: PortQueue<u8, 2> = PortQueue::new();
        let head = &q.head as *const _ as usize;
        let tail = &q.tail as *const _ as usize;
        assert!(tail.abs_diff(head) >= 64);
    }
}
