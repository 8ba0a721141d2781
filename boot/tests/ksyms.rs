//! Tests for the KSYMTAB1 encoder/decoder and for embedding into an ELF
//! fixture that is generated on the fly with `object::write`.

use matryoshka_boot::ksyms::{
    self, clamp_name, decode, encode, encoded_len, lookup, normalize, Symbol, TableTooLarge, MAGIC, MAX_NAME_LEN,
};
use object::write::{Object, StandardSection, Symbol as WSymbol, SymbolSection};
use object::{Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope};
use proptest::prelude::*;

fn sym(addr: u64, size: u32, name: &str) -> Symbol {
    Symbol { addr, size, name: name.to_string() }
}

/// Build a relocatable x86_64 ELF with a `.text` section, an optional
/// zero-filled `.ksyms` PROGBITS section of `ksyms_len` bytes and the given
/// symbols (value = offset into .text).
fn fixture(ksyms_len: Option<usize>, funcs: &[(&str, u64, u64)], data_syms: &[(&str, u64)]) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.section_id(StandardSection::Text);
    obj.append_section_data(text, &[0xcc; 0x400], 16);
    let data = obj.section_id(StandardSection::Data);
    obj.append_section_data(data, &[0x11; 64], 8);
    if let Some(len) = ksyms_len {
        let ks = obj.add_section(Vec::new(), b".ksyms".to_vec(), SectionKind::Data);
        obj.append_section_data(ks, &vec![0u8; len], 4096);
    }
    for &(name, value, size) in funcs {
        obj.add_symbol(WSymbol {
            name: name.as_bytes().to_vec(),
            value,
            size,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    for &(name, value) in data_syms {
        obj.add_symbol(WSymbol {
            name: name.as_bytes().to_vec(),
            value,
            size: 8,
            kind: SymbolKind::Data,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(data),
            flags: SymbolFlags::None,
        });
    }
    obj.write().unwrap()
}

const PANIC_FN: &str = "_ZN6kernel5ktest16deliberate_panic17h0123456789abcdefE";

#[test]
fn encode_layout_matches_spec() {
    let t = encode(&[sym(0x2000, 4, "b"), sym(0x1000, 8, "a")]);
    assert_eq!(&t[..8], MAGIC);
    assert_eq!(u32::from_le_bytes(t[8..12].try_into().unwrap()), 2);
    let so = u32::from_le_bytes(t[12..16].try_into().unwrap()) as usize;
    assert_eq!(so, 16 + 2 * 16);
    // First entry is the lower address.
    assert_eq!(u64::from_le_bytes(t[16..24].try_into().unwrap()), 0x1000);
    assert_eq!(u32::from_le_bytes(t[24..28].try_into().unwrap()), 8);
    assert_eq!(u32::from_le_bytes(t[28..32].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(t[44..48].try_into().unwrap()), 2);
    assert_eq!(&t[so..], b"a\0b\0");
    assert_eq!(t.len(), encoded_len(&normalize(vec![sym(0x2000, 4, "b"), sym(0x1000, 8, "a")])));
}

#[test]
fn dedupe_keeps_longer_size() {
    let n = normalize(vec![sym(0x10, 4, "short"), sym(0x10, 40, "long"), sym(0x8, 1, "x")]);
    assert_eq!(n, vec![sym(0x8, 1, "x"), sym(0x10, 40, "long")]);
}

#[test]
fn identical_names_share_storage() {
    let t = encode(&[sym(1, 1, "same"), sym(2, 1, "same")]);
    let so = u32::from_le_bytes(t[12..16].try_into().unwrap()) as usize;
    assert_eq!(&t[so..], b"same\0");
    assert_eq!(decode(&t).unwrap().len(), 2);
}

#[test]
fn long_names_truncate_at_char_boundary() {
    let long = "é".repeat(200); // 400 bytes, 2 bytes per char
    let c = clamp_name(&long);
    assert!(c.len() <= MAX_NAME_LEN);
    assert_eq!(c.len(), 254);
    let ascii = "x".repeat(300);
    assert_eq!(clamp_name(&ascii).len(), 255);
    let t = encode(&[sym(1, 1, &long)]);
    assert_eq!(decode(&t).unwrap()[0].name.len(), 254);
}

#[test]
fn decode_rejects_garbage() {
    assert!(decode(b"").is_err());
    assert!(decode(&[0u8; 64]).is_err());
    let mut t = encode(&[sym(1, 1, "a"), sym(2, 1, "b")]);
    // Break sorting: make entry 1's address equal entry 0's.
    t[32..40].copy_from_slice(&1u64.to_le_bytes());
    assert!(decode(&t).is_err());
}

#[test]
fn lookup_finds_containing_symbol() {
    let syms = normalize(vec![sym(0x100, 0x10, "a"), sym(0x200, 0, "b")]);
    assert_eq!(lookup(&syms, 0x105).map(|(s, o)| (s.name.as_str(), o)), Some(("a", 5)));
    assert!(lookup(&syms, 0x110).is_none());
    assert!(lookup(&syms, 0x50).is_none());
    assert_eq!(lookup(&syms, 0x250).map(|(s, o)| (s.name.as_str(), o)), Some(("b", 0x50)));
}

#[test]
fn embed_into_fixture() {
    let elf = fixture(
        Some(4096),
        &[
            (PANIC_FN, 0x40, 0x30),
            ("plain_c_function", 0x10, 0x20),
            ("zero_address_function", 0, 0x10),
            ("alias_small", 0x80, 0x4),
            ("alias_big", 0x80, 0x40),
        ],
        &[("SOME_DATA", 0x8)],
    );
    let (off, size) = ksyms::ksyms_section(&elf).unwrap();
    assert_eq!(size, 4096);
    let (out, stats) = ksyms::embed_into(&elf).unwrap();
    assert_eq!(out.len(), elf.len(), "file size must not change");
    let (o, s) = (off as usize, size as usize);
    assert_eq!(&out[..o], &elf[..o], "bytes before .ksyms must not change");
    assert_eq!(&out[o + s..], &elf[o + s..], "bytes after .ksyms must not change");
    assert_eq!(stats.symbols, 3);
    let syms = ksyms::read_embedded(&out).unwrap();
    assert_eq!(
        syms,
        vec![sym(0x10, 0x20, "plain_c_function"), sym(0x40, 0x30, "kernel::ktest::deliberate_panic"), sym(0x80, 0x40, "alias_big"),]
    );
    // Embedding again is idempotent.
    let (again, _) = ksyms::embed_into(&out).unwrap();
    assert_eq!(again, out);
}

#[test]
fn embed_demangles_v0_names() {
    let elf = fixture(Some(1024), &[("_RNvCs123_6kernel4main", 0x20, 4)], &[]);
    let (out, _) = ksyms::embed_into(&elf).unwrap();
    let syms = ksyms::read_embedded(&out).unwrap();
    assert_eq!(syms[0].name, "kernel::main");
}

#[test]
fn embed_reports_missing_section() {
    let elf = fixture(None, &[("f", 0x10, 1)], &[]);
    let err = ksyms::embed_into(&elf).unwrap_err().to_string();
    assert!(err.contains("no .ksyms section"), "{err}");
}

#[test]
fn embed_reports_table_too_large() {
    let funcs: Vec<(String, u64, u64)> = (0..20).map(|i| (format!("function_number_{i}"), 0x10 + i * 8, 8)).collect();
    let refs: Vec<(&str, u64, u64)> = funcs.iter().map(|(n, a, s)| (n.as_str(), *a, *s)).collect();
    let elf = fixture(Some(64), &refs, &[]);
    let err = ksyms::embed_into(&elf).unwrap_err();
    let tl = err.downcast_ref::<TableTooLarge>().expect("TableTooLarge");
    assert_eq!(tl.capacity, 64);
    assert_eq!(tl.symbols, 20);
    assert!(tl.needed > 64);
    let msg = err.to_string();
    assert!(msg.contains(&format!("needs {} bytes", tl.needed)) && msg.contains("holds only 64 bytes"), "{msg}");
}

#[test]
fn embed_symbols_file_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.elf");
    let output = dir.path().join("sub/out.elf");
    std::fs::write(&input, fixture(Some(512), &[("f", 0x10, 1)], &[])).unwrap();
    let stats = ksyms::embed_symbols(&input, &output).unwrap();
    assert_eq!(stats.symbols, 1);
    let out = std::fs::read(&output).unwrap();
    assert_eq!(ksyms::read_embedded(&out).unwrap(), vec![sym(0x10, 1, "f")]);
    // In place works too.
    ksyms::embed_symbols(&output, &output).unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), out);
}

