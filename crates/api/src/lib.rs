//! The tenant HTTP API's contract: every request and response body, query and error, as types
//! that derive serde and OpenAPI schemas. The control plane answers with them, the CLI and the
//! integration tests read them; nothing else handles the API's raw JSON.
//!
//! Requests refuse unknown fields and parse their values at the edge ([`newtypes`]); responses
//! list every field as required (nullable ones as `null`), and every time is a [`Timestamp`].

mod metadata;
pub mod newtypes;
mod timestamp;
pub mod webhooks;
pub mod whole_number;

pub use metadata::{MetadataValue, NO_NUL_PATTERN};
pub use mpegflow_domain::media::{MediaInfo, MediaStream, StreamKind};
pub use newtypes::{
    Alias, FileName, IdempotencyKey, OutputName, ParseError, PoolName, Sha256Hex, TimeoutSeconds,
    MAX_TIMEOUT_SECONDS,
};
pub use timestamp::Timestamp;
pub use webhooks::*;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Largest JSON body any endpoint accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest `metadata` object of a job, as JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest asset an upload may announce: the most one S3 PUT may carry (multipart uploads are
/// not offered). A store configured lower refuses more with 400 `too_large`.
pub const MAX_UPLOAD_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Longest `content_type` an upload may announce, in characters.
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;
/// Page sizes of lists.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;
/// The longest a `GET /v1/jobs/{id}?wait_seconds=` long-poll is held.
pub const MAX_WAIT_SECONDS: u32 = 30;

// ---------------------------------------------------------------- errors

/// An error answer (RFC 9457 problem details, `application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// A URI naming the problem kind: `https://mpegflow.dev/problems/{code}`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    /// A stable machine-readable code, e.g. `invalid_command`, `not_found`, `unauthenticated`.
    pub code: String,
    /// What was wrong, for a human.
    pub detail: String,
    /// For `invalid_command`: the template argument that was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
}

/// `GET /healthz` (liveness) and `GET /readyz` (readiness).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok` (a control plane that is not ready answers `/readyz` with 503 and a problem).
    pub status: String,
}

// ---------------------------------------------------------------- assets

/// `POST /v1/assets`: announce an upload. The answer holds a presigned, write-once URL that
/// accepts exactly `size` bytes (and, when given, exactly the bytes with this SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"filename": "in.mp4", "size": 1_048_576, "content_type": "video/mp4"})))]
pub struct AssetIn {
    pub filename: FileName,
    /// The uploaded bytes' exact length (at most 5 GiB, the most one PUT may carry).
    #[schema(maximum = 5_368_709_120_u64)]
    #[serde(deserialize_with = "whole_number::u64")]
    pub size: u64,
    /// The uploaded bytes' SHA-256; the store then refuses any other body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Hex>,
    /// Stored and served only if it is a safe media type; otherwise `application/octet-stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255, pattern = "^[^\\u0000]*$")]
    pub content_type: Option<String>,
}

/// A new asset and where to upload its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetUpload {
    pub id: Uuid,
    pub upload_url: String,
    /// Always `PUT`.
    pub upload_method: String,
    /// Headers the upload must carry exactly (they are signed into the URL).
    pub upload_headers: BTreeMap<String, String>,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssetState {
    /// Announced; its bytes are not confirmed yet (`POST /v1/assets/{id}/complete`).
    Pending,
    /// Its bytes are stored, sized and hashed, and can never change.
    Ready,
}

/// An uploaded file or a job's output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub id: Uuid,
    pub filename: FileName,
    #[schema(required = true)]
    pub content_type: Option<String>,
    pub state: AssetState,
    /// The declared size while pending, the stored size once ready.
    #[schema(required = true)]
    pub size: Option<u64>,
    #[schema(required = true)]
    pub sha256: Option<Sha256Hex>,
    /// The job that produced it, for outputs.
    #[schema(required = true)]
    pub source_job_id: Option<Uuid>,
    pub created_at: Timestamp,
    #[schema(required = true)]
    pub completed_at: Option<Timestamp>,
    /// When it is deleted unless a job uses it first (`null` once a job used it, and for
    /// outputs).
    #[schema(required = true)]
    pub expires_at: Option<Timestamp>,
    /// For an output: what it is as media (see `OutputFile.media`).
    #[serde(default)]
    #[schema(required = true)]
    pub media: Option<MediaInfo>,
}

