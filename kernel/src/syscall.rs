//! System calls: numbers, arguments, error codes and their handlers.
//!
//! ABI (x86_64): `syscall` with the number in rax and arguments in rdi, rsi,
//! rdx, r10, r8, r9; the result comes back in rax: a non-negative value on
//! success, or a negative [`SysError`]. All other registers but rcx and r11
//! (which `syscall` itself uses) are preserved. Every argument is validated;
//! a bad one is an error code, never a kernel fault. kernel/ABI.md is the
//! reference for every call.

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::x86_64::syscall::{copy_from_user, copy_to_user, leave_user, SyscallFrame, UserExit};
use crate::arch::x86_64_exports::{fpu, smp};
use crate::console::print_line;
use crate::mm::frame;
use crate::object::handle::{Handle, HandleError, Rights};
use crate::object::space::{Object, Space, SpaceError};
use crate::sched::{self, SchedError};
use matryoshka_abi::call;
pub use matryoshka_abi::Error as SysError;


/// Bytes of a thread state record (version 1): see kernel/ABI.md.
pub const THREAD_STATE_BYTES: u64 = matryoshka_abi::THREAD_STATE_V1_BYTES;
/// Version 2 appends the x87/SSE state (an FXSAVE image).
pub const THREAD_STATE_V2_BYTES: u64 = matryoshka_abi::THREAD_STATE_V2_BYTES;
const _: () = assert!(THREAD_STATE_V2_BYTES == THREAD_STATE_BYTES + fpu::AREA_BYTES as u64);

/// Longest console write accepted in one call.
pub const CONSOLE_WRITE_MAX: u64 = matryoshka_abi::CONSOLE_WRITE_MAX;
/// Bytes per `space_enumerate` record: u64 handle, u32 type, u32 rights.
pub const ENUMERATE_RECORD: u64 = matryoshka_abi::ENUMERATE_RECORD_BYTES;


impl From<HandleError> for SysError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Invalid => SysError::BadHandle,
            HandleError::MissingRights => SysError::MissingRights,
            HandleError::TableFull => SysError::NoMemory,
        }
    }
}

impl From<SpaceError> for SysError {
    fn from(e: SpaceError) -> Self {
        match e {
            SpaceError::Handle(h) => h.into(),
            SpaceError::WrongType => SysError::WrongType,
            SpaceError::OutOfMemory => SysError::NoMemory,
            SpaceError::Dead => SysError::Dead,
            SpaceError::TooDeep | SpaceError::WouldDestroyCaller => SysError::InvalidArgument,
        }
    }
}

impl From<crate::object::vm::VmError> for SysError {
    fn from(e: crate::object::vm::VmError) -> Self {
        use crate::object::vm::VmError as V;
        match e {
            V::NoSuchSpace | V::NoSuchRegion | V::NoSuchMapping => SysError::Dead,
            V::ZeroSize => SysError::BadSize,
            V::Unaligned | V::OutOfBounds => SysError::BadPointer,
            V::Overlap | V::Cycle | V::TooDeep => SysError::InvalidArgument,
            V::RightsExceedRegion => SysError::MissingRights,
        }
    }
}

impl From<SchedError> for SysError {
    fn from(e: SchedError) -> Self {
        match e {
            SchedError::OutOfMemory => SysError::NoMemory,
            SchedError::NoAllowedCpu => SysError::InvalidArgument,
            SchedError::BadUserAddress => SysError::BadPointer,
        }
    }
}

/// Internal result of a blocking call interrupted by a stop request: the
/// entry path rewinds the thread to make the call again (never seen by users).
pub const RESTART: i64 = -512;
/// Like RESTART, but the call restarts as the one the handler put in rax
/// (a combined call whose first part took effect).
pub const RESTART_AS_SET: i64 = -513;

/// Interrupted blocking calls restart if the thread is being stopped and
/// end with `Dead` if it is being killed.
fn interrupted() -> SysResult {
    if sched::me().stop_requested() && !sched::me().kill_requested() {
        Ok(RESTART)
    } else {
        Err(SysError::Dead)
    }
}

/// Console writes from user code, for tests.
pub static CONSOLE_WRITES: AtomicU64 = AtomicU64::new(0);

type SysResult = Result<i64, SysError>;

pub fn dispatch(frame: &mut SyscallFrame) -> i64 {
    let (a0, a1, a2, a3) = (frame.rdi, frame.rsi, frame.rdx, frame.r10);
    let result = match frame.rax {
        call::NULL => Ok(0),
        call::CONSOLE_WRITE => console_write(a0, a1),
        call::EXIT => leave_user(UserExit::Exited(a0)),
        call::YIELD => {
            sched::yield_now();
            Ok(0)
        }
        call::SYSTEM_INFO => system_info(a0, a1),
        call::HANDLE_CLOSE => handle_close(a0),
        call::HANDLE_DUPLICATE => handle_duplicate(a0, a1),
        call::HANDLE_INFO => handle_info(a0),
        call::SPACE_CREATE => space_create(a0),
        call::SPACE_DESTROY => space_destroy(a0),
        call::SPACE_ENUMERATE => space_enumerate(a0, a1, a2),
        call::THREAD_CREATE => thread_create(a0, a1, a2, a3),
        call::THREAD_KILL => thread_kill(a0),
        call::THREAD_WAIT => thread_wait(a0, a1),
        call::MUTEX_CREATE => waitqueue_create(false),
        call::COND_CREATE => waitqueue_create(true),
        call::MUTEX_WAIT => waitqueue_wait(false, a0, a1, a2),
        call::COND_WAIT => waitqueue_wait(true, a0, a1, a2),
        call::MUTEX_WAKE => waitqueue_wake(false, a0, a1),
        call::COND_WAKE => waitqueue_wake(true, a0, a1),
        call::PORTSET_CREATE => portset_create(),
        call::PORT_CREATE => port_create(a0, a1),
        call::IPC_CALL => ipc_call(frame),
        call::IPC_REPLY_WAIT => ipc_reply_wait(frame),
        call::THREAD_SET_AFFINITY => thread_set_affinity(a0, a1),
        call::REGION_CREATE => region_create(a0, a1, a2, a3),
        call::MAPPING_CREATE => mapping_create(a0, a1, a2, a3, frame.r8, frame.r9),
        call::REGION_PROTECT => region_protect(a0, a1),
        call::REGION_DESTROY => region_or_mapping_destroy(a0, true),
        call::MAPPING_DESTROY => region_or_mapping_destroy(a0, false),
        call::SPACE_SET_KEEPER => space_set_keeper(a0, a1),
        call::REGION_SET_KEEPER => region_set_keeper(a0, a1),
        call::THREAD_STOP => thread_stop(a0),
        call::THREAD_RESUME => thread_resume(a0),
        call::THREAD_GET_STATE => thread_get_state(a0, a1, a2),
        call::THREAD_SET_STATE => thread_set_state(a0, a1, a2),
        call::THREAD_CREATE_STOPPED => thread_create_stopped(a0),
        call::HANDLE_TRANSFER => handle_transfer(a0, a1, a2),
        call::HANDLE_IMPORT => handle_import(a0, a1, a2),
        call::IPC_SEND => ipc_send(frame),
        call::OBJECT_GET_STATE => object_get_state(a0, a1, a2),
        call::REFERENCE_CREATE => reference_create(a0),
        call::THREAD_SET_SCHEDULER => thread_set_scheduler(a0, a1),
        call::THREAD_SET_PRIORITY => thread_set_priority(a0, a1),
        call::REFERENCE_COMPARE => reference_compare(a0, a1),
        call::IPC_RECEIVE => ipc_receive(frame),
        call::IPC_CALL_BUF => ipc_call_buf(frame),
        call::IPC_REPLY_WAIT_BUF => ipc_reply_wait_buf(frame),
        call::CONN_CONNECT => conn_connect(frame),
        call::CONN_ACCEPT => conn_accept(frame),
        call::CONN_SEND => conn_send(frame),
        call::CONN_RECEIVE => conn_receive(frame),
        call::CONN_SEND_OVER_RECEIVE => conn_send_over_receive(frame),
        call::CONN_DISCONNECT => conn_disconnect(a0),
        call::THREAD_GET_CONNECTION => thread_get_connection(a0, a1, a2),
        call::THREAD_SET_CONNECTION => thread_set_connection(a0, a1, a2, a3),
        call::THREAD_SET_DONATION_ONLY => thread_set_donation_only(a0, a1),
        call::THREAD_DONATE => thread_donate(a0),
        call::PORTSET_TAKE_MESSAGES => portset_take_messages(a0, a1, a2),
        call::PORTSET_PUT_MESSAGES => portset_put_messages(a0, a1, a2),
        call::CONN_SEND_BUF => conn_send_buf(frame),
        call::CONN_RECEIVE_BUF => conn_receive_buf(frame),
        call::HANDLE_TRANSFER_AT => handle_transfer_at(a0, a1, a2, a3),
        call::MEMORY_OBJECT_STATE => memory_object_state(a0, a1, a2),
        call::BOOT_ARGS => boot_args(a0, a1),
        call::HANG_REPORT => hang_report(),
        call::SPACE_SET_QUOTA => space_set_quota(a0, a1),
        call::FAULT_INJECT => fault_inject(a0, a1, a2),
        call::READ_TSC => Ok((crate::arch::cpu::read_tsc() & (i64::MAX as u64)) as i64),
        _ => Err(SysError::NoSuchCall),
    };
    match result {
        Ok(v) => v,
        Err(e) => e as i64,
    }
}

