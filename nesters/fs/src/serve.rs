//! The server half: sessions, open streams and the request handlers.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::vec::Vec;

use matryoshka_nest::loader::{AT_SELF_SPACE, AT_SERVICE};
use matryoshka_nest::proto::{kind, op, open, Error, MAX_PATH, MAX_PAYLOAD};
use matryoshka_nest::server::{self, Reply, Request, Service};
use matryoshka_nest::{client, io};
use matryoshka_rt::ipc;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, Handle};
use matryoshka_rt::sync::Mutex;
use matryoshka_rt::{env, println};

use crate::tree::Tree;

/// Alias of the first session (the port the parent made on our portset).
pub const FIRST_SESSION: u64 = 1;
/// Where the boot archive is mapped.
const ARCHIVE_VA: u64 = 0x20_0000_0000;

struct Description {
    node: u64,
    offset: u64,
    flags: u64,
    /// Stream references (aliases) sharing it.
    refs: usize,
}

struct Stream {
    description: u64,
    session: u64,
}

struct State {
    tree: Tree,
    next_alias: u64,
    sessions: BTreeMap<u64, BTreeSet<u64>>,
    streams: BTreeMap<u64, Stream>,
    descriptions: BTreeMap<u64, Description>,
    next_description: u64,
    /// (session, description key of an export) -> the description its
    /// imports share, so streams that shared an offset share it again.
    imported: BTreeMap<(u64, u64), u64>,
}

struct FileServer {
    portset: Handle,
    state: Mutex<State>,
    /// The pool, set once it runs: closed streams' and ended sessions'
    /// remembered replies are forgotten (they held up to 128 KiB of read
    /// payload each, for the server's whole life).
    server: Mutex<Option<server::Server>>,
}

impl State {
    fn alias(&mut self) -> u64 {
        self.next_alias += 1;
        self.next_alias
    }

    fn stream(&self, alias: u64) -> Result<&Description, Error> {
        let s = self.streams.get(&alias).ok_or(Error::BadObject)?;
        self.descriptions.get(&s.description).ok_or(Error::BadObject)
    }

    fn stream_mut(&mut self, alias: u64) -> Result<&mut Description, Error> {
        let s = self.streams.get(&alias).ok_or(Error::BadObject)?;
        self.descriptions.get_mut(&s.description).ok_or(Error::BadObject)
    }

    /// Drops one stream reference; the description goes with its last one,
    /// and an unlinked file's node with its last description.
    fn close_stream(&mut self, alias: u64) -> Result<(), Error> {
        let s = self.streams.remove(&alias).ok_or(Error::BadObject)?;
        if let Some(set) = self.sessions.get_mut(&s.session) {
            set.remove(&alias);
        }
        let last = match self.descriptions.get_mut(&s.description) {
            Some(d) => {
                d.refs -= 1;
                d.refs == 0
            }
            None => false,
        };
        if last {
            if let Some(d) = self.descriptions.remove(&s.description) {
                // Only an unlinked node can go: others skip the search.
                if self.tree.is_unlinked(d.node) && !self.descriptions.values().any(|o| o.node == d.node) {
                    self.tree.forget(d.node);
                }
            }
        }
        Ok(())
    }
}

impl FileServer {
    /// Drops the pool's remembered replies of aliases that are closed (no
    /// request on them will be answered again but with `BadObject`).
    fn forget(&self, aliases: &[u64]) {
        if let Some(s) = *self.server.lock() {
            for &a in aliases {
                s.forget(a);
            }
        }
    }

    fn new_port(&self, st: &mut State) -> Result<(u64, Handle), Error> {
        let alias = st.alias();
        Ok((alias, ipc::port_create(self.portset, alias)?))
    }

