//! The process manager's state and handlers.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use matryoshka_abi::rights;
use matryoshka_nest::client::{Fs, Parent, Stream};
use matryoshka_nest::io::{self, SLOT_PM};
use matryoshka_nest::loader::{self, MemoryPool, Program, Slot, AT_REF, AT_SELF_SPACE, AT_SERVICE, CLIENT_PORT_RIGHTS};
use matryoshka_nest::proto::{self, op, pipe_end, signal, slot, Error, MAX_PAYLOAD};
use matryoshka_nest::server::{self, Reply, Request, Service};
use matryoshka_rt::ipc;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, Handle};
use matryoshka_rt::sync::{Cond, Mutex, MutexGuard};
use matryoshka_rt::{env, println};

/// The manager's own client (init), which started it.
pub const INIT_PID: u64 = 1;
/// Where the memory pool is mapped in the manager.
const POOL_VA: u64 = 0x40_0000_0000;
/// Virtual size of each process's slot (frames come on first touch).
const SLOT_BYTES: u64 = 64 << 20;
/// Buffer of one pipe.
const PIPE_BYTES: usize = 64 * 1024;
/// Alias kinds (high bits): a process's own port is its pid.
const PARENT_TAG: u64 = 1 << 40;
const PIPE_TAG: u64 = 2 << 40;
const TAG_MASK: u64 = 0xff << 40;
/// Status of a process ended by a fault.
const FAULT_STATUS: u64 = 128 + 11;
/// Most pipes open at once (every process's together).
const MAX_PIPES: usize = 4096;
/// Most exited, unwaited children one caller may import (each is a
/// record in the process table until its WAIT).
const MAX_IMPORTED_EXITED: usize = 64;
/// Longest command line an imported record may carry (what LIST's
/// clients read).
const MAX_COMMAND: usize = 512;

struct Process {
    ppid: u64,
    command: String,
    space: Option<Handle>,
    thread: Option<Handle>,
    /// The manager's copies of the references the process started with.
    refs: [Option<Handle>; slot::COUNT],
    status: Option<u64>,
    killed_by: Option<u64>,
    slot: Option<Slot>,
    /// Which of its standard streams are this manager's own pipe ends
    /// (their aliases), so an export can name them: the handles alone do
    /// not say which server's objects they are.
    std_ends: [Option<u64>; 3],
}

struct Pipe {
    buf: VecDeque<u8>,
    readers: usize,
    writers: usize,
    writer_given: bool,
    /// Server threads waiting on this pipe (for bytes, room or a close):
    /// a change wakes `pipe_changed` only when there are some.
    waiters: usize,
    /// (importer, key) for a pipe re-created by PM_IMPORT_END: its entry
    /// in `State::imported` goes with the pipe.
    import_key: Option<(u64, u64)>,
}

struct PipeEnd {
    pipe: u64,
    writer: bool,
    /// The process that created or imported it (a dup's is its original's):
    /// an export of that process lists it.
    owner: u64,
}

struct Ticket {
    owner: u64,
    refs: [Option<Handle>; slot::COUNT],
}

struct State {
    processes: BTreeMap<u64, Process>,
    next_pid: u64,
    pipes: BTreeMap<u64, Pipe>,
    ends: BTreeMap<u64, PipeEnd>,
    next_pipe: u64,
    next_end: u64,
    /// (importer, pipe key of an export) -> the pipe its imports re-created,
    /// so the two ends of one exported pipe come back as one pipe.
    imported: BTreeMap<(u64, u64), u64>,
    tickets: BTreeMap<u64, Ticket>,
    next_ticket: u64,
    next_slot: u64,
    free_slots: Vec<u64>,
    /// Reaper stacks, each with the thread last started on it: a stack is
    /// reused once that thread has exited (it runs on the stack until then).
    reaper_stacks: Vec<(u64, StackUse)>,
}

/// Who is on a reaper stack.
#[derive(Clone, Copy)]
enum StackUse {
    Free,
    /// Handed out; its thread is being created.
    Taken,
    Reaper(Handle),
}

struct Manager {
    me: Handle,
    portset: Handle,
    fs: Fs,
    console: Option<Stream>,
    pool: MemoryPool,
    state: Mutex<State>,
    /// Signalled whenever a process ends.
    changed: Cond,
    /// Signalled when a pipe with waiters changes (bytes in or out, an end
    /// closed). Apart from `changed`, so pipe traffic does not wake the
    /// threads that wait for processes.
    pipe_changed: Cond,
    server: Mutex<Option<server::Server>>,
}

static mut MANAGER: Option<&'static Manager> = None;

fn manager() -> &'static Manager {
    // SAFETY: written once in `main` before any thread that reads it starts.
    unsafe { (*core::ptr::addr_of!(MANAGER)).expect("manager set up") }
}

