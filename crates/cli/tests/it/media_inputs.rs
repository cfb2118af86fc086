//! Media users bring, through the real platform and the jailed worker: still images (a JPEG logo
//! overlaid on a video, each still format, a thumbnail, a slideshow), subtitle files burnt in
//! with `subtitles=`/`ass=` (read through a declared input, fonts from the platform), and
//! audio-only files; and the refusals: a `.jpg` that is a playlist, a subtitles input that is not
//! subtitles, a subtitles filter naming a path or a font directory. Every medium is made here
//! with the local ffmpeg. The suite runs with an unprivileged worker, and as root with a root
//! worker (each job as its own uid, through the spawn helper).

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api as api;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

fn ffmpeg(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SRT: &str = "1\n00:00:00,000 --> 00:00:05,000\nHELLO SUBTITLES\n";
const VTT: &str = "WEBVTT\n\n00:00:00.000 --> 00:00:05.000\nHELLO WEBVTT\n";
const ASS: &str = "[Script Info]\nScriptType: v4.00+\nPlayResX: 320\nPlayResY: 240\n\n\
[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, \
BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, \
Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n\
Style: Default,DejaVu Sans,28,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,1,0,0,0,100,100,0,0,\
1,2,0,2,10,10,10,1\n\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, \
MarginV, Effect, Text\nDialogue: 0,0:00:00.00,0:00:05.00,Default,,0,0,0,,HELLO ASS\n";

/// Still image formats, by extension.
const STILLS: &[&str] = &["jpg", "png", "webp", "bmp", "tiff", "gif"];
/// Audio-only formats: (file, what it holds).
const AUDIO: &[(&str, &[&str])] = &[
    ("audio.wav", &[]),
    ("audio.mp3", &["-c:a", "libmp3lame"]),
    ("audio.flac", &[]),
    ("audio.ogg", &["-c:a", "libopus"]),
];

/// Makes every medium the tests upload, in `dir`.
fn make_media(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    // A dark, flat video: anything drawn on it shows.
    ffmpeg(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=0x303030:s=320x240:r=25:d=2",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            "video.mp4",
        ],
    );
    ffmpeg(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=64x64",
            "-frames:v",
            "1",
            "logo.jpg",
        ],
    );
    for ext in STILLS {
        ffmpeg(
            dir,
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc=s=96x72",
                "-frames:v",
                "1",
                &format!("still.{ext}"),
            ],
        );
    }
    for (name, codec) in AUDIO {
        let mut args = vec!["-f", "lavfi", "-i", "sine=frequency=330:duration=2"];
        args.extend_from_slice(codec);
        args.push(name);
        ffmpeg(dir, &args);
    }
    std::fs::write(dir.join("subs.srt"), SRT).unwrap();
    std::fs::write(dir.join("subs.vtt"), VTT).unwrap();
    std::fs::write(dir.join("styled.ass"), ASS).unwrap();
    // A playlist named like a logo: read as HLS it would open the files it lists.
    std::fs::write(
        dir.join("playlist.jpg"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:/etc/passwd\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    // A video named like subtitles, and text that holds no cue.
    std::fs::copy(dir.join("video.mp4"), dir.join("video.srt")).unwrap();
    std::fs::write(
        dir.join("prose.srt"),
        "This is a letter, not a subtitle file.\n",
    )
    .unwrap();
}

struct Env {
    tp: TestPlatform,
    client: ApiClient,
    media: PathBuf,
}

/// A platform with two workers (an `invalid_input` verdict needs a second worker to confirm
/// it), root ones with `as_root`.
async fn setup(as_root: bool) -> Env {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let (_, token) = tp.worker_token("default").await;
    for _ in 0..2 {
        tp.platform
            .spawn_worker_with(&token, &[], as_root)
            .await
            .unwrap();
    }
    let media = tp.path("media");
    make_media(&media);
    Env { tp, client, media }
}

impl Env {
    async fn upload(&self, file: &str) -> Uuid {
        self.client.upload(&self.media.join(file)).await.unwrap().id
    }

    /// Uploads the inputs (alias, file) and submits; returns the job id.
    async fn submit(&self, inputs: &[(&str, &str)], outputs: &[(&str, &str)], cmd: &str) -> Uuid {
        let mut ins = Vec::new();
        for (alias, file) in inputs {
            ins.push((*alias, self.upload(file).await));
        }
        let job = api::JobIn::new(ins, outputs.iter().copied(), cmd).unwrap();
        self.client
            .submit(&job)
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e:#}"))
            .id
    }

    /// Waits for the job, requires success, and downloads output `alias` as `name`.
    async fn output(&self, id: Uuid, alias: &str, name: &str) -> PathBuf {
        let job = self.client.wait(id, |_| {}).await.unwrap();
        assert_eq!(job.state, api::JobState::Succeeded, "{job:#?}");
        let path = self.tp.path(name);
        let dests = BTreeMap::from([(alias.to_owned(), path.clone())]);
        self.client.download_outputs(&job, &dests).await.unwrap();
        path
    }

    /// Waits for the job and requires it to fail as `invalid_input`, naming `alias`.
    async fn refused_input(&self, id: Uuid, alias: &str) {
        let job = self.client.wait(id, |_| {}).await.unwrap();
        assert_eq!(job.state, api::JobState::Failed, "{job:#?}");
        let error = job.error.as_ref().expect("a failed job has an error");
        assert_eq!(error.code, "invalid_input", "{job:#?}");
        let message = error.message.as_deref().unwrap_or_default();
        assert!(message.contains(&format!("{alias:?}")), "{message}");
    }
}

/// One frame's `crop` region at `at` seconds, as 8-bit gray pixels.
fn region(path: &Path, at: &str, crop: &str) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-ss", at, "-i"])
        .arg(path)
        .args([
            "-vf",
            &format!("crop={crop},format=gray"),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty(), "{path:?}");
    out.stdout
}

/// How many pixels of the region differ by more than 40 levels of 255.
fn changed_pixels(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.abs_diff(**y) > 40)
        .count()
}

