//! The tenant REST API. Every handler is scoped to the org of the presented API key; another
//! org's ids answer exactly as missing ones do.

use crate::error::{ControlError, Result};
use crate::outputs::{stored_inputs, stored_outputs, StoredInput, StoredOutput};
use crate::{presign_audit, AppState};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mpegflow_domain::command::{render, IoSpec};
use mpegflow_domain::job::JobState;
use mpegflow_domain::names::{asset_key, is_sha256_hex};
use mpegflow_domain::token::{Secret, TokenKind};
use mpegflow_objstore::media::{content_type_for_filename, safe_content_type};
use mpegflow_objstore::PutSpec;
use mpegflow_store::{Asset, Job, NewAsset, NewJob, StoreError, Submitted};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/assets", post(create_asset))
        .route("/v1/assets/{id}", get(get_asset))
        .route("/v1/assets/{id}/complete", post(complete_asset))
        .route("/v1/assets/{id}/download", get(download_asset))
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/stderr",
            get(attempt_stderr),
        )
        .fallback(|| async { ControlError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ControlError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The authenticated tenant: the org of the presented API key.
pub struct Tenant {
    pub org_id: Uuid,
    pub key_id: Uuid,
}

impl Tenant {
    fn actor(&self) -> String {
        format!("api_key:{}", self.key_id)
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ControlError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(ControlError::Unauthenticated)?;
        let secret =
            Secret::parse(TokenKind::ApiKey, token).map_err(|_| ControlError::Unauthenticated)?;
        let (org_id, key_id) = state
            .store
            .authenticate_api_key(&secret.hash())
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        Ok(Tenant { org_id, key_id })
    }
}

/// Largest JSON body any endpoint accepts.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// JSON body whose rejections are problem+json like every other error: 415 for a body that is
/// not declared JSON, 413 past [`MAX_BODY_BYTES`], 400 for malformed JSON, a wrong shape, or a
/// NUL character anywhere (PostgreSQL cannot store one, so it must never reach the store).
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ControlError;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let declared_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        if !declared_json {
            return Err(ControlError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ControlError::PayloadTooLarge(MAX_BODY_BYTES),
                _ => ControlError::invalid("invalid_body", e.body_text()),
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ControlError::invalid("invalid_body", format!("malformed JSON: {e}")))?;
        if contains_nul(&value) {
            return Err(ControlError::invalid(
                "invalid_body",
                "text must not contain NUL characters",
            ));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ControlError::invalid("invalid_body", e.to_string()))
    }
}

/// `application/json` or `application/<anything>+json`, parameters ignored.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// Whether any string or key of a JSON value holds a NUL character.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Query string whose rejections are problem+json (`invalid_query`).
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ControlError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let query = parts.uri.query().unwrap_or("");
        if query.contains("%00") || query.contains('\0') {
            return Err(ControlError::invalid(
                "invalid_query",
                "the query string must not contain NUL characters",
            ));
        }
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(ControlError::invalid("invalid_query", e.body_text())),
        }
    }
}

/// Path segments; a segment that does not even decode names nothing, so it is not found.
pub struct Segments<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Segments<T> {
    type Rejection = ControlError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Segments(v)),
            Err(_) => Err(ControlError::NotFound("resource")),
        }
    }
}

/// An id in the path; anything that is not a UUID is simply not found.
fn parse_id(s: &str, what: &'static str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| ControlError::NotFound(what))
}

fn not_found(what: &'static str) -> impl Fn(ControlError) -> ControlError {
    move |e| match e {
        ControlError::NotFound(_) => ControlError::NotFound(what),
        other => other,
    }
}

