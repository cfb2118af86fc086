use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use reqwest::Method;

/// The body of an answer with every UUID replaced, so two "not found"s can be compared whole.
fn shape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| c.is_ascii_hexdigit()) {
        out.push_str(&rest[..i]);
        let candidate = &rest[i..];
        if candidate.len() >= 36 && uuid::Uuid::parse_str(&candidate[..36]).is_ok() {
            out.push_str("<id>");
            rest = &candidate[36..];
        } else {
            out.push_str(&candidate[..1]);
            rest = &candidate[1..];
        }
    }
    out + rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_ids_answer_exactly_like_missing_ones() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let a = tp.org("org-a").await;
    let b = tp.org("org-b").await;
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let job = submit(
        &a,
        &input,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset ultrafast {{out}}",
    )
    .await;
    let job = a.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    let job_id = job.id.to_string();
    let asset = job.inputs[&alias("in")];
    let asset_id = asset.to_string();
    let output_id = output_file(&job, "out").asset_id.to_string();
    let missing_id = uuid::Uuid::now_v7();
    let missing = missing_id.to_string();

    let endpoints = |id: &str| {
        vec![
            (Method::GET, format!("/v1/assets/{id}")),
            (Method::POST, format!("/v1/assets/{id}/complete")),
            (Method::GET, format!("/v1/assets/{id}/download")),
            (Method::GET, format!("/v1/jobs/{id}")),
            (Method::GET, format!("/v1/jobs/{id}/attempts/1/stderr")),
            (Method::POST, format!("/v1/jobs/{id}/cancel")),
        ]
    };
    for theirs in [&asset_id, &output_id, &job_id] {
        for ((m, p_theirs), (_, p_missing)) in
            endpoints(theirs).into_iter().zip(endpoints(&missing))
        {
            let t = b
                .call(m.clone(), &p_theirs, None::<&()>, &[])
                .await
                .unwrap();
            let m2 = b
                .call(m.clone(), &p_missing, None::<&()>, &[])
                .await
                .unwrap();
            assert_eq!(t.status, 404, "{m} {p_theirs}: {}", t.body);
            assert_eq!(t.problem().code, "not_found", "{m} {p_theirs}");
            assert_eq!(
                (t.status, &t.content_type, &t.body),
                (m2.status, &m2.content_type, &m2.body),
                "{m} {p_theirs} differs from a missing id"
            );
        }
    }
    // The owner still sees them.
    assert_eq!(a.asset(asset).await.unwrap().id, asset);
    a.stderr(job.id, 1).await.unwrap();

    // Using A's asset as an input looks like using a missing asset.
    let body = |id: uuid::Uuid| {
        api::JobIn::new([("in", id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap()
    };
    let theirs = b
        .call(Method::POST, "/v1/jobs", Some(&body(asset)), &[])
        .await
        .unwrap();
    let missing = b
        .call(Method::POST, "/v1/jobs", Some(&body(missing_id)), &[])
        .await
        .unwrap();
    assert_eq!(theirs.status, 400, "{}", theirs.body);
    assert_eq!(theirs.problem().status, 400, "{}", theirs.body);
    assert_eq!(
        (theirs.status, shape(&theirs.body)),
        (missing.status, shape(&missing.body))
    );

    // A pool dedicated to A looks like a missing pool to B.
    let org_a = tp.platform.store().org_by_name("org-a").await.unwrap();
    tp.platform
        .store()
        .create_pool("a-only", Some(org_a))
        .await
        .unwrap();
    let b_asset = b.upload(&input).await.unwrap();
    let with_pool = |pool: &str| {
        let mut job = api::JobIn::new(
            [("in", b_asset.id)],
            [("out", "o.mp4")],
            "-i {{in}} {{out}}",
        )
        .unwrap();
        job.pool = Some(api::PoolName::parse(pool).unwrap());
        job
    };
    let theirs = refused(b.submit(&with_pool("a-only")).await);
    let missing = refused(b.submit(&with_pool("no-such-pool")).await);
    assert_eq!(theirs.status, 400);
    assert_eq!(theirs.code, "unknown_pool");
    assert_eq!(
        theirs.detail.replace("a-only", "X"),
        missing.detail.replace("no-such-pool", "X")
    );
    assert_eq!(missing.status, 400);

    // Lists never show the other org's rows.
    let list_b = b.list_jobs(&api::ListJobsQuery::default()).await.unwrap();
    assert_eq!(list_b.jobs.len(), 0);
    let list_a = a
        .list_jobs(&api::ListJobsQuery {
            state: Some(JobState::Succeeded),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list_a.jobs.len(), 1);
    assert_eq!(list_a.jobs[0].id.to_string(), job_id);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_revocation_is_immediate() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let store = tp.platform.store();
    let (org, key) = store.create_org("acme").await.unwrap();
    let client = mpegflow::client::ApiClient::new(&tp.platform.api_url, key.expose());
    let all = api::ListJobsQuery::default();
    client.list_jobs(&all).await.unwrap();

    let (_, token) = tp.worker_token("default").await;
    for bad in [
        "",
        "nope",
        token.as_str(),
        "mfk_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let c = mpegflow::client::ApiClient::new(&tp.platform.api_url, bad);
        let problem = refused(c.list_jobs(&all).await);
        assert_eq!(problem.status, 401, "{bad}: {problem:?}");
        assert_eq!(problem.code, "unauthenticated");
    }

    let (key2_id, key2) = store.create_api_key(org, "second").await.unwrap();
    let c2 = mpegflow::client::ApiClient::new(&tp.platform.api_url, key2.expose());
    c2.list_jobs(&all).await.unwrap();
    store.revoke_api_key(key2_id).await.unwrap();
    assert_eq!(refused(c2.list_jobs(&all).await).status, 401);
    client
        .list_jobs(&all)
        .await
        .expect("other keys keep working");

    // Malformed bodies get problem+json, not a panic or a plain-text error.
    let resp = client
        .http
        .post(format!("{}/v1/jobs", tp.platform.api_url))
        .bearer_auth(key.expose())
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: api::Problem = resp.json().await.unwrap();
    assert_eq!(problem.status, 400, "{problem:?}");
    tp.stop().await;
}