fn close_all(refs: &mut [Option<Handle>]) {
    for r in refs.iter_mut() {
        if let Some(h) = r.take() {
            let _ = obj::close(h);
        }
    }
}

impl Manager {
    fn spawn_start(&self, caller: u64, req: &Request) -> Result<Reply, Error> {
        let blob = proto::decode_spawn(req.bytes)?;
        let ticket = self.state.lock().tickets.remove(&req.words[2]).ok_or(Error::Invalid)?;
        if ticket.owner != caller {
            let mut refs = ticket.refs;
            close_all(&mut refs);
            return Err(Error::Denied);
        }
        let flags = req.words[3];
        if flags & !1 != 0 {
            let mut refs = ticket.refs;
            close_all(&mut refs);
            return Err(Error::Invalid);
        }
        let mut refs = ticket.refs;
        let r = self.spawn(caller, &blob, &mut refs, flags & 1 != 0);
        close_all(&mut refs);
        r
    }

    /// Builds and starts a process; `given` are the spawner's replacements
    /// (taken: the process gets them).
    fn spawn(&self, caller: u64, blob: &proto::Spawn, given: &mut [Option<Handle>; slot::COUNT], control: bool) -> Result<Reply, Error> {
        let elf = self.fs.read_file(blob.path)?;
        // Defaults: the spawner's own streams (duplicated), a new session.
        let inherited: [Option<Handle>; 3] = {
            let st = self.state.lock();
            let p = st.processes.get(&caller);
            [0, 1, 2].map(|i| p.and_then(|p| p.refs[i]))
        };
        let mut refs: [Option<Handle>; slot::COUNT] = [None; slot::COUNT];
        for i in 0..3 {
            refs[i] = match given[i].take() {
                Some(h) => Some(h),
                None => match inherited[i].or(self.console.map(|c| c.0)) {
                    Some(h) => Stream(h).dup().ok().map(|s| s.0),
                    None => None,
                },
            };
        }
        refs[slot::FS as usize] = match given[slot::FS as usize].take() {
            Some(h) => Some(h),
            None => Some(self.fs.new_session()?.0),
        };
        refs[slot::PARENT as usize] = given[slot::PARENT as usize].take();

        let (pid, slot) = {
            let mut st = self.state.lock();
            let pid = st.next_pid;
            st.next_pid += 1;
            let slot_offset = match st.free_slots.pop() {
                Some(o) => o,
                None => {
                    let o = st.next_slot;
                    if o + SLOT_BYTES > self.pool.size {
                        drop(st);
                        close_all(&mut refs);
                        return Err(Error::NoMemory);
                    }
                    st.next_slot += SLOT_BYTES;
                    o
                }
            };
            (pid, Slot { offset: slot_offset, size: SLOT_BYTES })
        };
        match self.build(pid, caller, blob, &elf, &mut refs, slot) {
            Ok((space, thread)) => {
                let control_handle =
                    if control { obj::duplicate(space, rights::ALL & !rights::TRANSFER | rights::TRANSFER).ok() } else { None };
                let mut cmd = String::new();
                for (i, a) in blob.argv.iter().enumerate() {
                    if i > 0 {
                        cmd.push(' ');
                    }
                    cmd.push_str(a);
                }
                if cmd.is_empty() {
                    cmd.push_str(blob.path);
                }
                let std_ends = [0, 1, 2].map(|i| refs[i].and_then(|h| self.own_end(h)));
                self.state.lock().processes.insert(
                    pid,
                    Process {
                        ppid: caller,
                        command: cmd,
                        space: Some(space),
                        thread: Some(thread),
                        refs,
                        status: None,
                        killed_by: None,
                        slot: Some(slot),
                        std_ends,
                    },
                );
                // The reaper: waits for the first thread, then cleans up.
                let (index, top) = self.reaper_stack();
                match obj::thread_create(self.me, reaper, top - 8, pid) {
                    Ok(h) => self.state.lock().reaper_stacks[index].1 = StackUse::Reaper(h),
                    Err(e) => {
                        self.state.lock().reaper_stacks[index].1 = StackUse::Free;
                        println!("pm: no reaper thread for {pid}: {e:?}");
                    }
                }
                if let Err(e) = obj::thread_resume(thread) {
                    println!("pm: process {pid} would not start: {e:?}");
                }
                let r = Reply::ok([pid, 0, 0, 0, 0]);
                Ok(match control_handle {
                    Some(h) => r.giving(h),
                    None => r,
                })
            }
            Err(e) => {
                close_all(&mut refs);
                if self.give_back(&slot) {
                    self.state.lock().free_slots.push(slot.offset);
                }
                Err(e)
            }
        }
    }

