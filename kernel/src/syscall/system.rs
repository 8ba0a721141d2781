//! System calls about the system itself: console output, system_info,
//! the root program's arguments, the hang report, fault injection.

use super::*;

pub(super) fn console_write(ptr: u64, len: u64) -> SysResult {
    if len > CONSOLE_WRITE_MAX {
        return Err(SysError::BadSize.into());
    }
    let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
    let buf = &mut buf[..len as usize];
    copy_from_user(buf, ptr).map_err(|()| SysError::BadPointer)?;
    let text = core::str::from_utf8(buf).unwrap_or("<invalid UTF-8>");
    print_line(format_args!("user: {}", text.trim_end_matches('\n')));
    CONSOLE_WRITES.fetch_add(1, Ordering::Relaxed);
    Ok(len as i64)
}

/// `console_put(ptr, len)`: writes the bytes to the serial console as they
/// are (no prefix, no added newline, under the console lock so they do not
/// tear a kernel log line). Only the root space may: the root program runs
/// the console server that hands the console to others as a capability.
pub(super) fn console_put(ptr: u64, len: u64) -> SysResult {
    if !caller()?.is_root() {
        return Err(SysError::MissingRights.into());
    }
    if len > CONSOLE_WRITE_MAX {
        return Err(SysError::BadSize.into());
    }
    let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
    let buf = &mut buf[..len as usize];
    copy_from_user(buf, ptr).map_err(|()| SysError::BadPointer)?;
    crate::console::put_bytes(buf);
    CONSOLE_WRITES.fetch_add(1, Ordering::Relaxed);
    Ok(len as i64)
}

/// `boot_args(buf, len)`: copies up to `len` bytes of the root program's
/// argument string (the kernel command line after a lone `--`) to `buf`;
/// returns the string's full length. Only the root space may ask: a child
/// learns only what its parent tells it (border control).
pub(super) fn boot_args(buf: u64, len: u64) -> SysResult {
    let me = caller()?;
    if !me.is_root() {
        return Err(SysError::MissingRights.into());
    }
    let args = crate::kernel_args().user_args.as_bytes();
    let n = (len.min(args.len() as u64)) as usize;
    copy_to_user(buf, &args[..n]).map_err(|()| SysError::BadPointer)?;
    Ok(args.len() as i64)
}

/// `hang_report()`: prints what every CPU and thread is doing (the report
/// the kernel watchdog prints), for a user-level watchdog that saw no
/// progress. Root space only; WouldBlock while another report runs.
pub(super) fn hang_report() -> SysResult {
    if !caller()?.is_root() {
        return Err(SysError::MissingRights.into());
    }
    if crate::hang::report("asked for by the root program", 0) {
        Ok(0)
    } else {
        Err(SysError::WouldBlock.into())
    }
}

/// `fault_inject(mode, a, b)`: arms the allocation fault injector
/// (`mm::inject`): mode 0 off, 1 fail the a-th allocation point from now,
/// 2 fail a seeded random share (seed a, b per mille). Returns how many
/// allocation points were passed since the previous arming. Root space only.
pub(super) fn fault_inject(mode: u64, a: u64, b: u64) -> SysResult {
    use crate::mm::inject::{Plan, INJECTOR};
    if !caller()?.is_root() {
        return Err(SysError::MissingRights.into());
    }
    let plan = match mode {
        0 => Plan::Off,
        1 if a > 0 => Plan::Nth(a),
        2 if b <= 1000 => Plan::Random { seed: a, permille: b },
        _ => return Err(SysError::InvalidArgument.into()),
    };
    let (points, _) = INJECTOR.counts();
    INJECTOR.arm(plan);
    Ok((points & (i64::MAX as u64)) as i64)
}

