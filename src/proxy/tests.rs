//! Proxy trust: forwarding headers from trusted peers only, identity
//! handoff, and the request context the middleware attaches.

use super::*;
use crate::client::IdentitySource;
use axum::http::HeaderValue;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn policy(forwarded: ForwardedHeaders, trusted: &[&str]) -> ProxyPolicy {
    ProxyPolicy::from_config(&ProxyConfig {
        enabled: true,
        forwarded_headers: forwarded,
        trusted_proxies: trusted.iter().map(|s| (*s).to_owned()).collect(),
        identity: crate::config::ProxyIdentityConfig {
            mode: IdentityMode::Header,
            header_name: "x-client-identity".into(),
            require_tls: true,
        },
    })
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn tls() -> TlsSession {
    TlsSession {
        version: "TLSv1.3",
        alpn: None,
        peer: None,
    }
}

#[test]
fn networks_match_and_map_ipv4_in_ipv6() {
    let net = IpNet::parse("10.0.0.0/8").expect("net");
    assert!(net.contains(ip("10.1.2.3")));
    assert!(net.contains(ip("::ffff:10.1.2.3")));
    assert!(!net.contains(ip("11.0.0.1")));
    let mapped = IpNet::parse("::ffff:192.168.0.0/112").expect("mapped");
    assert!(mapped.contains(ip("192.168.4.5")));
    let host = IpNet::parse("2001:db8::1").expect("host");
    assert!(host.contains(ip("2001:db8::1")));
    assert!(!host.contains(ip("2001:db8::2")));
    assert!(
        IpNet::parse("0.0.0.0/0")
            .expect("all")
            .contains(ip("8.8.8.8"))
    );
    assert!(IpNet::parse("::/0").expect("all6").contains(ip("fd00::1")));
    assert_eq!(IpNet::parse("10.0.0.0/33"), None);
    assert_eq!(IpNet::parse("example.com"), None);
}

#[test]
fn spoofed_forwarding_headers_from_untrusted_peers_are_removed() {
    let policy = policy(ForwardedHeaders::XForwarded, &["10.0.0.0/8"]);
    let mut map = headers(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=1.2.3.4"),
    ]);
    let resolved = policy.resolve(&mut map, Some(ip("192.0.2.9")), None);
    assert_eq!(resolved.addr, Some(ip("192.0.2.9")));
    assert_eq!(resolved.scheme, Scheme::Http);
    assert!(map.is_empty(), "{map:?}");
}

#[test]
fn x_forwarded_from_a_trusted_chain() {
    let policy = policy(ForwardedHeaders::XForwarded, &["10.0.0.0/8"]);
    // client 203.0.113.7 -> spoofed entry it sent itself -> LB 10.0.0.2 -> us
    let mut map = headers(&[
        ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
        ("x-forwarded-for", "10.0.0.2"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "streams.example.com"),
        ("forwarded", "for=9.9.9.9"),
    ]);
    let resolved = policy.resolve(&mut map, Some(ip("::ffff:10.0.0.1")), None);
    assert_eq!(resolved.addr, Some(ip("203.0.113.7")));
    assert_eq!(resolved.peer, Some(ip("10.0.0.1")));
    assert_eq!(resolved.scheme, Scheme::Https);
    assert_eq!(resolved.host.as_deref(), Some("streams.example.com"));
    assert!(
        !map.contains_key(header::FORWARDED),
        "not the configured kind"
    );
    assert!(map.contains_key(X_FORWARDED_FOR));
}

#[test]
fn x_forwarded_edge_cases() {
    let policy = policy(ForwardedHeaders::XForwarded, &["10.0.0.0/8"]);
    let peer = Some(ip("10.0.0.1"));
    let resolve = |pairs: &[(&str, &str)]| policy.resolve(&mut headers(pairs), peer, None);
    // Ports and brackets.
    assert_eq!(
        resolve(&[("x-forwarded-for", "[2001:db8::5]:443")]).addr,
        Some(ip("2001:db8::5"))
    );
    assert_eq!(
        resolve(&[("x-forwarded-for", "198.51.100.1:5000")]).addr,
        Some(ip("198.51.100.1"))
    );
    // Junk stops the walk at the last trusted hop.
    assert_eq!(
        resolve(&[("x-forwarded-for", "198.51.100.1, junk, 10.0.0.3")]).addr,
        Some(ip("10.0.0.3"))
    );
    // All hops trusted: the farthest.
    assert_eq!(
        resolve(&[("x-forwarded-for", "10.9.9.9, 10.0.0.3")]).addr,
        Some(ip("10.9.9.9"))
    );
    // A host that could change the URL is ignored.
    assert_eq!(
        resolve(&[("x-forwarded-host", "evil.example/path")]).host,
        None
    );
    assert_eq!(
        resolve(&[("x-forwarded-proto", "gopher")]).scheme,
        Scheme::Http
    );
}

