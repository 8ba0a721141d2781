//! Loading the root program: an ELF executable from a boot module (or from
//! the boot archive) into a fresh address space.
//!
//! The checks are the shared image contract ([`matryoshka_abi::image`]:
//! pure and host-tested there). [`run`] (bare metal only) builds the root
//! space's address space: every page of every segment in its own zeroed
//! frame mapped with the segment's rights, and a user stack of
//! [`USER_STACK_PAGES`] pages below [`USER_STACK_TOP`] with an unmapped guard
//! page under it.

pub use matryoshka_abi::image::*;

#[cfg(target_os = "none")]
pub use self::bare::*;

#[cfg(target_os = "none")]
mod bare {
    use super::*;
    use crate::arch::x86_64::paging;
    use crate::arch::x86_64::syscall::UserExit;
    use crate::mm::frame;
    use crate::object::handle::Rights;
    use crate::object::memory;
    use crate::object::space::{Object, Space};
    use crate::object::vm::Rights as VmRights;
    use crate::sched;
    use alloc::sync::Arc;

    const _: () = assert!(USER_TOP == paging::USER_TOP);

    /// Where the root program's demand-zero memory starts (for its heap and
    /// for what it lends its children through regions).
    pub const ROOT_ANONYMOUS_BASE: u64 = 0x10_0000_0000;
    /// How much of it the root may touch (frames come on first touch).
    pub const ROOT_ANONYMOUS_SIZE: u64 = 64 << 30;

    fn vm_rights(writable: bool, executable: bool) -> VmRights {
        VmRights::READ
            | if writable { VmRights::WRITE } else { VmRights::NONE }
            | if executable { VmRights::EXECUTE } else { VmRights::NONE }
    }

    /// One page of the image or stack: a zeroed frame, filled, owned by the
    /// space as anonymous memory and mapped now.
    fn map_filled(space: &Arc<Space>, va: u64, writable: bool, executable: bool, fill: impl FnOnce(&mut [u8])) -> Result<(), LoadError> {
        let pa = frame::alloc_zeroed().map_err(|_| LoadError::OutOfMemory)?;
        // SAFETY: `pa` is a fresh frame owned here, reachable through the physmap.
        fill(unsafe { core::slice::from_raw_parts_mut(paging::phys_to_virt(pa) as *mut u8, PAGE_SIZE as usize) });
        if memory::install_anonymous(space, va, pa, writable, executable).is_err() {
            // The space owns the frame now and frees it when destroyed.
            return Err(LoadError::OutOfMemory);
        }
        Ok(())
    }

    /// Where the root program finds the boot modules: a table page, then
    /// each module's bytes (read-only, page-aligned), copied into memory the
    /// root owns so it can lend them to its children as regions.
    pub const MODULES_BASE: u64 = 0x8_0000_0000;
    /// Room for the table and all modules.
    pub const MODULES_MAX_BYTES: u64 = 256 << 20;

    /// Copies the boot modules into the root's module area. Table layout
    /// (u64 words): count, then per module {va, size, name[56 bytes]}.
    fn populate_modules(space: &Arc<Space>) -> Result<(), LoadError> {
        let modules = crate::boot_modules();
        let mut table = [0u8; PAGE_SIZE as usize];
        table[..8].copy_from_slice(&(modules.len().min(MAX_MODULES_LISTED) as u64).to_le_bytes());
        let mut next = MODULES_BASE + PAGE_SIZE;
        for (i, m) in modules.iter().take(MAX_MODULES_LISTED).enumerate() {
            let size = m.end.saturating_sub(m.start);
            let pages = size.div_ceil(PAGE_SIZE).max(1);
            if next + pages * PAGE_SIZE > MODULES_BASE + MODULES_MAX_BYTES {
                break;
            }
            // SAFETY: boot modules stay in RAM the frame allocator never hands out.
            let bytes = unsafe { core::slice::from_raw_parts(paging::phys_to_virt(m.start) as *const u8, size as usize) };
            memory::add(|g| g.grant_anonymous(space.vm_id(), next, pages * PAGE_SIZE, VmRights::READ))
                .map_err(|_| LoadError::OutOfMemory)?;
            for p in 0..pages {
                let lo = (p * PAGE_SIZE) as usize;
                let hi = ((p + 1) * PAGE_SIZE).min(size) as usize;
                map_filled(space, next + p * PAGE_SIZE, false, false, |dst| {
                    if lo < hi {
                        dst[..hi - lo].copy_from_slice(&bytes[lo..hi]);
                    }
                })?;
            }
            let entry = 8 + i * 72;
            table[entry..entry + 8].copy_from_slice(&next.to_le_bytes());
            table[entry + 8..entry + 16].copy_from_slice(&size.to_le_bytes());
            let name = m.name.as_str().as_bytes();
            let n = name.len().min(55);
            table[entry + 16..entry + 16 + n].copy_from_slice(&name[..n]);
            next += pages * PAGE_SIZE;
        }
        memory::add(|g| g.grant_anonymous(space.vm_id(), MODULES_BASE, PAGE_SIZE, VmRights::READ)).map_err(|_| LoadError::OutOfMemory)?;
        map_filled(space, MODULES_BASE, false, false, |dst| dst.copy_from_slice(&table))
    }

