//! Clients of the common protocols: typed wrappers, one per operation, over
//! the references a program holds (PROTOCOLS.md).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use matryoshka_rt::ipc::{self, Payload};
use matryoshka_rt::object::{self as obj, Handle};

use crate::proto::{self, op, status, Error, Seq, Words, MAX_PAYLOAD};

/// Sequence numbers for this program's non-idempotent requests: one
/// counter for every reference (a server compares a request's number only
/// with the last one it saw on the same reference).
static SEQ: Seq = Seq::new();

/// A new sequence number.
pub fn seq() -> u64 {
    SEQ.next()
}

/// One request: words, bytes and a capability out; the reply's words,
/// bytes (into `recv`) and capability back. A failed reply is an `Err`.
pub fn call(
    port: Handle,
    words: Words,
    send: &[u8],
    handle: Option<Handle>,
    recv: &mut [u8],
) -> Result<(Words, usize, Option<Handle>), Error> {
    let mut p = Payload { send, handle, recv };
    let (w, got) = ipc::call_payload(port, words, &mut p).map_err(Error::from)?;
    if let Err(e) = status(&w) {
        if let Some(h) = got.handle {
            let _ = obj::close(h);
        }
        return Err(e);
    }
    Ok((w, got.len.min(p.recv.len()), got.handle))
}

/// A request and reply of registers only (the IPC fast path when the
/// server waits on this CPU).
fn call_words(port: Handle, words: Words) -> Result<Words, Error> {
    let w = ipc::call(port, words).map_err(Error::from)?;
    status(&w)?;
    Ok(w)
}

fn call_for_handle(port: Handle, words: Words, send: &[u8]) -> Result<(Words, Handle), Error> {
    let (w, _, h) = call(port, words, send, None, &mut [])?;
    Ok((w, h.ok_or(Error::Kernel)?))
}

/// One open stream of a file-system session as an export describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// Streams that share an offset (dups) share the key.
    pub key: u64,
    pub offset: u64,
    pub flags: u64,
    /// The node, valid in the exporting server only.
    pub node: u64,
    /// Its path, or '' if no folder names it any more.
    pub path: String,
}

/// A stream: console, file, pipe end or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream(pub Handle);

/// What `Stream::stat` says.
#[derive(Clone, Copy, Debug)]
pub struct StreamStat {
    pub size: u64,
    pub kind: u64,
}

