//! Assets a tenant can manage: listed, deleted (not while a job reads them), expired when no
//! job used them — and their bytes removed from the store.

use crate::harness::*;
use mpegflow_api as api;
use mpegflow_control::ControlConfig;
use std::time::Duration;

fn config() -> ControlConfig {
    ControlConfig {
        // URLs live 2 s, and deleted objects go 1 s after that.
        presign_ttl_seconds: 2,
        deletion_grace_seconds: 1,
        ..test_control_config()
    }
}

async fn stored(tp: &TestPlatform, org: uuid::Uuid, id: uuid::Uuid) -> bool {
    let key = mpegflow_domain::names::asset_key(org, id);
    tp.platform.state.head_object(&key).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_listed_deleted_unless_in_use_and_their_bytes_removed() {
    let tp = TestPlatform::start(0, config()).await;
    let (org, key) = tp.platform.store().create_org("acme").await.unwrap();
    let client = mpegflow::client::ApiClient::new(&tp.platform.api_url, key.expose());
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let first = client.upload(&input).await.unwrap();
    let second = client.upload(&input).await.unwrap();
    assert!(first.expires_at.is_some(), "an unused upload expires");

    // Newest first, a page at a time.
    let q = |cursor| api::ListAssetsQuery {
        cursor,
        limit: Some(1),
    };
    let page = client.list_assets(&q(None)).await.unwrap();
    assert_eq!(
        page.assets.iter().map(|a| a.id).collect::<Vec<_>>(),
        [second.id]
    );
    let next = page.next_cursor.unwrap().parse().unwrap();
    let page = client.list_assets(&q(Some(next))).await.unwrap();
    assert_eq!(
        page.assets.iter().map(|a| a.id).collect::<Vec<_>>(),
        [first.id]
    );
    assert_eq!(page.next_cursor, None);

    // A queued job reads `first`: it no longer expires and cannot be deleted.
    let job = client
        .submit(
            &api::JobIn::new([("in", first.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(client.asset(first.id).await.unwrap().expires_at, None);
    let err = client.delete_asset(first.id).await.unwrap_err();
    let problem = &err.downcast_ref::<mpegflow::client::ApiError>().unwrap().0;
    assert_eq!(
        (problem.status, problem.code.as_str()),
        (409, "asset_in_use")
    );
    assert!(
        problem.detail.contains(&job.id.to_string()),
        "{}",
        problem.detail
    );
    assert!(stored(&tp, org, first.id).await);

    // Once the job is canceled it goes: gone from the API at once, from the store once no URL
    // signed for it can be used.
    client.cancel(job.id).await.unwrap();
    client.delete_asset(first.id).await.unwrap();
    let err = client.asset(first.id).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<mpegflow::client::ApiError>()
            .unwrap()
            .0
            .status,
        404
    );
    let err = client.delete_asset(first.id).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<mpegflow::client::ApiError>()
            .unwrap()
            .0
            .status,
        404
    );
    eventually(
        "the deleted asset's bytes to go",
        Duration::from_secs(30),
        || async { (!stored(&tp, org, first.id).await).then_some(()) },
    )
    .await;
    assert!(
        stored(&tp, org, second.id).await,
        "only the deleted asset's bytes go"
    );

    // Another org can neither see nor delete ours.
    let other = tp.org("other").await;
    let err = other.delete_asset(second.id).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<mpegflow::client::ApiError>()
            .unwrap()
            .0
            .status,
        404
    );
    assert!(other.list_assets(&q(None)).await.unwrap().assets.is_empty());
    assert!(stored(&tp, org, second.id).await);

    // The audit trail says who deleted what.
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs WHERE subject = $1 ORDER BY id")
            .bind(first.id.to_string())
            .fetch_all(
                &sqlx::PgPool::connect(&tp.platform.database_url)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    assert!(actions.contains(&"asset.deleted".to_owned()), "{actions:?}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_no_job_used_expire_and_used_ones_stay() {
    let config = ControlConfig {
        unused_asset_ttl_seconds: 3,
        ..config()
    };
    let tp = TestPlatform::start(0, config).await;
    let (org, key) = tp.platform.store().create_org("acme").await.unwrap();
    let client = mpegflow::client::ApiClient::new(&tp.platform.api_url, key.expose());
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let unused = client.upload(&input).await.unwrap();
    let used = client.upload(&input).await.unwrap();
    client
        .submit(
            &api::JobIn::new([("in", used.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap(),
        )
        .await
        .unwrap();
    eventually(
        "the unused upload to expire",
        Duration::from_secs(30),
        || async { client.asset(unused.id).await.is_err().then_some(()) },
    )
    .await;
    eventually("its bytes to go", Duration::from_secs(30), || async {
        (!stored(&tp, org, unused.id).await).then_some(())
    })
    .await;
    let kept = client.asset(used.id).await.unwrap();
    assert_eq!(kept.expires_at, None);
    assert!(stored(&tp, org, used.id).await);
    tp.stop().await;
}

/// An upload whose URL was valid when it started may still be streaming when its asset's
/// deletion falls due (the URL's expiry is checked when a request starts, not when its body
/// ends). The store must not call the object deleted and then let that upload land: the bytes
/// of a deleted asset would stay in the store for good, owned by no asset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_still_streaming_when_its_asset_is_deleted_does_not_outlive_the_deletion() {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let tp = TestPlatform::start(
        0,
        ControlConfig {
            presign_ttl_seconds: 10,
            deletion_grace_seconds: 1,
            ..test_control_config()
        },
    )
    .await;
    let (org, key) = tp.platform.store().create_org("acme").await.unwrap();
    let client = mpegflow::client::ApiClient::new(&tp.platform.api_url, key.expose());
    let body: &[u8] = b"1\n00:00:00,000 --> 00:00:01,000\nhi\n";
    let upload = client
        .create_asset(&api::AssetIn {
            filename: api::FileName::parse("subs.srt").unwrap(),
            size: body.len() as u64,
            sha256: Some(api::Sha256Hex::parse(hex::encode(sha2::Sha256::digest(body))).unwrap()),
            content_type: None,
        })
        .await
        .unwrap();
    // A PUT that starts at once and stalls half-way through its body.
    let (mut writer, reader) = tokio::io::duplex(1024);
    writer.write_all(&body[..8]).await.unwrap();
    let mut put = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(&upload.upload_url)
        .header("content-length", body.len().to_string())
        .body(reqwest::Body::wrap_stream(
            tokio_util::io::ReaderStream::new(reader),
        ));
    for (k, v) in &upload.upload_headers {
        if k != "content-length" {
            put = put.header(k, v);
        }
    }
    let put = tokio::spawn(async move { put.send().await.unwrap().status().as_u16() });

    // The asset is deleted; once its URLs have expired the control plane tries to delete the
    // object while that PUT is still streaming.
    client.delete_asset(upload.id).await.unwrap();
    let object_key = mpegflow_domain::names::asset_key(org, upload.id);
    let db = sqlx::PgPool::connect(&tp.platform.database_url)
        .await
        .unwrap();
    eventually(
        "the object's deletion to be attempted",
        Duration::from_secs(60),
        || async {
            let attempts: Option<i32> =
                sqlx::query_scalar("SELECT attempts FROM object_deletions WHERE object_key = $1")
                    .bind(&object_key)
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            attempts.is_none_or(|a| a > 0).then_some(())
        },
    )
    .await;
    assert!(!put.is_finished(), "the PUT is still streaming");

    // The upload then ends; whatever it wrote must still go.
    writer.write_all(&body[8..]).await.unwrap();
    writer.shutdown().await.unwrap();
    let status = put.await.unwrap();
    assert!(status == 200 || status >= 400, "{status}");
    eventually(
        "the deleted asset's late bytes to go",
        Duration::from_secs(60),
        || async { (!stored(&tp, org, upload.id).await).then_some(()) },
    )
    .await;
    tp.stop().await;
}

/// A repeated submission (same Idempotency-Key, same body) answers the first job, also once
/// that job's input has been deleted: the retry of a request that succeeded must not turn into
/// an `unknown_asset` refusal — nor may another body under the key be anything but a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_submission_answers_the_first_job_after_its_input_was_deleted() {
    let tp = TestPlatform::start(0, config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let body =
        api::JobIn::new([("in", asset.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap();
    let submit = |body: api::JobIn| {
        let client = &client;
        async move {
            client
                .call(
                    reqwest::Method::POST,
                    "/v1/jobs",
                    Some(&body),
                    &[("idempotency-key", "order-42")],
                )
                .await
                .unwrap()
        }
    };
    let first = submit(body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let job: api::Job = first.json().unwrap();
    client.cancel(job.id).await.unwrap();
    client.delete_asset(asset.id).await.unwrap();

    let again = submit(body.clone()).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json::<api::Job>().unwrap().id, job.id);
    let other = submit(
        api::JobIn::new(
            [("in", asset.id)],
            [("out", "o.mp4")],
            "-i {{in}} -an {{out}}",
        )
        .unwrap(),
    )
    .await;
    assert_eq!(other.status, 409, "{}", other.body);
    // Without the key it is a new submission, on an asset that is gone; the refusal names the
    // input as the tenant wrote it.
    let err = client.submit(&body).await.unwrap_err();
    let problem = &err.downcast_ref::<mpegflow::client::ApiError>().unwrap().0;
    assert_eq!(
        (problem.status, problem.code.as_str()),
        (400, "unknown_asset")
    );
    assert!(
        problem.detail.starts_with("input \"in\": asset"),
        "{}",
        problem.detail
    );
    tp.stop().await;
}
