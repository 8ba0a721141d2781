//! 4-level x86_64 page tables: the kernel's address space and the helpers
//! that edit it.
//!
//! Kernel virtual layout:
//! * `PHYSMAP_BASE` (PML4 256): all physical memory, RW, NX, 2 MiB pages.
//! * `STACK_AREA_BASE`: kernel stacks, each under an unmapped guard page.
//! * `HEAP_BASE`: the kernel heap, grown on demand.
//! * `MMIO_BASE`: device registers, uncached.
//! * `-2 GiB`: the kernel image, text RX, rodata R, data/bss RW+NX.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::mm::frame::{self, FrameError, FRAME_SIZE};

pub const PHYSMAP_BASE: u64 = 0xffff_8000_0000_0000;
pub const STACK_AREA_BASE: u64 = 0xffff_ff00_0000_0000;
pub const STACK_AREA_SIZE: u64 = 0x40_0000_0000;
pub const HEAP_BASE: u64 = 0xffff_ff80_0000_0000;
pub const HEAP_MAX_SIZE: u64 = 1 << 30;
pub const MMIO_BASE: u64 = 0xffff_ffc0_0000_0000;
pub const TEST_AREA_BASE: u64 = 0xffff_ffd0_0000_0000;
pub const KERNEL_VMA_OFFSET: u64 = 0xffff_ffff_8000_0000;

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const WRITE_THROUGH: u64 = 1 << 3;
pub const CACHE_DISABLE: u64 = 1 << 4;
pub const HUGE: u64 = 1 << 7;
pub const GLOBAL: u64 = 1 << 8;
pub const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);
/// Serializes edits of the kernel's shared page tables.
static KERNEL_PT_LOCK: spin::Mutex<()> = spin::Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    AlreadyMapped,
    NotMapped,
    /// The range runs into a 2 MiB mapping that cannot be split here.
    HugePageInTheWay,
}

impl From<FrameError> for MapError {
    fn from(_: FrameError) -> Self {
        MapError::OutOfMemory
    }
}

pub fn phys_to_virt(pa: u64) -> u64 {
    PHYSMAP_BASE + pa
}

/// Physical address of a kernel-image symbol (the image is loaded at a fixed offset).
pub fn kernel_image_virt_to_phys(va: u64) -> u64 {
    va - KERNEL_VMA_OFFSET
}

fn nx() -> u64 {
    if super::cpu::nx_supported() {
        NO_EXECUTE
    } else {
        0
    }
}

/// The page table at `pa`, which may be a CR3 token (a top-level table
/// with its PCID and no-flush bit: `pcid::token`).
fn table(pa: u64) -> &'static mut [u64; 512] {
    // SAFETY: page-table frames are reached through the physmap, which maps
    // all physical memory; edits are serialized by KERNEL_PT_LOCK (or happen
    // before any other CPU runs).
    unsafe { &mut *(phys_to_virt(pa & ADDR_MASK) as *mut [u64; 512]) }
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// First address above the user half of every address space.
pub const USER_TOP: u64 = 0x0000_8000_0000_0000;

fn next_table(entry: &mut u64, create: bool, user: bool) -> Result<Option<u64>, MapError> {
    if *entry & PRESENT != 0 {
        if *entry & HUGE != 0 {
            return Err(MapError::HugePageInTheWay);
        }
        return Ok(Some(*entry & ADDR_MASK));
    }
    if !create {
        return Ok(None);
    }
    let frame = frame::alloc_zeroed()?;
    // Intermediate entries are permissive; the leaf decides the rights.
    *entry = frame | PRESENT | WRITABLE | if user { USER } else { 0 };
    if !user {
        KERNEL_TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Some(frame))
}

/// Page-table frames of the kernel half made since boot. The kernel keeps
/// them for good (nothing frees a kernel-half table), so a frame count that
/// checks for leaks adds them back (`kernel_table_frames`).
static KERNEL_TABLE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// How many page-table frames the kernel half has grown by (kept for good:
/// new kernel-stack slots, the heap window); see `KERNEL_TABLE_FRAMES`.
pub fn kernel_table_frames() -> u64 {
    KERNEL_TABLE_FRAMES.load(Ordering::Relaxed)
}

