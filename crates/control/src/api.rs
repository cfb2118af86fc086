//! The tenant REST API: routes, request parsing and the OpenAPI document. Each handler parses
//! the request, calls a use-case of [`crate::service`] and maps its answer; every body is a
//! type of `mpegflow-api`. Every handler is scoped to the org of the presented API key; another
//! org's ids answer exactly as missing ones do.

use crate::error::{ControlError, Result};
use crate::service::{self, Tenant};
use crate::AppState;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mpegflow_api as api;
use mpegflow_domain::token::{Secret, TokenKind};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Duration;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use uuid::Uuid;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/assets", post(create_asset).get(list_assets))
        .route("/v1/assets/{id}", get(get_asset).delete(delete_asset))
        .route("/v1/assets/{id}/complete", post(complete_asset))
        .route("/v1/assets/{id}/download", get(download_asset))
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/validate", post(validate_job))
        .route("/v1/pools", get(list_pools))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/stderr",
            get(attempt_stderr),
        )
        .route("/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route(
            "/v1/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(rotate_webhook_secret),
        )
        .route("/v1/webhooks/{id}/enable", post(enable_webhook))
        .route("/v1/webhooks/{id}/recover", post(recover_webhook))
        .route("/v1/webhooks/{id}/deliveries", get(list_webhook_deliveries))
        .route("/v1/webhook-deliveries/{id}", get(get_webhook_delivery))
        .route("/v1/webhook-events", get(stream_webhook_events))
        .route(
            "/v1/webhook-deliveries/{id}/replay",
            post(replay_webhook_delivery),
        )
        .fallback(|| async { ControlError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ControlError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .with_state(state)
}

/// A request refused before its body was read (unauthenticated, wrong content type, …) ends
/// its connection: hyper cannot tell where the next request on it would start until the body
/// arrived, and closes it once the answer is out — a client that had already reused the
/// connection would see it cut. `Connection: close` says so first.
async fn close_if_body_unread(req: Request, next: axum::middleware::Next) -> Response {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let empty = req
        .headers()
        .get(CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0")
        || (!req.headers().contains_key(CONTENT_LENGTH)
            && !req.headers().contains_key(TRANSFER_ENCODING));
    if empty {
        return next.run(req).await;
    }
    let read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|body| {
        axum::body::Body::new(ReadToEnd {
            inner: body,
            read: read.clone(),
        })
    });
    let mut resp = next.run(req).await;
    if !read.load(std::sync::atomic::Ordering::Relaxed) {
        resp.headers_mut()
            .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that notes when it was read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    read: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>>
    {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- the document

/// The OpenAPI 3.1 document of this API, generated from the handlers and `mpegflow-api`'s
/// types. `docs/openapi.json` is a committed copy; a test fails when the two differ.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "MpegFlow API",
        description = "Run FFmpeg command templates on uploaded media, on a shared fleet of sandboxed workers. Authenticate with `Authorization: Bearer mfk_…` (an org's API key). Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        healthz, readyz, create_asset, list_assets, get_asset, delete_asset, complete_asset,
        download_asset, submit_job, validate_job, list_jobs, get_job, cancel_job,
        attempt_stderr, list_pools, create_webhook, list_webhooks, get_webhook, update_webhook,
        delete_webhook, rotate_webhook_secret, enable_webhook, recover_webhook,
        list_webhook_deliveries, get_webhook_delivery, replay_webhook_delivery,
        stream_webhook_events
    ),
    components(schemas(api::IdempotencyKey, api::MetadataValue, api::Problem, api::JobEventData,
        api::JobProgressData, api::WebhookDisabledData, api::StreamedEvent)),
    modifiers(&ApiKeyAuth, &AtLeastOneInputAndOutput),
    tags(
        (name = "assets", description = "Uploaded inputs and produced outputs"),
        (name = "jobs", description = "FFmpeg jobs"),
        (name = "pools", description = "Where jobs run"),
        (name = "webhooks", description = "Signed event deliveries to your endpoints"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl utoipa::Modify for ApiKeyAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An org's API key (`mfk_…`)"))
                    .build(),
            ),
        );
    }
}

/// A job's `inputs` and `outputs` each need an entry (the service refuses empty ones with 400
/// `invalid_job`); utoipa has no field attribute for `minProperties`, so it is set here.
struct AtLeastOneInputAndOutput;

impl utoipa::Modify for AtLeastOneInputAndOutput {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for name in ["JobIn", "JobValidateIn"] {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) else {
                continue;
            };
            for field in ["inputs", "outputs"] {
                if let Some(RefOr::T(Schema::Object(map))) = object.properties.get_mut(field) {
                    map.min_properties = Some(1);
                }
            }
        }
    }
}

