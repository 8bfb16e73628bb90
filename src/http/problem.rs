//! `ApiError`: the one type that becomes an HTTP error response, as
//! `application/problem+json` (RFC 9457) with a stable `code`.
//!
//! A `5xx` answer keeps its cause chain out of the body (clients get an
//! opaque detail) and hands it to the request log through an [`ErrorCause`]
//! response extension, so the failure is logged once, on the request's line.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::names;
use crate::engine::EngineError;
use crate::protocol::header::HeaderError;
use crate::protocol::name::NameError;
use crate::protocol::offset::{Offset, OffsetError};
use crate::storage::StorageError;

/// `Retry-After` of a `507`: freeing space takes an operator longer than a
/// transient failure (`503`, one second) takes to pass.
const FULL_RETRY_AFTER_SECS: u32 = 5;

/// An error answer: status, stable code, human detail, extra headers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    cause: Option<String>,
    /// RFC 9457 extension members added to the body.
    extensions: Vec<(&'static str, serde_json::Value)>,
}

/// The cause chain of a `5xx` answer, for the request log line; never sent
/// to the client.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

/// The stable `code` of a problem answer, for the request log line.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    /// A problem with the given status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
            cause: None,
            extensions: Vec::new(),
        }
    }

    /// Records why a `5xx` happened (logged, never sent).
    pub(crate) fn with_cause(mut self, error: &dyn std::error::Error) -> Self {
        self.cause = Some(crate::telemetry::error_chain(error));
        self
    }

    /// Adds an extension member (RFC 9457 §3.2) to the body.
    pub(crate) fn with_extension(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.extensions.push((name, value));
        self
    }

    /// `400` for a malformed request.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// Adds a header to the answer (dropped if the value is not a valid
    /// header value).
    pub(crate) fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, value));
        }
        self
    }
}

impl From<HeaderError> for ApiError {
    fn from(error: HeaderError) -> Self {
        Self::bad_request("INVALID_HEADER", error.to_string())
    }
}

impl From<OffsetError> for ApiError {
    fn from(error: OffsetError) -> Self {
        Self::bad_request("INVALID_OFFSET", error.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(error: NameError) -> Self {
        Self::bad_request("INVALID_STREAM_NAME", error.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        use EngineError as E;
        let detail = error.to_string();
        match error {
            E::NotFound => Self::new(StatusCode::NOT_FOUND, "STREAM_NOT_FOUND", detail),
            E::Gone => Self::new(StatusCode::GONE, "STREAM_GONE", detail),
            E::ConfigMismatch(_) => Self::new(StatusCode::CONFLICT, "STREAM_EXISTS", detail),
            E::PathOccupied => Self::new(StatusCode::CONFLICT, "STREAM_SOFT_DELETED", detail),
            E::ForkSourceNotFound => {
                Self::new(StatusCode::NOT_FOUND, "FORK_SOURCE_NOT_FOUND", detail)
            }
            E::ForkSourceGone => Self::new(StatusCode::CONFLICT, "FORK_SOURCE_GONE", detail),
            E::InvalidForkPosition(_) => Self::bad_request("INVALID_FORK_OFFSET", detail),
            E::ContentTypeMismatch => {
                Self::new(StatusCode::CONFLICT, "CONTENT_TYPE_MISMATCH", detail)
            }
            E::Closed { tail } => Self::new(StatusCode::CONFLICT, "STREAM_CLOSED", detail)
                .with_header(names::STREAM_CLOSED, "true")
                .with_header(names::STREAM_NEXT_OFFSET, Offset(tail)),
            E::StaleEpoch { current } => {
                Self::new(StatusCode::FORBIDDEN, "PRODUCER_EPOCH_STALE", detail)
                    .with_header(names::PRODUCER_EPOCH, current)
            }
            E::SequenceGap { expected, received } => {
                Self::new(StatusCode::CONFLICT, "PRODUCER_SEQ_GAP", detail)
                    .with_header(names::PRODUCER_EXPECTED_SEQ, expected)
                    .with_header(names::PRODUCER_RECEIVED_SEQ, received)
            }
            E::EpochMustStartAtZero => Self::bad_request("PRODUCER_EPOCH_SEQ", detail),
            E::StreamSeqRegression => {
                Self::new(StatusCode::CONFLICT, "STREAM_SEQ_CONFLICT", detail)
            }
            E::Json(_) => Self::bad_request("INVALID_JSON", detail),
            E::EmptyBody => Self::bad_request("EMPTY_BODY", detail),
            E::MissingContentType => Self::bad_request("MISSING_CONTENT_TYPE", detail),
            E::OffsetNotAtBoundary => Self::bad_request("INVALID_OFFSET", detail),
            E::StreamTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "STREAM_TOO_LARGE", detail)
            }
            E::Storage(storage) => storage.into(),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            // Writes are taken again once space is freed, without a restart.
            StorageError::Full(detail) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL", detail)
                    .with_header(header::RETRY_AFTER, FULL_RETRY_AFTER_SECS)
            }
            // Retention dropped it: the client may resume from the head,
            // which the header names as the next offset to read.
            StorageError::Trimmed { head, .. } => Self::new(
                StatusCode::GONE,
                "OFFSET_TRIMMED",
                "data before this offset was removed by retention; read from Stream-Next-Offset",
            )
            .with_header(names::STREAM_NEXT_OFFSET, Offset(head)),
            StorageError::Unavailable(_) | StorageError::OutOfOrder { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORAGE_UNAVAILABLE",
                "storage is temporarily unavailable",
            )
            .with_header(header::RETRY_AFTER, 1)
            .with_cause(&error),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal storage error",
            )
            .with_cause(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        for (name, value) in self.extensions {
            body[name] = value;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        let server_error = self.status.is_server_error();
        let cause = self.cause.or_else(|| server_error.then_some(self.detail));
        let mut response = (self.status, headers, body.to_string()).into_response();
        let extensions = response.extensions_mut();
        extensions.insert(ErrorCode(self.code));
        if let Some(cause) = cause {
            extensions.insert(ErrorCause(cause));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_before_the_retained_head_is_gone_and_names_the_head() {
        let response = ApiError::from(StorageError::Trimmed { id: 3, head: 4096 }).into_response();
        assert_eq!(response.status(), StatusCode::GONE);
        let next = response
            .headers()
            .get(names::STREAM_NEXT_OFFSET)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(next.as_deref(), Some(Offset(4096).encode().as_str()));
        assert!(response.extensions().get::<ErrorCause>().is_none());
        assert_eq!(
            response.extensions().get::<ErrorCode>().map(|c| c.0),
            Some("OFFSET_TRIMMED")
        );
    }
}
