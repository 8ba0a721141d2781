//! init as the system (start flag 32, a boot without `test=`): it starts
//! the nester stack from the boot archive and runs the shell.
//!
//! ```text
//! init (root: console server, Parent of fs and pm)
//!  ├── fs   file server, filled from the archive
//!  └── pm   process manager
//!       └── msh  (interactive, or `msh -c COMMAND` for `just run`)
//!            └── every command, under any stack of nesters
//! ```
//!
//! init creates each server's portset and keeps a port to it, hands the
//! portset to the server (auxiliary entry `AT_SERVICE`) and serves their
//! Parent requests: the archive (a read-only region) for fs; a file system
//! session, the console and a memory region for pm. The console is a Stream
//! server here, on the kernel's serial console: output through
//! `console_put`; input (interactive boots only) from a reader thread on
//! `console_read` with a line discipline: echo, backspace, Ctrl-U (erase
//! the line), Ctrl-D (end of file on an empty line), and Ctrl-C, which
//! discards the line, ends every read waiting then with `Interrupted` and
//! wakes `CONSOLE_WAIT_INTERRUPT` (the shell interrupts its foreground job).
//! Reads return at most one line. In command mode (`just run`) standard
//! input is empty: a read returns end of file.
//!
//! With a command (the kernel command line after `--`), init prints
//! `@@MATRYOSHKA-RUN-BEGIN@@` before the shell starts and
//! `@@MATRYOSHKA-RUN-END status=N@@` after it ended, so `just run` can
//! print only the command's output and exit with its status.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_abi::rights;
use matryoshka_nest::client::{Fs, Pm, SpawnRefs, Stream};
use matryoshka_nest::loader::{self, MemoryPool, Program, Slot, AT_SELF_SPACE, AT_SERVICE};
use matryoshka_nest::proto::{kind, op, slot, Error};
use matryoshka_nest::server::{self, Reply, Request, Service};
use matryoshka_rt::ipc;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, Handle};
use matryoshka_rt::sync::{Cond, Mutex};
use matryoshka_rt::{self as rt, println};

/// Memory init lends its servers (their slots), and the region pm gets.
const SERVER_POOL: u64 = m::ROOT_ANONYMOUS_BASE + (1 << 30);
const SERVER_POOL_BYTES: u64 = 2 << 30;
const SERVER_SLOT: u64 = 1 << 30;
const PM_MEMORY: u64 = m::ROOT_ANONYMOUS_BASE + (4 << 30);
const PM_MEMORY_BYTES: u64 = 32 << 30;

/// Aliases on init's own portset.
const FS_PARENT: u64 = 1;
const PM_PARENT: u64 = 2;
/// Console streams are numbered from here.
const CONSOLE_BASE: u64 = 1000;

/// Alias of init's session with fs, and of its process port with pm.
const FS_FIRST_SESSION: u64 = 1;
const PM_INIT_PID: u64 = 1;

struct Init {
    portset: Handle,
    archive: Handle,
    fs_session: Handle,
    pm_memory: Handle,
    next_console: AtomicU64,
    input: Mutex<Input>,
    /// Signalled whenever `input` changes.
    input_changed: Cond,
}

/// The console's input side.
struct Input {
    /// False in command mode: reads return end of file at once.
    interactive: bool,
    /// The line being typed (not yet readable).
    editing: Vec<u8>,
    /// Finished lines, newline included, not yet read.
    ready: VecDeque<u8>,
    /// Ctrl-D on an empty line: the next read returns end of file.
    eof: bool,
    /// Ctrl-C presses since boot.
    interrupts: u64,
}

/// Longest line the console keeps (the rest of a longer one is dropped).
const LINE_MAX: usize = 4096;

impl Input {
    /// Applies one typed byte; returns what to echo.
    fn typed(&mut self, b: u8) -> &'static [u8] {
        match b {
            b'\r' | b'\n' => {
                self.ready.extend(self.editing.drain(..));
                self.ready.push_back(b'\n');
                b"\n"
            }
            // Backspace and DEL erase one character (all of a UTF-8 sequence).
            0x08 | 0x7f => {
                while let Some(last) = self.editing.pop() {
                    if last & 0xc0 != 0x80 {
                        return b"\x08 \x08";
                    }
                }
                b""
            }
            // Ctrl-U: erase the line.
            0x15 => {
                self.editing.clear();
                b"^U\n"
            }
            // Ctrl-D: end of file on an empty line, else hand the line over as it is.
            0x04 => {
                if self.editing.is_empty() {
                    self.eof = true;
                } else {
                    self.ready.extend(self.editing.drain(..));
                }
                b""
            }
            0x03 => {
                self.editing.clear();
                self.interrupts += 1;
                b"^C\n"
            }
            b'\t' | 0x20.. if self.editing.len() < LINE_MAX => {
                self.editing.push(b);
                b"\x00"
            }
            _ => b"",
        }
    }

    /// At most `want` bytes of the first ready line.
    fn take_line(&mut self, want: usize) -> Vec<u8> {
        let line = self.ready.iter().position(|&b| b == b'\n').map_or(self.ready.len(), |i| i + 1);
        self.ready.drain(..line.min(want)).collect()
    }
}

