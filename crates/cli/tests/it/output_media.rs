//! Output media metadata: every file a job wrote (each file of a directory output too) carries
//! its format, duration and streams once the job reads `succeeded`, measured by the worker's
//! jailed ffprobe, and it equals what an independent ffprobe says of the downloaded bytes. A
//! playlist has none. Run with an unprivileged worker, and as root with a root worker (the job's
//! uid measures its own `out/` before the handover).

use crate::harness::*;
use mpegflow_api as api;
use serde_json::Value;
use std::path::Path;

/// ffprobe's own reading of `path` (the test's ffprobe, unjailed, every default).
fn independent(path: &Path) -> Value {
    ffprobe(path)
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Requires the platform's `media` to say what ffprobe says of the file.
fn assert_same(what: &str, media: &api::MediaInfo, probe: &Value) {
    let format = &probe["format"];
    assert_eq!(
        media.format,
        format["format_name"].as_str().unwrap(),
        "{what}: format"
    );
    assert_eq!(
        media.duration_seconds,
        num(&format["duration"]),
        "{what}: duration"
    );
    assert_eq!(
        media.bit_rate.map(|b| b as f64),
        num(&format["bit_rate"]),
        "{what}: bit rate"
    );
    let streams = probe["streams"].as_array().unwrap();
    assert_eq!(
        media.streams.len(),
        streams.len(),
        "{what}: streams {media:#?}"
    );
    for (m, s) in media.streams.iter().zip(streams) {
        let at = format!("{what} stream {}", m.index);
        assert_eq!(u64::from(m.index), s["index"].as_u64().unwrap(), "{at}");
        assert_eq!(m.kind.as_str(), s["codec_type"].as_str().unwrap(), "{at}");
        assert_eq!(m.codec, s["codec_name"].as_str().unwrap(), "{at}");
        assert_eq!(m.width.map(u64::from), s["width"].as_u64(), "{at}: width");
        assert_eq!(
            m.height.map(u64::from),
            s["height"].as_u64(),
            "{at}: height"
        );
        assert_eq!(m.pixel_format.as_deref(), s["pix_fmt"].as_str(), "{at}");
        assert_eq!(m.profile.as_deref(), s["profile"].as_str(), "{at}");
        let rate = s["avg_frame_rate"]
            .as_str()
            .filter(|r| !r.starts_with("0/"));
        assert_eq!(m.frame_rate.as_deref(), rate, "{at}: frame rate");
        assert_eq!(
            m.bit_rate.map(|b| b as f64),
            num(&s["bit_rate"]),
            "{at}: bit rate"
        );
        assert_eq!(m.sample_rate.map(f64::from), num(&s["sample_rate"]), "{at}");
        assert_eq!(m.channels.map(u64::from), s["channels"].as_u64(), "{at}");
        assert_eq!(
            m.channel_layout.as_deref(),
            s["channel_layout"].as_str(),
            "{at}"
        );
        assert_eq!(m.duration_seconds, num(&s["duration"]), "{at}: duration");
    }
}

async fn outputs_carry_their_media(as_root: bool) {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let (_, token) = tp.worker_token("default").await;
    tp.platform
        .spawn_worker_with(&token, &[], as_root)
        .await
        .unwrap();
    let input = clip(&tp.path(""), "in.mp4", 4, "320x240").await;
    let job = run_job(
        &client,
        &input,
        &[("video", "out.mp4"), ("hls", "hls/"), ("thumb", "thumb.png"), ("audio", "voice.ogg")],
        "-i {{in}} -map 0:v -map 0:a -c:v libx264 -preset ultrafast -vf scale=160:120 -r 15 -c:a aac -b:a 64k -ac 2 {{video}} \
         -map 0:v -c:v libx264 -preset ultrafast -g 25 -f hls -hls_time 1 -hls_playlist_type vod \
         -hls_segment_filename {{hls}}/seg%03d.ts {{hls}}/index.m3u8 \
         -map 0:v -frames:v 1 -vf scale=64:48 {{thumb}} \
         -map 0:a -c:a libopus -ar 48000 {{audio}}",
    )
    .await;
    assert_eq!(job.state, api::JobState::Succeeded, "{job:#?}");
    // The API shows what was measured.
    let stages: Vec<&str> = history(&job)[0]
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(stages.contains(&"measure"), "{stages:?}");
    // Each stage says what CPU it used: the encode's FFmpeg (the job's uid's, through the spawn
    // helper, as root) and the measuring ffprobe each at least a few milliseconds.
    for name in ["encode", "measure"] {
        let cpu = history(&job)[0]
            .stages
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.cpu_ms);
        assert!(cpu.is_some_and(|ms| ms > 5.0), "{name}: {cpu:?} ms of CPU");
    }

    let dir = tp.path("downloads");
    std::fs::create_dir_all(&dir).unwrap();
    let mut segments = 0;
    for (alias, output) in &job.outputs {
        for file in &output.files {
            let what = format!("{alias}/{}", file.path);
            let local = dir.join(format!("{alias}-{}", file.path));
            client.download(file.asset_id, &local).await.unwrap();
            if file.path.ends_with(".m3u8") {
                assert_eq!(
                    file.media, None,
                    "{what}: a playlist is not measured as media"
                );
                continue;
            }
            let media = file.media.as_ref().unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(tp.path("data/logs/worker-0.log")).unwrap_or_default();
                panic!("{what} has no media: {job:#?}\n{log}")
            });
            assert_same(&what, media, &independent(&local));
            // The asset says the same.
            let asset = client.asset(file.asset_id).await.unwrap();
            assert_eq!(asset.media.as_ref(), Some(media), "{what}: asset");
            if file.path.ends_with(".ts") {
                segments += 1;
            }
        }
    }
    assert!(segments >= 3, "a 4-s clip in 1-s segments: {job:#?}");
    // Spot checks a user would make.
    let video = output_file(&job, "video").media.clone().unwrap();
    assert_eq!(video.format, "mov,mp4,m4a,3gp,3g2,mj2");
    let v = &video.streams[0];
    assert_eq!(
        (v.kind, v.codec.as_str(), v.width, v.height),
        (api::StreamKind::Video, "h264", Some(160), Some(120))
    );
    assert_eq!(v.frame_rate.as_deref(), Some("15/1"));
    let a = &video.streams[1];
    assert_eq!(
        (a.kind, a.codec.as_str(), a.channels),
        (api::StreamKind::Audio, "aac", Some(2))
    );
    assert!(
        (video.duration_seconds.unwrap() - 4.0).abs() < 0.2,
        "{video:#?}"
    );
    let thumb = output_file(&job, "thumb").media.clone().unwrap();
    assert_eq!(
        (thumb.streams[0].codec.as_str(), thumb.streams[0].width),
        ("png", Some(64))
    );
    let audio = output_file(&job, "audio").media.clone().unwrap();
    assert_eq!(
        (
            audio.streams[0].codec.as_str(),
            audio.streams[0].sample_rate
        ),
        ("opus", Some(48000))
    );
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_carry_their_media_with_an_unprivileged_worker() {
    outputs_carry_their_media(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_carry_their_media_with_a_root_worker() {
    if !root_setup_available("running the worker as root") {
        return;
    }
    outputs_carry_their_media(true).await;
}
