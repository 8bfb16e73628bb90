//! Graceful shutdown of the real binary: SIGTERM while 100 SSE readers and
//! 100 long-polls are connected.
//!
//! Every wait is bounded, so a server that never lets go fails the test
//! instead of hanging it.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;

const READERS: usize = 100;

/// Sends a long-poll on its own connection and returns the socket.
async fn start_long_poll(addr: std::net::SocketAddr, target: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.expect("connect long-poll");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_readers_and_exits_cleanly() {
    let mut server = ChildServer::start(&[
        // Long enough for a loaded machine to see /readyz fail before the
        // listener closes.
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "5"),
        ("DS_SERVER__DRAIN_TIMEOUT_SECS", "10"),
        ("DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS", "30"),
        ("RUST_LOG", "info"),
    ])
    .await;
    let http = client();
    let created = http
        .put(server.url("drain"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tail = header(&created, "stream-next-offset");

    // 100 SSE readers, each past its catch-up (data + control).
    let sse_url = format!("{}?offset=-1&live=sse", server.url("drain"));
    let mut readers = join_all((0..READERS).map(|_| {
        let http = http.clone();
        let url = sse_url.clone();
        async move {
            let mut reader = open_sse(&http, &url).await;
            let first = reader.take(2).await;
            assert_eq!(first[0].data(), "x");
            assert_eq!(first[1].control()["upToDate"], true);
            reader
        }
    }))
    .await;

    // 100 long-polls waiting at the tail, on connections of their own.
    let target = format!("/v1/stream/drain?offset={tail}&live=long-poll");
    let mut polls = join_all((0..READERS).map(|_| start_long_poll(server.addr, &target))).await;
    // The listener accepts in order: once a later connection is served, the
    // long-polls have been accepted too.
    let probe = client();
    let ready = probe
        .get(format!("{}/readyz", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    server.terminate();

    // Readiness fails at once while the listener still accepts.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    let mut saw_503 = false;
    while tokio::time::Instant::now() < deadline {
        let fresh = client();
        match fresh
            .get(format!("{}/readyz", server.base_url))
            .send()
            .await
        {
            Ok(response) if response.status() == 503 => {
                assert_security_headers(&response);
                saw_503 = true;
                break;
            }
            Ok(response) => assert_eq!(response.status(), 200),
            Err(error) => panic!(
                "listener closed before /readyz reported 503: {error}; log:\n{}",
                server.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "/readyz never answered 503 during the drain");

    // Every long-poll is answered 204 — released by the drain, long before
    // its 30 s timeout (the process is gone after at most 15 s).
    let answers = join_all(polls.iter_mut().map(read_one_response)).await;
    for answer in &answers {
        assert_eq!(answer.status, 204, "{answer:?}");
        assert_eq!(answer.header("stream-next-offset").as_deref(), Some(&*tail));
        assert_eq!(answer.header("stream-up-to-date").as_deref(), Some("true"));
        assert_eq!(answer.header("stream-closed"), None, "{answer:?}");
    }

    // Every SSE stream ends after a last control that is not an EOF: the
    // stream goes on, only this server is leaving.
    let endings = join_all(readers.iter_mut().map(|reader| reader.rest())).await;
    for events in endings {
        let last = events.last().expect("a last control event before the end");
        let control = last.control();
        assert_eq!(control["streamNextOffset"], tail.as_str());
        assert!(control.get("streamClosed").is_none(), "{control}");
    }

    let status = server.exited(HANG_GUARD).await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains("drain timeout reached"), "{log}");
}