    /// Modules the table page can describe.
    const MAX_MODULES_LISTED: usize = 56;

    /// Gives the space the image, the stack and its demand-zero memory, all
    /// as anonymous memory grants in the composition engine, so the program
    /// can export any of it to its children as regions.
    fn populate(space: &Arc<Space>, data: &[u8], image: &Image) -> Result<(), LoadError> {
        let id = space.vm_id();
        for s in image.segments() {
            let (start, end) = s.pages();
            memory::add(|g| g.grant_anonymous(id, start, end - start, vm_rights(s.writable, s.executable)))
                .map_err(|_| LoadError::OutOfMemory)?;
            let file = &data[s.offset as usize..(s.offset + s.filesz) as usize];
            for page in (start..end).step_by(PAGE_SIZE as usize) {
                map_filled(space, page, s.writable, s.executable, |dst| {
                    // The part of [vaddr, vaddr+filesz) on this page.
                    let lo = s.vaddr.max(page);
                    let hi = (s.vaddr + s.filesz).min(page + PAGE_SIZE);
                    if lo < hi {
                        let src = &file[(lo - s.vaddr) as usize..(hi - s.vaddr) as usize];
                        dst[(lo - page) as usize..(hi - page) as usize].copy_from_slice(src);
                    }
                })?;
            }
        }
        memory::add(|g| g.grant_anonymous(id, USER_STACK_BOTTOM, USER_STACK_TOP - USER_STACK_BOTTOM, VmRights::RW))
            .map_err(|_| LoadError::OutOfMemory)?;
        for page in (USER_STACK_BOTTOM..USER_STACK_TOP).step_by(PAGE_SIZE as usize) {
            map_filled(space, page, true, false, |_| {})?;
        }
        // Read, write and execute: the root lends this memory to the
        // programs it loads, whose mappings pick W or X per segment (and a
        // page is never installed both writable and executable).
        memory::add(|g| {
            g.grant_anonymous(id, ROOT_ANONYMOUS_BASE, ROOT_ANONYMOUS_SIZE, VmRights::READ | VmRights::WRITE | VmRights::EXECUTE)
        })
        .map_err(|_| LoadError::OutOfMemory)?;
        populate_modules(space)
    }

    /// Loads `data` as the root program: a root space holding a handle to
    /// itself (passed to the program in rdi; every right but DESTROY), the
    /// image and a stack. Runs its first thread until it exits or faults,
    /// then destroys the space with everything the program created.
    pub fn run(data: &[u8]) -> Result<UserExit, LoadError> {
        run_with_flags(data, 0)
    }

    /// Start flag: boot the system (file server, process manager, shell)
    /// instead of running the root program's checks.
    pub const START_SYSTEM: u64 = 32;

    /// `run` with start flags for the program in rsi (bit 0: run benchmarks;
    /// bit 1: the IPC fast path is off, which the loader sets itself).
    pub fn run_with_flags(data: &[u8], flags: u64) -> Result<UserExit, LoadError> {
        let flags = if sched::direct_handoff_enabled() { flags } else { flags | 2 };
        let image = parse(data)?;
        let space = Space::new(None).map_err(|_| LoadError::OutOfMemory)?;
        if let Err(e) = populate(&space, data, &image) {
            space.destroy();
            return Err(e);
        }
        let own_rights = Rights::from_bits(Rights::ALL.bits() & !Rights::DESTROY.bits()).unwrap_or(Rights::NONE);
        let started = space
            .insert(Object::Space(space.clone()), own_rights)
            .map_err(|_| LoadError::OutOfMemory)
            .and_then(|me| space.spawn_thread(image.entry, USER_STACK_TOP - 8, (me.raw(), flags)).map_err(|_| LoadError::OutOfMemory));
        let exit = started.map(|main| {
            let exit = sched::join(&main);
            drop(main);
            exit
        });
        space.destroy();
        drop(space);
        sched::reap_all(10);
        exit
    }
}