/// The document as served and committed.
pub fn openapi_document() -> String {
    let mut doc = ApiDoc::openapi();
    // One version for the document and the code, whatever the crate's own version says.
    doc.info.version = "1".into();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    if let Some(map) = doc.as_object_mut() {
        map.insert("webhooks".into(), webhooks_section());
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// OpenAPI 3.1's `webhooks`: what each event's delivery carries (utoipa cannot generate the
/// section, so it is written here from the same schemas).
fn webhooks_section() -> Value {
    use mpegflow_domain::webhook::EventType;
    let header = |name: &str, description: &str| {
        serde_json::json!({ "name": name, "in": "header", "required": true,
                            "description": description, "schema": { "type": "string" } })
    };
    let parameters = [
        header("X-MpegFlow-Id", "The message id (`msg_…`): the same on every attempt and replay; de-duplicate on it. Also sent as `webhook-id`."),
        header("X-MpegFlow-Timestamp", "Unix seconds of this attempt; refuse ones older than 5 minutes. Also sent as `webhook-timestamp`."),
        header("X-MpegFlow-Event", "The event type, also in the signed body's `type`."),
        header("X-MpegFlow-Signature", "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` under the endpoint's secret (the decoded bytes of `whsec_…`); space-separated when a rotation overlaps. Also sent as `webhook-signature` (Standard Webhooks)."),
    ];
    let mut section = serde_json::Map::new();
    for event in EventType::ALL {
        let data = match event {
            EventType::JobProgress => "JobProgressData",
            EventType::WebhookDisabled => "WebhookDisabledData",
            _ => "JobEventData",
        };
        section.insert(
            event.as_str().into(),
            serde_json::json!({ "post": {
                "summary": format!("`{}`", event.as_str()),
                "description": format!(
                    "Sent to endpoints subscribed to `{}`{}. Any 2xx acknowledges it; anything else, or no answer within 15 s, is retried after 1 min, 5 min, 30 min, 2 h, 5 h, then every 10 h (9 attempts over about 38 h; a `Retry-After` is honoured).",
                    event.as_str(),
                    if event.subscribed_by_default() { "" } else { " (not subscribed by default)" }),
                "tags": ["webhooks"],
                "parameters": parameters,
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object",
                    "required": ["type", "timestamp", "data"],
                    "additionalProperties": false,
                    "properties": {
                        "type": { "const": event.as_str() },
                        "timestamp": { "type": "string", "format": "date-time",
                                       "description": "When the event happened" },
                        "data": { "$ref": format!("#/components/schemas/{data}") },
                    },
                } } } },
                "responses": { "2XX": { "description": "Acknowledged" } },
            } }),
        );
    }
    Value::Object(section)
}

async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(openapi_document);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str(),
    )
        .into_response()
}

/// The problems every authenticated call can answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Errors {
    /// The request is malformed or refused (`code` says why; `argument` names a refused
    /// template argument).
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(api::Problem),
    /// Missing, malformed, unknown or revoked API key.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(api::Problem),
    /// No such resource in the caller's org (another org's ids answer the same).
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(api::Problem),
    /// The route exists, but not with this method.
    #[response(status = 405, content_type = "application/problem+json")]
    MethodNotAllowed(api::Problem),
    /// The resource is not in a state that allows this.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(api::Problem),
    /// The body is larger than 1 MiB.
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(api::Problem),
    /// The body is not declared as JSON.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(api::Problem),
    /// A limit on the caller was reached; retry later.
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(api::Problem),
    /// The database (`code` `database_unavailable`) or the object store is unreachable;
    /// retry after `Retry-After` seconds.
    #[response(status = 503, content_type = "application/problem+json",
        headers(("Retry-After" = String, description = "Seconds to wait before retrying")))]
    Unavailable(api::Problem),
}

/// The answers of `/readyz`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Readiness {
    /// Ready: the database answers.
    #[response(status = 200)]
    Ready(api::Health),
    /// Not ready: the database is unreachable (`code` `database_unavailable`).
    #[response(status = 503, content_type = "application/problem+json",
        headers(("Retry-After" = String, description = "Seconds to wait before retrying")))]
    NotReady(api::Problem),
}

// ---------------------------------------------------------------- request parsing

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

