//! Thread calls: create (running or stopped), kill, wait, stop, resume,
//! registers, affinity, priority, scheduler port, donation.

use super::*;

/// `thread_create(space, rip, rsp, arg)`: a running user thread in `space`
/// (CREATE right), starting at `rip` with stack `rsp` and `arg` in rdi.
pub(super) fn thread_create(space: u64, rip: u64, rsp: u64, arg: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    let t = target.spawn_thread(rip, rsp, (arg, 0))?;
    match me.insert(Object::Thread(t.clone()), Rights::ALL) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            sched::kill(&t);
            Err(e.into())
        }
    }
}

pub(super) fn thread_kill(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::DESTROY)?;
    sched::kill(&t);
    Ok(0)
}

/// `thread_wait(thread, block)`: the thread's exit code once it has exited
/// (blocking if `block` is 1); a thread that faulted or was killed gives
/// `Dead`.
pub(super) fn thread_wait(h: u64, block: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::GET_STATE)?;
    let reason = match block {
        0 => t.exit_reason().ok_or(SysError::WouldBlock)?,
        1 => {
            crate::arch::cpu::enable_interrupts();
            let r = sched::join_unless_killed(&t, true);
            crate::arch::cpu::disable_interrupts();
            // A kill ends the wait (the thread exits on its way out); a stop restarts it.
            match r {
                Some(r) => r,
                None => return Err(interrupted()),
            }
        }
        _ => return Err(SysError::InvalidArgument.into()),
    };
    match reason {
        UserExit::Exited(code) => Ok((code & (i64::MAX as u64)) as i64),
        _ => Err(SysError::Dead.into()),
    }
}

/// `thread_set_affinity(thread, mask)`: the CPUs (bit per CPU) the thread
/// may run on (SET_STATE right); it moves at its next switch.
pub(super) fn thread_set_affinity(h: u64, mask: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    sched::set_affinity(&t, mask)?;
    Ok(0)
}

/// `thread_stop(thread)` (SET_STATE): stops the thread at a clean point and
/// returns once it is stopped. A thread blocked in a system call is
/// exported as about to make that call again (Fluke's atomic API).
pub(super) fn thread_stop(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    drop(me);
    if alloc::sync::Arc::ptr_eq(&t, &sched::current()) {
        return Err(SysError::InvalidArgument.into());
    }
    crate::arch::cpu::enable_interrupts();
    let stopped = sched::stop(&t);
    crate::arch::cpu::disable_interrupts();
    if !stopped {
        return Err(SysError::Dead.into());
    }
    if t.has_exited() {
        Err(SysError::Dead.into())
    } else {
        Ok(0)
    }
}

/// `thread_resume(thread)` (SET_STATE): lets a stopped thread run again.
pub(super) fn thread_resume(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    if sched::resume(&t) {
        Ok(0)
    } else {
        Err(SysError::InvalidArgument.into())
    }
}

/// `thread_create_stopped(space)` (CREATE): a thread that runs only after
/// `thread_set_state` and `thread_resume` (to rebuild a thread from state).
pub(super) fn thread_create_stopped(space: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    let t = target.spawn_stopped_thread(sched::UserRegisters { rflags: 0x202, ..Default::default() })?;
    match me.insert(Object::Thread(t.clone()), Rights::ALL) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            sched::kill(&t);
            Err(e.into())
        }
    }
}

pub(super) fn stopped_thread(h: u64, right: Rights) -> Result<alloc::sync::Arc<sched::Thread>, SysError> {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), right)?;
    if t.has_exited() {
        return Err(SysError::Dead);
    }
    if !t.is_stopped() {
        return Err(SysError::WouldBlock);
    }
    Ok(t)
}

/// A thread's user registers as the state record orders them.
pub(super) fn read_registers(t: &sched::Thread) -> (sched::UserRegisters, bool) {
    match t.stopped_frame() {
        // SAFETY: the thread is stopped, so its frame sits unchanged on its kernel stack.
        Some((addr, kind)) => unsafe { crate::arch::x86_64::context::read_user_frame(addr, kind) },
        None => (t.pending_start().lock().unwrap_or_default(), false),
    }
}

/// `thread_get_state(thread, buf, len)` (GET_STATE, thread stopped): writes
/// the version-1 state record (152 bytes): word 0 = version 1 | flags << 32
/// (flag bit 0: stopped in a system call, so rcx/r11 hold rip/rflags), then
/// rax rbx rcx rdx rsi rdi rbp rsp r8..r15, rip, rflags.
pub(super) fn thread_get_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < THREAD_STATE_BYTES {
        return Err(SysError::BadSize.into());
    }
    let t = stopped_thread(h, Rights::GET_STATE)?;
    let (regs, in_syscall) = read_registers(&t);
    let version = if len >= THREAD_STATE_V2_BYTES { 2 } else { 1 };
    let mut words = [0u64; 19];
    words[0] = version | ((in_syscall as u64) << 32);
    words[1..17].copy_from_slice(&regs.gpr);
    words[17] = regs.rip;
    words[18] = regs.rflags;
    let mut bytes = [0u8; 152];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_user(buf, &bytes).map_err(|()| SysError::BadPointer)?;
    if version == 1 {
        return Ok(THREAD_STATE_BYTES as i64);
    }
    let area = t.saved_fpu().ok_or(SysError::WouldBlock)?;
    copy_to_user(buf + THREAD_STATE_BYTES, &area.0).map_err(|()| SysError::BadPointer)?;
    Ok(THREAD_STATE_V2_BYTES as i64)
}

