//! The subscription data: the normalised configuration a `PUT` declares,
//! the state persisted in the store's metadata area, and the JSON views the
//! APIs answer with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::SubscriptionError;
use super::pattern::Pattern;
use crate::protocol::name::{self, NameLimits};

/// Version of the persisted subscription record.
pub const STATE_VERSION: u32 = 1;
/// Most explicit streams one subscription may list.
pub const MAX_EXPLICIT_STREAMS: usize = 10_000;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

/// How a subscription wakes its consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A signed POST to a webhook URL.
    #[serde(rename = "webhook")]
    Webhook,
    /// An event appended to a wake stream; workers claim leases.
    #[serde(rename = "pull-wake")]
    PullWake,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::PullWake => "pull-wake",
        }
    }
}

/// The configuration as declared, normalised so equal intents compare
/// equal (sorted, de-duplicated streams; defaults applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionConfig {
    /// Webhook or pull-wake.
    pub kind: Kind,
    /// Glob pattern of stream names.
    pub pattern: Option<String>,
    /// Explicitly listed stream names.
    pub streams: Vec<String>,
    /// Webhook target.
    pub webhook_url: Option<String>,
    /// Pull-wake: the stream wake events are appended to.
    pub wake_stream: Option<String>,
    /// Lease length in milliseconds.
    pub lease_ttl_ms: u64,
    /// Free text.
    pub description: Option<String>,
}

/// The `PUT` body.
#[derive(Debug, Deserialize)]
pub struct PutBody {
    /// `webhook` or `pull-wake`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Glob pattern.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Explicit streams.
    #[serde(default)]
    pub streams: Option<Vec<String>>,
    /// `{ "url": … }`.
    #[serde(default)]
    pub webhook: Option<WebhookBody>,
    /// Pull-wake stream.
    #[serde(default)]
    pub wake_stream: Option<String>,
    /// Lease length.
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// The `webhook` member of a `PUT` body.
#[derive(Debug, Deserialize)]
pub struct WebhookBody {
    /// Target URL.
    pub url: String,
}

/// Lease bounds and name rules used to normalise a body.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Default lease.
    pub default_lease_ttl_ms: u64,
    /// Shortest lease.
    pub min_lease_ttl_ms: u64,
    /// Longest lease.
    pub max_lease_ttl_ms: u64,
    /// Stream name limits.
    pub name_limits: NameLimits,
}

/// Checks a stream name as used in subscriptions.
///
/// # Errors
/// [`SubscriptionError::InvalidStream`] when it is not a valid stream name or
/// lies in the reserved `__ds` space.
pub fn check_stream_name(raw: &str, limits: NameLimits) -> Result<(), SubscriptionError> {
    if raw == "__ds" || raw.starts_with("__ds/") || name::validate(raw, limits).is_err() {
        return Err(SubscriptionError::InvalidStream(raw.to_owned()));
    }
    Ok(())
}

/// Checks a subscription id.
///
/// # Errors
/// [`SubscriptionError::InvalidId`] unless it is 1 to `max_bytes` (the
/// configured `limits.max_identifier_bytes`) of letters, digits, `-`, `_`,
/// `.`, `~` or `:`.
pub fn check_id(id: &str, max_bytes: usize) -> Result<(), SubscriptionError> {
    let ok = !id.is_empty()
        && id.len() <= max_bytes
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SubscriptionError::InvalidId(format!(
            "ids are 1 to {max_bytes} letters, digits or -_.~: (limits.max_identifier_bytes)"
        )))
    }
}

impl PutBody {
    /// Validates and normalises the body (the webhook URL is checked
    /// separately, against the SSRF rules).
    ///
    /// # Errors
    /// A [`SubscriptionError`] naming the first problem.
    pub fn normalise(self, rules: Rules) -> Result<SubscriptionConfig, SubscriptionError> {
        let invalid = |why: &str| SubscriptionError::InvalidRequest(why.to_owned());
        let kind = match self.kind.as_str() {
            "webhook" => Kind::Webhook,
            "pull-wake" => Kind::PullWake,
            _ => return Err(invalid("type must be \"webhook\" or \"pull-wake\"")),
        };
        if let Some(pattern) = &self.pattern {
            Pattern::parse(pattern)?;
        }
        let mut streams = self.streams.unwrap_or_default();
        if streams.len() > MAX_EXPLICIT_STREAMS {
            return Err(invalid("too many streams"));
        }
        for stream in &streams {
            check_stream_name(stream, rules.name_limits)?;
        }
        streams.sort();
        streams.dedup();
        if self.pattern.is_none() && streams.is_empty() {
            return Err(invalid("a subscription needs a pattern or streams"));
        }
        let lease_ttl_ms = self.lease_ttl_ms.unwrap_or(rules.default_lease_ttl_ms);
        if !(rules.min_lease_ttl_ms..=rules.max_lease_ttl_ms).contains(&lease_ttl_ms) {
            return Err(SubscriptionError::InvalidLease {
                min: rules.min_lease_ttl_ms,
                max: rules.max_lease_ttl_ms,
            });
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
        {
            return Err(invalid("description is too long"));
        }
        let (webhook_url, wake_stream) = match kind {
            Kind::Webhook => {
                if self.wake_stream.is_some() {
                    return Err(invalid("wake_stream belongs to pull-wake subscriptions"));
                }
                let url = self
                    .webhook
                    .map(|w| w.url)
                    .ok_or_else(|| invalid("webhook subscriptions need webhook.url"))?;
                (Some(url), None)
            }
            Kind::PullWake => {
                if self.webhook.is_some() {
                    return Err(invalid("webhook belongs to webhook subscriptions"));
                }
                let wake = self
                    .wake_stream
                    .ok_or_else(|| invalid("pull-wake subscriptions need wake_stream"))?;
                check_stream_name(&wake, rules.name_limits)?;
                (None, Some(wake))
            }
        };
        Ok(SubscriptionConfig {
            kind,
            pattern: self.pattern,
            streams,
            webhook_url,
            wake_stream,
            lease_ttl_ms,
            description: self.description,
        })
    }
}

/// How a stream came to be linked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Listed in `streams` or added by `POST …/streams`.
    pub explicit: bool,
    /// Matched by the pattern.
    pub glob: bool,
    /// Everything before this position is acknowledged.
    pub acked: u64,
}

