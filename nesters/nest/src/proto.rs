//! Matryoshka's common protocols (nesters/PROTOCOLS.md, version 1): the
//! operation codes, error codes and word layouts shared by every client and
//! server. A message is six u64 words plus an optional payload (bytes up to
//! 64 KiB and one capability). Requests: word 0 the operation, word 1 the
//! request's sequence number (0 for idempotent requests; see [`Seq`]),
//! words 2–5 its arguments. Replies: word 0 is 0 or a negative [`Error`]
//! code, words 1–5 the results. Each operation's encoding lives in one
//! function here ([`Request`] constructors and the client wrappers of
//! `crate::client`), so no call site packs words by hand.

/// Six message words.
pub type Words = [u64; 6];

/// Protocol version (PROTOCOLS.md).
pub const VERSION: u64 = 1;

/// Largest payload one message carries (the kernel's limit).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest path a server accepts.
pub const MAX_PATH: usize = 1024;

/// Why a request failed (replies carry `-(code)` in word 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Error {
    NotFound = 1,
    Exists = 2,
    NotDir = 3,
    IsDir = 4,
    Invalid = 5,
    /// The stream or object was closed (or never existed).
    BadObject = 6,
    NoSpace = 7,
    BrokenPipe = 8,
    NotEmpty = 9,
    TooLong = 10,
    WouldBlock = 11,
    NoChild = 12,
    Denied = 13,
    /// A kernel call failed underneath (the server's own problem).
    Kernel = 14,
    Unsupported = 15,
    NoMemory = 16,
    TimedOut = 17,
    /// The server that owned this reference is gone.
    Gone = 18,
    /// A console read ended by Ctrl-C (the partial line was discarded).
    Interrupted = 19,
}

impl Error {
    pub fn code(self) -> u64 {
        self as u64
    }

    pub fn from_code(c: u64) -> Error {
        use Error::*;
        match c {
            1 => NotFound,
            2 => Exists,
            3 => NotDir,
            4 => IsDir,
            5 => Invalid,
            6 => BadObject,
            7 => NoSpace,
            8 => BrokenPipe,
            9 => NotEmpty,
            10 => TooLong,
            11 => WouldBlock,
            12 => NoChild,
            13 => Denied,
            15 => Unsupported,
            16 => NoMemory,
            17 => TimedOut,
            18 => Gone,
            19 => Interrupted,
            _ => Kernel,
        }
    }

    /// A short message, as `ls: /x: not found` prints it.
    pub fn describe(self) -> &'static str {
        use Error::*;
        match self {
            NotFound => "not found",
            Exists => "already exists",
            NotDir => "not a directory",
            IsDir => "is a directory",
            Invalid => "invalid argument",
            BadObject => "bad or closed object",
            NoSpace => "no space",
            BrokenPipe => "broken pipe",
            NotEmpty => "directory not empty",
            TooLong => "name too long",
            WouldBlock => "would block",
            NoChild => "no such child",
            Denied => "permission denied",
            Kernel => "kernel call failed",
            Unsupported => "not supported",
            NoMemory => "out of memory",
            TimedOut => "timed out",
            Gone => "server gone",
            Interrupted => "interrupted",
        }
    }
}

