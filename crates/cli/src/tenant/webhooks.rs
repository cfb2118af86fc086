//! `mpegflow webhooks`: endpoints, deliveries, replay and recover; `verify` for receivers.

use super::jobs::{print_json, print_pages, Listing};
use super::{Connection, Exit};
use anyhow::{anyhow, bail, Context, Result};
use mpegflow_api as api;
use mpegflow_domain::webhook::{verify, SignedHeaders, SigningSecret};
use std::io::Read;
use std::path::PathBuf;
use uuid::Uuid;

/// An event type as a flag value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EventArg {
    #[value(name = "job.started")]
    JobStarted,
    #[value(name = "job.progress")]
    JobProgress,
    #[value(name = "job.completed")]
    JobCompleted,
    #[value(name = "job.failed")]
    JobFailed,
    #[value(name = "job.canceled")]
    JobCanceled,
    #[value(name = "webhook.disabled")]
    WebhookDisabled,
}

impl From<EventArg> for api::EventType {
    fn from(e: EventArg) -> Self {
        match e {
            EventArg::JobStarted => api::EventType::JobStarted,
            EventArg::JobProgress => api::EventType::JobProgress,
            EventArg::JobCompleted => api::EventType::JobCompleted,
            EventArg::JobFailed => api::EventType::JobFailed,
            EventArg::JobCanceled => api::EventType::JobCanceled,
            EventArg::WebhookDisabled => api::EventType::WebhookDisabled,
        }
    }
}