/// `system_info(buf, len)`: writes {u64 managed frames, u64 free frames,
/// u64 online CPUs, u64 TSC Hz, u64 IPC fast-path switches, u64 x87/SSE
/// loads, u64 kernel heap bytes in use, u64 kernel threads not yet freed,
/// u64 general-path IPC calls, u64 page faults handled in the kernel,
/// u64 CR3 loads (TLB flushes without PCID), u64 TLB shootdowns, u64 TLB
/// flushes: CR3 loads that flushed plus wholesale flushes}
/// (104 bytes; at least the first 24 are needed, a shorter buffer gets the
/// words that fit).
pub(super) fn system_info(buf: u64, len: u64) -> SysResult {
    if len < 24 {
        return Err(SysError::BadSize.into());
    }
    let s = frame::stats();
    let mut out = [0u8; 104];
    out[..8].copy_from_slice(&s.managed.to_le_bytes());
    out[8..16].copy_from_slice(&s.free.to_le_bytes());
    out[16..24].copy_from_slice(&(smp::online_count() as u64).to_le_bytes());
    out[24..32].copy_from_slice(&crate::arch::time::tsc_hz().to_le_bytes());
    out[32..40].copy_from_slice(&sched::fast_ipc_switches().to_le_bytes());
    out[40..48].copy_from_slice(&sched::fpu_loads().to_le_bytes());
    out[48..56].copy_from_slice(&(crate::mm::heap::used_bytes() as u64).to_le_bytes());
    out[56..64].copy_from_slice(&sched::live_threads().to_le_bytes());
    out[64..72].copy_from_slice(&crate::ipc::general_calls().to_le_bytes());
    out[72..80].copy_from_slice(&crate::object::memory::resolved_faults().to_le_bytes());
    out[80..88].copy_from_slice(&(crate::arch::paging::cr3_loads() + sched::fast_cr3_loads()).to_le_bytes());
    out[88..96].copy_from_slice(&crate::arch::x86_64::tlb::shootdowns().to_le_bytes());
    out[96..104].copy_from_slice(&tlb_flushes().to_le_bytes());
    let n = len.min(104) as usize;
    copy_to_user(buf, &out[..n]).map_err(|()| SysError::BadPointer)?;
    Ok(n as i64)
}

/// `time_now()`: nanoseconds since boot, monotonic, from the TSC (the clock
/// of every deadline).
pub(super) fn time_now() -> SysResult {
    Ok(crate::arch::time::now_ns().min(i64::MAX as u64) as i64)
}

/// `sleep_until(deadline_ns)`: returns 0 once `time_now()` ≥ `deadline_ns`
/// (at once if it already is; woken at the timer tick after the deadline,
/// so at most one tick late). Stopped meanwhile, it restarts with the same
/// deadline: an absolute time needs no rewriting.
pub(super) fn sleep_until(deadline_ns: u64) -> SysResult {
    caller()?;
    if crate::arch::time::now_ns() >= deadline_ns {
        return Ok(0);
    }
    if sched::sleep_until_tsc(crate::arch::time::ns_to_tsc(deadline_ns)) {
        Ok(0)
    } else {
        Err(interrupted())
    }
}

/// One reader at a time between peeking at the console input and taking it.
static CONSOLE_READER: spin::Mutex<()> = spin::Mutex::new(());

/// `console_read(buf, len ≤ 256)`: blocks until the serial console has
/// received input, then moves up to `len` bytes of it to `buf` and returns
/// how many (raw bytes: no echo, no line editing — the console server does
/// those). Only the root space may, as for `console_put`. Stopped while it
/// waits, it is exported as about to read again; the bytes are taken only
/// once they are in `buf`, so a bad buffer loses nothing.
pub(super) fn console_read(ptr: u64, len: u64) -> SysResult {
    if !caller()?.is_root() {
        return Err(SysError::MissingRights.into());
    }
    if len == 0 || len > CONSOLE_WRITE_MAX {
        return Err(SysError::BadSize.into());
    }
    let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
    loop {
        {
            let _one = CONSOLE_READER.lock();
            let n = crate::console::peek_input(&mut buf[..len as usize]);
            if n > 0 {
                copy_to_user(ptr, &buf[..n]).map_err(|()| SysError::BadPointer)?;
                crate::console::consume_input(n);
                return Ok(n as i64);
            }
        }
        let (kill, stop) = sched::current_kill_or_stop();
        if kill || stop {
            return Err(interrupted());
        }
        crate::console::INPUT_WAITERS.wait_if(|| !crate::console::input_ready());
    }
}

/// TLB flushes on all CPUs: without PCID every CR3 load flushes the TLB's
/// non-global entries (the switch paths count their loads), with PCID no
/// switch does (every token has the no-flush bit); plus the wholesale
/// flushes of shootdowns, tag recycling and boot (`pcid::full_flushes`).
pub(crate) fn tlb_flushes() -> u64 {
    let switches = if crate::arch::x86_64::pcid::enabled() { 0 } else { crate::arch::paging::cr3_loads() + sched::fast_cr3_loads() };
    switches + crate::arch::x86_64::pcid::full_flushes()
}
