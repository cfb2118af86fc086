use crate::harness::*;
use mpegflow_objstore::PutSpec;
use std::time::Duration;

fn spec(size: usize, sha: &str) -> PutSpec<'_> {
    PutSpec {
        size: size as u64,
        sha256_hex: Some(sha),
        content_type: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_honours_exactly_what_was_signed() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let p = &tp.platform.state.presigner;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let hour = Duration::from_secs(3600);
    let body = b"exactly these bytes".to_vec();
    let sha = sha256_hex(&body);

    // The signed PUT works, with its signed headers.
    let put = p
        .put("orgs/a/assets/1", hour, &spec(body.len(), &sha))
        .unwrap();
    let send_put =
        |url: String, headers: std::collections::BTreeMap<String, String>, b: Vec<u8>| {
            let mut r = http.put(url).body(b);
            for (k, v) in headers {
                if k != "content-length" {
                    r = r.header(k, v);
                }
            }
            r.send()
        };
    let r = send_put(put.url.clone(), put.headers.clone(), body.clone())
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let get = p.get("orgs/a/assets/1", hour);
    assert_eq!(
        http.get(&get.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &body[..]
    );

    let status = |r: reqwest::Response| r.status().as_u16();
    let exists = |key: &str| {
        let url = p.head(key, hour).url;
        let http = http.clone();
        async move { http.head(url).send().await.unwrap().status().is_success() }
    };

    // The same URL for another key.
    let other = get.url.replace("orgs/a/assets/1", "orgs/b/assets/1");
    assert_eq!(status(http.get(&other).send().await.unwrap()), 403);

    // Another method: GET URL used to PUT or DELETE, PUT URL used to GET.
    assert_eq!(
        status(http.put(&get.url).body("x").send().await.unwrap()),
        403
    );
    assert_eq!(status(http.delete(&get.url).send().await.unwrap()), 403);
    assert_eq!(status(http.get(&put.url).send().await.unwrap()), 403);

    // An added x-amz-* header the signature does not cover (a server-side copy attempt).
    let put2 = p
        .put("orgs/a/assets/2", hour, &spec(body.len(), &sha))
        .unwrap();
    let mut h = put2.headers.clone();
    h.insert(
        "x-amz-copy-source".into(),
        "mpegflow/orgs/a/assets/1".into(),
    );
    assert_eq!(
        status(send_put(put2.url.clone(), h, body.clone()).await.unwrap()),
        403
    );
    assert!(!exists("orgs/a/assets/2").await);

    // A body that does not match the signed checksum (same length), or the signed length.
    let mut forged = body.clone();
    forged[0] ^= 1;
    let r = send_put(put2.url.clone(), put2.headers.clone(), forged)
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = send_put(put2.url.clone(), put2.headers.clone(), b"short".to_vec())
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(!exists("orgs/a/assets/2").await, "nothing was stored");
    let overwrite = p
        .put("orgs/a/assets/1", hour, &spec(body.len(), &sha))
        .unwrap();
    let mut forged = body.clone();
    forged[1] ^= 1;
    let r = send_put(overwrite.url, overwrite.headers, forged)
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "objects are write-once");
    assert_eq!(
        http.get(&get.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &body[..],
        "the stored object is unchanged"
    );

    // Expiry above one hour is refused by the guard; an expired URL by the signature check.
    let long = get.url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200");
    let r = http.get(&long).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("X-Amz-Expires"));
    let short = p.get("orgs/a/assets/1", Duration::from_secs(1));
    assert_eq!(status(http.get(&short.url).send().await.unwrap()), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status(http.get(&short.url).send().await.unwrap()), 403);

    // Unsigned requests, and bucket-level operations, are refused.
    let base = tp.platform.s3_endpoint.clone();
    assert_eq!(
        status(
            http.get(format!("{base}/mpegflow/orgs/a/assets/1"))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(
        status(http.get(format!("{base}/mpegflow")).send().await.unwrap()),
        403
    );
    assert_eq!(
        status(http.get(format!("{base}/")).send().await.unwrap()),
        403
    );
    tp.stop().await;
}
