//! A per-queue ownership flag shared by one polling core and the control thread.
//!
//! Each virtqueue is owned, burst by burst, by whoever holds its [`QueueCell`]: the
//! polling core takes it with one uncontended compare-and-swap per burst (never per
//! packet) and the control thread spins for it while it applies a protocol message
//! (`SET_MEM_TABLE`, `GET_VRING_BASE`, ...). This is the DPDK `access_lock` idea without
//! an OS mutex: the fast path never sleeps and never makes a system call for it.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A value that one thread at a time may use; see the module docs.
pub struct QueueCell<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by the `busy` flag (acquire on take, release
// on give back), so the cell hands `T` from thread to thread like a mutex does.
unsafe impl<T: Send> Sync for QueueCell<T> {}
// SAFETY: moving the cell moves the owned `T`, which is `Send`.
unsafe impl<T: Send> Send for QueueCell<T> {}

impl<T> QueueCell<T> {
    /// Wraps `value`, initially free.
    pub const fn new(value: T) -> Self {
        QueueCell {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the cell if it is free (one compare-and-swap); for the polling core.
    #[inline]
    pub fn try_lock(&self) -> Option<QueueGuard<'_, T>> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(QueueGuard { cell: self })
        } else {
            None
        }
    }

    /// Takes the cell, spinning and then yielding until it is free; for the control
    /// thread and for a polling core that shares a transmit queue with another core.
    pub fn lock(&self) -> QueueGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Proof of ownership of a [`QueueCell`]; gives the cell back when dropped.
pub struct QueueGuard<'a, T> {
    cell: &'a QueueCell<T>,
}

impl<T> std::ops::Deref for QueueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `busy` is held by this thread.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> std::ops::DerefMut for QueueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while `busy` is held by this thread, and
        // `&mut self` makes this the only reference handed out through it.
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for QueueGuard<'_, T> {
    fn drop(&mut self) {
        self.cell.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn try_lock_fails_while_held() {
        let c = QueueCell::new(1u32);
        let g = c.try_lock().expect("free cell");
        assert!(c.try_lock().is_none());
        drop(g);
        assert!(c.try_lock().is_some());
    }

    #[test]
    fn two_threads_never_lose_an_increment() {
        let c = Arc::new(QueueCell::new(0u64));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        *c.lock() += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("thread");
        }
        assert_eq!(*c.lock(), 200_000);
    }
}
