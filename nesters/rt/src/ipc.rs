//! Ports, portsets and synchronous IPC with six-word register messages.

use core::arch::asm;

use crate::object::Handle;
use crate::{decode, nr, syscall0, syscall2, SysError};

pub type Message = [u64; 6];

pub fn portset_create() -> Result<Handle, SysError> {
    // SAFETY: creates a kernel object; no memory arguments.
    decode(unsafe { syscall0(nr::PORTSET_CREATE) }).map(Handle)
}

/// A port delivering to `portset`; servers see `alias` with each request.
pub fn port_create(portset: Handle, alias: u64) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::PORT_CREATE, portset.0, alias) }).map(Handle)
}

/// The raw IPC system call: number, handle, and the message registers
/// (rsi, rdx, r10, r8, r9, r12) in and out.
#[inline(always)]
fn ipc_raw(n: u64, h: Handle, m: &mut Message) -> i64 {
    let ret: i64;
    // SAFETY: the call reads and writes only the listed registers; the
    // kernel validates the handle.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as i64 => ret,
            in("rdi") h.0,
            inlateout("rsi") m[0],
            inlateout("rdx") m[1],
            inlateout("r10") m[2],
            inlateout("r8") m[3],
            inlateout("r9") m[4],
            inlateout("r12") m[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// One-way send, at most once: never blocks; `WouldBlock` when the
/// portset's queue is full (nothing was sent).
#[inline]
pub fn send(port: Handle, message: Message) -> Result<(), SysError> {
    let mut m = message;
    decode(ipc_raw(nr::IPC_SEND, port, &mut m)).map(|_| ())
}

/// Receives the next one-way message on `portset`: (alias, message).
#[inline]
pub fn receive(portset: Handle) -> Result<(u64, Message), SysError> {
    let mut m = [0; 6];
    let alias = decode(ipc_raw(nr::IPC_RECEIVE, portset, &mut m))?;
    Ok((alias, m))
}

/// Sends `request` through `port` and returns the server's reply.
#[inline]
pub fn call(port: Handle, request: Message) -> Result<Message, SysError> {
    let mut m = request;
    decode(ipc_raw(nr::IPC_CALL, port, &mut m))?;
    Ok(m)
}

/// Replies `reply` to the current client (if any) and waits for the next
/// request on `portset`: returns its port's alias and the request.
#[inline]
pub fn reply_wait(portset: Handle, reply: Message) -> Result<(u64, Message), SysError> {
    let mut m = reply;
    let alias = decode(ipc_raw(nr::IPC_REPLY_WAIT, portset, &mut m))?;
    Ok((alias, m))
}

/// `ipc_raw` with a sixth input, r13 (flags, or a pointer), for the calls
/// that take one.
///
/// # Safety
/// If call `n` takes a pointer in r13, it points at memory the kernel may
/// read and write as that call documents, valid for the whole call.
#[inline(always)]
pub(crate) unsafe fn ipc_raw_r13(n: u64, h: u64, m: &mut Message, r13: u64) -> i64 {
    // SAFETY: forwarded; r14 is 0 and ignored (only the timed call reads it).
    unsafe { ipc_raw_r13_r14(n, h, m, r13, 0) }
}

/// `ipc_raw_r13` with a timeout in r14, which the kernel rewrites to the
/// time left when the thread is stopped mid-call (so it is in and out).
///
/// # Safety
/// As `ipc_raw_r13`.
#[inline(always)]
unsafe fn ipc_raw_r13_r14(n: u64, h: u64, m: &mut Message, r13: u64, r14: u64) -> i64 {
    let ret: i64;
    // SAFETY: the call reads and writes only the listed registers and, by
    // the caller's contract, the memory r13 points at; r14 is declared
    // clobbered (the kernel rewrites it for a stopped timed call).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as i64 => ret,
            in("rdi") h,
            inlateout("rsi") m[0],
            inlateout("rdx") m[1],
            inlateout("r10") m[2],
            inlateout("r8") m[3],
            inlateout("r9") m[4],
            inlateout("r12") m[5],
            in("r13") r13,
            inlateout("r14") r14 => _,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// A queued one-way message as a portset's state exports it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub alias: u64,
    pub message: Message,
}

/// Takes up to `into.len()` (at most 32) queued one-way messages from
/// `portset`, oldest first (needs RECEIVE and GET_STATE): a parent exports
/// a frozen child's portset this way. Returns how many.
pub fn take_queued(portset: Handle, into: &mut [Queued]) -> Result<usize, SysError> {
    // SAFETY: the kernel writes at most `into.len()` records into `into`.
    decode(unsafe { crate::syscall4(nr::PORTSET_TAKE_MESSAGES, portset.0, into.as_mut_ptr() as u64, into.len() as u64, 0) })
        .map(|n| n as usize)
}

/// Queues `messages` on `portset` in order, as if sent (needs SET_STATE);
/// returns how many fit.
pub fn put_queued(portset: Handle, messages: &[Queued]) -> Result<usize, SysError> {
    // SAFETY: the kernel only reads `messages`.
    decode(unsafe { crate::syscall4(nr::PORTSET_PUT_MESSAGES, portset.0, messages.as_ptr() as u64, messages.len() as u64, 0) })
        .map(|n| n as usize)
}

/// The descriptor r13 points at in `ipc_call_buf` / `ipc_reply_wait_buf`
/// (kernel/ABI.md).
#[repr(C)]
#[derive(Default)]
struct Descriptor {
    send_ptr: u64,
    send_len: u64,
    send_handle: u64,
    recv_ptr: u64,
    recv_capacity: u64,
    received_len: u64,
    received_handle: u64,
    reserved: u64,
}

/// What came with a message besides its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The length the sender sent; the bytes beyond the receive buffer's
    /// length were cut.
    pub len: usize,
    /// The capability it passed, now a handle in this program's table.
    pub handle: Option<Handle>,
}

/// The bytes (at most 64 KiB) and capability (a handle with the TRANSFER
/// right; the receiver's handle gets the same rights) to send, and where to
/// receive the other side's.
pub struct Payload<'a> {
    pub send: &'a [u8],
    pub handle: Option<Handle>,
    pub recv: &'a mut [u8],
}