impl Stream {
    /// Reads at most `buf.len()` bytes (at most 64 KiB); 0 at end of file.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let want = buf.len().min(MAX_PAYLOAD);
        let (w, n, _) = call(self.0, [op::STREAM_READ, seq(), want as u64, 0, 0, 0], &[], None, &mut buf[..want])?;
        Ok((w[1] as usize).min(n))
    }

    /// Writes `bytes` (at most 64 KiB per request); returns how many were taken.
    pub fn write(&self, bytes: &[u8]) -> Result<usize, Error> {
        let part = &bytes[..bytes.len().min(MAX_PAYLOAD)];
        let (w, _, _) = call(self.0, [op::STREAM_WRITE, seq(), 0, 0, 0, 0], part, None, &mut [])?;
        Ok(w[1] as usize)
    }

    /// Writes all of `bytes`.
    pub fn write_all(&self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let n = self.write(bytes)?;
            if n == 0 {
                return Err(Error::NoSpace);
            }
            bytes = &bytes[n.min(bytes.len())..];
        }
        Ok(())
    }

    /// Reads everything up to end of file.
    pub fn read_to_end(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let want = buf.len().min(MAX_PAYLOAD);
        let (w, n, _) = call(self.0, [op::STREAM_PREAD, 0, offset, want as u64, 0, 0], &[], None, &mut buf[..want])?;
        Ok((w[1] as usize).min(n))
    }

    pub fn pwrite(&self, offset: u64, bytes: &[u8]) -> Result<usize, Error> {
        let part = &bytes[..bytes.len().min(MAX_PAYLOAD)];
        let (w, _, _) = call(self.0, [op::STREAM_PWRITE, 0, offset, 0, 0, 0], part, None, &mut [])?;
        Ok(w[1] as usize)
    }

    pub fn seek(&self, offset: i64, whence: u64) -> Result<u64, Error> {
        Ok(call_words(self.0, [op::STREAM_SEEK, seq(), offset as u64, whence, 0, 0])?[1])
    }

    pub fn stat(&self) -> Result<StreamStat, Error> {
        let w = call_words(self.0, [op::STREAM_STAT, 0, 0, 0, 0, 0])?;
        Ok(StreamStat { size: w[1], kind: w[2] })
    }

    /// Console only: blocks until Ctrl-C has been pressed more than
    /// `seen` times in all; returns the new total.
    pub fn wait_interrupt(&self, seen: u64) -> Result<u64, Error> {
        Ok(call_words(self.0, [op::CONSOLE_WAIT_INTERRUPT, 0, seen, 0, 0, 0])?[1])
    }

    pub fn truncate(&self, len: u64) -> Result<(), Error> {
        call_words(self.0, [op::STREAM_TRUNCATE, 0, len, 0, 0, 0]).map(|_| ())
    }

    /// A second reference to the same open stream (shared offset), for a child.
    pub fn dup(&self) -> Result<Stream, Error> {
        call_for_handle(self.0, [op::STREAM_DUP, seq(), 0, 0, 0, 0], &[]).map(|(_, h)| Stream(h))
    }

    /// Entry `index` of a directory: (name, kind, size).
    pub fn readdir(&self, index: u64) -> Result<Option<(String, u64, u64)>, Error> {
        let mut name = [0u8; 256];
        match call(self.0, [op::STREAM_READDIR, 0, index, 0, 0, 0], &[], None, &mut name) {
            Ok((w, n, _)) => Ok(Some((String::from_utf8_lossy(&name[..n]).into_owned(), w[1], w[2]))),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Tells the server this reference is done, and closes the handle.
    pub fn close(self) -> Result<(), Error> {
        let r = call_words(self.0, [op::STREAM_CLOSE, 0, 0, 0, 0, 0]).map(|_| ());
        let _ = obj::close(self.0);
        r
    }
}

/// A FileSystem session.
#[derive(Clone, Copy, Debug)]
pub struct Fs(pub Handle);

/// What `Fs::stat` says.
#[derive(Clone, Copy, Debug)]
pub struct FileStat {
    pub size: u64,
    pub kind: u64,
    pub entries: u64,
}

/// Refuses a path no server would take, before sending it.
fn path_ok(path: &str) -> Result<&[u8], Error> {
    if path.len() > proto::MAX_PATH {
        return Err(Error::TooLong);
    }
    Ok(path.as_bytes())
}

impl Fs {
    pub fn open(&self, path: &str, flags: u64) -> Result<Stream, Error> {
        path_ok(path)?;
        call_for_handle(self.0, [op::FS_OPEN, seq(), flags, 0, 0, 0], path.as_bytes()).map(|(_, h)| Stream(h))
    }
    pub fn stat(&self, path: &str) -> Result<FileStat, Error> {
        let (w, _, _) = call(self.0, [op::FS_STAT, 0, 0, 0, 0, 0], path_ok(path)?, None, &mut [])?;
        Ok(FileStat { size: w[1], kind: w[2], entries: w[3] })
    }
    pub fn mkdir(&self, path: &str) -> Result<(), Error> {
        call(self.0, [op::FS_MKDIR, seq(), 0, 0, 0, 0], path_ok(path)?, None, &mut []).map(|_| ())
    }
    pub fn unlink(&self, path: &str) -> Result<(), Error> {
        call(self.0, [op::FS_UNLINK, seq(), 0, 0, 0, 0], path_ok(path)?, None, &mut []).map(|_| ())
    }
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        path_ok(from)?;
        path_ok(to)?;
        let mut blob = Vec::with_capacity(from.len() + to.len() + 1);
        blob.extend_from_slice(from.as_bytes());
        blob.push(0);
        blob.extend_from_slice(to.as_bytes());
        call(self.0, [op::FS_RENAME, seq(), 0, 0, 0, 0], &blob, None, &mut []).map(|_| ())
    }
    pub fn new_session(&self) -> Result<Fs, Error> {
        call_for_handle(self.0, [op::FS_NEW_SESSION, 0, 0, 0, 0, 0], &[]).map(|(_, h)| Fs(h))
    }
    pub fn end_session(&self) -> Result<(), Error> {
        call_words(self.0, [op::FS_END_SESSION, 0, 0, 0, 0, 0]).map(|_| ())
    }
    /// Streams open in this session.
    pub fn open_streams(&self) -> Result<u64, Error> {
        Ok(call_words(self.0, [op::FS_SESSION_INFO, 0, 0, 0, 0, 0])?[1])
    }
    /// A whole file.
    /// The `index`-th open stream of this session as an export record, or
    /// `None` past the end (PROTOCOLS.md, exporting a client's state).
    pub fn export_stream(&self, index: u64) -> Result<Option<StreamRecord>, Error> {
        let mut path = vec![0u8; proto::MAX_PATH];
        match call(self.0, [op::FS_EXPORT_STREAM, 0, index, 0, 0, 0], &[], None, &mut path) {
            Ok((w, n, _)) => {
                path.truncate(n);
                Ok(Some(StreamRecord {
                    key: w[1],
                    offset: w[2],
                    flags: w[3],
                    node: w[4],
                    path: String::from_utf8_lossy(&path).into_owned(),
                }))
            }
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every open stream of this session, as export records.
    pub fn export_session(&self) -> Result<Vec<StreamRecord>, Error> {
        let mut out = Vec::new();
        while let Some(r) = self.export_stream(out.len() as u64)? {
            out.push(r);
        }
        Ok(out)
    }

    /// Re-creates an exported stream in this session.
    pub fn import_stream(&self, r: &StreamRecord) -> Result<Stream, Error> {
        let path = if r.path.is_empty() { &[][..] } else { path_ok(&r.path)? };
        call_for_handle(self.0, [op::FS_IMPORT_STREAM, 0, r.key, r.offset, r.flags, r.node], path).map(|(_, h)| Stream(h))
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let s = self.open(path, proto::open::READ)?;
        let r = s.read_to_end();
        let _ = s.close();
        r
    }
}

/// The references a new process starts with (None: the manager's default).
#[derive(Default, Clone, Copy)]
pub struct SpawnRefs {
    pub refs: [Option<Handle>; proto::slot::COUNT],
}

/// A spawned process.
#[derive(Clone, Copy, Debug)]
pub struct Spawned {
    pub pid: u64,
    /// The child's space and first thread, if asked for (every right: the
    /// spawner controls its child completely).
    pub space: Option<Handle>,
}

/// Spawn flag: reply with the child's space.
pub const SPAWN_CONTROL: u64 = 1;

/// One line of the process list.
#[derive(Clone, Debug)]
pub struct ProcessEntry {
    pub pid: u64,
    pub ppid: u64,
    pub exited: bool,
    pub status: u64,
    pub command: String,
}

/// A process's entry as PM_EXPORT_PROCESS gives it, with its pipe ends.
#[derive(Clone, Debug)]
pub struct ProcessRecord {
    pub entry: ProcessEntry,
    pub ends: Vec<PipeEndRecord>,
}

/// One pipe end a process holds, as PM_EXPORT_END gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeEndRecord {
    /// The ends of one pipe share it (valid in the exporting manager only).
    pub pipe: u64,
    /// The end itself: a process holding one end in two places lists it once.
    pub end: u64,
    /// [`proto::pipe_end`] WRITER, END_OF_FILE.
    pub flags: u64,
    /// Where the process holds it: `1 << slot` for a standard stream,
    /// [`proto::pipe_end::HELD_CREATED`] for one it made or imported.
    pub held: u64,
    /// What was buffered in the pipe.
    pub bytes: Vec<u8>,
}

impl PipeEndRecord {
    pub fn writer(&self) -> bool {
        self.flags & proto::pipe_end::WRITER != 0
    }
}

/// A process manager reference (this process's own).
#[derive(Clone, Copy, Debug)]
pub struct Pm(pub Handle);

impl Pm {
    /// Starts `path` with `argv` and `env`; references in `refs` replace the defaults.
    pub fn spawn(&self, path: &str, argv: &[&str], env: &[&str], refs: &SpawnRefs, flags: u64) -> Result<Spawned, Error> {
        let mut blob = Vec::new();
        proto::encode_spawn(path, argv, env, &mut blob)?;
        let ticket = call_words(self.0, [op::PM_SPAWN_BEGIN, seq(), 0, 0, 0, 0])?[1];
        for (slot, r) in refs.refs.iter().enumerate() {
            if let Some(h) = r {
                call(self.0, [op::PM_SPAWN_REF, 0, ticket, slot as u64, 0, 0], &[], Some(*h), &mut [])?;
            }
        }
        let (w, _, space) = call(self.0, [op::PM_SPAWN_START, seq(), ticket, flags, 0, 0], &blob, None, &mut [])?;
        Ok(Spawned { pid: w[1], space })
    }

    /// Waits for child `pid` (0: any child) to end: (pid, status). With
    /// `block` false, `WouldBlock` if none has ended.
    pub fn wait(&self, pid: u64, block: bool) -> Result<(u64, u64), Error> {
        let w = call_words(self.0, [op::PM_WAIT, seq(), pid, if block { 0 } else { 1 }, 0, 0])?;
        Ok((w[1], w[2]))
    }

    pub fn kill(&self, pid: u64, signal: u64) -> Result<(), Error> {
        call_words(self.0, [op::PM_KILL, 0, pid, signal, 0, 0]).map(|_| ())
    }

    /// (pid, parent pid).
    pub fn getpid(&self) -> Result<(u64, u64), Error> {
        let w = call_words(self.0, [op::PM_GETPID, 0, 0, 0, 0, 0])?;
        Ok((w[1], w[2]))
    }

    /// Process `index` of the list.
    pub fn list(&self, index: u64) -> Result<Option<ProcessEntry>, Error> {
        let mut line = [0u8; 512];
        match call(self.0, [op::PM_LIST, 0, index, 0, 0, 0], &[], None, &mut line) {
            Ok((w, n, _)) => Ok(Some(ProcessEntry {
                pid: w[1],
                ppid: w[2],
                exited: w[3] != 0,
                status: w[4],
                command: String::from_utf8_lossy(&line[..n]).into_owned(),
            })),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A pipe: (read end, write end).
    pub fn pipe(&self) -> Result<(Stream, Stream), Error> {
        let (w, read) = call_for_handle(self.0, [op::PM_PIPE, seq(), 0, 0, 0, 0], &[])?;
        let (_, write) = call_for_handle(self.0, [op::PM_PIPE_WRITER, 0, w[1], 0, 0, 0], &[])?;
        Ok((Stream(read), Stream(write)))
    }

    /// The first thread of child `pid` (the caller must be its parent).
    pub fn child_thread(&self, pid: u64) -> Result<Handle, Error> {
        call_for_handle(self.0, [op::PM_CHILD_THREAD, 0, pid, 0, 0, 0], &[]).map(|(_, h)| h)
    }

    /// Process `pid`'s entry (0: this process's; else a child's) and the
    /// pipe ends it holds (PROTOCOLS.md, exporting a client's state).
    pub fn export_process(&self, pid: u64) -> Result<ProcessRecord, Error> {
        let mut line = vec![0u8; 512];
        let (w, n, _) = call(self.0, [op::PM_EXPORT_PROCESS, 0, pid, 0, 0, 0], &[], None, &mut line)?;
        line.truncate(n);
        let entry =
            ProcessEntry { pid: w[1], ppid: w[2], exited: w[3] != 0, status: w[4], command: String::from_utf8_lossy(&line).into_owned() };
        // Asked by the pid the first reply named, so an export of "0" does
        // not change meaning between the calls.
        let mut ends = Vec::new();
        while let Some(r) = self.export_end(entry.pid, ends.len() as u64)? {
            ends.push(r);
        }
        Ok(ProcessRecord { entry, ends })
    }

    /// The `index`-th pipe end process `pid` holds, or `None` past the end.
    pub fn export_end(&self, pid: u64, index: u64) -> Result<Option<PipeEndRecord>, Error> {
        let mut bytes = vec![0u8; MAX_PAYLOAD];
        match call(self.0, [op::PM_EXPORT_END, 0, pid, index, 0, 0], &[], None, &mut bytes) {
            Ok((w, n, _)) => {
                bytes.truncate(n.min(w[5] as usize));
                Ok(Some(PipeEndRecord { pipe: w[1], end: w[2], flags: w[3], held: w[4], bytes }))
            }
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Re-creates an exported pipe end as this process's: (the new pipe's
    /// id, the end). Ends imported with the same `pipe` key share one pipe.
    pub fn import_end(&self, r: &PipeEndRecord) -> Result<(u64, Stream), Error> {
        if r.bytes.len() > MAX_PAYLOAD {
            return Err(Error::TooLong);
        }
        call_for_handle(self.0, [op::PM_IMPORT_END, 0, r.pipe, r.flags, 0, 0], &r.bytes).map(|(w, h)| (w[1], Stream(h)))
    }

    /// Re-creates an exited process's record as a child of this process
    /// (its WAIT returns `status`); returns its new pid.
    pub fn import_exited(&self, command: &str, status: u64) -> Result<u64, Error> {
        Ok(call(self.0, [op::PM_IMPORT_PROCESS, seq(), status, 0, 0, 0], command.as_bytes(), None, &mut [])?.0[1])
    }

    /// (processes alive, pipes open, server threads).
    pub fn info(&self) -> Result<(u64, u64, u64), Error> {
        let w = call_words(self.0, [op::PM_INFO, 0, 0, 0, 0, 0])?;
        Ok((w[1], w[2], w[3]))
    }
}

/// A Parent reference.
#[derive(Clone, Copy, Debug)]
pub struct Parent(pub Handle);

impl Parent {
    /// The reference the parent has under `name`.
    pub fn get(&self, name: &str) -> Result<Handle, Error> {
        call_for_handle(self.0, [op::PARENT_GET_REF, 0, 0, 0, 0, 0], name.as_bytes()).map(|(_, h)| h)
    }
}
