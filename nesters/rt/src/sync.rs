//! Mutex and condition variable that enter the kernel only when contended.
//!
//! The lock word lives in user memory; the kernel object (created with
//! `mutex_create` / `cond_create`) is only the queue contended threads
//! sleep on. Lock word states: 0 free, 1 held, 2 held with (possible) waiters.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::object::Handle;
use crate::{decode, nr, syscall0, syscall1, syscall2, syscall4, SysError};

pub struct Mutex<T> {
    word: AtomicU32,
    queue: Handle,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and guards are handed
// out one at a time by the lock protocol.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the value; the handle is a plain number.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    pub fn new(value: T) -> Result<Self, SysError> {
        // SAFETY: creates a kernel object; no memory arguments.
        let queue = Handle(decode(unsafe { syscall0(nr::MUTEX_CREATE) })?);
        Ok(Mutex { word: AtomicU32::new(0), queue, value: UnsafeCell::new(value) })
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        if self.word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            // Contended: mark it and sleep until the holder hands it over.
            while self.word.swap(2, Ordering::Acquire) != 0 {
                // SAFETY: the kernel reads the u32 at `word` (validated) and sleeps while it is 2.
                let _ = unsafe { syscall4(nr::MUTEX_WAIT, self.queue.0, self.word.as_ptr() as u64, 2, 0) };
            }
        }
        MutexGuard { mutex: self }
    }

    fn unlock(&self) {
        if self.word.swap(0, Ordering::Release) == 2 {
            // SAFETY: wakes one sleeper; no memory arguments.
            let _ = unsafe { syscall2(nr::MUTEX_WAKE, self.queue.0, 1) };
        }
    }
}

pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

impl<T> Drop for Mutex<T> {
    /// Closes the kernel half: a program that makes and drops mutexes does
    /// not run out of handles.
    fn drop(&mut self) {
        // SAFETY: closes this mutex's own handle; nothing else uses it.
        let _ = unsafe { syscall1(nr::HANDLE_CLOSE, self.queue.0) };
    }
}

impl<T> core::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> core::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, and it is unique.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

pub struct Cond {
    sequence: AtomicU32,
    queue: Handle,
}

impl Drop for Cond {
    /// Closes the kernel half, as `Mutex` does.
    fn drop(&mut self) {
        // SAFETY: closes this condition variable's own handle.
        let _ = unsafe { syscall1(nr::HANDLE_CLOSE, self.queue.0) };
    }
}

impl Cond {
    pub fn new() -> Result<Self, SysError> {
        // SAFETY: creates a kernel object; no memory arguments.
        let queue = Handle(decode(unsafe { syscall0(nr::COND_CREATE) })?);
        Ok(Cond { sequence: AtomicU32::new(0), queue })
    }

    /// Releases the guard's mutex, sleeps until signalled (or spuriously),
    /// and takes the mutex again.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let seen = self.sequence.load(Ordering::Acquire);
        let mutex = guard.mutex;
        drop(guard);
        // SAFETY: the kernel sleeps only while the sequence is still `seen`.
        let _ = unsafe { syscall4(nr::COND_WAIT, self.queue.0, self.sequence.as_ptr() as u64, seen as u64, 0) };
        mutex.lock()
    }

    pub fn notify_one(&self) {
        self.sequence.fetch_add(1, Ordering::Release);
        // SAFETY: no memory arguments.
        let _ = unsafe { syscall2(nr::COND_WAKE, self.queue.0, 1) };
    }

    pub fn notify_all(&self) {
        self.sequence.fetch_add(1, Ordering::Release);
        // SAFETY: no memory arguments.
        let _ = unsafe { syscall2(nr::COND_WAKE, self.queue.0, u32::MAX as u64) };
    }
}
