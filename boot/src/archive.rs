//! The boot archive: a cpio "newc" file (the format of Linux initramfs),
//! written with the `cpio` crate. The kernel takes the root program out of
//! it (`bin/init`); the root program hands it to the file server, which
//! fills its RAM file system from it. Directories are implied by paths and
//! also written as entries, so an empty folder survives.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, relative (`bin/ls`, `etc/motd`).
    pub path: String,
    pub data: Vec<u8>,
    /// Permission bits (the file type is added when written).
    pub mode: u32,
    pub is_dir: bool,
}

impl Entry {
    pub fn file(path: impl Into<String>, data: Vec<u8>, mode: u32) -> Self {
        Entry { path: path.into(), data, mode, is_dir: false }
    }
}

/// Every file under `dir` (recursively, sorted), as archive entries with
/// paths relative to `dir`. A missing folder gives no entries.
pub fn entries_from_dir(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out)?;
    }
    Ok(out)
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let path = e.path();
        let rel = path.strip_prefix(base).expect("walk stays under base").to_string_lossy().replace('\\', "/");
        if path.is_dir() {
            out.push(Entry { path: rel, data: Vec::new(), mode: 0o755, is_dir: true });
            walk(base, &path, out)?;
        } else {
            out.push(Entry::file(rel, fs::read(&path).with_context(|| format!("reading {}", path.display()))?, 0o644));
        }
    }
    Ok(())
}

/// Every parent folder of the entries' paths that is not itself an entry.
fn implied_dirs(entries: &[Entry]) -> Vec<String> {
    let explicit: BTreeSet<&str> = entries.iter().filter(|e| e.is_dir).map(|e| e.path.as_str()).collect();
    let mut dirs = BTreeSet::new();
    for e in entries {
        let mut p = e.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if !explicit.contains(p) {
                dirs.insert(p.to_string());
            }
        }
    }
    dirs.into_iter().collect()
}

/// The archive's bytes: implied folders first, then `entries` in order, then the trailer.
pub fn to_bytes(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let dirs = implied_dirs(entries);
    let all = dirs.iter().map(|d| (d.as_str(), &[][..], 0o040755)).chain(
        entries.iter().map(|e| (e.path.as_str(), e.data.as_slice(), if e.is_dir { 0o040000 } else { 0o100000 } | (e.mode & 0o7777))),
    );
    for (ino, (path, data, mode)) in (1u32..).zip(all) {
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("bad archive path {path:?} (relative, no empty, . or .. components)");
        }
        if !seen.insert(path.to_string()) {
            bail!("{path} is in the archive twice");
        }
        let size = u32::try_from(data.len()).with_context(|| format!("{path} is larger than 4 GiB"))?;
        let mut w = cpio::newc::Builder::new(path).ino(ino).mode(mode).nlink(1).write(&mut out, size);
        w.write_all(data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// Writes the archive to `out` (atomically: a temporary file, then a rename).
pub fn write(out: &Path, entries: &[Entry]) -> Result<()> {
    let bytes = to_bytes(entries)?;
    let tmp = out.with_extension("cpio.tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut r = bytes;
        loop {
            let mut reader = cpio::NewcReader::new(r).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let (name, mode) = (reader.entry().name().to_string(), reader.entry().mode());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
            out.push((name, mode, data));
            r = reader.finish().unwrap();
        }
        out
    }

    #[test]
    fn round_trips_files_and_implied_folders() {
        let entries = vec![Entry::file("bin/ls", b"\x7fELF...".to_vec(), 0o755), Entry::file("etc/motd", b"hello\n".to_vec(), 0o644)];
        let got = read_back(&to_bytes(&entries).unwrap());
        let names: Vec<_> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["bin", "etc", "bin/ls", "etc/motd"]);
        assert_eq!(got[0].1, 0o040755);
        assert_eq!(got[2].1, 0o100755);
        assert_eq!(got[3].2, b"hello\n");
    }

    #[test]
    fn refuses_bad_paths_and_duplicates() {
        for bad in ["/abs", "a/../b", "a//b", ""] {
            assert!(to_bytes(&[Entry::file(bad, vec![], 0o644)]).is_err(), "{bad:?}");
        }
        assert!(to_bytes(&[Entry::file("a", vec![], 0o644), Entry::file("a", vec![], 0o644)]).is_err());
    }
}
