//! The sample job `mpegflow up` runs to show the platform works, end to end.

use crate::client::ApiClient;
use anyhow::{bail, Context, Result};
use mpegflow_api as api;
use std::collections::BTreeMap;
use std::path::Path;

/// Makes a test clip with the local ffmpeg (a synthetic source; this is not a tenant job).
pub async fn make_clip(path: &Path, seconds: u32, size: &str) -> Result<()> {
    let out = tokio::process::Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=duration={seconds}:size={size}:rate=25"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(path)
        .output()
        .await
        .context("running ffmpeg to make a sample clip")?;
    if !out.status.success() {
        bail!(
            "ffmpeg could not make a sample clip: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Uploads a clip, transcodes it to 160p on the platform, downloads and checks the result.
pub async fn run_sample(client: &ApiClient, dir: &Path) -> Result<api::Job> {
    let clip = dir.join("sample-input.mp4");
    make_clip(&clip, 2, "320x240").await?;
    let asset = client.upload(&clip).await?;
    let job = client
        .submit(&api::JobIn::new(
            [("in", asset.id)],
            [("out", "sample-160p.mp4")],
            "-i {{in}} -vf scale=-2:160 -c:v libx264 -preset veryfast -c:a aac {{out}}",
        )?)
        .await?;
    let job = client.wait(job.id, |_| {}).await?;
    if job.state != api::JobState::Succeeded {
        bail!("sample job {} ended {}: {:?}", job.id, job.state, job.error);
    }
    let dest = dir.join("sample-160p.mp4");
    client
        .download_outputs(&job, &BTreeMap::from([("out".to_owned(), dest.clone())]))
        .await?;
    Ok(job)
}