/// JSON body whose rejections are problem+json like every other error: 415 for a body that is
/// not declared JSON, 413 past [`api::MAX_BODY_BYTES`], 400 for malformed JSON, a wrong shape, or a
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
                StatusCode::PAYLOAD_TOO_LARGE => ControlError::PayloadTooLarge(api::MAX_BODY_BYTES),
                _ => ControlError::invalid("invalid_body", e.body_text()),
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ControlError::invalid("invalid_body", format!("malformed JSON: {e}")))?;
        // Every body is an object; serde would also read a struct from an array of its fields.
        if !value.is_object() {
            return Err(ControlError::invalid(
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
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

// ---------------------------------------------------------------- handlers

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

/// Liveness: the control plane answers. It does not touch the database, so it stays up (and
/// the process is not restarted) through a database outage; see `/readyz`.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = api::Health)))]
async fn healthz() -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
    })
}

/// Readiness: the control plane can serve requests, i.e. its database answers. While the
/// database is unreachable it answers 503 `database_unavailable` within about a second.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(Readiness))]
async fn readyz(State(state): State<AppState>) -> Result<Json<api::Health>> {
    state.store.ping().await?;
    Ok(Json(api::Health {
        status: "ok".into(),
    }))
}

/// Announce an upload: answers a presigned, write-once PUT URL for exactly `size` bytes.
/// Upload with the returned headers, then complete the asset.
#[utoipa::path(post, path = "/v1/assets", tag = "assets", request_body = api::AssetIn,
    security(("api_key" = [])),
    responses((status = 201, body = api::AssetUpload), Errors))]
async fn create_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Body(req): Body<api::AssetIn>,
) -> Result<(StatusCode, Json<api::AssetUpload>)> {
    let upload = service::assets::create(&state, &tenant, &req).await?;
    Ok((StatusCode::CREATED, Json(upload)))
}

#[utoipa::path(get, path = "/v1/assets/{id}", tag = "assets",
    params(("id" = Uuid, Path, description = "Asset id")), security(("api_key" = [])),
    responses((status = 200, body = api::Asset), Errors))]
async fn get_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::Asset>> {
    let id = parse_id(&id, "asset")?;
    Ok(Json(service::assets::get(&state, &tenant, id).await?))
}

/// The org's assets (uploads and outputs), newest first, a page at a time.
#[utoipa::path(get, path = "/v1/assets", tag = "assets", params(api::ListAssetsQuery),
    security(("api_key" = [])),
    responses((status = 200, body = api::AssetList), Errors))]
async fn list_assets(
    State(state): State<AppState>,
    tenant: Tenant,
    Params(q): Params<api::ListAssetsQuery>,
) -> Result<Json<api::AssetList>> {
    Ok(Json(service::assets::list(&state, &tenant, &q).await?))
}

/// Delete an asset; its bytes are removed from the store once no URL signed for them can be
/// used any more (at most an hour). Refused (409 `asset_in_use`) while a queued or running job
/// reads it.
#[utoipa::path(delete, path = "/v1/assets/{id}", tag = "assets",
    params(("id" = Uuid, Path, description = "Asset id")), security(("api_key" = [])),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<StatusCode> {
    let id = parse_id(&id, "asset")?;
    service::assets::delete(&state, &tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm an upload: the stored bytes must have the announced size (and SHA-256). The asset
/// is then ready and can never change.
#[utoipa::path(post, path = "/v1/assets/{id}/complete", tag = "assets",
    params(("id" = Uuid, Path, description = "Asset id")), security(("api_key" = [])),
    responses((status = 200, body = api::Asset), Errors))]
async fn complete_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::Asset>> {
    let id = parse_id(&id, "asset")?;
    Ok(Json(service::assets::complete(&state, &tenant, id).await?))
}

/// A short-lived URL that serves a ready asset's bytes as an attachment.
#[utoipa::path(get, path = "/v1/assets/{id}/download", tag = "assets",
    params(("id" = Uuid, Path, description = "Asset id")), security(("api_key" = [])),
    responses((status = 200, body = api::AssetDownload), Errors))]
async fn download_asset(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::AssetDownload>> {
    let id = parse_id(&id, "asset")?;
    Ok(Json(service::assets::download(&state, &tenant, id).await?))
}

/// Submit a job. With an `Idempotency-Key`, a repeated submission answers the first job (200);
/// the same key with another body is refused (409).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = api::JobIn,
    params(("Idempotency-Key" = Option<api::IdempotencyKey>, Header, description = "Makes retries safe")),
    security(("api_key" = [])),
    responses((status = 201, body = api::Job, description = "Created"),
        (status = 200, body = api::Job, description = "An earlier submission with this Idempotency-Key"),
        Errors))]
