//! The subscription state machine, transition by transition, without I/O.

use std::collections::BTreeMap;

use super::*;
use crate::subscriptions::model::{STATE_VERSION, SubscriptionConfig};
use crate::subscriptions::wire::AckBody;

const NOW: i64 = 1_000_000;

fn sub(kind: Kind) -> Sub {
    let (webhook_url, wake_stream) = match kind {
        Kind::Webhook => (Some("https://hooks.example/x".to_owned()), None),
        Kind::PullWake => (None, Some("wake".to_owned())),
    };
    Sub::new(Stored {
        version: STATE_VERSION,
        id: "s".into(),
        root: "/v1/stream/".into(),
        public_root: "https://ds.example/v1/stream/".into(),
        config: SubscriptionConfig {
            kind,
            pattern: Some("jobs/*".into()),
            streams: Vec::new(),
            webhook_url,
            wake_stream,
            lease_ttl_ms: 1000,
            description: None,
        },
        created_at_ms: NOW,
        generation: 0,
        links: BTreeMap::new(),
        wake: None,
        wake_event: None,
    })
}

fn ack(wake: &Wake, done: bool, offset: Option<&str>) -> AckBody {
    AckBody {
        wake_id: wake.wake_id.clone(),
        generation: wake.generation,
        acks: offset
            .map(|offset| AckEntry {
                stream: "jobs/a".into(),
                offset: offset.into(),
            })
            .into_iter()
            .collect(),
        done,
    }
}

#[test]
fn tokens_are_random_and_compared_in_constant_time() {
    let a = token(32).expect("random");
    let b = token(32).expect("random");
    assert_ne!(a, b);
    assert_eq!(a.len(), 43);
    assert!(same_token(&a, &a.clone()));
    assert!(!same_token(&a, &b));
    assert!(!same_token(&a, &a[..10]));
    assert!(wake_id().expect("random").starts_with("w_"));
}

#[test]
fn matching_streams_are_linked_and_their_tails_followed() {
    let mut sub = sub(Kind::PullWake);
    assert_eq!(sub.stream_changed("/other/jobs/a", 3), None);
    assert_eq!(sub.stream_changed("/v1/stream/mail/a", 3), None);
    // The wake stream itself never wakes anyone.
    assert_eq!(sub.stream_changed("/v1/stream/wake", 3), None);
    assert_eq!(
        sub.stream_changed("/v1/stream/jobs/a", 3),
        Some(Touched {
            persist: true,
            pending: true
        })
    );
    assert_eq!(sub.pending(), [("jobs/a".to_owned(), 3)]);
    sub.stored.links.get_mut("jobs/a").expect("linked").acked = 3;
    assert_eq!(
        sub.stream_changed("/v1/stream/jobs/a", 3),
        Some(Touched {
            persist: false,
            pending: false
        })
    );
    // A smaller tail is a re-created stream: all of its data is new.
    assert_eq!(
        sub.stream_changed("/v1/stream/jobs/a", 1),
        Some(Touched {
            persist: true,
            pending: true
        })
    );
    assert_eq!(sub.stored.links["jobs/a"].acked, 0);
}

#[test]
fn a_webhook_wake_is_delivered_once_then_leased_and_acked() {
    let mut sub = sub(Kind::Webhook);
    assert_eq!(sub.kick(NOW).expect("kick"), (false, Kick::Idle));
    sub.stream_changed("/v1/stream/jobs/a", 5);
    assert_eq!(sub.kick(NOW).expect("kick"), (true, Kick::Deliver));
    sub.delivering = true;
    assert_eq!(sub.kick(NOW).expect("kick"), (false, Kick::Idle));
    let (url, generation, notification) = sub.delivery().expect("undelivered");
    assert_eq!(url, "https://hooks.example/x");
    assert_eq!(generation, 1);
    assert_eq!(
        notification.callback_url.as_deref(),
        Some("https://ds.example/v1/stream/__ds/subscriptions/s/callback")
    );
    assert_eq!(notification.streams[0].tail_offset, wire::offset(5));
    // A 2xx without `done` starts the lease; a stale generation changes nothing.
    assert!(!sub.delivered(0, false, NOW));
    assert!(sub.delivered(1, false, NOW));
    assert!(sub.delivery().is_none());
    assert!(sub.lease_active(NOW + 999));
    let wake = sub.stored.wake.clone().expect("wake");
    assert!(matches!(
        sub.ack(&ack(&wake, false, None), Some("wrong"), NOW),
        Err(SubscriptionError::Unauthorized)
    ));
    assert!(matches!(
        sub.ack(&ack(&wake, false, None), None, NOW),
        Err(SubscriptionError::Unauthorized)
    ));
    let mut stale = ack(&wake, false, None);
    stale.generation = 0;
    assert!(matches!(
        sub.ack(&stale, Some(&wake.token), NOW),
        Err(SubscriptionError::Fenced)
    ));
    assert!(matches!(
        sub.ack(&ack(&wake, false, Some("x")), Some(&wake.token), NOW),
        Err(SubscriptionError::InvalidOffset(_))
    ));
    let next = sub
        .ack(
            &ack(&wake, true, Some(&wire::offset(5))),
            Some(&wake.token),
            NOW,
        )
        .expect("acked");
    assert!(!next);
    assert!(sub.stored.wake.is_none());
    assert!(!sub.is_pending());
}

