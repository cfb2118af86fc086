//! The embedded S3 endpoint for single-machine deployments.
//!
//! `s3s-fs` serves a directory as S3 and `s3s` verifies SigV4. s3s 0.14 lacks protections that
//! later versions and real stores have, so [`check_request`] runs in front of it and refuses,
//! before s3s sees the request:
//! * anything that is not a SigV4 *presigned* request (no header auth, no SigV2, no anonymous);
//! * `X-Amz-Expires` above 3600 s;
//! * any `x-amz-*` header the signature does not cover (an unsigned `x-amz-copy-source` would
//!   otherwise turn a presigned PUT into a server-side copy of any object);
//! * any query parameter besides the SigV4 ones (no sub-resources: ACLs, multipart, tagging…);
//! * any method but GET, HEAD, PUT and DELETE, a DELETE of anything but a plainly spelled key
//!   of an org's data or of the start-up probe (see [`is_deletable_object`]), and any path that
//!   is not an object in the bucket;
//! * a PUT whose signature does not cover `If-None-Match` (every upload URL is write-once).
//!
//! GETs may carry the signed `response-content-type` / `response-content-disposition`
//! parameters, which s3s 0.14.1 turns into the response's headers.
//!
//! Behind the guard, [`WriteOnce`] passes only GET, HEAD, PUT and such a DELETE on to
//! `s3s-fs`, refuses a PUT
//! without `If-None-Match: *`, and holds a per-key lock from its existence check to the rename,
//! so two PUTs of one key cannot both succeed and nothing overwrites a stored object. A DELETE
//! takes the same lock and is refused (409) while a PUT of its key still streams, so an upload
//! that began while its URL was valid cannot land after its object was deleted.
//!
//! The method and the key are covered by the signature (s3s checks it), so a URL authorizes
//! exactly one method on exactly one key. DELETE URLs are signed only by the control plane for
//! its own requests (a deleted asset's object, once no URL signed for it is valid; the probe's
//! objects) and never handed out.
//!
//! A PUT carrying `x-amz-checksum-sha256` has its body hashed on the way in ([`VerifiedBody`]);
//! a mismatch ends the body with an error, so `s3s-fs` never moves the upload into place.
//! (s3s-fs 0.14.1 itself compares the checksum only *after* renaming the file into place, so a
//! wrong body would be stored and merely answered with an error.)
//!
//! A request body that sends no byte for [`EmbeddedConfig::body_idle_timeout`] is cut off
//! ([`IdleBody`]): the PUT fails (400 `RequestTimeout`, as S3 answers), its temporary file is
//! dropped and its key's write lock released. A client that went away mid-body is logged at
//! debug: neither is the store's failure.
//!
//! [`open`] takes an exclusive lock on the store directory (`flock` on `.lock` in it): two
//! processes never serve, or clean up, one directory.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::dto::{
    DeleteObjectInput, DeleteObjectOutput, GetObjectInput, GetObjectOutput, HeadObjectInput,
    HeadObjectOutput, PutObjectInput, PutObjectOutput,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Request, S3Response, S3Result, S3};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

/// The region the embedded store answers for. A URL signed for another is refused as S3
/// refuses it (`AuthorizationQueryParametersError`), so a wrong region setting is named at start.
pub const EMBEDDED_REGION: &str = "us-east-1";

/// SigV4 query parameters; nothing else may appear in a query string.
const SIGV4_PARAMS: &[&str] = &[
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "x-amz-signature",
    "x-amz-security-token",
];

#[derive(Clone)]
pub struct EmbeddedConfig {
    /// Directory holding the bucket directory. Created with mode 0700.
    pub root: PathBuf,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// A request body that sends no byte for this long is cut off.
    pub body_idle_timeout: Duration,
}

impl std::fmt::Debug for EmbeddedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedConfig")
            .field("root", &self.root)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("body_idle_timeout", &self.body_idle_timeout)
            .finish()
    }
}

/// The default of [`EmbeddedConfig::body_idle_timeout`].
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

