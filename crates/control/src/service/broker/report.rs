//! A finished attempt's report: succeeded (its outputs checked against the declared outputs,
//! the upload grants and the store before they become the job's result), failed (blame and
//! strikes decided by the store), or cancelled.

use super::{actor, worker_text, LeaseHolder, ReportedFile};
use crate::error::{ControlError, Result};
use crate::outputs::{
    check_produced, io_spec, match_grants, match_stored, ProducedFile, Unverified,
};
use crate::AppState;
use mpegflow_api as api;
use mpegflow_domain::command::{IoSpec, OutputDecl};
use mpegflow_domain::job::{error_code, Failure};
use mpegflow_domain::media::MediaInfo;
use mpegflow_domain::names::output_key;
use mpegflow_store::{AttemptRecord, AuditEntry, Job, OutputObject, Report, ReportResult};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tracing::Instrument;
use uuid::Uuid;

/// Largest compressed stderr kept per attempt.
const MAX_STDERR_ZSTD: usize = 8 * 1024 * 1024;
/// Stages and input hashes kept from one report (a worker has a handful of each).
const MAX_STAGES: usize = 32;
/// Longest CPU time a stage record keeps (30 days, µs): a bound on the worker's word.
const MAX_STAGE_CPU_US: u64 = 30 * 24 * 3600 * 1_000_000;
const MAX_INPUT_HASHES: usize = 64;
/// How much of stderr's end is kept readable on the job.
const STDERR_TAIL: usize = 4 * 1024;

/// How the attempt ended, in the worker's words.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded,
    /// `code` and `message` are the worker's (bounded before they are stored); `retryable`
    /// says the failure is the infrastructure's.
    Failed {
        code: String,
        message: String,
        retryable: bool,
    },
    Canceled,
}

/// A worker's report on the attempt it holds.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// `None` when the worker named no outcome (refused once the lease is found held).
    pub outcome: Option<Outcome>,
    /// The files it says it uploaded (read on success only).
    pub outputs: Vec<ReportedFile>,
    /// What it measured of those files as media (read on success only).
    pub output_media: Vec<ReportedMedia>,
    pub provenance: Provenance,
}

/// The provenance of an attempt as the worker reports it, kept on the attempt's record.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub exit_code: i32,
    /// FFmpeg's stderr, zstd-compressed.
    pub stderr_zstd: Vec<u8>,
    pub ffmpeg_version: String,
    pub stages: Vec<StageTiming>,
    pub inputs: Vec<InputHash>,
}

/// What a worker measured of one output file. Its word: kept only for a verified file of the
/// report, and only if it passes the media rules.
#[derive(Debug, Clone)]
pub struct ReportedMedia {
    /// As in [`ReportedFile::path`].
    pub path: String,
    /// `None` when the worker sent none, or none the protocol's conversion could read.
    pub media: Option<MediaInfo>,
}

#[derive(Debug, Clone, Default)]
pub struct StageTiming {
    pub name: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// CPU the worker says the stage used (its word), µs.
    pub cpu_us: u64,
}

#[derive(Debug, Clone, Default)]
pub struct InputHash {
    pub alias: String,
    pub size: u64,
    pub sha256: String,
}

fn stale() -> ControlError {
    ControlError::LeaseLost(
        "stale or foreign fencing token: this worker does not hold that job".into(),
    )
}

/// Takes the holder's report on its attempt. Refused ([`LeaseLost`](ControlError::LeaseLost))
/// unless the fencing token is the lease's — except that a job cancelled while it ran still
/// takes its attempt's record.
pub async fn report(state: &AppState, holder: &LeaseHolder, report: WorkerReport) -> Result<()> {
    let (job_id, worker_id) = (holder.job_id, holder.worker_id);
    // Cheap early refusal; the store checks the fencing token again atomically.
    let Some(job) = state.store.leased_job(holder.lease()).await? else {
        // A job cancelled while running still takes its attempt's record.
        let canceled = state
            .store
            .report(
                holder.lease(),
                Report::Canceled,
                record_of(&report.provenance),
                state.config.retry_policy(),
                0.0,
            )
            .await;
        return match canceled {
            Ok(ReportResult::RecordedCanceled) => Ok(()),
            // The database, not the fencing token, failed (an outage answers UNAVAILABLE, and
            // the worker tries again): a holder is never told it lost a lease it may hold.
            Err(e) => Err(e.into()),
            Ok(_) => {
                tracing::warn!(%job_id, %worker_id, "refused report with stale fencing token");
                Err(stale())
            }
        };
    };
    let span = tracing::info_span!("report_job_status", %job_id, org_id = %job.org_id, %worker_id, attempt = job.attempts);
    apply(state, holder, &job, report).instrument(span).await
}