/// `thread_set_state(thread, buf, len)` (SET_STATE, thread stopped):
/// replaces the thread's registers with a version-1 record. rip and rsp
/// must be user addresses; rflags is sanitized (IF on; IOPL, NT, AC off).
pub(super) fn thread_set_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < THREAD_STATE_BYTES {
        return Err(SysError::BadSize.into());
    }
    let mut bytes = [0u8; 152];
    copy_from_user(&mut bytes, buf).map_err(|()| SysError::BadPointer)?;
    let mut w = [0u64; 19];
    for (word, chunk) in w.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    let fpu_state = match w[0] as u32 {
        1 => None,
        2 if len >= THREAD_STATE_V2_BYTES => {
            let mut area = fpu::FpuArea([0; fpu::AREA_BYTES]);
            copy_from_user(&mut area.0, buf + THREAD_STATE_BYTES).map_err(|()| SysError::BadPointer)?;
            // An MXCSR with bits this CPU lacks would fault on the load.
            if !area.loadable() {
                return Err(SysError::InvalidArgument.into());
            }
            Some(area)
        }
        2 => return Err(SysError::BadSize.into()),
        _ => return Err(SysError::InvalidArgument.into()),
    };
    let mut gpr = [0u64; 16];
    gpr.copy_from_slice(&w[1..17]);
    let (rip, rflags) = (w[17], crate::arch::x86_64::context::sanitize_user_rflags(w[18]));
    if rip >= crate::arch::paging::USER_TOP || gpr[7] > crate::arch::paging::USER_TOP {
        return Err(SysError::BadPointer.into());
    }
    let t = stopped_thread(h, Rights::SET_STATE)?;
    if let Some(area) = &fpu_state {
        if !t.set_saved_fpu(area) {
            return Err(SysError::WouldBlock.into());
        }
    }
    let regs = sched::UserRegisters { gpr, rip, rflags };
    match t.stopped_frame() {
        // SAFETY: the thread is stopped; its frame is ours to rewrite, and
        // the registers were validated above.
        Some((addr, kind)) => unsafe { crate::arch::x86_64::context::write_user_frame(addr, kind, &regs) },
        None => *t.pending_start().lock() = Some(regs),
    }
    Ok(0)
}

/// `thread_set_scheduler(thread, port)` (SET_STATE; port SEND, 0 clears):
/// each time the thread uses up a time slice, the port receives the one-way
/// message `[4, cpu, tick, 0, 0, 0]` (the port's alias tells a user-level
/// scheduler which thread it is).
pub(super) fn thread_set_scheduler(h: u64, port: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    let port = optional_port(&me, port)?;
    t.set_scheduler(port);
    Ok(0)
}

/// `thread_set_donation_only(thread, on)` (SET_STATE): with 1 the thread
/// runs only on time a scheduler donates with `thread_donate`, and each
/// time it becomes runnable on its own its scheduler port gets the one-way
/// message `[5, cpu, tick, 0, 0, 0]`; 0 returns it to the run queues.
pub(super) fn thread_set_donation_only(h: u64, on: u64) -> SysResult {
    if on > 1 {
        return Err(SysError::InvalidArgument.into());
    }
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    sched::set_donation_only(&t, on == 1);
    Ok(0)
}

/// `thread_donate(thread)` (SET_STATE): runs the runnable donation-only
/// thread on the caller's CPU and time until it blocks (0), uses up its
/// slice or yields (1: still runnable), exits (2) or stops (3).
pub(super) fn thread_donate(h: u64) -> SysResult {
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    drop(me);
    match sched::donate(&t) {
        Ok(end) => Ok(end as i64),
        Err(sched::DonateError::Invalid) => Err(SysError::InvalidArgument.into()),
        Err(sched::DonateError::NotRunnable) => Err(SysError::WouldBlock.into()),
        Err(sched::DonateError::Exited) => Err(SysError::Dead.into()),
        Err(sched::DonateError::Interrupted) => Err(interrupted()),
    }
}

/// `thread_set_priority(thread, priority)` (SET_STATE): 0..=63, higher runs
/// first; user threads start at 16.
pub(super) fn thread_set_priority(h: u64, priority: u64) -> SysResult {
    if priority > crate::sched::runqueue::MAX_PRIORITY as u64 {
        return Err(SysError::InvalidArgument.into());
    }
    let me = caller()?;
    let t = me.lookup_thread(Handle::from_raw(h), Rights::SET_STATE)?;
    t.set_priority(priority as u8);
    Ok(0)
}