/// A page of assets, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetList {
    pub assets: Vec<Asset>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /v1/assets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAssetsQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// Assets per page (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

// ---------------------------------------------------------------- pools

/// A worker pool the caller may submit to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: PoolName,
    /// Shared by every org (`false`: dedicated to the caller's org).
    pub shared: bool,
    /// Workers in touch with the control plane now. A job for a pool without any waits until
    /// one joins.
    pub live_workers: u32,
}

/// `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

/// `GET /v1/assets/{id}/download`: a short-lived URL that serves the bytes as an attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetDownload {
    pub url: String,
    pub expires_at: Timestamp,
    /// What the store answers as `Content-Type`.
    pub content_type: String,
}

// ---------------------------------------------------------------- jobs

/// A job's state. `succeeded`, `failed` and `canceled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        mpegflow_domain::job::JobState::from(self).is_terminal()
    }
    pub fn as_str(self) -> &'static str {
        mpegflow_domain::job::JobState::from(self).as_str()
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<mpegflow_domain::job::JobState> for JobState {
    fn from(s: mpegflow_domain::job::JobState) -> Self {
        use mpegflow_domain::job::JobState as D;
        match s {
            D::Queued => JobState::Queued,
            D::Running => JobState::Running,
            D::Succeeded => JobState::Succeeded,
            D::Failed => JobState::Failed,
            D::Canceled => JobState::Canceled,
        }
    }
}

impl From<JobState> for mpegflow_domain::job::JobState {
    fn from(s: JobState) -> Self {
        use mpegflow_domain::job::JobState as D;
        match s {
            JobState::Queued => D::Queued,
            JobState::Running => D::Running,
            JobState::Succeeded => D::Succeeded,
            JobState::Failed => D::Failed,
            JobState::Canceled => D::Canceled,
        }
    }
}

/// `POST /v1/jobs`: run an FFmpeg command template on uploaded assets.
///
/// The template names inputs and outputs by alias (`-i {{in}} -c:v libx264 {{out}}`); it is
/// parsed with FFmpeg's own grammar, checked against allowlists and rendered into the argv that
/// runs. A refused template answers 400 `invalid_command` naming the argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "inputs": {"in": "0190f5d6-0000-7000-8000-000000000000"},
    "outputs": {"out": "out.mp4"},
    "command": "-i {{in}} -c:v libx264 -preset ultrafast {{out}}",
    "timeout_seconds": 600,
    "metadata": {"customer_ref": "A-42"}
})))]
pub struct JobIn {
    /// Input alias → id of a ready asset of this org. At least one.
    pub inputs: BTreeMap<Alias, Uuid>,
    /// Output alias → file name (a trailing `/` declares a directory of files). At least one.
    pub outputs: BTreeMap<Alias, OutputName>,
    /// The FFmpeg command template, without the leading `ffmpeg`.
    #[schema(min_length = 1, max_length = 65536, pattern = "^[^\\u0000]*$")]
    pub command: String,
    /// The worker pool to run on; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
    /// Wall-clock limit; the control plane's default (one hour) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<TimeoutSeconds>,
    /// Free-form JSON object (at most 16 KiB), returned with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = metadata::request_metadata)]
    pub metadata: Option<Map<String, Value>>,
}

impl JobIn {
    /// A job of `command` on these inputs (alias, asset id) and outputs (alias, file name),
    /// with every option left to the control plane.
    pub fn new<'a>(
        inputs: impl IntoIterator<Item = (&'a str, Uuid)>,
        outputs: impl IntoIterator<Item = (&'a str, &'a str)>,
        command: impl Into<String>,
    ) -> Result<Self, ParseError> {
        Ok(JobIn {
            inputs: inputs
                .into_iter()
                .map(|(a, id)| Ok((Alias::parse(a)?, id)))
                .collect::<Result<_, ParseError>>()?,
            outputs: outputs
                .into_iter()
                .map(|(a, f)| Ok((Alias::parse(a)?, OutputName::parse(f)?)))
                .collect::<Result<_, ParseError>>()?,
            command: command.into(),
            pool: None,
            timeout_seconds: None,
            metadata: None,
        })
    }
}