/// The report of the lease holder, decided and applied.
async fn apply(state: &AppState, holder: &LeaseHolder, job: &Job, r: WorkerReport) -> Result<()> {
    let (job_id, worker_id) = (holder.job_id, holder.worker_id);
    let mut verified_hashes = json!([]);
    let report = match r.outcome {
        Some(Outcome::Succeeded) => {
            let spec = io_spec(job)?;
            let checked = check_produced(
                &spec,
                r.outputs
                    .iter()
                    .map(|f| (f.path.clone(), f.size, f.sha256.clone())),
                state.config.max_output_bytes,
                state.config.max_output_files,
            );
            match checked {
                Err(ControlError::Invalid { code, message, .. }) => Report::Failed(Failure {
                    code: code.to_owned(),
                    message,
                    retryable: false,
                }),
                Err(e) => return Err(e),
                Ok(files) => {
                    match verify_uploaded(state, job, &files).await? {
                        // The worker, not the tenant's command, is at fault: another attempt
                        // (bounded by max_attempts) may well succeed elsewhere.
                        Err(u) => {
                            output_unverified(state, job, worker_id, &u, &files).await?;
                            Report::Failed(Failure {
                                code: u.code.to_owned(),
                                message: u.message,
                                retryable: true,
                            })
                        }
                        Ok(()) => {
                            verified_hashes = json!(files.iter().map(|f| json!({ "path": f.path, "size": f.size, "sha256": f.sha256 })).collect::<Vec<_>>());
                            let media = output_media(&r.output_media, &files);
                            let (result, outputs) = result_of(job, &spec, &files, &media)?;
                            Report::Succeeded { result, outputs }
                        }
                    }
                }
            }
        }
        Some(Outcome::Failed {
            code,
            message,
            retryable,
        }) => Report::Failed(Failure {
            code: error_code_of(&code),
            message: worker_text(&message, 4096),
            retryable,
        }),
        Some(Outcome::Canceled) => Report::Canceled,
        None => {
            return Err(ControlError::invalid(
                "invalid_outcome",
                "outcome is required",
            ))
        }
    };
    // The attempt's record shows output hashes only once they are verified: a worker's claim
    // is never displayed as a fact.
    let mut record = record_of(&r.provenance);
    record.output_hashes = verified_hashes;
    let blamed = matches!(&report, Report::Failed(f) if error_code::blames_tenant(&f.code));
    let security_event = match &report {
        Report::Failed(f) if f.code == error_code::SECURITY_VIOLATION => Some(f.message.clone()),
        _ => None,
    };
    let result = state
        .store
        .report(
            holder.lease(),
            report,
            record,
            state.config.retry_policy(),
            rand::random(),
        )
        .await?;
    match result {
        ReportResult::Applied(job_state) => {
            tracing::info!(state = %job_state, "job report applied");
            if !job_state.is_terminal() && blamed {
                // One worker's word: the store requeued it for another worker and audited
                // `job.blame_unconfirmed`.
                state
                    .metrics
                    .blame_unconfirmed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%job_id, %worker_id, "tenant-blaming failure not confirmed yet: job goes to another worker");
            } else if let Some(message) = security_event {
                security_violation(state, job, worker_id, &message).await?;
            }
            state.job_changed.notify_waiters();
            if !job_state.is_terminal() {
                state.job_queued.notify_waiters();
            }
            Ok(())
        }
        ReportResult::RecordedCanceled => Ok(()),
        ReportResult::Refused => Err(stale()),
    }
}

