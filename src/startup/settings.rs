//! The one place the configuration tree becomes each layer's own settings:
//! the engine's limits, the HTTP surface's settings, the subscription
//! manager's, the drain timing. Layers below never see the whole
//! [`Config`]; TLS and the proxy policy take only their own section.

use std::time::Duration;

use crate::config::{Config, LimitsConfig};
use crate::engine::EngineLimits;
use crate::http::{Cors, HttpSettings, normalise_base_path};
use crate::protocol::name::NameLimits;
use crate::proxy::ProxyPolicy;
use crate::server::DrainTiming;
use crate::subscriptions::{SubscriptionSettings, ssrf};

impl EngineLimits {
    /// The limits a [`Config`] sets.
    pub fn from_config(config: &Config) -> Self {
        engine_limits(&config.limits)
    }
}

/// The engine's limits from `[limits]`.
pub(crate) fn engine_limits(limits: &LimitsConfig) -> EngineLimits {
    EngineLimits {
        max_stream_bytes: limits.max_stream_bytes,
        max_read_bytes: limits.max_read_bytes.max(1),
    }
}

/// Stream name rules from `[limits]`.
fn name_limits(limits: &LimitsConfig) -> NameLimits {
    NameLimits {
        max_bytes: limits.max_stream_name_bytes,
        max_segments: limits.max_stream_name_segments,
    }
}

/// How often expired streams are reclaimed.
pub(crate) fn sweep_interval(config: &Config) -> Duration {
    Duration::from_secs(config.storage.expiry_sweep_interval_secs.max(1))
}

/// The settings of the HTTP surface.
pub(crate) fn http(config: &Config) -> HttpSettings {
    let connection = &config.transport.connection;
    HttpSettings {
        base_path: normalise_base_path(&config.http.stream_base_path),
        max_body_bytes: usize::try_from(config.limits.max_request_body_bytes).unwrap_or(usize::MAX),
        long_poll_timeout: Duration::from_secs(connection.long_poll_timeout_secs),
        sse_reconnect_interval: (connection.sse_reconnect_interval_secs > 0)
            .then(|| Duration::from_secs(connection.sse_reconnect_interval_secs)),
        sse_keepalive_interval: Duration::from_secs(15),
        name_limits: name_limits(&config.limits),
        cors: Cors::parse(&config.http.cors_origins),
        metrics_path: config.observability.metrics.path.clone(),
        proxy: ProxyPolicy::from_config(&config.proxy),
    }
}

/// The subscription manager's settings from `[subscriptions]`.
pub(crate) fn subscriptions(config: &Config) -> SubscriptionSettings {
    let s = &config.subscriptions;
    SubscriptionSettings {
        signing_key_path: s
            .signing_key_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty()),
        policy: ssrf::TargetPolicy {
            allow_loopback_http: s.allow_loopback_http,
            allow_private_targets: s.allow_private_targets,
        },
        default_lease_ttl_ms: s.default_lease_ttl_ms,
        min_lease_ttl_ms: s.min_lease_ttl_ms,
        max_lease_ttl_ms: s.max_lease_ttl_ms,
        retry_initial: Duration::from_millis(s.retry_initial_ms.max(1)),
        retry_max: Duration::from_millis(s.retry_max_ms.max(s.retry_initial_ms).max(1)),
        delivery_timeout: Duration::from_millis(s.delivery_timeout_ms.max(1)),
        max_queued_deliveries: s.max_queued_deliveries.max(1),
        max_concurrent_deliveries: s.max_concurrent_deliveries.max(1),
        max_subscriptions: s.max_subscriptions.max(1),
        name_limits: name_limits(&config.limits),
        tick_interval: Duration::from_millis(100),
        max_body_bytes: 1 << 20,
    }
}

/// How the server drains after a shutdown signal.
pub(crate) fn drain_timing(config: &Config) -> DrainTiming {
    DrainTiming {
        delay: Duration::from_secs(config.server.shutdown_delay_secs),
        timeout: Duration::from_secs(config.server.drain_timeout_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_configuration_and_clamp_zeroes() {
        let mut config = Config::default();
        config.limits.max_read_bytes = 0;
        config.storage.expiry_sweep_interval_secs = 0;
        config.http.stream_base_path = "api/streams/".into();
        config.transport.connection.sse_reconnect_interval_secs = 0;
        config.subscriptions.retry_initial_ms = 5_000;
        config.subscriptions.retry_max_ms = 1_000;
        assert_eq!(engine_limits(&config.limits).max_read_bytes, 1);
        assert_eq!(sweep_interval(&config), Duration::from_secs(1));
        let http = http(&config);
        assert_eq!(http.base_path, "/api/streams");
        assert_eq!(http.sse_reconnect_interval, None);
        let subs = subscriptions(&config);
        assert_eq!(subs.retry_max, Duration::from_secs(5));
        assert_eq!(
            drain_timing(&config).timeout,
            Duration::from_secs(config.server.drain_timeout_secs)
        );
    }
}
