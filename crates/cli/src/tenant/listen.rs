//! `mpegflow webhooks listen`: the org's event stream, printed and forwarded signed to a local
//! receiver, like `stripe listen`.

use crate::client::ApiClient;
use anyhow::{anyhow, Result};
use futures::StreamExt;
use mpegflow_api as api;
use mpegflow_domain::webhook::{signature_header, SigningSecret};
use std::time::Duration;

/// One server-sent event as received.
#[derive(Debug, Default)]
struct SseEvent {
    id: Option<String>,
    data: String,
}

/// Splits a `text/event-stream` body into events as its bytes arrive.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        self.buffer.extend_from_slice(bytes);
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if !event.data.is_empty() {
                    out.push(event);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                // `event`, `retry` and comments (keep-alives) carry nothing we need.
                _ => {}
            }
        }
    }
}

/// Streams until the connection cannot be made again or the key is refused; reconnects after
/// a dropped connection from the last event received.
pub async fn listen(
    client: &ApiClient,
    forward_to: Option<&str>,
    secret: &SigningSecret,
    only: &[api::EventType],
    json: bool,
) -> Result<()> {
    let forwarder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()?;
    let mut last: Option<i64> = None;
    let mut failures = 0u32;
    if !json {
        eprintln!("listening for events (Ctrl-C to stop)");
    }
    loop {
        let resp = match client.event_stream(last).await {
            Ok(resp) => resp,
            Err(e) if e.downcast_ref::<crate::client::ApiError>().is_some() => return Err(e),
            Err(e) => {
                failures += 1;
                if failures > 30 {
                    return Err(e);
                }
                eprintln!("connection failed ({e:#}); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        failures = 0;
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            let mut events = Vec::new();
            parser.push(&chunk, &mut events);
            for event in events {
                if let Some(id) = event.id.as_deref().and_then(|i| i.parse().ok()) {
                    last = Some(id);
                }
                let streamed: api::StreamedEvent = serde_json::from_str(&event.data)
                    .map_err(|e| anyhow!("the API sent an event this version cannot read: {e}"))?;
                if !only.is_empty() && !only.contains(&streamed.envelope.event_type) {
                    continue;
                }
                show(&streamed, json)?;
                if let Some(url) = forward_to {
                    forward(&forwarder, url, secret, &streamed).await;
                }
            }
        }
        // The stream ended (the API closes it after an hour, or restarted): resume.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn show(event: &api::StreamedEvent, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(event)?);
    } else {
        let subject = event
            .envelope
            .data
            .get("id")
            .or_else(|| event.envelope.data.get("endpoint_id"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        println!(
            "{}  {:<16}  {}  {subject}",
            event.envelope.timestamp,
            event.envelope.event_type.as_str(),
            event.message_id
        );
    }
    Ok(())
}

/// POSTs the event as a delivery would carry it, signed with `secret`.
async fn forward(
    http: &reqwest::Client,
    url: &str,
    secret: &SigningSecret,
    event: &api::StreamedEvent,
) {
    let body = match serde_json::to_vec(&event.envelope) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("  -> not forwarded: {e}");
            return;
        }
    };
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = signature_header(&[secret], &event.message_id, ts, &body);
    let sent = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-mpegflow-id", &event.message_id)
        .header("x-mpegflow-timestamp", ts.to_string())
        .header("x-mpegflow-event", event.envelope.event_type.as_str())
        .header("x-mpegflow-signature", &signature)
        .header("webhook-id", &event.message_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", &signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => eprintln!("  -> {url}: {}", resp.status()),
        Err(e) => eprintln!("  -> {url}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_keep_alives_are_parsed() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.push(b": keep-alive\n\nid: 7\nevent: job.started\nda", &mut out);
        assert!(out.is_empty());
        p.push(
            b"ta: {\"a\":1}\r\n\r\nid: 8\ndata: x\ndata: y\n\n",
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id.as_deref(), Some("7"));
        assert_eq!(out[0].data, "{\"a\":1}");
        assert_eq!(out[1].data, "x\ny");
    }
}
