//! The system-call ABI of Matryoshka, shared by the kernel, the user
//! runtime (`matryoshka-rt`) and every program: call numbers, error codes,
//! handle rights, object types, memory rights, keeper message kinds and the
//! sizes of the records calls exchange. `kernel/ABI.md` documents each;
//! a host test checks that document's tables against this crate, so the
//! numbers live in one place.

#![no_std]

#[cfg(test)]
extern crate std;

pub mod image;

/// System call numbers (rax at `syscall`).
pub mod call {
    pub const NULL: u64 = 0;
    pub const CONSOLE_WRITE: u64 = 1;
    pub const EXIT: u64 = 2;
    pub const YIELD: u64 = 3;
    pub const SYSTEM_INFO: u64 = 4;
    pub const HANDLE_CLOSE: u64 = 16;
    pub const HANDLE_DUPLICATE: u64 = 17;
    pub const HANDLE_INFO: u64 = 18;
    pub const SPACE_CREATE: u64 = 19;
    pub const SPACE_DESTROY: u64 = 20;
    pub const SPACE_ENUMERATE: u64 = 21;
    pub const THREAD_CREATE: u64 = 22;
    pub const THREAD_KILL: u64 = 23;
    pub const THREAD_WAIT: u64 = 24;
    pub const MUTEX_CREATE: u64 = 25;
    pub const MUTEX_WAIT: u64 = 26;
    pub const MUTEX_WAKE: u64 = 27;
    pub const COND_CREATE: u64 = 28;
    pub const COND_WAIT: u64 = 29;
    pub const COND_WAKE: u64 = 30;
    pub const PORTSET_CREATE: u64 = 31;
    pub const PORT_CREATE: u64 = 32;
    pub const IPC_CALL: u64 = 33;
    pub const IPC_REPLY_WAIT: u64 = 34;
    pub const THREAD_SET_AFFINITY: u64 = 35;
    pub const READ_TSC: u64 = 36;
    pub const REGION_CREATE: u64 = 37;
    pub const MAPPING_CREATE: u64 = 38;
    pub const REGION_PROTECT: u64 = 39;
    pub const REGION_DESTROY: u64 = 40;
    pub const MAPPING_DESTROY: u64 = 41;
    pub const SPACE_SET_KEEPER: u64 = 42;
    pub const REGION_SET_KEEPER: u64 = 43;
    pub const THREAD_STOP: u64 = 44;
    pub const THREAD_RESUME: u64 = 45;
    pub const THREAD_GET_STATE: u64 = 46;
    pub const THREAD_SET_STATE: u64 = 47;
    pub const THREAD_CREATE_STOPPED: u64 = 48;
    pub const HANDLE_TRANSFER: u64 = 49;
    pub const HANDLE_IMPORT: u64 = 50;
    pub const HANDLE_TRANSFER_AT: u64 = 51;
    pub const MEMORY_OBJECT_STATE: u64 = 52;
    pub const IPC_SEND: u64 = 53;
    pub const IPC_RECEIVE: u64 = 54;
    pub const OBJECT_GET_STATE: u64 = 55;
    pub const REFERENCE_CREATE: u64 = 56;
    pub const REFERENCE_COMPARE: u64 = 57;
    pub const THREAD_SET_SCHEDULER: u64 = 58;
    pub const THREAD_SET_PRIORITY: u64 = 59;
    pub const IPC_CALL_BUF: u64 = 60;
    pub const IPC_REPLY_WAIT_BUF: u64 = 61;
    pub const CONN_CONNECT: u64 = 62;
    pub const CONN_ACCEPT: u64 = 63;
    pub const CONN_SEND: u64 = 64;
    pub const CONN_RECEIVE: u64 = 65;
    pub const CONN_SEND_OVER_RECEIVE: u64 = 66;
    pub const CONN_DISCONNECT: u64 = 67;
    pub const THREAD_GET_CONNECTION: u64 = 68;
    pub const THREAD_SET_CONNECTION: u64 = 69;
    pub const THREAD_SET_DONATION_ONLY: u64 = 70;
    pub const THREAD_DONATE: u64 = 71;
    pub const PORTSET_TAKE_MESSAGES: u64 = 72;
    pub const PORTSET_PUT_MESSAGES: u64 = 73;
    pub const CONN_SEND_BUF: u64 = 74;
    pub const CONN_RECEIVE_BUF: u64 = 75;
    pub const BOOT_ARGS: u64 = 76;
    pub const HANG_REPORT: u64 = 77;
    pub const SPACE_SET_QUOTA: u64 = 78;
    pub const FAULT_INJECT: u64 = 79;
    pub const TIME_NOW: u64 = 80;
    pub const SLEEP_UNTIL: u64 = 81;
    pub const IPC_CALL_BUF_TIMED: u64 = 82;
    pub const CONSOLE_READ: u64 = 83;
    pub const REGION_DISCARD: u64 = 84;
    pub const IPC_CLIENT_WAITING: u64 = 85;
    pub const IPC_REQUEST_READ: u64 = 86;
    pub const CONSOLE_PUT: u64 = 95;

