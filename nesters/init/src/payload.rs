//! The `ipc payloads` check: calls and replies that carry bytes (up to
//! 64 KiB, cut to the receiver's buffer) and capabilities in both
//! directions, the documented errors, and plain calls to a payload server.

extern crate alloc;

use alloc::vec;
use core::sync::atomic::Ordering;

use matryoshka_rt::ipc::{self, Payload};
use matryoshka_rt::object::{self as obj, rights, types, Handle};
use matryoshka_rt::{self as rt, SysError};

const OP_EXIT: u64 = 0;
/// Reply with the request's bytes reversed.
const OP_REVERSE: u64 = 1;
/// Reply with the type of the handle that came with the request (then close it).
const OP_HANDLE_TYPE: u64 = 2;
/// Reply with a handle to a new portset.
const OP_NEW_PORTSET: u64 = 3;
/// Reply with `request[1]` bytes of 0x5a.
const OP_BYTES: u64 = 4;

extern "C" fn payload_server(_: u64) -> ! {
    let ps = Handle(super::PORTSET.load(Ordering::Relaxed));
    let mut recv = vec![0u8; 64 * 1024];
    let mut send = vec![0u8; 64 * 1024];
    let (mut reply, mut send_len, mut send_handle) = ([0u64; 6], 0usize, None);
    loop {
        let mut p = Payload { send: &send[..send_len], handle: send_handle, recv: &mut recv };
        let Ok((_, request, got)) = ipc::reply_wait_payload(ps, reply, &mut p) else { rt::exit(1) };
        if let Some(h) = send_handle.take() {
            let _ = obj::close(h);
        }
        (reply, send_len) = ([0; 6], 0);
        match request[0] {
            OP_EXIT => rt::exit(0),
            OP_REVERSE => {
                let n = got.len.min(recv.len());
                for (i, b) in recv[..n].iter().rev().enumerate() {
                    send[i] = *b;
                }
                (send_len, reply[0]) = (n, got.len as u64);
            }
            OP_HANDLE_TYPE => {
                reply[0] = got.handle.and_then(|h| obj::info(h).ok()).map_or(0, |(t, r)| t as u64 | (r as u64) << 8);
                if let Some(h) = got.handle {
                    let _ = obj::close(h);
                }
            }
            OP_NEW_PORTSET => send_handle = ipc::portset_create().ok(),
            OP_BYTES => {
                send_len = (request[1] as usize).min(send.len());
                send[..send_len].fill(0x5a);
            }
            _ => reply[0] = u64::MAX,
        }
    }
}

pub fn check() -> Result<(), &'static str> {
    let me = obj::self_space();
    let ps = ipc::portset_create().map_err(|_| "portset_create")?;
    let port = ipc::port_create(ps, 7).map_err(|_| "port_create")?;
    super::PORTSET.store(ps.0, Ordering::Relaxed);
    let server = obj::thread_create(me, payload_server, super::stack_top(0), 0).map_err(|_| "thread_create")?;
    let result = exercise(port);
    // The server exits on this request without replying: the call fails
    // (it does not wait forever).
    let last = ipc::call(port, [OP_EXIT, 0, 0, 0, 0, 0]);
    let exited = obj::thread_wait(server, true);
    for h in [server, port, ps] {
        let _ = obj::close(h);
    }
    result?;
    if exited != Ok(0) {
        return Err("the payload server failed");
    }
    if last != Err(SysError::Dead) {
        return Err("a call whose server exited without replying did not fail with Dead");
    }
    Ok(())
}

