//! What a webhook can announce, and the id each delivery is signed under.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A kind of event an endpoint can subscribe to. On the wire (JSON, API, database) it is the
/// dotted name from [`EventType::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum EventType {
    #[serde(rename = "job.started")]
    JobStarted,
    #[serde(rename = "job.progress")]
    JobProgress,
    #[serde(rename = "job.completed")]
    JobCompleted,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.canceled")]
    JobCanceled,
    #[serde(rename = "webhook.disabled")]
    WebhookDisabled,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::JobStarted,
        EventType::JobProgress,
        EventType::JobCompleted,
        EventType::JobFailed,
        EventType::JobCanceled,
        EventType::WebhookDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobStarted => "job.started",
            EventType::JobProgress => "job.progress",
            EventType::JobCompleted => "job.completed",
            EventType::JobFailed => "job.failed",
            EventType::JobCanceled => "job.canceled",
            EventType::WebhookDisabled => "webhook.disabled",
        }
    }

    /// The exact dotted name (case-sensitive, no surrounding spaces).
    pub fn parse(s: &str) -> Result<EventType, UnknownEventType> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.chars().take(UNKNOWN_ECHO_CHARS).collect()))
    }

    /// Whether an endpoint created without an explicit event list receives this type.
    /// Progress is chatty (many per job), so it is opt-in.
    pub fn subscribed_by_default(self) -> bool {
        self != EventType::JobProgress
    }
}

/// How much of an unknown name the error repeats: enough to spot a typo, not a way to echo
/// arbitrary amounts of client input into responses and logs.
const UNKNOWN_ECHO_CHARS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown event type {0:?}; expected one of job.started, job.progress, job.completed, job.failed, job.canceled, webhook.disabled")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::parse(s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `webhook-id` of the deliveries of one event: the same for every attempt, so receivers can
/// drop duplicates.
pub fn message_id(event_id: uuid::Uuid) -> String {
    format!("msg_{}", event_id.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_display_and_serde() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Ok(t));
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn all_lists_each_type_once_in_order() {
        let mut sorted = EventType::ALL.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, EventType::ALL.to_vec());
        let names: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "job.started",
                "job.progress",
                "job.completed",
                "job.failed",
                "job.canceled",
                "webhook.disabled"
            ]
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        for bad in [
            "",
            "job",
            "Job.Started",
            " job.started",
            "job.started ",
            "job.cancelled",
            "job_started",
        ] {
            assert_eq!(
                EventType::parse(bad),
                Err(UnknownEventType(bad.to_string())),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<EventType>("\"JobStarted\"").is_err());
        let err = EventType::parse("job.explode").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown event type \"job.explode\"; expected one of job.started, job.progress, \
             job.completed, job.failed, job.canceled, webhook.disabled"
        );
    }

    #[test]
    fn unknown_name_is_echoed_at_most_64_chars() {
        let long = "é".repeat(1000);
        let UnknownEventType(echo) = EventType::parse(&long).unwrap_err();
        assert_eq!(echo.chars().count(), 64);
        assert!(long.starts_with(&echo));
    }

    #[test]
    fn progress_is_the_only_opt_in_type() {
        let opt_in: Vec<_> = EventType::ALL
            .into_iter()
            .filter(|t| !t.subscribed_by_default())
            .collect();
        assert_eq!(opt_in, [EventType::JobProgress]);
    }

    #[test]
    fn message_id_is_msg_and_32_lowercase_hex() {
        let id = uuid::Uuid::parse_str("0190A3B4-C5D6-7E8F-9A0B-1C2D3E4F5A6B").unwrap();
        assert_eq!(message_id(id), "msg_0190a3b4c5d67e8f9a0b1c2d3e4f5a6b");
    }

    #[cfg(feature = "schema")]
    #[test]
    fn openapi_schema_lists_the_dotted_names() {
        let schema = serde_json::to_value(<EventType as utoipa::PartialSchema>::schema()).unwrap();
        let names: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(schema["enum"], serde_json::json!(names), "{schema}");
    }
}