fn walk_to_leaf(root: u64, va: u64, create: bool, leaf_level: u32) -> Result<Option<&'static mut u64>, MapError> {
    let mut table_pa = root;
    for level in (leaf_level + 1..=4).rev() {
        let entry = &mut table(table_pa)[index(va, level)];
        match next_table(entry, create, va < USER_TOP)? {
            Some(next) => table_pa = next,
            None => return Ok(None),
        }
    }
    Ok(Some(&mut table(table_pa)[index(va, leaf_level)]))
}

fn map_in(root: u64, va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
    let entry = walk_to_leaf(root, va, true, 1)?.ok_or(MapError::OutOfMemory)?;
    if *entry & PRESENT != 0 {
        return Err(MapError::AlreadyMapped);
    }
    *entry = (pa & ADDR_MASK) | flags | PRESENT;
    Ok(())
}

fn map_2m_in(root: u64, va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
    let entry = walk_to_leaf(root, va, true, 2)?.ok_or(MapError::OutOfMemory)?;
    if *entry & PRESENT != 0 {
        return Err(MapError::AlreadyMapped);
    }
    *entry = (pa & ADDR_MASK) | flags | PRESENT | HUGE;
    Ok(())
}

/// Makes `root` (a user space's CR3 token from `new_user_root`, or 0 for
/// the kernel's own table) this CPU's address space, unless it already is.
/// With PCID the load keeps the TLB (the token has bit 63 set).
///
/// # Safety
/// `root` is 0 or the token of a live top-level table made by
/// `new_user_root` (every address space shares the kernel half, where the
/// caller's code and stack live), which stays live while this CPU runs on it.
#[inline]
pub unsafe fn switch_address_space(root: u64) {
    let want = if root != 0 { root } else { KERNEL_CR3.load(Ordering::Relaxed) };
    // CR3 reads back the table and the tag, never bit 63.
    if super::cpu::read_cr3() != want & !super::pcid::NO_FLUSH {
        count_cr3_load();
        // SAFETY: the caller's contract.
        unsafe { super::cpu::write_cr3(want) };
    }
}

/// The kernel's own table as CR3 is loaded with it (`pcid::token`, tag 0).
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);

/// Fixes the kernel table's CR3 token once `pcid::decide` has run (before
/// any CPU switches address spaces).
pub fn set_kernel_token() {
    KERNEL_CR3.store(super::pcid::token(kernel_root(), 0), Ordering::Relaxed);
}

/// CR3 loads on each CPU. Without PCID every load flushes the TLB's
/// non-global entries; with it none does (every token has bit 63).
static CR3_LOADS: [AtomicU64; super::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; super::percpu::MAX_CPUS];

