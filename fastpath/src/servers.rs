//! [`ServerQueue`]: the servers waiting on a portset, oldest first, shaped
//! for the fast path's usual case — one server that waits, is claimed, and
//! waits again.
//!
//! The oldest server sits in an inline slot whenever the rest of the queue
//! is empty, so that case touches no ring arithmetic and no out-of-line
//! code. The slot is filled only while the rest is empty, which keeps FIFO
//! order: everything in the rest arrived after the slot's occupant.

extern crate alloc;

use alloc::collections::VecDeque;

/// Where [`ServerQueue::push_back_at`] puts a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Inline,
    Ring,
}

pub struct ServerQueue<T> {
    first: Option<T>,
    rest: VecDeque<T>,
}

impl<T> ServerQueue<T> {
    /// With room for `capacity` servers beyond the first before it allocates.
    pub fn with_capacity(capacity: usize) -> Self {
        ServerQueue { first: None, rest: VecDeque::with_capacity(capacity) }
    }

    #[inline(always)]
    pub fn front(&self) -> Option<&T> {
        self.first.as_ref().or_else(|| self.rest.front())
    }

    #[inline(always)]
    pub fn pop_front(&mut self) -> Option<T> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    #[inline(always)]
    pub fn push_back(&mut self, server: T) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(server);
        } else {
            self.rest.push_back(server);
        }
    }

    /// Where one more server would go without allocating, if anywhere.
    /// Deciding this before a commit point and pushing after it with
    /// [`ServerQueue::push_back_at`] keeps the commit from allocating.
    #[inline(always)]
    pub fn place_without_allocating(&self) -> Option<Place> {
        if self.first.is_none() && self.rest.is_empty() {
            Some(Place::Inline)
        } else if self.rest.len() < self.rest.capacity() {
            Some(Place::Ring)
        } else {
            None
        }
    }

    /// `push_back` to the place `place_without_allocating` chose; the queue
    /// must not have changed since.
    #[inline(always)]
    pub fn push_back_at(&mut self, place: Place, server: T) {
        debug_assert_eq!(self.place_without_allocating(), Some(place));
        match place {
            // The slot is empty (the place says so): nothing to drop.
            Place::Inline => core::mem::forget(self.first.replace(server)),
            Place::Ring => self.rest.push_back(server),
        }
    }

    pub fn len(&self) -> usize {
        self.first.is_some() as usize + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the servers `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        if self.first.as_ref().is_some_and(|s| !keep(s)) {
            self.first = None;
        }
        self.rest.retain(|s| keep(s));
        if self.first.is_none() {
            self.first = self.rest.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        PushPlaced,
        Pop,
        Retain(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![Just(Op::Push), Just(Op::PushPlaced), Just(Op::Pop), any::<u8>().prop_map(Op::Retain)]
    }

    proptest::proptest! {
        /// Behaves exactly like a plain FIFO (`VecDeque`) under any mix of
        /// pushes, pops and removals.
        #[test]
        fn is_a_fifo(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = ServerQueue::with_capacity(4);
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Push => {
                        q.push_back(next);
                        model.push_back(next);
                        next += 1;
                    }
                    Op::PushPlaced => {
                        let capacity = q.rest.capacity();
                        match q.place_without_allocating() {
                            Some(place) => {
                                q.push_back_at(place, next);
                                proptest::prop_assert_eq!(q.rest.capacity(), capacity, "allocated");
                                model.push_back(next);
                                next += 1;
                            }
                            // Only when a push would have to grow the ring.
                            None => proptest::prop_assert!(q.first.is_some() || !q.rest.is_empty()),
                        }
                        if q.place_without_allocating().is_none() {
                            proptest::prop_assert_eq!(q.rest.len(), q.rest.capacity());
                        }
                    }
                    Op::Pop => proptest::prop_assert_eq!(q.pop_front(), model.pop_front()),
                    Op::Retain(m) => {
                        let m = u32::from(m % 5) + 2;
                        q.retain(|&x| x % m != 0);
                        model.retain(|&x| x % m != 0);
                    }
                }
                proptest::prop_assert_eq!(q.front(), model.front());
                proptest::prop_assert_eq!(q.len(), model.len());
            }
            let drained: Vec<u32> = core::iter::from_fn(|| q.pop_front()).collect();
            proptest::prop_assert_eq!(drained, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn one_server_needs_no_room_in_the_ring() {
        let mut q = ServerQueue::with_capacity(0);
        assert_eq!(q.place_without_allocating(), Some(Place::Inline));
        q.push_back(1);
        assert_eq!(q.place_without_allocating(), None, "a second server would allocate");
        assert_eq!(q.pop_front(), Some(1));
        assert_eq!(q.place_without_allocating(), Some(Place::Inline));
    }

    #[test]
    fn a_full_ring_behind_an_empty_slot_has_no_room() {
        let mut q = ServerQueue::with_capacity(1);
        q.push_back(1);
        q.push_back(2);
        while q.rest.len() < q.rest.capacity() {
            q.push_back(3);
        }
        assert_eq!(q.pop_front(), Some(1));
        // The slot is free, but FIFO order sends the next server to the
        // full ring, which would grow.
        assert_eq!(q.place_without_allocating(), None);
    }
}
