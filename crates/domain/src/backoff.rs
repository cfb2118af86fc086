//! Retry delays for requeued jobs: exponential from a base, capped, with bounded jitter.

use std::time::Duration;

/// Delay before attempt `attempt + 1` may start, after `attempt` (1-based) failed.
///
/// `jitter` is a number in `[0, 1)` supplied by the caller (so this stays pure); it adds up to
/// 25% of the delay so that jobs failed together do not come back together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let jitter = jitter.clamp(0.0, 0.999_999);
    raw + raw.mul_f64(0.25 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let s = Duration::from_secs;
        let cases = [
            (0, 0.0, s(1)),
            (1, 0.0, s(1)),
            (2, 0.0, s(2)),
            (3, 0.0, s(4)),
            (6, 0.0, s(32)),
            (7, 0.0, s(60)),
            (1_000, 0.0, s(60)),
            (u32::MAX, 0.0, s(60)),
            (3, 0.5, Duration::from_millis(4_500)),
            (7, 2.0, Duration::from_secs_f64(60.0 + 15.0 * 0.999_999)),
        ];
        for (attempt, jitter, want) in cases {
            assert_eq!(
                backoff(attempt, s(1), s(60), jitter),
                want,
                "attempt {attempt} jitter {jitter}"
            );
        }
    }
}
