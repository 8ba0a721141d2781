//! The kernel heap: a linked-list allocator over a virtual window that grows
//! by mapping fresh frames when an allocation does not fit, with size
//! classes in front of it for small blocks.
//!
//! Small allocations (at most 2 KiB, the payload boxes, IPC records and
//! object nodes every system call makes) come from per-class free lists in
//! O(1): the linked-list allocator's first-fit walk grew with every live
//! object (each nester layer's threads and ports made every IPC payload
//! allocation on the machine slower). A class refills with a chunk carved
//! from the linked-list heap; freed blocks go back to their class, not to
//! the heap.

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

/// Block sizes of the size classes (powers of two: a block is aligned to
/// its size, so any alignment up to the size is met).
const CLASS_SIZES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];
/// Bytes a class takes from the heap when it runs dry.
const CHUNK: usize = 16 * 1024;

/// A free block of a class: the link lives in the block itself.
struct FreeBlock {
    next: *mut FreeBlock,
}

/// One class's free blocks.
struct FreeList(*mut FreeBlock);

// SAFETY: the list is only touched under its mutex; the blocks it links are
// heap memory no one else owns while they are on the list.
unsafe impl Send for FreeList {}

static CLASSES: [spin::Mutex<FreeList>; CLASS_SIZES.len()] =
    [const { spin::Mutex::new(FreeList(core::ptr::null_mut())) }; CLASS_SIZES.len()];
/// Bytes in class free lists (taken from the heap, not handed out).
static CLASS_FREE_BYTES: AtomicU64 = AtomicU64::new(0);

/// The class serving `layout`, if any.
fn class_of(layout: Layout) -> Option<usize> {
    let need = layout.size().max(layout.align());
    CLASS_SIZES.iter().position(|&c| need <= c)
}

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

/// Bytes of the heap handed out and not yet freed (blocks waiting in the
/// size classes' free lists count as free).
pub fn used_bytes() -> usize {
    without_interrupts(|| HEAP.heap.lock().used()).saturating_sub(CLASS_FREE_BYTES.load(Ordering::Relaxed) as usize)
}

pub fn free_bytes() -> usize {
    without_interrupts(|| HEAP.heap.lock().free()) + CLASS_FREE_BYTES.load(Ordering::Relaxed) as usize
}

impl KernelHeap {
    /// First fit from the linked-list heap, growing it as needed.
    fn alloc_from_heap(&self, layout: Layout) -> *mut u8 {
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
    }

    /// A block of class `c`, refilling the class from the heap when empty.
    fn alloc_small(&self, c: usize) -> *mut u8 {
        let size = CLASS_SIZES[c];
        let mut list = CLASSES[c].lock();
        if list.0.is_null() {
            let Ok(chunk_layout) = Layout::from_size_align(CHUNK, size) else { return core::ptr::null_mut() };
            let chunk = self.alloc_from_heap(chunk_layout);
            if chunk.is_null() {
                return core::ptr::null_mut();
            }
            // Link every block of the chunk, the first on top.
            for i in (0..CHUNK / size).rev() {
                // SAFETY: the block lies inside the chunk just allocated (size-aligned, at
                // least 16 bytes: room and alignment for a FreeBlock), which no one else owns.
                unsafe {
                    let block = chunk.add(i * size).cast::<FreeBlock>();
                    block.write(FreeBlock { next: list.0 });
                    list.0 = block;
                }
            }
            CLASS_FREE_BYTES.fetch_add(CHUNK as u64, Ordering::Relaxed);
        }
        let block = list.0;
        // SAFETY: `block` is the head of the list: a free block of this class.
        list.0 = unsafe { (*block).next };
        CLASS_FREE_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
        block.cast()
    }
}

// SAFETY: small blocks come from the size classes' spin-locked free lists,
// whose blocks are disjoint pieces of chunks the heap handed out; the rest
// from the spin-locked linked-list heap, which hands out disjoint blocks. A
// block goes back where its layout says it came from (GlobalAlloc gives
// dealloc the layout alloc was called with). Interrupts are masked while a
// lock is held, so a handler on the same CPU cannot deadlock on it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        without_interrupts(|| {
            if FALLIBLE_DEPTH[crate::arch::percpu::this_cpu_index()].load(Ordering::Relaxed) > 0
                && crate::mm::inject::INJECTOR.should_fail()
            {
                return core::ptr::null_mut();
            }
            match class_of(layout) {
                Some(c) => self.alloc_small(c),
                None => self.alloc_from_heap(layout),
            }
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        match class_of(layout) {
            Some(c) => without_interrupts(|| {
                let mut list = CLASSES[c].lock();
                // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc
                // contract), so it is a block of class `c`, now free.
                unsafe { ptr.cast::<FreeBlock>().write(FreeBlock { next: list.0 }) };
                list.0 = ptr.cast();
                CLASS_FREE_BYTES.fetch_add(CLASS_SIZES[c] as u64, Ordering::Relaxed);
            }),
            // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc contract).
            None => without_interrupts(|| unsafe { self.heap.lock().deallocate(p, layout) }),
        }
    }
}