impl EmbeddedConfig {
    /// A store on `root` serving `bucket` for one key pair, with the default timeouts.
    pub fn new(root: PathBuf, bucket: &str, access_key: &str, secret_key: &str) -> Self {
        EmbeddedConfig {
            root,
            bucket: bucket.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("only SigV4 presigned requests are accepted")]
    NotPresigned,
    #[error("X-Amz-Expires must be an integer between 1 and 3600")]
    ExpiryTooLong,
    #[error("header {0} is not covered by the signature")]
    UnsignedHeader(String),
    #[error("query parameter {0} is not allowed")]
    QueryParam(String),
    #[error("method {0} is not allowed")]
    Method(String),
    #[error("only objects in bucket {0} can be addressed")]
    Path(String),
    /// Answered 400 `AuthorizationQueryParametersError`, as S3 does.
    #[error("the region {0:?} is wrong; expecting {EMBEDDED_REGION:?}")]
    WrongRegion(String),
    /// Answered 404 `NoSuchBucket`, as S3 does, so that a misconfigured bucket is named.
    #[error("the specified bucket does not exist")]
    NoSuchBucket,
    #[error("x-amz-checksum-sha256 is not a base64 SHA-256")]
    BadChecksum,
    #[error("a PUT must carry a signed If-None-Match: * (objects are write-once)")]
    NotWriteOnce,
}

/// GET-only query parameters (signed like every other one) that set the response's headers.
const RESPONSE_OVERRIDES: &[&str] = &["response-content-type", "response-content-disposition"];

/// The guard, as a pure function of the request line and headers.
pub fn check_request<B>(req: &Request<B>, bucket: &str) -> Result<(), Refusal> {
    if !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return Err(Refusal::Method(req.method().to_string()));
    }
    let path = req.uri().path();
    let first_segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if !first_segment.is_empty() && first_segment != bucket {
        return Err(Refusal::NoSuchBucket);
    }
    let object = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(bucket))
        .and_then(|p| p.strip_prefix('/'));
    let Some(object) = object.filter(|o| !o.is_empty()) else {
        return Err(Refusal::Path(bucket.to_owned()));
    };
    // A DELETE names exactly one plainly spelled key of an org's data or of the probe.
    if req.method() == Method::DELETE && !is_deletable_object(object, true) {
        return Err(Refusal::Method(req.method().to_string()));
    }
    if req.headers().contains_key(http::header::AUTHORIZATION) {
        return Err(Refusal::NotPresigned);
    }
    let mut algorithm = None;
    let mut expires = None;
    let mut credential = None;
    let mut signed = BTreeSet::new();
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let key = k.to_ascii_lowercase();
        let override_ok = req.method() == Method::GET && RESPONSE_OVERRIDES.contains(&key.as_str());
        if !SIGV4_PARAMS.contains(&key.as_str()) && !override_ok {
            return Err(Refusal::QueryParam(k.into_owned()));
        }
        match key.as_str() {
            "x-amz-algorithm" => algorithm = Some(v.into_owned()),
            "x-amz-expires" => expires = Some(v.into_owned()),
            "x-amz-credential" => credential = Some(v.into_owned()),
            "x-amz-signedheaders" => signed.extend(v.split(';').map(str::to_ascii_lowercase)),
            _ => {}
        }
    }
    if algorithm.as_deref() != Some("AWS4-HMAC-SHA256") {
        return Err(Refusal::NotPresigned);
    }
    // ACCESS_KEY/DATE/REGION/s3/aws4_request
    if let Some(region) = credential.as_deref().and_then(|c| c.split('/').nth(2)) {
        if region != EMBEDDED_REGION {
            return Err(Refusal::WrongRegion(region.to_owned()));
        }
    }
    match expires.as_deref().map(str::parse::<u64>) {
        Some(Ok(1..=3600)) => {}
        _ => return Err(Refusal::ExpiryTooLong),
    }
    for name in req.headers().keys() {
        let name = name.as_str();
        if (name.starts_with("x-amz-") || name == "content-md5") && !signed.contains(name) {
            return Err(Refusal::UnsignedHeader(name.to_owned()));
        }
    }
    if req.method() == Method::PUT
        && (!signed.contains("if-none-match")
            || req
                .headers()
                .get(http::header::IF_NONE_MATCH)
                .map(|v| v.as_bytes())
                != Some(b"*"))
    {
        return Err(Refusal::NotWriteOnce);
    }
    Ok(())
}

/// What the embedded store enforces beyond s3s. Everything is on by default; switching a part
/// off exists only so tests can show that [`crate::probe`] notices a store without it.
#[derive(Debug, Clone, Copy)]
pub struct GuardOptions {
    /// Hash PUT bodies while they stream and fail them before s3s-fs stores a wrong one.
    pub verify_checksum_while_streaming: bool,
    /// Honour `If-None-Match: *` atomically per key.
    pub write_once: bool,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            verify_checksum_while_streaming: true,
            write_once: true,
        }
    }
}