/// A wake in progress: a webhook notification (sent or being sent) or a
/// pull-wake lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wake {
    /// Names this wake.
    pub wake_id: String,
    /// The subscription's generation when the wake began (fencing).
    pub generation: u64,
    /// Bearer token for callbacks, acks and releases of this wake.
    pub token: String,
    /// Pull-wake: the worker holding the lease.
    pub holder: Option<String>,
    /// When the lease ends (Unix ms); unset while a webhook is undelivered.
    pub lease_expires_at_ms: Option<i64>,
    /// The streams and tails the wake was about.
    pub snapshot: Vec<(String, u64)>,
}

/// A pull-wake event appended (or to be appended) to the wake stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeEvent {
    /// The wake id a claim will take over.
    pub wake_id: String,
    /// Whether the append succeeded.
    pub written: bool,
}

/// Everything persisted about one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The id.
    pub id: String,
    /// Full-path prefix of the streams it watches (`/v1/stream/`).
    pub root: String,
    /// Absolute URL of that prefix, for callback and JWKS URLs.
    pub public_root: String,
    /// The declared configuration.
    pub config: SubscriptionConfig,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Bumped by every wake (webhook) or claim (pull-wake).
    pub generation: u64,
    /// Linked streams by name.
    pub links: BTreeMap<String, Link>,
    /// The wake in progress.
    pub wake: Option<Wake>,
    /// Pull-wake: the unclaimed wake event.
    pub wake_event: Option<WakeEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        default_lease_ttl_ms: 30_000,
        min_lease_ttl_ms: 1_000,
        max_lease_ttl_ms: 600_000,
        name_limits: NameLimits {
            max_bytes: 1024,
            max_segments: 8,
        },
    };

    fn body(json: serde_json::Value) -> Result<SubscriptionConfig, SubscriptionError> {
        serde_json::from_value::<PutBody>(json)
            .map_err(|e| SubscriptionError::InvalidRequest(e.to_string()))?
            .normalise(RULES)
    }

    #[test]
    fn normalising_sorts_streams_and_applies_defaults() {
        let a = body(serde_json::json!({
            "type": "webhook", "streams": ["b", "a", "b"], "webhook": {"url": "https://x/"}
        }))
        .expect("valid");
        assert_eq!(a.streams, ["a", "b"]);
        assert_eq!(a.lease_ttl_ms, 30_000);
        let b = body(serde_json::json!({
            "type": "webhook", "streams": ["a", "b"], "webhook": {"url": "https://x/"},
            "lease_ttl_ms": 30000
        }))
        .expect("valid");
        assert_eq!(a, b);
    }

    #[test]
    fn lease_bounds_are_enforced() {
        for ttl in [999u64, 600_001] {
            assert!(matches!(
                body(serde_json::json!({
                    "type": "pull-wake", "pattern": "a/*", "wake_stream": "w", "lease_ttl_ms": ttl
                })),
                Err(SubscriptionError::InvalidLease { .. })
            ));
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        for bad in [
            serde_json::json!({"type": "carrier-pigeon", "pattern": "a"}),
            serde_json::json!({"type": "webhook", "pattern": "a"}),
            serde_json::json!({"type": "pull-wake", "pattern": "a"}),
            serde_json::json!({"type": "webhook", "webhook": {"url": "https://x/"}}),
            serde_json::json!({"type": "webhook", "pattern": "a//b", "webhook": {"url": "https://x/"}}),
            serde_json::json!({"type": "webhook", "streams": ["__ds/x"], "webhook": {"url": "https://x/"}}),
            serde_json::json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "webhook": {"url": "https://x/"}}),
        ] {
            assert!(body(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("sub-123_a.b:c", 200).is_ok());
        assert!(check_id("", 200).is_err());
        assert!(check_id("a/b", 200).is_err());
        assert!(check_id(&"x".repeat(200), 200).is_ok());
        assert!(check_id(&"x".repeat(201), 200).is_err());
    }
}