#[inline(always)]
fn ipc_payload_raw(n: u64, h: Handle, m: &mut Message, p: &mut Payload, flags: u64) -> Result<(i64, Received), SysError> {
    let mut d = Descriptor::for_payload(p, flags);
    // SAFETY: the kernel reads `p.send` and writes at most `p.recv.len()`
    // bytes of `p.recv` (both borrowed for this call) and the two result
    // words of `d`, which lives until the call returns.
    let ret = unsafe { ipc_raw_r13(n, h.0, m, &mut d as *mut Descriptor as u64) };
    let value = decode(ret)? as i64;
    Ok((value, d.received()))
}

impl Descriptor {
    /// The descriptor of `p`. An empty slice's pointer is dangling (not a
    /// user address the kernel would accept): empty parts are sent as null.
    #[inline(always)]
    fn for_payload(p: &mut Payload, flags: u64) -> Descriptor {
        Descriptor {
            send_ptr: if p.send.is_empty() { 0 } else { p.send.as_ptr() as u64 },
            send_len: p.send.len() as u64,
            send_handle: p.handle.map_or(0, |h| h.0),
            recv_ptr: if p.recv.is_empty() { 0 } else { p.recv.as_mut_ptr() as u64 },
            recv_capacity: p.recv.len() as u64,
            reserved: flags,
            ..Descriptor::default()
        }
    }

    /// What came back with the message (the kernel's result words).
    #[inline(always)]
    fn received(&self) -> Received {
        Received { len: self.received_len as usize, handle: (self.received_handle != 0).then_some(Handle(self.received_handle)) }
    }
}