fn exercise(port: Handle) -> Result<(), &'static str> {
    // Bytes both ways, up to the maximum.
    for len in [1usize, 1000, 4096 + 3, 64 * 1024] {
        let send: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let mut recv = vec![0u8; len];
        let mut p = Payload { send: &send, handle: None, recv: &mut recv };
        let (reply, got) = ipc::call_payload(port, [OP_REVERSE, 0, 0, 0, 0, 0], &mut p).map_err(|_| "call_payload")?;
        if reply[0] != len as u64 || got.len != len || got.handle.is_some() || recv.iter().rev().ne(send.iter()) {
            return Err("a payload did not arrive intact (reversed by the server)");
        }
    }
    // A reply longer than the receive buffer is cut; its length is told.
    let mut small = [0u8; 10];
    let mut p = Payload { send: &[], handle: None, recv: &mut small };
    let (_, got) = ipc::call_payload(port, [OP_BYTES, 1000, 0, 0, 0, 0], &mut p).map_err(|_| "call_payload (cut)")?;
    if got.len != 1000 || small != [0x5a; 10] {
        return Err("a reply longer than the receive buffer was not cut to it with its length told");
    }
    // A capability to the server: it sees a Mutex handle with the rights sent.
    // SAFETY: creates a kernel object; no memory arguments.
    let queue = Handle(rt::decode(unsafe { rt::syscall0(rt::nr::MUTEX_CREATE) }).map_err(|_| "mutex_create")?);
    let sendable = obj::duplicate(queue, rights::TRANSFER | rights::GET_STATE).map_err(|_| "duplicate")?;
    let mut p = Payload { send: b"cap", handle: Some(sendable), recv: &mut [] };
    let (reply, _) = ipc::call_payload(port, [OP_HANDLE_TYPE, 0, 0, 0, 0, 0], &mut p).map_err(|_| "call_payload (handle)")?;
    if reply[0] != types::MUTEX as u64 | ((rights::TRANSFER | rights::GET_STATE) as u64) << 8 {
        return Err("the server did not receive the Mutex handle with the rights sent");
    }
    let _ = obj::close(sendable);
    // A capability from the server: a portset this program may use.
    let mut p = Payload { send: &[], handle: None, recv: &mut [] };
    let (_, got) = ipc::call_payload(port, [OP_NEW_PORTSET, 0, 0, 0, 0, 0], &mut p).map_err(|_| "call_payload (reply handle)")?;
    let theirs = got.handle.ok_or("the reply's portset handle did not arrive")?;
    if obj::info(theirs).map(|(t, _)| t) != Ok(types::PORTSET) || ipc::port_create(theirs, 1).map(obj::close).is_err() {
        return Err("the portset handle from the server is not a usable portset");
    }
    let _ = obj::close(theirs);
    // Errors, each before anything was sent.
    let no_transfer = obj::duplicate(queue, rights::GET_STATE).map_err(|_| "duplicate")?;
    let mut p = Payload { send: &[], handle: Some(no_transfer), recv: &mut [] };
    if ipc::call_payload(port, [OP_HANDLE_TYPE, 0, 0, 0, 0, 0], &mut p) != Err(SysError::MissingRights) {
        return Err("a handle without TRANSFER was sent");
    }
    let _ = obj::close(no_transfer);
    let _ = obj::close(queue);
    let mut p = Payload { send: &[], handle: Some(Handle(0x7777_0000_0042)), recv: &mut [] };
    if ipc::call_payload(port, [OP_HANDLE_TYPE, 0, 0, 0, 0, 0], &mut p) != Err(SysError::BadHandle) {
        return Err("a forged handle was sent");
    }
    let too_big = vec![0u8; 64 * 1024 + 1];
    let mut p = Payload { send: &too_big, handle: None, recv: &mut [] };
    if ipc::call_payload(port, [OP_REVERSE, 0, 0, 0, 0, 0], &mut p) != Err(SysError::BadSize) {
        return Err("a payload over 64 KiB was sent");
    }
    // SAFETY: a slice over kernel memory is never read here: the kernel must refuse it.
    let kernel_bytes = unsafe { core::slice::from_raw_parts(super::KERNEL_ADDRESS as *const u8, 16) };
    let mut p = Payload { send: kernel_bytes, handle: None, recv: &mut [] };
    if ipc::call_payload(port, [OP_REVERSE, 0, 0, 0, 0, 0], &mut p) != Err(SysError::BadPointer) {
        return Err("a payload from kernel memory was sent");
    }
    // A plain call to a payload server: registers only, the payload dropped.
    if ipc::call(port, [OP_BYTES, 100, 0, 0, 0, 0]).map(|r| r[0]) != Ok(0) {
        return Err("a plain call to a payload server failed");
    }
    Ok(())
}
