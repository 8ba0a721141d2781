//! Reliable half-duplex connections: connect, accept, send, receive,
//! send-over-receive, disconnect, and a thread's link as exported state.

use super::*;

/// A reliable-IPC outcome as the caller sees it.
pub(super) fn conn_result<T>(result: Result<T, crate::reliable::ConnError>) -> Result<T, Fail> {
    use crate::reliable::ConnError;
    result.map_err(|e| match e {
        ConnError::WrongState => SysError::InvalidArgument.into(),
        ConnError::Gone => SysError::Dead.into(),
        ConnError::Interrupted => interrupted(),
    })
}

pub(super) fn connection_side(side: u64) -> Result<usize, SysError> {
    match side {
        0 => Ok(crate::reliable::CLIENT_SIDE),
        1 => Ok(crate::reliable::SERVER_SIDE),
        _ => Err(SysError::InvalidArgument),
    }
}

/// `conn_connect(port)` with the first message in the message registers:
/// waits for a server accepting on the port's portset; the caller's client
/// side (0) is then connected and the caller sends.
pub(super) fn conn_connect(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let port = me.lookup_port(Handle::from_raw(frame.rdi), Rights::SEND)?;
    drop(me);
    conn_result(crate::reliable::connect(&port, message_of(frame)))?;
    Ok(0)
}

/// `conn_accept(portset)`: waits for a connecting client; returns the port's
/// alias with the first message in the message registers. The caller's
/// server side (1) is then connected and the caller receives.
pub(super) fn conn_accept(frame: &mut SyscallFrame) -> SysResult {
    let me = caller()?;
    let ps = me.lookup_portset(Handle::from_raw(frame.rdi), Rights::RECEIVE)?;
    drop(me);
    let (alias, first) = conn_result(crate::reliable::accept(&ps))?;
    set_message(frame, first);
    Ok((alias & fastpath::ipc::ALIAS_RESULT_MASK) as i64)
}

/// `conn_send(side, flags in r13)`: hands the message registers to the
/// receiver exactly once (waiting until it takes them); flag 1 (OVER)
/// makes the receiver the sender after this message.
pub(super) fn conn_send(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    if frame.r13 & !crate::reliable::OVER != 0 {
        return Err(SysError::InvalidArgument.into());
    }
    conn_result(crate::reliable::send(side, message_of(frame), frame.r13, None))?;
    Ok(0)
}

/// The result code of a receive: 0 data, 1 data and the turn to send,
/// 2 the other end disconnected.
pub(super) fn received_code(r: crate::reliable::Received) -> i64 {
    match r {
        crate::reliable::Received::Data => 0,
        crate::reliable::Received::Over => 1,
        crate::reliable::Received::Disconnected => 2,
    }
}

/// `conn_receive(side)`: the next message in the message registers.
pub(super) fn conn_receive(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    received_into(frame, crate::reliable::receive(side))
}

/// The end of a plain receive: the message in the message registers, the
/// result code; a payload that came along is dropped.
pub(super) fn received_into(
    frame: &mut SyscallFrame,
    received: Result<(crate::reliable::Received, [u64; 6], crate::ipc::Carried), crate::reliable::ConnError>,
) -> SysResult {
    let (what, message, _) = conn_result(received)?;
    set_message(frame, message);
    Ok(received_code(what))
}

/// `conn_send_over_receive(side)`: sends the message with OVER, then
/// receives the first message of the other direction. Stopped after the send
/// took effect, the call is exported as the plain `conn_receive` that
/// remains (Fluke's atomic API).
pub(super) fn conn_send_over_receive(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    conn_result(crate::reliable::send(side, message_of(frame), crate::reliable::OVER, None))?;
    match crate::reliable::receive(side) {
        // Restarts as the receive alone (or fails, if killed).
        Err(crate::reliable::ConnError::Interrupted) => match interrupted() {
            Fail::RESTART => {
                frame.rax = call::CONN_RECEIVE;
                Err(Fail::RESTART_AS)
            }
            other => Err(other),
        },
        other => received_into(frame, other),
    }
}

/// `conn_send_buf(side)` with r13 → a payload descriptor whose reserved
/// word holds the flags (1 = OVER): `conn_send` that also carries the
/// descriptor's bytes and capability, received whole by `conn_receive_buf`.
pub(super) fn conn_send_buf(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    let d = BufferDescriptor::read_with_flags(frame.r13, crate::reliable::OVER)?;
    let me = caller()?;
    let payload = d.stage(&me)?;
    conn_result(crate::reliable::send(side, message_of(frame), d.flags, payload))?;
    Ok(0)
}

/// `conn_receive_buf(side)` with r13 → a payload descriptor (its send part
/// empty): `conn_receive` that also delivers the message's payload into the
/// descriptor's receive part.
pub(super) fn conn_receive_buf(frame: &mut SyscallFrame) -> SysResult {
    let side = connection_side(frame.rdi)?;
    let d = BufferDescriptor::read(frame.r13)?;
    if d.send_len != 0 || d.send_handle != 0 {
        return Err(SysError::InvalidArgument.into());
    }
    let me = caller()?;
    let (what, message, payload) = conn_result(crate::reliable::receive(side))?;
    set_message(frame, message);
    d.deliver(&me, payload, None)?;
    Ok(received_code(what))
}

pub(super) fn conn_disconnect(side: u64) -> SysResult {
    let side = connection_side(side)?;
    conn_result(crate::reliable::disconnect(side))?;
    Ok(0)
}

/// `thread_get_connection(thread, side, buf)` (GET_STATE, thread stopped):
/// writes {u64 a Reference handle to the thread at the other end, or 0;
/// u64 flags: 1 linked, 2 this end sends, 4 closed} and returns 16.
pub(super) fn thread_get_connection(h: u64, side: u64, buf: u64) -> SysResult {
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
pub(super) fn thread_set_connection(h: u64, side: u64, peer: u64, flags: u64) -> SysResult {
    let side = connection_side(side)?;
    if flags & !2 != 0 {
        return Err(SysError::InvalidArgument.into());
    }
    let t = stopped_thread(h, Rights::SET_STATE)?;
    let me = caller()?;
    let peer = match peer {
        0 => None,
        p => match me.lookup(Handle::from_raw(p), Rights::NONE)? {
            Object::Thread(t) => Some(t),
            Object::Reference(r) => match &*r {
                Object::Thread(t) => Some(t.clone()),
                _ => return Err(SysError::WrongType.into()),
            },
            _ => return Err(SysError::WrongType.into()),
        },
    };
    crate::reliable::set_link(&t, side, peer.as_ref(), flags & 2 != 0).map_err(|_| SysError::InvalidArgument)?;
    Ok(0)
}