    /// Every call: (number, name as ABI.md spells it), in number order.
    pub const ALL: &[(u64, &str)] = &[
        (NULL, "null"),
        (CONSOLE_WRITE, "console_write"),
        (EXIT, "exit"),
        (YIELD, "yield"),
        (SYSTEM_INFO, "system_info"),
        (HANDLE_CLOSE, "handle_close"),
        (HANDLE_DUPLICATE, "handle_duplicate"),
        (HANDLE_INFO, "handle_info"),
        (SPACE_CREATE, "space_create"),
        (SPACE_DESTROY, "space_destroy"),
        (SPACE_ENUMERATE, "space_enumerate"),
        (THREAD_CREATE, "thread_create"),
        (THREAD_KILL, "thread_kill"),
        (THREAD_WAIT, "thread_wait"),
        (MUTEX_CREATE, "mutex_create"),
        (MUTEX_WAIT, "mutex_wait"),
        (MUTEX_WAKE, "mutex_wake"),
        (COND_CREATE, "cond_create"),
        (COND_WAIT, "cond_wait"),
        (COND_WAKE, "cond_wake"),
        (PORTSET_CREATE, "portset_create"),
        (PORT_CREATE, "port_create"),
        (IPC_CALL, "ipc_call"),
        (IPC_REPLY_WAIT, "ipc_reply_wait"),
        (THREAD_SET_AFFINITY, "thread_set_affinity"),
        (READ_TSC, "read_tsc"),
        (REGION_CREATE, "region_create"),
        (MAPPING_CREATE, "mapping_create"),
        (REGION_PROTECT, "region_protect"),
        (REGION_DESTROY, "region_destroy"),
        (MAPPING_DESTROY, "mapping_destroy"),
        (SPACE_SET_KEEPER, "space_set_keeper"),
        (REGION_SET_KEEPER, "region_set_keeper"),
        (THREAD_STOP, "thread_stop"),
        (THREAD_RESUME, "thread_resume"),
        (THREAD_GET_STATE, "thread_get_state"),
        (THREAD_SET_STATE, "thread_set_state"),
        (THREAD_CREATE_STOPPED, "thread_create_stopped"),
        (HANDLE_TRANSFER, "handle_transfer"),
        (HANDLE_IMPORT, "handle_import"),
        (HANDLE_TRANSFER_AT, "handle_transfer_at"),
        (MEMORY_OBJECT_STATE, "memory_object_state"),
        (IPC_SEND, "ipc_send"),
        (IPC_RECEIVE, "ipc_receive"),
        (OBJECT_GET_STATE, "object_get_state"),
        (REFERENCE_CREATE, "reference_create"),
        (REFERENCE_COMPARE, "reference_compare"),
        (THREAD_SET_SCHEDULER, "thread_set_scheduler"),
        (THREAD_SET_PRIORITY, "thread_set_priority"),
        (IPC_CALL_BUF, "ipc_call_buf"),
        (IPC_REPLY_WAIT_BUF, "ipc_reply_wait_buf"),
        (CONN_CONNECT, "conn_connect"),
        (CONN_ACCEPT, "conn_accept"),
        (CONN_SEND, "conn_send"),
        (CONN_RECEIVE, "conn_receive"),
        (CONN_SEND_OVER_RECEIVE, "conn_send_over_receive"),
        (CONN_DISCONNECT, "conn_disconnect"),
        (THREAD_GET_CONNECTION, "thread_get_connection"),
        (THREAD_SET_CONNECTION, "thread_set_connection"),
        (THREAD_SET_DONATION_ONLY, "thread_set_donation_only"),
        (THREAD_DONATE, "thread_donate"),
        (PORTSET_TAKE_MESSAGES, "portset_take_messages"),
        (PORTSET_PUT_MESSAGES, "portset_put_messages"),
        (CONN_SEND_BUF, "conn_send_buf"),
        (CONN_RECEIVE_BUF, "conn_receive_buf"),
        (BOOT_ARGS, "boot_args"),
        (HANG_REPORT, "hang_report"),
        (SPACE_SET_QUOTA, "space_set_quota"),
        (FAULT_INJECT, "fault_inject"),
        (TIME_NOW, "time_now"),
        (SLEEP_UNTIL, "sleep_until"),
        (IPC_CALL_BUF_TIMED, "ipc_call_buf_timed"),
        (CONSOLE_READ, "console_read"),
        (REGION_DISCARD, "region_discard"),
        (IPC_CLIENT_WAITING, "ipc_client_waiting"),
        (IPC_REQUEST_READ, "ipc_request_read"),
        (CONSOLE_PUT, "console_put"),
    ];

    /// The name of call `number`, if there is one.
    pub fn name(number: u64) -> Option<&'static str> {
        ALL.iter().find(|(n, _)| *n == number).map(|(_, name)| *name)
    }
}

