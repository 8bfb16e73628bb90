//! TLS and mTLS with real handshakes and certificates made at test time:
//! HTTP/2 and HTTP/1.1 by ALPN, version limits, client certificates and the
//! identity they give, validation of the material, certificate rotation
//! under load the way Kubernetes does it, and the drain over TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use durable_streams_server::client::{ClientIdentity, TlsSession};
use durable_streams_server::config::{HttpVersion, TlsVersion, TransportMode};
use durable_streams_server::server::{DrainTiming, ServeOptions, serve_tls};
use durable_streams_server::tls::{Acceptor, ReloadOutcome, ReloadTiming, TlsError, TlsSettings};
use durable_streams_server::{App, Config, InMemoryStorage, Readiness, ShutdownToken, proxy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::metrics_probe;
use crate::common::pki::{Ca, Leaf, SecretDir, fresh_serial};
use crate::common::tls_client::*;
use crate::helpers::{HANG_GUARD, SseReader, test_config};

/// A TLS server in this test's runtime, with its reloader running.
pub(crate) struct TlsApp {
    addr: SocketAddr,
    acceptor: Acceptor,
    readiness: Readiness,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TlsApp {
    /// `https://127.0.0.1:<port><path>` (the test certificates name the IP).
    pub(crate) fn at(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn stopped(&mut self) -> std::io::Result<()> {
        let task = self.server.take().expect("server task");
        tokio::time::timeout(HANG_GUARD, task)
            .await
            .expect("server did not stop")
            .expect("server task panicked")
    }
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        if let Some(task) = self.server.take() {
            task.abort();
        }
    }
}

/// Answers with the request's identity and TLS session, as a handler doing
/// authorization would see them: `name|source|sans|tls-version`.
async fn whoami(request: Request) -> String {
    let identity = request.extensions().get::<ClientIdentity>();
    let session = request.extensions().get::<TlsSession>();
    format!(
        "{}|{}|{}|{}",
        identity.map_or("-", |id| id.name.as_str()),
        identity.map_or("-", |id| id.source.as_str()),
        identity.map_or(String::new(), |id| id.subject_alt_names.join(",")),
        session.map_or("-", |s| s.version),
    )
}

pub(crate) fn secret(dir: &Path, leaf: &Leaf, client_ca: Option<&str>) -> SecretDir {
    let mut files = vec![
        ("tls.crt", leaf.cert_pem.as_str()),
        ("tls.key", leaf.key_pem.as_str()),
    ];
    if let Some(ca) = client_ca {
        files.push(("ca.crt", ca));
    }
    SecretDir::new(dir, &files)
}

pub(crate) fn tls_config(secret: &SecretDir, mode: TransportMode) -> Config {
    let mut config = test_config();
    config.transport.mode = mode;
    config.transport.http.versions = vec![HttpVersion::Http1, HttpVersion::Http2];
    config.transport.tls.cert_path = Some(secret.path("tls.crt"));
    config.transport.tls.key_path = Some(secret.path("tls.key"));
    if mode == TransportMode::Mtls {
        config.transport.tls.client_ca_path = Some(secret.path("ca.crt"));
    }
    config
}

fn acceptor(config: &Config) -> Result<Acceptor, TlsError> {
    let settings = TlsSettings::from_config(&config.transport)?.expect("a TLS mode");
    Acceptor::load(settings)
}

pub(crate) async fn spawn_tls(config: Config) -> TlsApp {
    let drain = DrainTiming {
        delay: Duration::ZERO,
        timeout: Duration::from_secs(5),
    };
    spawn_tls_with(config, drain).await
}

async fn spawn_tls_with(config: Config, drain: DrainTiming) -> TlsApp {
    let acceptor = acceptor(&config).expect("valid TLS material");
    let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
    let shutdown = ShutdownToken::new();
    let app = App::with_storage(storage, &config, shutdown.clone());
    // Appends take the router's shortcut, as in the binary.
    let options = ServeOptions::from(drain).with_shortcut(app.append_shortcut());
    let (app, readiness) = app.into_router();
    let router =
        proxy::with_client_context(Router::new().route("/whoami", get(whoami)), &config.proxy)
            .merge(app);
    acceptor.spawn_reloader(ReloadTiming::default(), shutdown.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = async move {
        let _ = stopped.await;
    };
    let server = tokio::spawn(serve_tls(
        listener,
        acceptor.clone(),
        router,
        readiness.clone(),
        shutdown,
        signal,
        options,
    ));
    TlsApp {
        addr,
        acceptor,
        readiness,
        stop: Some(stop),
        server: Some(server),
    }
}

/// How long a rotated secret may take to serve: the watch reacts after a
/// 250 ms debounce, so the 2 s holds with room to spare on an idle
/// machine; a loaded CI machine gets 8 s, still under the 10 s polling
/// fallback, so a watch that missed the change still fails the test.
const WATCHED_RELOAD: Duration = Duration::from_secs(8);

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tls_serves_http2_and_http1_by_alpn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let leaf = ca.server(fresh_serial());
    let secret = secret(&dir.path().join("tls"), &leaf, None);
    let app = spawn_tls(tls_config(&secret, TransportMode::Tls)).await;

    let client = https_client(&ca.pem, None);
    let response = client.get(app.at("/healthz")).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response_serial(&response), leaf.serial);

    // Over HTTP/2 there is no Host header: Location comes from :authority,
    // with the https scheme.
    let created = client
        .put(app.at("/v1/stream/greeting"))
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.headers()["location"],
        format!("https://{}/v1/stream/greeting", app.addr).as_str()
    );

    let h1 = connect(
        app.addr,
        client_config(&ca.pem, None, ALL_VERSIONS, &["http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(alpn(&h1).as_deref(), Some("http/1.1"));
    let h2 = connect(
        app.addr,
        client_config(&ca.pem, None, ALL_VERSIONS, &["h2", "http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(alpn(&h2).as_deref(), Some("h2"));

    // A client that offers no ALPN gets HTTP/1.1.
    let mut plain = connect(app.addr, client_config(&ca.pem, None, ALL_VERSIONS, &[]))
        .await
        .expect("handshake");
    assert_eq!(alpn(&plain), None);
    let (status, body) = http1_get(&mut plain, "/whoami").await.expect("GET");
    assert_eq!(status, 200);
    assert_eq!(body, "-|-||TLSv1.3", "no client certificate in tls mode");
}

#[tokio::test]
async fn an_http1_only_listener_does_not_offer_h2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let secret = secret(&dir.path().join("tls"), &ca.server(fresh_serial()), None);
    let mut config = tls_config(&secret, TransportMode::Tls);
    config.transport.http.versions = vec![HttpVersion::Http1];
    let app = spawn_tls(config).await;

    let stream = connect(
        app.addr,
        client_config(&ca.pem, None, ALL_VERSIONS, &["h2", "http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(alpn(&stream).as_deref(), Some("http/1.1"));
    let response = https_client(&ca.pem, None)
        .get(app.at("/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn tls_versions_are_limited_by_the_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let secret = secret(&dir.path().join("tls"), &ca.server(fresh_serial()), None);
    let only12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let only13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    let mut config = tls_config(&secret, TransportMode::Tls);
    config.transport.tls.min_version = TlsVersion::V1_3;
    let app = spawn_tls(config).await;
    let refused = connect(app.addr, client_config(&ca.pem, None, only12, &[])).await;
    assert!(
        refused.is_err(),
        "TLS 1.2 client accepted by a 1.3-only server"
    );
    let stream = connect(app.addr, client_config(&ca.pem, None, ALL_VERSIONS, &[]))
        .await
        .expect("handshake");
    assert_eq!(version(&stream), Some(rustls::ProtocolVersion::TLSv1_3));

    let mut config = tls_config(&secret, TransportMode::Tls);
    config.transport.tls.max_version = TlsVersion::V1_2;
    let app = spawn_tls(config).await;
    let refused = connect(app.addr, client_config(&ca.pem, None, only13, &[])).await;
    assert!(
        refused.is_err(),
        "TLS 1.3 client accepted by a 1.2-only server"
    );
    let mut stream = connect(app.addr, client_config(&ca.pem, None, ALL_VERSIONS, &[]))
        .await
        .expect("handshake");
    assert_eq!(version(&stream), Some(rustls::ProtocolVersion::TLSv1_2));
    let (status, body) = http1_get(&mut stream, "/whoami").await.expect("GET");
    assert_eq!(status, 200);
    assert!(body.ends_with("|TLSv1.2"), "{body}");
}

#[tokio::test]
async fn mtls_accepts_clients_of_any_configured_ca_and_attaches_their_identity() {
    metrics_probe::install();
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = Ca::new("server CA");
    let team_a = Ca::new("clients A");
    let team_b = Ca::new("clients B");
    let bundle = format!("{}{}", team_a.pem, team_b.pem);
    let secret = secret(
        &dir.path().join("tls"),
        &server_ca.server(fresh_serial()),
        Some(&bundle),
    );
    let app = spawn_tls(tls_config(&secret, TransportMode::Mtls)).await;
    let handshakes = metrics_probe::counter("durable_streams_tls_handshakes_total");

    let alice = team_b.client("alice", &["spiffe://example.org/ns/apps/sa/alice"]);
    let response = https_client(&server_ca.pem, Some(&alice))
        .get(app.at("/whoami"))
        .send()
        .await
        .expect("GET with a client certificate");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "alice|certificate|URI:spiffe://example.org/ns/apps/sa/alice|TLSv1.3"
    );

    let bob = team_a.client("bob", &[]);
    let mut stream = connect(
        app.addr,
        client_config(&server_ca.pem, Some(&bob), ALL_VERSIONS, &[]),
    )
    .await
    .expect("handshake");
    let (status, body) = http1_get(&mut stream, "/whoami").await.expect("GET");
    assert_eq!((status, body.as_str()), (200, "bob|certificate||TLSv1.3"));
    assert!(
        metrics_probe::counter("durable_streams_tls_handshakes_total") >= handshakes + 2,
        "handshakes counted"
    );
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_or_from_another_ca() {
    metrics_probe::install();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("server and client CA");
    let stranger_ca = Ca::new("someone else");
    let secret = secret(
        &dir.path().join("tls"),
        &ca.server(fresh_serial()),
        Some(&ca.pem),
    );
    let app = spawn_tls(tls_config(&secret, TransportMode::Mtls)).await;
    let failures = |reason: &str| {
        metrics_probe::counter(&format!(
            "durable_streams_tls_handshake_failures_total{{reason={reason}}}"
        ))
    };
    let no_certificate = failures("no_client_certificate");
    let bad_certificate = failures("bad_client_certificate");

    let anonymous = https_client(&ca.pem, None)
        .get(app.at("/healthz"))
        .send()
        .await;
    assert!(anonymous.is_err(), "served a client without a certificate");
    // TLS 1.2 refuses before the handshake completes.
    let only12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    assert!(
        connect(app.addr, client_config(&ca.pem, None, only12, &[]))
            .await
            .is_err()
    );

    let mallory = stranger_ca.client("mallory", &[]);
    let forged = https_client(&ca.pem, Some(&mallory))
        .get(app.at("/healthz"))
        .send()
        .await;
    assert!(forged.is_err(), "served a client of another CA");

    eventually("failure counts", HANG_GUARD, || {
        failures("no_client_certificate") >= no_certificate + 2
            && failures("bad_client_certificate") > bad_certificate
    })
    .await;

    // A good client still gets in.
    let good = ca.client("carol", &[]);
    let response = https_client(&ca.pem, Some(&good))
        .get(app.at("/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn material_is_validated_before_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let good = ca.server(fresh_serial());

    let mismatched = secret(&dir.path().join("a"), &good.with_foreign_key(), None);
    let error = acceptor(&tls_config(&mismatched, TransportMode::Tls)).expect_err("mismatch");
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(error.to_string().contains("does not match"), "{error}");

    let expired = secret(
        &dir.path().join("b"),
        &ca.expired_server(fresh_serial()),
        None,
    );
    let error = acceptor(&tls_config(&expired, TransportMode::Tls)).expect_err("expired");
    assert!(matches!(error, TlsError::Expired { .. }), "{error}");
    assert!(
        error.to_string().contains("expired at 2021-01-01"),
        "{error}"
    );

    let junk_ca = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    let bad_bundle = secret(&dir.path().join("c"), &good, Some(junk_ca));
    let error = acceptor(&tls_config(&bad_bundle, TransportMode::Mtls)).expect_err("junk CA");
    assert!(error.to_string().contains("client_ca_path"), "{error}");

    // A good set loads; reloading unchanged files does nothing unless forced.
    let fine = secret(&dir.path().join("d"), &good, None);
    let acceptor = acceptor(&tls_config(&fine, TransportMode::Tls)).expect("loads");
    assert_eq!(acceptor.certificate().serial, good.serial);
    assert_eq!(
        acceptor.reload(false).expect("reload"),
        ReloadOutcome::Unchanged
    );
    assert!(matches!(
        acceptor.reload(true).expect("forced reload"),
        ReloadOutcome::Reloaded(_)
    ));
    assert_eq!(acceptor.stats().successes, 1);
}

/// The rotation check: a client opening a fresh TLS connection
/// every 25 ms or so sees no failure while the secret directory is swapped
/// the way the kubelet does it, and the new serial soon after (the issue
/// asks for 2 s; see [`WATCHED_RELOAD`] for the margin allowed); an open
/// connection keeps its certificate and keeps working; a mismatched key is
/// then rejected, counted, and the previous certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_swaps_certificates_without_failed_requests() {
    metrics_probe::install();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let first = ca.server(fresh_serial());
    let second = ca.server(fresh_serial());
    let mut secret = secret(&dir.path().join("tls"), &first, None);
    let app = spawn_tls(tls_config(&secret, TransportMode::Tls)).await;
    let config = client_config(&ca.pem, None, ALL_VERSIONS, &["http/1.1"]);

    // A connection opened before the swap.
    let mut long_lived = connect(app.addr, config.clone()).await.expect("handshake");
    assert_eq!(
        http1_get(&mut long_lived, "/healthz").await.expect("GET").0,
        200
    );

    // The load: a fresh connection and a request every 25 ms.
    let (stop_load, mut load_stopped) = oneshot::channel::<()>();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(
        Instant,
        Result<String, String>,
    )>::new()));
    let load = {
        let seen = Arc::clone(&seen);
        let config = config.clone();
        let addr = app.addr;
        tokio::spawn(async move {
            loop {
                let outcome = async {
                    let mut stream = connect(addr, config.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    let serial = peer_serial(&stream);
                    match http1_get(&mut stream, "/healthz").await {
                        Ok((200, _)) => Ok(serial),
                        Ok((status, _)) => Err(format!("status {status}")),
                        Err(error) => Err(error.to_string()),
                    }
                }
                .await;
                seen.lock().expect("lock").push((Instant::now(), outcome));
                tokio::select! {
                    _ = &mut load_stopped => return,
                    () = tokio::time::sleep(Duration::from_millis(25)) => {}
                }
            }
        })
    };
    let serials_since = |since: Instant| -> Vec<String> {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|(at, _)| *at >= since)
            .filter_map(|(_, outcome)| outcome.as_ref().ok().cloned())
            .collect()
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let swapped_at = Instant::now();
    secret.publish(&[
        ("tls.crt", second.cert_pem.as_str()),
        ("tls.key", second.key_pem.as_str()),
    ]);
    eventually("the new serial", WATCHED_RELOAD, || {
        serials_since(swapped_at).contains(&second.serial)
    })
    .await;
    assert_eq!(app.acceptor.certificate().serial, second.serial);

    // The connection from before still works, with its certificate.
    assert_eq!(
        http1_get(&mut long_lived, "/healthz").await.expect("GET").0,
        200
    );
    assert_eq!(peer_serial(&long_lived), first.serial);

    // A mismatched pair: rejected, counted, the second certificate stays.
    let failures_before = app.acceptor.stats().failures;
    let counted_before =
        metrics_probe::counter("durable_streams_tls_reloads_total{outcome=failure}");
    let broken_at = Instant::now();
    let third = ca.server(fresh_serial()).with_foreign_key();
    secret.publish(&[
        ("tls.crt", third.cert_pem.as_str()),
        ("tls.key", third.key_pem.as_str()),
    ]);
    eventually("the rejected reload", WATCHED_RELOAD, || {
        app.acceptor.stats().failures > failures_before
    })
    .await;
    assert!(
        metrics_probe::counter("durable_streams_tls_reloads_total{outcome=failure}")
            > counted_before
    );
    // Some requests after the rejection, however slow the machine.
    let rejected_at = Instant::now();
    eventually("requests after the rejected reload", HANG_GUARD, || {
        serials_since(rejected_at).len() >= 3
    })
    .await;
    let _ = stop_load.send(());
    load.await.expect("load task");

    let after_break = serials_since(broken_at);
    assert!(!after_break.is_empty(), "no requests after the broken pair");
    assert!(
        after_break.iter().all(|serial| *serial == second.serial),
        "{after_break:?}"
    );
    let outcomes = seen.lock().expect("lock");
    let failed: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, outcome)| outcome.as_ref().err())
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // The load kept going through both swaps: at least one request per
    // 500 ms over the whole test. The loop itself asks every 25 ms plus a
    // handshake; the bound leaves a loaded CI machine 20 times that and
    // still catches a load stalled behind a reload.
    let span = outcomes
        .last()
        .map(|(at, _)| at.duration_since(outcomes[0].0))
        .unwrap_or_default();
    assert!(
        outcomes.len() as u128 >= span.as_millis() / 500,
        "{} requests in {span:?}",
        outcomes.len()
    );
    assert_eq!(app.acceptor.certificate().serial, second.serial);
}

#[tokio::test]
async fn the_drain_over_tls_fails_readyz_releases_live_readers_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let secret = secret(&dir.path().join("tls"), &ca.server(fresh_serial()), None);
    let mut app = spawn_tls_with(
        tls_config(&secret, TransportMode::Tls),
        // A delay long enough for a TLS handshake on a loaded machine
        // (the readyz below must land inside it); a timeout far beyond the
        // bound asserted at the end, so waiting the live reader out shows.
        DrainTiming {
            delay: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
        },
    )
    .await;
    let client = https_client(&ca.pem, None);
    let created = client
        .put(app.at("/v1/stream/live"))
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    let mut reader = SseReader::new(
        client
            .get(app.at("/v1/stream/live?offset=-1&live=sse"))
            .send()
            .await
            .expect("SSE"),
    );
    assert!(reader.next_event().await.is_some(), "a first SSE event");

    app.begin_shutdown();
    eventually("not ready", HANG_GUARD, || !app.readiness.is_ready()).await;
    // New connections are still taken during the delay, and told to go away.
    let readyz = https_client(&ca.pem, None)
        .get(app.at("/readyz"))
        .send()
        .await
        .expect("readyz during the delay");
    assert_eq!(readyz.status(), 503);
    // The live reader is released and the server stops well before the timeout.
    let started = Instant::now();
    let _rest = reader.rest().await;
    app.stopped().await.expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
