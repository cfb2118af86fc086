//! Results are immutable once recorded: the bytes a tenant downloads hash to the recorded
//! SHA-256, established by the store or the control plane, never by a worker's word; no URL can
//! change an object once its attempt ended or its asset was completed.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api::{self as api, JobState};
use mpegflow_control::ControlConfig;
use mpegflow_objstore::embedded::{EmbeddedConfig, GuardOptions};
use mpegflow_objstore::probe::{self, ProbeError};
use mpegflow_objstore::{Presigner, S3Config};
use mpegflow_proto as pb;
use serde_json::{json, Value};
use std::collections::HashMap;
use tonic::Code;
use uuid::Uuid;

/// A worker that lies, played over raw gRPC: registered once, with its id.
struct Liar {
    raw: RawWorker,
    id: String,
}

impl Liar {
    async fn register(tp: &TestPlatform) -> Liar {
        let (_, token) = tp.worker_token("default").await;
        let mut raw = RawWorker::connect(tp, &token).await;
        let id = raw.register().await.unwrap();
        Liar { raw, id }
    }

    /// Polls until a job is assigned.
    async fn take(&mut self) -> pb::JobAssignment {
        for _ in 0..20 {
            if let Some(a) = self.raw.poll(&self.id, 2).await.unwrap() {
                return a;
            }
        }
        panic!("no job was assigned");
    }

    async fn urls(
        &mut self,
        a: &pb::JobAssignment,
        files: &[(&str, &[u8])],
    ) -> Result<Vec<pb::UploadUrl>, tonic::Status> {
        let files = files
            .iter()
            .map(|(p, b)| pb::ProducedFile {
                path: (*p).into(),
                size: b.len() as u64,
                sha256: sha256_hex(b),
            })
            .collect();
        let r = self.raw.req(pb::RequestUploadUrlsRequest {
            worker_id: self.id.clone(),
            job_id: a.job_id.clone(),
            fencing_token: a.fencing_token.clone(),
            files,
        });
        Ok(self
            .raw
            .client
            .request_upload_urls(r)
            .await?
            .into_inner()
            .uploads)
    }

    /// Reports success with these (path, size, sha256) claims.
    async fn succeed(
        &mut self,
        a: &pb::JobAssignment,
        outputs: &[(&str, usize, String)],
    ) -> Result<(), tonic::Status> {
        let r = self.raw.req(pb::ReportJobStatusRequest {
            worker_id: self.id.clone(),
            job_id: a.job_id.clone(),
            fencing_token: a.fencing_token.clone(),
            outcome: pb::Outcome::Succeeded as i32,
            outputs: outputs
                .iter()
                .map(|(p, s, h)| pb::ProducedFile {
                    path: (*p).into(),
                    size: *s as u64,
                    sha256: h.clone(),
                })
                .collect(),
            ..Default::default()
        });
        self.raw.client.report_job_status(r).await.map(|_| ())
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// PUTs `body` to a presigned URL with its signed headers (reqwest sets the length).
async fn put<'a>(
    url: &str,
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
    body: &[u8],
) -> u16 {
    let mut r = http().put(url).body(body.to_vec());
    for (k, v) in headers {
        if k != "content-length" {
            r = r.header(k, v);
        }
    }
    r.send().await.unwrap().status().as_u16()
}

/// A job with one file output `out` (o.mp4) and one directory output `hls`, on an input of
/// arbitrary bytes: no real worker runs, the test plays the worker.
async fn job(tp: &TestPlatform, client: &ApiClient) -> Uuid {
    let input = tp.path("in.mp4");
    std::fs::write(&input, b"not really a video").unwrap();
    let job = submit(
        client,
        &input,
        &[("out", "o.mp4"), ("hls", "hls/")],
        "-i {{in}} -map 0 -c:v libx264 -preset veryfast -g 25 -c:a aac {{out}} \
         -map 0 -c:v libx264 -preset veryfast -g 25 -c:a aac -f hls -hls_time 1 -hls_playlist_type vod \
         -hls_segment_filename {{hls}}/seg_%03d.ts {{hls}}/index.m3u8",
    )
    .await;
    job.id
}

async fn audit_actions(tp: &TestPlatform, job_id: Uuid) -> Vec<(String, Value)> {
    tp.platform
        .store()
        .job_audit(job_id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.action, r.details))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_report_a_hash_the_stored_bytes_do_not_have() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let id = job(&tp, &client).await;
    let mut w = Liar::register(&tp).await;