impl Init {
    fn console_port(&self) -> Result<Handle, Error> {
        let alias = CONSOLE_BASE + self.next_console.fetch_add(1, Ordering::Relaxed);
        Ok(ipc::port_create(self.portset, alias)?)
    }

    fn parent(&self, alias: u64, req: &Request) -> Result<Reply, Error> {
        if req.op() != op::PARENT_GET_REF {
            return Err(Error::Unsupported);
        }
        match (alias, req.text(64)?) {
            (FS_PARENT, "archive") => Ok(Reply::ok([0; 5]).lending(self.archive)),
            (PM_PARENT, "fs") => Ok(Reply::ok([0; 5]).giving(Fs(self.fs_session).new_session()?.0)),
            (PM_PARENT, "memory") => Ok(Reply::ok([0; 5]).lending(self.pm_memory)),
            (_, "console") => Ok(Reply::ok([0; 5]).giving(self.console_port()?)),
            _ => Err(Error::NotFound),
        }
    }

    fn console(&self, req: &Request) -> Result<Reply, Error> {
        match req.op() {
            op::STREAM_WRITE => {
                for chunk in req.bytes.chunks(rt::CONSOLE_WRITE_MAX) {
                    rt::console_put(chunk)?;
                }
                Ok(Reply::ok([req.bytes.len() as u64, 0, 0, 0, 0]))
            }
            op::STREAM_READ => self.read(req.words[2] as usize),
            op::CONSOLE_WAIT_INTERRUPT => {
                let seen = req.words[2];
                let mut input = self.input.lock();
                while input.interrupts <= seen {
                    input = self.input_changed.wait(input);
                }
                Ok(Reply::ok([input.interrupts, 0, 0, 0, 0]))
            }
            op::STREAM_STAT => Ok(Reply::ok([0, kind::CONSOLE, 0, 0, 0])),
            op::STREAM_DUP | op::CONSOLE_OPEN => Ok(Reply::ok([0; 5]).giving(self.console_port()?)),
            op::STREAM_CLOSE => Ok(Reply::ok([0; 5])),
            _ => Err(Error::Unsupported),
        }
    }
}

impl Init {
    /// A console read: the next line (at most `want` bytes of it), end of
    /// file, or `Interrupted` if Ctrl-C is pressed while it waits.
    fn read(&self, want: usize) -> Result<Reply, Error> {
        let want = want.min(matryoshka_nest::proto::MAX_PAYLOAD);
        let mut input = self.input.lock();
        if !input.interactive || want == 0 {
            return Ok(Reply::ok([0; 5]));
        }
        let interrupts = input.interrupts;
        loop {
            if !input.ready.is_empty() {
                let bytes = input.take_line(want);
                return Ok(Reply::ok([bytes.len() as u64, 0, 0, 0, 0]).with_bytes(bytes));
            }
            if input.eof {
                input.eof = false;
                return Ok(Reply::ok([0; 5]));
            }
            if input.interrupts != interrupts {
                return Err(Error::Interrupted);
            }
            input = self.input_changed.wait(input);
        }
    }
}

/// Reads the serial console for ever, through the line discipline.
extern "C" fn console_reader(init: u64) -> ! {
    // SAFETY: `init` is the leaked, never-freed Init that `boot` passed.
    let init: &'static Init = unsafe { &*(init as *const Init) };
    let mut buf = [0u8; 64];
    loop {
        let n = match rt::console_read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                println!("init: console input failed ({e:?}); no more input");
                rt::exit(1)
            }
        };
        let mut echo: Vec<u8> = Vec::new();
        {
            let mut input = init.input.lock();
            for &b in &buf[..n] {
                match input.typed(b) {
                    b"\x00" => echo.push(b),
                    e => echo.extend_from_slice(e),
                }
            }
        }
        init.input_changed.notify_all();
        for chunk in echo.chunks(rt::CONSOLE_WRITE_MAX) {
            let _ = rt::console_put(chunk);
        }
    }
}

impl Service for Init {
    fn handle(&self, req: Request) -> Reply {
        if let Some(h) = req.handle {
            let _ = obj::close(h);
            return Reply::err(Error::Invalid);
        }
        Reply::from(match req.alias {
            FS_PARENT | PM_PARENT => self.parent(req.alias, &req),
            a if a >= CONSOLE_BASE => self.console(&req),
            _ => Err(Error::BadObject),
        })
    }
}

/// The boot archive: the module the kernel found `bin/init` in.
fn archive() -> Option<rt::boot::Module> {
    rt::boot::modules().find(|m| m.bytes().starts_with(b"070701"))
}

fn find<'a>(archive: &'a [u8], path: &str) -> Option<&'a [u8]> {
    cpio_reader::iter_files(archive).find(|e| e.name().trim_start_matches("./") == path).map(|e| e.file())
}

