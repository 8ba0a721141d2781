//! What the boot loader told us, copied into kernel memory in one
//! loader-independent shape: memory map, command line, modules, ACPI RSDP.
//!
//! Multiboot2 (GRUB) is decoded with the `multiboot2` crate in the arch
//! module; the PVH start-info block (QEMU `-kernel`) is small and fixed, so it
//! is decoded here, where host tests can feed it fabricated memory.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    Usable,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Defective,
}

impl MemKind {
    /// The E820 / Multiboot2 type numbers (they agree for 1..=5).
    pub fn from_e820(kind: u32) -> MemKind {
        match kind {
            1 => MemKind::Usable,
            3 => MemKind::AcpiReclaimable,
            4 => MemKind::AcpiNvs,
            5 => MemKind::Defective,
            _ => MemKind::Reserved,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    pub start: u64,
    pub end: u64,
    pub kind: MemKind,
}

/// A string copied into a fixed buffer (truncated at a char boundary).
#[derive(Clone, Copy)]
pub struct FixedStr<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> FixedStr<N> {
    pub const fn new() -> Self {
        FixedStr { bytes: [0; N], len: 0 }
    }

    pub fn truncated(s: &str) -> Self {
        let mut out = Self::new();
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        out.len = end;
        out
    }

    /// Bytes up to the first NUL, lossily as UTF-8 (invalid input yields the valid prefix).
    pub fn from_bytes(b: &[u8]) -> Self {
        let b = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
        match core::str::from_utf8(b) {
            Ok(s) => Self::truncated(s),
            Err(e) => Self::truncated(core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or("")),
        }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy, Default)]
pub struct BootModule {
    pub start: u64,
    pub end: u64,
    pub name: FixedStr<64>,
}

pub const MAX_MEM_REGIONS: usize = 128;
pub const MAX_MODULES: usize = 16;

#[derive(Clone)]
pub struct BootInfo {
    pub loader: &'static str,
    pub memory: [MemRegion; MAX_MEM_REGIONS],
    pub memory_len: usize,
    pub cmdline: FixedStr<1024>,
    pub modules: [BootModule; MAX_MODULES],
    pub modules_len: usize,
    pub rsdp: Option<u64>,
    /// Loader memory the kernel must not reuse yet (the Multiboot2 block
    /// holds the only copy of the RSDP).
    pub keep: Option<(u64, u64)>,
}

impl BootInfo {
    pub const fn empty(loader: &'static str) -> Self {
        BootInfo {
            loader,
            memory: [MemRegion { start: 0, end: 0, kind: MemKind::Reserved }; MAX_MEM_REGIONS],
            memory_len: 0,
            cmdline: FixedStr::new(),
            modules: [BootModule { start: 0, end: 0, name: FixedStr::new() }; MAX_MODULES],
            modules_len: 0,
            rsdp: None,
            keep: None,
        }
    }

    pub fn memory(&self) -> &[MemRegion] {
        &self.memory[..self.memory_len]
    }

    pub fn modules(&self) -> &[BootModule] {
        &self.modules[..self.modules_len]
    }

    /// The module whose command line starts with the word `name`.
    pub fn module_named(&self, name: &str) -> Option<&BootModule> {
        self.modules().iter().find(|m| m.name.as_str().split_whitespace().next() == Some(name))
    }

    /// The root user program: the module named `init` (GRUB's `module2
    /// /boot/init.elf init`), else the first module (QEMU's PVH `-initrd`
    /// has no name).
    pub fn init_module(&self) -> Option<&BootModule> {
        self.module_named("init").or(self.modules().first())
    }

    /// Records a region; returns false (and drops it) when the table is full.
    pub fn push_region(&mut self, start: u64, len: u64, kind: MemKind) -> bool {
        if self.memory_len == MAX_MEM_REGIONS || len == 0 {
            return false;
        }
        self.memory[self.memory_len] = MemRegion { start, end: start.saturating_add(len), kind };
        self.memory_len += 1;
        true
    }

    pub fn push_module(&mut self, start: u64, end: u64, name: &str) -> bool {
        if self.modules_len == MAX_MODULES {
            return false;
        }
        self.modules[self.modules_len] = BootModule { start, end, name: FixedStr::truncated(name) };
        self.modules_len += 1;
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    BadMagic(u32),
    UnsupportedVersion(u32),
    NoMemoryMap,
    Multiboot2(&'static str),
}

pub const PVH_MAGIC: u32 = 0x336e_c578;

/// Reads physical memory for the PVH decoder.
pub trait PhysRead {
    fn read(&self, pa: u64, buf: &mut [u8]);
    fn u32_at(&self, pa: u64) -> u32 {
        let mut b = [0; 4];
        self.read(pa, &mut b);
        u32::from_le_bytes(b)
    }
    fn u64_at(&self, pa: u64) -> u64 {
        let mut b = [0; 8];
        self.read(pa, &mut b);
        u64::from_le_bytes(b)
    }
}

/// Decodes a Xen PVH `hvm_start_info` (version 1: with a memory map) at `pa`.
pub fn parse_pvh(mem: &dyn PhysRead, pa: u64) -> Result<BootInfo, BootInfoError> {
    let magic = mem.u32_at(pa);
    if magic != PVH_MAGIC {
        return Err(BootInfoError::BadMagic(magic));
    }
    let version = mem.u32_at(pa + 4);
    if version < 1 {
        return Err(BootInfoError::UnsupportedVersion(version));
    }
    let mut info = BootInfo::empty("PVH");
    let nr_modules = mem.u32_at(pa + 12);
    let modlist = mem.u64_at(pa + 16);
    let cmdline = mem.u64_at(pa + 24);
    let rsdp = mem.u64_at(pa + 32);
    let memmap = mem.u64_at(pa + 40);
    let memmap_entries = mem.u32_at(pa + 48);
    if cmdline != 0 {
        let mut buf = [0u8; 1024];
        mem.read(cmdline, &mut buf);
        info.cmdline = FixedStr::from_bytes(&buf);
    }
    info.rsdp = (rsdp != 0).then_some(rsdp);
    if memmap == 0 || memmap_entries == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    for i in 0..memmap_entries as u64 {
        let e = memmap + i * 24;
        info.push_region(mem.u64_at(e), mem.u64_at(e + 8), MemKind::from_e820(mem.u32_at(e + 16)));
    }
    for i in 0..nr_modules.min(MAX_MODULES as u32) as u64 {
        let m = modlist + i * 32;
        let (start, size, name_pa) = (mem.u64_at(m), mem.u64_at(m + 8), mem.u64_at(m + 16));
        let mut name = [0u8; 64];
        if name_pa != 0 {
            mem.read(name_pa, &mut name);
        }
        info.push_module(start, start + size, FixedStr::<64>::from_bytes(&name).as_str());
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct FakeMem(BTreeMap<u64, u8>);
    impl FakeMem {
        fn put(&mut self, pa: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(pa + i as u64, *b);
            }
        }
    }
    impl PhysRead for FakeMem {
        fn read(&self, pa: u64, buf: &mut [u8]) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *self.0.get(&(pa + i as u64)).unwrap_or(&0);
            }
        }
    }

    fn start_info(mem: &mut FakeMem, magic: u32) {
        let mut s = Vec::new();
        s.extend(magic.to_le_bytes());
        s.extend(1u32.to_le_bytes()); // version
        s.extend(0u32.to_le_bytes()); // flags
        s.extend(1u32.to_le_bytes()); // nr_modules
        s.extend(0x3000u64.to_le_bytes()); // modlist
        s.extend(0x2000u64.to_le_bytes()); // cmdline
        s.extend(0xf5a40u64.to_le_bytes()); // rsdp
        s.extend(0x4000u64.to_le_bytes()); // memmap
        s.extend(2u32.to_le_bytes());
        mem.put(0x1000, &s);
        mem.put(0x2000, b"log=debug test=all\0");
        let mut m = Vec::new();
        m.extend(0x100_0000u64.to_le_bytes());
        m.extend(0x2000u64.to_le_bytes());
        m.extend(0x2100u64.to_le_bytes());
        m.extend(0u64.to_le_bytes());
        mem.put(0x3000, &m);
        mem.put(0x2100, b"root.elf\0");
        let mut mm = Vec::new();
        for (a, l, t) in [(0u64, 0x9fc00u64, 1u32), (0x100000, 0x7f00000, 1)] {
            mm.extend(a.to_le_bytes());
            mm.extend(l.to_le_bytes());
            mm.extend(t.to_le_bytes());
            mm.extend(0u32.to_le_bytes());
        }
        mem.put(0x4000, &mm);
    }

    #[test]
    fn decodes_pvh_start_info() {
        let mut mem = FakeMem(BTreeMap::new());
        start_info(&mut mem, PVH_MAGIC);
        let info = parse_pvh(&mem, 0x1000).unwrap();
        assert_eq!(info.cmdline.as_str(), "log=debug test=all");
        assert_eq!(info.rsdp, Some(0xf5a40));
        assert_eq!(info.memory().len(), 2);
        assert_eq!(info.memory()[1], MemRegion { start: 0x100000, end: 0x8000000, kind: MemKind::Usable });
        assert_eq!(info.modules()[0].name.as_str(), "root.elf");
        assert_eq!(info.modules()[0].end, 0x100_2000);
    }

    #[test]
    fn finds_the_init_module() {
        let mut info = BootInfo::empty("test");
        assert!(info.init_module().is_none());
        info.push_module(0x10_0000, 0x10_1000, "");
        assert_eq!(info.init_module().unwrap().start, 0x10_0000, "unnamed first module");
        info.push_module(0x20_0000, 0x20_1000, "init verbose");
        info.push_module(0x30_0000, 0x30_1000, "init");
        assert_eq!(info.init_module().unwrap().start, 0x20_0000, "first module named init");
        assert!(info.module_named("initrd").is_none());
        let mut info = BootInfo::empty("test");
        info.push_module(0x10_0000, 0x10_1000, "ramdisk");
        info.push_module(0x20_0000, 0x20_1000, "initial");
        assert_eq!(info.init_module().unwrap().start, 0x10_0000);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut mem = FakeMem(BTreeMap::new());
        start_info(&mut mem, 0xdead);
        assert_eq!(parse_pvh(&mem, 0x1000).err(), Some(BootInfoError::BadMagic(0xdead)));
    }

    #[test]
    fn fixed_str_truncates_on_char_boundary() {
        let s = FixedStr::<4>::truncated("aéé");
        assert_eq!(s.as_str(), "aé");
        assert_eq!(FixedStr::<8>::from_bytes(b"ok\xffjunk").as_str(), "ok");
    }
}
