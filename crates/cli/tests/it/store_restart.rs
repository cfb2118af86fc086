//! The embedded store across restarts and under stalled clients: its key persists in the
//! data directory (0600, checked at start), two stores never share a directory, and a PUT
//! whose client stalls is cut off and frees its key.

use crate::harness::*;
use mpegflow::platform::{Platform, PlatformConfig, EMBEDDED_KEY_FILE};
use mpegflow_objstore::embedded::EmbeddedConfig;
use mpegflow_objstore::{Presigner, PutSpec, S3Config};
use std::os::unix::fs::PermissionsExt;
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
