//! Malformed inputs, each with the one outcome it must have: the exact error code (or success,
//! where FFmpeg rightly reads what is there), how many attempts it costs, and a failure only
//! before anything was uploaded. The corpus the overhead work of issue 8 must keep exact.

use crate::harness::*;
use mpegflow_api::JobState;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// An MP4 of 2 s at 320×240, with its index (`moov`) first or last.
async fn mp4(dir: &Path, name: &str, faststart: bool) -> PathBuf {
    let src = clip(dir, "source.mp4", 2, "320x240").await;
    let out = dir.join(name);
    let movflags = if faststart {
        "+faststart"
    } else {
        "-faststart"
    };
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&src)
        .args(["-c", "copy", "-movflags", movflags])
        .arg(&out)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn truncated(dir: &Path, from: &Path, name: &str, fraction: f64) -> PathBuf {
    let bytes = std::fs::read(from).unwrap();
    let keep = (bytes.len() as f64 * fraction) as usize;
    write(dir, name, &bytes[..keep])
}

/// `None`: the job succeeds.
struct Case {
    name: &'static str,
    input: PathBuf,
    command: &'static str,
    want: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_input_fails_with_its_own_code() {
    // Two workers: `invalid_input` is final only once a second worker confirms it.
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    let dir = tp.dir.path();
    let faststart = mp4(dir, "faststart.mp4", true).await;
    let moov_last = mp4(dir, "moov-last.mp4", false).await;
    // 321×241 in 4:4:4: libx264 cannot encode it as 4:2:0 (odd sizes).
    let odd = lavfi(
        dir,
        "odd.mp4",
        "testsrc=size=321x241:duration=1",
        &["-c:v", "libx264", "-pix_fmt", "yuv444p"],
    )
    .await;
    let encode = "-i {{in}} -c:v libx264 -preset veryfast {{out}}";
    let random: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(7919) % 251) as u8)
        .collect();
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend_from_slice(&[0u8; 4096]);
    let playlist =
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n";
    let cases = vec![
        Case {
            name: "empty",
            input: write(dir, "empty.mp4", b""),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "random bytes",
            input: write(dir, "random.mp4", &random),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "random bytes, the command asking FFmpeg to be quiet",
            input: write(dir, "random-quiet.mp4", &random),
            command: "-v quiet -i {{in}} -c:v libx264 -preset veryfast {{out}}",
            want: Some("invalid_input"),
        },
        Case {
            name: "a zip archive named .mp4",
            input: write(dir, "archive.mp4", &zip),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "an HLS playlist named .mp4",
            input: write(dir, "playlist.mp4", playlist),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "faststart MP4 cut at 10 %",
            input: truncated(dir, &faststart, "fs-10.mp4", 0.10),
            command: encode,
            want: None,
        },
        Case {
            name: "faststart MP4 cut at 60 %",
            input: truncated(dir, &faststart, "fs-60.mp4", 0.60),
            command: encode,
            want: None,
        },
        Case {
            name: "faststart MP4 cut inside its index (streams without data)",
            input: truncated(dir, &faststart, "fs-moov.mp4", 0.002),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "MP4 with its index last, cut at 60 %",
            input: truncated(dir, &moov_last, "ml-60.mp4", 0.60),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "MP4 with its index last, cut at 99 %",
            input: truncated(dir, &moov_last, "ml-99.mp4", 0.99),
            command: encode,
            want: Some("invalid_input"),
        },
        Case {
            name: "odd width for yuv420p (fails in the encoder)",
            input: odd,
            command: "-i {{in}} -c:v libx264 -pix_fmt yuv420p {{out}}",
            want: Some("ffmpeg_failed"),
        },
    ];
    let mut seen = Vec::new();
    for case in &cases {
        let job = run_job(&client, &case.input, &[("out", "out.mp4")], case.command).await;
        let got = job.error.as_ref().map(|e| e.code.clone());
        eprintln!(
            "corpus: {}: {} {:?} after {} attempt(s), {} job fault(s)",
            case.name, job.state, got, job.attempts, job.job_faults
        );
        seen.push((case.name, got.clone(), job.clone()));
    }
    for (case, (name, got, job)) in cases.iter().zip(&seen) {
        assert_eq!(got.as_deref(), case.want, "{name}: {job:#?}");
        match case.want {
            None => assert_eq!(job.state, JobState::Succeeded, "{name}"),
            Some(code) => {
                assert_eq!(job.state, JobState::Failed, "{name}");
                // One job fault; `invalid_input` ran a second time to be confirmed.
                assert_eq!(job.job_faults, 1, "{name}: {job:#?}");
                assert_eq!(job.platform_faults, 0, "{name}: {job:#?}");
                let runs = if code == "invalid_input" { 2 } else { 1 };
                if code == "invalid_input" {
                    // The input is named, in FFmpeg's words.
                    let message = job.error.as_ref().unwrap().message.as_deref().unwrap_or("");
                    assert!(
                        message.starts_with("input \"in\" is not valid media: "),
                        "{name}: {message}"
                    );
                }
                assert_eq!(job.attempts, runs, "{name}: {job:#?}");
                // Nothing of a failed job was uploaded.
                let stored: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM upload_grants WHERE job_id = $1")
                        .bind(job.id)
                        .fetch_one(tp.platform.store().pool())
                        .await
                        .unwrap();
                assert_eq!(stored, 0, "{name}: an upload was granted");
            }
        }
    }
    tp.stop().await;
}

