//! Kernel symbol table (`KSYMTAB1`) embedding.
//!
//! The kernel image carries a fixed-size, zero-filled PROGBITS section named
//! `.ksyms`. After linking we collect every `STT_FUNC` symbol from `.symtab`,
//! demangle it, and write a compact table into that section's file bytes so
//! the panic handler can symbolize backtraces at run time.
//!
//! Layout (all integers little-endian, offsets relative to section start):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | magic `b"KSYMTAB1"` |
//! | 8 | `u32` count |
//! | 12 | `u32` strings_offset |
//! | 16 | `count` entries of `{u64 addr, u32 size, u32 name_offset}` sorted by addr |
//! | strings_offset | NUL-terminated UTF-8 names (each at most 255 bytes) |
//!
//! `name_offset` is relative to `strings_offset`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use object::elf;
use object::read::elf::{ElfFile64, SectionHeader, Sym};
use object::{Endian as _, Endianness};

/// Magic bytes at the start of an encoded table.
pub const MAGIC: &[u8; 8] = b"KSYMTAB1";
/// Name of the ELF section that receives the table.
pub const SECTION_NAME: &str = ".ksyms";
/// Longest name stored, in bytes, not counting the terminating NUL.
pub const MAX_NAME_LEN: usize = 255;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Size of one table entry.
pub const ENTRY_LEN: usize = 16;

/// One function symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub size: u32,
    pub name: String,
}

/// The encoded table is larger than the `.ksyms` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTooLarge {
    pub needed: usize,
    pub capacity: usize,
    pub symbols: usize,
}

impl fmt::Display for TableTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "symbol table ({} symbols) needs {} bytes but the {} section holds only {} bytes; enlarge {} in the kernel",
            self.symbols, self.needed, SECTION_NAME, self.capacity, SECTION_NAME
        )
    }
}

impl std::error::Error for TableTooLarge {}

/// What `embed` did, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedStats {
    pub symbols: usize,
    pub table_bytes: usize,
    pub section_offset: u64,
    pub section_size: u64,
}

/// Truncate `name` to at most [`MAX_NAME_LEN`] bytes at a char boundary and
/// cut it at any interior NUL (which would otherwise end the string early).
pub fn clamp_name(name: &str) -> &str {
    let name = match name.find('\0') {
        Some(i) => &name[..i],
        None => name,
    };
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let mut end = MAX_NAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Sort by address, drop duplicates of the same address (keeping the larger
/// size; ties keep the lexicographically smaller name so the result is
/// deterministic) and clamp names.
pub fn normalize(mut syms: Vec<Symbol>) -> Vec<Symbol> {
    for s in &mut syms {
        let clamped = clamp_name(&s.name);
        if clamped.len() != s.name.len() {
            s.name = clamped.to_string();
        }
    }
    // Best candidate for each address first.
    syms.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)).then_with(|| a.name.cmp(&b.name)));
    syms.dedup_by(|later, first| later.addr == first.addr);
    syms
}

/// Number of bytes [`encode`] will produce for already-normalized symbols.
pub fn encoded_len(syms: &[Symbol]) -> usize {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut strings = 0usize;
    for s in syms {
        if seen.insert(s.name.as_str(), ()).is_none() {
            strings += s.name.len() + 1;
        }
    }
    HEADER_LEN + syms.len() * ENTRY_LEN + strings
}

/// Encode symbols into a `KSYMTAB1` table. The input is normalized first
/// (sorted, deduplicated by address, names clamped). Identical names share
/// one copy in the string area.
pub fn encode(syms: &[Symbol]) -> Vec<u8> {
    let syms = normalize(syms.to_vec());
    let strings_offset = HEADER_LEN + syms.len() * ENTRY_LEN;
    let mut entries = Vec::with_capacity(syms.len() * ENTRY_LEN);
    let mut strings: Vec<u8> = Vec::new();
    let mut offsets: HashMap<&str, u32> = HashMap::new();
    for s in &syms {
        let off = *offsets.entry(s.name.as_str()).or_insert_with(|| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.name.as_bytes());
            strings.push(0);
            off
        });
        entries.extend_from_slice(&s.addr.to_le_bytes());
        entries.extend_from_slice(&s.size.to_le_bytes());
        entries.extend_from_slice(&off.to_le_bytes());
    }
    let mut out = Vec::with_capacity(strings_offset + strings.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(syms.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings_offset as u32).to_le_bytes());
    out.extend_from_slice(&entries);
    out.extend_from_slice(&strings);
    out
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decode a table (for tests, `mkboot symbols` and debugging). Trailing
/// bytes after the string area (the zero fill of the section) are ignored.
pub fn decode(table: &[u8]) -> Result<Vec<Symbol>> {
    if table.len() < HEADER_LEN || &table[..8] != MAGIC {
        bail!("no KSYMTAB1 magic at start of table");
    }
    let count = le_u32(table, 8).unwrap() as usize;
    let strings_offset = le_u32(table, 12).unwrap() as usize;
    let entries_end = HEADER_LEN.checked_add(count.checked_mul(ENTRY_LEN).context("count overflows")?).context("count overflows")?;
    if strings_offset < entries_end || strings_offset > table.len() {
        bail!("strings_offset {strings_offset} is inconsistent with {count} entries / table of {} bytes", table.len());
    }
    let strings = &table[strings_offset..];
    let mut out = Vec::with_capacity(count);
    let mut prev: Option<u64> = None;
    for i in 0..count {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let addr = le_u64(table, at).unwrap();
        let size = le_u32(table, at + 8).unwrap();
        let name_off = le_u32(table, at + 12).unwrap() as usize;
        if let Some(p) = prev {
            if addr <= p {
                bail!("entry {i} (addr {addr:#x}) is not sorted after {p:#x}");
            }
        }
        prev = Some(addr);
        let rest = strings.get(name_off..).with_context(|| format!("entry {i}: name offset {name_off} out of range"))?;
        let len = rest.iter().position(|&b| b == 0).with_context(|| format!("entry {i}: name is not NUL-terminated"))?;
        if len > MAX_NAME_LEN {
            bail!("entry {i}: name is {len} bytes (max {MAX_NAME_LEN})");
        }
        let name = std::str::from_utf8(&rest[..len]).with_context(|| format!("entry {i}: name is not UTF-8"))?.to_string();
        out.push(Symbol { addr, size, name });
    }
    Ok(out)
}

