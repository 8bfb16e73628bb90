//! A clean start, readiness, and a drain on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::helpers::{command, terminate, wait};

fn status(address: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

#[test]
fn serves_after_every_phase_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").to_string()
    };
    let env = [
        ("DS_SERVER__BIND_ADDRESS", address.as_str()),
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "0"),
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
    ];
    let child = command(dir.path(), &[], &env).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&address, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&address, "/healthz"), Some(200));
    let run = terminate(child);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.is_empty(), "{run:#?}");

    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON log line"))
        .collect();
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["message"] == "entering phase")
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        [
            "load_config",
            "validate_config",
            "init_telemetry",
            "load_tls",
            "bind_listener",
            "open_storage",
            "serve",
            "drain"
        ]
    );
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "listening" && e["address"] == address.as_str())
    );
}

#[test]
fn a_failed_start_also_logs_a_structured_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("DS_PROFILE", "prod"), ("DS_HTTP__CORS_ORIGINS", "*")];
    let run = wait(
        command(dir.path(), &[], &env).spawn().expect("spawn"),
        Duration::from_secs(30),
    );
    run.failed("validate_config", 4);
    // prod logs JSON even when the configuration is rejected.
    let event: serde_json::Value = run
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|e| e["message"] == "startup failed")
        .unwrap_or_else(|| panic!("no startup failed event in {}", run.stdout));
    assert_eq!(event["level"], "ERROR");
    assert_eq!(event["phase"], "validate_config");
    assert_eq!(event["exit_code"], 4);
    assert!(
        event["cause"]
            .as_str()
            .unwrap_or_default()
            .contains("http.cors_origins")
    );
}