    fn build(
        &self,
        pid: u64,
        caller: u64,
        blob: &proto::Spawn,
        elf: &[u8],
        refs: &mut [Option<Handle>; slot::COUNT],
        slot: Slot,
    ) -> Result<(Handle, Handle), Error> {
        let _ = caller;
        let space = obj::space_create(self.me)?;
        let r = (|| {
            let mut aux: Vec<(u64, u64)> = Vec::new();
            for (i, r) in refs.iter().enumerate() {
                if i == slot::PARENT as usize {
                    continue;
                }
                if let Some(h) = r {
                    aux.push((AT_REF + i as u64, loader::give(space, *h, CLIENT_PORT_RIGHTS)?));
                }
            }
            let own = ipc::port_create(self.portset, pid)?;
            aux.push((AT_REF + SLOT_PM, loader::give(space, own, CLIENT_PORT_RIGHTS)?));
            let _ = obj::close(own);
            let parent_port = match refs[slot::PARENT as usize] {
                Some(h) => loader::give(space, h, CLIENT_PORT_RIGHTS)?,
                None => {
                    let p = ipc::port_create(self.portset, PARENT_TAG | pid)?;
                    let v = loader::give(space, p, CLIENT_PORT_RIGHTS)?;
                    let _ = obj::close(p);
                    v
                }
            };
            let self_rights = rights::ALL & !rights::DESTROY;
            aux.push((AT_SELF_SPACE, loader::give(space, space, self_rights)?));
            let loaded = loader::load(
                space,
                &self.pool,
                slot,
                &Program { elf, argv: &blob.argv, env: &blob.env, aux: &aux, first_arg: parent_port, pid },
            )?;
            for mapping in loaded.mappings {
                let _ = obj::close(mapping);
            }
            Ok::<Handle, Error>(loaded.thread)
        })();
        match r {
            Ok(thread) => Ok((space, thread)),
            Err(e) => {
                let _ = obj::space_destroy(space);
                Err(e)
            }
        }
    }

    /// A process's first thread ended with `result`: record, clean up, tell waiters.
    /// A reaper stack no thread runs on: (its index, its top). Reaper
    /// stacks are reused, not leaked: one per process ever started added up.
    fn reaper_stack(&self) -> (usize, u64) {
        const BYTES: usize = 16 * 1024;
        let mut st = self.state.lock();
        for (i, (top, used)) in st.reaper_stacks.iter_mut().enumerate() {
            let free = match *used {
                StackUse::Free => true,
                StackUse::Taken => false,
                // Exited (or killed): its stack is no longer in use.
                StackUse::Reaper(h) => !matches!(obj::thread_wait(h, false), Err(matryoshka_rt::SysError::WouldBlock)),
            };
            if free {
                if let StackUse::Reaper(h) = *used {
                    let _ = obj::close(h);
                }
                *used = StackUse::Taken;
                return (i, *top);
            }
        }
        let stack = vec![0u8; BYTES].leak();
        let top = (stack.as_ptr() as u64 + BYTES as u64) & !15;
        st.reaper_stacks.push((top, StackUse::Taken));
        (st.reaper_stacks.len() - 1, top)
    }

    /// Frees the frames behind a dead process's slot; true if it worked.
    fn give_back(&self, slot: &Slot) -> bool {
        match matryoshka_rt::memory::region_discard(self.pool.region, slot.offset, slot.size) {
            Ok(_) => true,
            Err(e) => {
                println!("pm: cannot give back the memory of slot {:#x}: {e:?}", slot.offset);
                false
            }
        }
    }

    fn ended(&self, pid: u64, result: Result<u64, matryoshka_rt::SysError>) {
        // Clean up first, then publish the status: whoever waits sees the
        // process gone with everything it held closed.
        let (space, thread, mut refs, slot) = {
            let mut st = self.state.lock();
            let Some(p) = st.processes.get_mut(&pid) else { return };
            (p.space.take(), p.thread.take(), core::mem::take(&mut p.refs), p.slot.take())
        };
        if let Some(t) = thread {
            let _ = obj::close(t);
        }
        if let Some(s) = space {
            let _ = obj::space_destroy(s);
        }
        // Its threads are gone with its space: nothing will repeat a
        // request on its own port (pids are never reused), so the pool's
        // remembered replies for it can go.
        if let Some(s) = *self.server.lock() {
            s.forget(pid);
        }
        // Streams: tell each server this process's references are done (a
        // second close of one the process closed itself is refused, harmlessly).
        for (i, r) in refs.iter_mut().enumerate() {
            if let Some(h) = r.take() {
                if i < 3 {
                    let _ = Stream(h).close();
                } else if i == slot::FS as usize {
                    let _ = Fs(h).end_session();
                    let _ = obj::close(h);
                } else {
                    let _ = obj::close(h);
                }
            }
        }
        // The slot's frames go back to the system and the slot is reused
        // (a slot whose discard failed is never handed out again).
        let reusable = slot.filter(|s| self.give_back(s));
        {
            let mut st = self.state.lock();
            if let Some(s) = reusable {
                st.free_slots.push(s.offset);
            }
            if let Some(p) = st.processes.get_mut(&pid) {
                p.status = Some(match (p.killed_by, result) {
                    (Some(sig), _) => proto::signalled(sig),
                    (None, Ok(code)) => code & 0xff,
                    (None, Err(_)) => FAULT_STATUS,
                });
            }
            // Its imports are over: later ones of the same keys (by no one,
            // pids are not reused) need not find its pipes.
            st.imported.retain(|(importer, _), _| *importer != pid);
            // Children of the dead process are re-parented to init.
            for p in st.processes.values_mut() {
                if p.ppid == pid {
                    p.ppid = INIT_PID;
                }
            }
        }
        self.changed.notify_all();
    }

