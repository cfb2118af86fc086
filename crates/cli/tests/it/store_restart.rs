//! The embedded store across restarts and under stalled clients: its key persists in the
//! data directory (0600, checked at start), two stores never share a directory, and a PUT
//! whose client stalls is cut off and frees its key.

use crate::harness::*;
use mpegflow::platform::{Platform, PlatformConfig, EMBEDDED_KEY_FILE};
use mpegflow_objstore::embedded::EmbeddedConfig;
use mpegflow_objstore::{Presigner, PutSpec, S3Config};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(data_dir: &std::path::Path, database_url: &str, s3_addr: &str) -> PlatformConfig {
    PlatformConfig {
        data_dir: data_dir.to_owned(),
        database_url: Some(database_url.to_owned()),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: s3_addr.to_owned(),
        workers: 0,
        control: test_control_config(),
        pg_for_tests: true,
        ..PlatformConfig::default()
    }
}

fn message(r: anyhow::Result<Platform>) -> String {
    match r {
        Ok(_) => panic!("the start was not refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_signed_before_a_restart_of_the_embedded_store_works_after_it() {
    let dir = tempdir::TempDir::new("mpegflow-restart");
    let data = dir.path().join("data");
    let db = fresh_database().await;
    let first = Platform::start(config(&data, &db, "127.0.0.1:0"))
        .await
        .expect("platform starts");
    let s3_addr = first.s3_endpoint.trim_start_matches("http://").to_owned();
    let p = &first.state.presigner;
    let body = b"stored before the restart".to_vec();
    let sha = sha256_hex(&body);
    let key = "orgs/o/jobs/j/attempts/1/out/kept.mp4";
    let hour = Duration::from_secs(3600);
    let put = p
        .put(
            key,
            hour,
            &PutSpec {
                size: body.len() as u64,
                sha256_hex: Some(&sha),
                content_type: None,
            },
        )
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http.put(&put.url).body(body.clone());
    for (k, v) in &put.headers {
        req = req.header(k, v);
    }
    assert!(req.send().await.unwrap().status().is_success());
    let get = p.get(key, hour).url;

    // The key file: ours, 0600, and the key in it is not in the log-facing config.
    let key_file = data.join(EMBEDDED_KEY_FILE);
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second store on the running store's directory is refused, naming it.
    let store_dir = data.join("s3");
    let second = mpegflow_objstore::embedded::open(EmbeddedConfig::new(
        store_dir.clone(),
        "mpegflow",
        "AKOTHER",
        "other-secret",
    ));
    let err = second
        .err()
        .expect("a second store on one directory is refused");
    assert!(
        err.to_string().contains(&store_dir.display().to_string()),
        "{err}"
    );

    first.stop(Duration::from_secs(5)).await;

    // After a restart on the same address and data directory, the URL still works.
    let again = Platform::start(config(&data, &db, &s3_addr))
        .await
        .expect("platform restarts");
    let r = http.get(&get).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
    again.stop(Duration::from_secs(5)).await;

    // A key file others can read fails the start, naming it; so does one with other content.
    let before = std::fs::read_to_string(&key_file).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let msg = message(Platform::start(config(&data, &db, "127.0.0.1:0")).await);
    assert!(msg.contains(&key_file.display().to_string()), "{msg}");
    assert!(msg.contains("0640"), "{msg}");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o640,
        "left as found: the key may have been copied"
    );
    std::fs::remove_file(&key_file).unwrap();
    mpegflow::write_private(&key_file, "access_key = \"MFx\"\nsecret_key = \"short\"\n").unwrap();
    let msg = message(Platform::start(config(&data, &db, "127.0.0.1:0")).await);
    assert!(msg.contains(&key_file.display().to_string()), "{msg}");
    assert!(!msg.contains("short"), "{msg}");
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), before);
}

