//! The JSON the subscription APIs read and write, as serde types: request
//! bodies, the subscription view, a claim's answer, and the wake
//! notifications sent to webhooks and appended to wake streams.
//!
//! Output fields are declared in alphabetical order, the order the JSON
//! maps they replaced had, so the bytes on the wire stay the same.

use serde::{Deserialize, Serialize};

use super::model::Kind;
use crate::protocol::offset::Offset;

/// A position as a protocol offset.
pub(crate) fn offset(position: u64) -> String {
    Offset(position).to_string()
}

/// `POST …/streams`: streams to link.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamsBody {
    pub streams: Vec<String>,
}

/// `POST …/claim`.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimBody {
    pub worker: String,
}

/// One entry of an ack list.
#[derive(Debug, Deserialize)]
pub(crate) struct AckEntry {
    /// Stream name.
    pub stream: String,
    /// Offset acknowledged up to.
    pub offset: String,
}

/// `POST …/callback` (webhook) and `POST …/ack` (pull-wake).
#[derive(Debug, Deserialize)]
pub(crate) struct AckBody {
    /// The wake.
    pub wake_id: String,
    /// Its generation.
    pub generation: u64,
    /// Acknowledged positions.
    #[serde(default)]
    pub acks: Vec<AckEntry>,
    /// Ends the wake.
    #[serde(default)]
    pub done: bool,
}

/// `POST …/release`.
#[derive(Debug, Deserialize)]
pub(crate) struct ReleaseBody {
    /// The wake.
    pub wake_id: String,
    /// Its generation.
    pub generation: u64,
}

/// The answer to a callback or ack.
#[derive(Debug, Serialize)]
pub(crate) struct AckAnswer {
    /// Whether data is pending, so another wake follows.
    pub next_wake: bool,
    pub ok: bool,
}

/// A stream of a wake, as consumers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct WakeStream {
    pub has_pending: bool,
    /// Acknowledged up to here.
    pub offset: String,
    pub path: String,
    pub tail_offset: String,
}

/// The answer to a successful claim.
#[derive(Debug, Serialize)]
pub(crate) struct Claimed {
    pub generation: u64,
    pub lease_expires_at: Option<String>,
    pub lease_ttl_ms: u64,
    pub streams: Vec<WakeStream>,
    pub subscription_id: String,
    /// Bearer token of the acks and the release.
    pub token: String,
    pub wake_id: String,
    pub worker: String,
}

/// A wake notification: the body of a webhook request, and the event a
/// pull-wake subscription appends to its wake stream (which carries no
/// callback and no lease).
#[derive(Debug, Serialize)]
pub(crate) struct WakeNotice {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    pub streams: Vec<WakeStream>,
    pub subscription_id: String,
    /// Always `wake`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub wake_id: String,
}

/// A linked stream in a subscription's view.
#[derive(Debug, Serialize)]
pub(crate) struct LinkView {
    pub acked_offset: String,
    pub has_pending: bool,
    /// `explicit` or `glob`.
    pub link_type: &'static str,
    pub path: String,
    pub tail_offset: String,
}

/// How a webhook subscription signs.
#[derive(Debug, Serialize)]
pub(crate) struct SigningView {
    /// Always `ed25519`.
    pub alg: &'static str,
    pub jwks_url: String,
    pub kid: Option<String>,
}

/// A webhook subscription's target.
#[derive(Debug, Serialize)]
pub(crate) struct WebhookView {
    pub signing: SigningView,
    pub url: String,
}

/// The wake in progress.
#[derive(Debug, Serialize)]
pub(crate) struct WakeView {
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    pub wake_id: String,
}

/// A subscription as `GET` (and a `PUT`) answers it.
#[derive(Debug, Serialize)]
pub(crate) struct SubscriptionView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub generation: u64,
    pub id: String,
    pub lease_ttl_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    pub streams: Vec<LinkView>,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake: Option<WakeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_serialize_with_their_optional_members_left_out() {
        let view = SubscriptionView {
            created_at: None,
            description: None,
            generation: 2,
            id: "s".into(),
            lease_ttl_ms: 1000,
            pattern: Some("a/*".into()),
            streams: vec![LinkView {
                acked_offset: offset(0),
                has_pending: true,
                link_type: "glob",
                path: "a/b".into(),
                tail_offset: offset(3),
            }],
            kind: Kind::PullWake,
            wake: Some(WakeView {
                generation: 2,
                holder: None,
                lease_expires_at: None,
                wake_id: "w_1".into(),
            }),
            wake_stream: Some("w".into()),
            webhook: None,
        };
        assert_eq!(
            serde_json::to_string(&view).expect("serializes"),
            concat!(
                r#"{"generation":2,"id":"s","lease_ttl_ms":1000,"pattern":"a/*","#,
                r#""streams":[{"acked_offset":"0000000000000000_0000000000000000","#,
                r#""has_pending":true,"link_type":"glob","path":"a/b","#,
                r#""tail_offset":"0000000000000000_0000000000000003"}],"type":"pull-wake","#,
                r#""wake":{"generation":2,"wake_id":"w_1"},"wake_stream":"w"}"#
            )
        );
        let ack: AckBody =
            serde_json::from_str(r#"{"wake_id":"w","generation":1}"#).expect("defaults");
        assert!(ack.acks.is_empty() && !ack.done);
    }
}
