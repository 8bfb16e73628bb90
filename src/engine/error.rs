//! Errors of protocol operations, one variant per distinct client answer.

use crate::protocol::json::JsonError;
use crate::storage::StorageError;

/// Why a stream operation was refused. The HTTP layer maps each variant to
/// exactly one status and problem `code`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No such stream (or it expired).
    #[error("stream not found")]
    NotFound,
    /// The stream was deleted but is kept for its forks.
    #[error("stream was deleted")]
    Gone,
    /// `PUT` on an existing stream with a different configuration.
    #[error("stream exists with a different configuration: {0}")]
    ConfigMismatch(&'static str),
    /// `PUT` on the path of a soft-deleted stream.
    #[error("a deleted stream still referenced by forks occupies this path")]
    PathOccupied,
    /// The fork source does not exist.
    #[error("fork source stream not found")]
    ForkSourceNotFound,
    /// The fork source was deleted.
    #[error("fork source stream was deleted")]
    ForkSourceGone,
    /// A fork offset or sub-offset that cannot be used.
    #[error("invalid fork position: {0}")]
    InvalidForkPosition(&'static str),
    /// The request's content type differs from the stream's.
    #[error("content type does not match the stream's")]
    ContentTypeMismatch,
    /// The stream is closed.
    #[error("stream is closed")]
    Closed {
        /// The final offset.
        tail: u64,
    },
    /// A producer epoch older than the stored one.
    #[error("producer epoch is stale")]
    StaleEpoch {
        /// The stored epoch.
        current: u64,
    },
    /// A producer sequence number was skipped.
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SequenceGap {
        /// The expected sequence.
        expected: u64,
        /// The received sequence.
        received: u64,
    },
    /// A new producer epoch that does not start at sequence 0.
    #[error("a new producer epoch must start at Producer-Seq 0")]
    EpochMustStartAtZero,
    /// `Stream-Seq` not greater than the last accepted one.
    #[error("Stream-Seq must increase")]
    StreamSeqRegression,
    /// The body of a JSON stream append was not acceptable.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// An append without data and without `Stream-Closed`.
    #[error("append body is empty")]
    EmptyBody,
    /// An append with data but no `Content-Type`.
    #[error("Content-Type is required when appending data")]
    MissingContentType,
    /// A read offset inside a JSON message.
    #[error("offset is not at a message boundary")]
    OffsetNotAtBoundary,
    /// The append would take the stream past `limits.max_stream_bytes`.
    #[error("stream would exceed its limit of {limit} bytes")]
    StreamTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The backend failed.
    #[error("storage operation failed")]
    Storage(#[from] StorageError),
}
