//! A client of the tenant REST API, used by `mpegflow run`/`jobs`, by `up`'s sample job and by
//! the integration tests. Every request and answer is a type of `mpegflow-api`.

use anyhow::{bail, Context, Result};
use mpegflow_api as api;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    key: String,
    pub http: reqwest::Client,
}

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {}", .0.status, .0.code, .0.detail)]
pub struct ApiError(pub api::Problem);

/// A raw answer, for callers that send what the typed methods cannot (malformed requests).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// `Retry-After`, when it was a number of seconds.
    pub retry_after: Option<u64>,
}

impl Answer {
    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "answer {} is not the expected JSON: {}",
                self.status, self.body
            )
        })
    }

    /// The body as a problem (for non-2xx answers); a body that is not one is described as one.
    /// A whole response: status, content type, `Retry-After` and body.
    async fn read(resp: reqwest::Response) -> Result<Answer> {
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
        let retry_after = header(reqwest::header::RETRY_AFTER).and_then(|v| v.trim().parse().ok());
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        Ok(Answer {
            status,
            content_type,
            body,
            retry_after,
        })
    }

    pub fn problem(&self) -> api::Problem {
        serde_json::from_str(&self.body).unwrap_or_else(|_| api::Problem {
            type_: "about:blank".into(),
            title: "unexpected answer".into(),
            status: self.status,
            code: "unexpected_answer".into(),
            detail: self.body.chars().take(500).collect(),
            argument: None,
        })
    }

    /// How long the server asked us to wait (`Retry-After` in seconds, 1 to 10; 1 without one).
    fn retry_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retry_after.unwrap_or(1).clamp(1, 10))
    }

    fn into_result<T: DeserializeOwned>(self) -> Result<T> {
        if (200..300).contains(&self.status) {
            self.json()
        } else {
            Err(ApiError(self.problem()).into())
        }
    }
}

pub async fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// How long [`ApiClient::wait`] keeps asking while the platform does not answer.
pub const WAIT_OUTAGE_BUDGET: std::time::Duration = std::time::Duration::from_secs(600);