async fn submit_job(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Body(req): Body<api::JobIn>,
) -> Result<(StatusCode, Json<api::Job>)> {
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| api::ParseError("not visible ASCII".into()))
                .and_then(api::IdempotencyKey::parse)
                .map_err(|e| ControlError::invalid("invalid_idempotency_key", e.to_string()))?,
        ),
        None => None,
    };
    match service::jobs::submit(&state, &tenant, req, idempotency_key).await? {
        service::jobs::Submission::Created(job) => Ok((StatusCode::CREATED, Json(job))),
        service::jobs::Submission::Replayed(job) => Ok((StatusCode::OK, Json(job))),
    }
}

/// Check a template against declared inputs and outputs without uploading anything: answers
/// the argv that would run, or the 400 a submission would get.
#[utoipa::path(post, path = "/v1/jobs/validate", tag = "jobs", request_body = api::JobValidateIn,
    security(("api_key" = [])),
    responses((status = 200, body = api::JobValidation), Errors))]
async fn validate_job(
    State(state): State<AppState>,
    tenant: Tenant,
    Body(req): Body<api::JobValidateIn>,
) -> Result<Json<api::JobValidation>> {
    Ok(Json(service::jobs::validate(&state, &tenant, &req).await?))
}

/// A job with every attempt's provenance. `wait_seconds` long-polls for a change.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"), api::GetJobQuery),
    security(("api_key" = [])),
    responses((status = 200, body = api::Job), Errors))]
async fn get_job(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
    Params(q): Params<api::GetJobQuery>,
) -> Result<Json<api::Job>> {
    let id = parse_id(&id, "job")?;
    let wait_seconds = q.wait_seconds.unwrap_or(0);
    if wait_seconds > api::MAX_WAIT_SECONDS {
        return Err(ControlError::invalid(
            "invalid_query",
            format!("wait_seconds must be at most {}", api::MAX_WAIT_SECONDS),
        ));
    }
    let wait = Duration::from_secs(wait_seconds.into());
    Ok(Json(service::jobs::get(&state, &tenant, id, wait).await?))
}

/// The org's jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(api::ListJobsQuery),
    security(("api_key" = [])),
    responses((status = 200, body = api::JobList), Errors))]
async fn list_jobs(
    State(state): State<AppState>,
    tenant: Tenant,
    Params(q): Params<api::ListJobsQuery>,
) -> Result<Json<api::JobList>> {
    Ok(Json(service::jobs::list(&state, &tenant, &q).await?))
}

/// FFmpeg's full stderr of one attempt, as text.
#[utoipa::path(get, path = "/v1/jobs/{id}/attempts/{attempt}/stderr", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"),
        ("attempt" = u32, Path, description = "Attempt number, from 1")),
    security(("api_key" = [])),
    responses((status = 200, body = String, content_type = "text/plain; charset=utf-8"), Errors))]
async fn attempt_stderr(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments((id, attempt)): Segments<(String, String)>,
) -> Result<Response> {
    let id = parse_id(&id, "job")?;
    let attempt: i32 = attempt
        .parse()
        .map_err(|_| ControlError::NotFound("attempt"))?;
    let text = service::jobs::attempt_stderr(&state, &tenant, id, attempt).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Cancel a queued or running job (a running FFmpeg is stopped). A finished job answers 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")), security(("api_key" = [])),
    responses((status = 200, body = api::Job), Errors))]
async fn cancel_job(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::Job>> {
    let id = parse_id(&id, "job")?;
    Ok(Json(service::jobs::cancel(&state, &tenant, id).await?))
}

/// The pools the caller may submit to, with their live workers.
#[utoipa::path(get, path = "/v1/pools", tag = "pools", security(("api_key" = [])),
    responses((status = 200, body = api::PoolList), Errors))]
async fn list_pools(State(state): State<AppState>, tenant: Tenant) -> Result<Json<api::PoolList>> {
    Ok(Json(service::pools::list(&state, &tenant).await?))
}

// ---------------------------------------------------------------- webhooks

/// Add an endpoint. The answer holds its signing secret (`whsec_…`), shown this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = api::WebhookIn,
    security(("api_key" = [])),
    responses((status = 201, body = api::WebhookWithSecret), Errors))]