#[inline(always)]
fn count_cr3_load() {
    // Only this CPU writes its count: no read-modify-write needed.
    let c = &CR3_LOADS[super::percpu::this_cpu_index()];
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Address-space switches outside the IPC fast path that loaded CR3 so
/// far, on all CPUs (the fast path counts its own: `sched::fast_cr3_loads`).
pub fn cr3_loads() -> u64 {
    CR3_LOADS.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Loads user space `next` in place of `current`, which this CPU runs on
/// now (known, so CR3 is not read back: the fast path's switch). Both are
/// CR3 tokens: with PCID `next` carries its tag and bit 63, so the load
/// keeps the TLB, and the instructions are the same either way.
///
/// # Safety
/// As `switch_address_space`, and `current` is CR3's table now.
#[inline(always)]
pub unsafe fn switch_user_space_from(current: u64, next: u64, loads: &AtomicU64) {
    if next != current {
        // The caller's per-CPU count (the fast path has its CPU's record at
        // hand; finding it here cost a dozen instructions a leg).
        loads.store(loads.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // SAFETY: the caller's contract.
        unsafe { super::cpu::write_cr3(next) };
    }
}

pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Acquire)
}

/// With PCID every kernel page is global: shared by all tags, so an INVLPG
/// of it reaches every tag's entry (`pcid`). Without PCID kernel pages are
/// mapped as they always were.
fn kernel_global() -> u64 {
    if super::pcid::enabled() {
        GLOBAL
    } else {
        0
    }
}

/// Maps one 4 KiB page into the kernel's address space.
pub fn map_kernel_page(va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
    let _guard = KERNEL_PT_LOCK.lock();
    map_in(kernel_root(), va, pa, flags | kernel_global())
}

/// Removes a kernel mapping and returns the frame it pointed at. The caller
/// flushes TLBs (`tlb::shootdown`) before reusing the frame.
pub fn unmap_kernel_page(va: u64) -> Result<u64, MapError> {
    let _guard = KERNEL_PT_LOCK.lock();
    let entry = walk_to_leaf(kernel_root(), va, false, 1)?.ok_or(MapError::NotMapped)?;
    if *entry & PRESENT == 0 {
        return Err(MapError::NotMapped);
    }
    let pa = *entry & ADDR_MASK;
    *entry = 0;
    Ok(pa)
}

/// Rewrites an existing kernel mapping to point at another frame.
pub fn remap_kernel_page(va: u64, pa: u64, flags: u64) -> Result<u64, MapError> {
    let _guard = KERNEL_PT_LOCK.lock();
    let entry = walk_to_leaf(kernel_root(), va, false, 1)?.ok_or(MapError::NotMapped)?;
    if *entry & PRESENT == 0 {
        return Err(MapError::NotMapped);
    }
    let old = *entry & ADDR_MASK;
    *entry = (pa & ADDR_MASK) | flags | kernel_global() | PRESENT;
    Ok(old)
}

/// The leaf entry that maps `va` in the kernel's tables and its level (1 = 4 KiB, 2 = 2 MiB).
fn walk(va: u64) -> Option<(u64, u32)> {
    let root = kernel_root();
    let mut table_pa = if root == 0 { super::cpu::read_cr3() & ADDR_MASK } else { root };
    for level in (1..=4).rev() {
        let entry = table(table_pa)[index(va, level)];
        if entry & PRESENT == 0 {
            return None;
        }
        if level == 1 || entry & HUGE != 0 {
            return Some((entry, level));
        }
        table_pa = entry & ADDR_MASK;
    }
    None
}

/// The leaf entry (flags included) that maps `va`, if any.
pub fn lookup(va: u64) -> Option<u64> {
    walk(va).map(|(entry, _)| entry)
}

/// Physical address that `va` maps to in the kernel's tables.
pub fn translate(va: u64) -> Option<u64> {
    let (entry, level) = walk(va)?;
    let page_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
    Some((entry & ADDR_MASK & !page_mask) | (va & page_mask))
}

pub fn is_mapped(va: u64) -> bool {
    translate(va).is_some()
}

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static boot_stack_guard: u8;
}

pub struct KernelSections {
    pub text: (u64, u64),
    pub rodata: (u64, u64),
    pub data: (u64, u64),
}

pub fn kernel_sections() -> KernelSections {
    KernelSections {
        text: (core::ptr::addr_of!(__text_start) as u64, core::ptr::addr_of!(__text_end) as u64),
        rodata: (core::ptr::addr_of!(__rodata_start) as u64, core::ptr::addr_of!(__rodata_end) as u64),
        data: (core::ptr::addr_of!(__data_start) as u64, core::ptr::addr_of!(__data_end) as u64),
    }
}

