//! The tenant use-cases, free of HTTP: each takes the calling tenant and typed input from
//! `mpegflow-api`, and answers typed output or a [`ControlError`](crate::error::ControlError).
//! `api.rs` only parses requests, calls these and maps the answers.

pub mod assets;
pub mod jobs;
mod views;

use uuid::Uuid;

/// The authenticated tenant: the org of the presented API key.
#[derive(Debug, Clone, Copy)]
pub struct Tenant {
    pub org_id: Uuid,
    pub key_id: Uuid,
}

impl Tenant {
    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        format!("api_key:{}", self.key_id)
    }
}