fn console_write(ptr: u64, len: u64) -> SysResult {
    if len > CONSOLE_WRITE_MAX {
        return Err(SysError::BadSize);
    }
    let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
    let buf = &mut buf[..len as usize];
    copy_from_user(buf, ptr).map_err(|()| SysError::BadPointer)?;
    let text = core::str::from_utf8(buf).unwrap_or("<invalid UTF-8>");
    print_line(format_args!("user: {}", text.trim_end_matches('\n')));
    CONSOLE_WRITES.fetch_add(1, Ordering::Relaxed);
    Ok(len as i64)
}

/// `boot_args(buf, len)`: copies up to `len` bytes of the root program's
/// argument string (the kernel command line after a lone `--`) to `buf`;
/// returns the string's full length. Only the root space may ask: a child
/// learns only what its parent tells it (border control).
fn boot_args(buf: u64, len: u64) -> SysResult {
    let me = caller()?;
    if !me.is_root() {
        return Err(SysError::MissingRights);
    }
    let args = crate::kernel_args().user_args.as_bytes();
    let n = (len.min(args.len() as u64)) as usize;
    copy_to_user(buf, &args[..n]).map_err(|()| SysError::BadPointer)?;
    Ok(args.len() as i64)
}

/// `hang_report()`: prints what every CPU and thread is doing (the report
/// the kernel watchdog prints), for a user-level watchdog that saw no
/// progress. Root space only; WouldBlock while another report runs.
fn hang_report() -> SysResult {
    if !caller()?.is_root() {
        return Err(SysError::MissingRights);
    }
    if crate::hang::report("asked for by the root program", 0) { Ok(0) } else { Err(SysError::WouldBlock) }
}

/// `fault_inject(mode, a, b)`: arms the allocation fault injector
/// (`mm::inject`): mode 0 off, 1 fail the a-th allocation point from now,
/// 2 fail a seeded random share (seed a, b per mille). Returns how many
/// allocation points were passed since the previous arming. Root space only.
fn fault_inject(mode: u64, a: u64, b: u64) -> SysResult {
    use crate::mm::inject::{Plan, INJECTOR};
    if !caller()?.is_root() {
        return Err(SysError::MissingRights);
    }
    let plan = match mode {
        0 => Plan::Off,
        1 if a > 0 => Plan::Nth(a),
        2 if b <= 1000 => Plan::Random { seed: a, permille: b },
        _ => return Err(SysError::InvalidArgument),
    };
    let (points, _) = INJECTOR.counts();
    INJECTOR.arm(plan);
    Ok((points & (i64::MAX as u64)) as i64)
}

/// The caller's space. User threads always have one while they run.
fn caller() -> Result<alloc::sync::Arc<Space>, SysError> {
    sched::me().space().ok_or(SysError::Dead)
}

/// `system_info(buf, len)`: writes {u64 managed frames, u64 free frames,
/// u64 online CPUs, u64 TSC Hz, u64 IPC fast-path switches, u64 x87/SSE
/// loads, u64 kernel heap bytes in use, u64 kernel threads not yet freed}
/// (64 bytes; at least the first 24 are needed).
fn system_info(buf: u64, len: u64) -> SysResult {
    if len < 24 {
        return Err(SysError::BadSize);
    }
    let s = frame::stats();
    let mut out = [0u8; 64];
    out[..8].copy_from_slice(&s.managed.to_le_bytes());
    out[8..16].copy_from_slice(&s.free.to_le_bytes());
    out[16..24].copy_from_slice(&(smp::online_count() as u64).to_le_bytes());
    out[24..32].copy_from_slice(&crate::arch::time::tsc_hz().to_le_bytes());
    out[32..40].copy_from_slice(&sched::fast_ipc_switches().to_le_bytes());
    out[40..48].copy_from_slice(&sched::fpu_loads().to_le_bytes());
    out[48..56].copy_from_slice(&(crate::mm::heap::used_bytes() as u64).to_le_bytes());
    out[56..].copy_from_slice(&sched::live_threads().to_le_bytes());
    let n = len.min(64) as usize;
    copy_to_user(buf, &out[..n]).map_err(|()| SysError::BadPointer)?;
    Ok(n as i64)
}

fn handle_close(h: u64) -> SysResult {
    let me = caller()?;
    drop(me.remove(Handle::from_raw(h))?);
    Ok(0)
}

fn handle_duplicate(h: u64, rights: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let dup = me.duplicate(Handle::from_raw(h), rights)?;
    Ok(dup.raw() as i64)
}

/// `handle_info(h)`: `type | rights << 8`.
fn handle_info(h: u64) -> SysResult {
    let me = caller()?;
    let (ty, rights) = crate::arch::cpu::without_interrupts(|| {
        let table = me.handles.lock();
        let h = Handle::from_raw(h);
        let rights = table.rights(h)?;
        let ty = table.get(h, Rights::NONE)?.object_type();
        Ok::<_, HandleError>((ty as u32, rights.bits()))
    })?;
    Ok(ty as i64 | ((rights as i64) << 8))
}

/// `space_create(parent)`: a new child of the space `parent` names (CREATE
/// right needed); the caller receives a handle with every right.
fn space_create(parent: u64) -> SysResult {
    let me = caller()?;
    let parent = me.lookup_space(Handle::from_raw(parent), Rights::CREATE)?;
    let child = Space::new(Some(&parent))?;
    match me.insert(Object::Space(child.clone()), Rights::ALL) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            child.destroy();
            Err(e.into())
        }
    }
}

/// `space_destroy(space)`: destroys the space and its subtree and closes
/// the handle. A space cannot destroy itself or an ancestor.
fn space_destroy(h: u64) -> SysResult {
    let me = caller()?;
    let handle = Handle::from_raw(h);
    let target = me.lookup_space(handle, Rights::DESTROY)?;
    if target.is_ancestor_of(&me) {
        return Err(SpaceError::WouldDestroyCaller.into());
    }
    me.remove(handle)?;
    // Joining the subtree's threads blocks; let interrupts in meanwhile.
    crate::arch::cpu::enable_interrupts();
    target.destroy();
    crate::arch::cpu::disable_interrupts();
    Ok(0)
}

/// `space_set_quota(space, bytes)` (SET_STATE): limits the kernel memory
/// the space's whole subtree may take (threads, spaces, handles, regions,
/// mappings; costs in ABI.md). A space may not change its own limit or an
/// ancestor's: a parent bounds its children, never itself. A limit below
/// what is in use takes nothing back; new objects fail until enough is freed.
fn space_set_quota(h: u64, bytes: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(h), Rights::SET_STATE)?;
    if target.is_ancestor_of(&me) {
        return Err(SysError::InvalidArgument);
    }
    target.quota.set_limit(bytes);
    Ok(0)
}

