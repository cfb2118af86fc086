//! Registering a worker under its token.

use super::worker_text;
use crate::error::{ControlError, Result};
use crate::AppState;
use mpegflow_domain::fingerprint::Fingerprint;
use mpegflow_store::{AuditEntry, Registration, WorkerInfo, WorkerTokenInfo};
use serde_json::json;
use std::sync::atomic::Ordering;
use uuid::Uuid;

/// What a worker says about itself when it registers (its word: bounded before it is stored).
#[derive(Debug, Clone, Default)]
pub struct WorkerDescription {
    pub hostname: String,
    pub worker_version: String,
    pub ffmpeg_version: String,
    pub image_hash: String,
    /// Absent when the worker sent none: it is registered but gets no work.
    pub fingerprint: Option<FfmpegFingerprint>,
}

/// Which FFmpeg the worker runs.
#[derive(Debug, Clone, Default)]
pub struct FfmpegFingerprint {
    /// First line of `ffmpeg -version`.
    pub version: String,
    /// The configure options from `ffmpeg -buildconf`.
    pub configuration: String,
    /// The command grammar (FFmpeg major.minor) it says it implements.
    pub grammar: String,
}

/// A new registration and the terms it works under.
#[derive(Debug, Clone)]
pub struct Registered {
    pub worker_id: Uuid,
    pub pool: String,
    pub lease_seconds: u32,
    pub heartbeat_seconds: u32,
    /// The grammar commands are validated against; a worker with another gets no work.
    pub grammar: String,
    pub registration_ttl_seconds: u32,
}

/// Registers a worker under `token` (refused past the token's live-worker bound). A worker
/// whose FFmpeg does not implement the control plane's grammar is registered, audited and
/// given no work.
pub async fn register(
    state: &AppState,
    token: WorkerTokenInfo,
    worker: &WorkerDescription,
) -> Result<Registered> {
    let wanted = &state.config.ffmpeg_grammar;
    let fingerprint = worker
        .fingerprint
        .as_ref()
        .ok_or_else(|| "no FFmpeg fingerprint".to_owned())
        .and_then(|f| {
            Fingerprint::check(&f.version, &f.configuration, &f.grammar).map_err(|e| e.to_string())
        });
    let (grammar, config_sha) = match &fingerprint {
        Ok(f) => (f.grammar.to_string(), f.configuration_sha256()),
        Err(_) => (String::new(), String::new()),
    };
    let info = WorkerInfo {
        hostname: worker_text(&worker.hostname, 255),
        worker_version: worker_text(&worker.worker_version, 64),
        ffmpeg_version: worker_text(&worker.ffmpeg_version, 255),
        image_hash: worker_text(&worker.image_hash, 128),
        ffmpeg_grammar: grammar.clone(),
        ffmpeg_configuration_sha256: config_sha,
    };
    let worker_id = match state.store.register_worker(&token, &info).await? {
        Registration::Registered(id) => id,
        Registration::Full { live, max } => {
            state
                .metrics
                .worker_registrations_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(token_id = %token.token_id, live, max, "worker registration refused: token at its maximum of live workers");
            return Err(ControlError::ResourceExhausted(format!(
                "worker token {} already has {live} live workers, its maximum ({max}); a registration expires {}s after its worker's last call once it holds no lease",
                token.token_id, state.config.worker_ttl_seconds
            )));
        }
    };
    if grammar != *wanted {
        let reason = match &fingerprint {
            Ok(f) => format!("its FFmpeg implements command grammar {}", f.grammar),
            Err(e) => format!("its FFmpeg fingerprint is unusable: {e}"),
        };
        state
            .metrics
            .worker_fingerprint_mismatches
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%worker_id, ffmpeg_version = %info.ffmpeg_version, %reason, expected = %wanted,
            "worker's FFmpeg does not match the command grammar: it will get no work");
        state
            .store
            .audit(&AuditEntry {
                org_id: None,
                actor: format!("worker_token:{}", token.token_id),
                action: "worker.fingerprint_mismatch",
                job_id: None,
                subject: Some(worker_id.to_string()),
                details: json!({ "ffmpeg_version": info.ffmpeg_version, "reason": reason, "expected_grammar": wanted }),
            })
            .await?;
    }
    tracing::info!(%worker_id, pool = %token.pool_name, grammar = %info.ffmpeg_grammar, "worker registered");
    Ok(Registered {
        worker_id,
        pool: token.pool_name,
        lease_seconds: state.config.lease_seconds,
        heartbeat_seconds: state.config.heartbeat_seconds,
        grammar: wanted.clone(),
        registration_ttl_seconds: state.config.worker_ttl_seconds,
    })
}
