//! Locks that a panic does not poison. The service keeps its shared maps (slots, the latest
//! reports, admin tokens, hosts whose report changed) behind std locks, held for a map
//! operation and never across an `.await`. With std's poisoning, one request that panicked
//! while holding one (a bug anywhere in that section) would make every later request that
//! takes it panic too, while `/healthz` still answered ok: one bug, a dead coordinator.
//!
//! Why recovering the guard is sound here: every section under these locks either only
//! reads, or makes its change in one step that cannot unwind halfway (an insert, a remove,
//! a `mem::take`, assignments of values computed before the lock was taken; running out of
//! memory aborts rather than unwinds). So a panic while a guard is held leaves the value
//! as it was before the section or as the section left it, never half-changed, and the
//! next holder may use it. Keep it so: compute first, then take the lock and store.

use std::sync::{MutexGuard, PoisonError, RwLockReadGuard, RwLockWriteGuard};

/// A mutex whose `lock` recovers from poisoning (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(super) fn new(value: T) -> Mutex<T> {
        Mutex(std::sync::Mutex::new(value))
    }

    /// Blocks until the lock is free; a panic of an earlier holder is not an error.
    pub(super) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reader-writer lock whose `read` and `write` recover from poisoning (see the module
/// documentation).
#[derive(Debug, Default)]
pub(super) struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub(super) fn new(value: T) -> RwLock<T> {
        RwLock(std::sync::RwLock::new(value))
    }

    /// Shared access; a panic of an earlier holder is not an error.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive access; a panic of an earlier holder is not an error.
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::{Mutex, RwLock};

    #[test]
    fn a_panic_while_holding_the_lock_does_not_make_the_next_call_fail() {
        let mutex = Mutex::new(vec![1]);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let mut numbers = mutex.lock();
            numbers.push(2);
            panic!("a bug while holding the lock");
        }));
        assert!(panicked.is_err());
        assert_eq!(*mutex.lock(), [1, 2], "the completed change is kept");

        let lock = RwLock::new(String::from("before"));
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let _writing = lock.write();
            panic!("a bug while writing");
        }));
        assert!(panicked.is_err());
        assert_eq!(*lock.read(), "before");
        lock.write().push_str(", after");
        assert_eq!(*lock.read(), "before, after");
    }
}
