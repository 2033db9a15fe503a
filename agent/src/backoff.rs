//! Jittered exponential backoff for talking to a coordinator that is down: 1 s, 2 s, 4 s
//! ... up to a cap, each delay drawn at random from its upper half so a fleet that lost
//! its coordinator at the same moment does not come back at the same moment (no
//! thundering herd on recovery). The caller resets the failure count on success. With
//! several coordinators each failure also moves the agent to the next one
//! ([`crate::coordinators`]), so the first retry there comes after 0.5 to 1 s: a fleet
//! that loses one replica spreads over that second instead of arriving at once.
//!
//! Also the wait before a failed install of the same version is tried again
//! ([`install_retry`]): 5 s doubling to 10 minutes, so a release that cannot install
//! costs a few attempts an hour, not one every few seconds forever.

use std::time::Duration;

/// The first delay.
const BASE: Duration = Duration::from_secs(1);

/// The delay after `failures` consecutive failures (1 = the first), capped at `cap`,
/// with `random` choosing where in `[delay/2, delay]` it falls. Pure.
pub fn delay_with(failures: u32, cap: Duration, random: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let full = BASE
        .saturating_mul(1 << exponent)
        .min(cap)
        .max(Duration::from_millis(2));
    let half = full / 2;
    let span = u64::try_from((full - half).as_millis()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_millis(u64::from(random) % span)
}

/// The first wait before a failed install is tried again.
pub const INSTALL_RETRY_FIRST: Duration = Duration::from_secs(5);

/// The longest wait before a failed install is tried again.
pub const INSTALL_RETRY_CAP: Duration = Duration::from_secs(600);

/// The wait after the `attempts`-th failed install of one version (1 = the first): 5 s,
/// 10 s, 20 s ... up to 10 minutes. Pure; no jitter (it paces one host's own retries).
pub fn install_retry(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    INSTALL_RETRY_FIRST.saturating_mul(1 << exponent).min(INSTALL_RETRY_CAP)
}

/// The wait between requests while the coordinator refuses this host's certificate
/// (removed, or replaced by another join): about five minutes, jittered over 4-6 minutes.
/// Only a re-join helps then, and it restarts the agent; the requests only notice a
/// coordinator that takes the certificate again (a restored backup). Pure.
pub fn refused_retry_with(random: u32) -> Duration {
    Duration::from_secs(240) + Duration::from_millis(u64::from(random) % 120_000)
}

/// [`refused_retry_with`] with a random draw from the system's generator.
pub fn refused_retry() -> Duration {
    refused_retry_with(random())
}

fn random() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

/// [`delay_with`] with a random draw from the system's generator.
pub fn delay(failures: u32, cap: Duration) -> Duration {
    delay_with(failures, cap, random())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        let top = |failures| delay_with(failures, cap, u32::MAX - 1);
        assert!(top(1) <= Duration::from_secs(1));
        assert!(top(2) <= Duration::from_secs(2) && top(2) > Duration::from_secs(1));
        assert!(top(7) <= cap && top(7) >= cap / 2);
        assert!(top(1000) <= cap, "no overflow after many failures");
    }

    #[test]
    fn the_first_retry_after_a_failover_comes_within_a_second_but_not_at_once() {
        for random in [0, 1, 499, 500, u32::MAX / 2, u32::MAX] {
            let delay = delay_with(1, Duration::from_secs(60), random);
            assert!(
                delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn install_retries_double_from_five_seconds_to_ten_minutes() {
        let waits: Vec<u64> = (1..=9).map(|attempts| install_retry(attempts).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(install_retry(u32::MAX), INSTALL_RETRY_CAP, "no overflow");
    }

    #[test]
    fn a_refused_host_asks_every_four_to_six_minutes() {
        assert_eq!(refused_retry_with(0), Duration::from_secs(240));
        assert!(refused_retry_with(u32::MAX) < Duration::from_secs(360));
        assert!(refused_retry_with(u32::MAX) >= Duration::from_secs(240));
    }

    proptest! {
        #[test]
        fn every_delay_is_within_half_and_all_of_its_step(failures in 1u32..64, random in any::<u32>(), cap_s in 1u64..600) {
            let cap = Duration::from_secs(cap_s);
            let delay = delay_with(failures, cap, random);
            let full = BASE.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(cap);
            prop_assert!(delay >= full / 2 && delay <= full, "{delay:?} outside [{:?}, {full:?}]", full / 2);
        }
    }
}
