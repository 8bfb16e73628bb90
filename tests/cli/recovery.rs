//! The listeners bind before the store opens: after a `kill -9` with a
//! long log tail to replay, `/healthz` answers while `/readyz` says
//! `recovering` and streams answer `503` with `Retry-After`; then the
//! application serves everything that was acknowledged. A SIGTERM during
//! the recovery ends the process cleanly, and the next start recovers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::helpers::{command, terminate};

const STREAMS: usize = 8;
const APPENDS: usize = 16;
const APPEND_BYTES: usize = 1 << 20;

/// Status, headers and body of one request on a fresh connection.
fn request(address: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

fn status(address: &str, path: &str) -> Option<u16> {
    request(address, "GET", path, b"").map(|(status, _)| status)
}

fn start(dir: &std::path::Path, address: &str) -> Child {
    let data = dir.join("data");
    let data = data.to_str().expect("utf-8 path");
    let env = [
        ("DS_SERVER__BIND_ADDRESS", address),
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "0"),
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
        ("DS_STORAGE__MODE", "file-fast"),
        ("DS_STORAGE__DATA_DIR", data),
        // Everything written stays in the log tail: no checkpoint until
        // the next start.
        ("DS_STORAGE__MAX_REPLAY_BYTES", "4294967296"),
        ("DS_STORAGE__CHECKPOINT_INTERVAL_SECS", "3600"),
    ];
    command(dir, &[], &env).spawn().expect("spawn")
}

/// What the probes said until `/readyz` answered `200`.
#[derive(Debug, Default)]
struct Watched {
    healthy_while_recovering: bool,
    recovering: bool,
    /// Stream answers while `/readyz` did not yet answer `200`.
    early_stream_answers: Vec<u16>,
}

/// Polls `/healthz`, a stream and `/readyz` until `/readyz` answers `200`,
/// or until it says `recovering` when `stop_at_recovering`. The stream is
/// asked before `/readyz`, so a stream served by the application is
/// followed by a ready `/readyz` (readiness only turns on once).
fn watch(address: &str, stop_at_recovering: bool) -> Watched {
    let mut watched = Watched::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "never ready: {watched:?}");
        let health = status(address, "/healthz");
        let stream = request(address, "GET", "/v1/stream/s0?offset=-1", b"");
        match request(address, "GET", "/readyz", b"") {
            Some((200, _)) => return watched,
            Some((503, text)) if text.ends_with("recovering") => {
                watched.recovering = true;
                watched.healthy_while_recovering |= health == Some(200);
            }
            _ => {}
        }
        if let Some((code, text)) = stream {
            if code == 503 {
                assert!(text.contains("retry-after: 2"), "{text}");
                assert!(text.contains("application/problem+json"), "{text}");
            }
            watched.early_stream_answers.push(code);
        }
        if stop_at_recovering && watched.recovering {
            return watched;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn probes_answer_while_the_log_tail_is_replayed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").to_string()
    };
    let mut child = start(dir.path(), &address);
    watch(&address, false);
    let payload: Vec<u8> = (0..APPEND_BYTES).map(|i| (i % 251) as u8).collect();
    for stream in 0..STREAMS {
        let path = format!("/v1/stream/s{stream}");
        assert_eq!(request(&address, "PUT", &path, b"").map(|r| r.0), Some(201));
        for _ in 0..APPENDS {
            let answer = request(&address, "POST", &path, &payload).map(|r| r.0);
            assert!(matches!(answer, Some(200 | 204)), "{answer:?}");
        }
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    // A SIGTERM while the tail is replayed: a clean exit, not a wait.
    let child = start(dir.path(), &address);
    let watched = watch(&address, true);
    assert!(watched.recovering, "{watched:?}");
    let run = terminate(child);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout.contains("stopped while storage was recovering"),
        "{}",
        run.stdout
    );

    let child = start(dir.path(), &address);
    let watched = watch(&address, false);
    assert!(watched.recovering, "{watched:?}");
    assert!(watched.healthy_while_recovering, "{watched:?}");
    // Nothing is served as a stream before the store is open.
    assert!(
        watched.early_stream_answers.iter().all(|&code| code == 503),
        "{watched:?}"
    );
    for stream in 0..STREAMS {
        let path = format!("/v1/stream/s{stream}");
        let (code, head) = request(&address, "HEAD", &path, b"").expect("HEAD");
        assert_eq!(code, 200, "{head}");
        let next = format!(
            "stream-next-offset: {:016}_{:016}",
            0,
            APPENDS * APPEND_BYTES
        );
        assert!(head.to_ascii_lowercase().contains(&next), "{head}");
    }
    let run = terminate(child);
    assert_eq!(run.code, Some(0), "{run:#?}");
    for line in ["replaying the log", "log replayed", "storage recovered"] {
        assert!(run.stdout.contains(line), "no {line:?} in {}", run.stdout);
    }
}