/// Builds the kernel's own page tables (physmap, W^X image, guard page under
/// the boot stack) and switches to them. `phys_limit` is the end of the
/// highest physical range to map in the physmap.
pub fn init_kernel_address_space(phys_limit: u64, global_pages: bool) -> Result<(), MapError> {
    let root = frame::alloc_zeroed_below(1 << 32)?;
    let global = if global_pages { GLOBAL } else { 0 };
    let physmap_end = phys_limit.max(1 << 32).next_multiple_of(2 << 20);
    let mut pa = 0;
    while pa < physmap_end {
        map_2m_in(root, PHYSMAP_BASE + pa, pa, WRITABLE | nx() | global)?;
        pa += 2 << 20;
    }
    let sections = kernel_sections();
    let guard = core::ptr::addr_of!(boot_stack_guard) as u64;
    let map_range = |(start, end): (u64, u64), flags: u64| -> Result<(), MapError> {
        let mut va = start;
        while va < end {
            if va != guard {
                map_in(root, va, kernel_image_virt_to_phys(va), flags | global)?;
            }
            va += FRAME_SIZE;
        }
        Ok(())
    };
    map_range(sections.text, 0)?;
    map_range(sections.rodata, nx())?;
    map_range(sections.data, WRITABLE | nx())?;
    // Every upper-half PML4 slot gets its table now and never changes, so
    // user address spaces can share the kernel half by copying these slots.
    for slot in 256..512 {
        if table(root)[slot] & PRESENT == 0 {
            table(root)[slot] = frame::alloc_zeroed()? | PRESENT | WRITABLE;
        }
    }
    KERNEL_ROOT.store(root, Ordering::Release);
    // SAFETY: the new tables map the running code, rodata, data, bss (boot
    // stack included) and the physmap; the identity map is no longer used.
    unsafe {
        if global_pages {
            super::cpu::write_cr4(super::cpu::read_cr4() | (1 << 7));
        }
        super::cpu::write_cr3(root);
    }
    Ok(())
}

/// Temporarily identity-maps the low 2 MiB, executable, so application
/// processors can turn paging on inside the trampoline at 0x8000.
pub fn set_low_identity_map(enabled: bool) -> Result<(), MapError> {
    let _guard = KERNEL_PT_LOCK.lock();
    let root = table(kernel_root());
    if enabled {
        let pdpt = frame::alloc_zeroed_below(1 << 32)?;
        let pd = frame::alloc_zeroed_below(1 << 32)?;
        table(pd)[0] = PRESENT | WRITABLE | HUGE;
        table(pdpt)[0] = pd | PRESENT | WRITABLE;
        root[0] = pdpt | PRESENT | WRITABLE;
    } else if root[0] & PRESENT != 0 {
        let pdpt = root[0] & ADDR_MASK;
        let pd = table(pdpt)[0] & ADDR_MASK;
        root[0] = 0;
        let _ = frame::free(pd);
        let _ = frame::free(pdpt);
    }
    super::pcid::count_full_flush();
    // SAFETY: reloading CR3 with the same root (tag 0, bit 63 clear) only
    // flushes non-global TLB entries.
    unsafe { super::cpu::write_cr3(kernel_root()) };
    Ok(())
}

/// Maps a device's registers uncached into the MMIO window.
pub fn map_mmio(slot: u64, pa: u64) -> Result<u64, MapError> {
    let va = MMIO_BASE + slot * FRAME_SIZE;
    map_kernel_page(va, pa, WRITABLE | CACHE_DISABLE | WRITE_THROUGH | nx())?;
    Ok(va)
}

pub fn kernel_data_flags() -> u64 {
    WRITABLE | nx()
}

/// A fresh address space: an empty user half and the shared kernel half.
/// Returns its CR3 token (`pcid::token`: the table's address, plus its own
/// PCID and the no-flush bit when the kernel tags address spaces), which
/// every function here taking a `root` accepts. With PCID, OutOfMemory also
/// means that 4095 spaces are alive, each holding a tag.
pub fn new_user_root() -> Result<u64, MapError> {
    let tag = super::pcid::allocate_tag().ok_or(MapError::OutOfMemory)?;
    let root = match frame::alloc_zeroed() {
        Ok(root) => root,
        Err(e) => {
            super::pcid::retire_tag(tag);
            return Err(e.into());
        }
    };
    let kernel = table(kernel_root());
    table(root)[256..].copy_from_slice(&kernel[256..]);
    Ok(super::pcid::token(root, tag))
}

/// The PCID of an address space (`new_user_root`'s token); 0 without PCID.
pub fn root_tag(root: u64) -> u16 {
    super::pcid::tag_of(root)
}