/// `space_enumerate(space, buf, max)`: writes up to `max` records
/// {u64 handle, u32 type, u32 rights} describing the space's handle table
/// (what a parent exports to checkpoint a child); returns how many handles
/// the space holds (which may exceed `max`).
fn space_enumerate(h: u64, buf: u64, max: u64) -> SysResult {
    if max > super::object::space::HANDLE_QUOTA as u64 {
        return Err(SysError::BadSize);
    }
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(h), Rights::GET_STATE)?;
    let (records, total) = crate::arch::cpu::without_interrupts(|| {
        let table = target.handles.lock();
        let mut records: Vec<u8> = Vec::new();
        if crate::mm::heap::fallible(|| records.try_reserve((max.min(table.len() as u64) * ENUMERATE_RECORD) as usize)).is_err() {
            return Err(SysError::NoMemory);
        }
        for (handle, object, rights) in table.iter().take(max as usize) {
            records.extend_from_slice(&handle.raw().to_le_bytes());
            records.extend_from_slice(&(object.object_type() as u32).to_le_bytes());
            records.extend_from_slice(&rights.bits().to_le_bytes());
        }
        Ok((records, table.len()))
    })?;
    copy_to_user(buf, &records).map_err(|()| SysError::BadPointer)?;
    Ok(total as i64)
}

/// `thread_create(space, rip, rsp, arg)`: a running user thread in `space`
/// (CREATE right), starting at `rip` with stack `rsp` and `arg` in rdi.
fn thread_create(space: u64, rip: u64, rsp: u64, arg: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    let t = target.spawn_thread(rip, rsp, (arg, 0))?;
    match me.insert(Object::Thread(t.clone()), Rights::ALL) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            sched::kill(&t);
            Err(e.into())
        }
    }
}

fn thread_kill(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::DESTROY)?;
    sched::kill(&t);
    Ok(0)
}

/// `thread_wait(thread, block)`: the thread's exit code once it has exited
/// (blocking if `block` is 1); a thread that faulted or was killed gives
/// `Dead`.
fn thread_wait(h: u64, block: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::GET_STATE)?;
    let reason = match block {
        0 => t.exit_reason().ok_or(SysError::WouldBlock)?,
        1 => {
            crate::arch::cpu::enable_interrupts();
            let r = sched::join_unless_killed(&t, true);
            crate::arch::cpu::disable_interrupts();
            // A kill ends the wait (the thread exits on its way out); a stop restarts it.
            match r {
                Some(r) => r,
                None => return interrupted(),
            }
        }
        _ => return Err(SysError::InvalidArgument),
    };
    match reason {
        UserExit::Exited(code) => Ok((code & (i64::MAX as u64)) as i64),
        _ => Err(SysError::Dead),
    }
}

/// `mutex_create()` / `cond_create()`: a new wait object in the caller's space.
fn waitqueue_create(cond: bool) -> SysResult {
    let me = caller()?;
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    let q = alloc::sync::Arc::new(sched::WaitQueue::new(if cond { sched::WaitReason::Cond } else { sched::WaitReason::Mutex }));
    let object = if cond { Object::Cond(q) } else { Object::Mutex(q) };
    Ok(me.insert(object, Rights::ALL)?.raw() as i64)
}

/// `mutex_wait(m, addr, expected)` / `cond_wait(c, addr, expected)`: blocks
/// while the aligned u32 at `addr` (the user half of the lock or condition)
/// equals `expected`, checked atomically with respect to `*_wake`. Returns 0
/// after a wake-up (possibly spurious), `WouldBlock` if the word differed.
fn waitqueue_wait(cond: bool, h: u64, addr: u64, expected: u64) -> SysResult {
    if addr % 4 != 0 {
        return Err(SysError::BadPointer);
    }
    let expected = u32::try_from(expected).map_err(|_| SysError::InvalidArgument)?;
    let me = caller()?;
    let q = me.lookup_waitqueue(Handle::from_raw(h), cond)?;
    let mut word = [0u8; 4];
    copy_from_user(&mut word, addr).map_err(|()| SysError::BadPointer)?;
    let mut fault = false;
    let blocked = q.wait_if(|| {
        // Re-read under the queue lock: a waker changes the word before waking.
        if copy_from_user(&mut word, addr).is_err() {
            fault = true;
            return false;
        }
        u32::from_le_bytes(word) == expected
    });
    if fault {
        return Err(SysError::BadPointer);
    }
    if blocked { Ok(0) } else { Err(SysError::WouldBlock) }
}

/// `mutex_wake(m, count)` / `cond_wake(c, count)`: wakes up to `count`
/// waiters; returns how many were woken.
fn waitqueue_wake(cond: bool, h: u64, count: u64) -> SysResult {
    let me = caller()?;
    let q = me.lookup_waitqueue(Handle::from_raw(h), cond)?;
    Ok(q.wake(count.min(i64::MAX as u64) as usize) as i64)
}

/// `portset_create()`: a new portset; the handle has every right.
fn portset_create() -> SysResult {
    let me = caller()?;
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    let ps = alloc::sync::Arc::new(crate::ipc::Portset::new());
    Ok(me.insert(Object::Portset(ps), Rights::ALL)?.raw() as i64)
}

/// `port_create(portset, alias)`: a new port delivering to `portset`
/// (RECEIVE right); servers see `alias` with each request through it.
fn port_create(portset: u64, alias: u64) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(portset), Rights::RECEIVE)?;
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    let port = alloc::sync::Arc::new(crate::ipc::Port { portset: ps, alias });
    Ok(me.insert(Object::Port(port), Rights::ALL)?.raw() as i64)
}

pub(crate) fn message_of(f: &SyscallFrame) -> [u64; 6] {
    *f.message()
}

pub(crate) fn set_message(f: &mut SyscallFrame, m: [u64; 6]) {
    *f.message_mut() = m;
}

/// `ipc_call(port)` with the request in rsi, rdx, r10, r8, r9, r12 (SEND
/// right): returns 0 with the reply in the same registers.
fn ipc_call(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    drop(me);
    // A plain call: a payload sent with the reply is not received.
    let reply = crate::ipc::call(&port, message_of(frame), None).map(|(reply, _)| reply);
    reply_received(frame, reply)
}

/// The end of `ipc_call`: the reply in the message registers.
fn reply_received(frame: &mut SyscallFrame, reply: Result<[u64; 6], crate::ipc::IpcError>) -> SysResult {
    let reply = match call_result(reply) {
        Ok(reply) => reply,
        Err(ret) => return ret,
    };
    set_message(frame, reply);
    Ok(0)
}

/// A blocking IPC's outcome, or (Err) what the system call returns instead:
/// an interrupted call restarts (or fails, if killed); a server that exited
/// without replying fails the call with Dead.
fn call_result<T>(result: Result<T, crate::ipc::IpcError>) -> Result<T, SysResult> {
    match result {
        Ok(v) => Ok(v),
        Err(crate::ipc::IpcError::ServerGone) => Err(Err(SysError::Dead)),
        Err(crate::ipc::IpcError::Interrupted) => Err(interrupted()),
    }
}

/// `ipc_reply_wait(portset)` with the reply to the current client (if any)
/// in the message registers (RECEIVE right): returns the alias of the port
/// the next request came through, with the request in the message registers.
fn ipc_reply_wait(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    drop(me);
    let request = crate::ipc::reply_wait(&ps, message_of(frame), None).map(|(alias, request, _)| (alias, request));
    request_received(frame, request)
}

/// What r13 points at in `ipc_call_buf` and `ipc_reply_wait_buf`: eight
/// u64 words {send ptr, send len, send handle, receive ptr, receive
/// capacity, out: received len, out: received handle, 0}.
struct BufferDescriptor {
    at: u64,
    /// The reserved word, where a call gives it a meaning (conn_send_buf).
    flags: u64,
    send_ptr: u64,
    send_len: u64,
    send_handle: u64,
    recv_ptr: u64,
    recv_capacity: u64,
}

