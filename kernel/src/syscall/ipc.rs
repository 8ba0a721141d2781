//! IPC calls: ports and portsets, call / reply-and-wait (registers and
//! payloads), one-way send and receive, and a portset's queued messages.

use super::*;

/// `portset_create()`: a new portset; the handle has every right.
pub(super) fn portset_create() -> SysResult {
    let me = caller()?;
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    let ps = alloc::sync::Arc::new(crate::ipc::Portset::new());
    Ok(me.insert(Object::Portset(ps), Rights::ALL)?.raw() as i64)
}

/// `port_create(portset, alias)`: a new port delivering to `portset`
/// (RECEIVE right); servers see `alias` with each request through it.
pub(super) fn port_create(portset: u64, alias: u64) -> SysResult {
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
pub(super) fn ipc_call(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    drop(me);
    // A plain call: a payload sent with the reply is not received.
    let reply = crate::ipc::call(&port, message_of(frame), None, crate::ipc::CallBuffers::default()).map(|(reply, _, _)| reply);
    reply_received(frame, reply)
}

/// The end of `ipc_call`: the reply in the message registers.
pub(super) fn reply_received(frame: &mut SyscallFrame, reply: Result<[u64; 6], crate::ipc::IpcError>) -> SysResult {
    let reply = call_result(reply)?;
    set_message(frame, reply);
    Ok(0)
}

/// A blocking IPC's outcome as the caller sees it: an interrupted call
/// restarts (or fails, if killed); a server that exited without replying
/// fails the call with Dead.
pub(super) fn call_result<T>(result: Result<T, crate::ipc::IpcError>) -> Result<T, Fail> {
    result.map_err(|e| match e {
        crate::ipc::IpcError::ServerGone => SysError::Dead.into(),
        crate::ipc::IpcError::Interrupted => interrupted(),
        crate::ipc::IpcError::TimedOut => SysError::TimedOut.into(),
    })
}

/// `ipc_reply_wait(portset)` with the reply to the current client (if any)
/// in the message registers (RECEIVE right): returns the alias of the port
/// the next request came through, with the request in the message registers.
pub(super) fn ipc_reply_wait(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    drop(me);
    let request = crate::ipc::reply_wait(&ps, message_of(frame), None, None).map(|(alias, request, _)| (alias, request));
    request_received(frame, request)
}

/// What r13 points at in `ipc_call_buf` and `ipc_reply_wait_buf`: eight
/// u64 words {send ptr, send len, send handle, receive ptr, receive
/// capacity, out: received len, out: received handle, 0}.
pub(super) struct BufferDescriptor {
    pub(super) at: u64,
    /// The reserved word, where a call gives it a meaning (conn_send_buf).
    pub(super) flags: u64,
    pub(super) send_ptr: u64,
    pub(super) send_len: u64,
    pub(super) send_handle: u64,
    pub(super) recv_ptr: u64,
    pub(super) recv_capacity: u64,
}

/// Longest byte payload of one message.
pub const IPC_BUFFER_MAX: u64 = matryoshka_abi::PAYLOAD_MAX;

impl BufferDescriptor {
    pub(super) fn read(at: u64) -> Result<BufferDescriptor, SysError> {
        Self::read_with_flags(at, 0)
    }

    /// `read`, where the reserved word may hold the flags in `allowed`.
    pub(super) fn read_with_flags(at: u64, allowed: u64) -> Result<BufferDescriptor, SysError> {
        let mut raw = [0u8; 64];
        copy_from_user(&mut raw, at).map_err(|()| SysError::BadPointer)?;
        let w = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if w(7) & !allowed != 0 {
            return Err(SysError::InvalidArgument);
        }
        let d =
            BufferDescriptor { at, flags: w(7), send_ptr: w(0), send_len: w(1), send_handle: w(2), recv_ptr: w(3), recv_capacity: w(4) };
        if d.send_len > IPC_BUFFER_MAX || d.recv_capacity > IPC_BUFFER_MAX {
            return Err(SysError::BadSize);
        }
        if d.recv_ptr.checked_add(d.recv_capacity).is_none_or(|end| end > crate::arch::paging::USER_TOP) {
            return Err(SysError::BadPointer);
        }
        Ok(d)
    }

    /// Copies the bytes and looks up the handle to send (it needs TRANSFER;
    /// the receiver's handle gets the same rights): a connection message's
    /// payload, which waits in the kernel until it is received.
    pub(super) fn stage(&self, me: &Space) -> Result<crate::ipc::Carried, SysError> {
        self.stage_parts(me, true)
    }

    /// Looks up the handle to send, staging no bytes: a call's or a reply's
    /// bytes go straight from the sender's memory to the receiver's (the
    /// send range is checked now, so a bad one fails the caller at once and
    /// nothing is sent).
    fn stage_handle(&self, me: &Space) -> Result<crate::ipc::Carried, SysError> {
        crate::arch::x86_64::syscall::check_user_readable(self.send_ptr, self.send_len).map_err(|()| SysError::BadPointer)?;
        self.stage_parts(me, false)
    }

    fn stage_parts(&self, me: &Space, bytes_too: bool) -> Result<crate::ipc::Carried, SysError> {
        let staged_len = if bytes_too { self.send_len } else { 0 };
        if staged_len == 0 && self.send_handle == 0 {
            return Ok(None);
        }
        let charge = crate::object::quota::Charge::new(&me.quota, staged_len + core::mem::size_of::<crate::ipc::Payload>() as u64)
            .map_err(|_| SysError::NoMemory)?;
        // The Box's allocation (Box::try_new is not stable).
        crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
        let mut bytes = alloc::vec::Vec::new();
        crate::mm::heap::fallible(|| bytes.try_reserve_exact(staged_len as usize)).map_err(|_| SysError::NoMemory)?;
        crate::arch::x86_64::syscall::copy_from_user_append(&mut bytes, staged_len as usize, self.send_ptr)
            .map_err(|()| SysError::BadPointer)?;
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

    /// Where a call's payloads are, for the server that copies them.
    fn call_buffers(&self) -> crate::ipc::CallBuffers {
        crate::ipc::CallBuffers {
            send_ptr: self.send_ptr,
            send_len: self.send_len,
            recv_ptr: self.recv_ptr,
            recv_capacity: self.recv_capacity,
        }
    }

    /// Delivers a received payload: staged bytes are copied out (at most the
    /// receive capacity); bytes a server already moved (`moved`: their whole
    /// length, and whether they reached the buffer) only need the words.
    /// The received-length word tells the whole length; the handle is
    /// installed.
    pub(super) fn deliver(&self, me: &Space, payload: crate::ipc::Carried, moved: crate::ipc::Pushed) -> Result<(), SysError> {
        let moved_len = match moved {
            Some((_, false)) => return Err(SysError::BadPointer),
            Some((len, true)) => len,
            None => 0,
        };
        let (len, handle) = match payload {
            None => (moved_len, 0),
            Some(p) => {
                let n = p.bytes.len().min(self.recv_capacity as usize);
                copy_to_user(self.recv_ptr, &p.bytes[..n]).map_err(|()| SysError::BadPointer)?;
                // A full table drops the object: the handle word reads 0.
                let handle = p.object.and_then(|(object, rights)| me.insert(object, rights).ok()).map_or(0, Handle::raw);
                (p.bytes.len() as u64 + moved_len, handle)
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
pub(super) fn ipc_call_buf(frame: &mut SyscallFrame) -> SysResult {
    let d = BufferDescriptor::read(frame.r13)?;
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    let payload = d.stage_handle(&me)?;
    let (reply, reply_payload, moved) = call_result(crate::ipc::call(&port, message_of(frame), payload, d.call_buffers()))?;
    set_message(frame, reply);
    d.deliver(&me, reply_payload, moved)?;
    Ok(0)
}

/// `ipc_call_buf_timed(port)`: `ipc_call_buf` that gives up with `TimedOut`
/// after r14 nanoseconds (u64::MAX: never) without a reply; a reply that
/// comes later is dropped. Stopped meanwhile, it is exported with r14 = the
/// time left, so it restarts with the rest of its time (Fluke's atomic API).
pub(super) fn ipc_call_buf_timed(frame: &mut SyscallFrame) -> SysResult {
    let timeout_ns = frame.r14;
    let d = BufferDescriptor::read(frame.r13)?;
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    let payload = d.stage_handle(&me)?;
    let deadline = match timeout_ns {
        u64::MAX => 0,
        ns => crate::arch::time::read_tsc_now().saturating_add(crate::arch::time::ns_to_tsc(ns)).max(1),
    };
    sched::set_deadline(deadline);
    let result = crate::ipc::call(&port, message_of(frame), payload, d.call_buffers());
    sched::clear_deadline();
    if deadline != 0 && matches!(result, Err(crate::ipc::IpcError::Interrupted)) {
        frame.r14 = crate::arch::time::tsc_to_ns(deadline.saturating_sub(crate::arch::time::read_tsc_now()));
    }
    let (reply, reply_payload, moved) = call_result(result)?;
    set_message(frame, reply);
    d.deliver(&me, reply_payload, moved)?;
    Ok(0)
}

/// `ipc_reply_wait` with a payload: the reply carries the descriptor's send
/// part, the next request's payload lands in its receive part. The server
/// moves both: its reply's bytes into the client's receive buffer before
/// the client wakes, the request's bytes (as many as fit) out of the next
/// client's memory once it has it; the rest of a longer request it reads
/// with `ipc_request_read`.
pub(super) fn ipc_reply_wait_buf(frame: &mut SyscallFrame) -> SysResult {
    let d = BufferDescriptor::read(frame.r13)?;
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    // Our own reply bytes are not checked first: the push fails on them
    // with LocalFault before anything reached the client.
    let mut payload = d.stage_parts(&me, false)?;
    let mut pushed = match crate::ipc::push_reply(d.send_ptr, d.send_len) {
        Ok(p) => p,
        Err(_) => return Err(SysError::BadPointer.into()),
    };
    let mut reply = message_of(frame);
    loop {
        let Ok((alias, request, request_payload)) = crate::ipc::reply_wait(&ps, reply, payload.take(), pushed.take()) else {
            return Err(interrupted());
        };
        match crate::ipc::read_request(0, d.recv_ptr, d.recv_capacity) {
            Ok((len, _)) => {
                set_message(frame, request);
                d.deliver(&me, request_payload, Some((len, true)))?;
                return Ok((alias & fastpath::ipc::ALIAS_RESULT_MASK) as i64);
            }
            // The client gave up on the call meanwhile: its reply would be
            // dropped, so take the next request.
            Err(crate::ipc::PartnerCopy::Abandoned | crate::ipc::PartnerCopy::NoClient) => reply = [0; 6],
            // The client's bytes went away after its call checked them: its
            // call fails with BadPointer (no reply bytes reached it).
            Err(crate::ipc::PartnerCopy::RemoteFault) => {
                reply = [0; 6];
                pushed = Some((0, false));
            }
            // Our own receive buffer: as before, the request stays ours
            // (the next reply answers it).
            Err(crate::ipc::PartnerCopy::LocalFault) => return Err(SysError::BadPointer.into()),
        }
    }
}

/// `ipc_request_read(offset, buf, len)`: copies up to `len` bytes of the
/// calling server's current request payload, from `offset` on, straight from
/// the client's memory to `buf`; returns how many (0 at or past the end).
/// A server reads a request's bytes where they belong this way (a file
/// server, into the file) instead of through its receive buffer.
pub(super) fn ipc_request_read(offset: u64, buf: u64, len: u64) -> SysResult {
    if len > IPC_BUFFER_MAX {
        return Err(SysError::BadSize.into());
    }
    caller()?;
    match crate::ipc::read_request(offset, buf, len) {
        Ok((_, n)) => Ok(n as i64),
        Err(crate::ipc::PartnerCopy::NoClient) => Err(SysError::InvalidArgument.into()),
        Err(crate::ipc::PartnerCopy::Abandoned) => Err(SysError::Dead.into()),
        Err(crate::ipc::PartnerCopy::LocalFault | crate::ipc::PartnerCopy::RemoteFault) => Err(SysError::BadPointer.into()),
    }
}

/// The end of `ipc_reply_wait`: the request in the message registers, the
/// alias as the result.
pub(super) fn request_received(frame: &mut SyscallFrame, request: Result<(u64, [u64; 6]), crate::ipc::IpcError>) -> SysResult {
    let Ok((alias, request)) = request else { return Err(interrupted()) };
    set_message(frame, request);
    Ok((alias & fastpath::ipc::ALIAS_RESULT_MASK) as i64)
}

/// Finishes the `ipc_call` or `ipc_reply_wait` of a thread the fast path
/// parked and the general path woke: its result, as `dispatch` returns it.
pub fn finish_parked_ipc(frame: &mut SyscallFrame) -> i64 {
    let result = match sched::me().parked_as() {
        sched::ParkedAs::Client => reply_received(frame, crate::ipc::await_reply()),
        sched::ParkedAs::Server => request_received(frame, crate::ipc::await_request()),
    };
    outcome(result)
}

/// `ipc_send(port)` with the message in the six message registers (SEND
/// right): one-way, at most once, never blocks; `WouldBlock` if the
/// portset's queue is full (nothing was sent).
pub(super) fn ipc_send(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    if crate::ipc::send(&port, message_of(frame)) {
        Ok(0)
    } else {
        Err(SysError::WouldBlock.into())
    }
}

/// Bytes of one exported one-way message: {u64 alias, six u64 words}.
pub(super) const QUEUED_MESSAGE_BYTES: usize = 56;

/// `portset_take_messages(portset, buf, max)` (RECEIVE and GET_STATE):
/// takes up to `max` queued one-way messages, oldest first, and writes
/// them as {alias, six words} records; returns how many. A parent exports
/// a frozen child's portset this way (the queue is kernel-held state).
pub(super) fn portset_take_messages(h: u64, buf: u64, max: u64) -> SysResult {
    if max > crate::ipc::ONEWAY_CAPACITY as u64 {
        return Err(SysError::BadSize.into());
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
pub(super) fn portset_put_messages(h: u64, buf: u64, n: u64) -> SysResult {
    if n > crate::ipc::ONEWAY_CAPACITY as u64 {
        return Err(SysError::BadSize.into());
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
pub(super) fn ipc_receive(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    drop(me);
    let Ok((alias, message)) = crate::ipc::receive(&ps) else { return Err(interrupted()) };
    set_message(frame, message);
    Ok((alias & (i64::MAX as u64)) as i64)
}

/// `ipc_client_waiting()`: 1 if the caller (a server) has a current client
/// whose call still waits for its reply, 0 if it has none or that client
/// abandoned the call (stopped, killed or timed out since the request was
/// taken; a stopped client makes the call again, so this copy is stale).
pub(super) fn ipc_client_waiting() -> SysResult {
    caller()?;
    Ok(crate::ipc::client_waiting() as i64)
}