    fn session(&self, req: &Request, st: &mut State) -> Result<Reply, Error> {
        let path = if req.op() == op::FS_RENAME {
            // "old NUL new": two paths.
            if req.bytes.len() > 2 * MAX_PATH + 1 {
                return Err(Error::TooLong);
            }
            core::str::from_utf8(req.bytes).map_err(|_| Error::Invalid)?
        } else {
            req.text(MAX_PATH)?
        };
        match req.op() {
            op::FS_OPEN => {
                let flags = req.words[2];
                if flags & !open::ALL != 0 || flags & (open::READ | open::WRITE | open::DIRECTORY) == 0 {
                    return Err(Error::Invalid);
                }
                let node = match st.tree.lookup(path) {
                    Ok(_) if flags & open::CREATE != 0 && flags & open::EXCLUSIVE != 0 => return Err(Error::Exists),
                    Ok(id) => id,
                    Err(Error::NotFound) if flags & open::CREATE != 0 => st.tree.create(path)?,
                    Err(e) => return Err(e),
                };
                let (_, k, _) = st.tree.stat(node)?;
                if k == kind::DIR && flags & open::WRITE != 0 {
                    return Err(Error::IsDir);
                }
                if k != kind::DIR && flags & open::DIRECTORY != 0 {
                    return Err(Error::NotDir);
                }
                if flags & open::TRUNCATE != 0 && flags & open::WRITE != 0 {
                    st.tree.truncate(node, 0)?;
                }
                let (alias, port) = self.new_port(st)?;
                let d = st.next_description;
                st.next_description += 1;
                st.descriptions.insert(d, Description { node, offset: 0, flags, refs: 1 });
                st.streams.insert(alias, Stream { description: d, session: req.alias });
                st.sessions.entry(req.alias).or_default().insert(alias);
                Ok(Reply::ok([0; 5]).giving(port))
            }
            op::FS_STAT => {
                let (size, k, entries) = st.tree.stat(st.tree.lookup(path)?)?;
                Ok(Reply::ok([size, k, entries, 0, 0]))
            }
            op::FS_MKDIR => st.tree.mkdir(path).map(|_| Reply::ok([0; 5])),
            op::FS_UNLINK => {
                let id = st.tree.unlink(path)?;
                if !st.descriptions.values().any(|d| d.node == id) {
                    st.tree.forget(id);
                }
                Ok(Reply::ok([0; 5]))
            }
            op::FS_RENAME => {
                let (from, to) = path.split_once('\u{0}').ok_or(Error::Invalid)?;
                st.tree.rename(from, to).map(|_| Reply::ok([0; 5]))
            }
            op::FS_NEW_SESSION => {
                let (alias, port) = self.new_port(st)?;
                st.sessions.insert(alias, BTreeSet::new());
                Ok(Reply::ok([0; 5]).giving(port))
            }
            op::FS_END_SESSION => {
                let streams: Vec<u64> = st.sessions.get(&req.alias).map(|s| s.iter().copied().collect()).unwrap_or_default();
                for &a in &streams {
                    let _ = st.close_stream(a);
                }
                self.forget(&streams);
                st.imported.retain(|(session, _), _| *session != req.alias);
                if req.alias != FIRST_SESSION {
                    st.sessions.remove(&req.alias);
                    self.forget(&[req.alias]);
                }
                Ok(Reply::ok([0; 5]))
            }
            op::FS_SESSION_INFO => Ok(Reply::ok([st.sessions.get(&req.alias).map_or(0, |s| s.len() as u64), 0, 0, 0, 0])),
            op::FS_EXPORT_STREAM => {
                let streams = st.sessions.get(&req.alias).ok_or(Error::BadObject)?;
                let alias = *streams.iter().nth(usize::try_from(req.words[2]).map_err(|_| Error::NotFound)?).ok_or(Error::NotFound)?;
                let s = st.streams.get(&alias).ok_or(Error::BadObject)?;
                let d = st.descriptions.get(&s.description).ok_or(Error::BadObject)?;
                let path = st.tree.path_of(d.node).unwrap_or_default();
                Ok(Reply::ok([s.description, d.offset, d.flags, d.node, 0]).with_bytes(path.into_bytes()))
            }
            op::FS_IMPORT_STREAM => {
                let (key, offset, flags, node_hint) = (req.words[2], req.words[3], req.words[4], req.words[5]);
                if flags & !open::ALL != 0 || flags & (open::READ | open::WRITE | open::DIRECTORY) == 0 || offset > i64::MAX as u64 {
                    return Err(Error::Invalid);
                }
                let session = req.alias;
                if !st.sessions.contains_key(&session) {
                    return Err(Error::BadObject);
                }
                let by_path = if path.is_empty() { None } else { st.tree.lookup(path).ok() };
                let node = by_path.or_else(|| st.tree.exists(node_hint).then_some(node_hint)).ok_or(Error::NotFound)?;
                let (_, k, _) = st.tree.stat(node)?;
                if (k == kind::DIR) != (flags & open::DIRECTORY != 0) {
                    return Err(if k == kind::DIR { Error::IsDir } else { Error::NotDir });
                }
                let description = match st.imported.get(&(session, key)).copied() {
                    Some(d) if st.descriptions.get(&d).is_some_and(|x| x.node == node) => {
                        if let Some(x) = st.descriptions.get_mut(&d) {
                            x.refs += 1;
                        }
                        d
                    }
                    _ => {
                        let d = st.next_description;
                        st.next_description += 1;
                        st.descriptions.insert(d, Description { node, offset, flags, refs: 1 });
                        st.imported.insert((session, key), d);
                        d
                    }
                };
                let (alias, port) = self.new_port(st)?;
                st.streams.insert(alias, Stream { description, session });
                st.sessions.entry(session).or_default().insert(alias);
                Ok(Reply::ok([0; 5]).giving(port))
            }
            _ => Err(Error::Unsupported),
        }
    }

