//! When an endpoint that keeps failing is disabled (a circuit breaker that stays open until its
//! owner re-enables the endpoint).
//!
//! Both a count and a time span must be reached: ten failures in a burst (one bad deploy
//! answering 500 to a burst of events) do not disable an endpoint, nor does one failure a day.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts (no success in between) needed to disable.
    pub failures: u32,
    /// How long before now the first of them must have been.
    pub min_span: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: 10,
            min_span: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointHealth {
    pub consecutive_failures: u32,
    /// When the first of the current run of failures ended; None while healthy.
    pub failing_since: Option<SystemTime>,
}

/// The endpoint's health after an attempt ended at `now`, and whether to disable it: `policy.failures` consecutive failed attempts (no success in between) whose first was at least `min_span` before `now`. A success resets it.
///
/// A clock that went backwards (`now` before `failing_since`) counts as no time passed, so it
/// cannot disable an endpoint early.
pub fn after_attempt(
    health: EndpointHealth,
    succeeded: bool,
    now: SystemTime,
    policy: &BreakerPolicy,
) -> (EndpointHealth, bool) {
    if succeeded {
        return (EndpointHealth::default(), false);
    }
    // A run starts at its first failure. Stored health that is inconsistent (a count without a
    // start, or a start without a count; should not happen) starts a new run rather than being
    // trusted to date one.
    let (consecutive_failures, failing_since) = match health.failing_since {
        Some(since) if health.consecutive_failures > 0 => {
            (health.consecutive_failures.saturating_add(1), since)
        }
        _ => (1, now),
    };
    let span = now.duration_since(failing_since).unwrap_or(Duration::ZERO);
    let disable = consecutive_failures >= policy.failures && span >= policy.min_span;
    (
        EndpointHealth {
            consecutive_failures,
            failing_since: Some(failing_since),
        },
        disable,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// Feeds `failures` failures, one every `every` seconds starting at 0; returns the final health
    /// and the index (0-based) of the first failure that said "disable".
    fn fail_every(
        failures: u32,
        every: u64,
        policy: &BreakerPolicy,
    ) -> (EndpointHealth, Option<u32>) {
        let mut health = EndpointHealth::default();
        let mut disabled_at = None;
        for i in 0..failures {
            let (next, disable) = after_attempt(health, false, at(u64::from(i) * every), policy);
            health = next;
            if disable && disabled_at.is_none() {
                disabled_at = Some(i);
            }
        }
        (health, disabled_at)
    }

    #[test]
    fn default_policy_is_ten_failures_over_an_hour() {
        let p = BreakerPolicy::default();
        assert_eq!(p.failures, 10);
        assert_eq!(p.min_span, Duration::from_secs(3600));
    }

    #[test]
    fn first_failure_starts_the_run() {
        let (h, disable) = after_attempt(
            EndpointHealth::default(),
            false,
            at(5),
            &BreakerPolicy::default(),
        );
        assert_eq!(
            h,
            EndpointHealth {
                consecutive_failures: 1,
                failing_since: Some(at(5))
            }
        );
        assert!(!disable);
    }

    #[test]
    fn a_burst_of_failures_does_not_disable() {
        let (h, disabled_at) = fail_every(50, 60, &BreakerPolicy::default());
        // 50 failures a minute apart span 49 min.
        assert_eq!(h.consecutive_failures, 50);
        assert_eq!(h.failing_since, Some(at(0)));
        assert_eq!(disabled_at, None);
    }

    #[test]
    fn ten_failures_over_an_hour_disable() {
        // 10 minutes apart: the span is reached at the 7th failure, the count at the 10th.
        assert_eq!(fail_every(12, 600, &BreakerPolicy::default()).1, Some(9));
        // 2 hours apart: the count is what is missing until the 10th.
        assert_eq!(fail_every(10, 7200, &BreakerPolicy::default()).1, Some(9));
        assert_eq!(fail_every(9, 7200, &BreakerPolicy::default()).1, None);
        // A minute apart: the count is reached at once, the span after 60 minutes.
        assert_eq!(fail_every(70, 60, &BreakerPolicy::default()).1, Some(60));
    }

    #[test]
    fn a_success_resets_the_run() {
        let policy = BreakerPolicy::default();
        let (h, _) = fail_every(9, 7200, &policy);
        let (h, disable) = after_attempt(h, true, at(9 * 7200), &policy);
        assert_eq!(h, EndpointHealth::default());
        assert!(!disable);
        let (h, disable) = after_attempt(h, false, at(10 * 7200), &policy);
        assert_eq!(h.consecutive_failures, 1);
        assert_eq!(h.failing_since, Some(at(10 * 7200)));
        assert!(!disable);
    }

    #[test]
    fn clock_going_backwards_does_not_disable() {
        let policy = BreakerPolicy {
            failures: 2,
            min_span: Duration::from_secs(60),
        };
        let h = EndpointHealth {
            consecutive_failures: 5,
            failing_since: Some(at(1000)),
        };
        let (h2, disable) = after_attempt(h, false, at(10), &policy);
        assert!(!disable);
        assert_eq!(h2.failing_since, Some(at(1000)));
        assert_eq!(h2.consecutive_failures, 6);
    }

    #[test]
    fn inconsistent_stored_health_is_repaired() {
        let policy = BreakerPolicy::default();
        // A count without a start: the run restarts now.
        let h = EndpointHealth {
            consecutive_failures: 40,
            failing_since: None,
        };
        let (h, disable) = after_attempt(h, false, at(100_000), &policy);
        assert_eq!(
            h,
            EndpointHealth {
                consecutive_failures: 1,
                failing_since: Some(at(100_000))
            }
        );
        assert!(!disable);
        // A start without a count: not trusted to date the run.
        let h = EndpointHealth {
            consecutive_failures: 0,
            failing_since: Some(at(0)),
        };
        let (h, _) = after_attempt(h, false, at(100_000), &policy);
        assert_eq!(
            h,
            EndpointHealth {
                consecutive_failures: 1,
                failing_since: Some(at(100_000))
            }
        );
    }

    #[test]
    fn count_saturates() {
        let h = EndpointHealth {
            consecutive_failures: u32::MAX,
            failing_since: Some(at(0)),
        };
        let (h, disable) = after_attempt(h, false, at(7200), &BreakerPolicy::default());
        assert_eq!(h.consecutive_failures, u32::MAX);
        assert!(disable);
    }
}
