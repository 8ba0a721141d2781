//! Mutex and condition variable calls: the kernel halves of user-level
//! locks (wait while a word holds a value, wake).

use super::*;

/// `mutex_create()` / `cond_create()`: a new wait object in the caller's space.
pub(super) fn waitqueue_create(cond: bool) -> SysResult {
    let me = caller()?;
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    let q = alloc::sync::Arc::new(sched::WaitQueue::new(if cond { sched::WaitReason::Cond } else { sched::WaitReason::Mutex }));
    let object = if cond { Object::Cond(q) } else { Object::Mutex(q) };
    Ok(me.insert(object, Rights::ALL)?.raw() as i64)
}

/// `mutex_wait(m, addr, expected)` / `cond_wait(c, addr, expected)`: blocks
/// while the aligned u32 at `addr` (the user half of the lock or condition)
/// equals `expected`, checked atomically with respect to `*_wake`. Returns 0
/// after a wake-up (possibly spurious), `WouldBlock` if the word differed.
pub(super) fn waitqueue_wait(cond: bool, h: u64, addr: u64, expected: u64) -> SysResult {
    if !addr.is_multiple_of(4) {
        return Err(SysError::BadPointer.into());
    }
    let expected = u32::try_from(expected).map_err(|_| SysError::InvalidArgument)?;
    let me = caller()?;
    let q = me.lookup_waitqueue(Handle::from_raw(h), cond)?;
    let mut word = [0u8; 4];
    copy_from_user(&mut word, addr).map_err(|()| SysError::BadPointer)?;
    let mut fault = false;
    let blocked = q.wait_if(|| {
        // Re-read under the queue lock: a waker changes the word before waking.
        if copy_from_user(&mut word, addr).is_err() {
            fault = true;
            return false;
        }
        u32::from_le_bytes(word) == expected
    });
    if fault {
        return Err(SysError::BadPointer.into());
    }
    if blocked {
        Ok(0)
    } else {
        Err(SysError::WouldBlock.into())
    }
}

/// `mutex_wake(m, count)` / `cond_wake(c, count)`: wakes up to `count`
/// waiters; returns how many were woken.
pub(super) fn waitqueue_wake(cond: bool, h: u64, count: u64) -> SysResult {
    let me = caller()?;
    let q = me.lookup_waitqueue(Handle::from_raw(h), cond)?;
    Ok(q.wake(count.min(i64::MAX as u64) as usize) as i64)
}
