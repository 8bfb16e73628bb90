//! What every metric means (its `# HELP` line and unit), and the series
//! that exist from the start so rates and alerts see zero, not nothing.

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};

use super::event::{ReadMode, RejectReason};
use super::name;

/// Describes every metric to the recorder.
pub(super) fn describe() {
    use name::*;
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, route template and status code (499: the client left first)."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Time from request to response head, by method and route; long-polls wait up to their timeout, SSE counts until the stream starts."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        "Requests whose response head is not sent yet (open SSE streams are in durable_streams_live_readers instead)."
    );
    describe_counter!(
        APPENDS_TOTAL,
        "Appends that wrote data or closed a stream (producer duplicates excluded)."
    );
    describe_counter!(
        APPENDED_BYTES_TOTAL,
        ::metrics::Unit::Bytes,
        "Payload bytes written by appends."
    );
    describe_counter!(
        READS_TOTAL,
        "Read requests by mode (catch_up, long_poll, sse)."
    );
    describe_counter!(
        READ_BYTES_TOTAL,
        ::metrics::Unit::Bytes,
        "Payload bytes delivered to readers, by mode."
    );
    describe_counter!(STREAMS_CREATED_TOTAL, "Streams created.");
    describe_counter!(
        AUTH_DENIED_TOTAL,
        "Requests refused by access control (401 or 403), by reason."
    );
    describe_counter!(STREAMS_DELETED_TOTAL, "Streams deleted by a client DELETE.");
    describe_counter!(STREAMS_CLOSED_TOTAL, "Streams closed.");
    describe_counter!(
        STREAMS_EXPIRED_TOTAL,
        "Streams reclaimed because their TTL or expiry time passed."
    );
    describe_counter!(
        PRODUCER_DUPLICATES_TOTAL,
        "Producer retries recognised as duplicates and acknowledged without writing."
    );
    describe_counter!(
        PRODUCER_REJECTIONS_TOTAL,
        "Producer requests refused, by reason (stale_epoch, sequence_gap, epoch_seq)."
    );
    describe_gauge!(STREAMS, "Live streams.");
    describe_gauge!(
        LIVE_READERS,
        "Connected live readers, by mode (sse, long_poll)."
    );
    describe_counter!(SSE_EVENTS_TOTAL, "SSE events sent, data and control.");
    describe_counter!(
        LONG_POLL_TIMEOUTS_TOTAL,
        "Long-polls answered 204 because no data arrived before the timeout."
    );
    describe_histogram!(
        STORAGE_OPERATION_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Storage calls until acknowledged, by backend and operation (create, append, read, delete)."
    );
    describe_histogram!(
        STORAGE_COMMIT_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "One group commit: the write and its fsync (file backends) or one redb transaction (acid)."
    );
    describe_histogram!(
        STORAGE_COMMIT_BATCH_SIZE,
        "Mutations committed together in one group commit."
    );
    describe_gauge!(
        STORAGE_WRITE_QUEUE_DEPTH,
        "Mutations waiting for the storage writer thread."
    );
    describe_counter!(
        STORAGE_ERRORS_TOTAL,
        "Failed storage operations, by backend and kind (full, io, corrupt, unavailable)."
    );
    describe_gauge!(
        STORAGE_BYTES,
        ::metrics::Unit::Bytes,
        "Payload bytes stored, including streams kept only for their forks."
    );
    describe_counter!(
        STORAGE_BYTES_TRIMMED_TOTAL,
        ::metrics::Unit::Bytes,
        "Payload bytes retention dropped from the heads of streams (storage.retention)."
    );
    describe_counter!(TLS_HANDSHAKES_TOTAL, "Completed TLS handshakes.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "Failed TLS handshakes, by reason."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        "Certificate reloads, by outcome (success, failure)."
    );
    describe_gauge!(
        TLS_CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS,
        ::metrics::Unit::Seconds,
        "Unix time at which the serving certificate expires."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        "Webhook delivery attempts, by outcome (success, failure, queue_full)."
    );
    describe_counter!(WEBHOOK_RETRIES_TOTAL, "Webhook delivery retries scheduled.");
    describe_histogram!(
        WEBHOOK_DELIVERY_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Duration of webhook requests."
    );
    describe_gauge!(
        SUBSCRIPTION_ACTIVE_LEASES,
        "Subscription leases held: webhook wakes awaiting callbacks and pull-wake claims."
    );
    describe_counter!(
        SUBSCRIPTION_LEASE_EXPIRIES_TOTAL,
        "Subscription leases that ran out."
    );
    describe_counter!(SUBSCRIPTION_CLAIMS_TOTAL, "Pull-wake claims granted.");
    describe_counter!(
        SUBSCRIPTION_ACKS_TOTAL,
        "Accepted subscription callbacks and acks, by kind."
    );
    describe_counter!(
        SUBSCRIPTION_WAKE_EVENTS_TOTAL,
        "Pull-wake events appended to wake streams, by outcome (written, failed)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the version and git commit of the running binary."
    );
    describe_gauge!(READY, "1 while /readyz answers 200, else 0.");
    describe_counter!(
        OTLP_SPANS_EXPORTED_TOTAL,
        "Spans handed to the OTLP exporter."
    );
    describe_counter!(
        OTLP_SPANS_DROPPED_TOTAL,
        "Spans dropped because the OTLP export queue was full (collector slow or unreachable)."
    );
    describe_counter!(OTLP_EXPORT_FAILURES_TOTAL, "OTLP export calls that failed.");
}

/// Series that should exist from the start, so rates and alerts see zero
/// rather than nothing.
pub(super) fn register_defaults() {
    use name::*;
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => crate::BUILD_COMMIT)
        .set(1.0);
    for metric in [
        APPENDS_TOTAL,
        APPENDED_BYTES_TOTAL,
        STREAMS_CREATED_TOTAL,
        STREAMS_DELETED_TOTAL,
        STREAMS_CLOSED_TOTAL,
        STREAMS_EXPIRED_TOTAL,
        STORAGE_BYTES_TRIMMED_TOTAL,
        PRODUCER_DUPLICATES_TOTAL,
        SSE_EVENTS_TOTAL,
        LONG_POLL_TIMEOUTS_TOTAL,
    ] {
        counter!(metric).increment(0);
    }
    gauge!(HTTP_REQUESTS_IN_FLIGHT).increment(0.0);
    gauge!(STREAMS).increment(0.0);
    for mode in ReadMode::ALL {
        counter!(READS_TOTAL, "mode" => mode.as_str()).increment(0);
        counter!(READ_BYTES_TOTAL, "mode" => mode.as_str()).increment(0);
    }
    for mode in [ReadMode::LongPoll, ReadMode::Sse] {
        gauge!(LIVE_READERS, "mode" => mode.as_str()).increment(0.0);
    }
    for reason in RejectReason::ALL {
        counter!(PRODUCER_REJECTIONS_TOTAL, "reason" => reason.as_str()).increment(0);
    }
}