/// The caller's asset with this id; anything else is simply not found.
async fn tenant_asset(state: &AppState, tenant: &Tenant, id: &str) -> Result<Asset> {
    let id = parse_id(id, "asset")?;
    state
        .store
        .get_asset(tenant.org_id, id)
        .await
        .map_err(ControlError::from)
        .map_err(not_found("asset"))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Counters only: no tenant data.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>> {
    state.store.ping().await?;
    Ok(Json(json!({ "status": "ok" })))
}

// ---------------------------------------------------------------- assets

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAsset {
    filename: String,
    content_type: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
}

fn asset_json(a: &Asset) -> Value {
    json!({
        "id": a.id, "filename": a.filename, "content_type": a.content_type, "state": a.state,
        "size": a.size.or(a.declared_size), "sha256": a.sha256.as_ref().or(a.declared_sha256.as_ref()),
        "source_job_id": a.source_job_id,
        "created_at": rfc3339(a.created_at), "completed_at": a.completed_at.map(rfc3339),
    })
}

async fn create_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Body(req): Body<CreateAsset>,
) -> Result<Response> {
    if req.filename.is_empty()
        || req.filename.len() > 255
        || req.filename.chars().any(char::is_control)
    {
        return Err(ControlError::invalid(
            "invalid_filename",
            "filename must be 1-255 characters without control characters",
        ));
    }
    if let Some(sha) = &req.sha256 {
        if !is_sha256_hex(sha) {
            return Err(ControlError::invalid(
                "invalid_sha256",
                "sha256 must be 64 lowercase hex characters",
            ));
        }
    }
    // The size is signed into the upload URL, so the store refuses any other body.
    let Some(size) = req.size else {
        return Err(ControlError::invalid(
            "size_required",
            "size (the exact byte length of the upload) is required",
        ));
    };
    let limit = state.config.upload_limit();
    if size > limit {
        let why = if limit == mpegflow_objstore::media::SINGLE_PUT_LIMIT {
            " (the most one PUT may carry; multipart uploads are not offered)"
        } else {
            ""
        };
        return Err(ControlError::invalid(
            "too_large",
            format!("size {size} exceeds the upload limit of {limit} bytes{why}"),
        ));
    }
    let content_type = safe_content_type(req.content_type.as_deref());
    let id = Uuid::now_v7();
    let key = asset_key(tenant.org_id, id);
    let presigned = state
        .presigner
        .put(
            &key,
            state.config.presign_ttl(),
            &PutSpec {
                size,
                sha256_hex: req.sha256.as_deref(),
                content_type: Some(&content_type),
            },
        )
        .map_err(|e| ControlError::invalid("invalid_upload", e.to_string()))?;
    state
        .store
        .create_asset(&NewAsset {
            id,
            org_id: tenant.org_id,
            object_key: &key,
            filename: &req.filename,
            content_type: Some(&content_type),
            declared_size: Some(size as i64),
            declared_sha256: req.sha256.as_deref(),
        })
        .await?;
    state
        .store
        .audit(&presign_audit(
            tenant.org_id,
            tenant.actor(),
            None,
            id.to_string(),
            &key,
            &presigned,
            json!({ "size": size, "content_type": content_type }),
        ))
        .await?;
    let body = json!({
        "id": id, "upload_url": presigned.url, "upload_method": presigned.method,
        "upload_headers": presigned.headers, "expires_at": rfc3339(presigned.expires_at),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn get_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<Value>> {
    let asset = tenant_asset(&state, &tenant, &id).await?;
    Ok(Json(asset_json(&asset)))
}

/// Records a pending asset's bytes. Its upload URL was write-once, so once the object exists
/// nothing can change it: the size is checked against the signed one and the SHA-256 is the
/// store's checksum of the signed `x-amz-checksum-sha256`, or — when none was declared — the
/// control plane's own hash of the stored object.
async fn complete_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<Value>> {
    let asset = tenant_asset(&state, &tenant, &id).await?;
    if asset.state == "ready" {
        return Ok(Json(asset_json(&asset)));
    }
    let mut stored = state
        .head_object(&asset.object_key)
        .await
        .map_err(ControlError::Unavailable)?;
    let declared_size = asset.declared_size.unwrap_or(-1);
    if let Some(head) = &stored {
        // A declared SHA-256 was signed in and checked by the store while the body streamed.
        let needs_hash = asset.declared_sha256.is_none() && head.sha256.is_none();
        if needs_hash && head.size as i64 == declared_size {
            stored = state
                .hash_object(&asset.object_key, head.size)
                .await
                .map_err(ControlError::Unavailable)?;
        }
    }
    let Some(head) = stored else {
        return Err(ControlError::Conflict {
            code: "upload_missing",
            message: "nothing was uploaded for this asset".into(),
        });
    };
    if head.size as i64 != declared_size {
        return Err(ControlError::Conflict {
            code: "size_mismatch",
            message: "uploaded size differs from the declared size".into(),
        });
    }
    let sha256 = match (&asset.declared_sha256, &head.sha256) {
        (Some(declared), Some(stored)) if declared != stored => {
            return Err(ControlError::Conflict {
                code: "checksum_mismatch",
                message: "stored checksum differs".into(),
            })
        }
        (_, Some(stored)) => stored.clone(),
        (Some(declared), None) => declared.clone(),
        (None, None) => {
            return Err(ControlError::Unavailable(
                "could not establish the uploaded object's SHA-256".into(),
            ))
        }
    };
    let asset = state
        .store
        .complete_asset(tenant.org_id, asset.id, head.size as i64, &sha256)
        .await?;
    Ok(Json(asset_json(&asset)))
}

/// A download URL that makes the store answer with a safe content type and as an attachment.
async fn download_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<Value>> {
    let asset = tenant_asset(&state, &tenant, &id).await?;
    if asset.state != "ready" {
        return Err(ControlError::Conflict {
            code: "asset_not_ready",
            message: "the asset has not been completed".into(),
        });
    }
    let content_type = match asset.content_type.as_deref() {
        Some(t) => safe_content_type(Some(t)),
        None => safe_content_type(Some(content_type_for_filename(&asset.filename))),
    };
    let presigned = state.presigner.download(
        &asset.object_key,
        state.config.presign_ttl(),
        &asset.filename,
        Some(&content_type),
    );
    state
        .store
        .audit(&presign_audit(
            tenant.org_id,
            tenant.actor(),
            asset.source_job_id,
            asset.id.to_string(),
            &asset.object_key,
            &presigned,
            json!({}),
        ))
        .await?;
    Ok(Json(json!({
        "url": presigned.url, "expires_at": rfc3339(presigned.expires_at),
        "content_type": content_type,
    })))
}

// ---------------------------------------------------------------- jobs

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitJob {
    inputs: BTreeMap<String, String>,
    outputs: BTreeMap<String, String>,
    command: String,
    pool: Option<String>,
    timeout_seconds: Option<u32>,
    metadata: Option<Map<String, Value>>,
}

async fn submit_job(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Body(raw): Body<Value>,
) -> Result<Response> {
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255);
            Some(
                k.ok_or_else(|| {
                    ControlError::invalid(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1-255 visible characters",
                    )
                })?
                .to_owned(),
            )
        }
        None => None,
    };
    // serde_json's map is ordered, so this hash is stable for the same request.
    let request_hash = Sha256::digest(raw.to_string().as_bytes()).to_vec();
    let req: SubmitJob = serde_json::from_value(raw)
        .map_err(|e| ControlError::invalid("invalid_body", e.to_string()))?;

    if req.inputs.is_empty() {
        return Err(ControlError::invalid(
            "invalid_job",
            "a job needs at least one input",
        ));
    }
    if req.outputs.is_empty() {
        return Err(ControlError::invalid(
            "invalid_job",
            "a job needs at least one output",
        ));
    }
    let timeout = req
        .timeout_seconds
        .unwrap_or(state.config.default_timeout_seconds);
    if timeout == 0 || timeout > state.config.max_timeout_seconds {
        return Err(ControlError::invalid(
            "invalid_timeout",
            format!(
                "timeout_seconds must be 1-{}",
                state.config.max_timeout_seconds
            ),
        ));
    }
    let metadata = Value::Object(req.metadata.unwrap_or_default());
    if metadata.to_string().len() > 16 * 1024 {
        return Err(ControlError::invalid(
            "invalid_metadata",
            "metadata must be at most 16 KiB of JSON",
        ));
    }

    // Inputs: each must be a completed asset of this org.
    let mut ids = Vec::new();
    for (alias, id) in &req.inputs {
        let id = Uuid::parse_str(id).map_err(|_| {
            ControlError::invalid(
                "unknown_asset",
                format!("input {alias:?}: asset {id} not found"),
            )
        })?;
        ids.push((alias.clone(), id));
    }
    let assets = state
        .store
        .get_assets(
            tenant.org_id,
            &ids.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        )
        .await?;
    let mut spec = IoSpec::default();
    let mut inputs = Vec::new();
    for (alias, id) in &ids {
        let asset = assets.iter().find(|a| a.id == *id).ok_or_else(|| {
            ControlError::invalid(
                "unknown_asset",
                format!("input {alias:?}: asset {id} not found"),
            )
        })?;
        if asset.state != "ready" {
            return Err(ControlError::invalid(
                "asset_not_ready",
                format!("input {alias:?}: asset {id} has not been completed"),
            ));
        }
        spec.add_input(alias, &asset.filename)?;
        inputs.push(StoredInput {
            alias: alias.clone(),
            asset_id: asset.id,
            filename: asset.filename.clone(),
            path: spec.input_path(alias).unwrap_or_default(),
            object_key: asset.object_key.clone(),
            size: asset.size,
            sha256: asset.sha256.clone(),
        });
    }
    let mut outputs = Vec::new();
    for (alias, filename) in &req.outputs {
        spec.add_output(alias, filename)?;
        outputs.push(StoredOutput {
            alias: alias.clone(),
            filename: filename.clone(),
        });
    }
    let argv = render(&req.command, &spec, state.config.job_threads)?;

    let pool_name = req.pool.as_deref().unwrap_or("default");
    let pool = match state.store.pool_by_name(pool_name).await {
        Ok(p) if p.org_id.is_none() || p.org_id == Some(tenant.org_id) => p,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(ControlError::invalid(
                "unknown_pool",
                format!("pool {pool_name:?} not found"),
            ))
        }
        Err(e) => return Err(e.into()),
    };

    let new = NewJob {
        id: Uuid::now_v7(),
        org_id: tenant.org_id,
        pool_id: pool.id,
        command: req.command,
        argv: json!(argv),
        inputs: serde_json::to_value(&inputs).map_err(|e| ControlError::Internal(e.to_string()))?,
        outputs: serde_json::to_value(&outputs)
            .map_err(|e| ControlError::Internal(e.to_string()))?,
        timeout_seconds: timeout as i32,
        max_attempts: state.config.max_attempts as i32,
        metadata,
        idempotency_key,
        request_hash,
        actor: tenant.actor(),
        // The grammar the command was validated against: only workers implementing it run it.
        grammar: state.config.ffmpeg_grammar.clone(),
    };
    match state.store.submit_job(new).await {
        Ok(Submitted::Created(job)) => {
            state.job_queued.notify_waiters();
            tracing::info!(job_id = %job.id, org_id = %job.org_id, "job submitted");
            Ok((StatusCode::CREATED, Json(job_json(&job, &pool.name, None))).into_response())
        }
        Ok(Submitted::Replayed(job)) => {
            Ok((StatusCode::OK, Json(job_json(&job, &pool.name, None))).into_response())
        }
        Err(StoreError::Conflict(message)) => Err(ControlError::Conflict {
            code: "idempotency_conflict",
            message,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The public shape of a job.
fn job_json(job: &Job, pool: &str, history: Option<Value>) -> Value {
    let inputs: Map<String, Value> = stored_inputs(job)
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.alias, json!(i.asset_id)))
        .collect();
    let result_outputs = job
        .result
        .as_ref()
        .and_then(|r| r.get("outputs"))
        .and_then(Value::as_object);
    let outputs: Map<String, Value> = stored_outputs(job)
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let v = result_outputs
                .and_then(|r| r.get(&o.alias))
                .cloned()
                .unwrap_or_else(|| json!({ "filename": o.filename }));
            (o.alias, v)
        })
        .collect();
    let error = job.error_code.as_ref().filter(|_| job.state() == JobState::Failed).map(|code| {
        json!({ "code": code, "message": job.error_message, "stderr_tail": job.stderr_tail })
    });
    let mut v = json!({
        "id": job.id,
        "workflow_id": job.workflow_id,
        "state": job.state,
        "progress": job.progress,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "pool": pool,
        "command": job.command,
        "argv": job.argv,
        "inputs": inputs,
        "outputs": outputs,
        "error": error,
        "timeout_seconds": job.timeout_seconds,
        "metadata": job.metadata,
        "created_at": rfc3339(job.created_at),
        "started_at": job.started_at.map(rfc3339),
        "finished_at": job.finished_at.map(rfc3339),
    });
    if let Some(h) = history {
        v["history"] = h;
    }
    v
}

