//! Raw system calls with every argument register, and the few safe
//! wrappers the fuzzer's own machinery uses.

use core::arch::asm;

use matryoshka_rt::{decode, nr, SysError};

/// Values parked in r14 and r15 across every fuzzed call: the kernel must
/// give them back unchanged (it preserves every register but rax, rcx, r11
/// and an IPC call's message registers). `ipc_call_buf_timed` takes its
/// timeout in r14 and rewrites it when the thread is stopped: only r15 is a
/// canary there ([`raw_timed`]).
const CANARY_R14: u64 = 0x5afe_0014_dead_beef;
const CANARY_R15: u64 = 0x5afe_0015_cafe_f00d;

/// The outcome of one raw call.
pub struct Raw {
    pub ret: i64,
    /// rdi, rsi, rdx, r10, r8, r9, r12, r13 after the call.
    pub regs: [u64; 8],
    /// r14 and r15 came back as they went in.
    pub canaries_intact: bool,
}

/// Makes system call `n` with `regs` (rdi, rsi, rdx, r10, r8, r9, r12, r13).
///
/// # Safety
/// The kernel validates every argument, but the call acts on what the
/// arguments name: the caller makes sure no memory it relies on is one of
/// the buffers the kernel may write, and that `n` is not `exit` unless the
/// thread is meant to end.
pub unsafe fn raw(n: u64, regs: [u64; 8]) -> Raw {
    // SAFETY: forwarded to the caller's contract.
    let (raw, r14) = unsafe { raw_with_r14(n, regs, CANARY_R14) };
    Raw { canaries_intact: raw.canaries_intact && r14 == CANARY_R14, ..raw }
}

/// The system call itself: `regs` in rdi..r13, `r14` in r14; returns the
/// result (r15 checked as a canary) and what r14 holds afterwards.
///
/// # Safety
/// As for [`raw`].
#[inline(never)]
unsafe fn raw_with_r14(n: u64, regs: [u64; 8], r14: u64) -> (Raw, u64) {
    let ret: i64;
    let mut r = regs;
    let (r14_after, r15): (u64, u64);
    // SAFETY: forwarded to the caller's contract; every register the call
    // may change is an output here.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as i64 => ret,
            inlateout("rdi") r[0],
            inlateout("rsi") r[1],
            inlateout("rdx") r[2],
            inlateout("r10") r[3],
            inlateout("r8") r[4],
            inlateout("r9") r[5],
            inlateout("r12") r[6],
            inlateout("r13") r[7],
            inlateout("r14") r14 => r14_after,
            inlateout("r15") CANARY_R15 => r15,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    (Raw { ret, regs: r, canaries_intact: r15 == CANARY_R15 }, r14_after)
}

/// Makes system call `n` with `regs` and, for `ipc_call_buf_timed`, `r14`
/// (its timeout; every other call gets the r14 canary).
///
/// # Safety
/// As for [`raw`].
pub unsafe fn call(n: u64, regs: [u64; 8], r14: u64) -> Raw {
    // SAFETY: forwarded to the caller's contract.
    unsafe {
        if n == nr::IPC_CALL_BUF_TIMED {
            raw_timed(n, regs, r14)
        } else {
            raw(n, regs)
        }
    }
}

/// [`raw`] with `r14` as an input (the timeout of `ipc_call_buf_timed`):
/// the kernel may rewrite it (to the time left, on a stop), so only r15 is
/// checked as a canary.
///
/// # Safety
/// As for [`raw`].
pub unsafe fn raw_timed(n: u64, regs: [u64; 8], r14: u64) -> Raw {
    // SAFETY: forwarded to the caller's contract.
    unsafe { raw_with_r14(n, regs, r14) }.0
}

/// Calls whose message registers (rsi..r12) carry results.
pub fn writes_message_registers(n: u64) -> bool {
    matches!(n, nr::IPC_CALL | nr::IPC_REPLY_WAIT | nr::IPC_RECEIVE | nr::IPC_CALL_BUF | nr::IPC_REPLY_WAIT_BUF | nr::IPC_CALL_BUF_TIMED)
        || (nr::CONN_CONNECT..=nr::CONN_DISCONNECT).contains(&n)
        || matches!(n, nr::CONN_SEND_BUF | nr::CONN_RECEIVE_BUF | nr::IPC_SEND)
}

pub fn tsc() -> u64 {
    // SAFETY: rdtsc is allowed in ring 3 and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `system_info` in full: the words the kernel wrote, and how many bytes
/// that was (48, 64 on kernels that report their heap and threads, 80 on
/// those that also count IPC calls and faults). Asked with room for more,
/// so the fuzzer learns the real maximum.
pub fn system_info() -> Result<([u64; 16], u64), SysError> {
    let mut w = [0u64; 16];
    // SAFETY: the kernel writes at most 128 bytes into `w`.
    let n = decode(unsafe { matryoshka_rt::syscall2(nr::SYSTEM_INFO, w.as_mut_ptr() as u64, 128) })?;
    Ok((w, n))
}

/// `hang_report` (77): the kernel prints every CPU's and thread's state.
pub fn hang_report() -> Result<u64, SysError> {
    // SAFETY: the call takes no arguments and only prints.
    decode(unsafe { matryoshka_rt::syscall0(nr::HANG_REPORT) })
}