/// Establishes that the store holds exactly what the attempt reports: the report must equal
/// the attempt's upload grants, and each granted object must be in the store with the granted
/// size and SHA-256 — the store's checksum, or the control plane's own hash of the object when
/// the store keeps none. Never the worker's word.
async fn verify_uploaded(
    state: &AppState,
    job: &Job,
    files: &[ProducedFile],
) -> Result<std::result::Result<(), Unverified>> {
    let grants = state.store.upload_grants(job.id, job.attempts).await?;
    if let Err(u) = match_grants(files, &grants) {
        return Ok(Err(u));
    }
    for g in &grants {
        let key = output_key(job.org_id, job.id, job.attempts as u32, &g.path);
        let mut stored = state
            .head_object(&key)
            .await
            .map_err(ControlError::Unavailable)?;
        if stored.as_ref().is_some_and(|h| h.sha256.is_none()) {
            stored = state
                .hash_object(&key, g.size.max(0) as u64)
                .await
                .map_err(ControlError::Unavailable)?;
        }
        if let Err(u) = match_stored(g, stored.as_ref()) {
            return Ok(Err(u));
        }
    }
    Ok(Ok(()))
}

/// The audit row of an attempt whose outputs could not be verified.
async fn output_unverified(
    state: &AppState,
    job: &Job,
    worker_id: Uuid,
    u: &Unverified,
    reported: &[ProducedFile],
) -> Result<()> {
    tracing::warn!(job_id = %job.id, org_id = %job.org_id, %worker_id, code = u.code, message = %u.message, "attempt's outputs not verified");
    state
        .store
        .audit(&AuditEntry {
            org_id: Some(job.org_id),
            actor: actor(worker_id),
            action: "job.output_unverified",
            job_id: Some(job.id),
            subject: Some(worker_id.to_string()),
            details: json!({
                "attempt": job.attempts, "code": u.code, "message": u.message,
                "reported": reported.iter().map(|f| json!({ "path": f.path, "size": f.size, "sha256": f.sha256 })).collect::<Vec<_>>(),
            }),
        })
        .await?;
    Ok(())
}

/// A tripped seccomp wire: an audit event of its own and a metric, beside the job's failure.
async fn security_violation(
    state: &AppState,
    job: &Job,
    worker_id: Uuid,
    message: &str,
) -> Result<()> {
    state
        .metrics
        .security_violations
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(job_id = %job.id, org_id = %job.org_id, %worker_id, message, "security violation: jailed process killed by seccomp");
    state
        .store
        .audit(&AuditEntry {
            org_id: Some(job.org_id),
            actor: actor(worker_id),
            action: "security.violation",
            job_id: Some(job.id),
            subject: Some(worker_id.to_string()),
            details: json!({ "attempt": job.attempts, "message": message }),
        })
        .await?;
    Ok(())
}

/// The provenance of an attempt, from the worker's report.
fn record_of(p: &Provenance) -> AttemptRecord {
    let stderr = (p.stderr_zstd.len() <= MAX_STDERR_ZSTD).then(|| p.stderr_zstd.clone());
    AttemptRecord {
        exit_code: Some(p.exit_code),
        stderr_tail: stderr.as_deref().and_then(stderr_tail),
        stderr_zstd: stderr,
        ffmpeg_version: Some(worker_text(&p.ffmpeg_version, 255)),
        stages: json!(p.stages.iter().take(MAX_STAGES).map(|s| json!({ "name": worker_text(&s.name, 32), "started_at_ms": s.started_at_ms, "finished_at_ms": s.finished_at_ms, "cpu_us": s.cpu_us.min(MAX_STAGE_CPU_US) })).collect::<Vec<_>>()),
        input_hashes: json!(p.inputs.iter().take(MAX_INPUT_HASHES).map(|i| json!({ "alias": worker_text(&i.alias, 32), "size": i.size, "sha256": worker_text(&i.sha256, 64) })).collect::<Vec<_>>()),
        // Shown only once verified against the grants and the store (see `apply`).
        output_hashes: json!([]),
    }
}

