//! Attacks on the embedded store's guard with presigned URLs the attacker legitimately holds:
//! the bytes stored under a key are the signed ones or nothing, and a URL for one key reaches
//! no other. Requests are written by hand on a TCP socket where an HTTP client would tidy them.

use crate::harness::*;
use mpegflow_objstore::PutSpec;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one raw HTTP/1.1 request and returns the status code.
async fn raw(url: &str, method: &str, headers: &[(String, String)], body: &[u8]) -> u16 {
    let u: reqwest::Url = url.parse().unwrap();
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn headers_of(h: &BTreeMap<String, String>, skip: &[&str]) -> Vec<(String, String)> {
    h.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn chunked(body: &[u8], trailers: &str) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(format!("\r\n0\r\n{trailers}\r\n").as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_stores_bytes_other_than_the_signed_ones() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let p = &tp.platform.state.presigner;
    let hour = Duration::from_secs(3600);
    let good = b"the bytes the grant was for".to_vec();
    let evil = b"the bytes the attacker wants".to_vec();
    let sha = sha256_hex(&good);
    let evil_b64 = mpegflow_objstore::presign::sha256_hex_to_b64(&sha256_hex(&evil)).unwrap();
    let spec = PutSpec {
        size: good.len() as u64,
        sha256_hex: Some(&sha),
        content_type: None,
    };
    let stored = |key: String| {
        let url = p.get(&key, hour).url;
        async move {
            let r = reqwest::Client::new().get(url).send().await.unwrap();
            if r.status().is_success() {
                Some(r.bytes().await.unwrap().to_vec())
            } else {
                None
            }
        }
    };

    let mut n = 0;
    let mut attempt = |name: &str| {
        n += 1;
        let key = format!("orgs/a/jobs/j/attempts/1/out/{name}{n}");
        (key.clone(), p.put(&key, hour, &spec).unwrap())
    };

    // A second x-amz-checksum-sha256, before or after the signed one.
    for evil_first in [true, false] {
        let (key, put) = attempt("dup");
        let mut h = headers_of(&put.headers, &["content-length"]);
        let dup = ("x-amz-checksum-sha256".to_owned(), evil_b64.clone());
        if evil_first {
            h.insert(0, dup);
        } else {
            h.push(dup);
        }
        h.push(("content-length".into(), evil.len().to_string()));
        let status = raw(&put.url, "PUT", &h, &evil).await;
        eprintln!("dup evil_first={evil_first}: {status}");
        if let Some(body) = stored(key).await {
            assert_eq!(
                body, good,
                "duplicate checksum (evil first: {evil_first}) stored other bytes ({status})"
            );
        }
    }

    // A chunked body, with and without the signed length, with a trailer naming its checksum.
    for with_length in [true, false] {
        let (key, put) = attempt("chunked");
        let mut h = headers_of(&put.headers, &["content-length"]);
        if with_length {
            h.push(("content-length".into(), good.len().to_string()));
        }
        h.push(("transfer-encoding".into(), "chunked".into()));
        h.push(("trailer".into(), "x-amz-checksum-sha256".into()));
        let body = chunked(&evil, &format!("x-amz-checksum-sha256: {evil_b64}\r\n"));
        let status = raw(&put.url, "PUT", &h, &body).await;
        eprintln!("chunked with_length={with_length}: {status}");
        if let Some(body) = stored(key).await {
            assert_eq!(
                body, good,
                "chunked (length: {with_length}) stored other bytes ({status})"
            );
        }
    }

    // A key whose name holds encoded separators and dot segments lands under exactly that key.
    let key = "orgs/a/jobs/j/attempts/1/hls/x%2F..%2F..%2F..%2F..%2F..%2F..%2Fb%2Fassets%2Ft";
    let put = p.put(key, hour, &spec).unwrap();
    let mut h = headers_of(&put.headers, &[]);
    h.retain(|(k, _)| k != "content-length");
    h.push(("content-length".into(), good.len().to_string()));
    assert_eq!(raw(&put.url, "PUT", &h, &good).await, 200);
    assert!(stored(key.to_owned()).await.is_some());
    for elsewhere in ["orgs/b/assets/t", "orgs/a/jobs/j/attempts/1/hls/x"] {
        assert!(
            stored(elsewhere.to_owned()).await.is_none(),
            "{elsewhere} was written"
        );
    }
    // The URL's own path, decoded once more or with its dot segments spelled out, is refused.
    let get = p.get(key, hour).url;
    for tampered in [
        get.replace("%252F", "%2F"),
        get.replace("x%252F..%252F", "x/../"),
    ] {
        let status = raw(&tampered, "GET", &[], b"").await;
        assert!(status == 403 || status == 400, "{tampered}: {status}");
    }
    // A GET URL does not HEAD, a HEAD URL does not GET.
    assert_eq!(raw(&get, "HEAD", &[], b"").await, 403);
    tp.stop().await;
}
