use crate::harness::*;
use mpegflow_api::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_leaves_an_append_only_trail() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let job = submit(
        &client,
        &input,
        &[("out", "o.mkv")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    let id = job.id;
    let job = client.wait(id, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");

    let trail = tp.platform.store().job_audit(id).await.unwrap();
    let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
    for want in [
        "job.submitted",
        "job.assigned",
        "presign.get",
        "presign.put",
        "job.finished",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let presign = trail.iter().find(|r| r.action == "presign.get").unwrap();
    assert!(presign.details["key"]
        .as_str()
        .unwrap()
        .starts_with("orgs/"));
    assert!(presign.details["worker_id"].is_string());
    assert!(presign.details["expires_at"].is_string());

    let pool = tp.platform.store().pool();
    for sql in [
        "UPDATE audit_logs SET action = 'x'",
        "DELETE FROM audit_logs",
        "TRUNCATE audit_logs",
    ] {
        let err = sqlx::query(sql).execute(pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let after = tp.platform.store().job_audit(id).await.unwrap();
    assert_eq!(after.len(), trail.len());
    tp.stop().await;
}
