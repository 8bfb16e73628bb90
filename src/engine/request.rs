//! What callers ask of the engine and what it answers: one request and one
//! outcome type per operation, free of HTTP.

use std::sync::Arc;

use bytes::Bytes;
use time::OffsetDateTime;

use super::entry::StreamEntry;
use crate::protocol::header::{ContentType, ProducerHeaders};
use crate::protocol::offset::ReadFrom;
use crate::protocol::producer::ProducerState;

/// A fork request from `PUT` headers.
#[derive(Clone, Debug)]
pub struct ForkRequest {
    /// `Stream-Forked-From`.
    pub source_path: String,
    /// `Stream-Fork-Offset`, if given.
    pub offset: Option<ReadFrom>,
    /// `Stream-Fork-Sub-Offset` (0 when absent).
    pub sub_offset: u64,
}

/// A `PUT`.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// The stream path.
    pub path: String,
    /// `Content-Type`, if given.
    pub content_type: Option<ContentType>,
    /// `Stream-TTL`.
    pub ttl_secs: Option<u64>,
    /// `Stream-Expires-At`.
    pub expires_at: Option<OffsetDateTime>,
    /// `Stream-Closed: true`.
    pub closed: bool,
    /// Fork headers.
    pub fork: Option<ForkRequest>,
    /// Initial data.
    pub body: Bytes,
}

/// The result of a `PUT`.
#[derive(Clone, Debug)]
pub struct Created {
    /// The stream.
    pub entry: Arc<StreamEntry>,
    /// `true` for a new stream (`201`), `false` for a matching one (`200`).
    pub new: bool,
    /// Its tail.
    pub tail: u64,
    /// Whether it is closed.
    pub closed: bool,
}

/// A `POST`.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// `Content-Type`, if given.
    pub content_type: Option<ContentType>,
    /// The body.
    pub body: Bytes,
    /// `Stream-Closed: true`.
    pub close: bool,
    /// The producer triple.
    pub producer: Option<ProducerHeaders>,
    /// `Stream-Seq`.
    pub stream_seq: Option<String>,
}

/// The result of a `POST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The tail after the request.
    pub tail: u64,
    /// Whether the stream is closed after the request.
    pub closed: bool,
    /// Whether data (or a close) was written, as opposed to a duplicate.
    pub wrote: bool,
    /// The producer state to echo.
    pub producer: Option<ProducerState>,
}

/// The result of a read.
#[derive(Clone, Debug)]
pub struct ReadResult {
    /// Where the read started.
    pub start: u64,
    /// Records (payload as stored).
    pub records: Vec<Bytes>,
    /// Position after the returned data.
    pub next: u64,
    /// The read reached the committed tail.
    pub up_to_date: bool,
    /// The stream is closed and the read reached its final offset.
    pub closed: bool,
}

impl ReadResult {
    /// Total payload bytes.
    pub fn len(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }

    /// No data was returned.
    pub fn is_empty(&self) -> bool {
        self.records.iter().all(Bytes::is_empty)
    }
}

/// How an operation refreshes a sliding TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes keep the stream alive.
    Touch,
    /// `HEAD` does not (spec §4.5).
    Peek,
}
