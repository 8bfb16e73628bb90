//! The durable modes after a write that fails on the disk: the server
//! binary runs with a file-size limit (`RLIMIT_FSIZE`, its `SIGXFSZ`
//! ignored, so a write past the limit fails with `EFBIG` as one past a full
//! disk fails with `ENOSPC`). What was acknowledged must stay readable
//! while writes are refused (`acid`: redb fails every later transaction on
//! a database whose commit failed, reads included); once the limit is
//! raised from outside (`prlimit`, as when space is freed), writes resume
//! without a restart, and a restart then finds exactly what was
//! acknowledged.

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

/// Starts the server in `mode` on `data`, its files limited to
/// `FILE_SIZE_LIMIT` bytes (a limit its parent may raise) when `limited`.
fn start(mode: &str, data: &Path, port: u16, log: &Path, limited: bool) -> Server {
    let log = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("DS_STORAGE__MODE", mode)
        .env("DS_STORAGE__DATA_DIR", data)
        .env("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("DS_LIMITS__MAX_STREAM_BYTES", "1073741824")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    if !limited {
        return Server(command.spawn().expect("spawn the server"));
    }
    // SAFETY: between fork and exec only async-signal-safe calls
    // (`signal`, `setrlimit`) on values owned by this closure.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: libc::RLIM_INFINITY,
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

/// Lifts the file-size limit of the running server (as freeing space on a
/// full disk would).
fn lift_limit(server: &Server) {
    let pid = libc::pid_t::try_from(server.0.id()).expect("a pid");
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `prlimit` reads the new limit from a value that outlives the
    // call and writes no old limit (null).
    let done = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &unlimited, std::ptr::null_mut()) };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that the stream at `url` holds exactly `expected` (`log`: the
/// server's, shown on failure).
async fn expect_contents(
    http: &reqwest::Client,
    url: &str,
    expected: &[u8],
    when: &str,
    log: &Path,
) {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let read = read_all(http, url)
        .await
        .unwrap_or_else(|e| panic!("{when}: read: {e}\n{}", log_text()));
    assert_eq!(read.len(), expected.len(), "{when}\n{}", log_text());
    assert!(
        read == expected,
        "{when}: the bytes read differ from those acknowledged"
    );
}

/// Appends `body`; the status.
async fn append(http: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::StatusCode {
    http.post(url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("append answered")
        .status()
}

/// Fills a stream until the limit refuses an append, checks that what was
/// acknowledged stays readable, lifts the limit, checks that appends are
/// taken again, and restarts the server to check that exactly the
/// acknowledged data is there. `full` is the status of a refused append
/// (`507`, past the file-size limit as past a full disk) carries
/// `Retry-After`.
async fn refused_then_resumed(mode: &str) {
    let is_refusal = |status: reqwest::StatusCode| status == 507;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("server.log");
    let server = start(mode, &data, port, &log, true);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let http = client();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&http, &base).await;
    let url = format!("{base}/v1/stream/kept");
    let created = http
        .put(&url)
        .header("content-type", "application/octet-stream")
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201, "{mode}");

    // Appends until the file-size limit refuses one (within twice the
    // limit's worth of data). Every body differs, so a refused append
    // that shows up later is seen.
    let body = |i: usize| vec![u8::try_from(i % 251).unwrap_or(0); APPEND_BYTES];
    let mut acknowledged = Vec::new();
    let mut refused = None;
    let mut sent = 0;
    for _ in 0..(2 * FILE_SIZE_LIMIT as usize / APPEND_BYTES) {
        sent += 1;
        let status = append(&http, &url, body(sent)).await;
        if status.is_success() {
            acknowledged.extend_from_slice(&body(sent));
        } else {
            refused = Some(status);
            break;
        }
    }
    let refused =
        refused.unwrap_or_else(|| panic!("{mode}: no append was refused:\n{}", log_text()));
    assert!(is_refusal(refused), "{mode}: {refused}\n{}", log_text());
    // A second write also fails, so the store has seen its failure; the
    // answer says when to try again.
    sent += 1;
    let again = http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(body(sent))
        .send()
        .await
        .expect("append answered");
    assert!(
        is_refusal(again.status()),
        "{mode}: {again:?}\n{}",
        log_text()
    );
    assert_eq!(
        again
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5"),
        "{mode}"
    );

    expect_contents(
        &http,
        &url,
        &acknowledged,
        &format!("{mode}, refused"),
        &log,
    )
    .await;
    let head = http.head(&url).send().await.expect("head");
    assert_eq!(head.status(), 200, "{mode}");

    // Space returns: appends are taken again, without a restart (those
    // refused meanwhile must be refusals).
    lift_limit(&server);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut taken = 0;
    while taken < 3 {
        sent += 1;
        let status = append(&http, &url, body(sent)).await;
        if status.is_success() {
            acknowledged.extend_from_slice(&body(sent));
            taken += 1;
        } else {
            assert!(is_refusal(status), "{mode}: {status}\n{}", log_text());
            assert!(
                Instant::now() < deadline,
                "{mode}: writes did not resume once space returned:\n{}",
                log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    expect_contents(
        &http,
        &url,
        &acknowledged,
        &format!("{mode}, resumed"),
        &log,
    )
    .await;

    // A restart finds exactly what was acknowledged.
    drop(server);
    let port = free_port();
    let log = dir.path().join("restart.log");
    let _server = start(mode, &data, port, &log, false);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&http, &base).await;
    let url = format!("{base}/v1/stream/kept");
    expect_contents(
        &http,
        &url,
        &acknowledged,
        &format!("{mode}, restarted"),
        &log,
    )
    .await;
    assert!(
        append(&http, &url, b"more".to_vec()).await.is_success(),
        "{mode}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acid_resumes_writes_once_space_returns() {
    refused_then_resumed("acid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_modes_resume_writes_once_space_returns() {
    for mode in ["file-durable", "file-fast"] {
        refused_then_resumed(mode).await;
    }
}