/// A system call's error: the negative value in rax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// No system call has this number.
    NoSuchCall = -1,
    /// A pointer argument is outside the caller's user memory or unmapped.
    BadPointer = -2,
    /// A size argument is out of range.
    BadSize = -3,
    /// The handle was never issued in this space, or is closed.
    BadHandle = -4,
    /// The handle names an object of another type.
    WrongType = -5,
    /// The handle lacks a right the call needs.
    MissingRights = -6,
    /// Not enough memory, quota or handle-table room.
    NoMemory = -7,
    /// An argument is out of its documented range.
    InvalidArgument = -8,
    /// The object was destroyed (for thread_wait: the thread faulted or was killed).
    Dead = -9,
    /// The call would have to wait and was asked not to.
    WouldBlock = -10,
    /// The call's time ran out before it could complete.
    TimedOut = -11,
}

impl Error {
    pub const ALL: [Error; 11] = [
        Error::NoSuchCall,
        Error::BadPointer,
        Error::BadSize,
        Error::BadHandle,
        Error::WrongType,
        Error::MissingRights,
        Error::NoMemory,
        Error::InvalidArgument,
        Error::Dead,
        Error::WouldBlock,
        Error::TimedOut,
    ];

    pub const fn code(self) -> i64 {
        self as i64
    }

    /// The error with raw code `code`, if any.
    pub fn from_code(code: i64) -> Option<Error> {
        Error::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// Its name as ABI.md spells it.
    pub fn name(self) -> &'static str {
        match self {
            Error::NoSuchCall => "NoSuchCall",
            Error::BadPointer => "BadPointer",
            Error::BadSize => "BadSize",
            Error::BadHandle => "BadHandle",
            Error::WrongType => "WrongType",
            Error::MissingRights => "MissingRights",
            Error::NoMemory => "NoMemory",
            Error::InvalidArgument => "InvalidArgument",
            Error::Dead => "Dead",
            Error::WouldBlock => "WouldBlock",
            Error::TimedOut => "TimedOut",
        }
    }
}

/// Handle rights (bit masks).
pub mod rights {
    pub const GET_STATE: u32 = 1 << 0;
    pub const SET_STATE: u32 = 1 << 1;
    pub const DESTROY: u32 = 1 << 2;
    pub const TRANSFER: u32 = 1 << 3;
    pub const DUPLICATE: u32 = 1 << 4;
    pub const SEND: u32 = 1 << 5;
    pub const RECEIVE: u32 = 1 << 6;
    pub const MAP_READ: u32 = 1 << 7;
    pub const MAP_WRITE: u32 = 1 << 8;
    pub const MAP_EXECUTE: u32 = 1 << 9;
    pub const CREATE: u32 = 1 << 10;
    pub const ALL: u32 = (1 << 11) - 1;
}

/// Object type codes (`handle_info`, `space_enumerate`, state records).
pub mod object_type {
    pub const SPACE: u32 = 1;
    pub const THREAD: u32 = 2;
    pub const PORT: u32 = 3;
    pub const PORTSET: u32 = 4;
    pub const REGION: u32 = 5;
    pub const MAPPING: u32 = 6;
    pub const MUTEX: u32 = 7;
    pub const COND: u32 = 8;
    pub const REFERENCE: u32 = 9;
}

/// Memory rights of regions and mappings.
pub mod memory_rights {
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const EXECUTE: u64 = 4;
}

/// Word 0 of the messages the kernel sends keepers and schedulers.
pub mod keeper {
    /// A page fault no mapping resolves, to the region's keeper.
    pub const KIND_PAGE_FAULT: u64 = 1;
    /// Any other exception, to the space's keeper.
    pub const KIND_EXCEPTION: u64 = 2;
    /// An access the region's rights forbid, to its keeper.
    pub const KIND_PROTECTION: u64 = 3;
    /// A used-up time slice, to the thread's scheduler port (one-way).
    pub const KIND_CPU_TIME: u64 = 4;
    /// A donation-only thread became runnable, to its scheduler port (one-way).
    pub const KIND_RUNNABLE: u64 = 5;
}

/// Longest console write accepted in one call.
pub const CONSOLE_WRITE_MAX: u64 = 256;
/// Bytes per `space_enumerate` record: u64 handle, u32 type, u32 rights.
pub const ENUMERATE_RECORD_BYTES: u64 = 16;
/// Bytes of a thread state record, version 1 (registers) and version 2
/// (with the x87/SSE FXSAVE image).
pub const THREAD_STATE_V1_BYTES: u64 = 19 * 8;
pub const THREAD_STATE_V2_BYTES: u64 = THREAD_STATE_V1_BYTES + 512;
/// Bytes of an object state record (`object_get_state`): six u64 words.
pub const OBJECT_STATE_BYTES: u64 = 48;
/// Bytes `system_info` writes at most.
pub const SYSTEM_INFO_BYTES: u64 = 104;
/// Handles a space's table holds at most.
pub const HANDLE_QUOTA: u64 = 4096;
/// Longest IPC payload.
pub const PAYLOAD_MAX: u64 = 64 * 1024;
/// Exit code of a program that panicked (matryoshka-rt's handler).
pub const PANIC_EXIT_CODE: u64 = 101;