    fn wait(&self, caller: u64, pid: u64, block: bool) -> Result<Reply, Error> {
        let mut st = self.state.lock();
        loop {
            let mine: Vec<u64> =
                st.processes.iter().filter(|(id, p)| p.ppid == caller && (pid == 0 || **id == pid)).map(|(id, _)| *id).collect();
            if mine.is_empty() {
                return Err(Error::NoChild);
            }
            if let Some(&done) = mine.iter().find(|id| st.processes.get(id).is_some_and(|p| p.status.is_some())) {
                let p = st.processes.remove(&done).ok_or(Error::NoChild)?;
                return Ok(Reply::ok([done, p.status.unwrap_or(0), 0, 0, 0]));
            }
            if !block {
                return Err(Error::WouldBlock);
            }
            st = self.changed.wait(st);
        }
    }

    fn kill(&self, pid: u64, sig: u64) -> Result<Reply, Error> {
        if !matches!(sig, signal::INT | signal::KILL | signal::TERM) {
            return Err(Error::Invalid);
        }
        let thread = {
            let mut st = self.state.lock();
            let p = st.processes.get_mut(&pid).ok_or(Error::NotFound)?;
            if p.status.is_some() {
                return Ok(Reply::ok([0; 5]));
            }
            p.killed_by.get_or_insert(sig);
            match p.thread {
                Some(t) => t,
                // Already ending: its reaper is cleaning up.
                None => return Ok(Reply::ok([0; 5])),
            }
        };
        // Killing the first thread ends the process; its reaper does the rest.
        obj::thread_kill(thread)?;
        Ok(Reply::ok([0; 5]))
    }

