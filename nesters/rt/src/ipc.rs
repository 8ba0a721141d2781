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