/// `call` that also sends bytes and a capability, and receives the reply's
/// (the general path, not the register-only fast path).
pub fn call_payload(port: Handle, request: Message, payload: &mut Payload) -> Result<(Message, Received), SysError> {
    let mut m = request;
    let (_, received) = ipc_payload_raw(nr::IPC_CALL_BUF, port, &mut m, payload, 0)?;
    Ok((m, received))
}

/// `call_payload` that gives up with `TimedOut` after `timeout_ns`
/// nanoseconds without a reply (`u64::MAX`: never); a reply that comes
/// later is dropped, so a server that never answers cannot hold the caller.
pub fn call_payload_timed(port: Handle, request: Message, payload: &mut Payload, timeout_ns: u64) -> Result<(Message, Received), SysError> {
    let mut m = request;
    let mut d = Descriptor::for_payload(payload, 0);
    // SAFETY: as `ipc_payload_raw`: the kernel reads `payload.send`, writes
    // at most `payload.recv.len()` bytes of `payload.recv` and the result
    // words of `d`, which lives until the call returns.
    let ret = unsafe { ipc_raw_r13_r14(nr::IPC_CALL_BUF_TIMED, port.0, &mut m, &mut d as *mut Descriptor as u64, timeout_ns) };
    decode(ret)?;
    Ok((m, d.received()))
}

/// Whether this server thread's current client still waits for its
/// reply (false: none, or it abandoned the call and will call again).
pub fn client_waiting() -> bool {
    // SAFETY: no arguments, no effects.
    crate::decode(unsafe { crate::syscall0(nr::IPC_CLIENT_WAITING) }) == Ok(1)
}

/// Copies bytes of the calling server's current request payload, from
/// `offset` on, straight from the client's memory into `buf`; returns how
/// many (0 at or past the end). A server reads a request's bytes where they
/// belong this way, or the part its receive buffer did not hold. `Dead`:
/// the client gave up on the call.
pub fn request_read(offset: u64, buf: &mut [u8]) -> Result<usize, SysError> {
    // SAFETY: the kernel writes at most `buf.len()` bytes to `buf`.
    decode(unsafe { crate::syscall4(nr::IPC_REQUEST_READ, offset, buf.as_mut_ptr() as u64, buf.len() as u64, 0) }).map(|n| n as usize)
}

/// `reply_wait` whose reply carries `payload`'s bytes and capability, and
/// whose next request's payload lands in `payload.recv`: (alias, request,
/// what came with it).
pub fn reply_wait_payload(portset: Handle, reply: Message, payload: &mut Payload) -> Result<(u64, Message, Received), SysError> {
    let mut m = reply;
    let (alias, received) = ipc_payload_raw(nr::IPC_REPLY_WAIT_BUF, portset, &mut m, payload, 0)?;
    Ok((alias as u64, m, received))
}

/// Reliable IPC: half-duplex connections (kernel/ABI.md). A thread's side 0
/// is the connection it made as a client, side 1 the one it accepted.
pub mod conn {
    use super::{ipc_payload_raw, ipc_raw, ipc_raw_r13, Message, Payload};
    use crate::object::Handle;
    use crate::{decode, nr, SysError};

    pub const CLIENT: u64 = 0;
    pub const SERVER: u64 = 1;
    const OVER: u64 = 1;

