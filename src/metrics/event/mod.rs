//! The events the server counts: one struct per event, built where it
//! happens, whose `emit()` records it (and logs it, where an operator wants
//! to read about it). Metrics with a label from a small fixed set keep one
//! handle per label value; metrics labelled by backend are *registered*
//! once per backend ([`StorageOperations`], [`StoredBytes`],
//! [`WriteQueueDepth`]) and emitted through the handle.
//!
//! Handles are resolved once while our recorder is installed ([`Cached`]);
//! with another recorder, or none, they are resolved at each use, since
//! that recorder may still change.

use ::metrics::{Counter, Gauge, counter, gauge};
use std::sync::OnceLock;

mod auth;
mod storage;
mod subscription;

pub(crate) use auth::AuthDenied;

pub(crate) use storage::{
    StorageCommits, StorageFailure, StorageOperation, StorageOperations, StoredBytes,
    WriteQueueDepth,
};
pub(crate) use subscription::{
    LeaseClaimed, LeasesExpired, LeasesHeld, SubscriptionAcked, WakeEventFailed, WakeEventWritten,
    WebhookDelivered, WebhookFailed, WebhookQueueFull,
};

use super::{installed, name};

/// A metric handle resolved once while our recorder is installed: a
/// `counter!`/`gauge!` lookup costs a hash and a registry probe, several
/// times per request otherwise.
pub(crate) struct Cached<H> {
    cell: OnceLock<H>,
    resolve: fn() -> H,
}

impl<H> Cached<H> {
    /// A handle `resolve` finds.
    pub(crate) const fn new(resolve: fn() -> H) -> Self {
        Self {
            cell: OnceLock::new(),
            resolve,
        }
    }

    /// Runs `record` on the handle.
    pub(crate) fn with(&self, record: impl FnOnce(&H)) {
        if installed().is_some() {
            record(self.cell.get_or_init(self.resolve));
        } else {
            record(&(self.resolve)());
        }
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

static STREAMS_CREATED: Cached<Counter> = Cached::new(|| counter!(name::STREAMS_CREATED_TOTAL));
static STREAMS_CLOSED: Cached<Counter> = Cached::new(|| counter!(name::STREAMS_CLOSED_TOTAL));
static STREAMS_DELETED: Cached<Counter> = Cached::new(|| counter!(name::STREAMS_DELETED_TOTAL));
static STREAMS_EXPIRED: Cached<Counter> = Cached::new(|| counter!(name::STREAMS_EXPIRED_TOTAL));
static BYTES_TRIMMED: Cached<Counter> = Cached::new(|| counter!(name::STORAGE_BYTES_TRIMMED_TOTAL));
static STREAMS: Cached<Gauge> = Cached::new(|| gauge!(name::STREAMS));
static APPENDS: Cached<Counter> = Cached::new(|| counter!(name::APPENDS_TOTAL));
static APPENDED_BYTES: Cached<Counter> = Cached::new(|| counter!(name::APPENDED_BYTES_TOTAL));
static PRODUCER_DUPLICATES: Cached<Counter> =
    Cached::new(|| counter!(name::PRODUCER_DUPLICATES_TOTAL));

/// A stream's creation was committed.
pub(crate) struct StreamCreated {
    /// It was created closed.
    pub closed: bool,
}

impl StreamCreated {
    pub(crate) fn emit(self) {
        STREAMS_CREATED.with(|c| c.increment(1));
        if self.closed {
            StreamClosed.emit();
        }
    }
}

/// A stream was closed.
pub(crate) struct StreamClosed;

impl StreamClosed {
    pub(crate) fn emit(self) {
        STREAMS_CLOSED.with(|c| c.increment(1));
    }
}

/// A client's `DELETE` was committed.
pub(crate) struct StreamDeleted;

impl StreamDeleted {
    pub(crate) fn emit(self) {
        STREAMS_DELETED.with(|c| c.increment(1));
    }
}

/// Streams whose TTL or expiry passed were reclaimed.
pub(crate) struct StreamsExpired {
    pub count: usize,
}

impl StreamsExpired {
    pub(crate) fn emit(self) {
        if self.count > 0 {
            STREAMS_EXPIRED.with(|c| c.increment(self.count as u64));
            tracing::debug!(reclaimed = self.count, "expired streams reclaimed");
        }
    }
}

/// Retention dropped chunks from the head of a stream.
pub(crate) struct BytesTrimmed {
    pub bytes: u64,
}

impl BytesTrimmed {
    pub(crate) fn emit(self) {
        BYTES_TRIMMED.with(|c| c.increment(self.bytes));
    }
}

/// Live streams came or went (deltas, not absolute values, so several
/// engines in one process add up).
pub(crate) struct LiveStreamsChanged {
    pub delta: f64,
}

impl LiveStreamsChanged {
    pub(crate) fn emit(self) {
        STREAMS.with(|g| g.increment(self.delta));
    }
}

/// An append wrote `bytes` of payload (`0` for a bare close).
pub(crate) struct AppendWritten {
    pub bytes: u64,
}

impl AppendWritten {
    pub(crate) fn emit(self) {
        APPENDS.with(|c| c.increment(1));
        if self.bytes > 0 {
            APPENDED_BYTES.with(|c| c.increment(self.bytes));
        }
    }
}

/// A producer's retry was answered as a duplicate.
pub(crate) struct ProducerDuplicate;

impl ProducerDuplicate {
    pub(crate) fn emit(self) {
        PRODUCER_DUPLICATES.with(|c| c.increment(1));
    }
}

/// Why a producer request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RejectReason {
    /// An epoch older than the producer's current one.
    StaleEpoch,
    /// A sequence number past the next expected one.
    SequenceGap,
    /// A new epoch that did not start at sequence 0.
    EpochSeq,
}

impl RejectReason {
    pub(crate) const ALL: [RejectReason; 3] = [
        RejectReason::StaleEpoch,
        RejectReason::SequenceGap,
        RejectReason::EpochSeq,
    ];