/// Whether a DELETE may name this object key: one under an org's prefix (`orgs/`) or the
/// start-up probe's ([`crate::probe::PROBE_PREFIX`]), with no empty, `.` or `..` segment once
/// decoded. `encoded`: the key as it appears in the request path (percent-encoded).
pub fn is_deletable_object(key: &str, encoded: bool) -> bool {
    let decoded;
    let key = if encoded {
        match percent_encoding::percent_decode_str(key).decode_utf8() {
            Ok(k) => {
                decoded = k;
                decoded.as_ref()
            }
            Err(_) => return false,
        }
    } else {
        key
    };
    let rest = key
        .strip_prefix(crate::probe::PROBE_PREFIX)
        .or_else(|| key.strip_prefix("orgs/"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    })
}

/// The `s3s-fs` file system reduced to GET, HEAD, a write-once PUT and a checked DELETE.
struct WriteOnce {
    fs: s3s_fs::FileSystem,
    /// Keys with a PUT in flight.
    writing: Mutex<HashSet<(String, String)>>,
    write_once: bool,
}

/// Removes a key from the in-flight set when its PUT ends, however it ends.
struct Writing<'a>(&'a Mutex<HashSet<(String, String)>>, (String, String));

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl WriteOnce {
    /// Holds the key for one PUT or DELETE until the guard drops; 409 while another holds it.
    fn hold(&self, bucket: &str, key: &str) -> S3Result<Writing<'_>> {
        let key = (bucket.to_owned(), key.to_owned());
        if !self
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Err(write_in_progress());
        }
        Ok(Writing(&self.writing, key))
    }
}

#[async_trait::async_trait]
impl S3 for WriteOnce {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        // The guard lets only such keys through; refuse anything else here too.
        if !is_deletable_object(&req.input.key, false) {
            return Err(s3s::s3_error!(AccessDenied, "this key cannot be deleted"));
        }
        // A PUT whose URL was valid when it started may still be streaming: deleting now
        // would find nothing and let it land afterwards, for good. Refuse until it has ended
        // (the control plane tries again), and hold the key so none starts meanwhile.
        let _writing = self.hold(&req.input.bucket, &req.input.key)?;
        self.fs.delete_object(req).await
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        if !self.write_once {
            req.input.if_none_match = None;
            return self.fs.put_object(req).await;
        }
        if !req.input.if_none_match.as_ref().is_some_and(|c| c.is_any()) {
            return Err(s3s::s3_error!(
                AccessDenied,
                "objects are write-once: send If-None-Match: *"
            ));
        }
        let _writing = self.hold(&req.input.bucket, &req.input.key)?;
        // s3s-fs checks that the object does not exist, streams to a temporary file and renames
        // it into place; with the key held, no other PUT can slip between the check and the rename.
        self.fs.put_object(req).await
    }
}

/// What S3 answers to concurrent conditional writes (409 `ConditionalRequestConflict`); also
/// the answer to a DELETE of a key being written.
fn write_in_progress() -> s3s::S3Error {
    let mut e = s3s::S3Error::with_message(
        s3s::S3ErrorCode::Custom("ConditionalRequestConflict".into()),
        "another write of this object is in progress",
    );
    e.set_status_code(StatusCode::CONFLICT);
    e
}

/// A request body that fails at its end unless its SHA-256 is the expected one.
pub struct VerifiedBody<B> {
    inner: B,
    hasher: Option<Sha256>,
    expected: [u8; 32],
    mismatch: Arc<AtomicBool>,
}

impl<B> VerifiedBody<B> {
    /// `mismatch` is set when the body ends with another digest.
    pub fn new(inner: B, expected: [u8; 32], mismatch: Arc<AtomicBool>) -> Self {
        VerifiedBody {
            inner,
            hasher: Some(Sha256::new()),
            expected,
            mismatch,
        }
    }
}

