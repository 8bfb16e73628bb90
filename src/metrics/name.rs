//! Metric names. Renaming one breaks dashboards and alerts: add, never
//! rename.

/// Counter `{method, route, status}`: HTTP requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "durable_streams_http_requests_total";
/// Histogram `{method, route}`: time until the response head.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "durable_streams_http_request_duration_seconds";
/// Gauge: requests whose response head is not sent yet.
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "durable_streams_http_requests_in_flight";

/// Counter: appends that wrote (duplicates excluded).
pub const APPENDS_TOTAL: &str = "durable_streams_appends_total";
/// Counter: payload bytes written by appends.
pub const APPENDED_BYTES_TOTAL: &str = "durable_streams_appended_bytes_total";
/// Counter `{mode}`: read requests.
pub const READS_TOTAL: &str = "durable_streams_reads_total";
/// Counter `{mode}`: payload bytes delivered to readers.
pub const READ_BYTES_TOTAL: &str = "durable_streams_read_bytes_total";
/// Counter: streams created.
pub const STREAMS_CREATED_TOTAL: &str = "durable_streams_streams_created_total";
/// Counter: streams deleted by clients.
pub const STREAMS_DELETED_TOTAL: &str = "durable_streams_streams_deleted_total";
/// Counter: streams closed.
pub const STREAMS_CLOSED_TOTAL: &str = "durable_streams_streams_closed_total";
/// Counter: streams reclaimed because their TTL or expiry passed.
pub const STREAMS_EXPIRED_TOTAL: &str = "durable_streams_streams_expired_total";
/// Counter: producer retries answered as duplicates.
pub const PRODUCER_DUPLICATES_TOTAL: &str = "durable_streams_producer_duplicates_total";
/// Counter `{reason}`: producer requests refused.
pub const PRODUCER_REJECTIONS_TOTAL: &str = "durable_streams_producer_rejections_total";
/// Gauge: live streams.
pub const STREAMS: &str = "durable_streams_streams";
/// Gauge `{mode}`: connected live readers.
pub const LIVE_READERS: &str = "durable_streams_live_readers";
/// Counter: SSE events sent (data and control).
pub const SSE_EVENTS_TOTAL: &str = "durable_streams_sse_events_total";
/// Counter: long-polls answered `204` because no data came in time.
pub const LONG_POLL_TIMEOUTS_TOTAL: &str = "durable_streams_long_poll_timeouts_total";

/// Histogram `{backend, operation}`: storage call until acknowledgement.
pub const STORAGE_OPERATION_DURATION_SECONDS: &str =
    "durable_streams_storage_operation_duration_seconds";
/// Histogram `{backend}`: one group commit (write + fsync, or one redb transaction).
pub const STORAGE_COMMIT_DURATION_SECONDS: &str = "durable_streams_storage_commit_duration_seconds";
/// Histogram `{backend}`: mutations per group commit.
pub const STORAGE_COMMIT_BATCH_SIZE: &str = "durable_streams_storage_commit_batch_size";
/// Gauge `{backend}`: mutations queued for the writer thread.
pub const STORAGE_WRITE_QUEUE_DEPTH: &str = "durable_streams_storage_write_queue_depth";
/// Counter `{backend, kind}`: failed storage operations.
pub const STORAGE_ERRORS_TOTAL: &str = "durable_streams_storage_errors_total";
/// Gauge `{backend}`: payload bytes stored.
pub const STORAGE_BYTES: &str = "durable_streams_storage_bytes";
/// Counter: payload bytes retention dropped from the heads of streams.
pub const STORAGE_BYTES_TRIMMED_TOTAL: &str = "durable_streams_storage_bytes_trimmed_total";

/// Counter: completed TLS handshakes.
pub const TLS_HANDSHAKES_TOTAL: &str = "durable_streams_tls_handshakes_total";
/// Counter `{reason}`: failed TLS handshakes.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "durable_streams_tls_handshake_failures_total";
/// Counter `{outcome}`: certificate reloads.
pub const TLS_RELOADS_TOTAL: &str = "durable_streams_tls_reloads_total";
/// Gauge: Unix seconds of the serving certificate's notAfter.
pub const TLS_CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS: &str =
    "durable_streams_tls_certificate_not_after_timestamp_seconds";

