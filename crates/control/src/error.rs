//! The control plane's error type, mapped to HTTP (problem+json) and gRPC status here and
//! nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mpegflow_domain::command::CommandError;
use mpegflow_store::StoreError;

/// `Retry-After` of every 503: a database outage is detected within about a second, and
/// clients should not hammer a recovering server.
pub const RETRY_AFTER_SECONDS: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Missing, malformed, wrong-kind, unknown or revoked credential.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// Authenticated, but this caller may not do this (e.g. a worker id of another token).
    #[error("{0}")]
    PermissionDenied(String),
    /// Missing, or belonging to another org: the two are indistinguishable by design.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        argument: Option<String>,
    },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The caller no longer holds the lease it acts under.
    #[error("{0}")]
    LeaseLost(String),
    #[error("{0}")]
    Unavailable(String),
    /// The database cannot be reached (or is saturated); retry later.
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable(String),
    /// The request body is larger than this endpoint accepts.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The request body is not JSON (`Content-Type: application/json`).
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The route exists, but not with this method.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// A bound on the caller was reached (workers per token, open long-polls, failed logins).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error")]
    Internal(String),
}

impl ControlError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ControlError::Invalid {
            code,
            message: message.into(),
            argument: None,
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ControlError::NotFound("resource"),
            StoreError::Conflict(message) => ControlError::Conflict {
                code: "conflict",
                message,
            },
            // The API refuses NUL characters earlier; this keeps any other path from a 500.
            StoreError::UnstorableText => {
                ControlError::invalid("invalid_text", "text must not contain NUL characters")
            }
            StoreError::Unavailable(e) => ControlError::DatabaseUnavailable(e.to_string()),
            StoreError::Db(e) => ControlError::Internal(e.to_string()),
            StoreError::Migrate(e) => ControlError::Internal(e.to_string()),
        }
    }
}

impl From<CommandError> for ControlError {
    fn from(e: CommandError) -> Self {
        ControlError::Invalid {
            code: "invalid_command",
            argument: e.argument().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

impl ControlError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ControlError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ControlError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControlError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
            ControlError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ControlError::LeaseLost(_) => (StatusCode::CONFLICT, "lease_lost"),
            ControlError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ControlError::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ControlError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ControlError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ControlError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ControlError::ResourceExhausted(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted")
            }
            ControlError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ControlError::Internal(detail) => tracing::error!(%detail, "internal error"),
            // One line per request at debug: an outage is reported once by the background
            // tasks, not once per refused call.
            ControlError::DatabaseUnavailable(detail) => {
                tracing::debug!(%detail, "database unavailable")
            }
            _ => {}
        }
        let argument = match &self {
            ControlError::Invalid { argument, .. } => argument.clone(),
            _ => None,
        };
        let body = mpegflow_api::Problem {
            type_: format!("https://mpegflow.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            code: code.to_owned(),
            detail: self.to_string(),
            argument,
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<ControlError> for tonic::Status {
    fn from(e: ControlError) -> Self {
        use tonic::Status;
        match &e {
            ControlError::Unauthenticated => Status::unauthenticated(e.to_string()),
            ControlError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            ControlError::NotFound(_) => Status::not_found(e.to_string()),
            ControlError::Invalid { .. }
            | ControlError::PayloadTooLarge(_)
            | ControlError::UnsupportedMediaType
            | ControlError::MethodNotAllowed => Status::invalid_argument(e.to_string()),
            ControlError::Conflict { .. } | ControlError::LeaseLost(_) => {
                Status::failed_precondition(e.to_string())
            }
            ControlError::Unavailable(_) => Status::unavailable(e.to_string()),
            // Workers retry UNAVAILABLE with backoff.
            ControlError::DatabaseUnavailable(detail) => {
                tracing::debug!(%detail, "database unavailable");
                Status::unavailable(e.to_string())
            }
            ControlError::ResourceExhausted(_) => Status::resource_exhausted(e.to_string()),
            ControlError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_503_with_retry_after_and_grpc_unavailable() {
        let e = || ControlError::from(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        let resp = e().into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers().get(axum::http::header::RETRY_AFTER).unwrap(),
            RETRY_AFTER_SECONDS
        );
        let status = tonic::Status::from(e());
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("database"), "{status:?}");
    }

    #[test]
    fn other_database_errors_stay_internal() {
        let e = ControlError::from(StoreError::Db(sqlx::Error::RowNotFound));
        assert_eq!(
            e.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