/// Find the symbol containing `addr` (or the nearest one below it when the
/// size is unknown/zero). Returns the symbol and the offset into it.
pub fn lookup(syms: &[Symbol], addr: u64) -> Option<(&Symbol, u64)> {
    let idx = syms.partition_point(|s| s.addr <= addr);
    let s = syms.get(idx.checked_sub(1)?)?;
    let off = addr - s.addr;
    if s.size != 0 && off >= s.size as u64 {
        return None;
    }
    Some((s, off))
}

fn parse_elf(data: &[u8]) -> Result<ElfFile64<'_, Endianness>> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| anyhow::anyhow!("not a 64-bit ELF file: {e}"))?;
    if !file.endian().is_little_endian() {
        bail!("big-endian ELF is not supported");
    }
    Ok(file)
}

/// File offset and size of the `.ksyms` section.
pub fn ksyms_section(data: &[u8]) -> Result<(u64, u64)> {
    let file = parse_elf(data)?;
    let endian = file.endian();
    let Some((_, shdr)) = file.elf_section_table().section_by_name(endian, SECTION_NAME.as_bytes()) else {
        bail!("the ELF has no {SECTION_NAME} section (is this the Matryoshka kernel built with its linker script?)");
    };
    if shdr.sh_type(endian) != elf::SHT_PROGBITS {
        bail!("{SECTION_NAME} is not a PROGBITS section (it has no file bytes to write into)");
    }
    let off = shdr.sh_offset(endian);
    let size = shdr.sh_size(endian);
    let end = off.checked_add(size).context("section bounds overflow")?;
    if end > data.len() as u64 {
        bail!("{SECTION_NAME} section ({off:#x}+{size:#x}) extends past the end of the file");
    }
    Ok((off, size))
}

/// Every `STT_FUNC` symbol with a nonzero address from `.symtab`, demangled
/// (alternate form, no hash), normalized (sorted, deduplicated, clamped).
pub fn collect_symbols(data: &[u8]) -> Result<Vec<Symbol>> {
    let file = parse_elf(data)?;
    let endian = file.endian();
    let symtab = file.elf_symbol_table();
    let mut out = Vec::new();
    for sym in symtab.iter() {
        if sym.st_type() != elf::STT_FUNC {
            continue;
        }
        let addr: u64 = sym.st_value(endian);
        if addr == 0 {
            continue;
        }
        let raw = symtab.symbol_name(endian, sym).map_err(|e| anyhow::anyhow!("bad symbol name: {e}"))?;
        let raw = String::from_utf8_lossy(raw);
        if raw.is_empty() {
            continue;
        }
        let name = format!("{:#}", rustc_demangle::demangle(&raw));
        let size: u64 = sym.st_size(endian);
        out.push(Symbol { addr, size: size.min(u32::MAX as u64) as u32, name });
    }
    Ok(normalize(out))
}

/// Embed the symbol table into an in-memory copy of the ELF. Only the bytes
/// of `.ksyms` change: the table is written at its start and the rest of the
/// section is zeroed, so embedding twice gives the same result.
pub fn embed_into(data: &[u8]) -> Result<(Vec<u8>, EmbedStats)> {
    let (off, size) = ksyms_section(data)?;
    let syms = collect_symbols(data)?;
    let table = encode(&syms);
    if table.len() as u64 > size {
        return Err(TableTooLarge { needed: table.len(), capacity: size as usize, symbols: syms.len() }.into());
    }
    let mut out = data.to_vec();
    let (off_us, size_us) = (off as usize, size as usize);
    let section = &mut out[off_us..off_us + size_us];
    section.fill(0);
    section[..table.len()].copy_from_slice(&table);
    Ok((out, EmbedStats { symbols: syms.len(), table_bytes: table.len(), section_offset: off, section_size: size }))
}

/// Read `input`, embed the table and write `output` (atomically, keeping
/// the input's permissions). `input` and `output` may be the same path.
pub fn embed_symbols(input: &Path, output: &Path) -> Result<EmbedStats> {
    let data = fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let (bytes, stats) = embed_into(&data).with_context(|| format!("cannot embed symbols into {}", input.display()))?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(&bytes)?;
    if let Ok(meta) = fs::metadata(input) {
        let _ = fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(output).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(stats)
}

/// Decode the table embedded in an ELF file's `.ksyms` section.
pub fn read_embedded(data: &[u8]) -> Result<Vec<Symbol>> {
    let (off, size) = ksyms_section(data)?;
    decode(&data[off as usize..(off + size) as usize])
}