impl<B> http_body::Body for VerifiedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(data), Some(h)) = (frame.data_ref(), this.hasher.as_mut()) {
                    h.update(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => match this.hasher.take().map(|h| h.finalize()) {
                Some(digest) if digest.as_slice() != this.expected => {
                    this.mismatch.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(
                        "body does not match the signed x-amz-checksum-sha256".into(),
                    )))
                }
                _ => Poll::Ready(None),
            },
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How a request body ended early, if it did.
#[derive(Debug, Default)]
pub struct BodyFault(Mutex<Option<BodyFaultKind>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFaultKind {
    /// No byte arrived for the idle timeout.
    Stalled,
    /// The client's connection failed or closed before the body's end.
    ClientGone,
}

impl BodyFault {
    fn set(&self, kind: BodyFaultKind) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(kind);
    }

    pub fn get(&self) -> Option<BodyFaultKind> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request body that fails once no byte has arrived for `timeout`, and records why it ended
/// early (a stall or a client gone) in `fault`.
pub struct IdleBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    fault: Arc<BodyFault>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, timeout: Duration, fault: Arc<BodyFault>) -> Self {
        IdleBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            fault,
        }
    }
}

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.set(BodyFaultKind::ClientGone);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.fault.set(BodyFaultKind::Stalled);
                    Poll::Ready(Some(Err(format!(
                        "no byte of the request body for {:?}",
                        this.timeout
                    )
                    .into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The signed SHA-256 a PUT declares, if any; `Err` when the header is not a SHA-256.
fn declared_sha256<B>(req: &Request<B>) -> Result<Option<[u8; 32]>, Refusal> {
    let Some(v) = req.headers().get("x-amz-checksum-sha256") else {
        return Ok(None);
    };
    crate::presign::sha256_b64_to_raw(v.as_bytes())
        .map(Some)
        .ok_or(Refusal::BadChecksum)
}

fn refuse(r: &Refusal) -> Response<s3s::Body> {
    match r {
        Refusal::WrongRegion(_) => error_response(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            &format!("Error parsing the X-Amz-Credential parameter; {r}"),
        ),
        Refusal::NoSuchBucket => {
            error_response(StatusCode::NOT_FOUND, "NoSuchBucket", &r.to_string())
        }
        _ => error_response(StatusCode::FORBIDDEN, "AccessDenied", &r.to_string()),
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message></Error>",
        message.replace('&', "&amp;").replace('<', "&lt;")
    );
    let mut resp = Response::new(s3s::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// The `<Code>` of an S3 error document.
fn error_code(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// Logs an error answer of s3s under this module's target (s3s itself logs every one at ERROR
/// under its own name; `mpegflow` filters that out). A refused signature or expired URL is a
/// tenant's or an attacker's doing (warn); a missing key or an existing object is ordinary
/// (debug); a 5xx is the store's own failure (error).
fn log_answer(method: &Method, path: &str, resp: &Response<s3s::Body>) {
    let status = resp.status();
    if !status.is_client_error() && !status.is_server_error() {
        return;
    }
    let body = resp.body().bytes().unwrap_or_default();
    let code = error_code(&body).unwrap_or("-");
    if status.is_server_error() {
        tracing::error!(%method, path, status = status.as_u16(), code, "object store failed a request");
    } else if status == StatusCode::FORBIDDEN {
        tracing::warn!(%method, path, status = status.as_u16(), code, "object store refused a request");
    } else {
        tracing::debug!(%method, path, status = status.as_u16(), code, "object store refused a request");
    }
}

#[derive(Clone)]
struct Guarded {
    inner: S3Service,
    bucket: String,
    options: GuardOptions,
    body_idle_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Guarded {
    type Response = Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if let Err(r) = check_request(&req, &self.bucket) {
            tracing::warn!(method = %req.method(), path = req.uri().path(), refusal = %r, "object store refused a request");
            return Box::pin(std::future::ready(Ok(refuse(&r))));
        }
        let mismatch = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(BodyFault::default());
        let idle = self.body_idle_timeout;
        let req = match declared_sha256(&req) {
            Ok(Some(expected))
                if req.method() == Method::PUT && self.options.verify_checksum_while_streaming =>
            {
                let (flag, fault) = (mismatch.clone(), fault.clone());
                req.map(|b| {
                    s3s::Body::http_body_unsync(VerifiedBody::new(
                        IdleBody::new(b, idle, fault),
                        expected,
                        flag,
                    ))
                })
            }
            Ok(_) if req.method() == Method::PUT => {
                let fault = fault.clone();
                req.map(|b| s3s::Body::http_body_unsync(IdleBody::new(b, idle, fault)))
            }
            Ok(_) => req.map(s3s::Body::from),
            Err(r) => return Box::pin(std::future::ready(Ok(refuse(&r)))),
        };
        let inner = self.inner.clone();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        Box::pin(async move {
            let mut resp = inner.call(req).await;
            if let Ok(r) = resp.as_mut() {
                r.headers_mut().insert(
                    http::header::X_CONTENT_TYPE_OPTIONS,
                    http::HeaderValue::from_static("nosniff"),
                );
            }
            if let Some(kind) = fault.get() {
                // Not the store's failure: the upload is dropped, its key free again.
                tracing::debug!(%method, path, ?kind, "object store dropped an unfinished request body");
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "RequestTimeout",
                    "the request body was not received in time or its connection closed",
                ));
            }
            if mismatch.load(Ordering::SeqCst) {
                resp = Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "BadDigest",
                    "body does not match the signed x-amz-checksum-sha256",
                ));
            }
            if let Ok(r) = &resp {
                log_answer(&method, &path, r);
            }
            resp
        })
    }
}

/// Prepares the store's directory (mode 0700, readable by this process's uid only).
pub fn prepare(cfg: &EmbeddedConfig) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let bucket_dir = cfg.root.join(&cfg.bucket);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&bucket_dir)?;
    std::fs::set_permissions(&cfg.root, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// The name of the lock file in the store directory.
pub const LOCK_FILE: &str = ".lock";

/// A prepared store directory, locked for this process while the value lives.
pub struct OpenStore {
    cfg: EmbeddedConfig,
    _lock: std::fs::File,
}

impl OpenStore {
    pub fn config(&self) -> &EmbeddedConfig {
        &self.cfg
    }
}

/// Prepares the store directory ([`prepare`]) and takes its lock: a second process (or a
/// second store in this one) on the same directory is refused, naming it.
pub fn open(cfg: EmbeddedConfig) -> std::io::Result<OpenStore> {
    prepare(&cfg)?;
    let lock = lock_dir(&cfg.root)?;
    Ok(OpenStore { cfg, _lock: lock })
}

fn lock_dir(root: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "the object store directory {} is in use by another process (or another store); \
                 two stores never share one directory ({e})",
                root.display()
            ),
        ));
    }
    Ok(file)
}