async fn pool_name(state: &AppState, job: &Job) -> String {
    state
        .store
        .pool_name(job.pool_id)
        .await
        .unwrap_or_else(|_| job.pool_id.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetJobQuery {
    /// Long-poll: answer once the job is finished or its state or progress changes, or after
    /// this many seconds (at most 30).
    wait_seconds: Option<u64>,
}

async fn get_job(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
    Params(q): Params<GetJobQuery>,
) -> Result<Json<Value>> {
    let id = parse_id(&id, "job")?;
    let load = || async {
        state
            .store
            .get_job(tenant.org_id, id)
            .await
            .map_err(ControlError::from)
            .map_err(not_found("job"))
    };
    let mut job = load().await?;
    let wait = std::time::Duration::from_secs(q.wait_seconds.unwrap_or(0).min(30));
    let deadline = tokio::time::Instant::now() + wait;
    let seen = (job.state.clone(), job.progress);
    while !job.state().is_terminal() && tokio::time::Instant::now() < deadline {
        let changed = state.job_changed.notified();
        // Changes made by other replicas are seen within a second.
        let nap = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(std::time::Duration::from_secs(1));
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(nap) => {}
        }
        job = load().await?;
        if (job.state.clone(), job.progress) != seen {
            break;
        }
    }
    let history = state.store.job_attempts(job.id).await?;
    let pool = pool_name(&state, &job).await;
    Ok(Json(job_json(&job, &pool, Some(json!(history)))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list_jobs(
    State(state): State<AppState>,
    tenant: Tenant,
    Params(q): Params<ListQuery>,
) -> Result<Json<Value>> {
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ControlError::invalid("invalid_state", e.to_string()))?,
        ),
    };
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            Uuid::parse_str(c)
                .map_err(|_| ControlError::invalid("invalid_cursor", "cursor is not valid"))?,
        ),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let jobs = state
        .store
        .list_jobs(tenant.org_id, filter, before, limit + 1)
        .await?;
    let more = jobs.len() as i64 > limit;
    let page = &jobs[..jobs.len().min(limit as usize)];
    let pool_ids: Vec<Uuid> = page.iter().map(|j| j.pool_id).collect();
    let pools = state.store.pool_names(&pool_ids).await?;
    let items: Vec<Value> = page
        .iter()
        .map(|job| {
            let pool = pools
                .get(&job.pool_id)
                .cloned()
                .unwrap_or_else(|| job.pool_id.to_string());
            job_json(job, &pool, None)
        })
        .collect();
    let next = if more {
        page.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "jobs": items, "next_cursor": next })))
}

/// FFmpeg's full stderr of one attempt, as text.
async fn attempt_stderr(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments((id, attempt)): Segments<(String, String)>,
) -> Result<Response> {
    let id = parse_id(&id, "job")?;
    let job = state
        .store
        .get_job(tenant.org_id, id)
        .await
        .map_err(ControlError::from)
        .map_err(not_found("job"))?;
    let attempt: i32 = attempt
        .parse()
        .map_err(|_| ControlError::NotFound("attempt"))?;
    let stderr = state
        .store
        .attempt_stderr(job.id, attempt)
        .await?
        .ok_or(ControlError::NotFound("attempt"))?;
    let text = crate::outputs::decompress_stderr(&stderr);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn cancel_job(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<Value>> {
    let id = parse_id(&id, "job")?;
    let job = match state
        .store
        .cancel_job(tenant.org_id, id, tenant.actor())
        .await
    {
        Ok(job) => job,
        Err(StoreError::NotFound) => return Err(ControlError::NotFound("job")),
        Err(StoreError::Conflict(message)) => {
            return Err(ControlError::Conflict {
                code: "job_finished",
                message,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let pool = pool_name(&state, &job).await;
    Ok(Json(job_json(&job, &pool, None)))
}