async fn create_webhook(
    State(state): State<AppState>,
    tenant: Tenant,
    Body(req): Body<api::WebhookIn>,
) -> Result<(StatusCode, Json<api::WebhookWithSecret>)> {
    let created = service::webhooks::create(&state, &tenant, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The org's endpoints, oldest first.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, body = api::WebhookList), Errors))]
async fn list_webhooks(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<Json<api::WebhookList>> {
    Ok(Json(service::webhooks::list(&state, &tenant).await?))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")), security(("api_key" = [])),
    responses((status = 200, body = api::Webhook), Errors))]
async fn get_webhook(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::Webhook>> {
    let id = parse_id(&id, "webhook")?;
    Ok(Json(service::webhooks::get(&state, &tenant, id).await?))
}

/// Change an endpoint's URL, events or description (fields left out stay as they are).
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", request_body = api::WebhookPatch,
    params(("id" = Uuid, Path, description = "Endpoint id")), security(("api_key" = [])),
    responses((status = 200, body = api::Webhook), Errors))]
async fn update_webhook(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
    Body(req): Body<api::WebhookPatch>,
) -> Result<Json<api::Webhook>> {
    let id = parse_id(&id, "webhook")?;
    Ok(Json(
        service::webhooks::update(&state, &tenant, id, req).await?,
    ))
}

/// Remove an endpoint: nothing more is sent to it; what was pending or held ends `failed`.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")), security(("api_key" = [])),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_webhook(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<StatusCode> {
    let id = parse_id(&id, "webhook")?;
    service::webhooks::delete(&state, &tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the signing secret (shown this once). For `overlap_seconds` (default 24 h) every
/// delivery carries a signature with the previous secret too.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), api::RotateSecretQuery),
    security(("api_key" = [])),
    responses((status = 200, body = api::WebhookWithSecret), Errors))]
async fn rotate_webhook_secret(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
    Params(q): Params<api::RotateSecretQuery>,
) -> Result<Json<api::WebhookWithSecret>> {
    let id = parse_id(&id, "webhook")?;
    Ok(Json(
        service::webhooks::rotate_secret(&state, &tenant, id, &q).await?,
    ))
}

/// Enable an endpoint the circuit breaker disabled: its held deliveries are sent now.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")), security(("api_key" = [])),
    responses((status = 200, body = api::WebhookEnabled), Errors))]
async fn enable_webhook(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::WebhookEnabled>> {
    let id = parse_id(&id, "webhook")?;
    Ok(Json(service::webhooks::enable(&state, &tenant, id).await?))
}

/// Send again every delivery of the endpoint that failed or is held, created since `since`
/// (same `X-MpegFlow-Id` as before). 409 while the endpoint is disabled: enable it.
#[utoipa::path(post, path = "/v1/webhooks/{id}/recover", tag = "webhooks", request_body = api::RecoverIn,
    params(("id" = Uuid, Path, description = "Endpoint id")), security(("api_key" = [])),
    responses((status = 200, body = api::RecoverOut), Errors))]
async fn recover_webhook(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
    Body(req): Body<api::RecoverIn>,
) -> Result<Json<api::RecoverOut>> {
    let id = parse_id(&id, "webhook")?;
    Ok(Json(
        service::webhooks::recover(&state, &tenant, id, &req).await?,
    ))
}

/// The endpoint's deliveries with every attempt, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), api::ListDeliveriesQuery),
    security(("api_key" = [])),
    responses((status = 200, body = api::WebhookDeliveryList), Errors))]
async fn list_webhook_deliveries(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
    Params(q): Params<api::ListDeliveriesQuery>,
) -> Result<Json<api::WebhookDeliveryList>> {
    let id = parse_id(&id, "webhook")?;
    Ok(Json(
        service::webhooks::deliveries(&state, &tenant, id, &q).await?,
    ))
}

#[utoipa::path(get, path = "/v1/webhook-deliveries/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Delivery id")), security(("api_key" = [])),
    responses((status = 200, body = api::WebhookDelivery), Errors))]
async fn get_webhook_delivery(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::WebhookDelivery>> {
    let id = parse_id(&id, "webhook delivery")?;
    Ok(Json(
        service::webhooks::delivery(&state, &tenant, id).await?,
    ))
}

/// Send a delivery again now, with a fresh retry schedule and the same `X-MpegFlow-Id`.
#[utoipa::path(post, path = "/v1/webhook-deliveries/{id}/replay", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Delivery id")), security(("api_key" = [])),
    responses((status = 200, body = api::WebhookDelivery), Errors))]