fn events(events: &[EventArg]) -> Option<Vec<api::EventType>> {
    (!events.is_empty()).then(|| events.iter().map(|&e| e.into()).collect())
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum WebhooksCmd {
    /// Add an endpoint; prints its signing secret, shown this once.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Create {
        /// Where deliveries go (https://…).
        url: String,
        /// An event to send (repeat; default: every type but job.progress).
        #[arg(long = "event", value_enum, value_name = "TYPE")]
        events: Vec<EventArg>,
        #[arg(long)]
        description: Option<String>,
        /// Print the answer as JSON (it holds the secret).
        #[arg(long)]
        json: bool,
    },
    /// List your org's endpoints.
    #[command(after_help = super::EXIT_CODES_HELP)]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint as JSON.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Show { id: Uuid },
    /// Change an endpoint's URL, events or description.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Update {
        id: Uuid,
        #[arg(long)]
        url: Option<String>,
        /// The events to send from now on (repeat; replaces the list).
        #[arg(long = "event", value_enum, value_name = "TYPE")]
        events: Vec<EventArg>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove an endpoint (what was pending or held for it ends failed).
    #[command(after_help = super::EXIT_CODES_HELP)]
    Delete { id: Uuid },
    /// Replace an endpoint's signing secret; prints the new one, shown this once. The old one
    /// keeps signing beside it for the overlap.
    #[command(after_help = super::EXIT_CODES_HELP)]
    RotateSecret {
        id: Uuid,
        /// Seconds the old secret keeps signing (default 86400, at most 604800).
        #[arg(long)]
        overlap_seconds: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Enable an endpoint the circuit breaker disabled; its held deliveries go out now.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Enable { id: Uuid },
    /// An endpoint's deliveries with their attempts, newest first.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Deliveries {
        /// The endpoint id.
        id: Uuid,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
        #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
        cursor: Option<Uuid>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery as JSON, with every attempt and the signed payload.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Delivery { id: Uuid },
    /// Send a delivery again now (same message id).
    #[command(after_help = super::EXIT_CODES_HELP)]
    Replay {
        /// The delivery id.
        id: Uuid,
    },
    /// Send again every failed or held delivery of an endpoint since a time.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Recover {
        /// The endpoint id.
        id: Uuid,
        /// RFC 3339, e.g. 2026-12-01T00:00:00Z.
        #[arg(long)]
        since: String,
    },
    /// Stream your org's events as they happen, over an authenticated connection to the API
    /// (no public endpoint needed), print each, and with --forward-to POST it, signed as a
    /// delivery would be, to a local receiver. Runs until Ctrl-C; reconnects without missing
    /// an event. (`job.progress` events exist only while an endpoint subscribes to them.)
    #[command(after_help = super::EXIT_CODES_HELP)]
    Listen {
        /// Forward each event to this URL, e.g. http://127.0.0.1:3000/webhooks.
        #[arg(long, value_name = "URL")]
        forward_to: Option<String>,
        /// Sign forwarded events with this secret (whsec_…; default: a fresh one, printed at
        /// the start). MPEGFLOW_WEBHOOK_SECRET keeps it out of the process list.
        #[arg(long, env = "MPEGFLOW_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Only these event types (repeat; default: all).
        #[arg(long = "event", value_enum, value_name = "TYPE")]
        events: Vec<EventArg>,
        /// Print each event as a JSON line on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check a delivery as a receiver should: its signature under your secret, and its
    /// timestamp within 5 minutes of now. The body is read from standard input (or --body).
    /// Exits 0 when it verifies, 1 when it does not.
    Verify {
        /// The endpoint's signing secret (whsec_…); MPEGFLOW_WEBHOOK_SECRET keeps it out of
        /// the process list.
        #[arg(long, env = "MPEGFLOW_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// A header of the request, `Name: value` (repeat): webhook-id, webhook-timestamp and
        /// webhook-signature, or their X-MpegFlow- twins.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The body's file (default: standard input).
        #[arg(long)]
        body: Option<PathBuf>,
    },
}

impl Listing for api::WebhookDeliveryList {
    const COMMAND: &'static str = "webhooks deliveries WEBHOOK_ID";

    fn header() -> String {
        format!(
            "{:<36}  {:<16}  {:<9}  {:>8}  {:<24}  MESSAGE",
            "DELIVERY", "EVENT", "STATE", "ATTEMPTS", "CREATED"
        )
    }

    fn lines(&self) -> Vec<String> {
        self.deliveries
            .iter()
            .map(|d| {
                format!(
                    "{:<36}  {:<16}  {:<9}  {:>8}  {:<24}  {}",
                    d.id.to_string(),
                    d.event_type.as_str(),
                    state_name(d.state),
                    d.attempts.len(),
                    d.created_at.to_string(),
                    d.message_id
                )
            })
            .collect()
    }

    fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

fn state_name(s: api::DeliveryState) -> &'static str {
    match s {
        api::DeliveryState::Pending => "pending",
        api::DeliveryState::Succeeded => "succeeded",
        api::DeliveryState::Failed => "failed",
        api::DeliveryState::Held => "held",
    }
}

fn print_secret(created: &api::WebhookWithSecret, json: bool, what: &str) -> Result<()> {
    if json {
        return print_json(created);
    }
    eprintln!(
        "webhook {} {what}; its signing secret, shown this once:",
        created.webhook.id
    );
    println!("{}", created.secret);
    Ok(())
}

pub async fn webhooks(conn: &Connection, cmd: &WebhooksCmd) -> Result<Exit> {
    if let WebhooksCmd::Verify {
        secret,
        headers,
        body,
    } = cmd
    {
        return verify_delivery(secret, headers, body.as_deref());
    }
    let client = conn.client()?;
    if let WebhooksCmd::Listen {
        forward_to,
        secret,
        events: types,
        json,
    } = cmd
    {
        let secret = match secret {
            Some(s) => SigningSecret::parse(s).map_err(|e| anyhow!("--secret: {e}"))?,
            None => {
                let s = SigningSecret::generate();
                eprintln!("forwarded events are signed with {}", s.expose());
                s
            }
        };
        let only: Vec<api::EventType> = types.iter().map(|&e| e.into()).collect();
        let listen = super::listen::listen(&client, forward_to.as_deref(), &secret, &only, *json);
        tokio::select! {
            r = listen => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(Exit::Ok);
    }
    match cmd {
        WebhooksCmd::Create {
            url,
            events: types,
            description,
            json,
        } => {
            let created = client
                .create_webhook(&api::WebhookIn {
                    url: url.clone(),
                    events: events(types),
                    description: description.clone(),
                })
                .await?;
            print_secret(&created, *json, "created")?;
        }
        WebhooksCmd::List { json } => {
            let list = client.webhooks().await?;
            if *json {
                print_json(&list)?;
            } else {
                println!("{:<36}  {:<8}  {:<40}  URL", "WEBHOOK", "STATE", "EVENTS");
                for w in &list.webhooks {
                    let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
                    println!(
                        "{:<36}  {:<8}  {:<40}  {}",
                        w.id.to_string(),
                        match w.state {
                            api::WebhookState::Enabled => "enabled",
                            api::WebhookState::Disabled => "disabled",
                        },
                        events.join(","),
                        w.url
                    );
                }
            }
        }
        WebhooksCmd::Show { id } => print_json(&client.webhook(*id).await?)?,
        WebhooksCmd::Update {
            id,
            url,
            events: types,
            description,
        } => {
            let patch = api::WebhookPatch {
                url: url.clone(),
                events: events(types),
                description: description.clone(),
            };
            if patch == api::WebhookPatch::default() {
                bail!("nothing to change: give --url, --event or --description");
            }
            print_json(&client.update_webhook(*id, &patch).await?)?;
        }
        WebhooksCmd::Delete { id } => {
            client.delete_webhook(*id).await?;
            eprintln!("webhook {id} deleted");
        }
        WebhooksCmd::RotateSecret {
            id,
            overlap_seconds,
            json,
        } => {
            let rotated = client.rotate_webhook_secret(*id, *overlap_seconds).await?;
            print_secret(&rotated, *json, "has a new secret")?;
        }
        WebhooksCmd::Enable { id } => {
            let enabled = client.enable_webhook(*id).await?;
            eprintln!(
                "webhook {id} enabled; {} held deliveries released",
                enabled.released
            );
        }
        WebhooksCmd::Deliveries {
            id,
            limit,
            cursor,
            all,
            json,
        } => {
            let client = &client;
            print_pages(*cursor, *all, *json, |cursor| {
                let query = api::ListDeliveriesQuery {
                    cursor,
                    limit: Some(*limit),
                };
                async move { client.webhook_deliveries(*id, &query).await }
            })
            .await?;
        }
        WebhooksCmd::Delivery { id } => print_json(&client.webhook_delivery(*id).await?)?,
        WebhooksCmd::Replay { id } => {
            let d = client.replay_delivery(*id).await?;
            eprintln!("delivery {} ({}) is due again now", d.id, d.message_id);
        }
        WebhooksCmd::Recover { id, since } => {
            let since: api::Timestamp =
                serde_json::from_value(serde_json::Value::String(since.clone()))
                    .map_err(|e| anyhow!("--since: {e}"))?;
            let out = client
                .recover_webhook(*id, &api::RecoverIn { since })
                .await?;
            eprintln!("{} deliveries are due again now", out.recovered);
        }
        WebhooksCmd::Verify { .. } | WebhooksCmd::Listen { .. } => unreachable!("handled above"),
    }
    Ok(Exit::Ok)
}

/// The value of the first header named one of `names` (case-insensitive).
fn header<'a>(headers: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
        .map(|(_, v)| v.as_str())
}

fn verify_delivery(secret: &str, raw: &[String], body: Option<&std::path::Path>) -> Result<Exit> {
    let secret = SigningSecret::parse(secret).map_err(|e| anyhow!("--secret: {e}"))?;
    let headers = raw
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow!("--header {h:?} is not `Name: value`"))
        })
        .collect::<Result<Vec<_>>>()?;
    let need = |names: &[&str]| {
        header(&headers, names).ok_or_else(|| anyhow!("missing the {} header", names[0]))
    };
    let signed = SignedHeaders {
        id: need(&["webhook-id", "x-mpegflow-id"])?,
        timestamp: need(&["webhook-timestamp", "x-mpegflow-timestamp"])?,
        signature: need(&["webhook-signature", "x-mpegflow-signature"])?,
    };
    let mut bytes = Vec::new();
    match body {
        Some(p) => {
            bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        }
        None => {
            std::io::stdin().read_to_end(&mut bytes)?;
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match verify(&secret, &signed, &bytes, now) {
        Ok(()) => {
            eprintln!("verified: {}", signed.id);
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("not verified: {e}");
            Ok(Exit::JobFailed)
        }
    }
}
