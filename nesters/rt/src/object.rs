//! Kernel objects through handles: spaces, threads, and the handle table.
//!
//! A [`Handle`] is a number meaningful only in this program's space. Each
//! carries [`rights`]; calls that need a right the handle lacks fail with
//! `MissingRights`. See kernel/ABI.md for the calls.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{decode, nr, syscall0, syscall1, syscall2, syscall4, SysError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u64);

/// Right bits (the shared `matryoshka-abi` crate).
pub mod rights {
    pub use matryoshka_abi::rights::*;
}

/// Object type codes.
pub mod types {
    pub use matryoshka_abi::object_type::*;
}

static SELF_SPACE: AtomicU64 = AtomicU64::new(0);
static START_FLAGS: AtomicU64 = AtomicU64::new(0);

#[doc(hidden)]
pub fn set_start_flags(flags: u64) {
    START_FLAGS.store(flags, Ordering::Relaxed);
}

/// What the kernel asked the root program to do (rsi at start): bit 0 run
/// benchmarks, bit 1 the IPC fast path is off.
pub fn start_flags() -> u64 {
    START_FLAGS.load(Ordering::Relaxed)
}

/// Restricts a thread to the CPUs in `mask` (needs SET_STATE).
pub fn thread_set_affinity(h: Handle, mask: u64) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::THREAD_SET_AFFINITY, h.0, mask) }).map(|_| ())
}

#[doc(hidden)]
pub fn set_self_space(raw: u64) {
    SELF_SPACE.store(raw, Ordering::Relaxed);
}

/// The handle to this program's own space (every right but DESTROY).
pub fn self_space() -> Handle {
    Handle(SELF_SPACE.load(Ordering::Relaxed))
}

pub fn close(h: Handle) -> Result<(), SysError> {
    // SAFETY: closing a handle has no effect on this program's memory.
    decode(unsafe { syscall1(nr::HANDLE_CLOSE, h.0) }).map(|_| ())
}

/// A second handle to the same object with `rights` (a subset; needs DUPLICATE).
pub fn duplicate(h: Handle, rights: u32) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::HANDLE_DUPLICATE, h.0, rights as u64) }).map(Handle)
}

/// (type code, rights) of a handle.
pub fn info(h: Handle) -> Result<(u32, u32), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::HANDLE_INFO, h.0) }).map(|v| ((v & 0xff) as u32, (v >> 8) as u32))
}

/// A new child of `parent` (needs CREATE on it).
pub fn space_create(parent: Handle) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::SPACE_CREATE, parent.0) }).map(Handle)
}

/// Destroys a space and its whole subtree (needs DESTROY); closes `h`.
/// Limits the kernel memory `space`'s subtree may take to `bytes`
/// (kernel/ABI.md, Kernel-memory quotas); not the caller's own or an ancestor's.
pub fn space_set_quota(space: Handle, bytes: u64) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { crate::syscall2(nr::SPACE_SET_QUOTA, space.0, bytes) }).map(|_| ())
}

