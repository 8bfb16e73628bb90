//! Consumer subscriptions: the reserved `{base}/__ds/` APIs (spec §6–7)
//! through which workers are woken when streams matching a pattern get data.
//!
//! # Layout
//! - [`pattern`]: glob patterns (`*` one segment, `**` many).
//! - [`model`]: the normalised configuration, the persisted state, views.
//! - [`manager`]: the state machine (links, wakes, generations, leases) and
//!   its persistence in the store's metadata area.
//! - [`webhook`]: signed delivery off the request path, with retries.
//! - [`signing`]: the Ed25519 key, the JWKS and `Webhook-Signature`.
//! - [`ssrf`]: which webhook targets are allowed.
//! - [`http`]: the handlers of the `__ds` routes.
//! - [`error`]: [`SubscriptionError`] and its mapping to problem responses.
//!
//! Enabled by `subscriptions.enabled`; without it `__ds` paths answer `404`.

pub mod error;
pub mod http;
pub mod manager;
pub mod model;
pub mod pattern;
pub mod signing;
pub mod ssrf;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

pub use manager::Subscriptions;

use crate::protocol::name::NameLimits;

/// Settings of the subscription manager, from `[subscriptions]`.
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    /// Where the signing key comes from (unset: generated and stored).
    pub signing_key_path: Option<PathBuf>,
    /// SSRF rules.
    pub policy: ssrf::TargetPolicy,
    /// Default lease.
    pub default_lease_ttl_ms: u64,
    /// Shortest lease.
    pub min_lease_ttl_ms: u64,
    /// Longest lease.
    pub max_lease_ttl_ms: u64,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Time limit of one webhook request.
    pub delivery_timeout: Duration,
    /// Bound of the delivery queue.
    pub max_queued_deliveries: usize,
    /// Webhook requests in flight at once.
    pub max_concurrent_deliveries: usize,
    /// Most subscriptions.
    pub max_subscriptions: usize,
    /// Stream name rules.
    pub name_limits: NameLimits,
    /// How often leases are checked for expiry.
    pub tick_interval: Duration,
    /// Longest request body of the `__ds` APIs.
    pub max_body_bytes: usize,
}

impl SubscriptionSettings {
    /// The rules used to normalise a `PUT` body.
    pub fn rules(&self) -> model::Rules {
        model::Rules {
            default_lease_ttl_ms: self.default_lease_ttl_ms,
            min_lease_ttl_ms: self.min_lease_ttl_ms,
            max_lease_ttl_ms: self.max_lease_ttl_ms,
            name_limits: self.name_limits,
        }
    }
}
