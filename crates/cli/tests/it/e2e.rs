use crate::harness::*;
use mpegflow_api::JobState;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_and_hls_round_trip() {
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "clip.mov", 2, "320x240").await;
    let job = submit(
        &client,
        &input,
        &[("out", "out.mp4"), ("hls", "hls/")],
        "-i {{in}} -map 0:v -vf scale=-2:160 -c:v libx264 -preset veryfast {{out}} \
         -map 0 -c:v libx264 -preset veryfast -g 25 -c:a aac -f hls -hls_time 1 -hls_playlist_type vod \
         -hls_segment_filename {{hls}}/seg_%03d.ts {{hls}}/index.m3u8",
    )
    .await;
    let job = client.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.progress, Some(1.0));

    let out_path = tp.path("out.mp4");
    let hls_dir = tp.path("hls");
    let dests = BTreeMap::from([
        ("out".to_owned(), out_path.clone()),
        ("hls".to_owned(), hls_dir.clone()),
    ]);
    client.download_outputs(&job, &dests).await.unwrap();

    // The requested codec, size and duration.
    let probe = ffprobe(&out_path);
    let v = &probe["streams"][0];
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["height"], 160);
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((duration - 2.0).abs() < 0.2, "duration {duration}");

    // The recorded hash is the hash of the bytes a tenant downloads.
    let bytes = std::fs::read(&out_path).unwrap();
    let out = output_file(&job, "out");
    assert_eq!(out.sha256.as_str(), sha256_hex(&bytes));
    assert_eq!(out.size, bytes.len() as u64);

    // The HLS directory arrived complete: every segment the playlist names, and it plays.
    let playlist = std::fs::read_to_string(hls_dir.join("index.m3u8")).unwrap();
    let segments: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(segments.len() >= 2, "{playlist}");
    for s in &segments {
        assert!(hls_dir.join(s).is_file(), "segment {s} missing");
    }
    let files = &output(&job, "hls").files;
    assert_eq!(files.len(), segments.len() + 1);
    for f in files {
        let local = std::fs::read(hls_dir.join(&f.path)).unwrap();
        assert_eq!(f.sha256.as_str(), sha256_hex(&local));
    }
    let hls_probe = ffprobe(&hls_dir.join("index.m3u8"));
    let hls_duration: f64 = hls_probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (hls_duration - 2.0).abs() < 0.3,
        "hls duration {hls_duration}"
    );

    // Provenance: the attempt records the worker, the FFmpeg version, stages and input hash.
    let history = history(&job);
    assert_eq!(history.len(), 1);
    let a = &history[0];
    assert_eq!(a.outcome.as_deref(), Some("succeeded"));
    assert!(a
        .ffmpeg_version
        .as_deref()
        .unwrap()
        .starts_with("ffmpeg version"));
    // FFmpeg validates the inputs in the encode's own run: no separate validation stage.
    let stages: Vec<&str> = a.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["download", "encode", "measure", "upload"]);
    let input_sha = sha256_hex(&std::fs::read(&input).unwrap());
    assert_eq!(a.inputs[0].sha256, input_sha);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_inputs_fail_cleanly_and_the_worker_takes_the_next_job() {
    // Two workers: `invalid_input` is final only once a second worker confirms it.
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;

    let random = tp.path("random.mp4");
    std::fs::write(
        &random,
        (0..64 * 1024)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let good = clip(tp.dir.path(), "good.mp4", 1, "320x240").await;
    let truncated = tp.path("truncated.mp4");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();

    let mut workers = Vec::new();
    for bad in [&random, &truncated] {
        let job = run_job(
            &client,
            bad,
            &[("out", "out.mp4")],
            "-i {{in}} -c:v libx264 {{out}}",
        )
        .await;
        assert_eq!(job.state, JobState::Failed, "{job:#?}");
        let error = job_error(&job);
        let code = error.code.as_str();
        assert!(code == "invalid_input" || code == "ffmpeg_failed", "{code}");
        assert!(
            !error.stderr_tail.as_deref().unwrap_or("").is_empty(),
            "stderr recorded: {job:#?}"
        );
        let history = history(&job);
        if code == "invalid_input" {
            assert_eq!(job.attempts, 2, "confirmed by a second worker: {job:#?}");
            assert_ne!(history[0].worker_id, history[1].worker_id);
        } else {
            assert_eq!(job.attempts, 1, "a bad input is not retried");
        }
        for attempt in history {
            workers.push(attempt.worker_id);
        }
        // The full stderr of the attempt is kept and readable.
        let stderr = client.stderr(job.id, 1).await.unwrap();
        assert!(stderr.contains("in/in.mp4"), "{stderr}");
    }

    let job = run_job(
        &client,
        &good,
        &[("out", "out.mp4")],
        "-i {{in}} -c:v libx264 -preset veryfast {{out}}",
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    if workers
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
        == 2
    {
        assert!(
            workers.contains(&history(&job)[0].worker_id),
            "a worker that saw the bad inputs took the next job: {job:#?}"
        );
    }
    let health = client
        .call(reqwest::Method::GET, "/healthz", None::<&()>, &[])
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json::<mpegflow_api::Health>().unwrap().status, "ok");
    tp.stop().await;
}

/// With the shipped defaults (no test timings), a 5-s encode shows its progress moving at least
/// four times through `GET /v1/jobs/{id}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_encode_shows_its_progress_move_four_times_with_shipped_defaults() {
    let tp = TestPlatform::start(1, mpegflow_control::ControlConfig::default()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "five.mp4", 5, "320x240").await;
    // `-re`: the encode takes the clip's 5 s, whatever the machine.
    let id = submit(
        &client,
        &input,
        &[("out", "out.mp4")],
        "-re -i {{in}} -c:v libx264 -preset veryfast {{out}}",
    )
    .await
    .id;
    let mut seen: Vec<f32> = Vec::new();
    let job = loop {
        let job = client.job(id).await.unwrap();
        if let Some(p) = job.progress.filter(|_| job.state == JobState::Running) {
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        if job.state.is_terminal() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let rising: Vec<f32> = seen
        .iter()
        .copied()
        .filter(|p| *p > 0.0 && *p < 1.0)
        .collect();
    eprintln!("progress values seen: {seen:?}");
    assert!(
        rising.len() >= 4 && rising.windows(2).all(|w| w[0] < w[1]),
        "progress seen: {seen:?}"
    );
    tp.stop().await;
}
