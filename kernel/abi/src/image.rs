//! The executable-image contract: what a Matryoshka user program file must
//! look like, checked completely before anything is allocated. Both the
//! kernel (which loads the root program) and the user-level loaders of the
//! nester library use [`parse`], so a program either loads everywhere or is
//! refused everywhere with the same reason.
//!
//! A little-endian ELF64 `ET_EXEC` for x86_64, every `PT_LOAD` inside the
//! file and inside the user image area, no segment both writable and
//! executable, no two segments on one page, sane sizes, the entry point in
//! the file bytes of an executable segment, nothing that needs a dynamic
//! linker or TLS. Pure and host-tested.

use elf::abi::{EM_X86_64, ET_EXEC, PF_W, PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_TLS};
use elf::endian::LittleEndian;
use elf::file::Class;
use elf::ElfBytes;

pub const PAGE_SIZE: u64 = 4096;
/// End of the user half (paging::USER_TOP; checked equal on bare metal).
pub const USER_TOP: u64 = 0x0000_8000_0000_0000;
/// The user stack ends here (exclusive).
pub const USER_STACK_TOP: u64 = 0x7fff_0000;
/// Pages of user stack mapped below [`USER_STACK_TOP`].
pub const USER_STACK_PAGES: u64 = 16;
/// Lowest stack page.
pub const USER_STACK_BOTTOM: u64 = USER_STACK_TOP - USER_STACK_PAGES * PAGE_SIZE;
/// The unmapped guard page under the stack.
pub const USER_STACK_GUARD: u64 = USER_STACK_BOTTOM - PAGE_SIZE;
/// Most loadable segments an image may have.
pub const MAX_SEGMENTS: usize = 16;
/// Most memory (all segments together) an image may ask for.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// Why an image was refused (or could not be loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// The ELF header or program header table is cut short or inconsistent.
    Malformed,
    /// Not a 64-bit ELF file.
    Not64Bit,
    /// Not for x86_64 (the `e_machine` found).
    WrongMachine(u16),
    /// Not a static executable (`ET_EXEC`; the `e_type` found).
    NotExecutable(u16),
    /// A program header this loader cannot honour (dynamic linking, TLS).
    Unsupported { index: usize, p_type: u32 },
    /// No loadable segment with a non-zero size.
    NoSegments,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// A segment's file bytes lie outside the file.
    OutsideFile { index: usize },
    /// A segment lies outside the user image area (null page, the stack, the kernel half).
    OutsideUserArea { index: usize },
    /// A segment is both writable and executable (W^X).
    WritableAndExecutable { index: usize },
    /// File size larger than memory size, or a size beyond [`MAX_IMAGE_BYTES`].
    BadSize { index: usize },
    /// Two segments share a page.
    Overlap { index: usize },
    /// The entry point is not in the file bytes of an executable segment.
    BadEntry(u64),
    /// Out of frames or page tables while building the address space.
    OutOfMemory,
}

/// One loadable segment, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub writable: bool,
    pub executable: bool,
}

impl Segment {
    /// First page and end of the last page ([start, end), page-aligned).
    pub fn pages(&self) -> (u64, u64) {
        (self.vaddr & !(PAGE_SIZE - 1), (self.vaddr + self.memsz).next_multiple_of(PAGE_SIZE))
    }
}

/// A checked image: where to start and what to map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl Image {
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }
}