/// `POST /v1/jobs/validate`: check a template against declared inputs and outputs before
/// uploading anything. Inputs are named by the file names they will have (only the extension
/// matters). Answers the argv that would run, or the same 400 a submission would get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "inputs": {"in": "in.mp4", "logo": "logo.png"},
    "outputs": {"out": "out.mp4"},
    "command": "-i {{in}} -i {{logo}} -filter_complex overlay=10:10 -c:v libx264 {{out}}"
})))]
pub struct JobValidateIn {
    /// Input alias → the file name the input will be uploaded with. At least one.
    pub inputs: BTreeMap<Alias, FileName>,
    /// Output alias → file name. At least one.
    pub outputs: BTreeMap<Alias, OutputName>,
    #[schema(min_length = 1, max_length = 65536, pattern = "^[^\\u0000]*$")]
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<TimeoutSeconds>,
}

/// A template that would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobValidation {
    /// The exact argv a worker would run (paths are the job directory's).
    pub argv: Vec<String>,
    /// The pool it would run on.
    pub pool: PoolName,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobError {
    /// e.g. `invalid_input`, `ffmpeg_failed`, `time_limit`, `output_limit`, `lease_expired`.
    pub code: String,
    #[schema(required = true)]
    pub message: Option<String>,
    /// The last lines FFmpeg wrote to stderr.
    #[schema(required = true)]
    pub stderr_tail: Option<String>,
}

/// One stored file of an output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    /// The asset holding it (download with `GET /v1/assets/{id}/download`).
    pub asset_id: Uuid,
    /// Its name: the output's file name, or the entry's name inside a directory output.
    pub path: String,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// What the file is as media: format, duration and streams, as the worker's jailed ffprobe
    /// read the job's output (the worker's word, like the bytes it produced). `null` for a file
    /// ffprobe does not read as media (a playlist, say), for files past the first 256 of a job,
    /// and for jobs recorded before media was measured.
    #[serde(default)]
    #[schema(required = true)]
    pub media: Option<MediaInfo>,
}

/// A declared output and, once the job succeeded, its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOutput {
    /// As declared (`out.mp4`, or `hls/` for a directory).
    pub filename: OutputName,
    /// Empty until the job succeeded; then one file, or every file of a directory output.
    pub files: Vec<OutputFile>,
}

/// A phase of an attempt as the worker reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptStage {
    /// `download`, `validate` (only for subtitle files a filter reads; FFmpeg validates media
    /// inputs in the encode's own run), `encode`, `measure`, `upload`.
    pub name: String,
    #[schema(required = true)]
    pub started_at: Option<Timestamp>,
    #[schema(required = true)]
    pub finished_at: Option<Timestamp>,
    /// CPU time (user + system, milliseconds) the worker and the stage's FFmpeg/ffprobe
    /// processes used: the worker's word. Absent for attempts recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
}

/// An input as the attempt's worker received it (the worker's word).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptInput {
    pub alias: String,
    pub size: u64,
    pub sha256: String,
}

/// An output file of the attempt, verified against its upload grant and the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptOutput {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// One run of a job on a worker: its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// 1 for the first run.
    pub attempt: u32,
    pub worker_id: Uuid,
    pub assigned_at: Timestamp,
    #[schema(required = true)]
    pub finished_at: Option<Timestamp>,
    /// `succeeded`, `failed`, `canceled`, `lease_expired`, … (`null` while running).
    #[schema(required = true)]
    pub outcome: Option<String>,
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    #[schema(required = true)]
    pub error_code: Option<String>,
    #[schema(required = true)]
    pub error_message: Option<String>,
    #[schema(required = true)]
    pub ffmpeg_version: Option<String>,
    /// Whose fault a failed attempt was: `job` (counts against `max_attempts`) or `platform`
    /// (a store, the database or a worker failed it; costs none of the job's attempts).
    /// `null` while running, after success, and for a failure awaiting another worker's
    /// confirmation.
    #[schema(required = true)]
    pub fault: Option<Fault>,
    pub stages: Vec<AttemptStage>,
    pub inputs: Vec<AttemptInput>,
    pub outputs: Vec<AttemptOutput>,
}