#[test]
fn rfc7239_forwarded_from_a_trusted_peer() {
    let policy = policy(ForwardedHeaders::Forwarded, &["10.0.0.0/8"]);
    let mut map = headers(&[
        (
            "forwarded",
            "for=\"[2001:db8:cafe::17]:4711\";proto=https;host=\"a.example\", \
             for=10.0.0.9;proto=http;host=internal",
        ),
        ("x-forwarded-for", "6.6.6.6"),
    ]);
    let resolved = policy.resolve(&mut map, Some(ip("10.0.0.1")), None);
    assert_eq!(resolved.addr, Some(ip("2001:db8:cafe::17")));
    assert_eq!(resolved.scheme, Scheme::Https);
    assert_eq!(resolved.host.as_deref(), Some("a.example"));
    assert!(!map.contains_key(X_FORWARDED_FOR));

    let mut map = headers(&[("forwarded", "for=unknown;proto=https")]);
    let resolved = policy.resolve(&mut map, Some(ip("10.0.0.1")), None);
    assert_eq!(resolved.addr, Some(ip("10.0.0.1")));
    assert_eq!(resolved.scheme, Scheme::Https);
}

#[test]
fn proxy_disabled_trusts_nobody() {
    let mut config = ProxyConfig {
        trusted_proxies: vec!["0.0.0.0/0".into()],
        forwarded_headers: ForwardedHeaders::XForwarded,
        ..ProxyConfig::default()
    };
    config.enabled = false;
    let policy = ProxyPolicy::from_config(&config);
    let mut map = headers(&[("x-forwarded-for", "1.2.3.4")]);
    let resolved = policy.resolve(&mut map, Some(ip("10.0.0.1")), None);
    assert_eq!(resolved.addr, Some(ip("10.0.0.1")));
    assert!(map.is_empty());
}

#[test]
fn identity_header_needs_a_trusted_peer_and_tls() {
    let policy = policy(ForwardedHeaders::None, &["10.0.0.0/8"]);
    let header = [("x-client-identity", "spiffe://example.org/alice")];

    let mut map = headers(&header);
    let resolved = policy.resolve(&mut map, Some(ip("10.0.0.1")), Some(&tls()));
    let identity = resolved.identity.expect("believed");
    assert_eq!(identity.name, "spiffe://example.org/alice");
    assert_eq!(identity.source, IdentitySource::ProxyHeader);
    assert!(map.contains_key("x-client-identity"));

    let mut map = headers(&header);
    let resolved = policy.resolve(&mut map, Some(ip("192.0.2.1")), Some(&tls()));
    assert_eq!(resolved.identity, None);
    assert!(map.is_empty(), "stripped from an untrusted peer");

    let mut map = headers(&header);
    let resolved = policy.resolve(&mut map, Some(ip("10.0.0.1")), None);
    assert_eq!(resolved.identity, None, "require_tls");
    assert!(map.is_empty());
}

#[test]
fn a_certificate_identity_is_the_default() {
    let policy = policy(ForwardedHeaders::None, &["10.0.0.0/8"]);
    let mut session = tls();
    session.peer = ClientIdentity::from_certificate(Some("svc".into()), Vec::new());
    let resolved = policy.resolve(&mut HeaderMap::new(), Some(ip("192.0.2.1")), Some(&session));
    assert_eq!(resolved.identity.map(|id| id.name), Some("svc".into()));
    assert_eq!(resolved.scheme, Scheme::Https);
}

#[test]
fn quoted_splitting() {
    assert_eq!(
        split_quoted("a=\"x,y\";b=2, c=3", ','),
        vec!["a=\"x,y\";b=2".to_owned(), "c=3".to_owned()]
    );
    assert_eq!(unquote("\"a\\\"b\""), "a\"b");
}

#[test]
fn warnings_are_rate_limited() {
    let limiter = RateLimited::default();
    assert_eq!(limiter.allow(), Some(0));
    assert_eq!(limiter.allow(), None);
    assert_eq!(limiter.allow(), None);
    *limiter.last.lock().expect("lock") = Instant::now().checked_sub(WARN_INTERVAL);
    assert_eq!(limiter.allow(), Some(2));
}