/// Sends a PUT's head and the first half of its body, then nothing; returns the answer the
/// store sends (everything until it closes the connection).
async fn stalled_put(url: &str, headers: &[(String, String)], body: &[u8]) -> String {
    let u: reqwest::Url = url.parse().unwrap();
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    let mut req = format!(
        "PUT {}?{} HTTP/1.1\r\nhost: {addr}\r\n",
        u.path(),
        u.query().unwrap()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&body[..body.len() / 2]).await.unwrap();
    let mut resp = Vec::new();
    // Bounded only so a broken store fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut resp))
        .await
        .expect("the store cut the stalled PUT off")
        .unwrap();
    String::from_utf8_lossy(&resp).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_put_is_cut_off_and_frees_its_key() {
    let dir = tempdir::TempDir::new("mpegflow-stall");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let cfg = EmbeddedConfig {
        body_idle_timeout: Duration::from_secs(1),
        ..EmbeddedConfig::new(dir.path().join("s3"), "mpegflow", "AKSTALL", "stall-secret")
    };
    let store = tokio::spawn(mpegflow_objstore::embedded::serve(
        listener,
        cfg.clone(),
        std::future::pending(),
    ));
    let p = Presigner::new(&S3Config {
        endpoint,
        region: "us-east-1".into(),
        bucket: cfg.bucket.clone(),
        path_style: true,
        access_key: cfg.access_key.clone(),
        secret_key: cfg.secret_key.clone(),
    })
    .unwrap();
    let body = vec![7u8; 64 * 1024];
    let sha = sha256_hex(&body);
    let key = "orgs/o/jobs/j/attempts/1/out/stalled.mp4";
    let spec = PutSpec {
        size: body.len() as u64,
        sha256_hex: Some(&sha),
        content_type: None,
    };
    let put = p.put(key, Duration::from_secs(600), &spec).unwrap();
    let headers: Vec<(String, String)> = put
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    // A client that goes away mid-body: its PUT ends, and the key is free again.
    let key_gone = "orgs/o/jobs/j/attempts/1/out/gone.mp4";
    let gone = p.put(key_gone, Duration::from_secs(600), &spec).unwrap();
    let gone_headers: Vec<(String, String)> = gone
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    {
        let u: reqwest::Url = gone.url.parse().unwrap();
        let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
        let mut req = format!(
            "PUT {}?{} HTTP/1.1\r\nhost: {addr}\r\n",
            u.path(),
            u.query().unwrap()
        );
        for (k, v) in &gone_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&body[..body.len() / 2]).await.unwrap();
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = eventually(
        "the abandoned PUT's key is free",
        Duration::from_secs(30),
        || {
            let mut req = http.put(&gone.url).body(body.clone());
            for (k, v) in &gone.headers {
                req = req.header(k, v);
            }
            async move {
                let s = req.send().await.unwrap().status();
                // 409 while the abandoned PUT still holds the key.
                (s != 409).then_some(s)
            }
        },
    )
    .await;
    assert!(status.is_success(), "{status}");

    let answer = stalled_put(&put.url, &headers, &body).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("RequestTimeout"), "{answer}");

    // Nothing was stored (no partial file left either), and the key is free: the same URL
    // now stores the whole body.
    let partial: Vec<_> = std::fs::read_dir(&cfg.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp."))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    let get = p.get(key, Duration::from_secs(600)).url;
    assert_eq!(http.get(&get).send().await.unwrap().status(), 404);
    let mut req = http.put(&put.url).body(body.clone());
    for (k, v) in &put.headers {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let got = http.get(&get).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.to_vec(), body);
    store.abort();
}

/// A TCP proxy in front of a store that answers the first request whose (lowercased) request
/// line starts with `method` and contains `path_part` with 403 (as a store answers a URL signed
/// with a key it no longer has) and passes everything else on.
/// Each request gets a connection of its own (`connection: close` is added), so each is seen.
async fn refusing_proxy(
    upstream: String,
    method: &'static str,
    path_part: &'static str,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (upstream, refused) = (upstream.clone(), counter.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 8192];
                let end = loop {
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                };
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                let line_end = text.find("\r\n").unwrap();
                let hit = text.starts_with(method) && text[..line_end].contains(path_part);
                if hit
                    && refused
                        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    // Read the body first, so the client reads the answer, not a reset.
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    let mut left = length.saturating_sub(head.len() - end);
                    while left > 0 {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>refused by the test proxy</Message></Error>";
                    let resp = format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(resp.as_bytes()).await;
                    let _ = client.shutdown().await;
                    return;
                }
                head.splice(line_end + 2..line_end + 2, *b"connection: close\r\n");
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if up.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
            });
        }
    });
    (format!("http://{addr}"), refused)
}

/// Runs one job through a platform whose store is behind [`refusing_proxy`]: it succeeds on its
/// first attempt, the proxy having refused one request.
async fn one_job_behind_a_refusing_proxy(method: &'static str, path_part: &'static str) {
    let dir = tempdir::TempDir::new("mpegflow-reask");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let store_cfg = EmbeddedConfig::new(dir.path().join("s3"), "media", "AKREASK", "reask-secret");
    let store = tokio::spawn(mpegflow_objstore::embedded::serve(
        listener,
        store_cfg.clone(),
        std::future::pending(),
    ));
    let (endpoint, refused) = refusing_proxy(upstream, method, path_part).await;
    let cfg = PlatformConfig {
        s3: Some(S3Config {
            endpoint,
            region: "us-east-1".into(),
            bucket: store_cfg.bucket.clone(),
            path_style: true,
            access_key: store_cfg.access_key.clone(),
            secret_key: store_cfg.secret_key.clone(),
        }),
        workers: 1,
        ..config(
            &dir.path().join("data"),
            &fresh_database().await,
            "127.0.0.1:0",
        )
    };
    let platform = Platform::start(cfg).await.expect("platform starts");
    let (_, key) = platform.store().create_org("acme").await.unwrap();
    let client = mpegflow::client::ApiClient::new(&platform.api_url, key.expose());
    let input = clip(dir.path(), "in.mp4", 1, "160x120").await;
    let job = run_job(
        &client,
        &input,
        &[("out", "out.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "the proxy refused one {method} of {path_part}"
    );
    assert_eq!(job.state, mpegflow_api::JobState::Succeeded, "{job:#?}");
    assert_eq!(
        job.attempts, 1,
        "no attempt spent on the 403 of a {method}: {job:#?}"
    );
    platform.stop(Duration::from_secs(5)).await;
    store.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refused_with_403_asks_for_fresh_urls_once() {
    // An output's upload: fresh upload URLs (same pins) are asked for once.
    one_job_behind_a_refusing_proxy("put ", "/attempts/").await;
    // An input's download: fresh input URLs come with the next heartbeat.
    one_job_behind_a_refusing_proxy("get ", "/assets/").await;
}