/// Whose fault a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Job,
    Platform,
}

/// What a running job is doing now, from its worker's last heartbeat (the worker's word).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveStatus {
    /// `download`, `validate`, `encode`, `measure` (ffprobe reads the outputs) or `upload`.
    #[schema(required = true)]
    pub stage: Option<String>,
    /// FFmpeg's encoding speed: media time per wall-clock time (2.0 = twice real time).
    #[schema(required = true)]
    pub speed: Option<f32>,
    /// Frames FFmpeg encodes per second.
    #[schema(required = true)]
    pub fps: Option<f32>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub state: JobState,
    /// Encode progress from 0 to 1 while running, when the duration is known.
    #[schema(required = true)]
    pub progress: Option<f32>,
    /// While running: the stage, speed and fps (`null` otherwise).
    #[schema(required = true)]
    pub live: Option<LiveStatus>,
    /// Runs started so far.
    pub attempts: u32,
    /// Runs that may fail by the job's own fault (its input, its command); the last such
    /// failure is final.
    pub max_attempts: u32,
    /// Runs that failed by the job's own fault so far (they count against `max_attempts`).
    pub job_faults: u32,
    /// Runs lost to the platform (a store, the database or a worker failing): each is retried
    /// at once in the job's place in the queue, up to a bound of the platform's, and none
    /// counts against `max_attempts`.
    pub platform_faults: u32,
    pub pool: String,
    /// The template as submitted.
    pub command: String,
    /// What runs: rendered from the parsed template.
    pub argv: Vec<String>,
    /// Input alias → asset id.
    pub inputs: BTreeMap<Alias, Uuid>,
    pub outputs: BTreeMap<Alias, JobOutput>,
    /// Set when the job failed.
    #[schema(required = true)]
    pub error: Option<JobError>,
    pub timeout_seconds: u32,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: Timestamp,
    #[schema(required = true)]
    pub started_at: Option<Timestamp>,
    #[schema(required = true)]
    pub finished_at: Option<Timestamp>,
    /// Every attempt, oldest first (`GET /v1/jobs/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Attempt>>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// Jobs per page (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetJobQuery {
    /// Long-poll: answer once the job finishes or its state or progress changes, or after this
    /// many seconds.
    #[param(minimum = 0, maximum = 30)]
    pub wait_seconds: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    #[test]
    fn requests_refuse_unknown_fields_and_bad_values() {
        let ok = r#"{"inputs":{"in":"0190f5d6-0000-7000-8000-000000000000"},"outputs":{"out":"o.mp4"},"command":"-i {{in}} {{out}}"}"#;
        let job: JobIn = serde_json::from_str(ok).unwrap();
        assert_eq!(job.outputs[&Alias::parse("out").unwrap()].as_str(), "o.mp4");
        let unknown = ok.replace("\"command\"", "\"extra\":1,\"command\"");
        assert!(serde_json::from_str::<JobIn>(&unknown).is_err());
        let bad_alias = ok.replace("\"in\":", "\"In\":");
        let err = serde_json::from_str::<JobIn>(&bad_alias).unwrap_err();
        assert!(err.to_string().contains("alias \"In\""), "{err}");
    }

    #[test]
    fn response_schemas_require_every_field() {
        let schema = serde_json::to_value(Job::schema()).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in ["error", "progress", "started_at", "finished_at", "outputs"] {
            assert!(
                required.contains(&field),
                "{field} not required: {required:?}"
            );
        }
        assert!(!required.contains(&"history"));
        assert_eq!(schema["additionalProperties"], false);
    }
}
