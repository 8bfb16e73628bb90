//! Subscriptions over interchangeable replicas, with real processes: three
//! server binaries in `postgres` mode on one real PostgreSQL, a webhook
//! receiver on loopback.
//!
//! - Pull-wake claims raced on every replica at once: exactly one wins.
//! - A webhook wake is delivered once across the replicas; the replica
//!   running the background work is killed (SIGKILL) while the wake's
//!   lease runs; the lease runs out and another replica delivers the next
//!   wake, which the receiver acknowledges; every replica then shows the
//!   data acknowledged.

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::replica::{Replica, client, three_replicas};

const SUBSCRIPTIONS_ENV: &[(&str, &str)] = &[
    ("DS_SUBSCRIPTIONS__ENABLED", "true"),
    ("DS_SUBSCRIPTIONS__ALLOW_LOOPBACK_HTTP", "true"),
    (
        "RUST_LOG",
        "warn,durable_streams_server::subscriptions=info",
    ),
];

/// Notifications received, in order.
type Received = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver: answers the first notification with `{}` (the lease
/// starts), every later one with `{"done": true}`.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().expect("lock");
                seen.push(serde_json::from_slice(&body).expect("a JSON notification"));
                let answer = if seen.len() == 1 {
                    json!({})
                } else {
                    json!({ "done": true })
                };
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                (json, answer.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

fn received(received: &Received) -> Vec<Value> {
    received.lock().expect("lock").clone()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    // Takeovers wait out leases and retries across processes and a real
    // PostgreSQL: a loaded machine needs a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("answered");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The index of the replica whose log says it runs the background work.
fn leader(replicas: &[Replica]) -> Option<usize> {
    replicas.iter().position(|replica| {
        replica
            .log_tail()
            .lines()
            .rev()
            .find(|line| line.contains("subscription background work"))
            .is_some_and(|line| line.contains("leading=true"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_work_happens_once_and_survives_a_killed_replica() {
    let (_logs, mut replicas) = three_replicas(SUBSCRIPTIONS_ENV).await;
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let http = client();
    let subs = |base: &str, id: &str| format!("{base}/v1/stream/__ds/subscriptions/{id}");

    // Pull-wake: claims raced on all replicas; one lease.
    let (status, _) = send(
        http.put(format!("{}/v1/stream/pool", bases[0]))
            .header("content-type", "application/json")
            .body("[]"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(http.put(subs(&bases[1], "pull")).json(&json!({
        "type": "pull-wake", "pattern": "tasks/*", "wake_stream": "pool", "lease_ttl_ms": 60000,
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(
        http.put(format!("{}/v1/stream/tasks/a", bases[2]))
            .header("content-type", "text/plain")
            .body("work"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    wait_for("the wake event", async || {
        let (_, events) = send(http.get(format!("{}/v1/stream/pool?offset=-1", bases[0]))).await;
        events.as_array().is_some_and(|events| !events.is_empty())
    })
    .await;
    let claims = bases.iter().enumerate().map(|(index, base)| {
        let request = http
            .post(format!("{}/claim", subs(base, "pull")))
            .json(&json!({ "worker": format!("w{index}") }));
        send(request)
    });
    let outcomes = futures_util::future::join_all(claims).await;
    let won: Vec<_> = outcomes
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    let holder = won[0].1["worker"].clone();
    for (status, body) in outcomes.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["code"], "ALREADY_CLAIMED");
        assert_eq!(body["error"]["current_holder"], holder);
    }
    let (_, events) = send(http.get(format!("{}/v1/stream/pool?offset=-1", bases[1]))).await;
    assert_eq!(events.as_array().map(Vec::len), Some(1), "one wake event");

    // Webhook: one delivery, then the background replica dies mid-lease.
    let (hook, notifications) = receiver().await;
    let (status, _) = send(http.put(subs(&bases[0], "hook")).json(&json!({
        "type": "webhook", "pattern": "jobs/*", "webhook": { "url": hook }, "lease_ttl_ms": 1000,
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(
        http.put(format!("{}/v1/stream/jobs/a", bases[1]))
            .header("content-type", "text/plain")
            .body("job"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    wait_for("the first notification", async || {
        !received(&notifications).is_empty()
    })
    .await;
    let first = received(&notifications)[0].clone();
    assert_eq!(first["generation"], 1);
    // Killed only once the answer is recorded: the lease runs.
    wait_for("the lease", async || {
        let (_, view) = send(http.get(subs(&bases[2], "hook"))).await;
        view["wake"]["lease_expires_at"].is_string()
    })
    .await;
    let dead = leader(&replicas).unwrap_or_else(|| {
        panic!(
            "no replica runs the background work:\n{}",
            replicas[0].log_tail()
        )
    });
    replicas[dead].kill();
    wait_for("the next wake", async || {
        received(&notifications).len() >= 2
    })
    .await;
    let living: Vec<&String> = (0..3).filter(|&i| i != dead).map(|i| &bases[i]).collect();
    let tail = first["streams"][0]["tail_offset"].clone();
    for base in &living {
        wait_for("the acknowledgement", async || {
            let (_, view) = send(http.get(subs(base, "hook"))).await;
            view["streams"][0]["acked_offset"] == tail && view["wake"].is_null()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = received(&notifications);
    assert_eq!(all.len(), 2, "each wake delivered once: {all:?}");
    assert_ne!(all[0]["wake_id"], all[1]["wake_id"]);
    assert!(all[1]["generation"].as_u64() > all[0]["generation"].as_u64());
}
