//! Heartbeats: a lease extended, the worker's progress recorded, a cancellation passed on.

use super::{input_urls, lease_lost, InputUrl, LeaseHolder};
use crate::error::Result;
use crate::AppState;
use mpegflow_store::HeartbeatResult;
use serde_json::json;

/// What a worker says about the job it holds. Its word: kept only within bounds.
#[derive(Debug, Clone, Default)]
pub struct Beat {
    /// 0.0 – 1.0; anything else means unknown.
    pub progress: f32,
    pub stage: String,
    /// FFmpeg's encoding speed (1.0 = real time) and frames per second; 0 when unknown.
    pub speed: f32,
    pub fps: f32,
    /// Asks for fresh input URLs (the old ones are near expiry, or a download needs a retry).
    pub refresh_input_urls: bool,
}

/// The answer to a heartbeat from the lease holder.
#[derive(Debug, Clone)]
pub enum BeatAnswer {
    /// The lease runs for `lease_seconds` more; fresh input URLs when they were asked for.
    Extended {
        lease_seconds: u32,
        inputs: Vec<InputUrl>,
    },
    /// The job was cancelled: the worker stops it and reports.
    Cancel,
}

/// Extends the holder's lease and records its progress; a lost lease is
/// [`LeaseLost`](crate::error::ControlError::LeaseLost).
pub async fn heartbeat(state: &AppState, holder: &LeaseHolder, beat: &Beat) -> Result<BeatAnswer> {
    let progress = (0.0..=1.0)
        .contains(&beat.progress)
        .then_some(beat.progress);
    // The worker's word, bounded: a known stage name and plausible rates or nothing.
    let rate = |v: f32| (v.is_finite() && v > 0.0 && v < 1e5).then_some(v);
    let stage = mpegflow_domain::job::STAGES
        .iter()
        .find(|s| **s == beat.stage)
        .copied();
    let live = json!({ "stage": stage, "speed": rate(beat.speed), "fps": rate(beat.fps) });
    let result = state
        .store
        .heartbeat(
            holder.lease(),
            progress,
            live,
            state.config.lease(),
            state.config.attempt_grace(),
        )
        .await?;
    match result {
        HeartbeatResult::Extended => {
            state.job_changed.notify_waiters();
            let mut inputs = Vec::new();
            if beat.refresh_input_urls {
                // Re-issued to the lease holder only, and audited like the first ones.
                if let Some(job) = state.store.leased_job(holder.lease()).await? {
                    let (fresh, audit) = input_urls(state, holder.worker_id, &job)?;
                    state.store.audit_many(&audit).await?;
                    inputs = fresh;
                }
            }
            Ok(BeatAnswer::Extended {
                lease_seconds: state.config.lease_seconds,
                inputs,
            })
        }
        HeartbeatResult::Canceled => Ok(BeatAnswer::Cancel),
        HeartbeatResult::Lost => Err(lease_lost()),
    }
}