/// Inputs whose header FFmpeg reads but which hold no sample at all fail `invalid_input` with
/// nothing uploaded, as the separate probe failed them: their streams look readable in the
/// encode's log, but a WAV header without samples once encoded to an empty output uploaded as
/// a success, and an MP4 cut where its `mdat` begins failed `ffmpeg_failed` when encoded and
/// succeeded (an empty MP4 uploaded) when stream-copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_inputs_still_fail_invalid_input() {
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    let dir = tp.dir.path();
    let faststart = mp4(dir, "faststart.mp4", true).await;
    let bytes = std::fs::read(&faststart).unwrap();
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap() - 4;
    // The whole index, and the `mdat` box header with none of its samples.
    let no_samples = write(dir, "no-samples.mp4", &bytes[..mdat + 8]);
    let wav = lavfi(
        dir,
        "tone.wav",
        "sine=duration=0.01",
        &["-c:a", "pcm_s16le"],
    )
    .await;
    let bytes = std::fs::read(&wav).unwrap();
    let data = bytes.windows(4).position(|w| w == b"data").unwrap();
    let header_only_wav = write(dir, "header-only.wav", &bytes[..data + 8]);
    let cases = [
        (
            "WAV header without samples",
            &header_only_wav,
            "-i {{in}} -c:a aac {{out}}",
            "o.m4a",
        ),
        (
            "MP4 index without samples, encoded",
            &no_samples,
            "-i {{in}} -c:v libx264 -preset veryfast {{out}}",
            "o.mp4",
        ),
        (
            "MP4 index without samples, stream-copied",
            &no_samples,
            "-i {{in}} -c copy {{out}}",
            "o.mp4",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, input, command, out) in cases {
        let job = run_job(&client, input, &[("out", out)], command).await;
        let code = job.error.as_ref().map(|e| e.code.clone());
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM upload_grants WHERE job_id = $1")
                .bind(job.id)
                .fetch_one(tp.platform.store().pool())
                .await
                .unwrap();
        eprintln!(
            "corpus: {name}: {} {code:?} after {} attempt(s), {stored} upload grant(s)",
            job.state, job.attempts
        );
        if code.as_deref() != Some("invalid_input") || stored != 0 {
            wrong.push(format!(
                "{name}: {} {code:?}, {stored} upload(s)",
                job.state
            ));
        }
    }
    assert!(wrong.is_empty(), "not failed invalid_input: {wrong:#?}");
    tp.stop().await;
}
