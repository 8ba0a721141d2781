//! Decodes whichever boot protocol started us into [`crate::bootinfo::BootInfo`].

use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};

use super::paging::{phys_to_virt, PHYSMAP_BASE};
use crate::bootinfo::{parse_pvh, BootInfo, BootInfoError, MemKind, PhysRead, PVH_MAGIC};

pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

struct Physmap;

impl PhysRead for Physmap {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        // SAFETY: the boot page tables map the low 4 GiB at PHYSMAP_BASE, and
        // loaders put their boot information below 4 GiB.
        unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(pa) as *const u8, buf.as_mut_ptr(), buf.len()) };
    }
}

/// `magic` and `info_pa` are the `eax` and `ebx` the loader entered with.
pub fn decode(magic: u32, info_pa: u32) -> Result<BootInfo, BootInfoError> {
    if magic == MULTIBOOT2_MAGIC {
        return decode_multiboot2(info_pa as u64);
    }
    if Physmap.u32_at(info_pa as u64) == PVH_MAGIC {
        return parse_pvh(&Physmap, info_pa as u64);
    }
    Err(BootInfoError::BadMagic(magic))
}

fn decode_multiboot2(pa: u64) -> Result<BootInfo, BootInfoError> {
    let ptr = phys_to_virt(pa) as *const BootInformationHeader;
    // SAFETY: GRUB passed this address with the Multiboot2 magic; the crate
    // checks the header's size and tag structure.
    let mbi = unsafe { BootInformation::load(ptr) }.map_err(|_| BootInfoError::Multiboot2("malformed boot information"))?;
    let mut info = BootInfo::empty("Multiboot2");
    info.keep = Some((pa, pa + mbi.total_size() as u64));
    if let Some(name) = mbi.boot_loader_name_tag().and_then(|t| t.name().ok()) {
        if name.starts_with("GRUB") {
            info.loader = "Multiboot2 (GRUB)";
        }
    }
    if let Some(cmdline) = mbi.command_line_tag().and_then(|t| t.cmdline().ok()) {
        info.cmdline = crate::bootinfo::FixedStr::truncated(cmdline);
    }
    let mmap = mbi.memory_map_tag().ok_or(BootInfoError::NoMemoryMap)?;
    for area in mmap.memory_areas() {
        let kind = match area.typ() {
            MemoryAreaType::Available => MemKind::Usable,
            MemoryAreaType::AcpiAvailable => MemKind::AcpiReclaimable,
            MemoryAreaType::ReservedHibernate => MemKind::AcpiNvs,
            MemoryAreaType::Defective => MemKind::Defective,
            _ => MemKind::Reserved,
        };
        info.push_region(area.start_address(), area.size(), kind);
    }
    for module in mbi.module_tags() {
        info.push_module(module.start_address() as u64, module.end_address() as u64, module.cmdline().unwrap_or(""));
    }
    // Multiboot2 hands us a copy of the RSDP inside the tag (8 bytes of tag header first).
    let rsdp_copy = mbi
        .rsdp_v2_tag()
        .map(|t| t as *const _ as *const u8 as u64)
        .or_else(|| mbi.rsdp_v1_tag().map(|t| t as *const _ as *const u8 as u64));
    info.rsdp = rsdp_copy.map(|va| va + 8 - PHYSMAP_BASE);
    Ok(info)
}
