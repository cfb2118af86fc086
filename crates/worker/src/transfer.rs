//! Moving bytes through presigned URLs: streaming downloads and uploads, hashing on the way, in
//! constant memory at any file size.

use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("store answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Mismatch(String),
}

impl TransferError {
    /// Whether trying again (on this or another worker) could help.
    pub fn retryable(&self) -> bool {
        match self {
            TransferError::Http(_) | TransferError::Io(_) => true,
            TransferError::Status { status, .. } => *status >= 500,
            TransferError::Mismatch(_) => false,
        }
    }
}

/// The response, or its status and the start of its body as an error.
async fn ensure_success(resp: reqwest::Response) -> Result<reqwest::Response, TransferError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(TransferError::Status {
        status,
        body: body.chars().take(500).collect(),
    })
}

/// Size and SHA-256 (hex) of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    pub size: u64,
    pub sha256: String,
}

/// Streams `url` into `dest`, hashing as it goes.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<Digested, TransferError> {
    let resp = ensure_success(http.get(url).send().await?).await?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(TransferError::Mismatch(format!(
                "input larger than {max_bytes} bytes"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(Digested {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Hashes a regular file.
pub async fn digest_file(path: &Path) -> Result<Digested, TransferError> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(Digested {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Streams `path` to a presigned PUT with exactly the signed headers.
pub async fn upload(
    http: &reqwest::Client,
    url: &str,
    headers: &HashMap<String, String>,
    path: &Path,
) -> Result<(), TransferError> {
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    let mut req = http
        .put(url)
        .body(body)
        .header(reqwest::header::CONTENT_LENGTH, len);
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("content-length") {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    ensure_success(req.send().await?).await?;
    Ok(())
}