impl ApiClient {
    pub fn new(base: &str, key: &str) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest client builds"),
        }
    }

    /// Sends a request with an optional JSON body; answers whatever the status.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
        headers: &[(&str, &str)],
    ) -> Result<Answer> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        Answer::read(resp).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::GET, path, None::<&()>, &[])
            .await?
            .into_result()
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        self.call(reqwest::Method::POST, path, body, &[])
            .await?
            .into_result()
    }

    pub async fn create_asset(&self, req: &api::AssetIn) -> Result<api::AssetUpload> {
        self.post("/v1/assets", Some(req)).await
    }

    pub async fn asset(&self, id: Uuid) -> Result<api::Asset> {
        self.get(&format!("/v1/assets/{id}")).await
    }

    pub async fn complete_asset(&self, id: Uuid) -> Result<api::Asset> {
        self.post(&format!("/v1/assets/{id}/complete"), None::<&()>)
            .await
    }

    pub async fn download_link(&self, id: Uuid) -> Result<api::AssetDownload> {
        self.get(&format!("/v1/assets/{id}/download")).await
    }

    /// Uploads a local file as a new asset (size and SHA-256 signed in), and completes it.
    pub async fn upload(&self, path: &Path) -> Result<api::Asset> {
        self.upload_with(path, |_| {}).await
    }

    /// [`upload`](Self::upload), telling `on_progress` the bytes sent so far.
    pub async fn upload_with(
        &self,
        path: &Path,
        mut on_progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<api::Asset> {
        let (size, sha256) = sha256_file(path).await?;
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("input")
            .to_owned();
        let upload = self
            .create_asset(&api::AssetIn {
                filename: api::FileName::parse(filename)?,
                size,
                sha256: Some(api::Sha256Hex::parse(sha256)?),
                content_type: None,
            })
            .await?;
        let file = tokio::fs::File::open(path).await?;
        let mut sent = 0u64;
        let stream =
            futures::StreamExt::inspect(tokio_util::io::ReaderStream::new(file), move |chunk| {
                if let Ok(c) = chunk {
                    sent += c.len() as u64;
                    on_progress(sent);
                }
            });
        let mut req = self
            .http
            .put(&upload.upload_url)
            .body(reqwest::Body::wrap_stream(stream));
        for (k, v) in &upload.upload_headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.context("uploading to the object store")?;
        if !resp.status().is_success() {
            bail!(
                "upload refused by the object store: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        self.complete_asset(upload.id).await
    }

    pub async fn submit(&self, job: &api::JobIn) -> Result<api::Job> {
        self.post("/v1/jobs", Some(job)).await
    }

    pub async fn validate(&self, job: &api::JobValidateIn) -> Result<api::JobValidation> {
        self.post("/v1/jobs/validate", Some(job)).await
    }

    pub async fn job(&self, id: Uuid) -> Result<api::Job> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// One long-poll: the job once it ends or changes, or after `seconds`.
    pub async fn job_wait(&self, id: Uuid, seconds: u32) -> Result<api::Job> {
        self.get(&format!("/v1/jobs/{id}?wait_seconds={seconds}"))
            .await
    }

    pub async fn pools(&self) -> Result<api::PoolList> {
        self.get("/v1/pools").await
    }

    pub async fn list_assets(&self, q: &api::ListAssetsQuery) -> Result<api::AssetList> {
        let mut query = Vec::new();
        if let Some(c) = q.cursor {
            query.push(format!("cursor={c}"));
        }
        if let Some(l) = q.limit {
            query.push(format!("limit={l}"));
        }
        self.get(&format!("/v1/assets?{}", query.join("&"))).await
    }

    pub async fn delete_asset(&self, id: Uuid) -> Result<()> {
        self.delete(&format!("/v1/assets/{id}")).await
    }

    pub async fn cancel(&self, id: Uuid) -> Result<api::Job> {
        self.post(&format!("/v1/jobs/{id}/cancel"), None::<&()>)
            .await
    }

    pub async fn list_jobs(&self, q: &api::ListJobsQuery) -> Result<api::JobList> {
        let mut query = Vec::new();
        if let Some(s) = q.state {
            query.push(format!("state={s}"));
        }
        if let Some(c) = q.cursor {
            query.push(format!("cursor={c}"));
        }
        if let Some(l) = q.limit {
            query.push(format!("limit={l}"));
        }
        let path = if query.is_empty() {
            "/v1/jobs".to_owned()
        } else {
            format!("/v1/jobs?{}", query.join("&"))
        };
        self.get(&path).await
    }

    // ---- webhooks ----

    pub async fn create_webhook(&self, req: &api::WebhookIn) -> Result<api::WebhookWithSecret> {
        self.post("/v1/webhooks", Some(req)).await
    }

    pub async fn webhooks(&self) -> Result<api::WebhookList> {
        self.get("/v1/webhooks").await
    }

    pub async fn webhook(&self, id: Uuid) -> Result<api::Webhook> {
        self.get(&format!("/v1/webhooks/{id}")).await
    }

    pub async fn update_webhook(
        &self,
        id: Uuid,
        patch: &api::WebhookPatch,
    ) -> Result<api::Webhook> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(patch),
            &[],
        )
        .await?
        .into_result()
    }

    pub async fn delete_webhook(&self, id: Uuid) -> Result<()> {
        self.delete(&format!("/v1/webhooks/{id}")).await
    }

    pub async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        overlap_seconds: Option<u32>,
    ) -> Result<api::WebhookWithSecret> {
        let query = overlap_seconds.map_or(String::new(), |s| format!("?overlap_seconds={s}"));
        self.post(
            &format!("/v1/webhooks/{id}/rotate-secret{query}"),
            None::<&()>,
        )
        .await
    }

    pub async fn enable_webhook(&self, id: Uuid) -> Result<api::WebhookEnabled> {
        self.post(&format!("/v1/webhooks/{id}/enable"), None::<&()>)
            .await
    }

    pub async fn recover_webhook(&self, id: Uuid, req: &api::RecoverIn) -> Result<api::RecoverOut> {
        self.post(&format!("/v1/webhooks/{id}/recover"), Some(req))
            .await
    }

    pub async fn webhook_deliveries(
        &self,
        id: Uuid,
        q: &api::ListDeliveriesQuery,
    ) -> Result<api::WebhookDeliveryList> {
        let mut query = Vec::new();
        if let Some(c) = q.cursor {
            query.push(format!("cursor={c}"));
        }
        if let Some(l) = q.limit {
            query.push(format!("limit={l}"));
        }
        self.get(&format!("/v1/webhooks/{id}/deliveries?{}", query.join("&")))
            .await
    }

    pub async fn webhook_delivery(&self, id: Uuid) -> Result<api::WebhookDelivery> {
        self.get(&format!("/v1/webhook-deliveries/{id}")).await
    }

    pub async fn replay_delivery(&self, id: Uuid) -> Result<api::WebhookDelivery> {
        self.post(&format!("/v1/webhook-deliveries/{id}/replay"), None::<&()>)
            .await
    }

    /// The org's event stream (server-sent events) from after `after`; an error answer is
    /// returned as [`ApiError`].
    pub async fn event_stream(&self, after: Option<i64>) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .get(format!("{}/v1/webhook-events", self.base))
            .bearer_auth(&self.key)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(after) = after {
            req = req.header("last-event-id", after.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}/v1/webhook-events", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(ApiError(Answer::read(resp).await?.problem()).into())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let answer = self
            .call(reqwest::Method::DELETE, path, None::<&()>, &[])
            .await?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(ApiError(answer.problem()).into())
        }
    }

    /// FFmpeg's full stderr of one attempt.
    pub async fn stderr(&self, id: Uuid, attempt: u32) -> Result<String> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{id}/attempts/{attempt}/stderr"),
                None::<&()>,
                &[],
            )
            .await?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(ApiError(answer.problem()).into())
        }
    }

    /// Long-polls until the job ends, calling `on_progress` with each fresh view. Rides out
    /// the platform being briefly away (a 502/503/504, or the API not answering while a
    /// control plane restarts) for up to [`WAIT_OUTAGE_BUDGET`]: the job runs on meanwhile.
    pub async fn wait(&self, id: Uuid, mut on_progress: impl FnMut(&api::Job)) -> Result<api::Job> {
        let path = format!("/v1/jobs/{id}?wait_seconds=20");
        let mut away_since: Option<std::time::Instant> = None;
        loop {
            let pause = match self
                .call(reqwest::Method::GET, &path, None::<&()>, &[])
                .await
            {
                Ok(a) if matches!(a.status, 502..=504) => a.retry_after(),
                Ok(a) => {
                    let job: api::Job = a.into_result()?;
                    away_since = None;
                    on_progress(&job);
                    if job.state.is_terminal() {
                        return Ok(job);
                    }
                    continue;
                }
                Err(e)
                    if e.downcast_ref::<reqwest::Error>()
                        .is_some_and(|e| e.is_connect()) =>
                {
                    std::time::Duration::from_secs(1)
                }
                Err(e) => return Err(e),
            };
            let since = *away_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > WAIT_OUTAGE_BUDGET {
                anyhow::bail!(
                    "the platform has not answered for {} s while waiting for job {id}; it may still run: `mpegflow jobs wait {id}`",
                    since.elapsed().as_secs()
                );
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Downloads an asset to `dest`, returning its size and SHA-256.
    pub async fn download(&self, asset_id: Uuid, dest: &Path) -> Result<(u64, String)> {
        self.download_with(asset_id, dest, None, |_| {}).await
    }

    /// [`download`](Self::download), telling `on_progress` the bytes received so far. The bytes
    /// go to a new file beside `dest` and take its name only once complete (and, with
    /// `expected`, only with that size and SHA-256): a failed download leaves `dest` as it was,
    /// and a link planted at `dest` is replaced, never followed.
    pub async fn download_with(
        &self,
        asset_id: Uuid,
        dest: &Path,
        expected: Option<(u64, &str)>,
        mut on_progress: impl FnMut(u64),
    ) -> Result<(u64, String)> {
        let link = self.download_link(asset_id).await?;
        let mut resp = self.http.get(&link.url).send().await?;
        if !resp.status().is_success() {
            bail!("download refused: {}", resp.status());
        }
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await?;
        }
        let name = dest
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} names no file", dest.display()))?
            .to_string_lossy();
        let partial = dest.with_file_name(format!(".{name}.{asset_id}.partial"));
        let _ = tokio::fs::remove_file(&partial).await;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let received = async {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = resp.chunk().await? {
                size += chunk.len() as u64;
                on_progress(size);
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            let got = (size, hex::encode(hasher.finalize()));
            if let Some((want_size, want_sha)) = expected {
                if got.0 != want_size || got.1 != want_sha {
                    bail!(
                        "{} arrived as {} bytes with SHA-256 {}; the job recorded {want_size} bytes, {want_sha}",
                        dest.display(),
                        got.0,
                        got.1
                    );
                }
            }
            tokio::fs::rename(&partial, dest)
                .await
                .with_context(|| format!("moving the download to {}", dest.display()))?;
            Ok(got)
        }
        .await;
        if received.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        received
    }

    /// Downloads every output of a finished job: a file output to `dests[alias]`, a directory
    /// output's files into the directory `dests[alias]`.
    pub async fn download_outputs(
        &self,
        job: &api::Job,
        dests: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for (alias, out) in &job.outputs {
            if let Some(dest) = dests.get(alias.as_str()) {
                written.extend(self.download_output(out, dest, |_| {}).await?);
            }
        }
        Ok(written)
    }

    /// Downloads one output: a file output to `dest`, a directory output's files into the
    /// directory `dest`. `on_progress` gets the bytes received so far over all its files.
    pub async fn download_output(
        &self,
        out: &api::JobOutput,
        dest: &Path,
        mut on_progress: impl FnMut(u64),
    ) -> Result<Vec<PathBuf>> {
        let is_dir = out.filename.ends_with('/');
        let mut written = Vec::new();
        let mut before = 0u64;
        for f in &out.files {
            let path = if is_dir {
                // The name comes from the server: never let it leave `dest`.
                if mpegflow_domain::names::check_file_name(&f.path).is_err() {
                    bail!("refusing odd output file name {:?}", f.path);
                }
                dest.join(&f.path)
            } else {
                dest.to_owned()
            };
            let (size, _) = self
                .download_with(f.asset_id, &path, Some((f.size, f.sha256.as_str())), |n| {
                    on_progress(before + n)
                })
                .await?;
            before += size;
            written.push(path);
        }
        Ok(written)
    }
}
