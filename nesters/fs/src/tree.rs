//! The file tree: nodes by number, folders as sorted name maps. Pure (no
//! system calls), so every path rule is host-testable.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use matryoshka_nest::proto::{kind, Error, MAX_PATH};

use crate::data::{FileData, Page};

/// Longest name of one entry.
pub const MAX_NAME: usize = 255;
/// Largest file.
pub const MAX_FILE: u64 = 256 << 20;

pub enum Node {
    File(FileData),
    Dir(BTreeMap<String, u64>),
}

pub struct Tree {
    nodes: BTreeMap<u64, Node>,
    next: u64,
    /// Nodes no folder names any more (unlinked or replaced by a rename)
    /// but not yet freed: with one name per node, the only ones `forget`
    /// may free, so it need not search every folder.
    unlinked: BTreeSet<u64>,
}

pub const ROOT: u64 = 1;

/// The components of an absolute path, checked.
pub fn components(path: &str) -> Result<Vec<&str>, Error> {
    if path.len() > MAX_PATH {
        return Err(Error::TooLong);
    }
    if !path.starts_with('/') {
        return Err(Error::Invalid);
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c if c.len() > MAX_NAME => return Err(Error::TooLong),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The parts of `path` between slashes (split on the byte: `str::split`'s
/// general searcher costs more than the walk itself on short paths).
fn names(path: &str) -> impl Iterator<Item = &str> {
    path.as_bytes().split(|&b| b == b'/').map(|part| {
        // SAFETY: `part` lies between '/' bytes (or the ends) of a str; an
        // ASCII byte never falls inside a multi-byte character, so each
        // part is valid UTF-8.
        unsafe { core::str::from_utf8_unchecked(part) }
    })
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::Dir(BTreeMap::new()));
        Tree { nodes, next: ROOT + 1, unlinked: BTreeSet::new() }
    }

    #[cfg(test)]
    fn node(&self, id: u64) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// The node at `path`.
    pub fn lookup(&self, path: &str) -> Result<u64, Error> {
        if path.len() > MAX_PATH {
            return Err(Error::TooLong);
        }
        if !path.starts_with('/') {
            return Err(Error::Invalid);
        }
        // Without "..", the names can be walked as they are split, with no
        // list of them built; checked first, so the errors are those of
        // `components` whatever the tree holds.
        let mut plain = true;
        for c in names(path) {
            if c.len() > MAX_NAME {
                return Err(Error::TooLong);
            }
            plain &= c != "..";
        }
        if !plain {
            return self.walk(components(path)?);
        }
        self.walk(names(path).filter(|c| !c.is_empty() && *c != "."))
    }

    fn walk<'p>(&self, names: impl IntoIterator<Item = &'p str>) -> Result<u64, Error> {
        let mut at = ROOT;
        for c in names {
            match self.nodes.get(&at) {
                Some(Node::Dir(entries)) => at = *entries.get(c).ok_or(Error::NotFound)?,
                Some(Node::File(_)) => return Err(Error::NotDir),
                None => return Err(Error::NotFound),
            }
        }
        Ok(at)
    }

    /// The folder holding `path` and the last component.
    fn parent_of<'p>(&self, path: &'p str) -> Result<(u64, &'p str), Error> {
        let comps = components(path)?;
        let (last, dirs) = comps.split_last().ok_or(Error::Invalid)?;
        let mut at = ROOT;
        for c in dirs {
            match self.nodes.get(&at) {
                Some(Node::Dir(entries)) => at = *entries.get(*c).ok_or(Error::NotFound)?,
                _ => return Err(Error::NotDir),
            }
        }
        match self.nodes.get(&at) {
            Some(Node::Dir(_)) => Ok((at, last)),
            _ => Err(Error::NotDir),
        }
    }

    fn insert(&mut self, dir: u64, name: &str, node: Node) -> Result<u64, Error> {
        let id = self.next;
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir(entries)) => {
                if entries.contains_key(name) {
                    return Err(Error::Exists);
                }
                entries.insert(name.to_string(), id);
            }
            _ => return Err(Error::NotDir),
        }
        self.next += 1;
        self.nodes.insert(id, node);
        Ok(id)
    }

    /// Creates an empty file (Exists if anything is there).
    pub fn create(&mut self, path: &str) -> Result<u64, Error> {
        let (dir, name) = self.parent_of(path)?;
        self.insert(dir, name, Node::File(FileData::default()))
    }

    pub fn mkdir(&mut self, path: &str) -> Result<u64, Error> {
        let (dir, name) = self.parent_of(path)?;
        self.insert(dir, name, Node::Dir(BTreeMap::new()))
    }

    /// `mkdir -p` (for filling from the archive).
    pub fn mkdir_all(&mut self, path: &str) -> Result<u64, Error> {
        let mut at = ROOT;
        let mut so_far = String::new();
        for c in components(path)? {
            so_far.push('/');
            so_far.push_str(c);
            at = match self.lookup(&so_far) {
                Ok(id) => id,
                Err(Error::NotFound) => self.mkdir(&so_far)?,
                Err(e) => return Err(e),
            };
        }
        Ok(at)
    }

    /// Removes a file or an empty folder. Open streams of a removed file
    /// keep its node (it is freed when `forget` is called with no users).
    pub fn unlink(&mut self, path: &str) -> Result<u64, Error> {
        let (dir, name) = self.parent_of(path)?;
        let id = match self.nodes.get(&dir) {
            Some(Node::Dir(entries)) => *entries.get(name).ok_or(Error::NotFound)?,
            _ => return Err(Error::NotDir),
        };
        if let Some(Node::Dir(entries)) = self.nodes.get(&id) {
            if !entries.is_empty() {
                return Err(Error::NotEmpty);
            }
        }
        if let Some(Node::Dir(entries)) = self.nodes.get_mut(&dir) {
            entries.remove(name);
        }
        self.unlinked.insert(id);
        Ok(id)
    }

    /// Frees a node no folder names any more.
    pub fn forget(&mut self, id: u64) {
        if id != ROOT && self.unlinked.remove(&id) {
            self.nodes.remove(&id);
        }
    }

    /// Whether `id` was unlinked and is still there (`forget` would free it).
    pub fn is_unlinked(&self, id: u64) -> bool {
        self.unlinked.contains(&id)
    }

    #[cfg(test)]
    fn is_linked(&self, id: u64) -> bool {
        self.nodes.values().any(|n| matches!(n, Node::Dir(e) if e.values().any(|&v| v == id)))
    }

    /// Moves `from` to `to` (replacing a file there; a folder cannot move into itself).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let id = self.lookup(from)?;
        if id == ROOT {
            return Err(Error::Invalid);
        }
        let (to_dir, to_name) = self.parent_of(to)?;
        // A folder may not move below itself.
        let (fc, tc) = (components(from)?, components(to)?);
        if tc.len() > fc.len() && tc[..fc.len()] == fc[..] {
            return Err(Error::Invalid);
        }
        if let Ok(existing) = self.lookup(to) {
            if existing == id {
                return Ok(());
            }
            match self.nodes.get(&existing) {
                Some(Node::Dir(_)) => return Err(Error::Exists),
                _ => {
                    self.unlink(to)?;
                    self.forget(existing);
                }
            }
        }
        let (from_dir, from_name) = self.parent_of(from)?;
        if let Some(Node::Dir(entries)) = self.nodes.get_mut(&from_dir) {
            entries.remove(from_name);
        }
        match self.nodes.get_mut(&to_dir) {
            Some(Node::Dir(entries)) => {
                entries.insert(to_name.to_string(), id);
                Ok(())
            }
            _ => Err(Error::NotDir),
        }
    }

    /// (size, kind, entries).
    pub fn stat(&self, id: u64) -> Result<(u64, u64, u64), Error> {
        match self.nodes.get(&id) {
            Some(Node::File(d)) => Ok((d.len(), kind::FILE, 0)),
            Some(Node::Dir(e)) => Ok((0, kind::DIR, e.len() as u64)),
            None => Err(Error::BadObject),
        }
    }

    fn file(&self, id: u64) -> Result<&FileData, Error> {
        match self.nodes.get(&id) {
            Some(Node::File(d)) => Ok(d),
            Some(Node::Dir(_)) => Err(Error::IsDir),
            None => Err(Error::BadObject),
        }
    }

    fn file_mut(&mut self, id: u64) -> Result<&mut FileData, Error> {
        match self.nodes.get_mut(&id) {
            Some(Node::File(d)) => Ok(d),
            Some(Node::Dir(_)) => Err(Error::IsDir),
            None => Err(Error::BadObject),
        }
    }

    /// `[offset, offset + max)` of a file (clipped at its end) as a range of
    /// one of its pages, when it lies within one that holds data (a reply
    /// sends it without a copy); otherwise None.
    pub fn read_shared(&self, id: u64, offset: u64, max: usize) -> Result<Option<(Page, usize, usize)>, Error> {
        Ok(self.file(id)?.read_shared(offset, max))
    }

    /// `[offset, offset + max)` of a file (clipped at its end), copied.
    pub fn read(&self, id: u64, offset: u64, max: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.file(id)?.read_into(offset, max, &mut out).map_err(|()| Error::NoSpace)?;
        Ok(out)
    }

    /// Writes `bytes` at `offset`.
    pub fn write(&mut self, id: u64, offset: u64, bytes: &[u8]) -> Result<usize, Error> {
        self.write_with(id, offset, bytes.len(), |dst, at| {
            dst.copy_from_slice(&bytes[at..at + dst.len()]);
            Ok(())
        })
    }

    /// Writes `len` bytes at `offset`, which `fill` puts in place piece by
    /// piece (each piece with its offset within the bytes written): a
    /// server reads a request's payload straight into the file this way.
    pub fn write_with(
        &mut self,
        id: u64,
        offset: u64,
        len: usize,
        fill: impl FnMut(&mut [u8], usize) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let d = self.file_mut(id)?;
        let end = offset.checked_add(len as u64).ok_or(Error::Invalid)?;
        if end > MAX_FILE {
            return Err(Error::NoSpace);
        }
        d.write_with(offset, len, Error::NoSpace, fill)?;
        Ok(len)
    }

    pub fn truncate(&mut self, id: u64, len: u64) -> Result<(), Error> {
        let d = self.file_mut(id)?;
        if len > MAX_FILE {
            return Err(Error::NoSpace);
        }
        d.truncate(len);
        Ok(())
    }

    /// Entry `index` of a folder: (name, kind, size).
    /// The path that names node `id` (one name per node), if a folder
    /// still names it: a depth-first search (for exports, which are rare).
    pub fn path_of(&self, id: u64) -> Option<String> {
        if id == ROOT {
            return Some(String::from("/"));
        }
        let mut stack: Vec<(u64, String)> = alloc::vec![(ROOT, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let Some(Node::Dir(entries)) = self.nodes.get(&dir) else { continue };
            for (name, &child) in entries {
                let path = alloc::format!("{prefix}/{name}");
                if child == id {
                    return Some(path);
                }
                if matches!(self.nodes.get(&child), Some(Node::Dir(_))) {
                    stack.push((child, path));
                }
            }
        }
        None
    }

    /// Whether node `id` exists (linked or not).
    pub fn exists(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    pub fn entry(&self, dir: u64, index: u64) -> Result<(&str, u64, u64), Error> {
        match self.nodes.get(&dir) {
            Some(Node::Dir(e)) => {
                let (name, id) = e.iter().nth(index as usize).ok_or(Error::NotFound)?;
                let (size, k, _) = self.stat(*id)?;
                Ok((name.as_str(), k, size))
            }
            Some(Node::File(_)) => Err(Error::NotDir),
            None => Err(Error::BadObject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_knows_its_path() {
        let mut t = Tree::new();
        t.mkdir("/a").unwrap();
        t.mkdir("/a/b").unwrap();
        let f = t.create("/a/b/f").unwrap();
        let g = t.create("/g").unwrap();
        assert_eq!(t.path_of(f).as_deref(), Some("/a/b/f"));
        assert_eq!(t.path_of(g).as_deref(), Some("/g"));
        assert_eq!(t.path_of(ROOT).as_deref(), Some("/"));
        t.unlink("/g").unwrap();
        assert_eq!(t.path_of(g), None);
        assert!(t.exists(g));
    }

    #[test]
    fn paths_and_errors() {
        let mut t = Tree::new();
        assert_eq!(t.lookup("/"), Ok(ROOT));
        assert_eq!(t.lookup("relative"), Err(Error::Invalid));
        assert_eq!(t.lookup("/nope"), Err(Error::NotFound));
        t.mkdir("/etc").unwrap();
        let f = t.create("/etc/motd").unwrap();
        assert_eq!(t.create("/etc/motd"), Err(Error::Exists));
        assert_eq!(t.create("/etc/motd/x"), Err(Error::NotDir));
        assert_eq!(t.create("/no/such"), Err(Error::NotFound));
        assert_eq!(t.write(f, 3, b"hi"), Ok(2));
        assert_eq!(t.read(f, 0, 10).unwrap(), b"\0\0\0hi");
        assert_eq!(t.read(f, 100, 10).unwrap(), b"");
        assert_eq!(t.lookup("/etc/../etc/./motd"), Ok(f));
        assert_eq!(t.unlink("/etc"), Err(Error::NotEmpty));
        let long = "/".to_string() + &"x".repeat(300);
        assert_eq!(t.create(&long), Err(Error::TooLong));
        assert_eq!(t.lookup(&"/a".repeat(600)), Err(Error::TooLong));
        assert_eq!(t.write(f, u64::MAX - 1, b"xx"), Err(Error::Invalid));
        assert_eq!(t.write(f, MAX_FILE, b"x"), Err(Error::NoSpace));
    }

    #[test]
    fn lookup_errors_match_the_component_rules() {
        let mut t = Tree::new();
        t.mkdir_all("/a/b").unwrap();
        let f = t.create("/a/b/f").unwrap();
        let long = "x".repeat(MAX_NAME + 1);
        for (path, want) in [
            ("/a/b/f", Ok(f)),
            ("//a/./b//f/", Ok(f)),
            ("/a/b/f/..", t.lookup("/a/b")),
            ("/a/b/f/../f", Ok(f)),
            ("/../a/b/f", Ok(f)),
            ("/a/b/f/g", Err(Error::NotDir)),
            ("/a/f/../b/f", Ok(f)),
            ("/nope/b/f", Err(Error::NotFound)),
            ("a/b", Err(Error::Invalid)),
        ] {
            assert_eq!(t.lookup(path), want, "{path}");
            // The old way: the whole list of names first, then the walk.
            assert_eq!(components(path).and_then(|c| t.walk(c)), want, "{path}");
        }
        // A name too long is refused even after a missing folder or "..".
        assert_eq!(t.lookup(&format!("/nope/{long}")), Err(Error::TooLong));
        assert_eq!(t.lookup(&format!("/a/{long}/..")), Err(Error::TooLong));
        assert_eq!(t.lookup(&"/a".repeat(600)), Err(Error::TooLong));
    }

    #[test]
    fn forget_frees_only_unlinked_nodes() {
        let mut t = Tree::new();
        t.mkdir("/d").unwrap();
        let f = t.create("/d/f").unwrap();
        let g = t.create("/d/g").unwrap();
        t.forget(f);
        assert!(t.node(f).is_some());
        assert_eq!(t.unlink("/d/f"), Ok(f));
        assert!(t.is_unlinked(f) && !t.is_linked(f));
        t.forget(f);
        assert!(t.node(f).is_none() && !t.is_unlinked(f));
        // A rename over g unlinks it; the moved node stays linked.
        let h = t.create("/d/h").unwrap();
        t.rename("/d/h", "/d/g").unwrap();
        assert!(t.node(g).is_none());
        t.forget(h);
        assert!(t.node(h).is_some() && t.is_linked(h));
        let d = t.lookup("/d").unwrap();
        assert_eq!(t.unlink("/d"), Err(Error::NotEmpty));
        t.unlink("/d/g").unwrap();
        assert_eq!(t.unlink("/d"), Ok(d));
        t.forget(ROOT);
        assert!(t.node(ROOT).is_some());
    }

    #[test]
    fn rename_and_unlink() {
        let mut t = Tree::new();
        t.mkdir_all("/a/b").unwrap();
        let f = t.create("/a/b/f").unwrap();
        t.rename("/a/b/f", "/a/g").unwrap();
        assert_eq!(t.lookup("/a/g"), Ok(f));
        assert_eq!(t.lookup("/a/b/f"), Err(Error::NotFound));
        assert_eq!(t.rename("/a", "/a/b/c"), Err(Error::Invalid));
        assert_eq!(t.unlink("/a/g"), Ok(f));
        t.forget(f);
        assert!(t.node(f).is_none());
        assert_eq!(t.entry(t.lookup("/a").unwrap(), 0).unwrap().0, "b");
        assert_eq!(t.entry(t.lookup("/a").unwrap(), 1), Err(Error::NotFound));
    }
}