    let real: &[u8] = b"the bytes ffmpeg really wrote";
    let claimed: &[u8] = b"THE BYTES FFMPEG REALLY WROTE";
    let seg: &[u8] = b"segment";
    let false_hash = sha256_hex(claimed);

    // Attempt 1: URLs pinned to the claimed hash; the real bytes are refused by the store.
    let a1 = w.take().await;
    let urls = w
        .urls(&a1, &[("out/o.mp4", claimed), ("hls/seg_000.ts", seg)])
        .await
        .unwrap();
    let out = urls.iter().find(|u| u.path == "out/o.mp4").unwrap();
    assert_eq!(put(&out.url, &out.headers, real).await, 400);
    let again = w
        .urls(&a1, &[("out/o.mp4", claimed), ("hls/seg_000.ts", seg)])
        .await
        .unwrap();
    assert_eq!(
        again
            .iter()
            .map(|u| (&u.path, &u.headers))
            .collect::<Vec<_>>(),
        urls.iter()
            .map(|u| (&u.path, &u.headers))
            .collect::<Vec<_>>(),
        "asking again answers the same pins"
    );
    let strip = |u: &str| u.split('?').next().unwrap().to_owned();
    assert_eq!(strip(&again[0].url), strip(&urls[0].url), "same key");
    let refused = w
        .urls(&a1, &[("out/o.mp4", real)])
        .await
        .expect_err("another hash for a granted path");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let seg_url = urls.iter().find(|u| u.path == "hls/seg_000.ts").unwrap();
    assert_eq!(put(&seg_url.url, &seg_url.headers, seg).await, 200);
    w.succeed(
        &a1,
        &[
            ("out/o.mp4", claimed.len(), false_hash.clone()),
            ("hls/seg_000.ts", seg.len(), sha256_hex(seg)),
        ],
    )
    .await
    .unwrap();
    let j = wait_for_state(&client, id, JobState::Queued).await;
    assert_eq!(
        history(&j)[0].error_code.as_deref(),
        Some("output_not_stored"),
        "{j:#?}"
    );

    // Attempt 2: the real bytes are stored under a grant for their real hash, and the report
    // claims another one.
    let a2 = w.take().await;
    assert_eq!(a2.attempt, 2);
    let urls = w
        .urls(&a2, &[("out/o.mp4", real), ("hls/seg_000.ts", seg)])
        .await
        .unwrap();
    for u in &urls {
        let body = if u.path == "out/o.mp4" { real } else { seg };
        assert_eq!(put(&u.url, &u.headers, body).await, 200);
    }
    w.succeed(
        &a2,
        &[
            ("out/o.mp4", real.len(), false_hash.clone()),
            ("hls/seg_000.ts", seg.len(), sha256_hex(seg)),
        ],
    )
    .await
    .unwrap();
    let j = wait_for_state(&client, id, JobState::Queued).await;
    assert_eq!(
        history(&j)[1].error_code.as_deref(),
        Some("output_mismatch"),
        "{j:#?}"
    );

    let audit = audit_actions(&tp, id).await;
    let unverified: Vec<_> = audit
        .iter()
        .filter(|(a, _)| a == "job.output_unverified")
        .collect();
    assert_eq!(unverified.len(), 2, "{audit:#?}");
    assert_eq!(unverified[0].1["code"], "output_not_stored");
    assert_eq!(unverified[1].1["code"], "output_mismatch");

