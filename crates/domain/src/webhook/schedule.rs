//! When a failed delivery is tried again.
//!
//! A fixed schedule rather than pure exponential backoff: quick retries for blips, then hours apart
//! so an endpoint that is down for a working day still gets the event once it is back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

/// Delays after the 1st, 2nd, … failed attempt: 1 min, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 10 h (9 attempts, ~37.6 h window).
pub const RETRY_DELAYS: [Duration; 8] = [
    Duration::from_secs(MINUTE),
    Duration::from_secs(5 * MINUTE),
    Duration::from_secs(30 * MINUTE),
    Duration::from_secs(2 * HOUR),
    Duration::from_secs(5 * HOUR),
    Duration::from_secs(10 * HOUR),
    Duration::from_secs(10 * HOUR),
    Duration::from_secs(10 * HOUR),
];

/// The first attempt plus one per entry of [`RETRY_DELAYS`].
pub const MAX_ATTEMPTS: u32 = RETRY_DELAYS.len() as u32 + 1;

/// The most a receiver's `Retry-After` can push a retry back: one answer must not park an event
/// for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * HOUR);

/// Sum of [`RETRY_DELAYS`]: how long after the first attempt the last one happens (before jitter).
pub fn retry_window() -> Duration {
    RETRY_DELAYS.iter().sum()
}

/// When to try again after `failed_attempts` (>= 1) failed attempts, or None when retries are exhausted.
/// Jitter: the scheduled delay times (0.9 + 0.2 * jitter), jitter in [0, 1) (clamp out-of-range and NaN). A receiver's Retry-After (capped at MAX_RETRY_AFTER) is honoured as a minimum.
///
/// `failed_attempts == 0` (no attempt has failed, a caller's mistake) is treated as 1. A NaN
/// jitter counts as 0.5 (the scheduled delay exactly).
pub fn next_retry(
    failed_attempts: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let index = failed_attempts.max(1) - 1;
    let scheduled = *RETRY_DELAYS.get(usize::try_from(index).ok()?)?;
    let jitter = if jitter.is_nan() {
        0.5
    } else {
        // 1.0 itself is out of range, but floating point cannot tell 0.9 + 0.2 * 0.999… from 1.1
        // anyway: the delay is within ±10 % of the schedule.
        jitter.clamp(0.0, 1.0)
    };
    // ±10 %: deliveries that failed together (an endpoint outage) spread out when it comes back.
    let delay = scheduled.mul_f64(0.9 + 0.2 * jitter);
    let floor = retry_after.map_or(Duration::ZERO, |r| r.min(MAX_RETRY_AFTER));
    Some(delay.max(floor))
}

/// Retry-After as delta-seconds or an HTTP-date (IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT"), relative to now (unix seconds); None when unparsable; a past date is Duration::ZERO.
///
/// The obsolete HTTP-date forms (RFC 850, asctime) are accepted too, as RFC 9110 asks of
/// recipients. Delta-seconds too large for a `u64` saturate (the caller caps them anyway).
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    // httpdate only produces dates from 1970 on, so this is never before the epoch.
    let date_unix = date.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let now = u64::try_from(now_unix).unwrap_or(0);
    Some(Duration::from_secs(date_unix.saturating_sub(now)))
}

