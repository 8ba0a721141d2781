//! kernel/ABI.md's tables must say what this crate says: every call with
//! its number, every error with its code, every right with its bit.

use matryoshka_abi::{call, rights, Error};

fn abi_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ABI.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The cells of every table row in the section headed `## {heading}`.
fn rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("ABI.md has no '## {heading}' section"));
    let section = &doc[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---"))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect()
}

#[test]
fn every_call_is_documented_with_its_number() {
    let doc = abi_md();
    let documented: Vec<(u64, String)> = rows(&doc, "Calls").into_iter().filter_map(|r| Some((r[0].parse().ok()?, r[1].clone()))).collect();
    let in_crate: Vec<(u64, String)> = call::ALL.iter().map(|&(n, name)| (n, name.to_string())).collect();
    for c in &in_crate {
        assert!(documented.contains(c), "call {} ({}) is in the abi crate but not in ABI.md's Calls table", c.0, c.1);
    }
    for d in &documented {
        assert!(in_crate.contains(d), "ABI.md documents call {} ({}), which the abi crate does not have", d.0, d.1);
    }
    let mut numbers: Vec<u64> = documented.iter().map(|d| d.0).collect();
    let sorted = numbers.clone();
    numbers.sort_unstable();
    assert_eq!(numbers, sorted, "ABI.md's Calls table is in number order");
}

#[test]
fn every_error_is_documented_with_its_code() {
    let doc = abi_md();
    let documented: Vec<(i64, String)> =
        rows(&doc, "Errors").into_iter().filter_map(|r| Some((r[0].parse().ok()?, r[1].clone()))).collect();
    assert_eq!(documented.len(), Error::ALL.len(), "ABI.md lists {} errors, the crate {}", documented.len(), Error::ALL.len());
    for e in Error::ALL {
        assert!(documented.contains(&(e.code(), e.name().to_string())), "{} ({}) is not in ABI.md's Errors table", e.name(), e.code());
        assert_eq!(Error::from_code(e.code()), Some(e));
    }
}

#[test]
fn every_right_is_documented_with_its_bit() {
    let doc = abi_md();
    let expected = [
        ("GET_STATE", rights::GET_STATE),
        ("SET_STATE", rights::SET_STATE),
        ("DESTROY", rights::DESTROY),
        ("TRANSFER", rights::TRANSFER),
        ("DUPLICATE", rights::DUPLICATE),
        ("SEND", rights::SEND),
        ("RECEIVE", rights::RECEIVE),
        ("MAP_READ", rights::MAP_READ),
        ("MAP_WRITE", rights::MAP_WRITE),
        ("MAP_EXECUTE", rights::MAP_EXECUTE),
        ("CREATE", rights::CREATE),
    ];
    let mut documented = Vec::new();
    for r in rows(&doc, "Handles and rights") {
        // A row may name several rights: "SEND / RECEIVE | 5 / 6".
        let names: Vec<&str> = r[0].split(" / ").collect();
        let bits: Vec<&str> = r[1].split(" / ").collect();
        if names.len() != bits.len() {
            continue;
        }
        for (n, b) in names.iter().zip(bits) {
            if let Ok(bit) = b.parse::<u32>() {
                documented.push((n.to_string(), 1u32 << bit));
            }
        }
    }
    for (name, mask) in expected {
        assert!(
            documented.contains(&(name.to_string(), mask)),
            "right {name} (bit {}) is not in ABI.md's rights table",
            mask.trailing_zeros()
        );
    }
    assert_eq!(documented.len(), expected.len());
    assert_eq!(rights::ALL, expected.iter().fold(0, |a, (_, m)| a | m));
}