    // Attempt 3 tells the truth and succeeds.
    let a3 = w.take().await;
    let urls = w
        .urls(&a3, &[("out/o.mp4", real), ("hls/seg_000.ts", seg)])
        .await
        .unwrap();
    for u in &urls {
        let body = if u.path == "out/o.mp4" { real } else { seg };
        assert_eq!(put(&u.url, &u.headers, body).await, 200);
    }
    w.succeed(
        &a3,
        &[
            ("out/o.mp4", real.len(), sha256_hex(real)),
            ("hls/seg_000.ts", seg.len(), sha256_hex(seg)),
        ],
    )
    .await
    .unwrap();
    let j = wait_for_state(&client, id, JobState::Succeeded).await;
    assert_eq!(output_file(&j, "out").sha256.as_str(), sha256_hex(real));
    assert!(
        !serde_json::to_string(&j).unwrap().contains(&false_hash),
        "the API never shows the false hash: {j:#?}"
    );
    let dest = tp.path("o.mp4");
    let (size, sha) = client
        .download(output_file(&j, "out").asset_id, &dest)
        .await
        .unwrap();
    assert_eq!((size, sha), (real.len() as u64, sha256_hex(real)));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_url_can_rewrite_an_output_once_its_attempt_ended() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let id = job(&tp, &client).await;
    let mut w = Liar::register(&tp).await;
    let real: &[u8] = b"the result";
    let other: &[u8] = b"other byte";
    let seg: &[u8] = b"segment";

    let a = w.take().await;
    let urls = w
        .urls(&a, &[("out/o.mp4", real), ("hls/seg_000.ts", seg)])
        .await
        .unwrap();
    let out = urls.iter().find(|u| u.path == "out/o.mp4").unwrap().clone();
    let seg_url = urls.iter().find(|u| u.path == "hls/seg_000.ts").unwrap();
    assert_eq!(put(&out.url, &out.headers, real).await, 200);
    assert_eq!(put(&seg_url.url, &seg_url.headers, seg).await, 200);
    // Before the report (the result is about to be recorded): the object is already fixed.
    assert_eq!(put(&out.url, &out.headers, real).await, 412);
    w.succeed(
        &a,
        &[
            ("out/o.mp4", real.len(), sha256_hex(real)),
            ("hls/seg_000.ts", seg.len(), sha256_hex(seg)),
        ],
    )
    .await
    .unwrap();
    let j = wait_for_state(&client, id, JobState::Succeeded).await;

    // After the attempt: the old URL, new URLs, and URLs for other hashes all fail.
    assert_eq!(put(&out.url, &out.headers, real).await, 412);
    assert!(put(&out.url, &out.headers, other).await >= 400);
    let late = w.urls(&a, &[("out/o.mp4", other)]).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let late = w.urls(&a, &[("out/o.mp4", real)]).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");

