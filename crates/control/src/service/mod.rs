//! The use-cases, free of HTTP and gRPC. The tenant's (`jobs`, `assets`, `pools`) take the
//! calling tenant and typed input from `mpegflow-api`; the worker's (`broker`) take the
//! authenticated worker and plain Rust input converted from the protocol. Each answers typed
//! output or a [`ControlError`](crate::error::ControlError). `api.rs` and `coordinator.rs` only
//! parse requests, call these and map the answers.

pub mod assets;
pub mod broker;
pub mod jobs;
pub mod pools;
pub(crate) mod views;
pub mod webhooks;

use crate::error::{ControlError, Result};
use mpegflow_api as api;

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

/// A list's page size: the default when absent, refused outside 1..=200.
fn page_size(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(api::DEFAULT_PAGE);
    if (1..=api::MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ControlError::invalid(
            "invalid_query",
            format!("limit must be 1-{}", api::MAX_PAGE),
        ))
    }
}

/// Rows fetched as `limit + 1` split into the page and the next page's cursor (the id of the
/// page's last row, when more follow).
fn split_page<T>(
    mut rows: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> uuid::Uuid,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| id(r).to_string()))
        .flatten();
    (rows, next)
}