    /// Waits on `pipe_changed` as one of `pipe_id`'s waiters.
    fn pipe_wait<'a>(&self, mut st: MutexGuard<'a, State>, pipe_id: u64) -> MutexGuard<'a, State> {
        if let Some(p) = st.pipes.get_mut(&pipe_id) {
            p.waiters += 1;
        }
        st = self.pipe_changed.wait(st);
        if let Some(p) = st.pipes.get_mut(&pipe_id) {
            p.waiters -= 1;
        }
        st
    }

    fn pipe_request(&self, alias: u64, req: &Request) -> Result<Reply, Error> {
        let mut st = self.state.lock();
        let end = st.ends.get(&alias).ok_or(Error::BadObject)?;
        let (pipe_id, writer, owner) = (end.pipe, end.writer, end.owner);
        match req.op() {
            op::STREAM_READ if !writer => loop {
                let p = st.pipes.get_mut(&pipe_id).ok_or(Error::BadObject)?;
                if !p.buf.is_empty() {
                    let n = (req.words[2] as usize).min(MAX_PAYLOAD).min(p.buf.len());
                    // Slice copies, not a byte at a time. Unwrapped bytes go
                    // straight into the one allocation the window shares.
                    let (front, back) = p.buf.as_slices();
                    let reply = if n <= front.len() {
                        Reply::ok([n as u64, 0, 0, 0, 0]).with_shared(Arc::from(&front[..n]))
                    } else {
                        let mut bytes = Vec::with_capacity(n);
                        bytes.extend_from_slice(front);
                        bytes.extend_from_slice(&back[..n - front.len()]);
                        Reply::ok([n as u64, 0, 0, 0, 0]).with_bytes(bytes)
                    };
                    p.buf.drain(..n);
                    let wake = p.waiters > 0;
                    drop(st);
                    if wake {
                        self.pipe_changed.notify_all();
                    }
                    return Ok(reply);
                }
                if p.writers == 0 && p.writer_given {
                    return Ok(Reply::ok([0; 5]));
                }
                st = self.pipe_wait(st, pipe_id);
                if !st.ends.contains_key(&alias) {
                    return Err(Error::BadObject);
                }
            },
            op::STREAM_WRITE if writer => {
                let mut done = 0;
                while done < req.bytes.len() {
                    let p = st.pipes.get_mut(&pipe_id).ok_or(Error::BadObject)?;
                    if p.readers == 0 {
                        return if done > 0 { Ok(Reply::ok([done as u64, 0, 0, 0, 0])) } else { Err(Error::BrokenPipe) };
                    }
                    let room = PIPE_BYTES - p.buf.len();
                    if room > 0 {
                        let n = room.min(req.bytes.len() - done);
                        p.buf.extend(&req.bytes[done..done + n]);
                        done += n;
                        if p.waiters > 0 {
                            self.pipe_changed.notify_all();
                        }
                        continue;
                    }
                    st = self.pipe_wait(st, pipe_id);
                    if !st.ends.contains_key(&alias) {
                        return Err(Error::BadObject);
                    }
                }
                Ok(Reply::ok([done as u64, 0, 0, 0, 0]))
            }
            op::STREAM_READ | op::STREAM_WRITE => Err(Error::Denied),
            op::STREAM_STAT => Ok(Reply::ok([st.pipes.get(&pipe_id).map_or(0, |p| p.buf.len() as u64), proto::kind::PIPE, 0, 0, 0])),
            op::STREAM_DUP => {
                let port = self.new_end(&mut st, pipe_id, writer, owner)?;
                if let Some(p) = st.pipes.get_mut(&pipe_id) {
                    if writer {
                        p.writers += 1;
                    } else {
                        p.readers += 1;
                    }
                }
                Ok(Reply::ok([0; 5]).giving(port))
            }
            op::STREAM_CLOSE => {
                st.ends.remove(&alias);
                // Waiters of the pipe learn of the close (end of file, a
                // broken pipe, or their own end gone), even if it is freed.
                let (gone, wake) = match st.pipes.get_mut(&pipe_id) {
                    Some(p) => {
                        if writer {
                            p.writers -= 1;
                        } else {
                            p.readers -= 1;
                        }
                        // With no end left nothing can read or write it any
                        // more, even if its writer was never taken (an
                        // imported reader whose writer did not come along).
                        (p.writers == 0 && p.readers == 0, p.waiters > 0)
                    }
                    None => (false, false),
                };
                if gone {
                    if let Some(key) = st.pipes.remove(&pipe_id).and_then(|p| p.import_key) {
                        if st.imported.get(&key) == Some(&pipe_id) {
                            st.imported.remove(&key);
                        }
                    }
                }
                drop(st);
                if let Some(s) = *self.server.lock() {
                    s.forget(alias);
                }
                if wake {
                    self.pipe_changed.notify_all();
                }
                Ok(Reply::ok([0; 5]))
            }
            _ => Err(Error::Unsupported),
        }
    }

    fn new_end(&self, st: &mut State, pipe: u64, writer: bool, owner: u64) -> Result<Handle, Error> {
        let a = PIPE_TAG | st.next_end;
        st.next_end += 1;
        let port = ipc::port_create(self.portset, a)?;
        st.ends.insert(a, PipeEnd { pipe, writer, owner });
        Ok(port)
    }

    /// The process an export asks for: the caller itself (`pid` 0 or its
    /// own) or one of its children, as for CHILD_THREAD: a parent stops,
    /// reads and rebuilds its children, nobody else's.
    fn exportable(st: &State, caller: u64, pid: u64) -> Result<(u64, &Process), Error> {
        let pid = if pid == 0 { caller } else { pid };
        let p = st.processes.get(&pid).ok_or(Error::NotFound)?;
        if pid != caller && p.ppid != caller {
            return Err(Error::Denied);
        }
        Ok((pid, p))
    }

    /// The pipe ends `pid` holds through this manager, in alias order, each
    /// with where it holds it (`1 << slot` for a standard stream,
    /// HELD_CREATED for one it made or imported; an end may be both).
    fn held_ends(st: &State, pid: u64, p: &Process) -> Vec<(u64, u64)> {
        let mut held: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, alias) in p.std_ends.iter().enumerate() {
            // Closed since the spawn (by the process or, dead, for it): gone.
            if let Some(a) = alias.filter(|a| st.ends.contains_key(a)) {
                *held.entry(a).or_default() |= 1 << i;
            }
        }
        for (a, _) in st.ends.iter().filter(|(_, e)| e.owner == pid) {
            *held.entry(*a).or_default() |= pipe_end::HELD_CREATED;
        }
        held.into_iter().collect()
    }

    /// PM_IMPORT_END: a pipe end of the caller's, on the pipe its earlier
    /// imports of the same key re-created, or on a new one holding the
    /// exported bytes.
    fn import_end(&self, caller: u64, req: &Request) -> Result<Reply, Error> {
        let (key, flags) = (req.words[2], req.words[3]);
        let writer = flags & pipe_end::WRITER != 0;
        // A writer on a pipe without writers is a contradiction, not a record.
        if key == 0 || flags & !pipe_end::ALL != 0 || flags == pipe_end::WRITER | pipe_end::END_OF_FILE {
            return Err(Error::Invalid);
        }
        if req.bytes.len() > PIPE_BYTES {
            return Err(Error::TooLong);
        }
        let mut st = self.state.lock();
        if let Some(id) = st.imported.get(&(caller, key)).copied() {
            let p = st.pipes.get(&id).ok_or(Error::BadObject)?;
            if writer && p.writer_given && p.writers == 0 {
                // Its write side was closed for good: end of file was
                // promised to its readers.
                return Err(Error::Invalid);
            }
            let port = self.new_end(&mut st, id, writer, caller)?;
            if let Some(p) = st.pipes.get_mut(&id) {
                if writer {
                    p.writers += 1;
                    p.writer_given = true;
                } else {
                    p.readers += 1;
                }
            }
            return Ok(Reply::ok([id, 0, 0, 0, 0]).giving(port));
        }
        if st.pipes.len() >= MAX_PIPES {
            return Err(Error::NoSpace);
        }
        let id = st.next_pipe;
        st.next_pipe += 1;
        let port = self.new_end(&mut st, id, writer, caller)?;
        st.pipes.insert(
            id,
            Pipe {
                buf: req.bytes.iter().copied().collect(),
                readers: (!writer) as usize,
                writers: writer as usize,
                // A reader whose writer is still open elsewhere waits for a
                // writer to join (an import of it, or PIPE_WRITER); one whose
                // writer was gone reads end of file after the bytes.
                writer_given: writer || flags & pipe_end::END_OF_FILE != 0,
                waiters: 0,
                import_key: Some((caller, key)),
            },
        );
        st.imported.insert((caller, key), id);
        Ok(Reply::ok([id, 0, 0, 0, 0]).giving(port))
    }

    /// The alias of `h` if it is one of this manager's pipe ends. The
    /// kernel names the port's portset by the caller's own handle to it, so
    /// a port of someone else's portset with a made-up alias is not taken
    /// for one. A handle without GET_STATE (a process handing on a stream it
    /// was given) is not recognised: its end is not exported with it.
    fn own_end(&self, h: Handle) -> Option<u64> {
        let s = obj::object_get_state(h).ok()?;
        (s[0] == obj::types::PORT as u64 && s[2] == self.portset.0 && s[1] & TAG_MASK == PIPE_TAG).then_some(s[1])
    }

    fn process_request(&self, caller: u64, req: &mut Request) -> Result<Reply, Error> {
        if req.op() != op::PM_SPAWN_REF {
            if let Some(h) = req.handle.take() {
                let _ = obj::close(h);
                return Err(Error::Invalid);
            }
        }
        match req.op() {
            op::PM_SPAWN_BEGIN => {
                let mut st = self.state.lock();
                if st.tickets.values().filter(|t| t.owner == caller).count() >= 16 {
                    return Err(Error::NoSpace);
                }
                let t = st.next_ticket;
                st.next_ticket += 1;
                st.tickets.insert(t, Ticket { owner: caller, refs: [None; slot::COUNT] });
                Ok(Reply::ok([t, 0, 0, 0, 0]))
            }
            op::PM_SPAWN_REF => {
                let h = req.handle.take().ok_or(Error::Invalid)?;
                let mut st = self.state.lock();
                let valid = (req.words[3] as usize) < slot::COUNT;
                match st.tickets.get_mut(&req.words[2]) {
                    Some(t) if t.owner == caller && valid => {
                        if let Some(old) = t.refs[req.words[3] as usize].replace(h) {
                            let _ = obj::close(old);
                        }
                        Ok(Reply::ok([0; 5]))
                    }
                    _ => {
                        let _ = obj::close(h);
                        Err(Error::Invalid)
                    }
                }
            }
            op::PM_SPAWN_START => self.spawn_start(caller, req),
            op::PM_WAIT => self.wait(caller, req.words[2], req.words[3] & 1 == 0),
            op::PM_KILL => self.kill(req.words[2], req.words[3]),
            op::PM_GETPID => {
                let st = self.state.lock();
                Ok(Reply::ok([caller, st.processes.get(&caller).map_or(0, |p| p.ppid), 0, 0, 0]))
            }
            op::PM_LIST => {
                let st = self.state.lock();
                let (pid, p) = st.processes.iter().nth(req.words[2] as usize).ok_or(Error::NotFound)?;
                Ok(Reply::ok([*pid, p.ppid, p.status.is_some() as u64, p.status.unwrap_or(0), 0]).with_bytes(p.command.as_bytes().to_vec()))
            }
            op::PM_PIPE => {
                let mut st = self.state.lock();
                if st.pipes.len() >= MAX_PIPES {
                    return Err(Error::NoSpace);
                }
                let id = st.next_pipe;
                st.next_pipe += 1;
                let port = self.new_end(&mut st, id, false, caller)?;
                st.pipes
                    .insert(id, Pipe { buf: VecDeque::new(), readers: 1, writers: 0, writer_given: false, waiters: 0, import_key: None });
                Ok(Reply::ok([id, 0, 0, 0, 0]).giving(port))
            }
            op::PM_PIPE_WRITER => {
                let mut st = self.state.lock();
                let id = req.words[2];
                match st.pipes.get_mut(&id) {
                    Some(p) if !p.writer_given => {
                        p.writer_given = true;
                        p.writers = 1;
                    }
                    _ => return Err(Error::Invalid),
                }
                let port = self.new_end(&mut st, id, true, caller)?;
                Ok(Reply::ok([0; 5]).giving(port))
            }
            op::PM_CHILD_THREAD => {
                let st = self.state.lock();
                let p = st.processes.get(&req.words[2]).ok_or(Error::NotFound)?;
                if p.ppid != caller {
                    return Err(Error::Denied);
                }
                let t = p.thread.ok_or(Error::NotFound)?;
                Ok(Reply::ok([0; 5]).giving(obj::duplicate(t, rights::ALL)?))
            }
            op::PM_EXPORT_PROCESS => {
                let st = self.state.lock();
                let (pid, p) = Self::exportable(&st, caller, req.words[2])?;
                let ends = Self::held_ends(&st, pid, p).len() as u64;
                let state = p.status.is_some() as u64;
                Ok(Reply::ok([pid, p.ppid, state, p.status.unwrap_or(0), ends]).with_bytes(p.command.as_bytes().to_vec()))
            }
            op::PM_EXPORT_END => {
                let st = self.state.lock();
                let (pid, p) = Self::exportable(&st, caller, req.words[2])?;
                let index = usize::try_from(req.words[3]).map_err(|_| Error::NotFound)?;
                let &(alias, held) = Self::held_ends(&st, pid, p).get(index).ok_or(Error::NotFound)?;
                let end = st.ends.get(&alias).ok_or(Error::BadObject)?;
                let pipe = st.pipes.get(&end.pipe).ok_or(Error::BadObject)?;
                let mut flags = if end.writer { pipe_end::WRITER } else { 0 };
                if pipe.writer_given && pipe.writers == 0 {
                    flags |= pipe_end::END_OF_FILE;
                }
                // The buffer is at most PIPE_BYTES, which one payload holds:
                // the export is never partial. Peeked, not drained: the
                // exported process may go on (a checkpoint, not a move).
                let (front, back) = pipe.buf.as_slices();
                let mut bytes = Vec::with_capacity(pipe.buf.len());
                bytes.extend_from_slice(front);
                bytes.extend_from_slice(back);
                Ok(Reply::ok([end.pipe, alias & !TAG_MASK, flags, held, bytes.len() as u64]).with_bytes(bytes))
            }
            op::PM_IMPORT_END => self.import_end(caller, req),
            op::PM_IMPORT_PROCESS => {
                let status = req.words[2];
                if status > 0xff {
                    return Err(Error::Invalid);
                }
                let command = String::from(req.text(MAX_COMMAND)?);
                let mut st = self.state.lock();
                let waiting = st.processes.values().filter(|p| p.ppid == caller && p.space.is_none() && p.status.is_some()).count();
                if waiting >= MAX_IMPORTED_EXITED {
                    return Err(Error::NoSpace);
                }
                let pid = st.next_pid;
                st.next_pid += 1;
                // No space, thread or slot: nothing for a reaper to do, and
                // WAIT, KILL and LIST treat it as any exited child.
                st.processes.insert(
                    pid,
                    Process {
                        ppid: caller,
                        command,
                        space: None,
                        thread: None,
                        refs: [None; slot::COUNT],
                        status: Some(status),
                        killed_by: None,
                        slot: None,
                        std_ends: [None; 3],
                    },
                );
                drop(st);
                self.changed.notify_all();
                Ok(Reply::ok([pid, 0, 0, 0, 0]))
            }
            op::PM_INFO => {
                let st = self.state.lock();
                let alive = st.processes.values().filter(|p| p.status.is_none()).count() as u64;
                let threads = self.server.lock().map_or(0, |s| s.threads() as u64);
                Ok(Reply::ok([alive, st.pipes.len() as u64, threads, 0, 0]))
            }
            _ => Err(Error::Unsupported),
        }
    }

    fn parent_request(&self, pid: u64, req: &Request) -> Result<Reply, Error> {
        match req.op() {
            op::PARENT_GET_REF => match req.text(64)? {
                "console" => {
                    let c = self.console.ok_or(Error::NotFound)?;
                    Ok(Reply::ok([0; 5]).giving(c.dup()?.0))
                }
                "fs" => Ok(Reply::ok([0; 5]).giving(self.fs.new_session()?.0)),
                _ => {
                    let _ = pid;
                    Err(Error::NotFound)
                }
            },
            _ => Err(Error::Unsupported),
        }
    }
}

