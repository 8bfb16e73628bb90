//! The real binary with TLS: the `prod-tls` and `prod-mtls` profiles start
//! with only certificate paths supplied, a key that does not match its
//! certificate stops the start in `load_tls`, the client certificate's
//! identity reaches the log, and a running server reloads its certificate
//! on a Kubernetes-style secret swap and on SIGHUP, keeping the last good
//! one when the new pair is broken.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::pki::{Ca, SecretDir, fresh_serial};
use crate::common::tls_client::{
    ALL_VERSIONS, client_config, connect, http1_get, https_client, peer_serial,
};
use crate::helpers::{command, run, wait, write};

/// A free loopback address for a child to listen on.
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
}

/// The binary running in the background, its JSON log lines collected as
/// they come.
struct Running {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl Running {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)], addr: SocketAddr) -> Running {
        let mut child = command(dir, args, env).spawn().expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        Running {
            child: Some(child),
            lines,
            addr,
        }
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("child").id().to_string()
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.pid()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Log events (JSON lines) whose `message` is `message`.
    fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == message)
            .collect()
    }

    async fn wait_for_events(&self, message: &str, count: usize) -> Vec<serde_json::Value> {
        // Events of a child process reloading files: generous for a loaded
        // machine.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events(message);
            if events.len() >= count {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {count} {message:?} events in:\n{}",
                    self.lines.lock().expect("lock").join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit code. Blocks: clients with open connections
    /// (HTTP/2 answers the drain's GOAWAY and PING) need another worker.
    fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let run = wait(self.child.take().expect("child"), Duration::from_secs(30));
        assert!(run.stderr.is_empty(), "{run:#?}");
        assert!(
            self.events("drain timeout reached; closing the remaining connections")
                .is_empty(),
            "the drain waited for its timeout"
        );
        run.code
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `/readyz` answers `200` over TLS with `config`.
async fn wait_ready(addr: SocketAddr, config: Arc<rustls::ClientConfig>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = connect(addr, config.clone()).await
            && let Ok((200, _)) = http1_get(&mut stream, "/readyz").await
        {
            return;
        }
        assert!(Instant::now() < deadline, "never became ready over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_tls_starts_with_only_the_certificate_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let leaf = ca.server(fresh_serial());
    write(dir.path(), "tls/tls.crt", &leaf.cert_pem);
    write(dir.path(), "tls/tls.key", &leaf.key_pem);
    let addr = free_address();
    let bind = addr.to_string();
    let env = [
        ("DS_TRANSPORT__TLS__CERT_PATH", "tls/tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/tls.key"),
        // prod profiles keep file-durable storage under /var/lib otherwise.
        ("DS_STORAGE__DATA_DIR", "data"),
        ("DS_SERVER__BIND_ADDRESS", bind.as_str()),
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "0"),
    ];
    let server = Running::start(dir.path(), &["--profile", "prod-tls"], &env, addr);
    wait_ready(addr, client_config(&ca.pem, None, ALL_VERSIONS, &["h2"])).await;

    let response = https_client(&ca.pem, None)
        .get(format!("https://{addr}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let loaded = server.wait_for_events("TLS material loaded", 1).await;
    assert_eq!(loaded[0]["serial"], leaf.serial.as_str());
    assert_eq!(loaded[0]["mode"], "tls");
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_mtls_starts_with_only_the_paths_and_logs_the_client_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let leaf = ca.server(fresh_serial());
    write(dir.path(), "tls/tls.crt", &leaf.cert_pem);
    write(dir.path(), "tls/tls.key", &leaf.key_pem);
    write(dir.path(), "tls/ca.crt", &ca.pem);
    let addr = free_address();
    let bind = addr.to_string();
    let env = [
        ("DS_TRANSPORT__TLS__CERT_PATH", "tls/tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/tls.key"),
        ("DS_TRANSPORT__TLS__CLIENT_CA_PATH", "tls/ca.crt"),
        ("DS_STORAGE__DATA_DIR", "data"),
        ("DS_SERVER__BIND_ADDRESS", bind.as_str()),
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "0"),
        // Probes are logged at debug.
        (
            "DS_OBSERVABILITY__RUST_LOG",
            "info,durable_streams_server::access=debug",
        ),
    ];
    let server = Running::start(dir.path(), &["--profile", "prod-mtls"], &env, addr);
    let alice = ca.client("alice", &["spiffe://example.org/alice"]);
    wait_ready(
        addr,
        client_config(&ca.pem, Some(&alice), ALL_VERSIONS, &["http/1.1"]),
    )
    .await;

    let response = https_client(&ca.pem, Some(&alice))
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .expect("GET with a client certificate");
    assert_eq!(response.status(), 200);
    let anonymous = https_client(&ca.pem, None)
        .get(format!("https://{}/healthz", server.addr))
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );

    let requests = server.wait_for_events("request", 2).await;
    let logged = requests
        .iter()
        .find(|event| event["route"] == "/healthz")
        .expect("the /healthz request line");
    assert_eq!(logged["identity"], "alice");
    assert_eq!(logged["identity_source"], "certificate");
    assert_eq!(logged["scheme"], "https");
    assert_eq!(logged["status"], 200);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_key_that_does_not_match_the_certificate_fails_in_load_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let leaf = ca.server(fresh_serial()).with_foreign_key();
    write(dir.path(), "tls/tls.crt", &leaf.cert_pem);
    write(dir.path(), "tls/tls.key", &leaf.key_pem);
    let env = [
        ("DS_TRANSPORT__MODE", "tls"),
        ("DS_TRANSPORT__TLS__CERT_PATH", "tls/tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/tls.key"),
    ];
    for args in [&[][..], &["check-config"][..]] {
        let run = run(dir.path(), args, &env);
        let line = run.failed("load_tls", 7);
        assert!(
            line.contains(
                "the private key in `transport.tls.key_path` = \"tls/tls.key\" does not match \
                 the certificate in `transport.tls.cert_path` = \"tls/tls.crt\""
            ),
            "{line}"
        );
        assert!(
            line.contains("hint: install the key that belongs"),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_reloads_on_a_secret_swap_and_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let first = ca.server(fresh_serial());
    let second = ca.server(fresh_serial());
    let mut secret = SecretDir::new(
        &dir.path().join("secret"),
        &[
            ("tls.crt", first.cert_pem.as_str()),
            ("tls.key", first.key_pem.as_str()),
        ],
    );
    let addr = free_address();
    let bind = addr.to_string();
    let env = [
        ("DS_TRANSPORT__MODE", "tls"),
        ("DS_TRANSPORT__TLS__CERT_PATH", "secret/tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "secret/tls.key"),
        ("DS_SERVER__BIND_ADDRESS", bind.as_str()),
        ("DS_SERVER__SHUTDOWN_DELAY_SECS", "0"),
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
    ];
    let server = Running::start(dir.path(), &[], &env, addr);
    let config = client_config(&ca.pem, None, ALL_VERSIONS, &[]);
    wait_ready(addr, config.clone()).await;
    let serial = || async {
        let stream = connect(addr, config.clone()).await.expect("handshake");
        peer_serial(&stream)
    };
    assert_eq!(serial().await, first.serial);

    // SIGHUP reloads even unchanged files, and does not end the process.
    server.signal("HUP");
    server
        .wait_for_events("TLS material reloaded; new connections use it", 1)
        .await;
    assert_eq!(serial().await, first.serial);

    // The kubelet's atomic swap is picked up by the directory watch.
    secret.publish(&[
        ("tls.crt", second.cert_pem.as_str()),
        ("tls.key", second.key_pem.as_str()),
    ]);
    let reloaded = server
        .wait_for_events("TLS material reloaded; new connections use it", 2)
        .await;
    assert_eq!(reloaded[1]["serial"], second.serial.as_str());
    assert_eq!(serial().await, second.serial);

    // A broken pair is refused, by the watch and again on SIGHUP; the
    // second certificate keeps serving.
    let broken = ca.server(fresh_serial()).with_foreign_key();
    secret.publish(&[
        ("tls.crt", broken.cert_pem.as_str()),
        ("tls.key", broken.key_pem.as_str()),
    ]);
    let rejected = server
        .wait_for_events(
            "TLS reload rejected; the previous certificate keeps serving",
            1,
        )
        .await;
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match"),
        "{}",
        rejected[0]
    );
    assert_eq!(rejected[0]["serving_serial"], second.serial.as_str());
    server.signal("HUP");
    server
        .wait_for_events(
            "TLS reload rejected; the previous certificate keeps serving",
            2,
        )
        .await;
    assert_eq!(serial().await, second.serial);
    assert_eq!(server.stop(), Some(0));
}
