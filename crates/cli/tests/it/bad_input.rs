//! Input no tenant should be able to turn into a 5xx, a plain-text error or a lost request:
//! every refusal is `application/problem+json` with a stable `code`.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api as api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Raw {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Raw {
    /// Sends a request and returns its status and problem `code`, requiring problem+json.
    async fn problem(&self, req: reqwest::RequestBuilder, what: &str) -> (StatusCode, String) {
        let problem = self.refusal(req, what).await;
        (StatusCode::from_u16(problem.status).unwrap(), problem.code)
    }

    /// Sends a request and returns the problem it was refused with, requiring problem+json
    /// whose `status` is the answer's.
    async fn refusal(&self, req: reqwest::RequestBuilder, what: &str) -> api::Problem {
        let resp = req.bearer_auth(&self.key).send().await.unwrap();
        let status = resp.status();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let text = resp.text().await.unwrap();
        assert_eq!(
            content_type, "application/problem+json",
            "{what}: {status} {text}"
        );
        let problem: api::Problem = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not a problem ({e}): {text}"));
        assert_eq!(problem.status, status.as_u16(), "{what}: {problem:?}");
        problem
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_never_5xx() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let (_, key) = tp.platform.store().create_org("acme").await.unwrap();
    let raw = Raw {
        http: reqwest::Client::new(),
        base: tp.platform.api_url.clone(),
        key: key.expose().to_owned(),
    };
    let job = |command: &str, metadata: Value| json!({ "inputs": {}, "outputs": { "out": "o.mp4" }, "command": command, "metadata": metadata });

    // NUL characters anywhere in a body: command, metadata keys and values, asset fields.
    let nul_bodies = [
        ("/v1/jobs", job("-i {{in}}\u{0}{{out}}", json!({}))),
        ("/v1/jobs", job("-f null {{out}}", json!({ "k": "v\u{0}" }))),
        ("/v1/jobs", job("-f null {{out}}", json!({ "k\u{0}": "v" }))),
        (
            "/v1/jobs",
            job("-f null {{out}}", json!({ "deep": [{ "x": "\u{0}" }] })),
        ),
        (
            "/v1/assets",
            json!({ "filename": "a.mp4", "content_type": "video/mp4\u{0}", "size": 1 }),
        ),
        ("/v1/assets", json!({ "filename": "a\u{0}.mp4", "size": 1 })),
    ];
    for (path, body) in nul_bodies {
        let (status, code) = raw
            .problem(raw.http.post(raw.url(path)).json(&body), &body.to_string())
            .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_body"),
            "{body}"
        );
    }

    // Values the request types refuse at the edge: `invalid_body`, with a detail naming the rule.
    let some_id = uuid::Uuid::now_v7();
    let malformed_values = [
        (
            "/v1/jobs",
            json!({ "inputs": { "In": some_id }, "outputs": { "out": "o.mp4" }, "command": "-i {{In}} {{out}}" }),
            "alias",
        ),
        (
            "/v1/assets",
            json!({ "filename": "a.mp4", "size": 1, "sha256": "ABC" }),
            "SHA-256",
        ),
        (
            "/v1/assets",
            json!({ "filename": "a\nb.mp4", "size": 1 }),
            "control characters",
        ),
        ("/v1/assets", json!({ "filename": "a.mp4" }), "size"),
    ];
    for (path, body, rule) in malformed_values {
        let problem = raw
            .refusal(raw.http.post(raw.url(path)).json(&body), &body.to_string())
            .await;
        assert_eq!(
            (problem.status, problem.code.as_str()),
            (400, "invalid_body"),
            "{body}"
        );
        assert!(problem.detail.contains(rule), "{body}: {problem:?}");
    }

    // Query strings: malformed values, unknown parameters, NUL.
    for query in [
        "limit=abc",
        "limit=1&limit=x",
        "limit=0",
        "limit=201",
        "bogus=1",
        "state=%00",
        "cursor=%00",
    ] {
        let (status, code) = raw
            .problem(raw.http.get(raw.url(&format!("/v1/jobs?{query}"))), query)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(code == "invalid_query", "{query}: {code}");
    }
    let id = uuid::Uuid::now_v7();
    let (status, code) = raw
        .problem(
            raw.http
                .get(raw.url(&format!("/v1/jobs/{id}?wait_seconds=-1"))),
            "negative wait",
        )
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );

    // Wrong methods on existing routes: 405, with the methods that are allowed.
    for (method, path) in [
        (Method::DELETE, "/v1/jobs".to_owned()),
        (Method::PUT, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}/cancel")),
        (Method::PATCH, "/v1/assets".to_owned()),
    ] {
        let req = raw.http.request(method.clone(), raw.url(&path));
        let resp = req.bearer_auth(&raw.key).send().await.unwrap();
        assert!(resp.headers().contains_key("allow"), "{method} {path}");
        let (status, code) = raw
            .problem(raw.http.request(method.clone(), raw.url(&path)), &path)
            .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            "{method} {path}"
        );
    }

    // Oversized bodies: 413, before anything is parsed or stored.
    let big = json!({ "inputs": {}, "outputs": {}, "command": "x".repeat(2 * 1024 * 1024) });
    let (status, code) = raw
        .problem(raw.http.post(raw.url("/v1/jobs")).json(&big), "2 MiB body")
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    // Bodies that are not declared JSON: 415.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = raw
            .http
            .post(raw.url("/v1/assets"))
            .body(r#"{"filename":"a.mp4","size":1}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (status, code) = raw.problem(req, &format!("{content_type:?}")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{content_type:?}"
        );
    }

    // Path segments that do not decode name nothing.
    let (status, code) = raw
        .problem(raw.http.get(raw.url("/v1/jobs/%FF%FE")), "bad path")
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // Nothing above was stored, and the API still answers normally.
    let list = ApiClient::new(&tp.platform.api_url, key.expose())
        .list_jobs(&api::ListJobsQuery::default())
        .await
        .unwrap();
    assert!(list.jobs.is_empty(), "{list:?}");
    tp.stop().await;
}

/// A request refused before its body was read (here: a wrong content type) is answered with
/// `Connection: close`: the server cannot reuse a connection whose body is still on its way,
/// and a client that reused it anyway saw its next request cut (`IncompleteMessage`). The body
/// is sent after the answer, as a slow client's would be; one the handler reads keeps the
/// connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_body_is_read_closes_its_connection_saying_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tp = TestPlatform::start(0, test_control_config()).await;
    let (_, key) = tp.platform.store().create_org("acme").await.unwrap();
    let addr = tp.platform.api_url.trim_start_matches("http://").to_owned();
    let body = r#"{"filename":"a.mp4","size":1}"#;
    let head = |content_type: &str| {
        format!(
            "POST /v1/assets HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            key.expose(),
            body.len()
        )
    };
    let answer_head = |raw: &[u8]| {
        let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
        text[..text.find("\r\n\r\n").unwrap_or(text.len())].to_owned()
    };
    // Refused before the body: the answer comes first and says the connection ends.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head("text/plain").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let refused = answer_head(&buf[..n]);
    assert!(refused.starts_with("http/1.1 415"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    let _ = s.write_all(body.as_bytes()).await;
    // A body the handler read: the connection stays open for the next request.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head("application/json").as_bytes())
        .await
        .unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let accepted = answer_head(&buf[..n]);
    assert!(accepted.starts_with("http/1.1 201"), "{accepted}");
    assert!(!accepted.contains("connection: close"), "{accepted}");
    tp.stop().await;
}
