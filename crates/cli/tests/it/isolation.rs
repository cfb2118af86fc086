use crate::harness::*;
use reqwest::Method;
use serde_json::{json, Value};

/// The body of an answer with every UUID replaced, so two "not found"s can be compared whole.
fn shape(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::new();
    let mut rest = s.as_str();
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
    let job_id = job["id"].as_str().unwrap().to_owned();
    let job = a.wait(&job_id, |_| {}).await.unwrap();
    assert_eq!(job["state"], "succeeded");
    let asset_id = job["inputs"]["in"].as_str().unwrap().to_owned();
    let output_id = job["outputs"]["out"]["asset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let missing = uuid::Uuid::now_v7().to_string();

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
            let (s1, b1) = b.call(m.clone(), &p_theirs, None, &[]).await.unwrap();
            let (s2, b2) = b.call(m.clone(), &p_missing, None, &[]).await.unwrap();
            assert_eq!(s1, 404, "{m} {p_theirs}: {b1}");
            assert_eq!(
                (s1, &b1),
                (s2, &b2),
                "{m} {p_theirs} differs from a missing id"
            );
        }
    }
    // The owner still sees them.
    assert_eq!(
        a.call(Method::GET, &format!("/v1/assets/{asset_id}"), None, &[])
            .await
            .unwrap()
            .0,
        200
    );
    let (status, _) = a
        .call(
            Method::GET,
            &format!("/v1/jobs/{job_id}/attempts/1/stderr"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Using A's asset as an input looks like using a missing asset.
    let body = |id: &str| json!({ "inputs": { "in": id }, "outputs": { "out": "o.mp4" }, "command": "-i {{in}} {{out}}" });
    let (s1, b1) = b
        .call(Method::POST, "/v1/jobs", Some(&body(&asset_id)), &[])
        .await
        .unwrap();
    let (s2, b2) = b
        .call(Method::POST, "/v1/jobs", Some(&body(&missing)), &[])
        .await
        .unwrap();
    assert_eq!(s1, 400);
    assert_eq!((s1, shape(&b1)), (s2, shape(&b2)));

    // A pool dedicated to A looks like a missing pool to B.
    let org_a = tp.platform.store().org_by_name("org-a").await.unwrap();
    tp.platform
        .store()
        .create_pool("a-only", Some(org_a))
        .await
        .unwrap();
    let b_asset = b.upload(&input).await.unwrap();
    let with_pool = |pool: &str| json!({ "inputs": { "in": b_asset["id"] }, "outputs": { "out": "o.mp4" }, "command": "-i {{in}} {{out}}", "pool": pool });
    let (s1, b1) = b
        .call(Method::POST, "/v1/jobs", Some(&with_pool("a-only")), &[])
        .await
        .unwrap();
    let (s2, b2) = b
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&with_pool("no-such-pool")),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s1, 400);
    assert_eq!(b1["code"], "unknown_pool");
    assert_eq!(
        b1["detail"].as_str().unwrap().replace("a-only", "X"),
        b2["detail"].as_str().unwrap().replace("no-such-pool", "X")
    );
    assert_eq!(s2, 400);

    // Lists never show the other org's rows.
    let list_b = b.ok(Method::GET, "/v1/jobs", None).await.unwrap();
    assert_eq!(list_b["jobs"].as_array().unwrap().len(), 0);
    let list_a = a
        .ok(Method::GET, "/v1/jobs?state=succeeded", None)
        .await
        .unwrap();
    assert_eq!(list_a["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list_a["jobs"][0]["id"], job_id.as_str());
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_revocation_is_immediate() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let store = tp.platform.store();
    let (org, key) = store.create_org("acme").await.unwrap();
    let client = mpegflow::client::ApiClient::new(&tp.platform.api_url, key.expose());
    assert_eq!(
        client
            .call(Method::GET, "/v1/jobs", None, &[])
            .await
            .unwrap()
            .0,
        200
    );

    let (_, token) = tp.worker_token("default").await;
    for bad in [
        "",
        "nope",
        token.as_str(),
        "mfk_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let c = mpegflow::client::ApiClient::new(&tp.platform.api_url, bad);
        let (status, body) = c.call(Method::GET, "/v1/jobs", None, &[]).await.unwrap();
        assert_eq!(status, 401, "{bad}: {body}");
        assert_eq!(body["code"], "unauthenticated");
    }

    let (key2_id, key2) = store.create_api_key(org, "second").await.unwrap();
    let c2 = mpegflow::client::ApiClient::new(&tp.platform.api_url, key2.expose());
    assert_eq!(
        c2.call(Method::GET, "/v1/jobs", None, &[]).await.unwrap().0,
        200
    );
    store.revoke_api_key(key2_id).await.unwrap();
    assert_eq!(
        c2.call(Method::GET, "/v1/jobs", None, &[]).await.unwrap().0,
        401
    );
    assert_eq!(
        client
            .call(Method::GET, "/v1/jobs", None, &[])
            .await
            .unwrap()
            .0,
        200,
        "other keys keep working"
    );

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
    tp.stop().await;
}
