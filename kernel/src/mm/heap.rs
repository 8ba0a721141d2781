//! The kernel heap: a linked-list allocator over a virtual window that grows
//! by mapping fresh frames when an allocation does not fit.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use linked_list_allocator::Heap;

use crate::arch::cpu::without_interrupts;
use crate::arch::paging::{self, HEAP_BASE, HEAP_MAX_SIZE};
use crate::mm::frame::{self, FRAME_SIZE};

const INITIAL_SIZE: u64 = 4 << 20;
const GROW_STEP: u64 = 2 << 20;

pub struct KernelHeap {
    heap: spin::Mutex<Heap>,
    mapped: AtomicU64,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap { heap: spin::Mutex::new(Heap::empty()), mapped: AtomicU64::new(0) };

/// Maps `bytes` more of the heap window; returns how many bytes it mapped.
fn map_more(bytes: u64) -> u64 {
    let start = HEAP_BASE + HEAP.mapped.load(Ordering::Relaxed);
    let end = (start + bytes).min(HEAP_BASE + HEAP_MAX_SIZE);
    let mut va = start;
    while va < end {
        let Ok(pa) = frame::alloc_uninjected() else { break };
        if paging::map_kernel_page(va, pa, paging::kernel_data_flags()).is_err() {
            let _ = frame::free(pa);
            break;
        }
        va += FRAME_SIZE;
    }
    HEAP.mapped.fetch_add(va - start, Ordering::Relaxed);
    va - start
}

pub fn init() -> Result<(), frame::FrameError> {
    let got = map_more(INITIAL_SIZE);
    if got < INITIAL_SIZE {
        return Err(frame::FrameError::OutOfMemory);
    }
    // SAFETY: `HEAP_BASE..+got` was just mapped writable and is used by nothing else.
    unsafe { HEAP.heap.lock().init(HEAP_BASE as *mut u8, got as usize) };
    Ok(())
}

/// Per CPU: how deep it is in `fallible` scopes.
static FALLIBLE_DEPTH: [core::sync::atomic::AtomicU32; crate::arch::percpu::MAX_CPUS] =
    [const { core::sync::atomic::AtomicU32::new(0) }; crate::arch::percpu::MAX_CPUS];

/// Runs `f`, whose heap allocations report failure (`try_reserve` and the
/// like), as a scope where the fault injector may fail them. Interrupts
/// are off inside, so the scope stays on one CPU.
pub fn fallible<R>(f: impl FnOnce() -> R) -> R {
    without_interrupts(|| {
        let depth = &FALLIBLE_DEPTH[crate::arch::percpu::this_cpu_index()];
        depth.fetch_add(1, Ordering::Relaxed);
        let r = f();
        depth.fetch_sub(1, Ordering::Relaxed);
        r
    })
}

pub fn mapped_bytes() -> u64 {
    HEAP.mapped.load(Ordering::Relaxed)
}

/// Bytes of the heap handed out and not yet freed.
pub fn used_bytes() -> usize {
    without_interrupts(|| HEAP.heap.lock().used())
}

pub fn free_bytes() -> usize {
    without_interrupts(|| HEAP.heap.lock().free())
}

// SAFETY: every path goes through the spin-locked linked-list heap, which
// hands out disjoint blocks; interrupts are masked while the lock is held so
// a handler on the same CPU cannot deadlock on it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        without_interrupts(|| {
            if FALLIBLE_DEPTH[crate::arch::percpu::this_cpu_index()].load(Ordering::Relaxed) > 0
                && crate::mm::inject::INJECTOR.should_fail()
            {
                return core::ptr::null_mut();
            }
            let mut heap = self.heap.lock();
            loop {
                if let Ok(p) = heap.allocate_first_fit(layout) {
                    return p.as_ptr();
                }
                let want = (layout.size() as u64 + layout.align() as u64 + FRAME_SIZE).max(GROW_STEP);
                let got = map_more(want.next_multiple_of(FRAME_SIZE));
                if got == 0 {
                    return core::ptr::null_mut();
                }
                // SAFETY: the new pages directly follow the heap's current end.
                unsafe { heap.extend(got as usize) };
            }
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc contract).
            without_interrupts(|| unsafe { self.heap.lock().deallocate(p, layout) });
        }
    }
}