fn stream<'a>(probe: &'a Value, kind: &str) -> Option<&'a Value> {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == kind)
}

fn duration(probe: &Value) -> f64 {
    probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn frames(path: &Path) -> u64 {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

const ENCODE: &str = "-c:v libx264 -preset ultrafast -pix_fmt yuv420p";

async fn suite(as_root: bool) {
    let env = setup(as_root).await;
    // Everything is submitted first, so the two workers run jobs side by side.
    let plain = env
        .submit(
            &[("video", "video.mp4")],
            &[("out", "plain.mp4")],
            &format!("-i {{{{video}}}} -an {ENCODE} {{{{out}}}}"),
        )
        .await;
    let overlay = env
        .submit(
            &[("video", "video.mp4"), ("logo", "logo.jpg")],
            &[("out", "overlay.mp4")],
            &format!(
                "-i {{{{video}}}} -i {{{{logo}}}} -filter_complex '[0:v][1:v]overlay=10:10[v]' \
                 -map '[v]' {ENCODE} {{{{out}}}}"
            ),
        )
        .await;
    let mut stills = Vec::new();
    for ext in STILLS {
        let id = env
            .submit(
                &[("img", &format!("still.{ext}"))],
                &[("out", "still.png")],
                "-i {{img}} -vf scale=48:36 -frames:v 1 {{out}}",
            )
            .await;
        stills.push((ext, id));
    }
    let thumb = env
        .submit(
            &[("video", "video.mp4")],
            &[("thumb", "thumb.jpg")],
            "-ss 1 -i {{video}} -frames:v 1 {{thumb}}",
        )
        .await;
    let slides =
        |s: &str| format!("[{s}:v]scale=320:240,tpad=stop_mode=clone:stop=24,format=yuv420p[s{s}]");
    let slideshow = env
        .submit(
            &[("a", "still.jpg"), ("b", "still.png"), ("c", "still.webp")],
            &[("out", "slideshow.mp4")],
            &format!(
                "-i {{{{a}}}} -i {{{{b}}}} -i {{{{c}}}} -filter_complex '{};{};{};[s0][s1][s2]concat=n=3:v=1:a=0[v]' \
                 -map '[v]' -r 25 {ENCODE} {{{{out}}}}",
                slides("0"),
                slides("1"),
                slides("2")
            ),
        )
        .await;
    let srt = env
        .submit(
            &[("video", "video.mp4"), ("subs", "subs.srt")],
            &[("out", "srt.mp4")],
            // A declared encoding: iconv loads its converter inside the jail.
            &format!(
                r"-i {{{{video}}}} -an -vf 'subtitles={{{{subs}}}}:charenc=CP1252:force_style=FontSize=28\,Bold=1' {ENCODE} {{{{out}}}}"
            ),
        )
        .await;
    let vtt = env
        .submit(
            &[("video", "video.mp4"), ("subs", "subs.vtt")],
            &[("out", "vtt.mp4")],
            &format!(
                "-i {{{{video}}}} -an -vf subtitles=filename={{{{subs}}}} {ENCODE} {{{{out}}}}"
            ),
        )
        .await;
    let ass = env
        .submit(
            &[("video", "video.mp4"), ("subs", "styled.ass")],
            &[("out", "ass.mp4")],
            &format!("-i {{{{video}}}} -an -vf ass={{{{subs}}}} {ENCODE} {{{{out}}}}"),
        )
        .await;
    // The same kind of file as a stream: soft subtitles muxed into the MP4.
    let soft = env
        .submit(
            &[("video", "video.mp4"), ("subs", "subs.srt")],
            &[("out", "soft.mp4")],
            "-i {{video}} -i {{subs}} -map 0:v -map 1:s -c:v copy -c:s mov_text {{out}}",
        )
        .await;
    let mut audio = Vec::new();
    for (file, _) in AUDIO {
        let id = env
            .submit(
                &[("audio", file)],
                &[("out", "out.m4a")],
                "-i {{audio}} -c:a aac -b:a 96k {{out}}",
            )
            .await;
        audio.push((file, id));
    }
    let playlist_logo = env
        .submit(
            &[("video", "video.mp4"), ("logo", "playlist.jpg")],
            &[("out", "o.mp4")],
            &format!(
                "-i {{{{video}}}} -i {{{{logo}}}} -filter_complex '[0:v][1:v]overlay[v]' -map '[v]' {ENCODE} {{{{out}}}}"
            ),
        )
        .await;
    let mut not_subtitles = Vec::new();
    for file in ["video.srt", "prose.srt"] {
        let id = env
            .submit(
                &[("video", "video.mp4"), ("subs", file)],
                &[("out", "o.mp4")],
                &format!("-i {{{{video}}}} -vf subtitles={{{{subs}}}} {ENCODE} {{{{out}}}}"),
            )
            .await;
        not_subtitles.push(id);
    }

    // The logo is where the overlay put it, and nowhere else.
    let plain = env.output(plain, "out", "plain.mp4").await;
    let overlay = env.output(overlay, "out", "overlay.mp4").await;
    let logo_area = "64:64:10:10";
    let elsewhere = "64:64:240:160";
    let changed = changed_pixels(
        &region(&plain, "1", logo_area),
        &region(&overlay, "1", logo_area),
    );
    assert!(changed > 64 * 64 / 2, "the logo changed {changed} pixels");
    let changed = changed_pixels(
        &region(&plain, "1", elsewhere),
        &region(&overlay, "1", elsewhere),
    );
    assert_eq!(changed, 0, "the overlay changed pixels away from the logo");

    for (ext, id) in stills {
        let png = env.output(id, "out", &format!("still-{ext}.png")).await;
        let probe = ffprobe(&png);
        let v = stream(&probe, "video").unwrap();
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(48), Some(36)),
            "{ext}"
        );
    }

    let thumb = env.output(thumb, "thumb", "thumb.jpg").await;
    let probe = ffprobe(&thumb);
    let v = stream(&probe, "video").unwrap();
    assert_eq!(v["codec_name"], "mjpeg");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );

    // Three stills of 25 frames each at 25 fps.
    let slideshow = env.output(slideshow, "out", "slideshow.mp4").await;
    let probe = ffprobe(&slideshow);
    assert!((duration(&probe) - 3.0).abs() < 0.05, "{probe:#}");
    assert_eq!(frames(&slideshow), 75);

    // Burnt-in subtitles: text at the bottom of the picture, nothing at the top.
    for (id, name) in [(srt, "srt.mp4"), (vtt, "vtt.mp4"), (ass, "ass.mp4")] {
        let out = env.output(id, "out", name).await;
        let bottom = "320:70:0:170";
        let top = "320:70:0:0";
        let changed = changed_pixels(&region(&plain, "1", bottom), &region(&out, "1", bottom));
        assert!(
            changed > 200,
            "{name}: the subtitles changed {changed} pixels"
        );
        let changed = changed_pixels(&region(&plain, "1", top), &region(&out, "1", top));
        assert_eq!(changed, 0, "{name}: pixels changed away from the subtitles");
    }

    let soft = env.output(soft, "out", "soft.mp4").await;
    let probe = ffprobe(&soft);
    assert_eq!(
        stream(&probe, "subtitle").unwrap()["codec_name"],
        "mov_text"
    );

    for (file, id) in audio {
        let m4a = env.output(id, "out", &format!("{file}.m4a")).await;
        let probe = ffprobe(&m4a);
        assert_eq!(
            stream(&probe, "audio").unwrap()["codec_name"],
            "aac",
            "{file}"
        );
        assert!(stream(&probe, "video").is_none(), "{file}");
        assert!((duration(&probe) - 2.0).abs() < 0.1, "{file}: {probe:#}");
    }

    env.refused_input(playlist_logo, "logo").await;
    for id in not_subtitles {
        env.refused_input(id, "subs").await;
    }
    env.tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_subtitles_and_audio_work_with_an_unprivileged_worker() {
    suite(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_subtitles_and_audio_work_with_a_root_worker() {
    if !root_setup_available("running the worker as root") {
        return;
    }
    suite(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtitle_filters_cannot_name_a_path_or_a_font_directory() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let media = tp.path("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("subs.srt"), SRT).unwrap();
    let video = clip(&media, "video.mp4", 1, "160x120").await;
    let video = client.upload(&video).await.unwrap().id;
    let subs = client.upload(&media.join("subs.srt")).await.unwrap().id;
    let refused = [
        "subtitles=/etc/passwd",
        "subtitles=filename=in/subs.srt",
        "subtitles=../in/subs.srt",
        "subtitles={{subs}}:fontsdir=/etc",
        "subtitles=filename={{subs}}:fontsdir=.",
        "subtitles={{subs}}:charenc=/tmp/x",
        "subtitles={{subs}}:force_style=FontName=/etc/passwd",
        "subtitles={{video}}",
        "ass={{subs}}",
        "subtitles='{{subs}}'/x",
    ];
    for graph in refused {
        // Each graph also reads the declared subtitles, so only the refused part is new.
        let graph = if graph.contains("{{subs}}") {
            graph.to_owned()
        } else {
            format!("{graph},subtitles={{{{subs}}}}")
        };
        let command = format!("-i {{{{video}}}} -vf \"{graph}\" {{{{out}}}}");
        let body = json!({
            "inputs": { "video": video, "subs": subs },
            "outputs": { "out": "out.mp4" },
            "command": command,
        });
        let answer = client
            .call(Method::POST, "/v1/jobs", Some(&body), &[])
            .await
            .unwrap();
        let problem = answer.problem();
        assert_eq!(answer.status, 400, "{command}: {problem:?}");
        assert_eq!(problem.code, "invalid_command", "{command}: {problem:?}");
        assert_eq!(
            problem.argument.as_deref(),
            Some(graph.as_str()),
            "{command}: {problem:?}"
        );
    }
    tp.stop().await;
}