    /// The `reason` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectReason::StaleEpoch => "stale_epoch",
            RejectReason::SequenceGap => "sequence_gap",
            RejectReason::EpochSeq => "epoch_seq",
        }
    }
}

static REJECTIONS: [Cached<Counter>; 3] = [
    Cached::new(|| counter!(name::PRODUCER_REJECTIONS_TOTAL, "reason" => "stale_epoch")),
    Cached::new(|| counter!(name::PRODUCER_REJECTIONS_TOTAL, "reason" => "sequence_gap")),
    Cached::new(|| counter!(name::PRODUCER_REJECTIONS_TOTAL, "reason" => "epoch_seq")),
];

/// The producer rules refused a request.
pub(crate) struct ProducerRejected {
    pub reason: RejectReason,
}

impl ProducerRejected {
    pub(crate) fn emit(self) {
        REJECTIONS[self.reason as usize].with(|c| c.increment(1));
    }
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// How a read was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// A plain `GET` of stored data.
    CatchUp,
    /// `live=long-poll`.
    LongPoll,
    /// `live=sse`.
    Sse,
}

impl ReadMode {
    pub(crate) const ALL: [ReadMode; 3] = [ReadMode::CatchUp, ReadMode::LongPoll, ReadMode::Sse];

    /// The `mode` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReadMode::CatchUp => "catch_up",
            ReadMode::LongPoll => "long_poll",
            ReadMode::Sse => "sse",
        }
    }
}

static READS: [Cached<Counter>; 3] = [
    Cached::new(|| counter!(name::READS_TOTAL, "mode" => "catch_up")),
    Cached::new(|| counter!(name::READS_TOTAL, "mode" => "long_poll")),
    Cached::new(|| counter!(name::READS_TOTAL, "mode" => "sse")),
];
static READ_BYTES: [Cached<Counter>; 3] = [
    Cached::new(|| counter!(name::READ_BYTES_TOTAL, "mode" => "catch_up")),
    Cached::new(|| counter!(name::READ_BYTES_TOTAL, "mode" => "long_poll")),
    Cached::new(|| counter!(name::READ_BYTES_TOTAL, "mode" => "sse")),
];
static LIVE_READERS: [Cached<Gauge>; 2] = [
    Cached::new(|| gauge!(name::LIVE_READERS, "mode" => "long_poll")),
    Cached::new(|| gauge!(name::LIVE_READERS, "mode" => "sse")),
];
static SSE_EVENTS: Cached<Counter> = Cached::new(|| counter!(name::SSE_EVENTS_TOTAL));
static LONG_POLL_TIMEOUTS: Cached<Counter> =
    Cached::new(|| counter!(name::LONG_POLL_TIMEOUTS_TOTAL));

/// A read request was served in `mode`.
pub(crate) struct ReadServed {
    pub mode: ReadMode,
}

impl ReadServed {
    pub(crate) fn emit(self) {
        READS[self.mode as usize].with(|c| c.increment(1));
    }
}

/// Payload bytes were delivered to a reader.
pub(crate) struct ReadBytesSent {
    pub mode: ReadMode,
    pub bytes: usize,
}

impl ReadBytesSent {
    pub(crate) fn emit(self) {
        if self.bytes > 0 {
            READ_BYTES[self.mode as usize].with(|c| c.increment(self.bytes as u64));
        }
    }
}

/// SSE events (data and control) were written to a client.
pub(crate) struct SseEventsSent {
    pub count: usize,
}

