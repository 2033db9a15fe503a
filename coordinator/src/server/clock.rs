//! The coordinator's time, passed in. The service never reads the wall clock itself: every
//! "now" (token expiry, manifest issue and refresh, rollout bake and deadlines, when a
//! host was last seen) comes from the [`Clock`] it was started with. `serve` gives it the
//! [`SystemClock`]; tests give it a [`ManualClock`] and move time on by hand, so timing
//! is tested without sleeping.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

use drover_protocol::{Duration, Timestamp};

/// Where the coordinator reads the time.
pub trait Clock: Send + Sync + Debug {
    /// The current time (whole seconds).
    fn now(&self) -> Timestamp;

    /// How long a task should sleep, in real time, until this clock reaches `at` (zero
    /// when it has). Only timers use this: what is due is always decided by [`Clock::now`].
    fn until(&self, at: Timestamp) -> std::time::Duration {
        let seconds = at.unix().saturating_sub(self.now().unix()).max(0);
        std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }

    /// To the millisecond, plus a little, so that `now()` (whole seconds) has reached `at`
    /// when the sleep ends.
    fn until(&self, at: Timestamp) -> std::time::Duration {
        let now_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis());
        let at_millis = u128::try_from(at.unix()).unwrap_or(0) * 1000;
        let millis = u64::try_from(at_millis.saturating_sub(now_millis)).unwrap_or(u64::MAX);
        std::time::Duration::from_millis(millis.saturating_add(20))
    }
}

/// A clock that stands still until told to move: for tests of everything that depends on
/// time (expiry, refresh, bake, deadlines), without sleeping.
#[derive(Debug)]
pub struct ManualClock {
    /// Unix seconds.
    now: AtomicI64,
}

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Timestamp) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(at.unix()),
        }
    }

    /// Sets the time (backwards too: a clock step is what tests may want to show).
    pub fn set(&self, at: Timestamp) {
        self.now.store(at.unix(), Ordering::SeqCst);
    }

    /// Moves the time on by `duration` (whole seconds; a part of a second is dropped).
    pub fn advance(&self, duration: Duration) {
        let seconds = i64::try_from(duration.as_millis() / 1000).unwrap_or(i64::MAX);
        self.now.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, ManualClock, SystemClock};
    use drover_protocol::{Duration, Timestamp};

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = Timestamp::from_unix(1_800_000_000);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), Timestamp::from_unix(1_800_000_090));
        clock.advance(Duration::from_millis(999));
        assert_eq!(
            clock.now(),
            Timestamp::from_unix(1_800_000_090),
            "parts of a second are dropped"
        );
        assert_eq!(clock.until(start), std::time::Duration::ZERO, "a past time is due");
        assert_eq!(
            clock.until(Timestamp::from_unix(1_800_000_100)),
            std::time::Duration::from_secs(10)
        );
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn the_system_clock_sleeps_just_past_the_second_it_waits_for() {
        let clock = SystemClock;
        let now = clock.now();
        assert_eq!(
            clock.until(now.minus(Duration::from_secs(10))),
            std::time::Duration::from_millis(20)
        );
        let ahead = clock.until(now.plus(Duration::from_secs(3)));
        assert!(
            ahead > std::time::Duration::from_secs(1) && ahead <= std::time::Duration::from_millis(3020),
            "{ahead:?}"
        );
    }
}
