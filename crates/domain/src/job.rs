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
//!
//! **What a failure costs.** A failed attempt is either the job's fault (its input, its
//! command, FFmpeg on it: [`Fault::Job`]) or the platform's (a store, the coordinator, the
//! database or a worker failing it: [`Fault::Platform`]). Only job faults count against the
//! job's `max_attempts`, and only they wait out a backoff; a platform fault requeues the job at
//! once in its old place in the queue, bounded by the larger [`RetryPolicy::max_platform_faults`]
//! so that nothing retries for ever.

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
    /// A declared output the job's command never wrote.
    pub const OUTPUT_MISSING: &str = "output_missing";
    /// A file the worker was granted to upload that the store does not hold: the worker's or
    /// the store's trouble, decided by the control plane.
    pub const OUTPUT_NOT_STORED: &str = "output_not_stored";
    pub const OUTPUT_REJECTED: &str = "output_rejected";
    /// The store holds other bytes than the worker was granted to upload, or the worker's
    /// report differs from its grants: the worker's doing, decided by the control plane.
    pub const OUTPUT_MISMATCH: &str = "output_mismatch";
    pub const LEASE_EXPIRED: &str = "lease_expired";
    pub const TIME_LIMIT: &str = "time_limit";
    pub const MEMORY_LIMIT: &str = "memory_limit";
    pub const OUTPUT_LIMIT: &str = "output_limit";
    pub const SECURITY_VIOLATION: &str = "security_violation";
    pub const WORKER_ERROR: &str = "worker_error";
    pub const COMMAND_REJECTED: &str = "command_rejected";
    /// The job's process was killed (SIGKILL) while the host's OOM killer was seen at work,
    /// and its own limits do not explain it: the platform's trouble. A SIGKILL without that
    /// evidence is the job's own (FFmpeg may kill itself).
    pub const KILLED: &str = "killed";

    /// Codes that say the platform failed the attempt, not the job: a store, the coordinator
    /// or a worker. A retryable failure with one of these costs none of the job's attempts.
    pub fn is_platform_fault(code: &str) -> bool {
        matches!(
            code,
            INPUT_FETCH_FAILED
                | OUTPUT_UPLOAD_FAILED
                | OUTPUT_NOT_STORED
                | OUTPUT_MISMATCH
                | LEASE_EXPIRED
                | WORKER_ERROR
                | KILLED
        )
    }

    /// Whether a retryable failure with `code` counts against the reporting worker's token. A
    /// job can bring some platform faults about itself: FFmpeg may SIGKILL its own process
    /// (the jail lets it signal itself), which only [`KILLED`] tells. Those are no evidence
    /// against the worker, or a tenant's crafted input could get an honest token suspended.
    pub fn is_worker_evidence(code: &str) -> bool {
        code != KILLED
    }

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
    /// Running the job again could succeed.
    pub retryable: bool,
}

impl Failure {
    /// Whose fault the failure is, by its code (see [`error_code::is_platform_fault`]).
    pub fn fault(&self) -> Fault {
        if error_code::is_platform_fault(&self.code) {
            Fault::Platform
        } else {
            Fault::Job
        }
    }
}

/// Whose fault a failed attempt was, which decides what it costs the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The job's input, command or FFmpeg on it: counts against `max_attempts`.
    Job,
    /// A store, the coordinator, the database or a worker: counts against the larger
    /// `max_platform_faults`, and the job keeps its place in the queue.
    Platform,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Job => "job",
            Fault::Platform => "platform",
        }
    }
}

impl FromStr for Fault {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "job" => Ok(Fault::Job),
            "platform" => Ok(Fault::Platform),
            _ => Err(UnknownState(s.to_owned())),
        }
    }
}

/// What the attempts of a job have cost so far: the failed attempts charged to it and to the
/// platform (an attempt still running is in neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub job_faults: u32,
    pub platform_faults: u32,
}