    fn stream(&self, req: &Request, st: &mut State) -> Result<Reply, Error> {
        let alias = req.alias;
        match req.op() {
            op::STREAM_READ | op::STREAM_PREAD => {
                let d = st.stream(alias)?;
                let (at, max) = match req.op() {
                    op::STREAM_READ => (d.offset, req.words[2]),
                    _ => (req.words[2], req.words[3]),
                };
                if d.flags & open::READ == 0 {
                    return Err(Error::Denied);
                }
                let max = (max as usize).min(MAX_PAYLOAD);
                // Within one page of data: the reply sends the page itself
                // (one copy in all, the kernel's into the client's buffer).
                let (reply, n) = match st.tree.read_shared(d.node, at, max)? {
                    Some((page, start, end)) => {
                        let n = (end - start) as u64;
                        (Reply::ok([n, 0, 0, 0, 0]).with_page(page, start, end), n)
                    }
                    None => {
                        let bytes = st.tree.read(d.node, at, max)?;
                        let n = bytes.len() as u64;
                        (Reply::ok([n, 0, 0, 0, 0]).with_bytes(bytes), n)
                    }
                };
                if req.op() == op::STREAM_READ {
                    st.stream_mut(alias)?.offset = at + n;
                }
                Ok(reply)
            }
            op::STREAM_WRITE | op::STREAM_PWRITE => {
                let d = st.stream(alias)?;
                if d.flags & open::WRITE == 0 {
                    return Err(Error::Denied);
                }
                let node = d.node;
                let at = match (req.op(), d.flags & open::APPEND != 0) {
                    (op::STREAM_PWRITE, _) => req.words[2],
                    (_, true) => st.tree.stat(node)?.0,
                    _ => d.offset,
                };
                // The bytes go straight from the client's memory into the
                // file's pages (only the first few came with the request).
                let n = st.tree.write_with(node, at, req.len, |dst, from| payload_piece(req, dst, from))? as u64;
                if req.op() == op::STREAM_WRITE {
                    st.stream_mut(alias)?.offset = at + n;
                }
                Ok(Reply::ok([n, 0, 0, 0, 0]))
            }
            op::STREAM_SEEK => {
                let size = st.tree.stat(st.stream(alias)?.node)?.0;
                let d = st.stream_mut(alias)?;
                let base = match req.words[3] {
                    0 => 0,
                    1 => d.offset,
                    2 => size,
                    _ => return Err(Error::Invalid),
                };
                let to = (base as i64).checked_add(req.words[2] as i64).filter(|&t| t >= 0).ok_or(Error::Invalid)?;
                d.offset = to as u64;
                Ok(Reply::ok([d.offset, 0, 0, 0, 0]))
            }
            op::STREAM_STAT => {
                let (size, k, _) = st.tree.stat(st.stream(alias)?.node)?;
                Ok(Reply::ok([size, k, 0, 0, 0]))
            }
            op::STREAM_TRUNCATE => {
                let d = st.stream(alias)?;
                if d.flags & open::WRITE == 0 {
                    return Err(Error::Denied);
                }
                let node = d.node;
                st.tree.truncate(node, req.words[2]).map(|_| Reply::ok([0; 5]))
            }
            op::STREAM_DUP => {
                let s = st.streams.get(&alias).ok_or(Error::BadObject)?;
                let (description, session) = (s.description, s.session);
                let (new, port) = self.new_port(st)?;
                if let Some(d) = st.descriptions.get_mut(&description) {
                    d.refs += 1;
                }
                st.streams.insert(new, Stream { description, session });
                st.sessions.entry(session).or_default().insert(new);
                Ok(Reply::ok([0; 5]).giving(port))
            }
            op::STREAM_CLOSE => {
                st.close_stream(alias)?;
                self.forget(&[alias]);
                Ok(Reply::ok([0; 5]))
            }
            op::STREAM_READDIR => {
                let d = st.stream(alias)?;
                let (name, k, size) = st.tree.entry(d.node, req.words[2])?;
                let name = name.as_bytes().to_vec();
                Ok(Reply::ok([k, size, 0, 0, 0]).with_bytes(name))
            }
            _ => Err(Error::Unsupported),
        }
    }
}

impl Service for FileServer {
    fn handle(&self, req: Request) -> Reply {
        if let Some(h) = req.handle {
            // No request of these protocols carries a capability: refuse it
            // and do not keep the handle.
            let _ = obj::close(h);
            return Reply::err(Error::Invalid);
        }
        let mut st = self.state.lock();
        // Streams first: most requests are theirs (aliases of both kinds come
        // from one counter, so the order decides nothing else).
        let r = if st.streams.contains_key(&req.alias) {
            self.stream(&req, &mut st)
        } else if st.sessions.contains_key(&req.alias) {
            self.session(&req, &mut st)
        } else {
            Err(Error::BadObject)
        };
        Reply::from(r)
    }