/// Longest byte payload of one message.
pub const IPC_BUFFER_MAX: u64 = matryoshka_abi::PAYLOAD_MAX;

impl BufferDescriptor {
    fn read(at: u64) -> Result<BufferDescriptor, SysError> {
        Self::read_with_flags(at, 0)
    }

    /// `read`, where the reserved word may hold the flags in `allowed`.
    fn read_with_flags(at: u64, allowed: u64) -> Result<BufferDescriptor, SysError> {
        let mut raw = [0u8; 64];
        copy_from_user(&mut raw, at).map_err(|()| SysError::BadPointer)?;
        let w = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if w(7) & !allowed != 0 {
            return Err(SysError::InvalidArgument);
        }
        let d = BufferDescriptor { at, flags: w(7), send_ptr: w(0), send_len: w(1), send_handle: w(2), recv_ptr: w(3), recv_capacity: w(4) };
        if d.send_len > IPC_BUFFER_MAX || d.recv_capacity > IPC_BUFFER_MAX {
            return Err(SysError::BadSize);
        }
        if d.recv_ptr.checked_add(d.recv_capacity).is_none_or(|end| end > crate::arch::paging::USER_TOP) {
            return Err(SysError::BadPointer);
        }
        Ok(d)
    }

    /// Copies the bytes and looks up the handle to send (it needs TRANSFER;
    /// the receiver's handle gets the same rights).
    fn stage(&self, me: &Space) -> Result<crate::ipc::Carried, SysError> {
        if self.send_len == 0 && self.send_handle == 0 {
            return Ok(None);
        }
        let charge = crate::object::quota::Charge::new(&me.quota, self.send_len + core::mem::size_of::<crate::ipc::Payload>() as u64)
            .map_err(|_| SysError::NoMemory)?;
        // The Box's allocation (Box::try_new is not stable).
        crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
        let mut bytes = alloc::vec::Vec::new();
        crate::mm::heap::fallible(|| bytes.try_reserve_exact(self.send_len as usize)).map_err(|_| SysError::NoMemory)?;
        bytes.resize(self.send_len as usize, 0);
        copy_from_user(&mut bytes, self.send_ptr).map_err(|()| SysError::BadPointer)?;
        let object = match self.send_handle {
            0 => None,
            h => {
                let handle = Handle::from_raw(h);
                let rights = crate::arch::cpu::without_interrupts(|| me.handles.lock().rights(handle))?;
                if !rights.contains(Rights::TRANSFER) {
                    return Err(SysError::MissingRights);
                }
                Some((me.lookup(handle, Rights::NONE)?, rights))
            }
        };
        Ok(Some(alloc::boxed::Box::new(crate::ipc::Payload { bytes, object, _charge: charge })))
    }

    /// Copies a received payload out (at most the receive capacity; the
    /// received-length word tells the whole length) and installs its handle.
    fn deliver(&self, me: &Space, payload: crate::ipc::Carried) -> Result<(), SysError> {
        let (len, handle) = match payload {
            None => (0, 0),
            Some(p) => {
                let n = p.bytes.len().min(self.recv_capacity as usize);
                copy_to_user(self.recv_ptr, &p.bytes[..n]).map_err(|()| SysError::BadPointer)?;
                // A full table drops the object: the handle word reads 0.
                let handle = p.object.and_then(|(object, rights)| me.insert(object, rights).ok()).map_or(0, Handle::raw);
                (p.bytes.len() as u64, handle)
            }
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&len.to_le_bytes());
        out[8..].copy_from_slice(&handle.to_le_bytes());
        copy_to_user(self.at + 40, &out).map_err(|()| SysError::BadPointer)
    }
}

/// `ipc_call` with a payload: r13 points at a [`BufferDescriptor`]; the
/// request carries its send part, the reply's payload lands in its receive
/// part. General path only.
fn ipc_call_buf(frame: &mut SyscallFrame) -> SysResult {
    let d = BufferDescriptor::read(frame.r13)?;
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    let payload = d.stage(&me)?;
    let (reply, reply_payload) = match call_result(crate::ipc::call(&port, message_of(frame), payload)) {
        Ok(received) => received,
        Err(ret) => return ret,
    };
    set_message(frame, reply);
    d.deliver(&me, reply_payload)?;
    Ok(0)
}

/// `ipc_reply_wait` with a payload: the reply carries the descriptor's send
/// part, the next request's payload lands in its receive part.
fn ipc_reply_wait_buf(frame: &mut SyscallFrame) -> SysResult {
    let d = BufferDescriptor::read(frame.r13)?;
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    let payload = d.stage(&me)?;
    let Ok((alias, request, request_payload)) = crate::ipc::reply_wait(&ps, message_of(frame), payload) else { return interrupted() };
    set_message(frame, request);
    d.deliver(&me, request_payload)?;
    Ok((alias & fastpath::ipc::ALIAS_RESULT_MASK) as i64)
}

/// The end of `ipc_reply_wait`: the request in the message registers, the
/// alias as the result.
fn request_received(frame: &mut SyscallFrame, request: Result<(u64, [u64; 6]), crate::ipc::IpcError>) -> SysResult {
    let Ok((alias, request)) = request else { return interrupted() };
    set_message(frame, request);
    Ok((alias & fastpath::ipc::ALIAS_RESULT_MASK) as i64)
}

/// A reliable-IPC outcome as the caller sees it (Err: what the call returns).
fn conn_result<T>(result: Result<T, crate::reliable::ConnError>) -> Result<T, SysResult> {
    use crate::reliable::ConnError;
    match result {
        Ok(v) => Ok(v),
        Err(ConnError::WrongState) => Err(Err(SysError::InvalidArgument)),
        Err(ConnError::Gone) => Err(Err(SysError::Dead)),
        Err(ConnError::Interrupted) => Err(interrupted()),
    }
}

fn connection_side(side: u64) -> Result<usize, SysError> {
    match side {
        0 => Ok(crate::reliable::CLIENT_SIDE),
        1 => Ok(crate::reliable::SERVER_SIDE),
        _ => Err(SysError::InvalidArgument),
    }
}

/// `conn_connect(port)` with the first message in the message registers:
/// waits for a server accepting on the port's portset; the caller's client
/// side (0) is then connected and the caller sends.
fn conn_connect(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    drop(me);
    match conn_result(crate::reliable::connect(&port, message_of(frame))) {
        Ok(()) => Ok(0),
        Err(ret) => ret,
    }
}

/// `conn_accept(portset)`: waits for a connecting client; returns the port's
/// alias with the first message in the message registers. The caller's
/// server side (1) is then connected and the caller receives.
fn conn_accept(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    drop(me);
    let (alias, first) = match conn_result(crate::reliable::accept(&ps)) {
        Ok(accepted) => accepted,
        Err(ret) => return ret,
    };
    set_message(frame, first);
    Ok((alias & fastpath::ipc::ALIAS_RESULT_MASK) as i64)
}

/// `conn_send(side, flags in r13)`: hands the message registers to the
/// receiver exactly once (waiting until it takes them); flag 1 (OVER)
/// makes the receiver the sender after this message.
fn conn_send(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    if frame.r13 & !crate::reliable::OVER != 0 {
        return Err(SysError::InvalidArgument);
    }
    match conn_result(crate::reliable::send(side, message_of(frame), frame.r13, None)) {
        Ok(()) => Ok(0),
        Err(ret) => ret,
    }
}

/// The result code of a receive: 0 data, 1 data and the turn to send,
/// 2 the other end disconnected.
fn received_code(r: crate::reliable::Received) -> i64 {
    match r {
        crate::reliable::Received::Data => 0,
        crate::reliable::Received::Over => 1,
        crate::reliable::Received::Disconnected => 2,
    }
}