/// Arms the kernel's allocation fault injector (root only): `Off`, fail the
/// n-th allocation point from now, or a seeded share (per mille). Returns
/// how many allocation points were passed since the previous arming.
pub fn fault_inject(plan: FaultPlan) -> Result<u64, SysError> {
    let (mode, a, b) = match plan {
        FaultPlan::Off => (0, 0, 0),
        FaultPlan::Nth(n) => (1, n, 0),
        FaultPlan::Random { seed, permille } => (2, seed, permille),
    };
    // SAFETY: no memory arguments.
    decode(unsafe { crate::syscall4(nr::FAULT_INJECT, mode, a, b, 0) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPlan {
    Off,
    Nth(u64),
    Random { seed: u64, permille: u64 },
}

pub fn space_destroy(h: Handle) -> Result<(), SysError> {
    // SAFETY: the target subtree cannot contain this program's space (the kernel refuses).
    decode(unsafe { syscall1(nr::SPACE_DESTROY, h.0) }).map(|_| ())
}

/// One entry of a space's handle table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Record {
    pub handle: u64,
    pub object_type: u32,
    pub rights: u32,
}

/// Fills `out` with the handle table of `space` (needs GET_STATE); returns
/// how many handles it holds in all.
pub fn space_enumerate(space: Handle, out: &mut [Record]) -> Result<usize, SysError> {
    // SAFETY: the kernel writes at most out.len() 16-byte records into `out`.
    decode(unsafe { syscall4(nr::SPACE_ENUMERATE, space.0, out.as_mut_ptr() as u64, out.len() as u64, 0) }).map(|n| n as usize)
}

/// Starts a thread in `space` (needs CREATE) at `entry` with `arg` in rdi
/// on the stack ending at `stack_top`.
pub fn thread_create(space: Handle, entry: extern "C" fn(u64) -> !, stack_top: u64, arg: u64) -> Result<Handle, SysError> {
    thread_create_raw(space, entry as usize as u64, stack_top, arg)
}

/// `thread_create` with an arbitrary entry address (for other spaces).
pub fn thread_create_raw(space: Handle, rip: u64, stack_top: u64, arg: u64) -> Result<Handle, SysError> {
    // SAFETY: the new thread runs code the caller chose; the kernel checks the addresses are user addresses.
    decode(unsafe { syscall4(nr::THREAD_CREATE, space.0, rip, stack_top, arg) }).map(Handle)
}

/// Asks a thread to end (needs DESTROY).
pub fn thread_kill(h: Handle) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::THREAD_KILL, h.0) }).map(|_| ())
}

/// The exit code of a thread; `Dead` if it faulted or was killed,
/// `WouldBlock` if it still runs and `block` is false.
pub fn thread_wait(h: Handle, block: bool) -> Result<u64, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::THREAD_WAIT, h.0, block as u64) })
}

/// Gives the CPU to another ready thread.
pub fn yield_now() {
    // SAFETY: no effect on this program's memory.
    unsafe { syscall0(nr::YIELD) };
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemInfo {
    pub managed_frames: u64,
    pub free_frames: u64,
    pub cpus: u64,
    /// The time-stamp counter's frequency.
    pub tsc_hz: u64,
    /// Direct switches the IPC fast path has made so far, on all CPUs.
    pub fast_ipc_switches: u64,
    /// Loads of user x87/SSE state so far (lazy FPU switches), on all CPUs.
    pub fpu_loads: u64,
    /// Bytes of kernel heap in use.
    pub kernel_heap_used: u64,
    /// Kernel threads not yet freed (exited ones whose handles are open included).
    pub kernel_threads: u64,
    /// IPC calls the general path made so far (with `fast_ipc_switches`: every crossing).
    pub general_ipc_calls: u64,
    /// User page faults the kernel resolved so far (faults to keepers are IPC).
    pub kernel_faults: u64,
    /// CR3 loads so far: address-space switches, each a TLB flush without PCID.
    pub cr3_loads: u64,
    /// TLB shootdowns so far.
    pub tlb_shootdowns: u64,
    /// TLB flushes so far: CR3 loads that flushed (every one without PCID,
    /// none of the switches with it) plus wholesale flushes (shootdowns of
    /// many pages, PCID recycling). 0 from a kernel older than this word.
    pub tlb_flushes: u64,
}

pub fn system_info() -> Result<SystemInfo, SysError> {
    let mut raw = [0u64; 13];
    // SAFETY: the kernel writes at most 104 bytes into `raw`.
    decode(unsafe { syscall2(nr::SYSTEM_INFO, raw.as_mut_ptr() as u64, 104) })?;
    Ok(SystemInfo {
        managed_frames: raw[0],
        free_frames: raw[1],
        cpus: raw[2],
        tsc_hz: raw[3],
        fast_ipc_switches: raw[4],
        fpu_loads: raw[5],
        kernel_heap_used: raw[6],
        kernel_threads: raw[7],
        general_ipc_calls: raw[8],
        kernel_faults: raw[9],
        cr3_loads: raw[10],
        tlb_shootdowns: raw[11],
        tlb_flushes: raw[12],
    })
}

/// Sends the exceptions of `space`'s threads to `port` (`None` clears it).
/// Message: `[2, vector, error code, rip, fault address, rsp]`; reply
/// `[0, ..]` to resume the thread, anything else to end it.
pub fn space_set_keeper(space: Handle, port: Option<Handle>) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::SPACE_SET_KEEPER, space.0, port.map_or(0, |p| p.0)) }).map(|_| ())
}

