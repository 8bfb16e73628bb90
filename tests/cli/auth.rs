//! Access control in the real binary: tokens and keys in headers and in
//! the query string reach the server, and none of them reaches its log,
//! even at `debug`; the access log names the principal.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::common::jwt::{TestKey, jwks};
use crate::helpers::{command, terminate, write};

const API_KEY: &str = "svc-key-0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f";

/// One HTTP/1.1 exchange; the status and the whole answer.
fn exchange(address: &str, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{head}\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn no_token_or_key_reaches_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = TestKey::ed25519("k1");
    write(dir.path(), "jwks/jwks.json", &jwks(&[&key]));
    let digest: String = ring::digest::digest(&ring::digest::SHA256, API_KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write(
        dir.path(),
        "keys/api-keys.toml",
        &format!(
            "[[keys]]\nname = \"ingest\"\nsha256 = \"{digest}\"\n\
             grants = [{{ paths = [\"/v1/stream/**\"], ops = [\"append\"] }}]\n"
        ),
    );
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let token = key.token(&json!({
        "sub": "alice", "exp": exp,
        "ds": [{"paths": ["/v1/stream/**"], "ops": ["read", "create"]}],
    }));
    let address = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").to_string()
    };
    let jwks_path = dir.path().join("jwks/jwks.json");
    let keys_path = dir.path().join("keys/api-keys.toml");
    let env = [
        ("DS_SERVER__BIND_ADDRESS", address.as_str()),
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "0"),
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
        ("DS_AUTH__MODE", "token"),
        ("DS_AUTH__JWKS_PATH", jwks_path.to_str().expect("utf-8")),
        ("DS_AUTH__API_KEYS_PATH", keys_path.to_str().expect("utf-8")),
        ("DS_AUTH__QUERY_PARAM", "access_token"),
    ];
    let child = command(dir.path(), &[], &env).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&address).is_err()
        || exchange(&address, "GET /readyz HTTP/1.1").0 != 200
    {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bearer = format!("Authorization: Bearer {token}");
    let (status, answer) = exchange(&address, &format!("PUT /v1/stream/a HTTP/1.1\r\n{bearer}"));
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = exchange(
        &address,
        &format!(
            "POST /v1/stream/a HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/octet-stream"
        ),
    );
    assert!(status == 204 || status == 400, "{answer}");
    let (status, answer) = exchange(
        &address,
        &format!("GET /v1/stream/a?offset=-1&access_token={token} HTTP/1.1"),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("private, no-store"), "{answer}");
    let (status, answer) = exchange(
        &address,
        &format!("GET /v1/stream/a HTTP/1.1\r\nAuthorization: Bearer {token}x"),
    );
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = exchange(
        &address,
        &format!("DELETE /v1/stream/a HTTP/1.1\r\n{bearer}"),
    );
    assert_eq!(status, 403, "{answer}");
    // Each refusal is counted by its reason, and no credential is a label.
    let (status, metrics) = exchange(&address, "GET /metrics HTTP/1.1");
    assert_eq!(status, 200, "{metrics}");
    for reason in ["malformed_token", "not_granted"] {
        let series = format!("durable_streams_auth_denied_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
    let run = terminate(child);
    assert_eq!(run.code, Some(0), "{run:#?}");
    let log = format!("{}{}", run.stdout, run.stderr);
    // The signature is the secret part of a JWT; the key is all secret.
    let signature = token.rsplit('.').next().expect("signature");
    for (what, secret) in [
        ("token", signature),
        ("API key", API_KEY),
        ("key hash", &digest),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log:\n{log}");
        assert!(!metrics.contains(secret), "the {what} is in the metrics");
    }
    let principals: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["message"] == "request")
        .filter_map(|e| e["principal"].as_str().map(str::to_owned))
        .collect();
    assert!(principals.iter().any(|p| p == "alice"), "{principals:?}");
    assert!(principals.iter().any(|p| p == "ingest"), "{principals:?}");
}