/// `conn_receive(side)`: the next message in the message registers.
fn conn_receive(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    received_into(frame, crate::reliable::receive(side))
}

/// The end of a plain receive: the message in the message registers, the
/// result code; a payload that came along is dropped.
fn received_into(frame: &mut SyscallFrame, received: Result<(crate::reliable::Received, [u64; 6], crate::ipc::Carried), crate::reliable::ConnError>) -> SysResult {
    let (what, message, _) = match conn_result(received) {
        Ok(received) => received,
        Err(ret) => return ret,
    };
    set_message(frame, message);
    Ok(received_code(what))
}

/// `conn_send_over_receive(side)`: sends the message with OVER, then
/// receives the first message of the other direction. Stopped after the send
/// took effect, the call is exported as the plain `conn_receive` that
/// remains (Fluke's atomic API).
fn conn_send_over_receive(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    if let Err(ret) = conn_result(crate::reliable::send(side, message_of(frame), crate::reliable::OVER, None)) {
        return ret;
    }
    match crate::reliable::receive(side) {
        // Restarts as the receive alone (or fails, if killed).
        Err(crate::reliable::ConnError::Interrupted) => interrupted().map(|_| {
            frame.rax = call::CONN_RECEIVE;
            RESTART_AS_SET
        }),
        other => received_into(frame, other),
    }
}

/// `conn_send_buf(side)` with r13 → a payload descriptor whose reserved
/// word holds the flags (1 = OVER): `conn_send` that also carries the
/// descriptor's bytes and capability, received whole by `conn_receive_buf`.
fn conn_send_buf(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    let d = BufferDescriptor::read_with_flags(frame.r13, crate::reliable::OVER)?;
    let me = caller()?;
    let payload = d.stage(&me)?;
    match conn_result(crate::reliable::send(side, message_of(frame), d.flags, payload)) {
        Ok(()) => Ok(0),
        Err(ret) => ret,
    }
}

/// `conn_receive_buf(side)` with r13 → a payload descriptor (its send part
/// empty): `conn_receive` that also delivers the message's payload into the
/// descriptor's receive part.
fn conn_receive_buf(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    let d = BufferDescriptor::read(frame.r13)?;
    if d.send_len != 0 || d.send_handle != 0 {
        return Err(SysError::InvalidArgument);
    }
    let me = caller()?;
    let (what, message, payload) = match conn_result(crate::reliable::receive(side)) {
        Ok(received) => received,
        Err(ret) => return ret,
    };
    set_message(frame, message);
    d.deliver(&me, payload)?;
    Ok(received_code(what))
}

fn conn_disconnect(side: u64) -> SysResult {
    let side = connection_side(side)?;
    match conn_result(crate::reliable::disconnect(side)) {
        Ok(()) => Ok(0),
        Err(ret) => ret,
    }
}

/// `thread_get_connection(thread, side, buf)` (GET_STATE, thread stopped):
/// writes {u64 a Reference handle to the thread at the other end, or 0;
/// u64 flags: 1 linked, 2 this end sends, 4 closed} and returns 16.
fn thread_get_connection(h: u64, side: u64, buf: u64) -> SysResult {
    let side = connection_side(side)?;
    let t = stopped_thread(h, Rights::GET_STATE)?;
    let (peer, flags) = match crate::reliable::get_link(&t, side) {
        None => (0, 0),
        Some((peer, sending, closed)) => {
            let me = caller()?;
            let peer = match peer {
                Some(p) => {
                    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
                    let named = alloc::sync::Arc::new(Object::Thread(p));
                    me.insert(Object::Reference(named), Rights::GET_STATE.union(Rights::DUPLICATE).union(Rights::TRANSFER))?.raw()
                }
                None => 0,
            };
            (peer, 1 | (sending as u64) << 1 | (closed as u64) << 2)
        }
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&peer.to_le_bytes());
    out[8..].copy_from_slice(&flags.to_le_bytes());
    copy_to_user(buf, &out).map_err(|()| SysError::BadPointer)?;
    Ok(16)
}

/// `thread_set_connection(thread, side, peer, flags)` (SET_STATE, thread
/// stopped): links `side` to the thread `peer` names (a Thread handle or a
/// Reference to one; 0 clears the side), flag 2: this end sends. The two
/// ends of a rebuilt connection are set one after the other.
fn thread_set_connection(h: u64, side: u64, peer: u64, flags: u64) -> SysResult {
    let side = connection_side(side)?;
    if flags & !2 != 0 {
        return Err(SysError::InvalidArgument);
    }
    let t = stopped_thread(h, Rights::SET_STATE)?;
    let me = caller()?;
    let peer = match peer {
        0 => None,
        p => match me.lookup(Handle::from_raw(p), Rights::NONE)? {
            Object::Thread(t) => Some(t),
            Object::Reference(r) => match &*r {
                Object::Thread(t) => Some(t.clone()),
                _ => return Err(SysError::WrongType),
            },
            _ => return Err(SysError::WrongType),
        },
    };
    crate::reliable::set_link(&t, side, peer.as_ref(), flags & 2 != 0).map_err(|_| SysError::InvalidArgument)?;
    Ok(0)
}

/// Finishes the `ipc_call` or `ipc_reply_wait` of a thread the fast path
/// parked and the general path woke: its result, as `dispatch` returns it.
pub fn finish_parked_ipc(frame: &mut SyscallFrame) -> i64 {
    let result = match sched::me().parked_as() {
        sched::ParkedAs::Client => reply_received(frame, crate::ipc::await_reply()),
        sched::ParkedAs::Server => request_received(frame, crate::ipc::await_request()),
    };
    result.unwrap_or_else(|e| e as i64)
}

/// `thread_set_affinity(thread, mask)`: the CPUs (bit per CPU) the thread
/// may run on (SET_STATE right); it moves at its next switch.
fn thread_set_affinity(h: u64, mask: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    sched::set_affinity(&t, mask)?;
    Ok(0)
}

fn vm_rights(bits: u64) -> Result<crate::object::vm::Rights, SysError> {
    u8::try_from(bits).ok().and_then(crate::object::vm::Rights::from_bits).ok_or(SysError::InvalidArgument)
}

/// Handle rights a region handle carries for memory rights `max`.
fn region_handle_rights(max: crate::object::vm::Rights) -> Rights {
    use crate::object::vm::Rights as V;
    let mut r = Rights::GET_STATE.union(Rights::SET_STATE).union(Rights::DESTROY).union(Rights::DUPLICATE).union(Rights::TRANSFER);
    if max.contains(V::READ) {
        r = r.union(Rights::MAP_READ);
    }
    if max.contains(V::WRITE) {
        r = r.union(Rights::MAP_WRITE);
    }
    if max.contains(V::EXECUTE) {
        r = r.union(Rights::MAP_EXECUTE);
    }
    r
}

/// `region_create(space, start, size, max)`: exports `[start, start+size)`
/// of `space` (CREATE right) with maximum memory rights `max` (bits: 1 read,
/// 2 write, 4 execute). The handle's MAP_* rights follow `max`.
fn region_create(space: u64, start: u64, size: u64, max: u64) -> SysResult {
    let max = vm_rights(max)?;
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    charge_vm_node(&target)?;
    let id = crate::object::memory::add(|g| g.create_region(target.vm_id(), start, size, max, None)).inspect_err(|_| target.uncharge_vm_node())?;
    match me.insert(Object::Region(id), region_handle_rights(max)) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            let _ = crate::object::memory::change(|g| g.destroy_region(id));
            Err(e.into())
        }
    }
}