impl Service for Manager {
    fn handle(&self, mut req: Request) -> Reply {
        let alias = req.alias;
        let r = match alias & TAG_MASK {
            0 => self.process_request(alias, &mut req),
            PARENT_TAG => self.parent_request(alias & !TAG_MASK, &req),
            PIPE_TAG => {
                if let Some(h) = req.handle.take() {
                    let _ = obj::close(h);
                }
                self.pipe_request(alias, &req)
            }
            _ => Err(Error::BadObject),
        };
        Reply::from(r)
    }

    fn sequenced(&self, op: u64) -> bool {
        // Requests whose reply carries a new reference replay themselves;
        // blocking pipe reads/writes are remembered per end.
        !matches!(op, op::STREAM_DUP | op::PM_PIPE | op::PM_SPAWN_START | op::PM_IMPORT_END)
    }
}

extern "C" fn reaper(pid: u64) -> ! {
    let mgr = manager();
    let thread = mgr.state.lock().processes.get(&pid).and_then(|p| p.thread);
    if let Some(t) = thread {
        let result = obj::thread_wait(t, true);
        mgr.ended(pid, result);
    }
    matryoshka_rt::exit(0)
}

pub fn main() -> i32 {
    let (Some(portset), Some(me)) = (env::aux(AT_SERVICE), env::aux(AT_SELF_SPACE)) else {
        println!("pm: started without a service portset or own space (it is started by init)");
        return 2;
    };
    let (portset, me) = (Handle(portset), Handle(me));
    let Some(parent) = io::parent() else {
        println!("pm: no parent reference");
        return 2;
    };
    let r = (|| -> Result<&'static Manager, Error> {
        let step = |what: &str, e: Error| {
            println!("pm: {what}: {e}");
            e
        };
        let fs = Fs(Parent::get(&parent, "fs").map_err(|e| step("file system from the parent", e))?);
        let console = Parent::get(&parent, "console").ok().map(Stream);
        let region = parent.get("memory").map_err(|e| step("memory from the parent", e))?;
        let size = obj::object_get_state(region).map_err(|e| step("memory region's size", e.into()))?[2];
        m::mapping_create(region, me, POOL_VA, 0, size, m::READ | m::WRITE).map_err(|e| {
            println!("pm: mapping {size:#x} bytes of memory at {POOL_VA:#x}: {e:?}");
            Error::from(e)
        })?;
        let state = Mutex::new(State {
            processes: BTreeMap::new(),
            next_pid: INIT_PID + 1,
            pipes: BTreeMap::new(),
            ends: BTreeMap::new(),
            imported: BTreeMap::new(),
            next_pipe: 1,
            next_end: 1,
            tickets: BTreeMap::new(),
            next_ticket: 1,
            next_slot: 0,
            free_slots: Vec::new(),
            reaper_stacks: Vec::new(),
        })
        .map_err(|e| {
            println!("pm: state lock: {e:?}");
            Error::from(e)
        })?;
        Ok(Box::leak(Box::new(Manager {
            me,
            portset,
            fs,
            console,
            pool: MemoryPool { region, local_base: POOL_VA, size },
            state,
            changed: Cond::new().map_err(|e| {
                println!("pm: cond: {e:?}");
                Error::from(e)
            })?,
            pipe_changed: Cond::new().map_err(|e| {
                println!("pm: cond: {e:?}");
                Error::from(e)
            })?,
            server: Mutex::new(None).map_err(|e| {
                println!("pm: server lock: {e:?}");
                Error::from(e)
            })?,
        })))
    })();
    let mgr = match r {
        Ok(m) => m,
        Err(e) => {
            println!("pm: cannot start: {e}");
            return 1;
        }
    };
    // SAFETY: the only write, before any other thread of this program runs.
    unsafe { MANAGER = Some(mgr) };
    match server::start(me, portset, mgr, 3) {
        Ok(s) => *mgr.server.lock() = Some(s),
        Err(e) => {
            println!("pm: no server threads: {e}");
            return 1;
        }
    }
    // The first thread has nothing more to do than stay alive: the program
    // ends when its first thread does.
    loop {
        let _ = mgr.changed.wait(mgr.state.lock());
    }
}