/// Starts server `name` from the archive in a child space with `portset`
/// as its service and `parent_alias` as its Parent port.
fn start_server(
    init: &Init,
    pool: &MemoryPool,
    slot_index: u64,
    elf: &[u8],
    name: &str,
    portset: Handle,
    parent_alias: u64,
) -> Result<(), Error> {
    let me = obj::self_space();
    let space = obj::space_create(me)?;
    let service = loader::give(space, portset, rights::RECEIVE | rights::GET_STATE | rights::SET_STATE)?;
    let own = loader::give(space, space, rights::ALL & !rights::DESTROY)?;
    let parent = ipc::port_create(init.portset, parent_alias)?;
    let parent_in_child = loader::give(space, parent, loader::CLIENT_PORT_RIGHTS)?;
    let _ = obj::close(parent);
    let argv = [name];
    let aux = [(AT_SERVICE, service), (AT_SELF_SPACE, own)];
    let program = Program { elf, argv: &argv, env: &[], aux: &aux, first_arg: parent_in_child, pid: 0 };
    let slot = Slot { offset: slot_index * SERVER_SLOT, size: SERVER_SLOT };
    let loaded = loader::load(space, pool, slot, &program).map_err(Error::from)?;
    loader::start(&loaded).map_err(Error::from)?;
    Ok(())
}

pub fn run() -> i32 {
    match boot() {
        Ok(status) => status,
        Err(e) => {
            println!("init: the system did not start: {e}");
            1
        }
    }
}

fn boot() -> Result<i32, Error> {
    let me = obj::self_space();
    let module = archive().ok_or(Error::NotFound)?;
    let bytes = module.bytes();
    let (fs_elf, pm_elf) = (find(bytes, "bin/fs").ok_or(Error::NotFound)?, find(bytes, "bin/pm").ok_or(Error::NotFound)?);
    let archive_region = m::region_create(me, module.va, module.size.next_multiple_of(4096), m::READ)?;
    let pool_region = m::region_create(me, SERVER_POOL, SERVER_POOL_BYTES, m::READ | m::WRITE | m::EXECUTE)?;
    let pool = MemoryPool { region: pool_region, local_base: SERVER_POOL, size: SERVER_POOL_BYTES };
    let pm_memory = m::region_create(me, PM_MEMORY, PM_MEMORY_BYTES, m::READ | m::WRITE | m::EXECUTE)?;

    let (own_ps, fs_ps, pm_ps) = (ipc::portset_create()?, ipc::portset_create()?, ipc::portset_create()?);
    let fs_session = ipc::port_create(fs_ps, FS_FIRST_SESSION)?;
    let pm_port = ipc::port_create(pm_ps, PM_INIT_PID)?;
    let mut args_buf = [0u8; 4096];
    let command = rt::boot_args(&mut args_buf).unwrap_or("");
    let command = String::from(command.trim());
    let input = Input { interactive: command.is_empty(), editing: Vec::new(), ready: VecDeque::new(), eof: false, interrupts: 0 };
    let init: &'static Init = Box::leak(Box::new(Init {
        portset: own_ps,
        archive: archive_region,
        fs_session,
        pm_memory,
        next_console: AtomicU64::new(0),
        input: Mutex::new(input)?,
        input_changed: Cond::new()?,
    }));
    server::start(me, own_ps, init, 2)?;
    if command.is_empty() {
        let stack = alloc::vec![0u8; 64 * 1024].leak();
        let top = (stack.as_ptr() as u64 + stack.len() as u64) & !15;
        let reader = obj::thread_create(me, console_reader, top - 8, init as *const Init as u64)?;
        let _ = obj::close(reader);
    }

    start_server(init, &pool, 0, fs_elf, "fs", fs_ps, FS_PARENT)?;
    start_server(init, &pool, 1, pm_elf, "pm", pm_ps, PM_PARENT)?;

    let pm = Pm(pm_port);
    let mut refs = SpawnRefs::default();
    for s in [slot::STDIN, slot::STDOUT, slot::STDERR] {
        refs.refs[s as usize] = Some(init.console_port()?);
    }
    let argv: Vec<&str> = if command.is_empty() { alloc::vec!["msh"] } else { alloc::vec!["msh", "-c", command.as_str()] };
    if !command.is_empty() {
        rt::console_put(b"\n@@MATRYOSHKA-RUN-BEGIN@@\n")?;
    }
    if command.is_empty() {
        println!("init: console input on; starting the shell (exit leaves it)");
    }
    let child = pm.spawn("/bin/msh", &argv, &["PWD=/", "PATH=/bin"], &refs, 0)?;
    for h in refs.refs.iter().flatten() {
        let _ = obj::close(*h);
    }
    let (_, status) = pm.wait(child.pid, true)?;
    if !command.is_empty() {
        let line = alloc::format!("\n@@MATRYOSHKA-RUN-END status={status}@@\n");
        rt::console_put(line.as_bytes())?;
    } else {
        println!("init: the shell exited with status {status}");
    }
    let _ = Stream(fs_session);
    // With a command, the system's status is the command's (`test=system`
    // and `just run` read it).
    Ok(if command.is_empty() { 0 } else { status.min(255) as i32 })
}
