//! The typed API contract, checked through the real server: the OpenAPI document it serves is
//! the one generated from the code, every time on the wire is RFC 3339 UTC with milliseconds,
//! validation answers without assets, and the server's JSON is exactly what `mpegflow-api`'s
//! types read and write.

use crate::harness::*;
use mpegflow::client::{Answer, ApiClient};
use mpegflow_api::{self as api, JobState};
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

async fn get(client: &ApiClient, path: &str) -> Answer {
    let answer = client
        .call(Method::GET, path, None::<&()>, &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly: `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`.
fn is_rfc3339_utc_millis(s: &str) -> bool {
    const SHAPE: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == SHAPE.len()
        && s.bytes().zip(SHAPE.iter()).all(|(c, want)| match want {
            b'd' => c.is_ascii_digit(),
            _ => c == *want,
        })
}

/// Every member named `*_at` anywhere in `v`, with its path: the wire's view of the times,
/// before any type could normalise them.
fn times_on_the_wire(v: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(members) => {
            for (k, child) in members {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.ends_with("_at") {
                    out.push((here.clone(), child.clone()));
                }
                times_on_the_wire(child, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                times_on_the_wire(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks every time in an answer's body and returns the paths of those that are set.
fn checked_times(body: &str) -> Vec<String> {
    let raw: Value = serde_json::from_str(body).unwrap();
    let mut times = Vec::new();
    times_on_the_wire(&raw, "", &mut times);
    let mut set = Vec::new();
    for (path, v) in times {
        match v {
            Value::Null => {}
            Value::String(s) => {
                assert!(
                    is_rfc3339_utc_millis(&s),
                    "{path} = {s:?} is not RFC 3339 UTC with milliseconds"
                );
                set.push(path);
            }
            other => panic!("{path} = {other} is not an RFC 3339 string"),
        }
    }
    set.sort();
    set
}

/// The server's JSON, read as `T` and written back, is the same JSON.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(answer: &Answer) -> T {
    let raw: Value = serde_json::from_str(&answer.body).unwrap();
    let typed: T = answer.json().unwrap();
    // Through text, as a client would send it on: an f32 keeps its shortest form that way.
    let again: Value = serde_json::from_str(&serde_json::to_string(&typed).unwrap()).unwrap();
    assert_eq!(
        again,
        raw,
        "{} did not round-trip through {}",
        answer.body,
        std::any::type_name::<T>()
    );
    typed
}

async fn count(tp: &TestPlatform, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_one_generated_from_the_code() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    // No credentials needed to read the contract.
    let anonymous = ApiClient::new(&tp.platform.api_url, "");
    let answer = get(&anonymous, "/openapi.json").await;
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    let generated = mpegflow_control::api::openapi_document();
    assert_eq!(
        answer.body, generated,
        "served and generated documents differ"
    );
    let doc: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0", "OpenAPI 3.1");
    for path in [
        "/v1/assets",
        "/v1/jobs",
        "/v1/jobs/validate",
        "/v1/jobs/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_time_on_the_wire_is_rfc3339_utc_with_milliseconds() {
    // The check itself tells the shape from its near misses.
    assert!(is_rfc3339_utc_millis("2026-11-30T21:15:02.123Z"));
    for near in [
        "2026-11-30T21:15:02Z",
        "2026-11-30T21:15:02.123456Z",
        "2026-11-30T21:15:02.123+00:00",
        "2026-11-30 21:15:02.123Z",
        "1796073302123",
    ] {
        assert!(!is_rfc3339_utc_millis(near), "{near}");
    }
    let tp = TestPlatform::start(1, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;

    // An upload announcement, the asset, and its download link.
    let (size, sha256) = mpegflow::client::sha256_file(&input).await.unwrap();
    let announce = client
        .call(
            Method::POST,
            "/v1/assets",
            Some(&api::AssetIn {
                filename: api::FileName::parse("a.mp4").unwrap(),
                size,
                sha256: Some(api::Sha256Hex::parse(sha256).unwrap()),
                content_type: None,
            }),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(announce.status, 201, "{}", announce.body);
    assert_eq!(checked_times(&announce.body), ["expires_at"]);
    let asset = client.upload(&input).await.unwrap();
    let answer = get(&client, &format!("/v1/assets/{}", asset.id)).await;
    // An upload no job used yet carries its expiry.
    assert_eq!(
        checked_times(&answer.body),
        ["completed_at", "created_at", "expires_at"]
    );
    let answer = get(&client, &format!("/v1/assets/{}/download", asset.id)).await;
    assert_eq!(checked_times(&answer.body), ["expires_at"]);

    // A finished job: its own times, its attempt's and every stage's.
    let job = client
        .submit(
            &api::JobIn::new(
                [("in", asset.id)],
                [("out", "o.mkv")],
                "-i {{in}} -c copy {{out}}",
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let job = client.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let answer = get(&client, &format!("/v1/jobs/{}", job.id)).await;
    let set = checked_times(&answer.body);
    let attempts = history(&job);
    assert_eq!(attempts.len(), 1, "{job:#?}");
    let stages = &attempts[0].stages;
    assert!(!stages.is_empty(), "{job:#?}");
    let mut want = vec![
        "created_at".to_owned(),
        "started_at".to_owned(),
        "finished_at".to_owned(),
        "history[0].assigned_at".to_owned(),
        "history[0].finished_at".to_owned(),
    ];
    for i in 0..stages.len() {
        want.push(format!("history[0].stages[{i}].started_at"));
        want.push(format!("history[0].stages[{i}].finished_at"));
    }
    for path in &want {
        assert!(set.contains(path), "{path} is not set: {}", answer.body);
    }
    assert_eq!(set.len(), want.len(), "{set:?}");

    // The same job in a list.
    let answer = get(&client, "/v1/jobs").await;
    let set = checked_times(&answer.body);
    for path in [
        "jobs[0].created_at",
        "jobs[0].started_at",
        "jobs[0].finished_at",
    ] {
        assert!(set.iter().any(|p| p == path), "{path}: {}", answer.body);
    }
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_answers_the_argv_or_names_the_refused_argument_and_creates_nothing() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let command = "-i {{in}} -vf scale=160:-2 -c:v libx264 {{out}}";
    let validate_in = |command: &str| api::JobValidateIn {
        inputs: [(alias("in"), api::FileName::parse("clip.mp4").unwrap())].into(),
        outputs: [(alias("out"), api::OutputName::parse("o.mp4").unwrap())].into(),
        command: command.to_owned(),
        pool: None,
        timeout_seconds: None,
    };
    let (assets_before, jobs_before) = (count(&tp, "assets").await, count(&tp, "jobs").await);

    let good = client.validate(&validate_in(command)).await.unwrap();
    assert_eq!(good.pool.as_str(), "default");
    assert!(good.argv.iter().any(|a| a == "out/out/o.mp4"), "{good:?}");

    for (bad, arg) in [
        (
            "-i {{in}} -vf movie=/etc/passwd {{out}}",
            "movie=/etc/passwd",
        ),
        ("-i /etc/passwd {{out}}", "/etc/passwd"),
        ("-i {{in}} {{secret}}", "{{secret}}"),
    ] {
        let problem = refused(client.validate(&validate_in(bad)).await);
        assert_eq!(problem.status, 400, "{bad}: {problem:?}");
        assert_eq!(problem.code, "invalid_command", "{bad}: {problem:?}");
        assert_eq!(problem.argument.as_deref(), Some(arg), "{bad}: {problem:?}");
        assert!(problem.detail.contains(arg), "{problem:?}");
    }
    assert_eq!(
        (count(&tp, "assets").await, count(&tp, "jobs").await),
        (assets_before, jobs_before),
        "validation created nothing"
    );

    // What validation answered is what a submission of the same template runs.
    let input = clip(tp.dir.path(), "clip.mp4", 1, "160x120").await;
    let job = submit(&client, &input, &[("out", "o.mp4")], command).await;
    assert_eq!(job.argv, good.argv);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_json_round_trips_through_the_api_types() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let mut job_in = api::JobIn::new(
        [("in", asset.id)],
        [("out", "o.mp4"), ("hls", "hls/")],
        "-i {{in}} -map 0 -c copy {{out}} -map 0 -c copy -f hls -hls_time 1 \
         -hls_segment_filename {{hls}}/s_%03d.ts {{hls}}/index.m3u8",
    )
    .unwrap();
    job_in.metadata = Some(
        serde_json::from_str(r#"{"customer":"c-1","n":3,"nested":{"list":[1,"two",null]}}"#)
            .unwrap(),
    );
    let job = client.submit(&job_in).await.unwrap();
    let done = client.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");

    let answer = get(&client, &format!("/v1/jobs/{}", job.id)).await;
    let typed: api::Job = round_trips(&answer);
    assert_eq!(typed.metadata, job_in.metadata.unwrap());
    assert_eq!(output_file(&typed, "out").path, "o.mp4");
    assert!(output(&typed, "hls").files.len() >= 2, "{typed:#?}");
    assert!(!history(&typed)[0].outputs.is_empty(), "{typed:#?}");

    // A canceled job (no attempt, no outputs) on a pool nobody serves.
    tp.platform.store().create_pool("idle", None).await.unwrap();
    let mut idle =
        api::JobIn::new([("in", asset.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap();
    idle.pool = Some(api::PoolName::parse("idle").unwrap());
    let idle = client.submit(&idle).await.unwrap();
    client.cancel(idle.id).await.unwrap();
    let answer = get(&client, &format!("/v1/jobs/{}", idle.id)).await;
    let typed: api::Job = round_trips(&answer);
    assert_eq!(typed.state, JobState::Canceled);

    let list: api::JobList = round_trips(&get(&client, "/v1/jobs").await);
    assert_eq!(list.jobs.len(), 2);
    let ids: Vec<Uuid> = list.jobs.iter().map(|j| j.id).collect();
    assert!(ids.contains(&job.id) && ids.contains(&idle.id), "{ids:?}");
    let _: api::Asset = round_trips(&get(&client, &format!("/v1/assets/{}", asset.id)).await);
    let out = output_file(&done, "out").asset_id;
    let produced: api::Asset = round_trips(&get(&client, &format!("/v1/assets/{out}")).await);
    assert_eq!(produced.source_job_id, Some(job.id));
    let _: api::AssetDownload =
        round_trips(&get(&client, &format!("/v1/assets/{out}/download")).await);
    let _: api::Health = round_trips(&get(&client, "/healthz").await);
    let refusal = client
        .call(
            Method::GET,
            &format!("/v1/jobs/{}", Uuid::now_v7()),
            None::<&()>,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(refusal.status, 404);
    let problem: api::Problem = round_trips(&refusal);
    assert_eq!(problem.code, "not_found");
    tp.stop().await;
}