/// A thread's exported registers (state record version 2; kernel/ABI.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ThreadState {
    /// 2 | flags << 32 (bit 0: stopped in a system call: rcx/r11 hold rip/rflags).
    pub version_flags: u64,
    /// rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    /// x87/SSE state, an FXSAVE image: MXCSR at byte 24, XMM0–15 from byte 160.
    pub fpu: [u8; 512],
}

impl ThreadState {
    pub const RAX: usize = 0;
    pub const RBX: usize = 1;
    pub const RSI: usize = 4;
    pub const RDI: usize = 5;
    pub const RSP: usize = 7;
    pub const R13: usize = 13;
    pub const VERSION: u64 = 2;

    /// XMM register `i`, low quadword first.
    pub fn xmm(&self, i: usize) -> [u64; 2] {
        let at = 160 + 16 * i;
        let word = |o: usize| u64::from_le_bytes(self.fpu[o..o + 8].try_into().unwrap_or([0; 8]));
        [word(at), word(at + 8)]
    }

    pub fn set_xmm(&mut self, i: usize, value: [u64; 2]) {
        let at = 160 + 16 * i;
        self.fpu[at..at + 8].copy_from_slice(&value[0].to_le_bytes());
        self.fpu[at + 8..at + 16].copy_from_slice(&value[1].to_le_bytes());
    }

    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.fpu[24..28].try_into().unwrap_or([0; 4]))
    }

    pub fn set_mxcsr(&mut self, value: u32) {
        self.fpu[24..28].copy_from_slice(&value.to_le_bytes());
    }
}

/// Stops a thread (needs SET_STATE) and returns once it is stopped; a
/// system call it was blocked in is exported as about to run again.
pub fn thread_stop(h: Handle) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::THREAD_STOP, h.0) }).map(|_| ())
}

pub fn thread_resume(h: Handle) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::THREAD_RESUME, h.0) }).map(|_| ())
}

pub fn thread_get_state(h: Handle) -> Result<ThreadState, SysError> {
    let mut s = ThreadState { version_flags: 0, gpr: [0; 16], rip: 0, rflags: 0, fpu: [0; 512] };
    // SAFETY: the kernel writes exactly size_of::<ThreadState>() bytes into `s`.
    decode(unsafe {
        crate::syscall4(nr::THREAD_GET_STATE, h.0, &mut s as *mut ThreadState as u64, core::mem::size_of::<ThreadState>() as u64, 0)
    })?;
    Ok(s)
}

pub fn thread_set_state(h: Handle, s: &ThreadState) -> Result<(), SysError> {
    // SAFETY: the kernel reads size_of::<ThreadState>() bytes from `s`.
    decode(unsafe {
        crate::syscall4(nr::THREAD_SET_STATE, h.0, s as *const ThreadState as u64, core::mem::size_of::<ThreadState>() as u64, 0)
    })
    .map(|_| ())
}

/// A thread in `space` that runs only after set_state and resume.
pub fn thread_create_stopped(space: Handle) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::THREAD_CREATE_STOPPED, space.0) }).map(Handle)
}

/// Gives `space` (needs CREATE) a handle to `h`'s object with `rights` (a
/// subset; `h` needs TRANSFER). Returns the handle's value in that space.
pub fn transfer(space: Handle, h: Handle, rights: u32) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { crate::syscall4(nr::HANDLE_TRANSFER, space.0, h.0, rights as u64, 0) }).map(Handle)
}

/// A handle in this program's table to the object behind `h` in `space`'s
/// table (needs GET_STATE on `space`).
pub fn import(space: Handle, h: Handle, rights: u32) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { crate::syscall4(nr::HANDLE_IMPORT, space.0, h.0, rights as u64, 0) }).map(Handle)
}