impl From<matryoshka_rt::SysError> for Error {
    fn from(e: matryoshka_rt::SysError) -> Self {
        use matryoshka_rt::SysError as S;
        match e {
            S::NoMemory => Error::NoMemory,
            S::Dead => Error::Gone,
            S::BadHandle | S::WrongType => Error::BadObject,
            S::MissingRights => Error::Denied,
            S::TimedOut => Error::TimedOut,
            _ => Error::Kernel,
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A reply's words: `Ok` results or an error.
pub fn reply_ok(results: [u64; 5]) -> Words {
    [0, results[0], results[1], results[2], results[3], results[4]]
}

pub fn reply_err(e: Error) -> Words {
    [(-(e.code() as i64)) as u64, 0, 0, 0, 0, 0]
}

/// Decodes a reply's status word.
pub fn status(w: &Words) -> Result<(), Error> {
    match w[0] as i64 {
        0 => Ok(()),
        n if n < 0 => Err(Error::from_code((-n) as u64)),
        _ => Err(Error::Invalid),
    }
}

/// Sequence numbers of non-idempotent requests. Fluke's IPC may deliver a
/// request twice (a client stopped after the server took it calls again);
/// a server that sees a number it has already answered on the same
/// reference replays the reply instead of a second effect (`crate::server`).
///
/// One reference may be shared by several programs (an inherited standard
/// output), each with its own counter, so the counter starts at a random
/// base: two programs' numbers on one reference collide only if their bases
/// land within a few requests of each other in 2^64. Never 0 (0 marks an
/// idempotent request).
pub struct Seq {
    base: core::sync::atomic::AtomicU64,
    count: core::sync::atomic::AtomicU64,
}

impl Seq {
    /// A counter seeded on first use.
    pub const fn new() -> Self {
        Seq { base: core::sync::atomic::AtomicU64::new(0), count: core::sync::atomic::AtomicU64::new(0) }
    }
    /// A counter starting just after `base` (tests; 0 means seed on first use).
    pub const fn with_base(base: u64) -> Self {
        Seq { base: core::sync::atomic::AtomicU64::new(base), count: core::sync::atomic::AtomicU64::new(0) }
    }
    pub fn next(&self) -> u64 {
        use core::sync::atomic::Ordering::Relaxed;
        let mut base = self.base.load(Relaxed);
        if base == 0 {
            // Racing first users agree on whichever seed lands first.
            base = match self.base.compare_exchange(0, seed(), Relaxed, Relaxed) {
                Ok(_) => self.base.load(Relaxed),
                Err(current) => current,
            };
        }
        loop {
            let n = base.wrapping_add(self.count.fetch_add(1, Relaxed).wrapping_add(1));
            if n != 0 {
                return n;
            }
        }
    }
}

/// A seed that differs between programs: the time stamp counter at first
/// use, mixed (splitmix64) so that programs started close together get
/// bases far apart. Never 0.
fn seed() -> u64 {
    // SAFETY: `rdtsc` only reads the time stamp counter (user mode may read it: CR4.TSD is clear).
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let marker = 0u8;
    mix(tsc ^ (&marker as *const u8 as u64).rotate_left(32)).max(1)
}

/// splitmix64's finalizer: a bijection that spreads nearby inputs apart.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Default for Seq {
    fn default() -> Self {
        Self::new()
    }
}

/// Operation codes, one block per protocol.
pub mod op {
    // Parent: what a child asks the program that started it.
    /// Payload: a name. Reply: the named reference (payload capability).
    pub const PARENT_GET_REF: u64 = 1;

    // Stream: console, files, pipe ends, directories.
    /// w2 = most bytes. Reply w1 = n, payload the bytes; n = 0 at end of file. Sequenced.
    pub const STREAM_READ: u64 = 10;
    /// Payload = bytes. Reply w1 = bytes written. Sequenced.
    pub const STREAM_WRITE: u64 = 11;
    /// w2 = offset, w3 = most bytes (idempotent). Reply as READ.
    pub const STREAM_PREAD: u64 = 12;
    /// w2 = offset, payload = bytes (idempotent: same bytes, same place).
    pub const STREAM_PWRITE: u64 = 13;
    /// w2 = offset, w3 = whence (0 set, 1 current, 2 end). Reply w1 = new offset. Sequenced.
    pub const STREAM_SEEK: u64 = 14;
    /// Reply w1 = size, w2 = kind ([`super::kind`]).
    pub const STREAM_STAT: u64 = 15;
    /// Reply: a new reference to the same open stream (shared offset). Sequenced.
    pub const STREAM_DUP: u64 = 16;
    /// Closes this reference (idempotent: a second close is `BadObject`).
    pub const STREAM_CLOSE: u64 = 17;
    /// w2 = index. Reply w1 = kind, w2 = size, payload = the name; NotFound past the end.
    pub const STREAM_READDIR: u64 = 18;
    /// w2 = new length.
    pub const STREAM_TRUNCATE: u64 = 19;

    // FileSystem (a session).
    /// w2 = flags ([`super::open`]), payload = path. Reply: a Stream reference. Sequenced.
    pub const FS_OPEN: u64 = 30;
    /// Payload = path. Reply w1 = size, w2 = kind, w3 = entries (folders).
    pub const FS_STAT: u64 = 31;
    /// Payload = path. Sequenced.
    pub const FS_MKDIR: u64 = 32;
    /// Payload = path (a file, or an empty folder). Sequenced.
    pub const FS_UNLINK: u64 = 33;
    /// Payload = "old\0new". Sequenced.
    pub const FS_RENAME: u64 = 34;
    /// Reply: a reference to a new session (what a process manager gives each process).
    pub const FS_NEW_SESSION: u64 = 35;
    /// Closes every stream opened through this session, and the session.
    pub const FS_END_SESSION: u64 = 36;
    /// Reply w1 = open streams in this session (for leak checks).
    pub const FS_SESSION_INFO: u64 = 37;
    /// Exporting a session (PROTOCOLS.md, version 2). w2 = index of an open
    /// stream of the session (alias order). Reply: w1 description key
    /// (streams that share an offset share it), w2 offset, w3 open flags,
    /// w4 the node (valid in this server only), payload the file's path
    /// ('' if no folder names it any more); NotFound past the end. Idempotent.
    pub const FS_EXPORT_STREAM: u64 = 38;
    /// w2 description key (from an export), w3 offset, w4 flags, w5 node,
    /// payload the path (tried first; the node if it is empty or gone).
    /// Reply: a Stream of this session at that offset; imports with the same
    /// key into one session share one offset.
    pub const FS_IMPORT_STREAM: u64 = 39;

    // ProcessManager (each process has its own reference).
    /// Reply w1 = a spawn ticket. Sequenced.
    pub const PM_SPAWN_BEGIN: u64 = 50;
    /// w2 = ticket, w3 = slot ([`super::slot`]), payload capability = the reference.
    pub const PM_SPAWN_REF: u64 = 51;
    /// w2 = ticket, w3 = flags (1: reply with the child's space and first thread),
    /// payload = path NUL argv NUL ... NUL NUL env NUL ... NUL. Reply w1 = pid. Sequenced.
    pub const PM_SPAWN_START: u64 = 52;
    /// w2 = pid (0: any child), w3 = flags (1: do not block). Reply w1 = pid, w2 = status. Sequenced.
    pub const PM_WAIT: u64 = 53;
    /// w2 = pid, w3 = signal ([`super::signal`]).
    pub const PM_KILL: u64 = 54;
    /// Reply w1 = pid, w2 = parent pid.
    pub const PM_GETPID: u64 = 55;
    /// w2 = index. Reply w1 = pid, w2 = parent pid, w3 = state (0 running, 1 exited),
    /// w4 = status, payload = the command line; NotFound past the end.
    pub const PM_LIST: u64 = 56;
    /// Reply w1 = pipe id, payload capability = the read end. Sequenced.
    pub const PM_PIPE: u64 = 57;
    /// w2 = pipe id. Reply: the write end (once per pipe).
    pub const PM_PIPE_WRITER: u64 = 58;
    /// Reply: w1 processes alive, w2 pipes open, w3 pm server threads.
    pub const PM_INFO: u64 = 59;
    /// w2 = pid of a child of the caller. Reply: its first thread (every right but TRANSFER's wider use:
    /// a parent stops, reads and rebuilds its child's threads).
    pub const PM_CHILD_THREAD: u64 = 60;
    /// Exporting a process (PROTOCOLS.md, version 2). w2 = pid (0: the
    /// caller; else a child of the caller). Reply w1 pid, w2 parent pid,
    /// w3 state (0 running, 1 exited), w4 status, w5 pipe ends it holds
    /// (what `PM_EXPORT_END` lists), payload the command line. Idempotent.
    pub const PM_EXPORT_PROCESS: u64 = 61;
    /// w2 = pid (as `PM_EXPORT_PROCESS`), w3 = index of one of its pipe
    /// ends (alias order). Reply w1 pipe key (the ends of one pipe share
    /// it), w2 end key, w3 flags ([`super::pipe_end`]), w4 where it is held
    /// ([`super::pipe_end::HELD_CREATED`], `1 << slot` for a standard
    /// stream), w5 bytes buffered in the pipe, payload those bytes (not
    /// consumed); NotFound past the end. Idempotent.
    pub const PM_EXPORT_END: u64 = 62;
    /// w2 = pipe key (not 0), w3 = flags ([`super::pipe_end`]), payload the
    /// pipe's buffered bytes. Reply w1 the new pipe's id, capability the
    /// end (the caller's). Imports by one caller with the same key join one
    /// pipe (the first one's bytes and flags make it).
    pub const PM_IMPORT_END: u64 = 63;
    /// w2 = status (0-255), payload the command line. Reply w1 the pid of a
    /// new, exited child of the caller (its WAIT returns the status). A
    /// running process comes with its space: a checkpointer's job, not this. Sequenced.
    pub const PM_IMPORT_PROCESS: u64 = 64;

    // Console: a Stream, plus
    /// Reply: a new Stream reference to the console.
    pub const CONSOLE_OPEN: u64 = 70;
    /// w2 = the number of Ctrl-C presses the caller has seen (0 at first).
    /// Blocks until there have been more; reply w1 = how many there have
    /// been since the console started. A shell runs this on a thread of its
    /// own and interrupts its foreground job. Idempotent (carries 0).
    pub const CONSOLE_WAIT_INTERRUPT: u64 = 71;
}

/// Stream kinds (STREAM_STAT w2, FS_STAT w2).
pub mod kind {
    pub const FILE: u64 = 1;
    pub const DIR: u64 = 2;
    pub const PIPE: u64 = 3;
    pub const CONSOLE: u64 = 4;
}

/// FS_OPEN flags.
pub mod open {
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const CREATE: u64 = 4;
    pub const TRUNCATE: u64 = 8;
    pub const EXCLUSIVE: u64 = 16;
    pub const APPEND: u64 = 32;
    pub const DIRECTORY: u64 = 64;
    pub const ALL: u64 = 127;
}

/// PM_SPAWN_REF slots: the references a new process starts with.
pub mod slot {
    pub const STDIN: u64 = 0;
    pub const STDOUT: u64 = 1;
    pub const STDERR: u64 = 2;
    /// Its FileSystem session (default: a new session of the manager's file server).
    pub const FS: u64 = 3;
    /// Its parent's port (default: the process manager's Parent service).
    pub const PARENT: u64 = 4;
    pub const COUNT: usize = 5;
}

/// PM_EXPORT_END / PM_IMPORT_END flags (w3) and places (w4).
pub mod pipe_end {
    /// The end writes (else it reads).
    pub const WRITER: u64 = 1;
    /// The pipe has no writer left: after its bytes, end of file.
    pub const END_OF_FILE: u64 = 2;
    pub const ALL: u64 = 3;
    /// Export w4: the process created (or imported) the end itself; bits
    /// 0-2 are its standard streams.
    pub const HELD_CREATED: u64 = 8;
}

/// PM_KILL signals (all end the process today: programs install no handlers).
pub mod signal {
    pub const INT: u64 = 2;
    pub const KILL: u64 = 9;
    pub const TERM: u64 = 15;
}

/// Exit status of a process ended by signal `s` (the shell convention).
pub fn signalled(s: u64) -> u64 {
    128 + s
}

/// The spawn blob: `path NUL (arg NUL)* NUL (env NUL)* NUL`.
pub fn encode_spawn(path: &str, argv: &[&str], env: &[&str], out: &mut alloc::vec::Vec<u8>) -> Result<(), Error> {
    for s in core::iter::once(&path).chain(argv.iter()) {
        push_str(out, s)?;
    }
    out.push(0);
    for s in env {
        push_str(out, s)?;
    }
    out.push(0);
    if out.len() > MAX_PAYLOAD {
        return Err(Error::TooLong);
    }
    Ok(())
}

/// An empty string would read as a list's end, a NUL would split it: both
/// are refused.
fn push_str(out: &mut alloc::vec::Vec<u8>, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.as_bytes().contains(&0) {
        return Err(Error::Invalid);
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

/// A decoded spawn blob.
pub struct Spawn<'a> {
    pub path: &'a str,
    pub argv: alloc::vec::Vec<&'a str>,
    pub env: alloc::vec::Vec<&'a str>,
}

/// Decodes a spawn blob; refuses anything malformed.
pub fn decode_spawn(blob: &[u8]) -> Result<Spawn<'_>, Error> {
    let text = core::str::from_utf8(blob).map_err(|_| Error::Invalid)?;
    let mut parts = text.split('\0');
    let path = parts.next().filter(|p| !p.is_empty() && p.len() <= MAX_PATH).ok_or(Error::Invalid)?;
    let mut argv = alloc::vec::Vec::new();
    loop {
        match parts.next() {
            Some("") => break,
            Some(a) => argv.push(a),
            None => return Err(Error::Invalid),
        }
    }
    let mut env = alloc::vec::Vec::new();
    loop {
        match parts.next() {
            Some("") => break,
            Some(e) => env.push(e),
            None => return Err(Error::Invalid),
        }
    }
    // The blob's final NUL leaves one empty part, and nothing after it.
    match (parts.next(), parts.next()) {
        (Some(""), None) => Ok(Spawn { path, argv, env }),
        _ => Err(Error::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn sequence_numbers_are_distinct_and_never_zero() {
        let s = Seq::with_base(u64::MAX - 2);
        let got: Vec<u64> = (0..5).map(|_| s.next()).collect();
        assert_eq!(got, [u64::MAX - 1, u64::MAX, 1, 2, 3]);
        let a = Seq::new();
        let first = a.next();
        assert_ne!(first, 0);
        assert_eq!(a.next(), first.wrapping_add(1));
    }

    #[test]
    fn nearby_seeds_give_far_apart_bases() {
        for t in 0..1000u64 {
            let (x, y) = (mix(t), mix(t + 1));
            assert!(x.abs_diff(y) > 1 << 32, "{t}: {x:#x} {y:#x}");
        }
    }

    #[test]
    fn spawn_blob_round_trips() {
        let mut blob = Vec::new();
        encode_spawn("/bin/ls", &["ls", "-l"], &["PWD=/", "X=1"], &mut blob).unwrap();
        let s = decode_spawn(&blob).unwrap();
        assert_eq!(s.path, "/bin/ls");
        assert_eq!(s.argv, ["ls", "-l"]);
        assert_eq!(s.env, ["PWD=/", "X=1"]);
        // An empty argument cannot be told from the list's end.
        assert!(encode_spawn("/bin/ls", &["ls", ""], &[], &mut Vec::new()).is_err());
        let mut blob = Vec::new();
        encode_spawn("/bin/ls", &["ls"], &["PWD=/"], &mut blob).unwrap();
        let s = decode_spawn(&blob).unwrap();
        assert_eq!((s.argv.as_slice(), s.env.as_slice()), (&["ls"][..], &["PWD=/"][..]));
    }

    #[test]
    fn malformed_spawn_blobs_are_refused() {
        for bad in [&b""[..], b"\0", b"/bin/ls", b"/bin/ls\0ls\0", b"/bin/ls\0\0", b"/bin/ls\0\0\0junk", b"\xff\0\0\0"] {
            assert!(decode_spawn(bad).is_err(), "{bad:?}");
        }
        assert!(encode_spawn("/a", &["x\0y"], &[], &mut Vec::new()).is_err());
        assert!(encode_spawn("", &[], &[], &mut Vec::new()).is_err());
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 1..=18u64 {
            let e = Error::from_code(c);
            if c != 14 {
                assert_eq!(e.code(), c);
            }
            assert_eq!(status(&reply_err(e)), Err(e));
        }
        assert_eq!(status(&reply_ok([1, 2, 3, 4, 5])), Ok(()));
    }
}
