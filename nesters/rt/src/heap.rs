//! A small heap for user programs (`alloc`'s Vec, Box, BTreeMap...).
//!
//! The program says where its heap lives with [`init`] — the root program
//! uses its demand-zero memory, a child the memory its parent mapped for it
//! — so pages are touched (and supplied) only as the heap grows into them.
//! Before `init`, or when the heap is exhausted, allocations fail (the
//! `alloc` collections' `try_reserve` reports it; plain `push` aborts the
//! program through the panic handler).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::Heap;

struct UserHeap {
    locked: AtomicBool,
    heap: core::cell::UnsafeCell<Heap>,
}

// SAFETY: every access to `heap` happens while `locked` is held (a spin
// lock taken with Acquire and released with Release).
unsafe impl Sync for UserHeap {}

impl UserHeap {
    fn with<R>(&self, f: impl FnOnce(&mut Heap) -> R) -> R {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.heap.get() });
        self.locked.store(false, Ordering::Release);
        r
    }
}

#[cfg_attr(target_os = "none", global_allocator)]
static HEAP: UserHeap = UserHeap { locked: AtomicBool::new(false), heap: core::cell::UnsafeCell::new(Heap::empty()) };

/// Gives the heap `[start, start + size)`, which must be writable memory of
/// this program that nothing else uses. Once only; later calls do nothing.
///
/// # Safety
/// The range must be mapped writable (or demand-mapped) for this program's
/// whole life and used for nothing else.
pub unsafe fn init(start: u64, size: u64) {
    HEAP.with(|h| {
        if h.size() == 0 {
            // SAFETY: forwarded to the caller's contract.
            unsafe { h.init(start as *mut u8, size as usize) };
        }
    });
}

/// Bytes still free in the heap.
pub fn free_bytes() -> usize {
    HEAP.with(|h| h.free())
}

// SAFETY: allocation and deallocation go through the locked linked-list
// heap, which hands out disjoint, suitably aligned blocks.
unsafe impl GlobalAlloc for UserHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|h| h.allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc contract).
            self.with(|h| unsafe { h.deallocate(p, layout) });
        }
    }
}
