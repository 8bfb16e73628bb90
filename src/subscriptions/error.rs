//! [`SubscriptionError`]: what the subscription APIs refuse, with the stable
//! `code` the subscription protocol defines. The HTTP layer maps it, once,
//! to a problem answer.

use crate::storage::StorageError;

/// Why a subscription request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The body is not the JSON the operation expects.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The subscription id is not usable.
    #[error("invalid subscription id: {0}")]
    InvalidId(String),
    /// The pattern is not usable.
    #[error("invalid pattern {0}")]
    InvalidPattern(String),
    /// A stream name is not usable.
    #[error("invalid stream name {0:?}")]
    InvalidStream(String),
    /// `lease_ttl_ms` is out of bounds.
    #[error("lease_ttl_ms must be between {min} and {max}")]
    InvalidLease {
        /// Shortest allowed.
        min: u64,
        /// Longest allowed.
        max: u64,
    },
    /// The webhook URL is not allowed (SSRF protection).
    #[error("webhook URL rejected: {0}")]
    WebhookUrlRejected(String),
    /// No such subscription.
    #[error("subscription not found")]
    NotFound,
    /// The id holds a subscription with another configuration.
    #[error("a subscription with this id exists with a different configuration")]
    Exists,
    /// Too many subscriptions.
    #[error("the server holds its maximum of {0} subscriptions")]
    TooMany(usize),
    /// The operation does not apply to this subscription's type.
    #[error("this operation needs a {0} subscription")]
    WrongType(&'static str),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The request's generation or wake id is not the current one.
    #[error("stale wake: the generation or wake id is no longer current")]
    Fenced,
    /// Another worker holds the lease.
    #[error("the subscription is claimed by another worker")]
    AlreadyClaimed {
        /// The worker holding it.
        holder: String,
    },
    /// An ack names an offset that is malformed or beyond the stream's tail.
    #[error("invalid ack offset {0:?}")]
    InvalidOffset(String),
    /// The subscription state could not be read yet or the signing key is
    /// unusable.
    #[error("subscriptions are unavailable: {0}")]
    Unavailable(String),
    /// The request body is larger than the control-body limit.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// Persisting the state failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl SubscriptionError {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::InvalidId(_) => "INVALID_SUBSCRIPTION_ID",
            Self::InvalidPattern(_) => "INVALID_PATTERN",
            Self::InvalidStream(_) => "INVALID_STREAM_NAME",
            Self::InvalidLease { .. } => "INVALID_LEASE_TTL",
            Self::WebhookUrlRejected(_) => "WEBHOOK_URL_REJECTED",
            Self::NotFound => "SUBSCRIPTION_NOT_FOUND",
            Self::Exists => "SUBSCRIPTION_EXISTS",
            Self::TooMany(_) => "TOO_MANY_SUBSCRIPTIONS",
            Self::WrongType(_) => "WRONG_SUBSCRIPTION_TYPE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Fenced => "FENCED",
            Self::AlreadyClaimed { .. } => "ALREADY_CLAIMED",
            Self::InvalidOffset(_) => "INVALID_OFFSET",
            Self::Unavailable(_) => "SUBSCRIPTIONS_UNAVAILABLE",
            Self::BodyTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Self::Storage(_) => "STORAGE_UNAVAILABLE",
        }
    }
}
