//! Graceful shutdown of the real binary: SIGTERM while 100 SSE readers and
//! 100 long-polls are connected.
//!
//! Every wait is bounded, so a server that never lets go fails the test
//! instead of hanging it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::helpers::*;

const READERS: usize = 100;

/// The binary as a child process on a free loopback port.
struct Server {
    child: Child,
    base_url: String,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    async fn start() -> Self {
        // Reserve a free port, then hand it to the child. The tiny window in
        // which another process could take it is acceptable for a test.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable-streams-server"))
            .env("DS_SERVER__BIND_ADDRESS", addr.to_string())
            .env("DS_SERVER__SHUTDOWN_DELAY_SECS", "2")
            .env("DS_SERVER__DRAIN_TIMEOUT_SECS", "10")
            .env("DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS", "30")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the server binary");
        let log = Arc::new(Mutex::new(String::new()));
        // Logs go to stdout; startup failures to stderr. Keep both.
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for mut pipe in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let sink = log.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            });
        }
        let server = Self {
            child,
            base_url: format!("http://{addr}"),
            addr,
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let probe = client();
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Ok(response) = probe.get(format!("{}/readyz", self.base_url)).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never became ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn url(&self, name: &str) -> String {
        format!("{}/v1/stream/{name}", self.base_url)
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("child is running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }
}

/// Sends a long-poll on its own connection and returns the socket.
async fn start_long_poll(addr: std::net::SocketAddr, target: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.expect("connect long-poll");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_readers_and_exits_cleanly() {
    let mut server = Server::start().await;
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
    // its 30 s timeout (the process is gone after at most 10 s).
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

    let status = tokio::time::timeout(HANG_GUARD, server.child.wait())
        .await
        .unwrap_or_else(|_| panic!("server did not exit; log:\n{}", server.log()))
        .expect("wait for the server");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains("drain timeout reached"), "{log}");
}
