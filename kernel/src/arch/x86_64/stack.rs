//! Kernel stacks, each placed above an unmapped guard page so an overflow
//! faults (and lands on the double-fault IST stack) instead of corrupting memory.

use core::sync::atomic::{AtomicU64, Ordering};

use super::paging::{self, MapError, STACK_AREA_BASE, STACK_AREA_SIZE};
use crate::mm::frame::{self, FRAME_SIZE};

static NEXT: AtomicU64 = AtomicU64::new(STACK_AREA_BASE);

pub struct KernelStack {
    pub guard: u64,
    pub bottom: u64,
    pub top: u64,
}

/// Maps a `pages`-page stack with a guard page below it; returns its bounds.
pub fn alloc(pages: u64) -> Result<KernelStack, MapError> {
    let span = (pages + 1) * FRAME_SIZE;
    let guard = NEXT.fetch_add(span, Ordering::Relaxed);
    if guard + span > STACK_AREA_BASE + STACK_AREA_SIZE {
        return Err(MapError::OutOfMemory);
    }
    let bottom = guard + FRAME_SIZE;
    for i in 0..pages {
        let pa = frame::alloc()?;
        paging::map_kernel_page(bottom + i * FRAME_SIZE, pa, paging::kernel_data_flags())?;
    }
    Ok(KernelStack { guard, bottom, top: bottom + pages * FRAME_SIZE })
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
