//! Subscription events: acks, claims, leases, wake events and webhook
//! deliveries.

use std::time::Duration;

use ::metrics::{counter, gauge, histogram};

use crate::metrics::name;

/// A callback (`kind` `webhook`) or an ack (`pull-wake`) was accepted.
pub(crate) struct SubscriptionAcked {
    pub kind: &'static str,
}

impl SubscriptionAcked {
    pub(crate) fn emit(self) {
        counter!(name::SUBSCRIPTION_ACKS_TOTAL, "kind" => self.kind).increment(1);
    }
}

/// A pull-wake worker claimed a lease.
pub(crate) struct LeaseClaimed;

impl LeaseClaimed {
    pub(crate) fn emit(self) {
        counter!(name::SUBSCRIPTION_CLAIMS_TOTAL).increment(1);
    }
}

/// `count` leases ran out.
pub(crate) struct LeasesExpired {
    pub count: usize,
}

impl LeasesExpired {
    pub(crate) fn emit(self) {
        if self.count > 0 {
            counter!(name::SUBSCRIPTION_LEASE_EXPIRIES_TOTAL).increment(self.count as u64);
        }
    }
}

/// `active` leases are held now.
pub(crate) struct LeasesHeld {
    pub active: usize,
}

impl LeasesHeld {
    pub(crate) fn emit(self) {
        gauge!(name::SUBSCRIPTION_ACTIVE_LEASES).set(self.active as f64);
    }
}

/// A pull-wake event was appended to its wake stream.
pub(crate) struct WakeEventWritten;

impl WakeEventWritten {
    pub(crate) fn emit(self) {
        counter!(name::SUBSCRIPTION_WAKE_EVENTS_TOTAL, "outcome" => "written").increment(1);
    }
}

/// A pull-wake event could not be appended; the ticker tries again.
pub(crate) struct WakeEventFailed<'a> {
    pub wake_stream: &'a str,
    pub error: &'a str,
}

impl WakeEventFailed<'_> {
    pub(crate) fn emit(self) {
        counter!(name::SUBSCRIPTION_WAKE_EVENTS_TOTAL, "outcome" => "failed").increment(1);
        tracing::warn!(
            wake_stream = %self.wake_stream,
            error = %self.error,
            "cannot append a wake event; retrying"
        );
    }
}

/// A webhook receiver answered `2xx` after `elapsed`.
pub(crate) struct WebhookDelivered {
    pub elapsed: Duration,
}

impl WebhookDelivered {
    pub(crate) fn emit(self) {
        histogram!(name::WEBHOOK_DELIVERY_DURATION_SECONDS).record(self.elapsed.as_secs_f64());
        counter!(name::WEBHOOK_DELIVERIES_TOTAL, "outcome" => "success").increment(1);
    }
}

/// A webhook delivery failed after `elapsed`; it is retried in `retry_in`.
pub(crate) struct WebhookFailed<'a> {
    pub subscription: &'a str,
    pub attempt: u32,
    pub elapsed: Duration,
    pub retry_in: Duration,
    pub error: &'a str,
}

impl WebhookFailed<'_> {
    pub(crate) fn emit(self) {
        histogram!(name::WEBHOOK_DELIVERY_DURATION_SECONDS).record(self.elapsed.as_secs_f64());
        counter!(name::WEBHOOK_DELIVERIES_TOTAL, "outcome" => "failure").increment(1);
        counter!(name::WEBHOOK_RETRIES_TOTAL).increment(1);
        tracing::warn!(
            subscription = %self.subscription,
            attempt = self.attempt,
            retry_in_ms = self.retry_in.as_millis() as u64,
            error = %self.error,
            "webhook delivery failed; retrying"
        );
    }
}

/// A wake could not be queued for delivery: the queue is full, and the
/// ticker offers it again.
pub(crate) struct WebhookQueueFull;

impl WebhookQueueFull {
    pub(crate) fn emit(self) {
        counter!(name::WEBHOOK_DELIVERIES_TOTAL, "outcome" => "queue_full").increment(1);
    }
}
