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

mod connection;
mod handle;
mod ipc;
mod memory;
mod space;
mod sync;
mod system;
mod thread;

use connection::*;
use handle::*;
pub use ipc::finish_parked_ipc;
use ipc::*;
pub(crate) use ipc::{message_of, set_message};
use memory::*;
use space::*;
use sync::*;
pub(crate) use system::tlb_flushes;
use system::*;
use thread::*;

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
            V::RightsExceedRegion | V::NotWritable => SysError::MissingRights,
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

/// Why a call returns no value: an error for its caller, or a restart.
/// Blocking calls that a stop request interrupts restart (Fluke's atomic
/// API): the entry path rewinds the thread so that it is exported as about
/// to make the call again (`RESTART`), or, for a combined call whose first
/// part took effect, the call that remains, which the handler put in rax
/// (`RESTART_AS`). With one type for all three, every handler uses `?`.
/// It holds the code rax gets (an error's, or the entry path's internal
/// restart codes), so turning a result into rax costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fail(i64);

impl Fail {
    pub const RESTART: Fail = Fail(RESTART);
    pub const RESTART_AS: Fail = Fail(RESTART_AS_SET);
}

impl<E: Into<SysError>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.into() as i64)
    }
}

/// How an interrupted blocking call ends: a restart if the thread is being
/// stopped, `Dead` if it is being killed.
fn interrupted() -> Fail {
    if sched::me().stop_requested() && !sched::me().kill_requested() {
        Fail::RESTART
    } else {
        SysError::Dead.into()
    }
}

/// Console writes from user code, for tests.
pub static CONSOLE_WRITES: AtomicU64 = AtomicU64::new(0);

type SysResult = Result<i64, Fail>;

// Inlined into its one caller, the entry path: a null call costs what it did
// before the handlers moved to modules of their own.
#[inline(always)]
pub fn dispatch(frame: &mut SyscallFrame) -> i64 {
    let (a0, a1, a2, a3) = (frame.rdi, frame.rsi, frame.rdx, frame.r10);
    let result = match frame.rax {
        // In number order (matryoshka_abi::call).
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
        call::MUTEX_WAIT => waitqueue_wait(false, a0, a1, a2),
        call::MUTEX_WAKE => waitqueue_wake(false, a0, a1),
        call::COND_CREATE => waitqueue_create(true),
        call::COND_WAIT => waitqueue_wait(true, a0, a1, a2),
        call::COND_WAKE => waitqueue_wake(true, a0, a1),
        call::PORTSET_CREATE => portset_create(),
        call::PORT_CREATE => port_create(a0, a1),
        call::IPC_CALL => ipc_call(frame),
        call::IPC_REPLY_WAIT => ipc_reply_wait(frame),
        call::THREAD_SET_AFFINITY => thread_set_affinity(a0, a1),
        call::READ_TSC => Ok((crate::arch::cpu::read_tsc() & (i64::MAX as u64)) as i64),
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
        call::HANDLE_TRANSFER_AT => handle_transfer_at(a0, a1, a2, a3),
        call::MEMORY_OBJECT_STATE => memory_object_state(a0, a1, a2),
        call::IPC_SEND => ipc_send(frame),
        call::IPC_RECEIVE => ipc_receive(frame),
        call::OBJECT_GET_STATE => object_get_state(a0, a1, a2),
        call::REFERENCE_CREATE => reference_create(a0),
        call::REFERENCE_COMPARE => reference_compare(a0, a1),
        call::THREAD_SET_SCHEDULER => thread_set_scheduler(a0, a1),
        call::THREAD_SET_PRIORITY => thread_set_priority(a0, a1),
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
        call::BOOT_ARGS => boot_args(a0, a1),
        call::HANG_REPORT => hang_report(),
        call::SPACE_SET_QUOTA => space_set_quota(a0, a1),
        call::FAULT_INJECT => fault_inject(a0, a1, a2),
        call::TIME_NOW => time_now(),
        call::SLEEP_UNTIL => sleep_until(a0),
        call::IPC_CALL_BUF_TIMED => ipc_call_buf_timed(frame),
        call::CONSOLE_READ => console_read(a0, a1),
        call::REGION_DISCARD => region_discard(a0, a1, a2),
        call::IPC_CLIENT_WAITING => ipc_client_waiting(),
        call::IPC_REQUEST_READ => ipc_request_read(a0, a1, a2),
        call::CONSOLE_PUT => console_put(a0, a1),
        _ => Err(SysError::NoSuchCall.into()),
    };
    outcome(result)
}

/// What rax gets for a call's result (the restarts as the entry path's
/// internal codes).
fn outcome(result: SysResult) -> i64 {
    match result {
        Ok(v) => v,
        Err(Fail(code)) => code,
    }
}

/// The caller's space. User threads always have one while they run.
fn caller() -> Result<alloc::sync::Arc<Space>, SysError> {
    sched::me().space().ok_or(SysError::Dead)
}

/// The port behind `h` (SEND right), or none for handle 0.
fn optional_port(me: &Space, h: u64) -> Result<Option<alloc::sync::Arc<crate::ipc::Port>>, SysError> {
    if h == 0 {
        return Ok(None);
    }
    Ok(Some(me.lookup_port(Handle::from_raw(h), Rights::SEND)?))
}