/// Serves the store on `listener` until `shutdown` resolves (opening it first: see [`open`]).
pub async fn serve(
    listener: TcpListener,
    cfg: EmbeddedConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_open(listener, open(cfg)?, GuardOptions::default(), shutdown).await
}

/// [`serve`] with some protections switched off: for tests of [`crate::probe`] only.
#[doc(hidden)]
pub async fn serve_with(
    listener: TcpListener,
    cfg: EmbeddedConfig,
    options: GuardOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_open(listener, open(cfg)?, options, shutdown).await
}

/// Serves an opened store until `shutdown` resolves; its lock is released on return.
pub async fn serve_open(
    listener: TcpListener,
    store: OpenStore,
    options: GuardOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cfg = &store.cfg;
    let fs =
        s3s_fs::FileSystem::new(&cfg.root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(WriteOnce {
        fs,
        writing: Mutex::default(),
        write_once: options.write_once,
    });
    builder.set_auth(SimpleAuth::from_single(
        cfg.access_key.clone(),
        cfg.secret_key.clone(),
    ));
    let service = Guarded {
        inner: builder.build(),
        bucket: cfg.bucket.clone(),
        options,
        body_idle_timeout: cfg.body_idle_timeout,
    };

    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            res = listener.accept() => match res {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    socket
                }
                Err(e) => {
                    tracing::warn!("object store accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const Q: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host%3Bif-none-match%3Bx-amz-checksum-sha256&X-Amz-Signature=00";

    #[test]
    fn table() {
        let ok = format!("/b/orgs/x/assets/y?{Q}");
        type Case<'a> = (
            &'a str,
            String,
            Vec<(&'a str, &'a str)>,
            Result<(), Refusal>,
        );
        let cases: Vec<Case> = vec![
            ("GET", ok.clone(), vec![], Ok(())),
            (
                "PUT",
                ok.clone(),
                vec![("x-amz-checksum-sha256", "abc"), ("if-none-match", "*")],
                Ok(()),
            ),
            (
                "PUT",
                ok.clone(),
                vec![("x-amz-checksum-sha256", "abc")],
                Err(Refusal::NotWriteOnce),
            ),
            (
                "PUT",
                ok.clone(),
                vec![("if-none-match", "\"etag\"")],
                Err(Refusal::NotWriteOnce),
            ),
            (
                "PUT",
                ok.replace("host%3Bif-none-match%3B", "host%3B"),
                vec![("if-none-match", "*")],
                Err(Refusal::NotWriteOnce),
            ),
            (
                "GET",
                format!("{ok}&response-content-type=video%2Fmp4&response-content-disposition=attachment"),
                vec![],
                Ok(()),
            ),
            (
                "PUT",
                format!("{ok}&response-content-type=text%2Fhtml"),
                vec![("if-none-match", "*")],
                Err(Refusal::QueryParam("response-content-type".into())),
            ),
            (
                "GET",
                format!("{ok}&response-content-encoding=gzip"),
                vec![],
                Err(Refusal::QueryParam("response-content-encoding".into())),
            ),
            (
                "PUT",
                ok.clone(),
                vec![("x-amz-copy-source", "/b/other")],
                Err(Refusal::UnsignedHeader("x-amz-copy-source".into())),
            ),
            (
                "PUT",
                ok.clone(),
                vec![("content-md5", "x")],
                Err(Refusal::UnsignedHeader("content-md5".into())),
            ),
            ("DELETE", ok.clone(), vec![], Ok(())),
            (
                "DELETE",
                format!("/b/orgs/x/%2e%2e/y?{Q}"),
                vec![],
                Err(Refusal::Method("DELETE".into())),
            ),
            (
                "DELETE",
                format!("/b/elsewhere/y?{Q}"),
                vec![],
                Err(Refusal::Method("DELETE".into())),
            ),
            (
                "DELETE",
                format!("/b/_mpegflow/probe/n1/write-once?{Q}"),
                vec![],
                Ok(()),
            ),
            (
                "DELETE",
                format!("/b/_mpegflow/probe/../../orgs/k?{Q}"),
                vec![],
                Err(Refusal::Method("DELETE".into())),
            ),
            (
                "DELETE",
                format!("/b/_mpegflow/probe/%2e%2e/orgs/k?{Q}"),
                vec![],
                Err(Refusal::Method("DELETE".into())),
            ),
            (
                "DELETE",
                format!("/b/_mpegflow/probe/?{Q}"),
                vec![],
                Err(Refusal::Method("DELETE".into())),
            ),
            (
                "POST",
                ok.clone(),
                vec![],
                Err(Refusal::Method("POST".into())),
            ),
            (
                "GET",
                format!("/b?{Q}"),
                vec![],
                Err(Refusal::Path("b".into())),
            ),
            (
                "GET",
                format!("/b/?{Q}"),
                vec![],
                Err(Refusal::Path("b".into())),
            ),
            (
                "GET",
                format!("/other/k?{Q}"),
                vec![],
                Err(Refusal::NoSuchBucket),
            ),
            (
                "GET",
                format!("/bb/k?{Q}"),
                vec![],
                Err(Refusal::NoSuchBucket),
            ),
            (
                "GET",
                format!("/b/k?{}", Q.replace("us-east-1", "eu-west-1")),
                vec![],
                Err(Refusal::WrongRegion("eu-west-1".into())),
            ),
            ("GET", "/b/k".into(), vec![], Err(Refusal::NotPresigned)),
            (
                "GET",
                "/b/k".into(),
                vec![("authorization", "AWS4-HMAC-SHA256 ...")],
                Err(Refusal::NotPresigned),
            ),
            (
                "GET",
                "/b/k?AWSAccessKeyId=a&Expires=1&Signature=x".into(),
                vec![],
                Err(Refusal::QueryParam("AWSAccessKeyId".into())),
            ),
            (
                "GET",
                format!("/b/k?{Q}&acl"),
                vec![],
                Err(Refusal::QueryParam("acl".into())),
            ),
            (
                "GET",
                format!("/b/k?{Q}&uploads"),
                vec![],
                Err(Refusal::QueryParam("uploads".into())),
            ),
            (
                "GET",
                format!("/b/k?{}", Q.replace("Expires=3600", "Expires=3601")),
                vec![],
                Err(Refusal::ExpiryTooLong),
            ),
            (
                "GET",
                format!("/b/k?{}", Q.replace("Expires=3600", "Expires=x")),
                vec![],
                Err(Refusal::ExpiryTooLong),
            ),
        ];
        for (m, uri, h, want) in cases {
            assert_eq!(
                check_request(&req(m, &uri, &h), "b"),
                want,
                "{m} {uri} {h:?}"
            );
        }
    }
}