impl Spent {
    /// The counts once an attempt that ended with `charge` is added.
    pub fn after(self, charge: Option<Fault>) -> Spent {
        match charge {
            Some(Fault::Job) => Spent {
                job_faults: self.job_faults.saturating_add(1),
                ..self
            },
            Some(Fault::Platform) => Spent {
                platform_faults: self.platform_faults.saturating_add(1),
                ..self
            },
            None => self,
        }
    }
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
    /// Back to the queue: after a job fault not before `not_before`; after a platform fault
    /// (`not_before` is `None`) at once, in the place in the queue it had.
    Requeue {
        not_before: Option<SystemTime>,
        failure: Failure,
        /// Whose fault the ended attempt was (`None`: nobody's yet, see
        /// [`Event::BlameUnconfirmed`]).
        charge: Option<Fault>,
    },
    /// A final state.
    Finish {
        state: JobState,
        failure: Option<Failure>,
        charge: Option<Fault>,
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
    /// Attempts that may fail by the job's fault; the last one's failure is final.
    pub max_attempts: u32,
    /// Attempts that may fail by the platform's fault; the last one's failure is final (a job
    /// that kills every worker it reaches is not retried for ever).
    pub max_platform_faults: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            max_platform_faults: 10,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// The state machine. `spent` is what the job's earlier attempts cost (not counting the one
/// the event ends); `jitter` in `[0, 1)` spreads requeues after job faults.
pub fn transition(
    state: JobState,
    event: &Event,
    spent: Spent,
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
        let fault = failure.fault();
        let spent = spent.after(Some(fault));
        let not_before = match fault {
            Fault::Job if spent.job_faults < policy.max_attempts => Some(Some(
                now + crate::backoff::backoff(
                    spent.job_faults,
                    policy.base_delay,
                    policy.max_delay,
                    jitter,
                ),
            )),
            Fault::Platform if spent.platform_faults < policy.max_platform_faults => Some(None),
            _ => None,
        };
        // A platform fault is retried whatever the reporting worker said: one worker's word
        // cannot end a job for the platform's trouble.
        match not_before {
            Some(not_before) if failure.retryable || fault == Fault::Platform => {
                Transition::Requeue {
                    not_before,
                    failure,
                    charge: Some(fault),
                }
            }
            _ => Transition::Finish {
                state: Failed,
                failure: Some(failure),
                charge: Some(fault),
            },
        }
    };
    Ok(match (state, event) {
        (Queued, Event::Assign) => Transition::StartAttempt,
        (Running, Event::Succeed) => Transition::Finish {
            state: Succeeded,
            failure: None,
            charge: None,
        },
        (Running, Event::Fail(f)) => retry_or_fail(f.clone()),
        // At most once per job: the next blame comes from another worker and is confirmed.
        (Running, Event::BlameUnconfirmed(f)) => Transition::Requeue {
            not_before: None,
            charge: None,
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
            charge: None,
        },
        _ => return refuse(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    fn failure(code: &str, retryable: bool) -> Failure {
        Failure {
            code: code.into(),
            message: "m".into(),
            retryable,
        }
    }

    fn spent(job_faults: u32, platform_faults: u32) -> Spent {
        Spent {
            job_faults,
            platform_faults,
        }
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn run(event: Event, before: Spent, policy: &RetryPolicy) -> Transition {
        transition(Running, &event, before, policy, NOW, 0.0).unwrap()
    }

    #[test]
    fn table() {
        let p = RetryPolicy::default();
        let finish = |state| {
            Ok(Transition::Finish {
                state,
                failure: None,
                charge: None,
            })
        };
        let refused = |state, event| Err(TransitionError { state, event });
        let cases: Vec<(JobState, Event, Result<Transition, TransitionError>)> = vec![
            (Queued, Event::Assign, Ok(Transition::StartAttempt)),
            (Running, Event::Succeed, finish(Succeeded)),
            (Queued, Event::Cancel, finish(Canceled)),
            (Running, Event::Cancel, finish(Canceled)),
            (Running, Event::Assign, refused(Running, "assign")),
            (Queued, Event::Succeed, refused(Queued, "succeed")),
            (Succeeded, Event::Cancel, refused(Succeeded, "cancel")),
            (Canceled, Event::Assign, refused(Canceled, "assign")),
            (
                Failed,
                Event::Fail(failure("x", true)),
                refused(Failed, "fail"),
            ),
        ];
        for (state, event, want) in cases {
            assert_eq!(
                transition(state, &event, Spent::default(), &p, NOW, 0.0),
                want,
                "{state} {event:?}"
            );
        }
    }

    #[test]
    fn a_retryable_job_fault_waits_a_backoff_and_counts_against_max_attempts() {
        let p = RetryPolicy::default();
        let f = failure(error_code::FFMPEG_FAILED, true);
        assert_eq!(f.fault(), Fault::Job);
        assert_eq!(
            run(Event::Fail(f.clone()), spent(0, 5), &p),
            Transition::Requeue {
                not_before: Some(NOW + Duration::from_secs(1)),
                failure: f.clone(),
                charge: Some(Fault::Job),
            }
        );
        // The third job fault of three allowed is final, whatever the platform cost before.
        assert_eq!(
            run(Event::Fail(f.clone()), spent(2, 0), &p),
            Transition::Finish {
                state: Failed,
                failure: Some(f),
                charge: Some(Fault::Job),
            }
        );
    }

    #[test]
    fn a_job_fault_nobody_can_cure_is_final_at_once() {
        let p = RetryPolicy::default();
        for code in [
            error_code::FFMPEG_FAILED,
            error_code::TIME_LIMIT,
            error_code::OUTPUT_REJECTED,
            error_code::OUTPUT_MISSING,
        ] {
            let f = failure(code, false);
            assert_eq!(
                run(Event::Fail(f.clone()), Spent::default(), &p),
                Transition::Finish {
                    state: Failed,
                    failure: Some(f),
                    charge: Some(Fault::Job),
                }
            );
        }
    }

    #[test]
    fn platform_faults_cost_no_attempt_and_keep_the_queue_place_up_to_their_own_bound() {
        let p = RetryPolicy {
            max_attempts: 1,
            max_platform_faults: 4,
            ..RetryPolicy::default()
        };
        for code in [
            error_code::INPUT_FETCH_FAILED,
            error_code::OUTPUT_UPLOAD_FAILED,
            error_code::OUTPUT_NOT_STORED,
            error_code::OUTPUT_MISMATCH,
            error_code::WORKER_ERROR,
            error_code::KILLED,
        ] {
            let f = failure(code, true);
            assert_eq!(f.fault(), Fault::Platform, "{code}");
            // A job on its last (only) attempt survives three platform faults, then fails on
            // the fourth.
            for before in 0..3 {
                assert_eq!(
                    run(Event::Fail(f.clone()), spent(0, before), &p),
                    Transition::Requeue {
                        not_before: None,
                        failure: f.clone(),
                        charge: Some(Fault::Platform),
                    },
                    "{code} after {before}"
                );
            }
            assert!(matches!(
                run(Event::Fail(f.clone()), spent(0, 3), &p),
                Transition::Finish {
                    state: Failed,
                    charge: Some(Fault::Platform),
                    ..
                }
            ));
        }
    }

    #[test]
    fn one_workers_unretryable_word_on_a_platform_fault_does_not_end_the_job() {
        let p = RetryPolicy::default();
        let f = failure(error_code::WORKER_ERROR, false);
        assert_eq!(
            run(Event::Fail(f.clone()), spent(0, 0), &p),
            Transition::Requeue {
                not_before: None,
                failure: f,
                charge: Some(Fault::Platform),
            }
        );
        assert!(!error_code::is_worker_evidence(error_code::KILLED));
        assert!(error_code::is_worker_evidence(error_code::LEASE_EXPIRED));
    }

    #[test]
    fn an_expired_lease_is_a_platform_fault() {
        let p = RetryPolicy {
            max_attempts: 1,
            max_platform_faults: 2,
            ..RetryPolicy::default()
        };
        match run(Event::LeaseExpired, spent(0, 0), &p) {
            Transition::Requeue {
                not_before: None,
                charge: Some(Fault::Platform),
                failure,
            } => assert_eq!(failure.code, error_code::LEASE_EXPIRED),
            other => panic!("{other:?}"),
        }
        match run(Event::LeaseExpired, spent(0, 1), &p) {
            Transition::Finish {
                state: Failed,
                failure: Some(f),
                charge: Some(Fault::Platform),
            } => assert_eq!(f.code, error_code::LEASE_EXPIRED),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spent_adds_one_to_the_charged_side() {
        assert_eq!(spent(1, 2).after(Some(Fault::Job)), spent(2, 2));
        assert_eq!(spent(1, 2).after(Some(Fault::Platform)), spent(1, 3));
        assert_eq!(spent(1, 2).after(None), spent(1, 2));
        assert_eq!(
            spent(u32::MAX, 0).after(Some(Fault::Job)),
            spent(u32::MAX, 0)
        );
        for f in [Fault::Job, Fault::Platform] {
            assert_eq!(f.as_str().parse::<Fault>().unwrap(), f);
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
    fn an_unconfirmed_blame_requeues_at_once_and_costs_nothing() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let blame = failure(error_code::SECURITY_VIOLATION, false);
        let t = run(Event::BlameUnconfirmed(blame.clone()), spent(0, 0), &policy);
        let Transition::Requeue {
            not_before,
            failure: told,
            charge,
        } = t
        else {
            panic!("{t:?}")
        };
        assert_eq!((not_before, charge), (None, None));
        assert_eq!(told.code, blame.code);
        assert!(
            told.message.contains("awaiting confirmation"),
            "{}",
            told.message
        );
        // The same report, once confirmed, is final and the job's fault.
        assert_eq!(
            run(Event::Fail(blame.clone()), spent(0, 0), &policy),
            Transition::Finish {
                state: Failed,
                failure: Some(blame.clone()),
                charge: Some(Fault::Job),
            }
        );
        assert!(transition(
            Queued,
            &Event::BlameUnconfirmed(blame),
            Spent::default(),
            &policy,
            NOW,
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
}
