//! Property tests: `PortQueue` against `VecDeque` as the reference model,
//! single-threaded (where the queue must behave exactly like a bounded FIFO).
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fastpath::PortQueue;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Push(u32),
    Pop,
    /// Push until full, checking each result.
    Fill,
    /// Pop until empty.
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u32>().prop_map(Op::Push),
        5 => Just(Op::Pop),
        1 => Just(Op::Fill),
        1 => Just(Op::Drain),
    ]
}

/// Runs `ops` on a queue of capacity `N` and the bounded-VecDeque model.
fn check<const N: usize>(ops: &[Op]) -> Result<(), TestCaseError> {
    let q: PortQueue<u32, N> = PortQueue::new();
    let mut model: VecDeque<u32> = VecDeque::with_capacity(N);
    let mut next = 0u32;
    let push = |q: &PortQueue<u32, N>, model: &mut VecDeque<u32>, v: u32| -> Result<bool, TestCaseError> {
        let r = q.try_push(v);
        if model.len() < N {
            prop_assert_eq!(r, Ok(()));
            model.push_back(v);
            Ok(true)
        } else {
            prop_assert_eq!(r, Err(v), "full queue must return the value unchanged");
            Ok(false)
        }
    };
    for op in ops {
        match *op {
            Op::Push(v) => {
                push(&q, &mut model, v)?;
            }
            Op::Pop => prop_assert_eq!(q.try_pop(), model.pop_front()),
            Op::Fill => {
                while push(&q, &mut model, next)? {
                    next = next.wrapping_add(1);
                }
            }
            Op::Drain => {
                while let Some(v) = model.pop_front() {
                    prop_assert_eq!(q.try_pop(), Some(v));
                }
                prop_assert_eq!(q.try_pop(), None);
            }
        }
        prop_assert_eq!(q.len_hint(), model.len());
        prop_assert_eq!(q.is_empty(), model.is_empty());
        prop_assert_eq!(q.capacity(), N);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn matches_vecdeque_cap2(ops in prop::collection::vec(op(), 0..200)) {
        check::<2>(&ops)?;
    }

    #[test]
    fn matches_vecdeque_cap8(ops in prop::collection::vec(op(), 0..300)) {
        check::<8>(&ops)?;
    }

    #[test]
    fn matches_vecdeque_cap64(ops in prop::collection::vec(op(), 0..400)) {
        check::<64>(&ops)?;
    }

    /// Every value pushed is dropped exactly once: popped, rejected, or left
    /// in the queue when it is dropped.
    #[test]
    fn drops_exactly_once(ops in prop::collection::vec(op(), 0..100)) {
        struct D(Arc<AtomicUsize>);
        impl Drop for D {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let mut made = 0usize;
        {
            let q: PortQueue<D, 4> = PortQueue::new();
            for op in &ops {
                match op {
                    Op::Push(_) | Op::Fill => {
                        made += 1;
                        let _ = q.try_push(D(drops.clone()));
                    }
                    Op::Pop | Op::Drain => {
                        let _ = q.try_pop();
                    }
                }
            }
        }
        prop_assert_eq!(drops.load(Ordering::Relaxed), made);
    }
}