impl SseEventsSent {
    pub(crate) fn emit(self) {
        if self.count > 0 {
            SSE_EVENTS.with(|c| c.increment(self.count as u64));
        }
    }
}

/// A long-poll ended without data.
pub(crate) struct LongPollTimedOut;

impl LongPollTimedOut {
    pub(crate) fn emit(self) {
        LONG_POLL_TIMEOUTS.with(|c| c.increment(1));
    }
}

/// Counts a live reader in `durable_streams_live_readers{mode}` while it
/// lives: created when a long-poll or SSE read starts, dropped when it ends
/// (answered, client gone, or server draining).
#[derive(Debug)]
pub(crate) struct LiveReader {
    slot: usize,
}

impl LiveReader {
    /// A long-poll (`LongPoll`) or SSE (any other mode) reader starts.
    pub(crate) fn start(mode: ReadMode) -> Self {
        let slot = usize::from(mode == ReadMode::Sse);
        LIVE_READERS[slot].with(|g| g.increment(1.0));
        Self { slot }
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        LIVE_READERS[self.slot].with(|g| g.decrement(1.0));
    }
}

/// `/readyz` turned ready or not.
pub(crate) struct ReadinessChanged {
    pub ready: bool,
}

impl ReadinessChanged {
    pub(crate) fn emit(self) {
        gauge!(name::READY).set(if self.ready { 1.0 } else { 0.0 });
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// A TLS handshake completed.
pub(crate) struct TlsHandshakeCompleted;

impl TlsHandshakeCompleted {
    pub(crate) fn emit(self) {
        counter!(name::TLS_HANDSHAKES_TOTAL).increment(1);
    }
}

/// A TLS handshake failed; `reason` is one of a small fixed set
/// (`no_client_certificate`, `bad_certificate`, `protocol`, `io`, …).
pub(crate) struct TlsHandshakeFailed {
    pub reason: &'static str,
}

impl TlsHandshakeFailed {
    pub(crate) fn emit(self) {
        counter!(name::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// A certificate is now served: loaded at start, or swapped in by a reload.
pub(crate) struct TlsCertificateServed {
    /// Its notAfter, in Unix seconds.
    pub not_after: i64,
    /// It replaced another one (a reload).
    pub reloaded: bool,
}

impl TlsCertificateServed {
    pub(crate) fn emit(self) {
        if self.reloaded {
            counter!(name::TLS_RELOADS_TOTAL, "outcome" => "success").increment(1);
        }
        gauge!(name::TLS_CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS).set(self.not_after as f64);
    }
}

/// A certificate reload was refused; the previous pair keeps serving.
pub(crate) struct TlsReloadFailed;

impl TlsReloadFailed {
    pub(crate) fn emit(self) {
        counter!(name::TLS_RELOADS_TOTAL, "outcome" => "failure").increment(1);
    }
}

// ---------------------------------------------------------------------------
// OTLP export
// ---------------------------------------------------------------------------

/// A batch of spans was exported.
pub(crate) struct OtlpSpansExported {
    pub count: usize,
}

impl OtlpSpansExported {
    pub(crate) fn emit(self) {
        counter!(name::OTLP_SPANS_EXPORTED_TOTAL).increment(self.count as u64);
    }
}

/// A finished span was dropped: the export queue was full.
pub(crate) struct OtlpSpanDropped;

impl OtlpSpanDropped {
    pub(crate) fn emit(self) {
        counter!(name::OTLP_SPANS_DROPPED_TOTAL).increment(1);
    }
}

/// An export call failed.
pub(crate) struct OtlpExportFailed;

impl OtlpExportFailed {
    pub(crate) fn emit(self) {
        counter!(name::OTLP_EXPORT_FAILURES_TOTAL).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn label_sets_are_the_documented_ones() {
        let modes: Vec<&str> = ReadMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(modes, ["catch_up", "long_poll", "sse"]);
        let reasons: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, ["stale_epoch", "sequence_gap", "epoch_seq"]);
        let operations: Vec<&str> = StorageOperation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(operations, ["create", "append", "read", "delete"]);
        let kinds: Vec<&str> = StorageFailure::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["full", "io", "corrupt", "unavailable"]);
    }

    #[test]
    fn events_record_without_a_recorder() {
        // Without a recorder every event is a no-op, never a panic.
        StreamCreated { closed: true }.emit();
        StreamsExpired { count: 2 }.emit();
        ProducerRejected {
            reason: RejectReason::SequenceGap,
        }
        .emit();
        let reader = LiveReader::start(ReadMode::Sse);
        drop(reader);
        StorageOperations::register("memory").emit(
            StorageOperation::Append,
            Duration::from_millis(1),
            Some(StorageFailure::Io),
        );
    }
}