/// Decompresses at most 16 MiB of stderr and keeps its last few KiB as text.
fn stderr_tail(zstd_bytes: &[u8]) -> Option<String> {
    if zstd_bytes.is_empty() {
        return None;
    }
    let buf = crate::outputs::decompress_stderr(zstd_bytes);
    let start = buf.len().saturating_sub(STDERR_TAIL);
    Some(worker_text(
        &String::from_utf8_lossy(&buf[start..]),
        usize::MAX,
    ))
}

fn error_code_of(code: &str) -> String {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        code.to_owned()
    } else {
        error_code::WORKER_ERROR.to_owned()
    }
}

/// What the worker measured of its outputs, by path: only for files of the report, each
/// at most once, and only what passes the media rules (anything else is left unknown).
fn output_media(reported: &[ReportedMedia], files: &[ProducedFile]) -> BTreeMap<String, MediaInfo> {
    let mut media = BTreeMap::new();
    for m in reported.iter().take(files.len()) {
        if !files.iter().any(|f| f.path == m.path) || media.contains_key(&m.path) {
            continue;
        }
        let Some(info) = m.media.as_ref().filter(|info| info.check().is_ok()) else {
            tracing::warn!(path = %worker_text(&m.path, 255), "ignoring output media out of range");
            continue;
        };
        media.insert(m.path.clone(), info.clone());
    }
    media
}

/// The `outputs` part of a finished job's result (as the API shows it), and the assets to
/// create: one of each per verified file, made in [`output_of`].
fn result_of(
    job: &Job,
    spec: &IoSpec,
    files: &[ProducedFile],
    media: &BTreeMap<String, MediaInfo>,
) -> Result<(Value, Vec<OutputObject>)> {
    let mut objects = Vec::new();
    let mut outputs = BTreeMap::new();
    for (alias, decl) in &spec.outputs {
        let mut entries = Vec::new();
        for f in files.iter().filter(|f| &f.alias == alias) {
            let (object, entry) = output_of(job, f, media.get(&f.path).cloned())?;
            objects.push(object);
            entries.push(entry);
        }
        let filename = match decl {
            OutputDecl::File { name } => name.clone(),
            OutputDecl::Dir { name } => format!("{name}/"),
        };
        let alias =
            api::Alias::parse(alias.clone()).map_err(|e| ControlError::Internal(e.to_string()))?;
        let filename =
            api::OutputName::parse(filename).map_err(|e| ControlError::Internal(e.to_string()))?;
        outputs.insert(
            alias,
            api::JobOutput {
                filename,
                files: entries,
            },
        );
    }
    let result =
        serde_json::to_value(&outputs).map_err(|e| ControlError::Internal(e.to_string()))?;
    Ok((json!({ "outputs": result }), objects))
}