/// Checks `data` as a user program and returns its segments.
pub fn parse(data: &[u8]) -> Result<Image, LoadError> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(data).map_err(|_| LoadError::Malformed)?;
    let h = &file.ehdr;
    if h.class != Class::ELF64 {
        return Err(LoadError::Not64Bit);
    }
    if h.e_machine != EM_X86_64 {
        return Err(LoadError::WrongMachine(h.e_machine));
    }
    if h.e_type != ET_EXEC {
        return Err(LoadError::NotExecutable(h.e_type));
    }
    let mut image = Image { entry: h.e_entry, segments: [Segment::default(); MAX_SEGMENTS], count: 0 };
    let mut total: u64 = 0;
    let table = file.segments().ok_or(LoadError::NoSegments)?;
    for (index, ph) in table.iter().enumerate() {
        if matches!(ph.p_type, PT_INTERP | PT_DYNAMIC | PT_TLS) {
            return Err(LoadError::Unsupported { index, p_type: ph.p_type });
        }
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or(LoadError::OutsideFile { index })?;
        if file_end > data.len() as u64 {
            return Err(LoadError::OutsideFile { index });
        }
        if ph.p_filesz > ph.p_memsz || ph.p_memsz > MAX_IMAGE_BYTES {
            return Err(LoadError::BadSize { index });
        }
        let end = ph.p_vaddr.checked_add(ph.p_memsz).ok_or(LoadError::OutsideUserArea { index })?;
        if ph.p_vaddr < PAGE_SIZE || end > USER_STACK_GUARD {
            return Err(LoadError::OutsideUserArea { index });
        }
        let (writable, executable) = (ph.p_flags & PF_W != 0, ph.p_flags & PF_X != 0);
        if writable && executable {
            return Err(LoadError::WritableAndExecutable { index });
        }
        let seg = Segment { vaddr: ph.p_vaddr, memsz: ph.p_memsz, offset: ph.p_offset, filesz: ph.p_filesz, writable, executable };
        let (start, end) = seg.pages();
        total += end - start;
        if total > MAX_IMAGE_BYTES {
            return Err(LoadError::BadSize { index });
        }
        if image.segments().iter().any(|s| {
            let (s0, s1) = s.pages();
            start < s1 && s0 < end
        }) {
            return Err(LoadError::Overlap { index });
        }
        if image.count == MAX_SEGMENTS {
            return Err(LoadError::TooManySegments);
        }
        image.segments[image.count] = seg;
        image.count += 1;
    }
    if image.count == 0 {
        return Err(LoadError::NoSegments);
    }
    let entry = image.entry;
    if !image.segments().iter().any(|s| s.executable && entry >= s.vaddr && entry - s.vaddr < s.filesz) {
        return Err(LoadError::BadEntry(entry));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// (p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz)
    type Ph = (u32, u32, u64, u64, u64, u64);

    const R: u32 = 4;
    const RX: u32 = 5;
    const RW: u32 = 6;

    /// A little ELF64 file: header, program headers, then zeros up to `len`.
    fn elf(e_type: u16, machine: u16, entry: u64, phs: &[Ph], len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(64 + 56 * phs.len())];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELF64
        f[5] = 1; // little endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&e_type.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        for (i, &(t, flags, off, va, filesz, memsz)) in phs.iter().enumerate() {
            let p = 64 + 56 * i;
            f[p..p + 4].copy_from_slice(&t.to_le_bytes());
            f[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&va.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&va.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            f[p + 48..p + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        }
        f
    }

    /// Like init: text, rodata, data+bss on their own pages at 0x400000.
    fn good_segments() -> Vec<Ph> {
        vec![
            (PT_LOAD, RX, 0x1000, 0x40_0000, 0x18c5, 0x18c5),
            (PT_LOAD, R, 0x3000, 0x40_2000, 0x48c, 0x48c),
            (PT_LOAD, RW, 0x4000, 0x40_3000, 0x50, 0x1008),
            (0x6474_e551, RW, 0, 0, 0, 0), // PT_GNU_STACK: ignored
        ]
    }

    fn exec(phs: &[Ph]) -> Vec<u8> {
        elf(ET_EXEC, EM_X86_64, 0x40_0000, phs, 0x5000)
    }

    fn with(i: usize, f: impl FnOnce(&mut Ph)) -> Vec<u8> {
        let mut phs = good_segments();
        f(&mut phs[i]);
        exec(&phs)
    }

    #[test]
    fn accepts_a_static_executable() {
        let image = parse(&exec(&good_segments())).unwrap();
        assert_eq!(image.entry, 0x40_0000);
        assert_eq!(image.segments().len(), 3);
        let s = image.segments()[2];
        assert_eq!(s, Segment { vaddr: 0x40_3000, memsz: 0x1008, offset: 0x4000, filesz: 0x50, writable: true, executable: false });
        assert_eq!(s.pages(), (0x40_3000, 0x40_5000));
        assert!(image.segments()[0].executable && !image.segments()[0].writable);
    }

    #[test]
    fn refuses_other_files() {
        assert_eq!(parse(b""), Err(LoadError::Malformed));
        assert_eq!(
            parse(b"#!/bin/sh\necho hello, world\n........................................................"),
            Err(LoadError::Malformed)
        );
        let good = exec(&good_segments());
        assert_eq!(parse(&good[..40]), Err(LoadError::Malformed), "cut inside the header");
        assert_eq!(parse(&good[..100]), Err(LoadError::Malformed), "cut inside the program headers");
        let mut big_endian = good.clone();
        big_endian[5] = 2;
        assert_eq!(parse(&big_endian), Err(LoadError::Malformed));
        let mut elf32 = vec![0u8; 0x100];
        elf32[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
        elf32[16] = 2; // ET_EXEC
        elf32[18] = 3; // EM_386
        elf32[20] = 1; // version
        elf32[40] = 52; // e_ehsize
        assert_eq!(parse(&elf32), Err(LoadError::Not64Bit));
        assert_eq!(parse(&elf(ET_EXEC, 183, 0x40_0000, &good_segments(), 0x5000)), Err(LoadError::WrongMachine(183)));
        assert_eq!(parse(&elf(3, EM_X86_64, 0x40_0000, &good_segments(), 0x5000)), Err(LoadError::NotExecutable(3)));
        assert_eq!(parse(&elf(1, EM_X86_64, 0, &[], 0x100)), Err(LoadError::NotExecutable(1)));
    }

    #[test]
    fn refuses_what_needs_a_dynamic_linker_or_tls() {
        for t in [PT_INTERP, PT_DYNAMIC, PT_TLS] {
            assert_eq!(parse(&with(3, |p| p.0 = t)), Err(LoadError::Unsupported { index: 3, p_type: t }));
        }
    }

    #[test]
    fn refuses_segments_outside_the_file() {
        assert_eq!(parse(&with(1, |p| p.2 = 0x4f00)), Err(LoadError::OutsideFile { index: 1 }));
        assert_eq!(parse(&with(1, |p| p.2 = u64::MAX - 4)), Err(LoadError::OutsideFile { index: 1 }));
        assert_eq!(parse(&with(2, |p| p.4 = 0x1001)), Err(LoadError::OutsideFile { index: 2 }));
    }

    #[test]
    fn refuses_segments_outside_the_user_area() {
        assert_eq!(parse(&with(1, |p| p.3 = 0)), Err(LoadError::OutsideUserArea { index: 1 }), "null page");
        assert_eq!(parse(&with(1, |p| p.3 = 0xffff_ffff_8020_0000)), Err(LoadError::OutsideUserArea { index: 1 }));
        assert_eq!(parse(&with(1, |p| p.3 = USER_TOP - 0x1000)), Err(LoadError::OutsideUserArea { index: 1 }));
        assert_eq!(parse(&with(1, |p| p.3 = u64::MAX - 0x100)), Err(LoadError::OutsideUserArea { index: 1 }), "wraps");
        assert_eq!(parse(&with(2, |p| p.3 = USER_STACK_BOTTOM)), Err(LoadError::OutsideUserArea { index: 2 }), "stack");
        assert_eq!(parse(&with(2, |p| p.3 = USER_STACK_GUARD - 0x100)), Err(LoadError::OutsideUserArea { index: 2 }), "guard");
        assert!(parse(&with(2, |p| p.3 = USER_STACK_GUARD - 0x1008)).is_ok(), "just below the guard page");
    }

    #[test]
    fn refuses_writable_code() {
        assert_eq!(parse(&with(0, |p| p.1 = 7)), Err(LoadError::WritableAndExecutable { index: 0 }));
        assert_eq!(parse(&with(2, |p| p.1 = 3)), Err(LoadError::WritableAndExecutable { index: 2 }));
    }

    #[test]
    fn refuses_bad_sizes() {
        assert_eq!(parse(&with(2, |p| p.5 = 0x40)), Err(LoadError::BadSize { index: 2 }), "filesz > memsz");
        assert_eq!(parse(&with(2, |p| p.5 = MAX_IMAGE_BYTES + 1)), Err(LoadError::BadSize { index: 2 }));
        let mut phs = good_segments();
        phs[1].5 = MAX_IMAGE_BYTES - 0x4000;
        phs[2].3 = 0x1000_0000;
        phs[2].5 = 0x2008;
        assert_eq!(parse(&exec(&phs)), Err(LoadError::BadSize { index: 2 }), "total too large");
        let too_many: Vec<Ph> = (0..MAX_SEGMENTS as u64 + 1).map(|i| (PT_LOAD, RX, 0, 0x40_0000 + i * 0x1000, 0x10, 0x10)).collect();
        assert_eq!(parse(&exec(&too_many)), Err(LoadError::TooManySegments));
    }

    #[test]
    fn refuses_shared_pages() {
        assert_eq!(parse(&with(1, |p| p.3 = 0x40_1800)), Err(LoadError::Overlap { index: 1 }));
        assert_eq!(parse(&with(2, |p| p.3 = 0x40_1000)), Err(LoadError::Overlap { index: 2 }));
    }

    #[test]
    fn entry_must_be_in_code() {
        let phs = good_segments();
        for entry in [0, 0x40_2000, 0x40_3000, 0x40_18c5] {
            assert_eq!(parse(&elf(ET_EXEC, EM_X86_64, entry, &phs, 0x5000)), Err(LoadError::BadEntry(entry)));
        }
        assert!(parse(&elf(ET_EXEC, EM_X86_64, 0x40_18c4, &phs, 0x5000)).is_ok());
    }

    #[test]
    fn needs_a_segment() {
        assert_eq!(parse(&exec(&[])), Err(LoadError::NoSegments));
        assert_eq!(parse(&exec(&[(PT_LOAD, RX, 0, 0x40_0000, 0, 0)])), Err(LoadError::NoSegments), "empty PT_LOAD only");
    }
}