async fn replay_webhook_delivery(
    State(state): State<AppState>,
    tenant: Tenant,
    Segments(id): Segments<String>,
) -> Result<Json<api::WebhookDelivery>> {
    let id = parse_id(&id, "webhook delivery")?;
    Ok(Json(service::webhooks::replay(&state, &tenant, id).await?))
}

/// The org's events as they happen, as server-sent events (`text/event-stream`): each `data` a
/// `StreamedEvent`, each `id` its position (reconnect with `Last-Event-ID` to miss nothing). For
/// developing a receiver without a public endpoint (`mpegflow webhooks listen`). A stream
/// ends after an hour; an org may hold 4 open at once.
#[utoipa::path(get, path = "/v1/webhook-events", tag = "webhooks",
    params(api::StreamEventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this position")),
    security(("api_key" = [])),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "Server-sent events, each `data` a `StreamedEvent`"), Errors))]
async fn stream_webhook_events(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Params(q): Params<api::StreamEventsQuery>,
) -> Result<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|&n| n >= 0)
                .ok_or_else(|| {
                    ControlError::invalid("invalid_header", "Last-Event-ID must be a position")
                })?,
        ),
        None => None,
    };
    let rx = service::webhooks::stream_events(&state, &tenant, resume.or(q.after)).await?;
    let events = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        |(seq, event)| {
            Event::default()
                .id(seq.to_string())
                .event(event.envelope.event_type.as_str())
                .json_data(&event)
                .map_err(std::io::Error::other)
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is what the code generates. To refresh it after changing the API:
    /// `MPEGFLOW_WRITE_OPENAPI=1 cargo test -p mpegflow-control --lib openapi`.
    #[test]
    fn the_committed_openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = openapi_document();
        if std::env::var_os("MPEGFLOW_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the code; regenerate it with \
             MPEGFLOW_WRITE_OPENAPI=1 cargo test -p mpegflow-control --lib openapi"
        );
        let doc: Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for op in ["/v1/jobs", "/v1/jobs/validate", "/v1/assets/{id}/download"] {
            assert!(doc["paths"][op].is_object(), "{op} undocumented");
        }
    }

    /// Every `$ref` names a schema the document holds: a dangling one makes clients and
    /// Schemathesis skip that part of the contract.
    #[test]
    fn every_schema_reference_resolves() {
        let doc: Value = serde_json::from_str(&openapi_document()).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }

    /// The limits the document states are the ones the code enforces (schemathesis sends
    /// values just inside and just outside them).
    #[test]
    fn documented_limits_are_the_enforced_ones() {
        let doc: Value = serde_json::from_str(&openapi_document()).unwrap();
        let asset_in = &doc["components"]["schemas"]["AssetIn"]["properties"];
        assert_eq!(
            asset_in["size"]["maximum"].as_u64(),
            Some(mpegflow_objstore::media::SINGLE_PUT_LIMIT)
        );
        assert_eq!(
            api::MAX_UPLOAD_BYTES,
            mpegflow_objstore::media::SINGLE_PUT_LIMIT
        );
        assert_eq!(
            asset_in["content_type"]["maxLength"].as_u64(),
            Some(api::MAX_CONTENT_TYPE_CHARS as u64)
        );
        let wait = doc["paths"]["/v1/jobs/{id}"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "wait_seconds")
            .unwrap();
        assert_eq!(
            wait["schema"]["maximum"].as_u64(),
            Some(api::MAX_WAIT_SECONDS.into())
        );
        for schema in ["JobIn", "JobValidateIn"] {
            for field in ["inputs", "outputs"] {
                let props = &doc["components"]["schemas"][schema]["properties"][field];
                assert_eq!(props["minProperties"], 1, "{schema}.{field}");
            }
        }
        assert!(doc["components"]["schemas"]["IdempotencyKey"].is_object());
        // The body extractor refuses NUL anywhere; the schemas say so for free text.
        let job_in = &doc["components"]["schemas"]["JobIn"]["properties"];
        assert_eq!(job_in["command"]["pattern"], api::NO_NUL_PATTERN);
        assert_eq!(asset_in["content_type"]["pattern"], api::NO_NUL_PATTERN);
        assert_eq!(
            job_in["metadata"]["propertyNames"]["pattern"],
            api::NO_NUL_PATTERN
        );
        assert_eq!(
            job_in["metadata"]["additionalProperties"]["$ref"],
            "#/components/schemas/MetadataValue"
        );
        assert!(contains_nul(&serde_json::json!({"a": ["x\u{0}"]})));
    }
}
