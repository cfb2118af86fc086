//! A client of the tenant REST API, used by `mpegflow run`/`jobs`, by `up`'s sample job and by
//! the integration tests.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    key: String,
    pub http: reqwest::Client,
}

/// An error answer of the API (problem+json).
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub detail: String,
    pub body: Value,
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

    /// Sends a request; returns the status and JSON body whatever the status.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value)> {
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
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, json))
    }

    /// Like [`call`](Self::call), but a non-2xx answer is an error carrying the problem.
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, json) = self.call(method, path, body, &[]).await?;
        if (200..300).contains(&status) {
            return Ok(json);
        }
        Err(Problem {
            status,
            code: json["code"].as_str().unwrap_or("error").to_owned(),
            detail: json["detail"].as_str().unwrap_or("").to_owned(),
            body: json,
        }
        .into())
    }

    /// Uploads a local file as a new asset (size and SHA-256 signed in), and completes it.
    pub async fn upload(&self, path: &Path) -> Result<Value> {
        let (size, sha256) = sha256_file(path).await?;
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("input")
            .to_owned();
        let asset = self
            .ok(
                reqwest::Method::POST,
                "/v1/assets",
                Some(&json!({ "filename": filename, "size": size, "sha256": sha256 })),
            )
            .await?;
        let url = asset["upload_url"]
            .as_str()
            .ok_or_else(|| anyhow!("no upload_url"))?;
        let file = tokio::fs::File::open(path).await?;
        let mut req = self.http.put(url).body(reqwest::Body::wrap_stream(
            tokio_util::io::ReaderStream::new(file),
        ));
        for (k, v) in asset["upload_headers"].as_object().into_iter().flatten() {
            req = req.header(k.as_str(), v.as_str().unwrap_or_default());
        }
        let resp = req.send().await.context("uploading to the object store")?;
        if !resp.status().is_success() {
            bail!(
                "upload refused by the object store: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let id = asset["id"].as_str().unwrap_or_default().to_owned();
        self.ok(
            reqwest::Method::POST,
            &format!("/v1/assets/{id}/complete"),
            None,
        )
        .await
    }

    pub async fn submit(
        &self,
        inputs: &BTreeMap<String, String>,
        outputs: &BTreeMap<String, String>,
        command: &str,
        extra: Value,
    ) -> Result<Value> {
        let mut body = json!({ "inputs": inputs, "outputs": outputs, "command": command });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.ok(reqwest::Method::POST, "/v1/jobs", Some(&body))
            .await
    }

    pub async fn job(&self, id: &str) -> Result<Value> {
        self.ok(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
    }

    /// Long-polls until the job ends, calling `on_progress` with each fresh view.
    pub async fn wait(&self, id: &str, mut on_progress: impl FnMut(&Value)) -> Result<Value> {
        loop {
            let job = self
                .ok(
                    reqwest::Method::GET,
                    &format!("/v1/jobs/{id}?wait_seconds=20"),
                    None,
                )
                .await?;
            on_progress(&job);
            if matches!(
                job["state"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ) {
                return Ok(job);
            }
        }
    }

    /// Downloads an asset to `dest`, returning its size and SHA-256.
    pub async fn download(&self, asset_id: &str, dest: &Path) -> Result<(u64, String)> {
        let link = self
            .ok(
                reqwest::Method::GET,
                &format!("/v1/assets/{asset_id}/download"),
                None,
            )
            .await?;
        let url = link["url"]
            .as_str()
            .ok_or_else(|| anyhow!("no download url"))?;
        let mut resp = self.http.get(url).send().await?;
        if !resp.status().is_success() {
            bail!("download refused: {}", resp.status());
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("creating {}", dest.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Downloads every output of a finished job: a file output to `dests[alias]`, a directory
    /// output's files into the directory `dests[alias]`.
    pub async fn download_outputs(
        &self,
        job: &Value,
        dests: &BTreeMap<String, std::path::PathBuf>,
    ) -> Result<Vec<std::path::PathBuf>> {
        let mut written = Vec::new();
        for (alias, out) in job["outputs"].as_object().into_iter().flatten() {
            let Some(dest) = dests.get(alias) else {
                continue;
            };
            if let Some(files) = out["files"].as_array() {
                for f in files {
                    let name = f["path"].as_str().unwrap_or_default();
                    if mpegflow_domain::names::check_file_name(name).is_err() {
                        bail!("refusing odd output file name {name:?}");
                    }
                    let path = dest.join(name);
                    self.download(f["asset_id"].as_str().unwrap_or_default(), &path)
                        .await?;
                    written.push(path);
                }
            } else {
                self.download(out["asset_id"].as_str().unwrap_or_default(), dest)
                    .await?;
                written.push(dest.clone());
            }
        }
        Ok(written)
    }
}