/// Counter `{outcome}` (`success`, `failure`, `queue_full`): webhook
/// delivery attempts.
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "durable_streams_webhook_deliveries_total";
/// Counter: webhook delivery retries scheduled.
pub const WEBHOOK_RETRIES_TOTAL: &str = "durable_streams_webhook_retries_total";
/// Histogram: duration of webhook requests.
pub const WEBHOOK_DELIVERY_DURATION_SECONDS: &str =
    "durable_streams_webhook_delivery_duration_seconds";
/// Gauge: subscription leases held (webhook wakes awaiting callbacks,
/// pull-wake claims).
pub const SUBSCRIPTION_ACTIVE_LEASES: &str = "durable_streams_subscription_active_leases";
/// Counter: subscription leases that ran out.
pub const SUBSCRIPTION_LEASE_EXPIRIES_TOTAL: &str =
    "durable_streams_subscription_lease_expiries_total";
/// Counter: pull-wake claims granted.
pub const SUBSCRIPTION_CLAIMS_TOTAL: &str = "durable_streams_subscription_claims_total";
/// Counter `{kind}`: accepted callbacks and acks.
pub const SUBSCRIPTION_ACKS_TOTAL: &str = "durable_streams_subscription_acks_total";
/// Counter `{outcome}` (`written`, `failed`): pull-wake events appended.
pub const SUBSCRIPTION_WAKE_EVENTS_TOTAL: &str = "durable_streams_subscription_wake_events_total";

/// Counter `{reason}`: requests refused by access control (`401`/`403`),
/// by the refusal's reason (`expired`, `not_granted`, …).
pub const AUTH_DENIED_TOTAL: &str = "durable_streams_auth_denied_total";

/// Gauge `{version, commit}` = 1.
pub const BUILD_INFO: &str = "durable_streams_build_info";
/// Gauge: resident memory.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "durable_streams_process_resident_memory_bytes";
/// Gauge: open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "durable_streams_process_open_fds";
/// Gauge: the soft limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "durable_streams_process_max_fds";
/// Counter: user and system CPU time.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "durable_streams_process_cpu_seconds_total";
/// Gauge: Unix seconds the process started at.
pub const PROCESS_START_TIME_SECONDS: &str = "durable_streams_process_start_time_seconds";
/// Gauge: 1 while `/readyz` answers `200`.
pub const READY: &str = "durable_streams_ready";

/// Counter: spans handed to the OTLP exporter.
pub const OTLP_SPANS_EXPORTED_TOTAL: &str = "durable_streams_otlp_spans_exported_total";
/// Counter: spans dropped because the export queue was full.
pub const OTLP_SPANS_DROPPED_TOTAL: &str = "durable_streams_otlp_spans_dropped_total";
/// Counter: failed OTLP export calls.
pub const OTLP_EXPORT_FAILURES_TOTAL: &str = "durable_streams_otlp_export_failures_total";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_namespaced_and_counters_end_in_total() {
        for counter in [
            HTTP_REQUESTS_TOTAL,
            APPENDS_TOTAL,
            APPENDED_BYTES_TOTAL,
            READS_TOTAL,
            READ_BYTES_TOTAL,
            STREAMS_CREATED_TOTAL,
            STREAMS_DELETED_TOTAL,
            STREAMS_CLOSED_TOTAL,
            PRODUCER_DUPLICATES_TOTAL,
            PRODUCER_REJECTIONS_TOTAL,
            SSE_EVENTS_TOTAL,
            LONG_POLL_TIMEOUTS_TOTAL,
            STORAGE_ERRORS_TOTAL,
            STORAGE_BYTES_TRIMMED_TOTAL,
            TLS_HANDSHAKES_TOTAL,
            TLS_HANDSHAKE_FAILURES_TOTAL,
            TLS_RELOADS_TOTAL,
            PROCESS_CPU_SECONDS_TOTAL,
        ] {
            assert!(counter.starts_with("durable_streams_"), "{counter}");
            assert!(counter.ends_with("_total"), "{counter}");
        }
    }
}