    let dest = tp.path("o.mp4");
    let out = output_file(&j, "out");
    let (size, sha) = client.download(out.asset_id, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), real);
    assert_eq!(
        (size, sha.as_str()),
        (real.len() as u64, out.sha256.as_str())
    );
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_urls_only_for_declared_files_within_bounds() {
    let config = ControlConfig {
        max_output_files: 3,
        max_upload_url_calls: 5,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let id = job(&tp, &client).await;
    let mut w = Liar::register(&tp).await;
    let a = w.take().await;
    let x: &[u8] = b"x";

    for undeclared in [
        "out/x.mp4",
        "in/in.mp4",
        "other/o.mp4",
        "hls/../o.mp4",
        "o.mp4",
    ] {
        let e = w.urls(&a, &[(undeclared, x)]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{undeclared}: {e:?}");
    }
    let four = [
        ("hls/1.ts", x),
        ("hls/2.ts", x),
        ("hls/3.ts", x),
        ("out/o.mp4", x),
    ];
    let e = w.urls(&a, &four).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    assert_eq!(w.urls(&a, &four[..2]).await.unwrap().len(), 2);
    // Two more would make four granted files for the attempt: over the limit, across calls.
    let e = w.urls(&a, &four[2..]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("limit"), "{e:?}");
    let e = w.urls(&a, &[("hls/1.ts", &b"y"[..])]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Asking again is answered, a bounded number of times.
    let mut answered = 1;
    let refusal = loop {
        match w.urls(&a, &four[..2]).await {
            Ok(_) => answered += 1,
            Err(e) => break e,
        }
        assert!(answered <= 5, "calls are not bounded");
    };
    assert_eq!(answered, 5);
    assert_eq!(refusal.code(), Code::FailedPrecondition);
    assert!(refusal.message().contains("at most 5"), "{refusal:?}");

    // One audit line per granted URL, not one per call.
    let audit = audit_actions(&tp, id).await;
    let puts = audit.iter().filter(|(a, _)| a == "presign.put").count();
    assert_eq!(puts, 2, "{audit:#?}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_need_a_size_are_write_once_and_download_as_safe_attachments() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let (_, key) = tp.platform.store().create_org("acme").await.unwrap();
    let client = ApiClient::new(&tp.platform.api_url, key.expose());
    let asset_in = |filename: &str, size: u64| api::AssetIn {
        filename: api::FileName::parse(filename).unwrap(),
        size,
        sha256: None,
        content_type: None,
    };

    // No size (a body the types cannot express): 400 problem+json naming the field.
    let answer = client
        .call(
            reqwest::Method::POST,
            "/v1/assets",
            Some(&json!({ "filename": "a.mp4" })),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    let problem = answer.problem();
    assert_eq!(problem.code, "invalid_body", "{problem:?}");
    assert!(problem.detail.contains("size"), "{problem:?}");
    // Too large: a clear limit.
    let problem = refused(
        client
            .create_asset(&asset_in("a.mp4", 5u64 << 30 | 1))
            .await,
    );
    assert_eq!(problem.status, 400);
    assert_eq!(problem.code, "too_large", "{problem:?}");
    assert!(problem.detail.contains("5368709120"), "{problem:?}");

    // Without a sha256, and declared as HTML: the control plane hashes what was stored, and
    // the store keeps and serves it as an inert attachment.
    let body = b"<script>alert(document.cookie)</script>".to_vec();
    let answer = client
        .call(
            reqwest::Method::POST,
            "/v1/assets",
            Some(&api::AssetIn {
                content_type: Some("text/html".into()),
                ..asset_in("page.html", body.len() as u64)
            }),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let created: api::AssetUpload = answer.json().unwrap();
    let url = created.upload_url.as_str();
    let headers = &created.upload_headers;
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(headers["if-none-match"], "*");
    let mut longer = body.clone();
    longer.push(b'!');
    assert!(
        put(url, headers, &longer).await >= 400,
        "the size is signed in"
    );
    assert_eq!(put(url, headers, &body).await, 200);
    let id = created.id;
    let done = client.complete_asset(id).await.unwrap();
    assert_eq!(
        done.sha256.as_ref().map(|s| s.as_str()),
        Some(sha256_hex(&body).as_str()),
        "{done:?}"
    );
    assert_eq!(
        done.content_type.as_deref(),
        Some("application/octet-stream")
    );

    // The upload URL, still within its TTL, cannot replace the completed bytes.
    let mut evil = body.clone();
    evil[1] = b'S';
    assert_eq!(put(url, headers, &evil).await, 412);
    assert_eq!(put(url, headers, &body).await, 412);

    let link = client.download_link(id).await.unwrap();
    let resp = http().get(&link.url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"page.html\""),
        "{disposition}"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let got = resp.bytes().await.unwrap();
    assert_eq!(&got[..], &body[..]);
    assert_eq!(sha256_hex(&got), done.sha256.as_ref().unwrap().as_str());
    // Tampering with the signed response parameters breaks the signature.
    let tampered = link
        .url
        .replace("application%2Foctet-stream", "text%2Fhtml");
    assert_ne!(tampered, link.url);
    assert_eq!(http().get(&tampered).send().await.unwrap().status(), 403);

    // A type on the safe list is kept.
    let clip: &[u8] = b"\x00\x00\x00\x18ftypmp42";
    let created = client
        .create_asset(&api::AssetIn {
            content_type: Some("video/mp4".into()),
            sha256: Some(api::Sha256Hex::parse(sha256_hex(clip)).unwrap()),
            ..asset_in("c.mp4", clip.len() as u64)
        })
        .await
        .unwrap();
    assert_eq!(
        put(&created.upload_url, &created.upload_headers, clip).await,
        200
    );
    client.complete_asset(created.id).await.unwrap();
    let link = client.download_link(created.id).await.unwrap();
    let resp = http().get(&link.url).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment;"));
    tp.stop().await;
}

/// An embedded store on loopback with some protections off, and a presigner for it.
async fn store(
    options: GuardOptions,
) -> (Presigner, tokio::task::JoinHandle<()>, tempdir::TempDir) {
    let dir = tempdir::TempDir::new("mpegflow-probe");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let cfg = EmbeddedConfig {
        root: dir.path().join("s3"),
        bucket: "probe-bucket".into(),
        access_key: "AKPROBE".into(),
        secret_key: "secret-probe-key".into(),
        body_idle_timeout: mpegflow_objstore::embedded::DEFAULT_BODY_IDLE_TIMEOUT,
    };
    let presigner = Presigner::new(&S3Config {
        endpoint,
        region: "us-east-1".into(),
        bucket: "probe-bucket".into(),
        path_style: true,
        access_key: cfg.access_key.clone(),
        secret_key: cfg.secret_key.clone(),
    })
    .unwrap();
    let task = tokio::spawn(async move {
        mpegflow_objstore::embedded::serve_with(listener, cfg, options, std::future::pending())
            .await
            .unwrap();
    });
    (presigner, task, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_probe_names_what_a_store_lacks() {
    let (p, task, _dir) = store(GuardOptions::default()).await;
    probe::probe(&p, &http(), "ok").await.unwrap();
    task.abort();

    let (p, task, _dir) = store(GuardOptions {
        write_once: false,
        ..GuardOptions::default()
    })
    .await;
    let err = probe::probe(&p, &http(), "nowo").await.unwrap_err();
    assert!(
        matches!(err, ProbeError::Missing(c) if c == probe::CONDITIONAL_WRITES),
        "{err}"
    );
    assert!(err.to_string().contains("If-None-Match"), "{err}");
    task.abort();

    let (p, task, _dir) = store(GuardOptions {
        verify_checksum_while_streaming: false,
        ..GuardOptions::default()
    })
    .await;
    let err = probe::probe(&p, &http(), "nosum").await.unwrap_err();
    assert!(
        matches!(err, ProbeError::Missing(c) if c == probe::CHECKSUM),
        "{err}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writes_of_one_object_cannot_both_land() {
    use tokio::io::AsyncWriteExt;
    let tp = TestPlatform::start(0, test_control_config()).await;
    let p = &tp.platform.state.presigner;
    // Like an asset created without a sha256: only the size is pinned.
    let url = p
        .put(
            "orgs/x/assets/race",
            std::time::Duration::from_secs(60),
            &mpegflow_objstore::PutSpec {
                size: 8,
                sha256_hex: None,
                content_type: None,
            },
        )
        .unwrap();
    // Two PUTs whose headers arrive at once and whose bodies stall half-way.
    let start =
        |first_half: &'static [u8]| {
            let (mut writer, reader) = tokio::io::duplex(64);
            let mut r = http().put(&url.url).header("content-length", "8").body(
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(reader)),
            );
            for (k, v) in &url.headers {
                if k != "content-length" {
                    r = r.header(k, v);
                }
            }
            async move {
                // Written before the request starts (the pipe buffers it): a PUT refused at
                // once then finds its first half already sent, not a closed pipe.
                writer.write_all(first_half).await.unwrap();
                let sent = tokio::spawn(async move { r.send().await.unwrap().status().as_u16() });
                (writer, sent)
            }
        };
    let (mut wa, mut a) = start(b"AAAA").await;
    let (mut wb, mut b) = start(b"BBBB").await;
    // The store holds the key for the first PUT to reach it and refuses the other at once.
    let (first, loser) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::select! {
            s = &mut a => ('a', s.unwrap()),
            s = &mut b => ('b', s.unwrap()),
        }
    })
    .await
    .expect("one of two concurrent writes of one object was refused while the other ran");
    assert_eq!(loser, 409);
    let (writer, rest, winner) = if first == 'a' {
        (&mut wb, &b"BBBB"[..], b)
    } else {
        (&mut wa, &b"AAAA"[..], a)
    };
    writer.write_all(rest).await.unwrap();
    writer.shutdown().await.unwrap();
    assert_eq!(winner.await.unwrap(), 200);
    let stored = http()
        .get(
            p.get("orgs/x/assets/race", std::time::Duration::from_secs(60))
                .url,
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        &stored[..] == b"AAAAAAAA" || &stored[..] == b"BBBBBBBB",
        "{stored:?}"
    );
    // And once it exists, nothing replaces it.
    let headers: HashMap<String, String> = url.headers.clone().into_iter().collect();
    assert_eq!(put(&url.url, &headers, b"CCCCCCCC").await, 412);
    drop((wa, wb));
    tp.stop().await;
}
