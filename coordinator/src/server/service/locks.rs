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
//!
//! The fleet model's async lock is another matter: its holders change the model, commit,
//! and put it back if the commit fails, over several steps. [`ModelGuard`] covers it: a
//! panic while it is held marks the model unsettled, and the next holder loads it again
//! from the store.

use std::ops::{Deref, DerefMut};
use std::sync::{MutexGuard, PoisonError, RwLockReadGuard, RwLockWriteGuard};

use super::{Coordinator, Model};
use crate::server::store::ModelLock;

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

/// The model's lock as every operation takes it ([`Coordinator::model`]). The model (the
/// fleet, the rendering state, the active rollouts) is changed in memory, committed, and
/// put back if the commit fails: a panic halfway (a bug) would leave a change in memory
/// that was never committed, and tokio's mutex does not poison, so later requests would
/// build on it. This guard marks the model unsettled when a panic drops it, and the next
/// holder loads the model again from the store, which holds only committed changes.
#[derive(Debug)]
pub(super) struct ModelGuard<'a>(
    tokio::sync::MutexGuard<'a, Model>,
    /// The database's model lock, held as long as the guard (PostgreSQL; `None` on
    /// SQLite, or when the database could not be reached: the write then fails on its own).
    #[expect(dead_code, reason = "held for its drop, which releases the database's lock")]
    Option<ModelLock>,
);

impl Deref for ModelGuard<'_> {
    type Target = Model;

    fn deref(&self) -> &Model {
        &self.0
    }
}

impl DerefMut for ModelGuard<'_> {
    fn deref_mut(&mut self) -> &mut Model {
        &mut self.0
    }
}

impl Drop for ModelGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.unsettled = true;
        }
    }
}

impl Coordinator {
    /// Takes the model's lock: the in-process mutex, then (PostgreSQL) the database's
    /// model lock, so that changes through all replicas happen one at a time. Loads the
    /// model again from the store first when it is not the one committed: the last holder
    /// panicked, or another replica changed the model since this one read it (a failed
    /// load is logged and tried again by the next holder).
    pub(super) async fn model(&self) -> ModelGuard<'_> {
        self.model_caught_up(false).await
    }

    /// [`Coordinator::model`], loading the model again in any case when `reload` (the
    /// change listener lost notifications).
    pub(super) async fn model_caught_up(&self, reload: bool) -> ModelGuard<'_> {
        let mut guard = self.model.lock().await;
        let database = match self.store.lock_model().await {
            Ok(lock) => Some(lock),
            Err(error) => {
                tracing::error!(%error, "could not take the database's model lock; a change now fails unless the database is back");
                None
            }
        };
        let behind = database
            .as_ref()
            .is_some_and(|lock| lock.generation() != self.store.seen_generation());
        if guard.unsettled || behind || reload {
            let panicked = guard.unsettled;
            let why = if panicked {
                "a request panicked while holding the fleet model"
            } else {
                "another coordinator changed the fleet model"
            };
            // Another replica's change needs only what was written since this replica
            // last read; a panic or lost notifications need everything.
            let since = (!panicked && !reload).then(|| self.store.seen_generation());
            match self.reload_model(&mut guard, since).await {
                Ok(()) if panicked => tracing::warn!("{why}; it was loaded again from the store"),
                Ok(()) => tracing::debug!("{why}; it was loaded again from the store"),
                Err(error) => {
                    // Tried again by the next holder: still unsettled after a panic, and
                    // still behind the database's generation otherwise.
                    tracing::error!(%error, "loading the fleet model again failed ({why}); the next request tries again");
                }
            }
        }
        ModelGuard(guard, database)
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

    #[tokio::test]
    async fn a_request_that_panicked_halfway_through_a_change_leaves_no_trace_of_it() {
        use drover_protocol::api::{Pin, Scope};
        use futures_util::FutureExt as _;

        use crate::server::service::testing::{coordinator, name, operator};

        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let panicked = AssertUnwindSafe(async {
            let mut model = service.model().await;
            model.fleet.pins.insert((name("web"), Scope::Fleet), name("1.0.0"));
            panic!("a bug after changing the model, before the commit");
        })
        .catch_unwind()
        .await;
        assert!(panicked.is_err());
        let status = service.status().await;
        let web = status.apps.get(&name("web")).expect("web has a release");
        assert_eq!(web.fleet_pin, None, "the uncommitted pin is gone");
        assert_eq!(web.desired_hosts, 0);
        // The same pin made properly changes the host: memory did not claim it already.
        let pin = Pin {
            app: name("web"),
            version: name("1.0.0"),
            scope: Scope::Fleet,
        };
        assert_eq!(service.pin(pin, &operator(), None).await.expect("pin").hosts_changed, 1);
        assert_eq!(service.pins(None).await.expect("pins").pins.len(), 1);
    }

    /// A panic between a commit and the host slots (a join whose slot was never made, a
    /// removal whose slot stayed): the next change loads the model again and mends the
    /// slots from the store, so the joined host is served and the removed one is not.
    #[tokio::test]
    async fn a_panic_between_a_commit_and_the_host_slots_is_mended_from_the_store() {
        use futures_util::FutureExt as _;

        use crate::server::service::testing::{coordinator, name, operator};

        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.join("web-2", &[]).await;
        let stale = service.slots.read().get(&name("web-1")).cloned().expect("web-1's slot");
        let panicked = AssertUnwindSafe(async {
            let _model = service.model().await;
            // As if web-2's join committed and panicked before making its slot ...
            service.slots.write().remove(&name("web-2"));
            panic!("a bug between a commit and the slots");
        })
        .catch_unwind()
        .await;
        assert!(panicked.is_err());
        // ... and web-1's removal committed, with its slot left behind by a second panic.
        service
            .remove_host(&name("web-1"), &operator(), None)
            .await
            .expect("remove web-1");
        service.slots.write().insert(name("web-1"), stale);
        let panicked = AssertUnwindSafe(async {
            let _model = service.model().await;
            panic!("another bug");
        })
        .catch_unwind()
        .await;
        assert!(panicked.is_err());

        service.status().await;
        let slots = service.slots.read();
        assert!(slots.contains_key(&name("web-2")), "the joined host has its slot again");
        assert!(!slots.contains_key(&name("web-1")), "the removed host's slot is gone");
        assert_eq!(slots.len(), 1);
    }
}