/// Maps a user page (`va` below `USER_TOP`) into the address space `root`.
pub fn map_user_page(root: u64, va: u64, pa: u64, writable: bool, executable: bool) -> Result<(), MapError> {
    if va >= USER_TOP || !va.is_multiple_of(FRAME_SIZE) {
        return Err(MapError::NotMapped);
    }
    let flags = USER | if writable { WRITABLE } else { 0 } | if executable { 0 } else { nx() };
    map_in(root, va, pa, flags)
}

/// The leaf entry for user address `va` in `root`, if present and user-accessible.
pub fn user_entry(root: u64, va: u64) -> Option<u64> {
    if va >= USER_TOP {
        return None;
    }
    let mut table_pa = root;
    for level in (1..=4).rev() {
        let entry = table(table_pa)[index(va, level)];
        if entry & PRESENT == 0 || entry & USER == 0 {
            return None;
        }
        if level == 1 {
            return Some(entry);
        }
        if entry & HUGE != 0 {
            return None; // user memory is mapped with 4 KiB pages only
        }
        table_pa = entry & ADDR_MASK;
    }
    None
}

/// The frame a page-table entry maps.
pub fn entry_frame(entry: u64) -> u64 {
    entry & ADDR_MASK
}

/// Maps `pa` at user page `va` in `root`, replacing whatever was there.
pub fn set_user_page(root: u64, va: u64, pa: u64, writable: bool, executable: bool) -> Result<(), MapError> {
    if va >= USER_TOP || !va.is_multiple_of(FRAME_SIZE) {
        return Err(MapError::NotMapped);
    }
    let flags = USER | if writable { WRITABLE } else { 0 } | if executable { 0 } else { nx() };
    let entry = walk_to_leaf(root, va, true, 1)?.ok_or(MapError::OutOfMemory)?;
    *entry = (pa & ADDR_MASK) | flags | PRESENT;
    Ok(())
}

/// Clears every user PTE in `[start, start + size)` of `root` without
/// freeing the frames (their owner does). The caller shoots TLBs down.
pub fn unmap_user_range(root: u64, start: u64, size: u64) {
    const CHUNK: u64 = 2 << 20;
    let end = start.saturating_add(size).min(USER_TOP);
    let mut va = start & !(FRAME_SIZE - 1);
    while va < end {
        let chunk_end = ((va | (CHUNK - 1)) + 1).min(end);
        // One walk per 2 MiB to its page table, then the entries in a row
        // (a walk per page made discarding a 64 MiB slot cost ~100k
        // instructions); no table (or a 2 MiB page) here: nothing to clear.
        if let Ok(Some(pde)) = walk_to_leaf(root, va, false, 2) {
            if *pde & PRESENT != 0 && *pde & HUGE == 0 {
                let pt = table(*pde & ADDR_MASK);
                let (first, last) = (index(va, 1), index(chunk_end - 1, 1));
                for entry in &mut pt[first..=last] {
                    *entry = 0;
                }
            }
        }
        va = chunk_end;
    }
}

/// Frees the user half of `root` (its page tables and, with `free_leaves`,
/// the frames they map) and the root itself, and retires its PCID (reused
/// only after every CPU flushed it). The caller makes sure no CPU runs on
/// `root` any more.
pub fn destroy_user_root_with(root: u64, free_leaves: bool) {
    fn free_level(table_pa: u64, level: u32, free_leaves: bool) {
        for i in 0..512 {
            let e = table(table_pa)[i];
            if e & PRESENT == 0 {
                continue;
            }
            if level > 1 {
                free_level(e & ADDR_MASK, level - 1, free_leaves);
                let _ = frame::free(e & ADDR_MASK);
            } else if free_leaves {
                let _ = frame::free(e & ADDR_MASK);
            }
        }
    }
    for i in 0..256 {
        let e = table(root)[i];
        if e & PRESENT != 0 {
            free_level(e & ADDR_MASK, 3, free_leaves);
            let _ = frame::free(e & ADDR_MASK);
        }
    }
    let _ = frame::free(root & ADDR_MASK);
    super::pcid::retire_tag(super::pcid::tag_of(root));
}

/// Frees the user half of `root`, the frames it maps included.
pub fn destroy_user_root(root: u64) {
    destroy_user_root_with(root, true);
}
