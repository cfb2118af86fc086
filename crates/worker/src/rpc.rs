//! Calls to the coordinator: every one has a deadline, and a failure that trying again can
//! cure (the coordinator, its database or the network unavailable or slow) is retried with
//! capped, jittered backoff until the caller gives up, so a blip of the platform does not cost
//! a finished encode its upload or its report.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Longest one call may take, unless it says otherwise (a long-poll waits longer).
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// A report can make the coordinator read back every output: give it longer.
pub const REPORT_DEADLINE: Duration = Duration::from_secs(120);
const FIRST_RETRY: Duration = Duration::from_millis(250);
// Small: once the coordinator is back, a worker finds out within about this long.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// A request carrying its deadline (sent as `grpc-timeout`, and enforced here too).
pub fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(deadline);
    r
}

/// Whether trying the same call again may succeed. Refusals (bad token, lost lease, bad
/// argument) are final.
pub fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
    )
}

/// Calls `call` (each try bounded by `deadline`) until it succeeds, fails for good, `budget`
/// has passed, or `stop` fires (the lease was lost, the job canceled, the worker stopping).
pub async fn retrying<T, F, Fut>(
    what: &str,
    deadline: Duration,
    budget: Duration,
    stop: &CancellationToken,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        // The transport enforces the deadline too; this bounds a call whatever happens below.
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline + Duration::from_secs(1), call()) => r
                .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer within {deadline:?}")))),
            () = stop.cancelled() => return Err(Status::cancelled(format!("{what}: given up"))),
        };
        let status = match outcome {
            Ok(v) => {
                if tries > 1 {
                    tracing::info!(tries, "{what}: the coordinator answered again");
                }
                return Ok(v);
            }
            Err(s) => s,
        };
        let wait = mpegflow_domain::backoff::backoff(tries, FIRST_RETRY, MAX_RETRY, jitter());
        if !transient(&status) || started.elapsed() + wait > budget {
            return Err(status);
        }
        if tries == 1 {
            tracing::warn!(
                "{what} failed ({}: {}); retrying",
                status.code(),
                status.message()
            );
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Err(status),
        }
    }
}

/// A number in `[0, 1)` that differs between workers and tries, so that workers cut off
/// together do not all come back in the same instant.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from((nanos ^ std::process::id().rotate_left(16)) % 1_000_000) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_refusals_are_not() {
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let r = retrying(
            "call",
            CALL_DEADLINE,
            Duration::from_secs(60),
            &stop,
            || async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    0 => Err(Status::unavailable("down")),
                    1 => Err(Status::internal("database")),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(
            "call",
            CALL_DEADLINE,
            Duration::from_secs(60),
            &stop,
            || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(Status::failed_precondition("lease lost"))
            },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(calls.load(Ordering::Relaxed), 1, "a refusal is final");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_end_with_the_budget_or_when_stopped() {
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(
            "call",
            CALL_DEADLINE,
            Duration::from_secs(20),
            &stop,
            || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(Status::unavailable("down"))
            },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        let tries = calls.load(Ordering::Relaxed);
        // 0.25 s doubling to 2 s (plus up to a quarter of jitter): 10 to 13 tries in 20 s.
        assert!(
            (9..=14).contains(&tries),
            "{tries} tries within a 20-s budget"
        );

        stop.cancel();
        let r: Result<(), _> = retrying(
            "call",
            CALL_DEADLINE,
            Duration::from_secs(600),
            &stop,
            || async { Err(Status::unavailable("down")) },
        )
        .await;
        assert!(r.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_is_cut_at_its_deadline() {
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(
            "call",
            Duration::from_secs(2),
            Duration::from_secs(10),
            &stop,
            || async {
                calls.fetch_add(1, Ordering::Relaxed);
                std::future::pending().await
            },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
        assert!(
            calls.load(Ordering::Relaxed) >= 2,
            "retried after the deadline"
        );
    }
}
