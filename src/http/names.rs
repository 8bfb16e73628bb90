//! Header names of the protocol (spec §5) as ready-made constants.

use axum::http::HeaderName;

/// `Stream-Next-Offset`.
pub const STREAM_NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
/// `Stream-Start-Offset` (this server's, not the protocol's): where a
/// stream whose head retention trimmed now starts.
pub const STREAM_START_OFFSET: HeaderName = HeaderName::from_static("stream-start-offset");
/// `Stream-Up-To-Date`.
pub const STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
/// `Stream-Cursor`.
pub const STREAM_CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
/// `Stream-Closed`.
pub const STREAM_CLOSED: HeaderName = HeaderName::from_static("stream-closed");
/// `Stream-Seq`.
pub const STREAM_SEQ: HeaderName = HeaderName::from_static("stream-seq");
/// `Stream-TTL`.
pub const STREAM_TTL: HeaderName = HeaderName::from_static("stream-ttl");
/// `Stream-Expires-At`.
pub const STREAM_EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
/// `Stream-Forked-From`.
pub const STREAM_FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
/// `Stream-Fork-Offset`.
pub const STREAM_FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
/// `Stream-Fork-Sub-Offset`.
pub const STREAM_FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");
/// `Stream-SSE-Data-Encoding`.
pub const STREAM_SSE_DATA_ENCODING: HeaderName =
    HeaderName::from_static("stream-sse-data-encoding");
/// `Producer-Id`.
pub const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
/// `Producer-Epoch`.
pub const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
/// `Producer-Seq`.
pub const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
/// `Producer-Expected-Seq`.
pub const PRODUCER_EXPECTED_SEQ: HeaderName = HeaderName::from_static("producer-expected-seq");
/// `Producer-Received-Seq`.
pub const PRODUCER_RECEIVED_SEQ: HeaderName = HeaderName::from_static("producer-received-seq");