    /// What a receive brought.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Received {
        Data(Message),
        /// The other end's last message this way: the caller sends next.
        Over(Message),
        /// The other end disconnected.
        Disconnected,
    }

    fn received(code: u64, m: Message) -> Received {
        match code {
            0 => Received::Data(m),
            1 => Received::Over(m),
            _ => Received::Disconnected,
        }
    }

    /// Connects through `port` with a first message; the caller sends next.
    pub fn connect(port: Handle, first: Message) -> Result<(), SysError> {
        let mut m = first;
        decode(ipc_raw(nr::CONN_CONNECT, port, &mut m)).map(|_| ())
    }

    /// Accepts a connection on `portset`: (alias, first message); the caller receives next.
    pub fn accept(portset: Handle) -> Result<(u64, Message), SysError> {
        let mut m = [0; 6];
        let alias = decode(ipc_raw(nr::CONN_ACCEPT, portset, &mut m))?;
        Ok((alias, m))
    }

    /// Hands `m` to the other end exactly once (waits until it takes it).
    pub fn send(side: u64, m: Message) -> Result<(), SysError> {
        let mut m = m;
        // SAFETY: conn_send's r13 holds flags, not a pointer.
        decode(unsafe { ipc_raw_r13(nr::CONN_SEND, side, &mut m, 0) }).map(|_| ())
    }

    /// `send`, after which the other end sends.
    pub fn send_over(side: u64, m: Message) -> Result<(), SysError> {
        let mut m = m;
        // SAFETY: conn_send's r13 holds flags, not a pointer.
        decode(unsafe { ipc_raw_r13(nr::CONN_SEND, side, &mut m, OVER) }).map(|_| ())
    }

    pub fn receive(side: u64) -> Result<Received, SysError> {
        let mut m = [0; 6];
        let code = decode(ipc_raw(nr::CONN_RECEIVE, Handle(side), &mut m))?;
        Ok(received(code, m))
    }

    /// `send_over` then `receive`, in one call.
    pub fn send_over_receive(side: u64, m: Message) -> Result<Received, SysError> {
        let mut m = m;
        let code = decode(ipc_raw(nr::CONN_SEND_OVER_RECEIVE, Handle(side), &mut m))?;
        Ok(received(code, m))
    }

    /// `send` (`send_over` with `over`) that also carries `payload.send` and
    /// `payload.handle`; the receiver gets them with `receive_payload`
    /// (`payload.recv` is not used).
    pub fn send_payload(side: u64, m: Message, payload: &mut Payload, over: bool) -> Result<(), SysError> {
        let mut m = m;
        ipc_payload_raw(nr::CONN_SEND_BUF, Handle(side), &mut m, payload, if over { OVER } else { 0 }).map(|_| ())
    }

    /// `receive` that also takes the message's payload into `recv` (cut to
    /// its length; the second value tells the whole length and the handle).
    pub fn receive_payload(side: u64, recv: &mut [u8]) -> Result<(Received, super::Received), SysError> {
        let mut m = [0; 6];
        let mut p = Payload { send: &[], handle: None, recv };
        let (code, got) = ipc_payload_raw(nr::CONN_RECEIVE_BUF, Handle(side), &mut m, &mut p, 0)?;
        Ok((received(code as u64, m), got))
    }

    pub fn disconnect(side: u64) -> Result<(), SysError> {
        // SAFETY: no memory arguments.
        decode(unsafe { crate::syscall1(nr::CONN_DISCONNECT, side) }).map(|_| ())
    }

    /// A stopped thread's connection on `side`: a Reference handle to the
    /// thread at the other end (if any) and the flags (1 linked, 2 this end
    /// sends, 4 closed).
    pub fn get_link(thread: Handle, side: u64) -> Result<(Option<Handle>, u64), SysError> {
        let mut out = [0u64; 2];
        // SAFETY: the kernel writes 16 bytes into `out`.
        decode(unsafe { crate::syscall4(nr::THREAD_GET_CONNECTION, thread.0, side, out.as_mut_ptr() as u64, 0) })?;
        Ok(((out[0] != 0).then_some(Handle(out[0])), out[1]))
    }

    /// Links a stopped thread's `side` to the thread `peer` names (a thread
    /// handle or a Reference to one; None clears it); `sending`: this end sends.
    pub fn set_link(thread: Handle, side: u64, peer: Option<Handle>, sending: bool) -> Result<(), SysError> {
        // SAFETY: no memory arguments.
        decode(unsafe { crate::syscall4(nr::THREAD_SET_CONNECTION, thread.0, side, peer.map_or(0, |p| p.0), (sending as u64) << 1) })
            .map(|_| ())
    }
}