    fn sequenced(&self, op: u64) -> bool {
        // A repeated open or dup makes a second port (the first one went to a
        // stopped copy); a positioned read is idempotent, so a repeat simply
        // reads again (and no window keeps its page, which a write would then
        // have to copy); the rest replays the remembered reply.
        !matches!(op, op::FS_OPEN | op::STREAM_DUP | op::FS_IMPORT_STREAM | op::STREAM_PREAD)
    }

    fn receive_capacity(&self) -> usize {
        RECEIVE_CAPACITY
    }

    fn reads_payload(&self, op: u64) -> bool {
        matches!(op, op::STREAM_WRITE | op::STREAM_PWRITE)
    }
}

/// Payload bytes each request brings along: a path fits (a longer one's
/// rest is read before the request is handled); a write's data is read
/// straight into the file.
const RECEIVE_CAPACITY: usize = 256;

/// Bytes `[from, from + dst.len())` of a write request's payload: what came
/// with the request, the rest straight from the client's memory.
fn payload_piece(req: &Request, dst: &mut [u8], from: usize) -> Result<(), Error> {
    let part = crate::data::part(req.bytes, from, dst.len());
    let came = part.len();
    dst[..came].copy_from_slice(part);
    if came < dst.len() {
        let got = matryoshka_rt::ipc::request_read((from + came) as u64, &mut dst[came..]).map_err(|_| Error::Gone)?;
        if got != dst.len() - came {
            return Err(Error::Invalid);
        }
    }
    Ok(())
}

/// Fills the tree from the archive (cpio newc) at `bytes`.
fn fill(tree: &mut Tree, bytes: &[u8]) -> usize {
    let mut files = 0;
    for e in cpio_reader::iter_files(bytes) {
        let name = e.name().trim_start_matches("./").trim_start_matches('/');
        if name.is_empty() || name == "." {
            continue;
        }
        let path = format!("/{name}");
        let is_dir = e.mode().bits() & 0o170000 == 0o040000;
        let r = if is_dir {
            tree.mkdir_all(&path).map(|_| ())
        } else {
            let parent = path.rsplit_once('/').map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
            tree.mkdir_all(parent).and_then(|_| tree.create(&path)).and_then(|id| tree.write(id, 0, e.file()).map(|_| ()))
        };
        match r {
            Ok(()) if !is_dir => files += 1,
            Ok(()) => {}
            Err(err) => println!("fs: archive entry {path}: {err}"),
        }
    }
    files
}

/// Maps the archive region the parent lends (read-only) and returns its bytes.
fn archive() -> Result<&'static [u8], Error> {
    let parent = io::parent().ok_or(Error::NotFound)?;
    let region = parent.get("archive")?;
    let state = obj::object_get_state(region)?;
    let size = state[2];
    let me = Handle(env::aux(AT_SELF_SPACE).ok_or(Error::Denied)?);
    m::mapping_create(region, me, ARCHIVE_VA, 0, size, m::READ)?;
    // SAFETY: [ARCHIVE_VA, +size) is now a read-only mapping of the archive
    // region, kept for the program's whole life.
    Ok(unsafe { core::slice::from_raw_parts(ARCHIVE_VA as *const u8, size as usize) })
}

pub fn main() -> i32 {
    let (Some(portset), Some(me)) = (env::aux(AT_SERVICE), env::aux(AT_SELF_SPACE)) else {
        println!("fs: started without a service portset or own space (it is started by init)");
        return 2;
    };
    let mut tree = Tree::new();
    let files = match archive() {
        Ok(bytes) => fill(&mut tree, bytes),
        Err(e) => {
            println!("fs: no boot archive ({e}); starting empty");
            0
        }
    };
    let state = match Mutex::new(State {
        tree,
        next_alias: FIRST_SESSION,
        sessions: BTreeMap::from([(FIRST_SESSION, BTreeSet::new())]),
        streams: BTreeMap::new(),
        descriptions: BTreeMap::new(),
        next_description: 1,
        imported: BTreeMap::new(),
    }) {
        Ok(s) => s,
        Err(e) => {
            println!("fs: {e:?}");
            return 1;
        }
    };
    let _ = files;
    let server_cell = match Mutex::new(None) {
        Ok(s) => s,
        Err(e) => {
            println!("fs: {e:?}");
            return 1;
        }
    };
    let service: &'static FileServer =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(FileServer { portset: Handle(portset), state, server: server_cell }));
    let _ = client::seq;
    // One pool thread, and this thread serves too (two to begin with).
    match server::start(Handle(me), Handle(portset), service, 1) {
        Ok(s) => {
            *service.server.lock() = Some(s);
            s.serve()
        }
        Err(e) => {
            println!("fs: cannot start its threads: {e}");
            1
        }
    }
}
