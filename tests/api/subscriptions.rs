//! The reserved `__ds` subscription APIs over real sockets: webhook
//! deliveries to a local receiver that verifies the Ed25519 signature
//! against the published JWKS, callback and pull-wake fencing, lease expiry,
//! retries with backoff against a failing receiver, SSRF refusals, and state
//! that survives a restart on the durable backends.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use durable_streams_server::storage::{AcidStorage, FileOptions, FileStorage};
use durable_streams_server::{
    Config, InMemoryStorage, ShutdownToken, Storage, build_router_with_ready,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::helpers::{HANG_GUARD, client};

/// Subscriptions on, loopback webhooks allowed, short leases and retries.
fn subs_config() -> Config {
    let mut config = Config::default();
    config.transport.connection.long_poll_timeout_secs = 1;
    let subs = &mut config.subscriptions;
    subs.enabled = true;
    subs.allow_loopback_http = true;
    subs.min_lease_ttl_ms = 100;
    subs.retry_initial_ms = 100;
    subs.retry_max_ms = 400;
    // No test waits it out; a loaded machine may take seconds to answer.
    subs.delivery_timeout_ms = 10_000;
    config
}

/// A server on its own socket over `storage`.
struct Server {
    base: String,
    shutdown: ShutdownToken,
    task: JoinHandle<()>,
    storage: Arc<dyn Storage>,
}

impl Server {
    async fn start(config: &Config, storage: Arc<dyn Storage>) -> Self {
        let shutdown = ShutdownToken::new();
        let (router, readiness) =
            build_router_with_ready(storage.clone(), config, shutdown.clone());
        readiness.set_ready(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            base: format!("http://{addr}/v1/stream"),
            shutdown,
            task,
            storage,
        }
    }

    async fn memory() -> Self {
        Self::start(&subs_config(), Arc::new(InMemoryStorage::default())).await
    }

    /// Stops the server and waits until nothing holds the store any more
    /// (so a durable store can be reopened on its directory).
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.abort();
        let _ = self.task.await;
        tokio::time::timeout(HANG_GUARD, async {
            while Arc::strong_count(&self.storage) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the store was not released");
    }

    fn stream(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn sub(&self, id: &str) -> String {
        format!("{}/__ds/subscriptions/{id}", self.base)
    }

    async fn put_sub(&self, id: &str, body: Value) -> reqwest::Response {
        client()
            .put(self.sub(id))
            .json(&body)
            .send()
            .await
            .expect("PUT subscription")
    }

    async fn get_sub(&self, id: &str) -> Value {
        let response = client().get(self.sub(id)).send().await.expect("GET");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON")
    }

    async fn create_json(&self, name: &str, body: &str) -> String {
        let response = client()
            .put(self.stream(name))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("PUT stream");
        assert!(response.status().is_success(), "create {name}");
        header(&response, "stream-next-offset")
    }

    async fn append_json(&self, name: &str, body: &str) -> String {
        let response = client()
            .post(self.stream(name))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST stream");
        assert!(response.status().is_success(), "append {name}");
        header(&response, "stream-next-offset")
    }

    async fn post(&self, url: String, token: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = client().post(url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST")
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("JSON error");
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    signature: String,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Scripted answers, used in order; then `200 {}`.
    answers: Mutex<VecDeque<(u16, String)>>,
    arrived: Notify,
}

/// A webhook receiver on loopback.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(answers: Vec<(u16, &str)>) -> Self {
        let state = Arc::new(ReceiverState::default());
        state
            .answers
            .lock()
            .expect("lock")
            .extend(answers.into_iter().map(|(s, b)| (s, b.to_owned())));
        async fn hook(
            State(state): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> (StatusCode, String) {
            let signature = headers
                .get("webhook-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            state.received.lock().expect("lock").push(Received {
                at: Instant::now(),
                signature,
                body,
            });
            state.arrived.notify_waiters();
            let (status, body) = state
                .answers
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or((200, "{}".to_owned()));
            (StatusCode::from_u16(status).expect("status"), body)
        }
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            state,
            task,
        }
    }

    /// Waits until `count` requests arrived; returns them all.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let notified = self.state.arrived.notified();
                {
                    let received = self.state.received.lock().expect("lock");
                    if received.len() >= count {
                        return received.clone();
                    }
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{count} webhook request(s) did not arrive"))
    }

    fn count(&self) -> usize {
        self.state.received.lock().expect("lock").len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies a `Webhook-Signature` the way a receiver must: find the key by
/// `kid` in the JWKS, check the Ed25519 signature over `"<t>.<body>"`.
fn verify(signature: &str, body: &[u8], jwks: &Value) -> bool {
    let mut parts = signature.split(',');
    let (Some(t), Some(kid), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(t), Some(kid), Some(sig)) = (
        t.strip_prefix("t="),
        kid.strip_prefix("kid="),
        sig.strip_prefix("ed25519="),
    ) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let Ok(t_secs) = t.parse::<u64>() else {
        return false;
    };
    if now.abs_diff(t_secs) > 300 {
        return false;
    }
    let Some(key) = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
    else {
        return false;
    };
    if key["kty"] != "OKP" || key["crv"] != "Ed25519" || key["alg"] != "EdDSA" {
        return false;
    }
    let (Ok(x), Ok(sig)) = (
        URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap_or_default()),
        URL_SAFE_NO_PAD.decode(sig),
    ) else {
        return false;
    };
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
        .verify(&message, &sig)
        .is_ok()
}

async fn jwks(server: &Server) -> Value {
    let response = client()
        .get(format!("{}/__ds/jwks.json", server.base))
        .send()
        .await
        .expect("JWKS");
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").contains("application/jwk-set+json"));
    response.json().await.expect("JWKS JSON")
}

/// Polls `check` until it holds (bounded by the hang guard).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + HANG_GUARD;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn webhook_signatures_verify_against_the_published_jwks() {
    let server = Server::memory().await;
    let receiver = Receiver::start(vec![]).await;
    let created = server
        .put_sub(
            "sig",
            json!({"type": "webhook", "pattern": "orders/*", "webhook": {"url": receiver.url}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("JSON");
    assert_eq!(created["webhook"]["signing"]["alg"], "ed25519");
    let jwks_url = created["webhook"]["signing"]["jwks_url"]
        .as_str()
        .expect("jwks_url")
        .to_owned();
    assert_eq!(jwks_url, format!("{}/__ds/jwks.json", server.base));
    let jwks = jwks(&server).await;

    let tail = server.create_json("orders/1", r#"{"n":1}"#).await;
    let got = receiver.wait_for(1).await;
    let first = &got[0];
    assert!(
        verify(&first.signature, &first.body, &jwks),
        "signature {} does not verify",
        first.signature
    );
    // A changed body, or a signature by another key, does not verify.
    let mut tampered = first.body.to_vec();
    tampered.push(b' ');
    assert!(!verify(&first.signature, &tampered, &jwks));
    let forged = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "kid": jwks["keys"][0]["kid"], "x": URL_SAFE_NO_PAD.encode([7u8; 32])}]});
    assert!(!verify(&first.signature, &first.body, &forged));

    let body = first.json();
    assert_eq!(body["subscription_id"], "sig");
    assert_eq!(
        body["callback_url"],
        format!("{}/__ds/subscriptions/sig/callback", server.base)
    );
    assert_eq!(body["streams"][0]["path"], "orders/1");
    assert_eq!(body["streams"][0]["tail_offset"], tail.as_str());
    assert_eq!(body["streams"][0]["has_pending"], true);
    server.stop().await;
}

#[tokio::test]
async fn webhook_callbacks_need_the_token_and_are_fenced_by_generation() {
    let server = Server::memory().await;
    let receiver = Receiver::start(vec![]).await;
    assert_eq!(
        server
            .put_sub(
                "cb",
                json!({"type": "webhook", "pattern": "jobs/*", "webhook": {"url": receiver.url},
                       "lease_ttl_ms": 60000}),
            )
            .await
            .status(),
        201
    );
    let tail = server.create_json("jobs/a", "[1,2]").await;
    let wake = receiver.wait_for(1).await[0].json();
    let callback = wake["callback_url"].as_str().expect("callback").to_owned();
    let token = wake["callback_token"].as_str().expect("token").to_owned();
    let generation = wake["generation"].as_u64().expect("generation");
    let ack = |generation: u64, done: bool| {
        json!({"wake_id": wake["wake_id"], "generation": generation,
               "acks": [{"stream": "jobs/a", "offset": tail}], "done": done})
    };

    // No token, a wrong token: 401. Wrong generation: FENCED.
    let missing = server
        .post(callback.clone(), None, ack(generation, false))
        .await;
    assert_eq!(missing.status(), 401);
    let wrong = server
        .post(
            callback.clone(),
            Some("not-the-token"),
            ack(generation, false),
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(error_code(wrong).await, "UNAUTHORIZED");
    let stale = server
        .post(callback.clone(), Some(&token), ack(generation + 1, false))
        .await;
    assert_eq!(stale.status(), 409);
    assert_eq!(error_code(stale).await, "FENCED");

    // A heartbeat ack keeps the wake; done ends it.
    let beat = server
        .post(callback.clone(), Some(&token), ack(generation, false))
        .await;
    assert_eq!(beat.status(), 200);
    let done = server
        .post(callback.clone(), Some(&token), ack(generation, true))
        .await;
    assert_eq!(done.status(), 200);
    assert_eq!(
        done.json::<Value>().await.expect("JSON"),
        json!({"ok": true, "next_wake": false})
    );
    let again = server
        .post(callback.clone(), Some(&token), ack(generation, true))
        .await;
    assert_eq!(again.status(), 409);
    assert_eq!(error_code(again).await, "FENCED");
    let view = server.get_sub("cb").await;
    assert_eq!(view["streams"][0]["acked_offset"], tail.as_str());

    // New data wakes again with a higher generation and a new token.
    server.append_json("jobs/a", "[3]").await;
    let second = receiver.wait_for(2).await[1].json();
    assert!(second["generation"].as_u64().expect("generation") > generation);
    assert_ne!(second["callback_token"], wake["callback_token"]);
    server.stop().await;
}

#[tokio::test]
async fn pull_wake_claims_are_exclusive_and_fenced() {
    let server = Server::memory().await;
    server.create_json("wake/pool", "[]").await;
    assert_eq!(
        server
            .put_sub(
                "pw",
                json!({"type": "pull-wake", "pattern": "tasks/*", "wake_stream": "wake/pool",
                       "lease_ttl_ms": 60000}),
            )
            .await
            .status(),
        201
    );
    // Nothing pending yet: no claim.
    let idle = server
        .post(
            format!("{}/claim", server.sub("pw")),
            None,
            json!({"worker": "w1"}),
        )
        .await;
    assert_eq!(idle.status(), 204);

    let tail = server.create_json("tasks/t1", r#"{"do":"it"}"#).await;
    eventually("a wake event", || async {
        let events: Value = client()
            .get(server.stream("wake/pool"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["subscription_id"] == "pw"))
    })
    .await;

    let claim = server
        .post(
            format!("{}/claim", server.sub("pw")),
            None,
            json!({"worker": "w1"}),
        )
        .await;
    assert_eq!(claim.status(), 200);
    let claim: Value = claim.json().await.expect("JSON");
    let token = claim["token"].as_str().expect("token").to_owned();
    let generation = claim["generation"].as_u64().expect("generation");
    assert_eq!(claim["streams"][0]["tail_offset"], tail.as_str());

    let busy = server
        .post(
            format!("{}/claim", server.sub("pw")),
            None,
            json!({"worker": "w2"}),
        )
        .await;
    assert_eq!(busy.status(), 409);
    let busy: Value = busy.json().await.expect("JSON");
    assert_eq!(busy["error"]["code"], "ALREADY_CLAIMED");
    assert_eq!(busy["error"]["current_holder"], "w1");

    let ack = |generation: u64, wake_id: &Value| {
        json!({"wake_id": wake_id, "generation": generation,
               "acks": [{"stream": "tasks/t1", "offset": tail}], "done": true})
    };
    let fenced = server
        .post(
            format!("{}/ack", server.sub("pw")),
            Some(&token),
            ack(generation - 1, &claim["wake_id"]),
        )
        .await;
    assert_eq!(error_code(fenced).await, "FENCED");
    let other_wake = server
        .post(
            format!("{}/ack", server.sub("pw")),
            Some(&token),
            ack(generation, &json!("w_other")),
        )
        .await;
    assert_eq!(error_code(other_wake).await, "FENCED");
    let bad_token = server
        .post(
            format!("{}/ack", server.sub("pw")),
            Some("nope"),
            ack(generation, &claim["wake_id"]),
        )
        .await;
    assert_eq!(bad_token.status(), 401);
    // Acking past the tail is refused.
    let beyond = server
        .post(
            format!("{}/ack", server.sub("pw")),
            Some(&token),
            json!({"wake_id": claim["wake_id"], "generation": generation,
                   "acks": [{"stream": "tasks/t1", "offset": "0000000000000000_0000000099999999"}]}),
        )
        .await;
    assert_eq!(beyond.status(), 400);

    let ok = server
        .post(
            format!("{}/ack", server.sub("pw")),
            Some(&token),
            ack(generation, &claim["wake_id"]),
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.json::<Value>().await.expect("JSON"),
        json!({"ok": true, "next_wake": false})
    );
    // The finished lease's token and generation are fenced from now on.
    let replay = server
        .post(
            format!("{}/release", server.sub("pw")),
            Some(&token),
            json!({"wake_id": claim["wake_id"], "generation": generation}),
        )
        .await;
    assert_eq!(error_code(replay).await, "FENCED");
    server.stop().await;
}

#[tokio::test]
async fn expired_leases_are_fenced_and_the_work_is_offered_again() {
    let server = Server::memory().await;
    server.create_json("wake/exp", "[]").await;
    server
        .put_sub(
            "exp",
            json!({"type": "pull-wake", "streams": ["work/x"], "wake_stream": "wake/exp",
                   "lease_ttl_ms": 300}),
        )
        .await;
    server.create_json("work/x", "[1]").await;
    let claim_url = format!("{}/claim", server.sub("exp"));
    // `work/x` was created after the subscription: its data is pending.
    let first: Value = server
        .post(claim_url.clone(), None, json!({"worker": "slow"}))
        .await
        .json()
        .await
        .expect("JSON");
    let generation = first["generation"].as_u64().expect("generation");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The lease ran out: the slow worker is fenced, another may claim.
    let late = server
        .post(
            format!("{}/ack", server.sub("exp")),
            first["token"].as_str(),
            json!({"wake_id": first["wake_id"], "generation": generation, "done": true}),
        )
        .await;
    assert_eq!(late.status(), 409);
    assert_eq!(error_code(late).await, "FENCED");
    let second = server
        .post(claim_url, None, json!({"worker": "fast"}))
        .await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.expect("JSON");
    assert!(second["generation"].as_u64().expect("generation") > generation);
    assert_eq!(second["worker"], "fast");

    // A webhook lease that expires without a callback is delivered again.
    let receiver = Receiver::start(vec![]).await;
    server
        .put_sub(
            "hook-exp",
            json!({"type": "webhook", "pattern": "hooked/*", "webhook": {"url": receiver.url},
                   "lease_ttl_ms": 300}),
        )
        .await;
    server.create_json("hooked/1", "[1]").await;
    let wakes = receiver.wait_for(2).await;
    let (a, b) = (wakes[0].json(), wakes[1].json());
    assert!(b["generation"].as_u64() > a["generation"].as_u64());
    assert_ne!(a["wake_id"], b["wake_id"]);
    server.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_growing_delays() {
    let server = Server::memory().await;
    let receiver = Receiver::start(vec![
        (500, "boom"),
        (503, "busy"),
        (500, "boom"),
        (500, "boom"),
        (200, r#"{"done": true}"#),
    ])
    .await;
    server
        .put_sub(
            "retry",
            json!({"type": "webhook", "pattern": "flaky/*", "webhook": {"url": receiver.url}}),
        )
        .await;
    let tail = server.create_json("flaky/1", "[1]").await;
    let got = receiver.wait_for(5).await;
    // Same wake every time, each attempt freshly signed.
    let wake_ids: Vec<Value> = got.iter().map(|r| r.json()["wake_id"].clone()).collect();
    assert!(wake_ids.iter().all(|w| *w == wake_ids[0]));
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    // retry_initial_ms = 100 doubling to retry_max_ms = 400, ±20 % jitter.
    // Lower bounds only (a loaded machine only adds to a gap); the later
    // floors (320 ms) exceed the longest first delay (120 ms), so they
    // also show that the delays grow.
    let floors = [80, 160, 320, 320];
    for (gap, floor) in gaps.iter().zip(floors) {
        assert!(
            *gap >= Duration::from_millis(floor),
            "gaps {gaps:?} should be at least {floors:?} ms"
        );
    }
    // The final `done` acknowledged the wake.
    eventually("the wake to be acknowledged", || async {
        server.get_sub("retry").await["streams"][0]["acked_offset"] == tail.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 5, "no delivery after success");
    server.stop().await;
}

#[tokio::test]
async fn unsafe_webhook_targets_are_refused() {
    let server = Server::memory().await;
    for url in [
        "http://example.com/hook",
        "http://10.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00::1]/hook",
        "https://0.0.0.0/hook",
        "ftp://example.com/hook",
    ] {
        let response = server
            .put_sub(
                "unsafe",
                json!({"type": "webhook", "pattern": "a/*", "webhook": {"url": url}}),
            )
            .await;
        assert_eq!(response.status(), 400, "{url}");
        assert_eq!(error_code(response).await, "WEBHOOK_URL_REJECTED", "{url}");
    }
    server.stop().await;

    // Without allow_loopback_http, even loopback http is refused.
    let mut strict = subs_config();
    strict.subscriptions.allow_loopback_http = false;
    let server = Server::start(&strict, Arc::new(InMemoryStorage::default())).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "https://127.0.0.1/x",
    ] {
        let response = server
            .put_sub(
                "loop",
                json!({"type": "webhook", "pattern": "a/*", "webhook": {"url": url}}),
            )
            .await;
        assert_eq!(error_code(response).await, "WEBHOOK_URL_REJECTED", "{url}");
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_or_malformed_bodies_are_refused() {
    let server = Server::memory().await;
    // Over the 1 MiB control-body limit: 413, not read to the end.
    let names: Vec<String> = (0..100_000).map(|i| format!("big/stream-{i}")).collect();
    let response = server
        .put_sub(
            "big",
            json!({"type": "pull-wake", "streams": names, "wake_stream": "w"}),
        )
        .await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "PAYLOAD_TOO_LARGE");
    let response = client()
        .put(server.sub("bad"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "INVALID_REQUEST");
    server.stop().await;
}

#[tokio::test]
async fn configurations_are_confirmed_or_conflict_and_streams_can_be_linked() {
    let server = Server::memory().await;
    let body = json!({"type": "pull-wake", "streams": ["m/b", "m/a"], "wake_stream": "w"});
    assert_eq!(server.put_sub("cfg", body.clone()).await.status(), 201);
    // Same intent, streams in another order and the default lease spelt out.
    let same = json!({"type": "pull-wake", "streams": ["m/a", "m/b", "m/a"], "wake_stream": "w",
                      "lease_ttl_ms": 30000});
    assert_eq!(server.put_sub("cfg", same).await.status(), 200);
    let different = server
        .put_sub(
            "cfg",
            json!({"type": "pull-wake", "streams": ["m/a"], "wake_stream": "w"}),
        )
        .await;
    assert_eq!(different.status(), 409);
    assert_eq!(error_code(different).await, "SUBSCRIPTION_EXISTS");
    let lease = server
        .put_sub(
            "other",
            json!({"type": "pull-wake", "pattern": "x/*", "wake_stream": "w",
                                  "lease_ttl_ms": 10}),
        )
        .await;
    assert_eq!(error_code(lease).await, "INVALID_LEASE_TTL");

    let add = client()
        .post(format!("{}/streams", server.sub("cfg")))
        .json(&json!({"streams": ["m/c"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(add.status(), 204);
    let remove = client()
        .delete(format!("{}/streams/{}", server.sub("cfg"), "m%2Fa"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(remove.status(), 204);
    let view = server.get_sub("cfg").await;
    let paths: Vec<&str> = view["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| s["path"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(paths, ["m/b", "m/c"]);
    assert!(
        view["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .all(|s| s["link_type"] == "explicit")
    );

    let delete = client()
        .delete(server.sub("cfg"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), 204);
    let gone = client().get(server.sub("cfg")).send().await.expect("GET");
    assert_eq!(gone.status(), 404);
    assert_eq!(error_code(gone).await, "SUBSCRIPTION_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn existing_streams_are_linked_at_their_tail() {
    let server = Server::memory().await;
    let old_tail = server.create_json("hist/old", "[1,2,3]").await;
    let receiver = Receiver::start(vec![(200, r#"{"done": true}"#)]).await;
    server
        .put_sub(
            "hist",
            json!({"type": "webhook", "pattern": "hist/*", "webhook": {"url": receiver.url}}),
        )
        .await;
    let view = server.get_sub("hist").await;
    assert_eq!(view["streams"][0]["path"], "hist/old");
    assert_eq!(view["streams"][0]["link_type"], "glob");
    assert_eq!(view["streams"][0]["acked_offset"], old_tail.as_str());
    assert_eq!(view["streams"][0]["has_pending"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 0, "history does not wake");
    let new_tail = server.append_json("hist/old", "[4]").await;
    let wake = receiver.wait_for(1).await[0].json();
    assert_eq!(wake["streams"][0]["offset"], old_tail.as_str());
    assert_eq!(wake["streams"][0]["tail_offset"], new_tail.as_str());
    server.stop().await;
}

#[tokio::test]
async fn a_re_created_stream_wakes_from_its_start() {
    let server = Server::memory().await;
    let receiver =
        Receiver::start(vec![(200, r#"{"done": true}"#), (200, r#"{"done": true}"#)]).await;
    server
        .put_sub(
            "again",
            json!({"type": "webhook", "pattern": "re/*", "webhook": {"url": receiver.url}}),
        )
        .await;
    let long_tail = server.create_json("re/s", "[1,2,3,4,5,6,7,8,9]").await;
    receiver.wait_for(1).await;
    eventually("the first wake to be acknowledged", || async {
        server.get_sub("again").await["streams"][0]["acked_offset"] == long_tail.as_str()
    })
    .await;
    let deleted = client()
        .delete(server.stream("re/s"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    let short_tail = server.create_json("re/s", "[1]").await;
    let wake = receiver.wait_for(2).await[1].json();
    assert_eq!(wake["streams"][0]["offset"], crate::helpers::ZERO_OFFSET);
    assert_eq!(wake["streams"][0]["tail_offset"], short_tail.as_str());
    server.stop().await;
}

#[tokio::test]
async fn the_control_space_is_absent_when_disabled() {
    let server = Server::start(&Config::default(), Arc::new(InMemoryStorage::default())).await;
    let response = client()
        .get(format!("{}/__ds/jwks.json", server.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
    server.stop().await;
}

async fn survives_restart(open: fn(&Path) -> Arc<dyn Storage>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = subs_config();
    let server = Server::start(&config, open(dir.path())).await;
    server.create_json("wake/r", "[]").await;
    server
        .put_sub(
            "durable",
            json!({"type": "pull-wake", "pattern": "r/*", "wake_stream": "wake/r",
                   "lease_ttl_ms": 60000}),
        )
        .await;
    let tail = server.create_json("r/1", "[1]").await;
    let claim: Value = server
        .post(
            format!("{}/claim", server.sub("durable")),
            None,
            json!({"worker": "w1"}),
        )
        .await
        .json()
        .await
        .expect("JSON");
    let kid = jwks(&server).await["keys"][0]["kid"].clone();
    server.stop().await;

    let server = Server::start(&config, open(dir.path())).await;
    let view = server.get_sub("durable").await;
    assert_eq!(view["wake"]["holder"], "w1");
    assert_eq!(view["generation"], claim["generation"]);
    assert_eq!(view["streams"][0]["path"], "r/1");
    assert_eq!(view["streams"][0]["tail_offset"], tail.as_str());
    // The lease survived: another worker is refused, the holder can ack.
    let busy = server
        .post(
            format!("{}/claim", server.sub("durable")),
            None,
            json!({"worker": "w2"}),
        )
        .await;
    assert_eq!(error_code(busy).await, "ALREADY_CLAIMED");
    let ack = server
        .post(
            format!("{}/ack", server.sub("durable")),
            claim["token"].as_str(),
            json!({"wake_id": claim["wake_id"], "generation": claim["generation"],
                   "acks": [{"stream": "r/1", "offset": tail}], "done": true}),
        )
        .await;
    assert_eq!(ack.status(), 200);
    // The generated signing key is kept too.
    assert_eq!(jwks(&server).await["keys"][0]["kid"], kid);
    server.stop().await;

    let server = Server::start(&config, open(dir.path())).await;
    let view = server.get_sub("durable").await;
    assert_eq!(view["streams"][0]["acked_offset"], tail.as_str());
    assert!(view.get("wake").is_none());
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_and_leases_survive_a_restart_on_acid() {
    survives_restart(|dir| Arc::new(AcidStorage::open(dir).expect("open acid"))).await;
}

#[tokio::test]
async fn subscriptions_and_leases_survive_a_restart_on_file_durable() {
    survives_restart(|dir| {
        Arc::new(FileStorage::open(dir, FileOptions::default()).expect("open file"))
    })
    .await;
}
