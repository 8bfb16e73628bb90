//! Proxy trust over real sockets: forwarding headers and the identity
//! header are believed from trusted proxies only. The test client connects
//! from 127.0.0.1, so "trusted" means a trusted list holding it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use durable_streams_server::client::{ClientAddr, ClientIdentity, ForwardedHost, Scheme};
use durable_streams_server::config::{ForwardedHeaders, IdentityMode, ProxyConfig};
use durable_streams_server::server::{DrainTiming, ServeOptions, serve};
use durable_streams_server::{App, Config, InMemoryStorage, ShutdownToken, proxy};
use tokio::net::TcpListener;

use crate::helpers::{client, test_config};

/// What a handler sees of its client, as JSON.
async fn echo(request: Request) -> String {
    let extensions = request.extensions();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    serde_json::json!({
        "client_addr": extensions.get::<ClientAddr>().map(|a| a.0.to_string()),
        "scheme": extensions.get::<Scheme>().map(|s| s.as_str()),
        "host": extensions.get::<ForwardedHost>().map(|h| h.0.clone()),
        "identity": extensions.get::<ClientIdentity>().map(|i| i.name.clone()),
        "identity_source": extensions.get::<ClientIdentity>().map(|i| i.source.as_str()),
        "x_forwarded_for": header("x-forwarded-for"),
        "forwarded": header("forwarded"),
        "x_client_identity": header("x-client-identity"),
    })
    .to_string()
}

struct ProxyApp {
    base_url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn spawn(proxy_config: ProxyConfig) -> ProxyApp {
    let mut config: Config = test_config();
    config.proxy = proxy_config;
    let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
    let shutdown = ShutdownToken::new();
    let app = App::with_storage(storage, &config, shutdown.clone());
    // Appends take the router's shortcut, as in the binary.
    let shortcut = app.append_shortcut();
    let (app, readiness) = app.into_router();
    let router = proxy::with_client_context(Router::new().route("/echo", get(echo)), &config.proxy)
        .merge(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        router,
        readiness,
        shutdown,
        async move {
            let _ = stopped.await;
        },
        ServeOptions::from(DrainTiming {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        })
        .with_shortcut(shortcut),
    ));
    ProxyApp {
        base_url: format!("http://{addr}"),
        _stop: stop,
    }
}

fn trusting(trusted: &[&str], forwarded: ForwardedHeaders) -> ProxyConfig {
    ProxyConfig {
        enabled: true,
        forwarded_headers: forwarded,
        trusted_proxies: trusted.iter().map(|s| (*s).to_owned()).collect(),
        ..ProxyConfig::default()
    }
}

async fn echo_with(app: &ProxyApp, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut request = client().get(format!("{}/echo", app.base_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = request
        .send()
        .await
        .expect("GET /echo")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("JSON")
}

async fn location_with(app: &ProxyApp, name: &str, headers: &[(&str, &str)]) -> String {
    let mut request = client()
        .put(format!("{}/v1/stream/{name}", app.base_url))
        .header("content-type", "text/plain");
    for (header, value) in headers {
        request = request.header(*header, *value);
    }
    let response = request.send().await.expect("PUT");
    assert_eq!(response.status(), 201);
    response.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned()
}

const SPOOFED: [(&str, &str); 3] = [
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "streams.example.com"),
];

#[tokio::test]
async fn spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored_and_removed() {
    let app = spawn(trusting(&["10.0.0.0/8"], ForwardedHeaders::XForwarded)).await;
    let seen = echo_with(&app, &SPOOFED).await;
    assert_eq!(seen["client_addr"], "127.0.0.1");
    assert_eq!(seen["scheme"], "http");
    assert_eq!(seen["host"], serde_json::Value::Null);
    assert_eq!(
        seen["x_forwarded_for"],
        serde_json::Value::Null,
        "removed before the handlers"
    );
    let location = location_with(&app, "a", &SPOOFED).await;
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
}

#[tokio::test]
async fn x_forwarded_headers_from_a_trusted_cidr_are_used() {
    let app = spawn(trusting(&["127.0.0.0/8"], ForwardedHeaders::XForwarded)).await;
    let seen = echo_with(&app, &SPOOFED).await;
    assert_eq!(seen["client_addr"], "203.0.113.9");
    assert_eq!(seen["scheme"], "https");
    assert_eq!(seen["host"], "streams.example.com");
    assert_eq!(seen["x_forwarded_for"], "203.0.113.9");
    assert_eq!(
        location_with(&app, "b", &SPOOFED).await,
        "https://streams.example.com/v1/stream/b"
    );
}

#[tokio::test]
async fn rfc7239_forwarded_from_a_trusted_proxy_is_used_and_x_forwarded_is_not() {
    let app = spawn(trusting(&["127.0.0.1"], ForwardedHeaders::Forwarded)).await;
    let headers = [
        (
            "forwarded",
            "for=\"[2001:db8::7]:1234\";proto=https;host=public.example",
        ),
        ("x-forwarded-for", "198.51.100.1"),
    ];
    let seen = echo_with(&app, &headers).await;
    assert_eq!(seen["client_addr"], "2001:db8::7");
    assert_eq!(seen["scheme"], "https");
    assert_eq!(seen["x_forwarded_for"], serde_json::Value::Null);
    assert_eq!(
        location_with(&app, "c", &headers).await,
        "https://public.example/v1/stream/c"
    );
}

#[tokio::test]
async fn the_identity_header_is_removed_from_untrusted_peers_and_believed_from_trusted_ones() {
    let with_identity = |trusted: &[&str]| {
        let mut config = trusting(trusted, ForwardedHeaders::None);
        config.identity.mode = IdentityMode::Header;
        // Plain HTTP in this test; over TLS only would be the default.
        config.identity.require_tls = false;
        config
    };
    let header = [("x-client-identity", "spiffe://example.org/alice")];

    let untrusted = spawn(with_identity(&["10.0.0.0/8"])).await;
    let seen = echo_with(&untrusted, &header).await;
    assert_eq!(seen["identity"], serde_json::Value::Null);
    assert_eq!(seen["x_client_identity"], serde_json::Value::Null);

    let trusted = spawn(with_identity(&["127.0.0.1/32"])).await;
    let seen = echo_with(&trusted, &header).await;
    assert_eq!(seen["identity"], "spiffe://example.org/alice");
    assert_eq!(seen["identity_source"], "proxy-header");

    // require_tls: a plain connection from a trusted proxy is not enough.
    let mut strict = with_identity(&["127.0.0.1/32"]);
    strict.identity.require_tls = true;
    let strict = spawn(strict).await;
    let seen = echo_with(&strict, &header).await;
    assert_eq!(seen["identity"], serde_json::Value::Null);
    assert_eq!(seen["x_client_identity"], serde_json::Value::Null);
}

#[tokio::test]
async fn without_proxy_trust_forwarding_headers_are_removed() {
    let app = spawn(ProxyConfig::default()).await;
    let seen = echo_with(&app, &SPOOFED).await;
    assert_eq!(seen["client_addr"], "127.0.0.1");
    assert_eq!(seen["x_forwarded_for"], serde_json::Value::Null);
}