/// One verified output file as the asset to create and as the job's result shows it: the one
/// place a checked file's facts (size, SHA-256, media) go to both.
fn output_of(
    job: &Job,
    f: &ProducedFile,
    media: Option<MediaInfo>,
) -> Result<(OutputObject, api::OutputFile)> {
    let asset_id = Uuid::now_v7();
    let object = OutputObject {
        asset_id,
        object_key: output_key(job.org_id, job.id, job.attempts as u32, &f.path),
        filename: f.name.clone(),
        size: f.size as i64,
        sha256: f.sha256.clone(),
        media: media
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ControlError::Internal(e.to_string()))?,
    };
    let entry = api::OutputFile {
        asset_id,
        path: f.name.clone(),
        size: f.size,
        sha256: api::Sha256Hex::parse(f.sha256.clone())
            .map_err(|e| ControlError::Internal(e.to_string()))?,
        media,
    };
    Ok((object, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_media_is_kept_once_per_reported_file_and_only_in_range() {
        use mpegflow_domain::media::{MediaStream, StreamKind};
        let file = |p: &str| ProducedFile {
            alias: "out".into(),
            path: format!("out/{p}"),
            name: p.into(),
            size: 1,
            sha256: "0".repeat(64),
        };
        let info = |codec: &str, width: u32| MediaInfo {
            format: "mpegts".into(),
            duration_seconds: Some(1.0),
            bit_rate: None,
            streams: vec![MediaStream {
                index: 0,
                kind: StreamKind::Video,
                codec: codec.into(),
                profile: None,
                width: Some(width),
                height: Some(240),
                frame_rate: Some("25/1".into()),
                pixel_format: None,
                bit_rate: None,
                sample_rate: None,
                channels: None,
                channel_layout: None,
                duration_seconds: None,
            }],
        };
        let media = |path: &str, m: Option<MediaInfo>| ReportedMedia {
            path: format!("out/{path}"),
            media: m,
        };
        // Five files, five entries: every entry is looked at (at most one per file is).
        let files = ["a.ts", "b.ts", "c.ts", "d.ts", "e.ts"].map(file);
        let kept = output_media(
            &[
                media("a.ts", Some(info("h264", 320))),
                // A second claim for the same file does not replace the first.
                media("a.ts", Some(info("hevc", 320))),
                // Not a file of the report.
                media("other.ts", Some(info("h264", 320))),
                // Out of range: left unknown.
                media("b.ts", Some(info("h264", 0))),
                media("c.ts", Some(info("bad\u{1b}name", 320))),
            ],
            &files,
        );
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["out/a.ts"]);
        assert_eq!(kept["out/a.ts"].streams[0].codec, "h264");
    }

    #[test]
    fn a_worker_error_code_is_kept_only_when_well_formed() {
        assert_eq!(error_code_of("invalid_input"), "invalid_input");
        for bad in ["", "Invalid", "a-b", "x\u{1b}[2J", "a".repeat(65).as_str()] {
            assert_eq!(error_code_of(bad), error_code::WORKER_ERROR, "{bad:?}");
        }
    }

    #[test]
    fn the_record_keeps_the_workers_text_bounded_and_shows_no_output_hash() {
        let p = Provenance {
            exit_code: 1,
            stderr_zstd: vec![0; MAX_STDERR_ZSTD + 1],
            ffmpeg_version: format!("ffmpeg\0{}", "v".repeat(300)),
            stages: (0..40)
                .map(|i| StageTiming {
                    name: format!("stage\u{1b}{i}"),
                    started_at_ms: i,
                    finished_at_ms: i + 1,
                    cpu_us: u64::MAX,
                })
                .collect(),
            inputs: (0..70)
                .map(|_| InputHash {
                    alias: "in".into(),
                    size: 1,
                    sha256: "a".repeat(100),
                })
                .collect(),
        };
        let r = record_of(&p);
        assert_eq!(r.exit_code, Some(1));
        // Stderr over the bound is dropped, not truncated into an undecodable stream.
        assert!(r.stderr_zstd.is_none() && r.stderr_tail.is_none());
        let version = r.ffmpeg_version.unwrap();
        // Cut at 255 bytes before control characters become U+FFFD.
        assert!(version.chars().count() <= 255 && !version.contains('\0'));
        assert!(version.starts_with("ffmpeg\u{fffd}vvv"), "{version:?}");
        let stages = r.stages.as_array().unwrap();
        assert_eq!(stages.len(), MAX_STAGES);
        assert!(!stages[0]["name"].as_str().unwrap().contains('\u{1b}'));
        assert_eq!(stages[0]["cpu_us"], MAX_STAGE_CPU_US);
        let inputs = r.input_hashes.as_array().unwrap();
        assert_eq!(inputs.len(), MAX_INPUT_HASHES);
        assert_eq!(inputs[0]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(r.output_hashes, json!([]));
    }

    #[test]
    fn stderr_keeps_its_readable_tail() {
        let text = format!("{}\r\nlast line\u{7}", "x".repeat(10_000));
        let z = zstd::encode_all(text.as_bytes(), 0).unwrap();
        let tail = stderr_tail(&z).unwrap();
        assert!(tail.chars().count() <= STDERR_TAIL);
        assert!(tail.ends_with("\nlast line\u{fffd}"), "{tail:?}");
        assert_eq!(stderr_tail(&[]), None);
    }
}