/// `SystemTime` to unix seconds for [`parse_retry_after`]'s `now_unix`, for callers holding a
/// `SystemTime` (times before 1970 count as 0).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn schedule_is_nine_attempts_over_37_6_hours() {
        assert_eq!(MAX_ATTEMPTS, 9);
        assert_eq!(retry_window(), s(135_360));
        assert_eq!(retry_window().as_secs_f64() / 3600.0, 37.6);
    }

    #[test]
    fn without_jitter_the_schedule_is_exact() {
        let want = [60, 300, 1800, 7200, 18_000, 36_000, 36_000, 36_000];
        for (i, secs) in want.into_iter().enumerate() {
            let failed = i as u32 + 1;
            assert_eq!(
                next_retry(failed, 0.5, None),
                Some(s(secs)),
                "after {failed} failures"
            );
        }
    }

    #[test]
    fn retries_end_after_the_ninth_attempt() {
        assert!(next_retry(8, 0.5, None).is_some());
        for failed in [9, 10, 1000, u32::MAX] {
            assert_eq!(next_retry(failed, 0.5, None), None, "{failed}");
            assert_eq!(next_retry(failed, 0.5, Some(s(5))), None, "{failed}");
        }
    }

    #[test]
    fn zero_failures_is_treated_as_one() {
        assert_eq!(next_retry(0, 0.5, None), Some(s(60)));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(next_retry(1, 0.0, None), Some(s(54)));
        assert_eq!(next_retry(2, 0.25, None), Some(s(285)));
        for jitter in [
            0.0,
            0.3,
            0.999,
            1.0,
            7.0,
            -3.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            for failed in 1..MAX_ATTEMPTS {
                let base = RETRY_DELAYS[failed as usize - 1];
                let got = next_retry(failed, jitter, None).unwrap();
                assert!(got >= base.mul_f64(0.9), "{failed} {jitter}: {got:?}");
                assert!(got <= base.mul_f64(1.1), "{failed} {jitter}: {got:?}");
            }
        }
        assert_eq!(next_retry(3, -1.0, None), Some(s(1620)));
        assert_eq!(next_retry(3, 5.0, None), Some(s(1980)));
        assert_eq!(next_retry(3, f64::NAN, None), Some(s(1800)));
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_ten_hours() {
        // Shorter than the schedule: the schedule wins.
        assert_eq!(next_retry(3, 0.5, Some(s(10))), Some(s(1800)));
        // Longer: the receiver wins.
        assert_eq!(next_retry(1, 0.5, Some(s(600))), Some(s(600)));
        assert_eq!(next_retry(1, 0.0, Some(s(55))), Some(s(55)));
        // Capped: a year becomes 10 h.
        assert_eq!(next_retry(1, 0.5, Some(s(365 * 86_400))), Some(s(36_000)));
        assert_eq!(next_retry(1, 0.5, Some(Duration::MAX)), Some(s(36_000)));
        // The cap does not shorten the schedule itself.
        assert_eq!(next_retry(6, 1.0, Some(Duration::MAX)), Some(s(39_600)));
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = 1_445_412_480;
        assert_eq!(parse_retry_after("120", now), Some(s(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(s(0)));
        assert_eq!(parse_retry_after("007", now), Some(s(7)));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(s(u64::MAX))
        );
        for bad in ["", "  ", "-5", "+5", "1.5", "1e3", "5s", "soon", "0x10"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480.
        let date_unix = 1_445_412_480;
        let imf = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(imf, date_unix - 90), Some(s(90)));
        assert_eq!(parse_retry_after(imf, date_unix), Some(s(0)));
        assert_eq!(
            parse_retry_after(imf, date_unix + 3600),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(imf, 0), Some(s(date_unix as u64)));
        assert_eq!(parse_retry_after(imf, -5), Some(s(date_unix as u64)));
        // The obsolete forms.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", date_unix - 1),
            Some(s(1))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:00 2015", date_unix - 1),
            Some(s(1))
        );
        for bad in [
            "Thu, 21 Oct 2015 07:28:00 GMT", // wrong weekday
            "Wed, 21 Oct 2015 07:28:00 UTC",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "21 Oct 2015 07:28:00 GMT",
            "2015-10-21T07:28:00Z",
            "Wed, 21 Oct 2015",
            "Wéd, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn unix_seconds_of_system_times() {
        assert_eq!(unix_seconds(UNIX_EPOCH + s(42)), 42);
        assert_eq!(unix_seconds(UNIX_EPOCH - s(42)), 0);
    }
}
