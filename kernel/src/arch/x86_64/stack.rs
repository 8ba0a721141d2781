//! Kernel stacks, each placed above an unmapped guard page so an overflow
//! faults (and lands on the double-fault IST stack) instead of corrupting memory.

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering};

use super::paging::{self, MapError, STACK_AREA_BASE, STACK_AREA_SIZE};
use crate::mm::frame::{self, FRAME_SIZE};

static NEXT: AtomicU64 = AtomicU64::new(STACK_AREA_BASE);
/// Freed stack slots (guard address, pages), reused before fresh address space.
static FREE_SLOTS: spin::Mutex<alloc::vec::Vec<(u64, u64)>> = spin::Mutex::new(alloc::vec::Vec::new());

pub struct KernelStack {
    pub guard: u64,
    pub bottom: u64,
    pub top: u64,
}

/// Maps a `pages`-page stack with a guard page below it; returns its bounds.
pub fn alloc(pages: u64) -> Result<KernelStack, MapError> {
    let span = (pages + 1) * FRAME_SIZE;
    let reused = super::cpu::without_interrupts(|| {
        let mut free = FREE_SLOTS.lock();
        let i = free.iter().position(|&(_, p)| p == pages)?;
        Some(free.swap_remove(i).0)
    });
    let guard = match reused {
        Some(guard) => guard,
        None => {
            let guard = NEXT.fetch_add(span, Ordering::Relaxed);
            if guard + span > STACK_AREA_BASE + STACK_AREA_SIZE {
                return Err(MapError::OutOfMemory);
            }
            guard
        }
    };
    let bottom = guard + FRAME_SIZE;
    for i in 0..pages {
        let mapped = frame::alloc().map_err(MapError::from).and_then(|pa| {
            paging::map_kernel_page(bottom + i * FRAME_SIZE, pa, paging::kernel_data_flags()).inspect_err(|_| {
                let _ = frame::free(pa);
            })
        });
        if let Err(e) = mapped {
            release_pages(bottom, i);
            super::cpu::without_interrupts(|| FREE_SLOTS.lock().push((guard, pages)));
            return Err(e);
        }
    }
    Ok(KernelStack { guard, bottom, top: bottom + pages * FRAME_SIZE })
}

fn release_pages(bottom: u64, pages: u64) {
    let mut frames = alloc::vec::Vec::new();
    for i in 0..pages {
        if let Ok(pa) = paging::unmap_kernel_page(bottom + i * FRAME_SIZE) {
            frames.push(pa);
        }
    }
    super::tlb::shootdown(bottom, pages);
    for pa in frames {
        let _ = frame::free(pa);
    }
}

/// Unmaps a stack, returns its frames and keeps its slot for reuse. Needs
/// interrupts enabled (TLB shootdown); nothing may run on the stack any more.
pub fn free(stack: KernelStack) {
    let pages = (stack.top - stack.bottom) / FRAME_SIZE;
    release_pages(stack.bottom, pages);
    super::cpu::without_interrupts(|| FREE_SLOTS.lock().push((stack.guard, pages)));
}

/// True when `addr` lies in a guard page of the stack area.
pub fn is_guard_page(addr: u64) -> bool {
    (STACK_AREA_BASE..NEXT.load(Ordering::Relaxed)).contains(&addr) && !paging::is_mapped(addr)
}

/// Switches the running CPU onto `top` and calls `f`, which never returns.
pub fn switch_to(top: u64, f: extern "C" fn() -> !) -> ! {
    // SAFETY: `top` is the top of a freshly mapped stack that nothing else
    // uses; `f` never returns, so the old stack is abandoned.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            top = in(reg) top,
            f = in(reg) f,
            options(noreturn),
        )
    }
}
