//! The job state machine.
//!
//! ```text
//!            assign              succeed
//!  queued ───────────▶ running ──────────▶ succeeded
//!    ▲  │                │  │   fail (final)
//!    │  │ cancel         │  └────────────▶ failed
//!    │  ▼                │ cancel
//!    │ canceled ◀────────┘
//!    └── lease expired / retryable failure, attempts left
//! ```
//!
//! Every change to a running job carries the fencing token handed out with its lease; a worker
//! whose lease was taken away can no longer move the job.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown job state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Stable error codes a failed job carries.
/// The stages an attempt goes through, in order, as workers report them.
pub const STAGES: [&str; 5] = ["download", "validate", "encode", "measure", "upload"];

pub mod error_code {
    pub const FFMPEG_FAILED: &str = "ffmpeg_failed";
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const INPUT_FETCH_FAILED: &str = "input_fetch_failed";
    pub const OUTPUT_UPLOAD_FAILED: &str = "output_upload_failed";
    pub const OUTPUT_MISSING: &str = "output_missing";
    pub const OUTPUT_REJECTED: &str = "output_rejected";
    pub const LEASE_EXPIRED: &str = "lease_expired";
    pub const TIME_LIMIT: &str = "time_limit";
    pub const MEMORY_LIMIT: &str = "memory_limit";
    pub const OUTPUT_LIMIT: &str = "output_limit";
    pub const SECURITY_VIOLATION: &str = "security_violation";
    pub const WORKER_ERROR: &str = "worker_error";
    pub const COMMAND_REJECTED: &str = "command_rejected";

    /// Codes that put the blame on the tenant's job. One worker's word is not enough for them:
    /// the job runs again on another worker, and only a second such report makes it final.
    pub fn blames_tenant(code: &str) -> bool {
        code == INVALID_INPUT || code == SECURITY_VIOLATION
    }

    /// Whether a failure with `code` from `reporter` is final as a blame on the tenant: only
    /// when an earlier attempt was blamed by another worker (`earlier_blamer`).
    pub fn blame_confirmed<W: PartialEq>(
        code: &str,
        earlier_blamer: Option<W>,
        reporter: W,
    ) -> bool {
        blames_tenant(code) && earlier_blamer.is_some_and(|w| w != reporter)
    }
}

/// Why an attempt ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
    /// A retry on another worker could succeed (infrastructure trouble, not the job itself).
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker claimed the job.
    Assign,
    /// The running attempt finished successfully.
    Succeed,
    /// The running attempt failed.
    Fail(Failure),
    /// The running attempt failed with a code that blames the tenant ([`error_code::blames_tenant`]),
    /// and no other worker has said so yet: one worker's word is not final, so the job runs again
    /// at once on another worker, whatever attempts it has used.
    BlameUnconfirmed(Failure),
    /// The running attempt's lease ran out without a report.
    LeaseExpired,
    /// The tenant cancelled.
    Cancel,
}

