//! `acid` after a write that fails on the disk: the server binary runs with
//! a file-size limit (`RLIMIT_FSIZE`, its `SIGXFSZ` ignored, so a write past
//! the limit fails with `EFBIG` as one past a full disk fails with
//! `ENOSPC`). redb fails every later transaction on a database whose commit
//! failed, reads included; what was acknowledged must stay readable.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_durable-streams-server");
/// Above the acknowledgement logs' fixed 16 MiB, so only the database
/// files' growth meets the limit.
const FILE_SIZE_LIMIT: u64 = 24 << 20;
const APPEND_BYTES: usize = 1 << 20;

/// The server binary, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path, port: u16, log: &Path) -> Server {
    let log = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("DS_STORAGE__MODE", "acid")
        .env("DS_STORAGE__DATA_DIR", data)
        .env("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("DS_LIMITS__MAX_STREAM_BYTES", "1073741824")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    // SAFETY: between fork and exec only async-signal-safe calls
    // (`signal`, `setrlimit`) on values owned by this closure.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: FILE_SIZE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server(command.spawn().expect("spawn the server"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Every byte from the start of the stream, or the first refusal.
async fn read_all(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut offset = "-1".to_string();
    loop {
        let response = http
            .get(format!("{url}?offset={offset}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        out.extend_from_slice(&body);
        let up_to_date = headers.get("stream-up-to-date").is_some();
        offset = headers
            .get("stream-next-offset")
            .and_then(|v| v.to_str().ok())
            .ok_or("no Stream-Next-Offset")?
            .to_string();
        if up_to_date || body.is_empty() {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acid_serves_acknowledged_data_after_a_failed_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("server.log");
    let _server = start(&dir.path().join("data"), port, &log);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{base}/v1/stream/kept");
    let created = http
        .put(&url)
        .header("content-type", "application/octet-stream")
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);

    // Appends until the file-size limit refuses one (within twice the
    // limit's worth of data).
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..(2 * FILE_SIZE_LIMIT as usize / APPEND_BYTES) {
        let body = vec![u8::try_from(i % 251).unwrap_or(0); APPEND_BYTES];
        let response = http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .expect("append answered");
        if response.status().is_success() {
            acknowledged.extend_from_slice(&body);
        } else {
            refused = Some(response.status());
            break;
        }
    }
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let refused = refused.unwrap_or_else(|| panic!("no append was refused:\n{}", log_text()));
    assert!(refused.is_server_error(), "{refused}");
    // A second write also fails, so the database has seen its failure.
    let again = http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; APPEND_BYTES])
        .send()
        .await
        .expect("append answered");
    assert!(again.status().is_server_error(), "{}", again.status());

    let read = read_all(&http, &url)
        .await
        .unwrap_or_else(|e| panic!("read after the failed write: {e}\n{}", log_text()));
    assert_eq!(read.len(), acknowledged.len());
    assert!(
        read == acknowledged,
        "the bytes read differ from those acknowledged"
    );
    let head = http.head(&url).send().await.expect("head");
    assert_eq!(head.status(), 200);
}