/// `mapping_create(region, space, va, offset, size, rights)`: imports
/// `[offset, offset+size)` of `region` into `space` (CREATE right) at `va`
/// with memory `rights`, which the region handle's MAP_* rights must allow.
fn mapping_create(region: u64, space: u64, va: u64, offset: u64, size: u64, rights: u64) -> SysResult {
    use crate::object::vm::Rights as V;
    let wanted = vm_rights(rights)?;
    let mut needed = Rights::NONE;
    if wanted.contains(V::READ) {
        needed = needed.union(Rights::MAP_READ);
    }
    if wanted.contains(V::WRITE) {
        needed = needed.union(Rights::MAP_WRITE);
    }
    if wanted.contains(V::EXECUTE) {
        needed = needed.union(Rights::MAP_EXECUTE);
    }
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), needed)? else { return Err(SysError::WrongType) };
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    charge_vm_node(&target)?;
    let id = crate::object::memory::add(|g| g.create_mapping(r, target.vm_id(), va, offset, size, wanted)).inspect_err(|_| target.uncharge_vm_node())?;
    match me.insert(Object::Mapping(id), Rights::GET_STATE.union(Rights::DESTROY).union(Rights::DUPLICATE)) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            let _ = crate::object::memory::change(|g| g.destroy_mapping(id));
            Err(e.into())
        }
    }
}

/// Charges one more region or mapping to `space`'s quota, after settling
/// the charge for those that are gone.
fn charge_vm_node(space: &Space) -> Result<(), SysError> {
    crate::object::memory::add(|g| Ok(space.settle_vm_nodes(g.node_count(space.vm_id()))))?;
    Ok(space.charge_vm_node()?)
}

/// `region_protect(region, max)`: changes the region's maximum rights
/// (SET_STATE right); every mapping derived from it, through any depth,
/// loses what `max` removes, on every CPU, before the call returns.
fn region_protect(region: u64, max: u64) -> SysResult {
    let max = vm_rights(max)?;
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), Rights::SET_STATE)? else { return Err(SysError::WrongType) };
    crate::object::memory::change(|g| g.protect_region(r, max))?;
    Ok(0)
}

/// `region_destroy(region)` / `mapping_destroy(mapping)` (DESTROY right):
/// revokes it and everything derived from it, and closes the handle.
fn region_or_mapping_destroy(h: u64, region: bool) -> SysResult {
    let me = caller()?;
    let handle = Handle::from_raw(h);
    let object = me.lookup(handle, Rights::DESTROY)?;
    match (object, region) {
        (Object::Region(r), true) => crate::object::memory::change(|g| g.destroy_region(r))?,
        (Object::Mapping(m), false) => crate::object::memory::change(|g| g.destroy_mapping(m))?,
        _ => return Err(SysError::WrongType),
    }
    me.remove(handle)?;
    Ok(0)
}

/// The port behind `h` (SEND right), or none for handle 0.
fn optional_port(me: &Space, h: u64) -> Result<Option<alloc::sync::Arc<crate::ipc::Port>>, SysError> {
    if h == 0 {
        return Ok(None);
    }
    Ok(Some(me.lookup_port(Handle::from_raw(h), Rights::SEND)?))
}

/// `space_set_keeper(space, port)`: the port (SEND right; 0 clears) that
/// receives the space's threads' exceptions as IPC (SET_STATE on the space).
fn space_set_keeper(space: u64, port: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::SET_STATE)?;
    let port = optional_port(&me, port)?;
    target.set_keeper(port);
    Ok(0)
}

/// `region_set_keeper(region, port)`: the port (SEND right; 0 clears) that
/// receives faults in the region's unbacked pages (SET_STATE on the region).
fn region_set_keeper(region: u64, port: u64) -> SysResult {
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), Rights::SET_STATE)? else { return Err(SysError::WrongType) };
    let token = optional_port(&me, port)?.map(|p| crate::object::keeper::token_for(&p));
    crate::object::memory::add(|g| g.set_region_keeper(r, token))?;
    Ok(0)
}

/// `thread_stop(thread)` (SET_STATE): stops the thread at a clean point and
/// returns once it is stopped. A thread blocked in a system call is
/// exported as about to make that call again (Fluke's atomic API).
fn thread_stop(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    drop(me);
    if alloc::sync::Arc::ptr_eq(&t, &sched::current()) {
        return Err(SysError::InvalidArgument);
    }
    crate::arch::cpu::enable_interrupts();
    let stopped = sched::stop(&t);
    crate::arch::cpu::disable_interrupts();
    if !stopped {
        return Err(SysError::Dead);
    }
    if t.has_exited() { Err(SysError::Dead) } else { Ok(0) }
}

/// `thread_resume(thread)` (SET_STATE): lets a stopped thread run again.
fn thread_resume(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    if sched::resume(&t) { Ok(0) } else { Err(SysError::InvalidArgument) }
}

/// `thread_create_stopped(space)` (CREATE): a thread that runs only after
/// `thread_set_state` and `thread_resume` (to rebuild a thread from state).
fn thread_create_stopped(space: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    let t = target.spawn_stopped_thread(sched::UserRegisters { rflags: 0x202, ..Default::default() })?;
    match me.insert(Object::Thread(t.clone()), Rights::ALL) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            sched::kill(&t);
            Err(e.into())
        }
    }
}

fn stopped_thread(h: u64, right: Rights) -> Result<alloc::sync::Arc<sched::Thread>, SysError> {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), right)?;
    if t.has_exited() {
        return Err(SysError::Dead);
    }
    if !t.is_stopped() {
        return Err(SysError::WouldBlock);
    }
    Ok(t)
}

/// A thread's user registers as the state record orders them.
fn read_registers(t: &sched::Thread) -> (sched::UserRegisters, bool) {
    use crate::arch::x86_64::idt::TrapFrame;
    match t.stopped_frame() {
        Some((addr, sched::FrameKind::Trap)) => {
            // SAFETY: the thread is stopped, so its trap frame sits unchanged on its kernel stack.
            let f = unsafe { &*(addr as *const TrapFrame) };
            let gpr = [f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15];
            (sched::UserRegisters { gpr, rip: f.rip, rflags: f.rflags }, false)
        }
        Some((addr, sched::FrameKind::Syscall)) => {
            // SAFETY: as above, for the system-call frame.
            let f = unsafe { &*(addr as *const SyscallFrame) };
            let gpr = [f.rax, f.rbx, f.rip, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.rflags, f.r12, f.r13, f.r14, f.r15];
            (sched::UserRegisters { gpr, rip: f.rip, rflags: f.rflags }, true)
        }
        None => (t.pending_start().lock().unwrap_or_default(), false),
    }
}

/// `thread_get_state(thread, buf, len)` (GET_STATE, thread stopped): writes
/// the version-1 state record (152 bytes): word 0 = version 1 | flags << 32
/// (flag bit 0: stopped in a system call, so rcx/r11 hold rip/rflags), then
/// rax rbx rcx rdx rsi rdi rbp rsp r8..r15, rip, rflags.
fn thread_get_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < THREAD_STATE_BYTES {
        return Err(SysError::BadSize);
    }
    let t = stopped_thread(h, Rights::GET_STATE)?;
    let (regs, in_syscall) = read_registers(&t);
    let version = if len >= THREAD_STATE_V2_BYTES { 2 } else { 1 };
    let mut words = [0u64; 19];
    words[0] = version | ((in_syscall as u64) << 32);
    words[1..17].copy_from_slice(&regs.gpr);
    words[17] = regs.rip;
    words[18] = regs.rflags;
    let mut bytes = [0u8; 152];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_user(buf, &bytes).map_err(|()| SysError::BadPointer)?;
    if version == 1 {
        return Ok(THREAD_STATE_BYTES as i64);
    }
    let area = t.saved_fpu().ok_or(SysError::WouldBlock)?;
    copy_to_user(buf + THREAD_STATE_BYTES, &area.0).map_err(|()| SysError::BadPointer)?;
    Ok(THREAD_STATE_V2_BYTES as i64)
}

