//! Access control over real sockets, with real tokens signed by keys made
//! here (Ed25519 and RSA), a real API-key file, a JWKS file rotated under
//! the running server, and live reads that outlive their token.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable_streams_server::Config;
use durable_streams_server::config::{AccessOp, AuthMode, GrantConfig};
use serde_json::json;

use crate::common::jwt::{TestKey, jwks, signing_input};
use crate::helpers::{HANG_GUARD, SseReader, TestApp, maybe_header, spawn_app, test_config};

const ISSUER: &str = "https://idp.test";
const API_KEY: &str = "svc-writer-7f3a9c0d1e2b4a6f8e9d0c1b2a3f4e5d";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn grant(paths: &[&str], ops: &[AccessOp]) -> GrantConfig {
    GrantConfig {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        ops: ops.to_vec(),
    }
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server with access control on: `ed` and `rsa` in its JWKS file, one
/// API key (create and append on `/v1/stream/svc/**`), anonymous reads of
/// `/v1/stream/public/**`.
struct Secured {
    app: TestApp,
    dir: tempfile::TempDir,
    ed: TestKey,
    rsa: TestKey,
}

impl Secured {
    async fn start(change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ed = TestKey::ed25519("ed-1");
        let rsa = TestKey::rsa("rsa-1");
        write_atomically(&dir.path().join("jwks/jwks.json"), &jwks(&[&ed, &rsa]));
        write_atomically(
            &dir.path().join("keys/api-keys.toml"),
            &format!(
                "[[keys]]\nname = \"ingest\"\nsha256 = \"{}\"\n\
                 grants = [{{ paths = [\"/v1/stream/svc/**\"], ops = [\"create\", \"append\"] }}]\n",
                sha256_hex(API_KEY)
            ),
        );
        let mut config = test_config();
        config.auth.mode = AuthMode::Token;
        config.auth.jwks_path = Some(dir.path().join("jwks/jwks.json"));
        config.auth.api_keys_path = Some(dir.path().join("keys/api-keys.toml"));
        config.auth.issuer = Some(ISSUER.into());
        config.auth.anonymous = vec![grant(&["/v1/stream/public/**"], &[AccessOp::Read])];
        change(&mut config);
        Self {
            app: spawn_app(config).await,
            dir,
            ed,
            rsa,
        }
    }

    /// A token of `key` for `sub` with `grants`, valid for `ttl` seconds.
    fn token(&self, key: &TestKey, grants: &serde_json::Value, ttl: i64) -> String {
        key.token(&json!({
            "sub": "alice",
            "iss": ISSUER,
            "exp": now() as i64 + ttl,
            "ds": grants,
        }))
    }

    /// Creates stream `name` with a token allowed everything.
    async fn admin_create(&self, name: &str) {
        let response = self
            .send(reqwest::Method::PUT, name, Some(&self.everything()))
            .await;
        assert_eq!(response.status(), 201, "{name}");
    }

    fn everything(&self) -> String {
        self.token(
            &self.ed,
            &json!([{"paths": ["/v1/stream/**"], "ops": ["read", "append", "create", "delete", "subscribe"]}]),
            600,
        )
    }

    async fn send(
        &self,
        method: reqwest::Method,
        name: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .request(method.clone(), self.app.url(name))
            .timeout(HANG_GUARD);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if method == reqwest::Method::PUT || method == reqwest::Method::POST {
            request = request.header("content-type", "text/plain");
        }
        if method == reqwest::Method::POST {
            request = request.body("x");
        }
        request.send().await.expect("request")
    }
}

/// Grants reading every stream.
fn read_all() -> serde_json::Value {
    json!([{"paths": ["/v1/stream/**"], "ops": ["read"]}])
}

/// Writes `text` as a Secret update does: a new file renamed into place.
fn write_atomically(path: &Path, text: &str) {
    let dir = path.parent().expect("parent");
    std::fs::create_dir_all(dir).expect("dir");
    let temporary = dir.join(".incoming");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

async fn expect_refusal(response: reqwest::Response, status: u16, reason: &str) {
    let challenge = maybe_header(&response, "www-authenticate");
    let url = response.url().clone();
    assert_eq!(response.status().as_u16(), status, "{url}");
    assert_eq!(
        maybe_header(&response, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let body = response.bytes().await.expect("body");
    // A HEAD answer has the problem's headers and no body.
    if !body.is_empty() {
        let body: serde_json::Value = serde_json::from_slice(&body).expect("problem JSON");
        assert_eq!(body["reason"], reason, "{url}: {body}");
        assert_eq!(body["status"], status, "{url}: {body}");
    }
    if status == 401 {
        let challenge = challenge.expect("401 carries WWW-Authenticate");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    } else {
        assert_eq!(challenge, None);
    }
}

#[tokio::test]
async fn every_operation_is_allowed_only_when_granted() {
    let s = Secured::start(|_| {}).await;
    let admin = s.everything();
    use reqwest::Method as M;
    let ops = [
        ("read", vec![M::GET, M::HEAD]),
        ("append", vec![M::POST]),
        ("create", vec![M::PUT]),
        ("delete", vec![M::DELETE]),
    ];
    for (op, _) in &ops {
        let only = s.token(
            &s.ed,
            &json!([{"paths": ["/v1/stream/t/**"], "ops": [op]}]),
            600,
        );
        for (other, methods) in &ops {
            for method in methods {
                // A fresh stream each time, made by the admin, so every
                // operation has something to act on.
                let name = format!("t/{op}-{other}-{method}");
                if *other != "create" {
                    assert_eq!(s.send(M::PUT, &name, Some(&admin)).await.status(), 201);
                }
                let response = s.send(method.clone(), &name, Some(&only)).await;
                if op == other {
                    assert!(
                        response.status().is_success(),
                        "{op} token, {method} {name}: {}",
                        response.status()
                    );
                } else {
                    expect_refusal(response, 403, "not_granted").await;
                }
                // Never on a path outside the grant, never without a token.
                let outside = format!("u/{op}-{other}-{method}");
                assert_eq!(s.send(M::PUT, &outside, Some(&admin)).await.status(), 201);
                let response = s.send(method.clone(), &outside, Some(&only)).await;
                expect_refusal(response, 403, "not_granted").await;
                let response = s.send(method.clone(), &outside, None).await;
                expect_refusal(response, 401, "credentials_required").await;
            }
        }
    }
}

#[tokio::test]
async fn a_fork_also_needs_read_on_its_source() {
    let s = Secured::start(|_| {}).await;
    s.admin_create("src/a").await;
    let fork = |token: &str, name: &str| {
        s.app
            .client
            .put(s.app.url(name))
            .bearer_auth(token)
            .header("stream-forked-from", s.app.path("src/a"))
            .send()
    };
    let create_only = s.token(
        &s.ed,
        &json!([{"paths": ["/v1/stream/t/**"], "ops": ["create"]}]),
        600,
    );
    expect_refusal(
        fork(&create_only, "t/fork").await.expect("send"),
        403,
        "not_granted",
    )
    .await;
    let with_read = s.token(
        &s.ed,
        &json!([
            {"paths": ["/v1/stream/t/**"], "ops": ["create"]},
            {"paths": ["/v1/stream/src/*"], "ops": ["read"]},
        ]),
        600,
    );
    assert_eq!(
        fork(&with_read, "t/fork").await.expect("send").status(),
        201
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_problems() {
    let s = Secured::start(|_| {}).await;
    let read_all = read_all();
    s.admin_create("a").await;
    // RS256 and EdDSA both verify.
    for key in [&s.ed, &s.rsa] {
        let token = s.token(key, &read_all, 600);
        let response = s.send(reqwest::Method::GET, "a", Some(&token)).await;
        assert_eq!(response.status(), 200, "{}", key.kid);
    }
    let stranger = TestKey::ed25519("ed-1");
    let claims = json!({"sub": "eve", "iss": ISSUER, "exp": now() + 600, "ds": read_all});
    let forged_hs256 = {
        let input = signing_input(&json!({"alg": "HS256", "kid": "ed-1"}), &claims);
        format!("{input}.c2lnbmF0dXJl")
    };
    let forged_none = format!(
        "{}.c2lnbmF0dXJl",
        signing_input(&json!({"alg": "none", "kid": "ed-1"}), &claims)
    );
    let cases = [
        (s.token(&s.ed, &read_all, -120), "expired"),
        (
            s.ed.token(&json!({"sub": "a", "iss": ISSUER, "exp": now() + 600,
                "nbf": now() + 300, "ds": read_all})),
            "not_yet_valid",
        ),
        (
            s.token(&TestKey::ed25519("ed-other"), &read_all, 600),
            "unknown_key",
        ),
        // Same kid, another key: the signature does not verify.
        (s.token(&stranger, &read_all, 600), "bad_signature"),
        (forged_hs256, "unsupported_algorithm"),
        (forged_none, "unsupported_algorithm"),
        (
            s.ed.token(&json!({"sub": "a", "iss": "https://evil.test",
                "exp": now() + 600, "ds": read_all})),
            "wrong_issuer",
        ),
        ("not-a-key-at-all".to_owned(), "unknown_api_key"),
    ];
    for (token, reason) in cases {
        let response = s.send(reqwest::Method::GET, "a", Some(&token)).await;
        let challenge = maybe_header(&response, "www-authenticate").unwrap_or_default();
        assert!(challenge.contains("invalid_token"), "{reason}: {challenge}");
        expect_refusal(response, 401, reason).await;
    }
    // Credentials in the wrong place: another scheme, or a query parameter
    // that is not enabled (the request is then anonymous).
    let response = s
        .app
        .client
        .get(s.app.url("a"))
        .header("authorization", format!("Basic {API_KEY}"))
        .send()
        .await
        .expect("send");
    expect_refusal(response, 401, "malformed_header").await;
    let token = s.token(&s.ed, &read_all, 600);
    let response = s
        .app
        .client
        .get(format!("{}?access_token={token}", s.app.url("a")))
        .send()
        .await
        .expect("send");
    expect_refusal(response, 401, "credentials_required").await;
}

#[tokio::test]
async fn an_api_key_acts_as_its_service() {
    let s = Secured::start(|_| {}).await;
    use reqwest::Method as M;
    assert_eq!(s.send(M::PUT, "svc/log", Some(API_KEY)).await.status(), 201);
    assert!(
        s.send(M::POST, "svc/log", Some(API_KEY))
            .await
            .status()
            .is_success()
    );
    expect_refusal(
        s.send(M::GET, "svc/log", Some(API_KEY)).await,
        403,
        "not_granted",
    )
    .await;
    expect_refusal(
        s.send(M::PUT, "other", Some(API_KEY)).await,
        403,
        "not_granted",
    )
    .await;
    let wrong = format!("{API_KEY}x");
    expect_refusal(
        s.send(M::PUT, "svc/x", Some(&wrong)).await,
        401,
        "unknown_api_key",
    )
    .await;
}

#[tokio::test]
async fn anonymous_reads_keep_protocol_caching_and_authenticated_ones_are_private() {
    let s = Secured::start(|_| {}).await;
    use reqwest::Method as M;
    let admin = s.everything();
    for name in ["public/feed", "private/feed"] {
        assert_eq!(s.send(M::PUT, name, Some(&admin)).await.status(), 201);
        assert_eq!(s.send(M::POST, name, Some(&admin)).await.status(), 204);
    }
    let read = |name: &str, token: Option<String>| {
        let mut request = s.app.client.get(format!("{}?offset=-1", s.app.url(name)));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = read("public/feed", None).await.expect("send");
    assert_eq!(anonymous.status(), 200);
    let cache = maybe_header(&anonymous, "cache-control").unwrap_or_default();
    assert!(cache.contains("public"), "{cache}");
    let authenticated = read("public/feed", Some(admin.clone()))
        .await
        .expect("send");
    assert_eq!(authenticated.status(), 200);
    let cache = maybe_header(&authenticated, "cache-control").unwrap_or_default();
    assert!(
        cache.contains("private") && !cache.contains("public"),
        "{cache}"
    );
    let vary = maybe_header(&authenticated, "vary").unwrap_or_default();
    assert!(vary.contains("Authorization"), "{vary}");
    let private = read("private/feed", Some(admin)).await.expect("send");
    let cache = maybe_header(&private, "cache-control").unwrap_or_default();
    assert!(
        cache.contains("private") && !cache.contains("public"),
        "{cache}"
    );
    expect_refusal(
        read("private/feed", None).await.expect("send"),
        401,
        "credentials_required",
    )
    .await;
    // Probes need nothing.
    for path in ["/healthz", "/readyz"] {
        let response = s.app.client.get(s.app.at(path)).send().await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn the_query_parameter_works_only_when_enabled_and_answers_no_store() {
    let s = Secured::start(|config| config.auth.query_param = Some("access_token".into())).await;
    let admin = s.everything();
    assert_eq!(
        s.send(reqwest::Method::PUT, "q", Some(&admin))
            .await
            .status(),
        201
    );
    let response = s
        .app
        .client
        .get(format!("{}?offset=-1&access_token={admin}", s.app.url("q")))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        maybe_header(&response, "cache-control").as_deref(),
        Some("private, no-store")
    );
    let response = s
        .app
        .client
        .get(format!("{}?offset=-1&access_token={admin}", s.app.url("q")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    expect_refusal(response, 401, "conflicting_credentials").await;
}

#[tokio::test]
async fn a_live_read_ends_when_its_token_expires() {
    let s = Secured::start(|config| {
        config.transport.connection.long_poll_timeout_secs = 30;
    })
    .await;
    s.admin_create("live").await;
    let read_all = read_all();
    // SSE: the stream ends (cleanly) at expiry, well before any timeout.
    let short = s.token(&s.ed, &read_all, 2);
    let response = s
        .app
        .client
        .get(format!("{}?offset=-1&live=sse", s.app.url("live")))
        .bearer_auth(&short)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut events = SseReader::new(response);
    let mut count = 0;
    while events.next_event().await.is_some() {
        count += 1;
        assert!(count < 1000, "the stream never ended");
    }
    // Long-poll: a wait that outlives the token is answered 401.
    let short = s.token(&s.ed, &read_all, 2);
    let tail = s
        .send(reqwest::Method::HEAD, "live", Some(&s.everything()))
        .await;
    let next = maybe_header(&tail, "stream-next-offset").expect("offset");
    let response = s
        .app
        .client
        .get(format!(
            "{}?offset={next}&live=long-poll",
            s.app.url("live")
        ))
        .bearer_auth(&short)
        .timeout(HANG_GUARD)
        .send()
        .await
        .expect("send");
    expect_refusal(response, 401, "expired").await;
}

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up() {
    let s = Secured::start(|_| {}).await;
    let read_all = read_all();
    s.admin_create("r").await;
    let next = TestKey::ed25519("ed-2");
    let new_token = s.token(&next, &read_all, 600);
    let old_token = s.token(&s.ed, &read_all, 600);
    expect_refusal(
        s.send(reqwest::Method::GET, "r", Some(&new_token)).await,
        401,
        "unknown_key",
    )
    .await;
    write_atomically(&s.dir.path().join("jwks/jwks.json"), &jwks(&[&next]));
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let response = s.send(reqwest::Method::GET, "r", Some(&new_token)).await;
        if response.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never came into use"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_refusal(
        s.send(reqwest::Method::GET, "r", Some(&old_token)).await,
        401,
        "unknown_key",
    )
    .await;
    // A broken file keeps the last good set.
    write_atomically(&s.dir.path().join("jwks/jwks.json"), "{ not json");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        s.send(reqwest::Method::GET, "r", Some(&new_token))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn subscriptions_need_subscribe_on_what_they_name() {
    let s = Secured::start(|config| config.subscriptions.enabled = true).await;
    let subscriber = s.token(
        &s.ed,
        &json!([{"paths": ["/v1/stream/t/**"], "ops": ["subscribe"]}]),
        600,
    );
    let put = |token: &str, id: &str, pattern: &str| {
        s.app
            .client
            .put(s.app.at(&format!("/v1/stream/__ds/subscriptions/{id}")))
            .bearer_auth(token)
            .json(&json!({"type": "pull-wake", "pattern": pattern, "wake_stream": "t/wake"}))
            .send()
    };
    expect_refusal(
        put(&subscriber, "s1", "**").await.expect("send"),
        403,
        "not_granted",
    )
    .await;
    // Wake events are appended to the wake stream: that needs `append`.
    expect_refusal(
        put(&subscriber, "s1", "t/**").await.expect("send"),
        403,
        "not_granted",
    )
    .await;
    let subscriber = s.token(
        &s.ed,
        &json!([{"paths": ["/v1/stream/t/**"], "ops": ["subscribe", "append"]}]),
        600,
    );
    let created = put(&subscriber, "s1", "t/**").await.expect("send");
    assert_eq!(created.status(), 201);
    let other = s.token(
        &s.ed,
        &json!([{"paths": ["/v1/stream/u/**"], "ops": ["subscribe", "append"]}]),
        600,
    );
    for token in [&other, &subscriber] {
        let response = s
            .app
            .client
            .get(s.app.at("/v1/stream/__ds/subscriptions/s1"))
            .bearer_auth(token)
            .send()
            .await
            .expect("send");
        if token == &other {
            expect_refusal(response, 403, "not_granted").await;
        } else {
            assert_eq!(response.status(), 200);
        }
    }
    let response = s
        .app
        .client
        .get(s.app.at("/v1/stream/__ds/subscriptions/s1"))
        .send()
        .await
        .expect("send");
    expect_refusal(response, 401, "credentials_required").await;
}

#[tokio::test]
async fn a_listed_client_certificate_gets_its_grants() {
    use crate::common::pki::{Ca, fresh_serial};
    use crate::common::tls_client::https_client;
    use crate::tls::{secret, spawn_tls, tls_config};
    use durable_streams_server::config::{IdentityConfig, IdentitySourceFilter, TransportMode};

    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("clients");
    let secret = secret(
        &dir.path().join("tls"),
        &server_ca.server(fresh_serial()),
        Some(&clients.pem),
    );
    let mut config = tls_config(&secret, TransportMode::Mtls);
    config.auth.mode = AuthMode::Token;
    config.auth.identities = vec![IdentityConfig {
        source: IdentitySourceFilter::Certificate,
        name: Some("alice".into()),
        grants: vec![grant(
            &["/v1/stream/team/**"],
            &[AccessOp::Create, AccessOp::Read],
        )],
        ..IdentityConfig::default()
    }];
    let app = spawn_tls(config).await;
    let alice = https_client(&server_ca.pem, Some(&clients.client("alice", &[])));
    let bob = https_client(&server_ca.pem, Some(&clients.client("bob", &[])));
    let put = |client: &reqwest::Client, path: &str| client.put(app.at(path)).send();
    assert_eq!(
        put(&alice, "/v1/stream/team/x")
            .await
            .expect("send")
            .status(),
        201
    );
    expect_refusal(
        put(&alice, "/v1/stream/other").await.expect("send"),
        403,
        "not_granted",
    )
    .await;
    // Not listed: anonymous, and anonymous may do nothing here.
    expect_refusal(
        put(&bob, "/v1/stream/team/y").await.expect("send"),
        401,
        "credentials_required",
    )
    .await;
}