#[test]
fn not_an_elf() {
    let err = ksyms::embed_into(b"hello world, definitely not an ELF").unwrap_err().to_string();
    assert!(err.contains("ELF"), "{err}");
}

fn arb_symbol() -> impl Strategy<Value = Symbol> {
    (
        // Small address space so duplicates happen often.
        prop_oneof![0u64..64, any::<u64>()],
        any::<u32>(),
        prop_oneof!["[a-z_:]{0,20}", "\\PC{0,300}"],
    )
        .prop_map(|(addr, size, name)| Symbol { addr, size, name })
}

proptest! {
    #[test]
    fn encode_decode_roundtrip(syms in proptest::collection::vec(arb_symbol(), 0..80)) {
        let table = encode(&syms);
        let norm = normalize(syms.clone());
        prop_assert_eq!(table.len(), encoded_len(&norm));
        // Section zero fill after the table must be ignored by the decoder.
        let mut padded = table.clone();
        padded.extend_from_slice(&[0u8; 37]);
        let decoded = decode(&padded).unwrap();
        prop_assert_eq!(&decoded, &norm);
        // Sorted strictly ascending (so addresses are unique).
        prop_assert!(decoded.windows(2).all(|w| w[0].addr < w[1].addr));
        // Every input address is present, with the largest size seen for it.
        for s in &syms {
            let d = decoded.iter().find(|d| d.addr == s.addr).unwrap();
            prop_assert!(d.size >= s.size);
        }
        for d in &decoded {
            prop_assert!(d.name.len() <= MAX_NAME_LEN);
            prop_assert!(!d.name.contains('\0'));
        }
    }
}