/// `thread_set_state(thread, buf, len)` (SET_STATE, thread stopped):
/// replaces the thread's registers with a version-1 record. rip and rsp
/// must be user addresses; rflags is sanitized (IF on; IOPL, NT, AC off).
fn thread_set_state(h: u64, buf: u64, len: u64) -> SysResult {
    use crate::arch::x86_64::idt::TrapFrame;
    if len < THREAD_STATE_BYTES {
        return Err(SysError::BadSize);
    }
    let mut bytes = [0u8; 152];
    copy_from_user(&mut bytes, buf).map_err(|()| SysError::BadPointer)?;
    let mut w = [0u64; 19];
    for (word, chunk) in w.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    let fpu_state = match w[0] as u32 {
        1 => None,
        2 if len >= THREAD_STATE_V2_BYTES => {
            let mut area = fpu::FpuArea([0; fpu::AREA_BYTES]);
            copy_from_user(&mut area.0, buf + THREAD_STATE_BYTES).map_err(|()| SysError::BadPointer)?;
            // An MXCSR with bits this CPU lacks would fault on the load.
            if !area.loadable() {
                return Err(SysError::InvalidArgument);
            }
            Some(area)
        }
        2 => return Err(SysError::BadSize),
        _ => return Err(SysError::InvalidArgument),
    };
    let mut gpr = [0u64; 16];
    gpr.copy_from_slice(&w[1..17]);
    let (rip, rflags) = (w[17], crate::arch::x86_64::context::sanitize_user_rflags(w[18]));
    if rip >= crate::arch::paging::USER_TOP || gpr[7] > crate::arch::paging::USER_TOP {
        return Err(SysError::BadPointer);
    }
    let t = stopped_thread(h, Rights::SET_STATE)?;
    if let Some(area) = &fpu_state {
        if !t.set_saved_fpu(area) {
            return Err(SysError::WouldBlock);
        }
    }
    match t.stopped_frame() {
        Some((addr, sched::FrameKind::Trap)) => {
            // SAFETY: the thread is stopped; its trap frame is ours to rewrite.
            let f = unsafe { &mut *(addr as *mut TrapFrame) };
            (f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp) = (gpr[0], gpr[1], gpr[2], gpr[3], gpr[4], gpr[5], gpr[6], gpr[7]);
            (f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15) = (gpr[8], gpr[9], gpr[10], gpr[11], gpr[12], gpr[13], gpr[14], gpr[15]);
            (f.rip, f.rflags) = (rip, rflags);
        }
        Some((addr, sched::FrameKind::Syscall)) => {
            // SAFETY: as above; sysret will take rip and rflags from this frame.
            let f = unsafe { &mut *(addr as *mut SyscallFrame) };
            (f.rax, f.rbx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp) = (gpr[0], gpr[1], gpr[3], gpr[4], gpr[5], gpr[6], gpr[7]);
            (f.r8, f.r9, f.r10, f.r12, f.r13, f.r14, f.r15) = (gpr[8], gpr[9], gpr[10], gpr[12], gpr[13], gpr[14], gpr[15]);
            (f.rip, f.rflags) = (rip, rflags);
        }
        None => *t.pending_start().lock() = Some(sched::UserRegisters { gpr, rip, rflags }),
    }
    Ok(0)
}

/// `handle_transfer(space, handle, rights)`: puts a handle to the same object
/// into the table of `space` (CREATE right on it) with `rights` — a subset of
/// the original's, which must include TRANSFER — and returns its value *in
/// that space* (meaningless in the caller's). This is how a parent hands a
/// child its capabilities: the child reaches nothing else.
fn handle_transfer(space: u64, h: u64, rights: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    let handle = Handle::from_raw(h);
    let have = crate::arch::cpu::without_interrupts(|| me.handles.lock().rights(handle))?;
    if !have.contains(Rights::TRANSFER) || !have.contains(rights) {
        return Err(SysError::MissingRights);
    }
    let object = me.lookup(handle, Rights::NONE)?;
    Ok(target.insert(object, rights)?.raw() as i64)
}

/// `handle_import(space, handle, rights)`: a handle in the caller's table to
/// the object behind `handle` *in `space`'s table* (GET_STATE on the space;
/// `rights` a subset of that handle's, plus TRANSFER so the importer can put
/// it back into a rebuilt space). How a parent reaches the objects its child
/// holds, to export or rebuild them: it controls the child completely, so it
/// gains nothing it could not already use through the child.
fn handle_import(space: u64, h: u64, rights: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let source = me.lookup_space(Handle::from_raw(space), Rights::GET_STATE)?;
    let handle = Handle::from_raw(h);
    let have = crate::arch::cpu::without_interrupts(|| source.handles.lock().rights(handle))?;
    if !have.contains(rights) {
        return Err(SysError::MissingRights);
    }
    let object = source.lookup(handle, Rights::NONE)?;
    Ok(me.insert(object, rights.union(Rights::TRANSFER))?.raw() as i64)
}

/// `handle_transfer_at(space, handle, rights, value)`: like handle_transfer
/// but at exactly the handle value `value` in `space`'s table (SET_STATE on
/// the space), so a rebuilt space's handle table matches the exported one.
fn handle_transfer_at(space: u64, h: u64, rights: u64, value: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::SET_STATE.union(Rights::CREATE))?;
    let handle = Handle::from_raw(h);
    let have = crate::arch::cpu::without_interrupts(|| me.handles.lock().rights(handle))?;
    if !have.contains(Rights::TRANSFER) || !have.contains(rights) {
        return Err(SysError::MissingRights);
    }
    let object = me.lookup(handle, Rights::NONE)?;
    if target.is_dead() {
        return Err(SysError::Dead);
    }
    target.insert_at(Handle::from_raw(value), object, rights).map_err(|e| match e {
        SpaceError::Handle(HandleError::Invalid) => SysError::InvalidArgument,
        e => e.into(),
    })?;
    Ok(0)
}

/// `memory_object_state(handle, buf, len ≥ 40)` (GET_STATE): the state of a
/// Region {kind 5, start, size, max rights, 0} or a Mapping {kind 6, va,
/// offset, size, rights} as five u64 words.
fn memory_object_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < 40 {
        return Err(SysError::BadSize);
    }
    let me = caller()?;
    let words: [u64; 5] = match me.lookup(Handle::from_raw(h), Rights::GET_STATE)? {
        Object::Region(r) => {
            let i = crate::object::memory::add(|g| g.region_info(r))?;
            [5, i.start, i.size, i.max.bits() as u64, 0]
        }
        Object::Mapping(m) => {
            let i = crate::object::memory::add(|g| g.mapping_info(m))?;
            [6, i.va, i.offset, i.size, i.rights.bits() as u64]
        }
        _ => return Err(SysError::WrongType),
    };
    let mut bytes = [0u8; 40];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_user(buf, &bytes).map_err(|()| SysError::BadPointer)?;
    Ok(40)
}

/// `ipc_send(port)` with the message in the six message registers (SEND
/// right): one-way, at most once, never blocks; `WouldBlock` if the
/// portset's queue is full (nothing was sent).
fn ipc_send(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    if crate::ipc::send(&port, message_of(frame)) { Ok(0) } else { Err(SysError::WouldBlock) }
}

/// Bytes of one exported one-way message: {u64 alias, six u64 words}.
const QUEUED_MESSAGE_BYTES: usize = 56;

/// `portset_take_messages(portset, buf, max)` (RECEIVE and GET_STATE):
/// takes up to `max` queued one-way messages, oldest first, and writes
/// them as {alias, six words} records; returns how many. A parent exports
/// a frozen child's portset this way (the queue is kernel-held state).
fn portset_take_messages(h: u64, buf: u64, max: u64) -> SysResult {
    if max > crate::ipc::ONEWAY_CAPACITY as u64 {
        return Err(SysError::BadSize);
    }
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(h), Rights::RECEIVE.union(Rights::GET_STATE))?;
    // Check the whole buffer first: nothing is taken that cannot be written.
    let mut out = alloc::vec![0u8; max as usize * QUEUED_MESSAGE_BYTES];
    copy_to_user(buf, &out).map_err(|()| SysError::BadPointer)?;
    let taken = crate::ipc::take_queued(&ps, max as usize);
    for ((alias, words), record) in taken.iter().zip(out.chunks_exact_mut(QUEUED_MESSAGE_BYTES)) {
        record[..8].copy_from_slice(&alias.to_le_bytes());
        for (w, bytes) in words.iter().zip(record[8..].chunks_exact_mut(8)) {
            bytes.copy_from_slice(&w.to_le_bytes());
        }
    }
    copy_to_user(buf, &out[..taken.len() * QUEUED_MESSAGE_BYTES]).map_err(|()| SysError::BadPointer)?;
    Ok(taken.len() as i64)
}