/// What the store must write after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Run a new attempt (the attempt counter goes up by one).
    StartAttempt,
    /// Back to the queue, not before the given time.
    Requeue {
        not_before: SystemTime,
        failure: Failure,
    },
    /// A final state.
    Finish {
        state: JobState,
        failure: Option<Failure>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job is {state}; cannot apply {event}")]
pub struct TransitionError {
    pub state: JobState,
    pub event: &'static str,
}

/// Retry policy for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// The state machine. `attempts` is how many attempts have started so far (including a running
/// one); `jitter` in `[0, 1)` spreads requeues.
pub fn transition(
    state: JobState,
    event: &Event,
    attempts: u32,
    policy: &RetryPolicy,
    now: SystemTime,
    jitter: f64,
) -> Result<Transition, TransitionError> {
    use JobState::*;
    let name = match event {
        Event::Assign => "assign",
        Event::Succeed => "succeed",
        Event::Fail(_) => "fail",
        Event::BlameUnconfirmed(_) => "blame_unconfirmed",
        Event::LeaseExpired => "lease_expired",
        Event::Cancel => "cancel",
    };
    let refuse = || Err(TransitionError { state, event: name });
    let retry_or_fail = |failure: Failure| {
        if failure.retryable && attempts < policy.max_attempts {
            let delay =
                crate::backoff::backoff(attempts, policy.base_delay, policy.max_delay, jitter);
            Transition::Requeue {
                not_before: now + delay,
                failure,
            }
        } else {
            Transition::Finish {
                state: Failed,
                failure: Some(failure),
            }
        }
    };
    Ok(match (state, event) {
        (Queued, Event::Assign) => Transition::StartAttempt,
        (Running, Event::Succeed) => Transition::Finish {
            state: Succeeded,
            failure: None,
        },
        (Running, Event::Fail(f)) => retry_or_fail(f.clone()),
        (Running, Event::BlameUnconfirmed(f)) => Transition::Requeue {
            not_before: now,
            failure: Failure {
                message: format!(
                    "reported by one worker, awaiting confirmation by another: {}",
                    f.message
                ),
                ..f.clone()
            },
        },
        (Running, Event::LeaseExpired) => retry_or_fail(Failure {
            code: error_code::LEASE_EXPIRED.into(),
            message: "the worker stopped reporting before its lease ran out".into(),
            retryable: true,
        }),
        (Queued | Running, Event::Cancel) => Transition::Finish {
            state: Canceled,
            failure: None,
        },
        _ => return refuse(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    fn fail(retryable: bool) -> Event {
        Event::Fail(Failure {
            code: "x".into(),
            message: "m".into(),
            retryable,
        })
    }

    #[test]
    fn table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let p = RetryPolicy::default();
        let requeue_after = |secs| now + Duration::from_secs(secs);
        let finish = |state| {
            Ok(Transition::Finish {
                state,
                failure: None,
            })
        };
        let cases: Vec<(JobState, Event, u32, Result<Transition, TransitionError>)> = vec![
            (Queued, Event::Assign, 0, Ok(Transition::StartAttempt)),
            (Running, Event::Succeed, 1, finish(Succeeded)),
            (Queued, Event::Cancel, 0, finish(Canceled)),
            (Running, Event::Cancel, 1, finish(Canceled)),
            (
                Running,
                fail(true),
                1,
                Ok(Transition::Requeue {
                    not_before: requeue_after(1),
                    failure: Failure {
                        code: "x".into(),
                        message: "m".into(),
                        retryable: true,
                    },
                }),
            ),
            (
                Running,
                fail(true),
                3,
                Ok(Transition::Finish {
                    state: Failed,
                    failure: Some(Failure {
                        code: "x".into(),
                        message: "m".into(),
                        retryable: true,
                    }),
                }),
            ),
            (
                Running,
                fail(false),
                1,
                Ok(Transition::Finish {
                    state: Failed,
                    failure: Some(Failure {
                        code: "x".into(),
                        message: "m".into(),
                        retryable: false,
                    }),
                }),
            ),
            (
                Running,
                Event::Assign,
                1,
                Err(TransitionError {
                    state: Running,
                    event: "assign",
                }),
            ),
            (
                Queued,
                Event::Succeed,
                0,
                Err(TransitionError {
                    state: Queued,
                    event: "succeed",
                }),
            ),
            (
                Succeeded,
                Event::Cancel,
                1,
                Err(TransitionError {
                    state: Succeeded,
                    event: "cancel",
                }),
            ),
            (
                Canceled,
                Event::Assign,
                0,
                Err(TransitionError {
                    state: Canceled,
                    event: "assign",
                }),
            ),
            (
                Failed,
                fail(true),
                1,
                Err(TransitionError {
                    state: Failed,
                    event: "fail",
                }),
            ),
        ];
        for (state, event, attempts, want) in cases {
            assert_eq!(
                transition(state, &event, attempts, &p, now, 0.0),
                want,
                "{state} {event:?} {attempts}"
            );
        }
    }

    #[test]
    fn lease_expiry_requeues_until_attempts_run_out() {
        let now = SystemTime::UNIX_EPOCH;
        let p = RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        };
        assert!(matches!(
            transition(Running, &Event::LeaseExpired, 1, &p, now, 0.0),
            Ok(Transition::Requeue { .. })
        ));
        match transition(Running, &Event::LeaseExpired, 2, &p, now, 0.0).unwrap() {
            Transition::Finish {
                state: Failed,
                failure: Some(f),
            } => assert_eq!(f.code, error_code::LEASE_EXPIRED),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn states_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("bogus".parse::<JobState>().is_err());
    }

    #[test]
    fn an_unconfirmed_blame_requeues_at_once_even_without_attempts_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let blame = Failure {
            code: error_code::SECURITY_VIOLATION.into(),
            message: "SIGSYS".into(),
            retryable: false,
        };
        let t = transition(
            Running,
            &Event::BlameUnconfirmed(blame.clone()),
            1,
            &policy,
            now,
            0.5,
        )
        .unwrap();
        let Transition::Requeue {
            not_before,
            failure,
        } = t
        else {
            panic!("{t:?}")
        };
        assert_eq!(not_before, now);
        assert_eq!(failure.code, blame.code);
        assert!(
            failure.message.contains("awaiting confirmation"),
            "{}",
            failure.message
        );
        // The same report, once confirmed, is final.
        assert_eq!(
            transition(Running, &Event::Fail(blame.clone()), 1, &policy, now, 0.5).unwrap(),
            Transition::Finish {
                state: Failed,
                failure: Some(blame)
            }
        );
        assert!(transition(
            Queued,
            &Event::BlameUnconfirmed(fail_failure()),
            1,
            &policy,
            now,
            0.5
        )
        .is_err());
    }

    #[test]
    fn a_blame_is_confirmed_only_by_another_worker() {
        use error_code::{blame_confirmed, INVALID_INPUT, TIME_LIMIT};
        assert!(!blame_confirmed(INVALID_INPUT, None, 1));
        assert!(!blame_confirmed(INVALID_INPUT, Some(1), 1));
        assert!(blame_confirmed(INVALID_INPUT, Some(2), 1));
        assert!(!blame_confirmed(TIME_LIMIT, Some(2), 1));
    }

    fn fail_failure() -> Failure {
        Failure {
            code: "x".into(),
            message: "m".into(),
            retryable: false,
        }
    }
}