/// `transfer`, at exactly the handle value `value` in `space`'s table.
pub fn transfer_at(space: Handle, h: Handle, rights: u32, value: Handle) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { crate::syscall4(nr::HANDLE_TRANSFER_AT, space.0, h.0, rights as u64, value.0) }).map(|_| ())
}

/// The state of a region `[5, start, size, max, 0]` or mapping
/// `[6, va, offset, size, rights]`.
pub fn memory_object_state(h: Handle) -> Result<[u64; 5], SysError> {
    let mut w = [0u64; 5];
    // SAFETY: the kernel writes 40 bytes into `w`.
    decode(unsafe { crate::syscall4(nr::MEMORY_OBJECT_STATE, h.0, w.as_mut_ptr() as u64, 40, 0) })?;
    Ok(w)
}

/// Any object's exported state, `[type, ...]` (kernel/ABI.md); links to
/// other objects are this program's handles to them (0 if it has none).
pub fn object_get_state(h: Handle) -> Result<[u64; 6], SysError> {
    let mut w = [0u64; 6];
    // SAFETY: the kernel writes 48 bytes into `w`.
    decode(unsafe { crate::syscall4(nr::OBJECT_GET_STATE, h.0, w.as_mut_ptr() as u64, 48, 0) })?;
    Ok(w)
}

/// A Reference to `h`'s object: it names the object without granting any
/// access (compare it, ask its type, pass it on).
pub fn reference_create(h: Handle) -> Result<Handle, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall1(nr::REFERENCE_CREATE, h.0) }).map(Handle)
}

/// Whether two handles (references or not) name the same object.
pub fn reference_compare(a: Handle, b: Handle) -> Result<bool, SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::REFERENCE_COMPARE, a.0, b.0) }).map(|v| v == 1)
}

/// Sends the thread's CPU-time events (`[4, cpu, tick, 0, 0, 0]`, one per
/// used-up time slice) to `port` as one-way messages; `None` stops them.
pub fn thread_set_scheduler(h: Handle, port: Option<Handle>) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::THREAD_SET_SCHEDULER, h.0, port.map_or(0, |p| p.0)) }).map(|_| ())
}

/// Sets a thread's priority (0..=63, higher first; user threads start at 16).
pub fn thread_set_priority(h: Handle, priority: u8) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::THREAD_SET_PRIORITY, h.0, priority as u64) }).map(|_| ())
}

/// The one-way message a donation-only thread's scheduler port gets when
/// it becomes runnable: `[KIND_RUNNABLE, cpu, tick, 0, 0, 0]`.
pub const KIND_RUNNABLE: u64 = matryoshka_abi::keeper::KIND_RUNNABLE;

/// With `on`, the thread runs only on time donated with `thread_donate`;
/// its scheduler port hears (KIND_RUNNABLE) whenever it becomes runnable.
pub fn thread_set_donation_only(h: Handle, on: bool) -> Result<(), SysError> {
    // SAFETY: no memory arguments.
    decode(unsafe { syscall2(nr::THREAD_SET_DONATION_ONLY, h.0, on as u64) }).map(|_| ())
}

/// How a donation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DonationEnd {
    /// The thread blocked; it is announced again when it becomes runnable.
    Blocked,
    /// It used up its time slice or yielded: still runnable.
    Runnable,
    Exited,
    Stopped,
}

/// Runs the runnable donation-only thread `h` on this thread's CPU and time
/// until it blocks, yields, uses up a slice, exits or stops.
pub fn thread_donate(h: Handle) -> Result<DonationEnd, SysError> {
    // SAFETY: no memory arguments.
    let code = decode(unsafe { syscall1(nr::THREAD_DONATE, h.0) })?;
    Ok(match code {
        0 => DonationEnd::Blocked,
        1 => DonationEnd::Runnable,
        2 => DonationEnd::Exited,
        _ => DonationEnd::Stopped,
    })
}