#[test]
fn a_done_answer_acknowledges_the_snapshot_at_once() {
    let mut sub = sub(Kind::Webhook);
    sub.stream_changed("/v1/stream/jobs/a", 5);
    sub.kick(NOW).expect("kick");
    sub.stream_changed("/v1/stream/jobs/a", 9);
    assert!(sub.delivered(1, true, NOW));
    assert_eq!(sub.stored.links["jobs/a"].acked, 5);
    // Data that came after the snapshot starts the next wake.
    assert!(sub.is_pending());
    assert_eq!(sub.kick(NOW).expect("kick"), (true, Kick::Deliver));
    assert_eq!(sub.stored.generation, 2);
}

#[test]
fn pull_wake_claims_are_exclusive_until_released_or_expired() {
    let mut sub = sub(Kind::PullWake);
    assert!(sub.claim("w1", NOW).expect("claim").is_none());
    sub.stream_changed("/v1/stream/jobs/a", 4);
    assert_eq!(sub.kick(NOW).expect("kick"), (true, Kick::WriteEvent));
    assert_eq!(sub.kick(NOW).expect("kick"), (false, Kick::Idle));
    let (wake_path, event) = sub.wake_event().expect("pending event");
    assert_eq!(wake_path, "/v1/stream/wake");
    sub.event_written(Some(&event.wake_id));
    assert!(!sub.needs_offer());

    let claimed = sub.claim("w1", NOW).expect("claim").expect("work");
    assert_eq!(claimed.wake_id, event.wake_id);
    assert_eq!(claimed.generation, 1);
    assert!(matches!(
        sub.claim("w2", NOW),
        Err(SubscriptionError::AlreadyClaimed { holder }) if holder == "w1"
    ));
    assert!(matches!(
        sub.release(&claimed.wake_id, 1, Some("nope"), NOW),
        Err(SubscriptionError::Unauthorized)
    ));
    sub.release(&claimed.wake_id, 1, Some(&claimed.token), NOW)
        .expect("released");
    let again = sub.claim("w2", NOW).expect("claim").expect("work");
    assert_eq!(again.generation, 2);
    assert!(!sub.expire_lease(NOW + 999));
    assert!(sub.expire_lease(NOW + 1000));
    // Acks of an expired lease are fenced.
    assert!(matches!(
        sub.release(&again.wake_id, 2, Some(&again.token), NOW + 1000),
        Err(SubscriptionError::Fenced)
    ));
}

#[test]
fn undelivered_or_unwritten_wakes_are_offered_again() {
    let mut hook = sub(Kind::Webhook);
    hook.stream_changed("/v1/stream/jobs/a", 1);
    assert!(hook.needs_offer());
    hook.delivering = true;
    assert!(!hook.needs_offer());
    let mut pull = sub(Kind::PullWake);
    pull.stream_changed("/v1/stream/jobs/a", 1);
    pull.kick(NOW).expect("kick");
    assert!(!pull.needs_offer(), "being written");
    pull.event_written(None);
    assert!(pull.needs_offer(), "the append failed");
}

#[test]
fn the_view_shows_links_and_the_wake() {
    let mut sub = sub(Kind::Webhook);
    sub.link_at("jobs/old".into(), 7, true);
    sub.stream_changed("/v1/stream/jobs/a", 2);
    sub.kick(NOW).expect("kick");
    let view = serde_json::to_value(sub.view(Some("k1"))).expect("json");
    assert_eq!(view["type"], "webhook");
    assert_eq!(view["streams"][0]["path"], "jobs/a");
    assert_eq!(view["streams"][0]["has_pending"], true);
    assert_eq!(view["streams"][1]["link_type"], "explicit");
    assert_eq!(view["streams"][1]["acked_offset"], wire::offset(7));
    assert_eq!(view["webhook"]["signing"]["kid"], "k1");
    assert_eq!(
        view["webhook"]["signing"]["jwks_url"],
        "https://ds.example/v1/stream/__ds/jwks.json"
    );
    assert_eq!(view["wake"]["generation"], 1);
    assert!(view["wake"].get("holder").is_none());
    assert!(view.get("description").is_none());
}
