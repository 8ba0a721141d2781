//! The kernel's own symbol table, for backtraces.
//!
//! `mkboot embed-symbols` writes a sorted table of function symbols into the
//! `.ksyms` section after linking (format in boot/README.md):
//! `b"KSYMTAB1"`, u32 count, u32 strings_offset, then `count` entries
//! `{u64 addr, u32 size, u32 name_offset}` sorted by address, then
//! NUL-terminated names.

pub const MAGIC: &[u8; 8] = b"KSYMTAB1";
const HEADER: usize = 16;
const ENTRY: usize = 16;

pub struct SymbolTable<'a> {
    bytes: &'a [u8],
    count: usize,
    strings: usize,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> SymbolTable<'a> {
    /// Validates the header; None when the table was never embedded or is malformed.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        if bytes.get(..8)? != MAGIC {
            return None;
        }
        let count = u32_at(bytes, 8)? as usize;
        let strings = u32_at(bytes, 12)? as usize;
        if HEADER.checked_add(count.checked_mul(ENTRY)?)? > strings || strings > bytes.len() {
            return None;
        }
        Some(SymbolTable { bytes, count, strings })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn entry(&self, i: usize) -> Option<(u64, u32, u32)> {
        let at = HEADER + i * ENTRY;
        Some((u64_at(self.bytes, at)?, u32_at(self.bytes, at + 8)?, u32_at(self.bytes, at + 12)?))
    }

    fn name(&self, offset: u32) -> &'a str {
        let start = self.strings + offset as usize;
        let Some(rest) = self.bytes.get(start..) else { return "?" };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        core::str::from_utf8(&rest[..end]).unwrap_or("?")
    }

    /// The function containing `addr` and the offset into it.
    pub fn lookup(&self, addr: u64) -> Option<(&'a str, u64)> {
        // Last entry whose start is <= addr.
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.entry(mid)?.0 <= addr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let (start, size, name) = self.entry(lo.checked_sub(1)?)?;
        let offset = addr - start;
        // Size 0 means unknown: accept up to 64 KiB past the start.
        if (size != 0 && offset >= size as u64) || (size == 0 && offset >= 0x10000) {
            return None;
        }
        Some((self.name(name), offset))
    }

    /// The start address of the first symbol named exactly `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        (0..self.count).filter_map(|i| self.entry(i)).find(|e| self.name(e.2) == name).map(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(syms: &[(u64, u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend((syms.len() as u32).to_le_bytes());
        out.extend(((HEADER + ENTRY * syms.len()) as u32).to_le_bytes());
        let mut names = Vec::new();
        for (addr, size, name) in syms {
            out.extend(addr.to_le_bytes());
            out.extend(size.to_le_bytes());
            out.extend((names.len() as u32).to_le_bytes());
            names.extend(name.as_bytes());
            names.push(0);
        }
        out.extend(names);
        out.resize(out.len() + 64, 0);
        out
    }

    #[test]
    fn finds_containing_function() {
        let bytes = table(&[(0x1000, 0x100, "a::first"), (0x1100, 0x10, "b::second"), (0x2000, 0, "c::third")]);
        let t = SymbolTable::new(&bytes).unwrap();
        assert_eq!(t.lookup(0x1000), Some(("a::first", 0)));
        assert_eq!(t.lookup(0x10ff), Some(("a::first", 0xff)));
        assert_eq!(t.lookup(0x1105), Some(("b::second", 5)));
        assert_eq!(t.lookup(0x1110), None, "gap after a sized symbol");
        assert_eq!(t.lookup(0x2004), Some(("c::third", 4)));
        assert_eq!(t.lookup(0xfff), None);
        assert_eq!(t.address_of("b::second"), Some(0x1100));
    }

    #[test]
    fn rejects_missing_or_corrupt_tables() {
        assert!(SymbolTable::new(&[0u8; 64]).is_none());
        let mut bytes = table(&[(0x1000, 1, "x")]);
        bytes[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(SymbolTable::new(&bytes).is_none());
    }
}