/// `portset_put_messages(portset, buf, n)` (SET_STATE): queues `n`
/// {alias, six words} records in order as if sent (rebuilding a portset
/// from exported state); returns how many fit in the queue.
fn portset_put_messages(h: u64, buf: u64, n: u64) -> SysResult {
    if n > crate::ipc::ONEWAY_CAPACITY as u64 {
        return Err(SysError::BadSize);
    }
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(h), Rights::SET_STATE)?;
    let mut raw = alloc::vec![0u8; n as usize * QUEUED_MESSAGE_BYTES];
    copy_from_user(&mut raw, buf).map_err(|()| SysError::BadPointer)?;
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let messages: alloc::vec::Vec<crate::ipc::OnewayMessage> = raw
        .chunks_exact(QUEUED_MESSAGE_BYTES)
        .map(|r| {
            let mut words = [0u64; 6];
            for (w, b) in words.iter_mut().zip(r[8..].chunks_exact(8)) {
                *w = word(b);
            }
            (word(&r[..8]), words)
        })
        .collect();
    Ok(crate::ipc::put_queued(&ps, &messages) as i64)
}

/// `ipc_receive(portset)` (RECEIVE right): the next one-way message: returns
/// its port's alias with the message in the six message registers.
fn ipc_receive(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    drop(me);
    let Ok((alias, message)) = crate::ipc::receive(&ps) else { return interrupted() };
    set_message(frame, message);
    Ok((alias & (i64::MAX as u64)) as i64)
}

/// The handle value under which `me` holds `object` (by identity), or 0:
/// how exported state names links to other objects (reference relativity).
fn handle_in(me: &Space, object: &Object) -> u64 {
    crate::arch::cpu::without_interrupts(|| {
        let table = me.handles.lock();
        // A direct handle, not a reference, names the link.
        let found = table.iter().find(|(_, o, _)| !matches!(o, Object::Reference(_)) && o.same(object));
        found.map_or(0, |(h, _, _)| h.raw())
    })
}

/// `object_get_state(handle, buf, len ≥ 48)` (GET_STATE): a version-1
/// record of six u64 words, `[type, ...]`, for any object type; links to
/// other objects are given as the caller's handles to them (0 when the
/// caller holds none). Threads have their own register record
/// (`thread_get_state`); here a thread reports `[2, stopped, exited, cpu, 0, 0]`.
///
/// * Space `[1, keeper port, live handles, children, quota limit, quota used]`
/// * Port `[3, alias, portset, 0, 0, 0]`
/// * Portset `[4, queued one-way messages, 0, 0, 0, 0]`
/// * Region `[5, start, size, max rights, space, 0]`
/// * Mapping `[6, va, offset, size, rights, region]`
/// * Mutex / Cond `[7 / 8, 0, 0, 0, 0, 0]` (waiters are threads, exported with them)
fn object_get_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < 48 {
        return Err(SysError::BadSize);
    }
    let me = caller()?;
    let object = me.lookup(Handle::from_raw(h), Rights::GET_STATE)?;
    let words: [u64; 6] = match &object {
        Object::Space(s) => {
            let keeper = s.keeper().map_or(0, |p| handle_in(&me, &Object::Port(p)));
            let live = crate::arch::cpu::without_interrupts(|| s.handles.lock().len()) as u64;
            [1, keeper, live, s.children().len() as u64, s.quota.limit(), s.quota.used()]
        }
        Object::Thread(t) => [2, t.is_stopped() as u64, t.has_exited() as u64, t.cpu() as u64, 0, 0],
        Object::Port(p) => [3, p.alias, handle_in(&me, &Object::Portset(p.portset.clone())), 0, 0, 0],
        Object::Portset(ps) => [4, ps.queued_oneway() as u64, 0, 0, 0, 0],
        Object::Region(r) => {
            let i = crate::object::memory::add(|g| g.region_info(*r))?;
            let owner = crate::object::memory::space_of(i.space).map_or(0, |s| handle_in(&me, &Object::Space(s)));
            [5, i.start, i.size, i.max.bits() as u64, owner, 0]
        }
        Object::Mapping(m) => {
            let i = crate::object::memory::add(|g| g.mapping_info(*m))?;
            [6, i.va, i.offset, i.size, i.rights.bits() as u64, handle_in(&me, &Object::Region(i.region))]
        }
        Object::Mutex(_) => [7, 0, 0, 0, 0, 0],
        Object::Cond(_) => [8, 0, 0, 0, 0, 0],
        Object::Reference(r) => [9, r.target().object_type() as u64, 0, 0, 0, 0],
    };
    let mut bytes = [0u8; 48];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_user(buf, &bytes).map_err(|()| SysError::BadPointer)?;
    Ok(48)
}

/// `reference_create(handle)`: a Reference naming the handle's object (no
/// right needed: a reference grants nothing); the new handle has GET_STATE,
/// DUPLICATE and TRANSFER only.
fn reference_create(h: u64) -> SysResult {
    let me = caller()?;
    let object = me.lookup(Handle::from_raw(h), Rights::NONE)?;
    let target = object.target().clone();
    let rights = Rights::GET_STATE.union(Rights::DUPLICATE).union(Rights::TRANSFER);
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    Ok(me.insert(Object::Reference(alloc::sync::Arc::new(target)), rights)?.raw() as i64)
}

/// `reference_compare(a, b)`: 1 if the two handles (references or not) name
/// the same object, else 0.
fn reference_compare(a: u64, b: u64) -> SysResult {
    let me = caller()?;
    let x = me.lookup(Handle::from_raw(a), Rights::NONE)?;
    let y = me.lookup(Handle::from_raw(b), Rights::NONE)?;
    Ok(x.same(&y) as i64)
}

/// `thread_set_scheduler(thread, port)` (SET_STATE; port SEND, 0 clears):
/// each time the thread uses up a time slice, the port receives the one-way
/// message `[4, cpu, tick, 0, 0, 0]` (the port's alias tells a user-level
/// scheduler which thread it is).
fn thread_set_scheduler(h: u64, port: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    let port = optional_port(&me, port)?;
    t.set_scheduler(port);
    Ok(0)
}

/// `thread_set_donation_only(thread, on)` (SET_STATE): with 1 the thread
/// runs only on time a scheduler donates with `thread_donate`, and each
/// time it becomes runnable on its own its scheduler port gets the one-way
/// message `[5, cpu, tick, 0, 0, 0]`; 0 returns it to the run queues.
fn thread_set_donation_only(h: u64, on: u64) -> SysResult {
    if on > 1 {
        return Err(SysError::InvalidArgument);
    }
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    sched::set_donation_only(&t, on == 1);
    Ok(0)
}

/// `thread_donate(thread)` (SET_STATE): runs the runnable donation-only
/// thread on the caller's CPU and time until it blocks (0), uses up its
/// slice or yields (1: still runnable), exits (2) or stops (3).
fn thread_donate(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    drop(me);
    match sched::donate(&t) {
        Ok(end) => Ok(end as i64),
        Err(sched::DonateError::Invalid) => Err(SysError::InvalidArgument),
        Err(sched::DonateError::NotRunnable) => Err(SysError::WouldBlock),
        Err(sched::DonateError::Exited) => Err(SysError::Dead),
        Err(sched::DonateError::Interrupted) => interrupted(),
    }
}

/// `thread_set_priority(thread, priority)` (SET_STATE): 0..=63, higher runs
/// first; user threads start at 16.
fn thread_set_priority(h: u64, priority: u64) -> SysResult {
    if priority > crate::sched::runqueue::MAX_PRIORITY as u64 {
        return Err(SysError::InvalidArgument);
    }
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    t.set_priority(priority as u8);
    Ok(0)
}
