//! Server replicas as real processes in `postgres` mode, for the
//! multi-process replica tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_durable-streams-server");

/// A running replica; killed (SIGKILL) when dropped.
pub struct Replica {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    log: PathBuf,
}

impl Replica {
    /// Starts the server binary in `postgres` mode on `url`, with `env`
    /// besides, and waits until it is ready. A replica that exits before
    /// that (another process took the probed port before it bound it) is
    /// started again on another port.
    pub async fn start(url: &str, log: PathBuf, env: &[(&str, &str)]) -> Replica {
        let mut last_exit = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .expect("a free port");
            let log_file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(BIN)
                .env_clear()
                .env("DS_STORAGE__MODE", "postgres")
                .env("DS_STORAGE__POSTGRES__URL", url)
                .env("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("spawn the server");
            let mut replica = Replica {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if replica.ready().await == Some(StatusCode::OK) {
                    return replica;
                }
                if let Ok(Some(_)) = replica.child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Ok(None) = replica.child.try_wait() {
                panic!("replica not ready:\n{}", replica.log_tail());
            }
            last_exit = replica.log_tail();
        }
        panic!("the replica exited at start five times; the last time:\n{last_exit}");
    }

    /// The status `/readyz` answers, if any.
    pub async fn ready(&self) -> Option<StatusCode> {
        client()
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()
            .map(|response| response.status())
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the replica's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh database and three replicas on it (with `env` besides), their
/// logs in the returned directory.
pub async fn three_replicas(env: &[(&str, &str)]) -> (tempfile::TempDir, Vec<Replica>) {
    let url = tokio::task::spawn_blocking(super::postgres::database)
        .await
        .expect("database");
    let logs = tempfile::tempdir().expect("log dir");
    let mut replicas = Vec::new();
    for index in 0..3 {
        let log = logs.path().join(format!("r{index}.log"));
        replicas.push(Replica::start(&url, log, env).await);
    }
    (logs, replicas)
}

/// An HTTP client with short timeouts and no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}
