//! Crash safety with real processes: the server binary runs on a data
//! directory that persists across cycles, concurrent appenders write to it,
//! and the server is killed with SIGKILL at a random moment while appends are
//! in flight. After every restart each acknowledged append must be present
//! exactly once, in order, at the offset it was acknowledged with; an
//! unacknowledged append may be present or absent, but only whole and only
//! once; closed streams stay closed.
//!
//! Deletes, expiry (TTL'd streams) and retention run during the kills:
//! streams created and deleted stay deleted, expired ones stay gone, and
//! retention (`max_bytes`, swept every second) trims the heads of the
//! streams written: a record may be missing only if it lay wholly before
//! the head the read starts at, and the head never moves back. Retention
//! runs in the `acid` test and in the file modes' runs named for it.
//!
//! Randomness is seeded: the seed is printed on every run and named in every
//! failure; `CRASH_SEED=<n>` replays it. `CRASH_CYCLES=<n>` changes the number
//! of kill cycles per backend (default 20).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

const BIN: &str = env!("CARGO_BIN_EXE_durable-streams-server");
const DEFAULT_CYCLES: usize = 20;
/// `storage.retention.max_bytes`: four chunks.
const RETAINED_BYTES: u64 = 4 * 65536;
/// Opens every binary payload; followed by the record id and length.
const MAGIC: &[u8; 4] = b"DSCT";
/// Longest wait for a server to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the appenders of a cycle after the kill.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit code of the server when it cannot bind (`bind_listener`).
const EXIT_BIND: i32 = 8;

static NEXT_RECORD: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------
// The server process

/// A running server binary; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    /// Starts the binary on a free loopback port and waits until `/readyz`
    /// answers `200`.
    async fn start(mode: &str, data: &Path, log: PathBuf, retention: bool) -> Result<Self, String> {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
            // The log goes to standard output; startup failures to standard
            // error.
            let stdout = log_file.try_clone().map_err(|e| format!("log file: {e}"))?;
            let child = server_command(mode, data, port, retention)
                .stdout(stdout)
                .stderr(log_file)
                .spawn()
                .map_err(|e| format!("cannot spawn the server: {e}"))?;
            let mut server = Server {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                // Another process took the port between our probe and the bind.
                Err(Some(EXIT_BIND)) => last_error = server.log_tail(),
                Err(code) => {
                    return Err(format!(
                        "server did not become ready (exit {code:?}):\n{}",
                        server.log_tail()
                    ));
                }
            }
        }
        Err(format!("server could not bind a port:\n{last_error}"))
    }

    /// `Err(exit code)` when the process ended or never got ready.
    async fn wait_ready(&mut self) -> Result<(), Option<i32>> {
        let client = client();
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status.code());
            }
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(None)
    }

    /// SIGKILL, then reap, so the data directory lock is free again.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_command(mode: &str, data: &Path, port: u16, retention: bool) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("DS_STORAGE__MODE", mode)
        .env("DS_STORAGE__DATA_DIR", data)
        .env("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}"))
        // The smallest log segments, small chunks and frequent checkpoints,
        // so the file backends roll segments and chunks over, checkpoint and
        // delete log segments while being killed; expired streams are swept
        // every second.
        .env("DS_STORAGE__SEGMENT_BYTES", "1048576")
        .env("DS_STORAGE__CHUNK_BYTES", "65536")
        .env("DS_STORAGE__MAX_REPLAY_BYTES", "2097152")
        .env("DS_STORAGE__CHECKPOINT_INTERVAL_SECS", "1")
        .env("DS_STORAGE__EXPIRY_SWEEP_INTERVAL_SECS", "1")
        .env("RUST_LOG", "warn");
    if retention {
        // On every stream: a few chunks kept, swept every second.
        command.env(
            "DS_STORAGE__RETENTION__MAX_BYTES",
            RETAINED_BYTES.to_string(),
        );
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

// ---------------------------------------------------------------------------
// The model: what was sent, and what was acknowledged

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Binary,
    Json,
}

impl Kind {
    fn content_type(self) -> &'static str {
        match self {
            Kind::Binary => "application/octet-stream",
            Kind::Json => "application/json",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ack {
    /// No answer (the server died, or the request was never answered).
    None,
    /// Acknowledged (or observed after a restart) ending at this position.
    At(u64),
    /// A producer retry answered `204`: written by an earlier attempt.
    Duplicate,
}

/// One append request.
#[derive(Clone, Debug)]
struct Record {
    id: u64,
    /// The appender that sent it; one appender sends sequentially, so its
    /// records must appear in id order.
    writer: u32,
    body: Arc<[u8]>,
    /// What the stream holds for it when it differs from the body (JSON).
    stored: Option<Arc<[u8]>>,
    close: bool,
    /// `(Producer-Id, Producer-Seq)`, epoch 0.
    producer: Option<(String, u64)>,
    ack: Ack,
}

impl Record {
    fn stored(&self) -> &[u8] {
        self.stored.as_deref().unwrap_or(&self.body)
    }

    fn new(rng: &mut fastrand::Rng, kind: Kind, writer: u32) -> Self {
        let id = NEXT_RECORD.fetch_add(1, Ordering::Relaxed);
        let (body, stored) = match kind {
            Kind::Binary => (binary_payload(rng, id), None),
            Kind::Json => {
                let (body, stored) = json_payload(rng, id);
                (body, Some(stored))
            }
        };
        Record {
            id,
            writer,
            body: body.into(),
            stored: stored.map(Into::into),
            close: false,
            producer: None,
            ack: Ack::None,
        }
    }
}

/// `MAGIC | id u64 LE | len u32 LE | random bytes`, all byte values.
fn binary_payload(rng: &mut fastrand::Rng, id: u64) -> Vec<u8> {
    let len = if rng.u8(..32) == 0 {
        rng.usize(4096..=48 * 1024)
    } else {
        rng.usize(16..=600)
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend((16..len).map(|_| rng.u8(..)));
    out
}

/// One to three messages `{"id":…,"k":…,"n":…,"pad":"…"}`; a single one is
/// sometimes sent bare, otherwise as an array. The stream stores each
/// message's text followed by a comma.
fn json_payload(rng: &mut fastrand::Rng, id: u64) -> (Vec<u8>, Vec<u8>) {
    let n = rng.usize(1..=3);
    let messages: Vec<String> = (0..n)
        .map(|k| {
            let pad: String = (0..rng.usize(0..120)).map(|_| rng.alphanumeric()).collect();
            format!(r#"{{"id":{id},"k":{k},"n":{n},"pad":"{pad}"}}"#)
        })
        .collect();
    let body = if n == 1 && rng.bool() {
        messages[0].clone()
    } else {
        format!("[{}]", messages.join(","))
    };
    let stored: String = messages.iter().map(|m| format!("{m},")).collect();
    (body.into_bytes(), stored.into_bytes())
}

/// The id of the record whose stored bytes start `data`.
fn identify(kind: Kind, data: &[u8]) -> Option<u64> {
    match kind {
        Kind::Binary => {
            if data.get(..4)? != MAGIC {
                return None;
            }
            Some(u64::from_le_bytes(data.get(4..12)?.try_into().ok()?))
        }
        Kind::Json => {
            let mut values =
                serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>();
            values.next()?.ok()?.get("id")?.as_u64()
        }
    }
}

/// An idempotent producer; epoch 0, persists across cycles.
#[derive(Clone, Debug)]
struct Producer {
    id: String,
    writer: u32,
    next_seq: u64,
    /// A request whose answer was lost: retried with the same seq and body.
    pending: Option<Record>,
}

struct StreamModel {
    name: String,
    /// The URL path; the port changes with every restart.
    path: String,
    kind: Kind,
    records: HashMap<u64, Record>,
    /// Unacknowledged records found absent after a restart: they must never
    /// show up later.
    lost: HashSet<u64>,
    /// Closed, as acknowledged or observed.
    closed: bool,
    /// Where retention left the stream starting, as last read.
    head: u64,
}

/// How far a request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    NotSent,
    /// Sent; the answer was lost.
    Sent,
    /// Acknowledged.
    Acked,
}

/// A stream created and usually deleted again (or left to expire) while
/// the server may die.
#[derive(Debug)]
struct Life {
    path: String,
    created: Step,
    deleted: Step,
    /// Created with `Stream-TTL: 1` and never touched again: it may vanish
    /// at any time, but once gone it stays gone.
    expires: bool,
    /// Whether it existed after the first restart that followed.
    exists: Option<bool>,
}

impl Life {
    /// Checks existence after a restart: an acknowledged create or delete
    /// holds, and whatever was found once stays so (no request follows).
    async fn verify(&mut self, http: &reqwest::Client, base: &str) -> Result<(), String> {
        let path = &self.path;
        let response = http
            .head(format!("{base}{path}"))
            .send()
            .await
            .map_err(|e| format!("{path}: HEAD failed: {e}"))?;
        let exists = match response.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            other => return Err(format!("{path}: HEAD answered {other}")),
        };
        if self.expires {
            if exists && self.exists == Some(false) {
                return Err(format!("{path}: an expired stream came back"));
            }
            if exists {
                // Reads refresh the TTL, so only HEAD looks at it; its data
                // is checked on the streams that never expire.
                self.exists = Some(true);
            } else {
                self.exists = Some(false);
            }
            return Ok(());
        }
        let expected = match (self.exists, self.created, self.deleted) {
            (Some(before), _, _) => Some(before),
            (None, _, Step::Acked) => Some(false),
            (None, Step::Acked, Step::NotSent) => Some(true),
            _ => None,
        };
        if let Some(expected) = expected
            && expected != exists
        {
            return Err(format!(
                "{path}: exists = {exists}, expected {expected} (create {:?}, delete {:?}, found before: {:?})",
                self.created, self.deleted, self.exists
            ));
        }
        self.exists = Some(exists);
        Ok(())
    }
}

/// Creates streams (with initial data) and deletes most of them again, one
/// at a time, until the server dies.
async fn lifecycle(
    http: reqwest::Client,
    base: String,
    cycle: usize,
    deadline: Instant,
    seed: u64,
) -> Result<Vec<Life>, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut lives = Vec::new();
    for n in 0.. {
        if Instant::now() >= deadline {
            break;
        }
        let path = format!("/v1/stream/crash/life-{cycle}-{n}");
        let url = format!("{base}{path}");
        let expires = rng.u8(..4) == 0;
        let mut life = Life {
            path,
            created: Step::Sent,
            deleted: Step::NotSent,
            expires,
            exists: None,
        };
        let mut request = http
            .put(&url)
            .header("content-type", "application/octet-stream")
            .body(b"initial".to_vec());
        if expires {
            request = request.header("stream-ttl", "1");
        }
        let created = request.send().await;
        match created {
            Err(_) => {
                lives.push(life);
                break;
            }
            Ok(r) if r.status() == StatusCode::CREATED => life.created = Step::Acked,
            Ok(r) => return Err(format!("PUT {}: {}", life.path, r.status())),
        }
        if !expires && rng.u8(..3) > 0 {
            life.deleted = Step::Sent;
            match http.delete(&url).send().await {
                Err(_) => {
                    lives.push(life);
                    break;
                }
                Ok(r) if r.status() == StatusCode::NO_CONTENT => life.deleted = Step::Acked,
                Ok(r) => return Err(format!("DELETE {}: {}", life.path, r.status())),
            }
        }
        lives.push(life);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(lives)
}

#[derive(Default, Debug)]
struct Stats {
    acknowledged: u64,
    unacknowledged_present: u64,
    unacknowledged_absent: u64,
    producer_duplicates: u64,
    closes_acknowledged: u64,
    closes_observed_after_kill: u64,
    creates_acknowledged: u64,
    deletes_acknowledged: u64,
}

impl StreamModel {
    fn new(name: String, kind: Kind) -> Self {
        Self {
            path: format!("/v1/stream/{name}"),
            name,
            kind,
            records: HashMap::new(),
            lost: HashSet::new(),
            closed: false,
            head: 0,
        }
    }

    /// Takes in a record as an appender last saw it.
    fn merge(&mut self, mut record: Record) -> Result<(), String> {
        if let Some(known) = self.records.get(&record.id) {
            match (known.ack, record.ack) {
                // A retry answered as a duplicate of a write already observed.
                (Ack::At(end), Ack::Duplicate | Ack::None) => record.ack = Ack::At(end),
                (Ack::At(end), Ack::At(again)) => {
                    return Err(format!(
                        "{}: producer retry of record {} (present, ending at {end}) was written again, ending at {again}",
                        self.name, record.id
                    ));
                }
                _ => {}
            }
        }
        self.lost.remove(&record.id);
        self.records.insert(record.id, record);
        Ok(())
    }

    /// Reads the stream back and checks it against everything sent; then
    /// records what was found, so later restarts must keep it.
    fn url(&self, base: &str) -> String {
        format!("{base}{}", self.path)
    }

    async fn verify(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        rng: &mut fastrand::Rng,
        stats: &mut Stats,
    ) -> Result<(), String> {
        let name = &self.name;
        let url = self.url(base);
        let head = http
            .head(&url)
            .send()
            .await
            .map_err(|e| format!("{name}: HEAD failed: {e:?}"))?;
        if head.status() != StatusCode::OK {
            return Err(format!("{name}: HEAD answered {}", head.status()));
        }
        let tail = next_offset(head.headers())
            .ok_or_else(|| format!("{name}: HEAD without Stream-Next-Offset"))?;
        let closed = is_true(head.headers(), "stream-closed");
        let (head, data, read_closed) = read_all(http, &url, self.kind).await?;
        if head + data.len() as u64 != tail {
            return Err(format!(
                "{name}: read {} bytes from {head} but the tail is {tail}",
                data.len()
            ));
        }
        if head < self.head {
            return Err(format!(
                "{name}: the head moved back from {} to {head}",
                self.head
            ));
        }
        self.head = head;
        if read_closed != closed {
            return Err(format!(
                "{name}: HEAD says closed={closed}, the read at the tail says closed={read_closed}"
            ));
        }

        // Parse the stream as a sequence of whole records.
        let mut found: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut last_by_writer: HashMap<u32, u64> = HashMap::new();
        let mut last_record = None;
        // Positions in `data` are offsets from the head; records are
        // checked at their stream positions.
        let skip = usize::try_from(head).map_err(|e| e.to_string())?;
        let data = {
            let mut shifted = vec![0; skip];
            shifted.extend_from_slice(&data);
            shifted
        };
        let mut pos = skip;
        while pos < data.len() {
            let id = identify(self.kind, &data[pos..]).ok_or_else(|| {
                format!(
                    "{name}: bytes at position {pos} are not the start of any record sent: {:?}",
                    &data[pos..data.len().min(pos + 24)]
                )
            })?;
            if self.lost.contains(&id) {
                return Err(format!(
                    "{name}: record {id} was absent after an earlier restart but appears at {pos}"
                ));
            }
            let record = self.records.get(&id).ok_or_else(|| {
                format!("{name}: record {id} at position {pos} was never sent to this stream")
            })?;
            let stored = record.stored();
            let end = pos + stored.len();
            if data.get(pos..end) != Some(stored) {
                return Err(format!(
                    "{name}: record {id} at position {pos} is torn or altered (ack {:?}, {} bytes, {} bytes left)",
                    record.ack,
                    stored.len(),
                    data.len() - pos
                ));
            }
            if found.insert(id, (pos as u64, end as u64)).is_some() {
                return Err(format!(
                    "{name}: record {id} appears twice (again at {pos})"
                ));
            }
            if let Some(previous) = last_by_writer.insert(record.writer, id)
                && previous > id
            {
                return Err(format!(
                    "{name}: record {id} of writer {} appears after its later record {previous}",
                    record.writer
                ));
            }
            if let Ack::At(acked) = record.ack
                && acked != end as u64
            {
                return Err(format!(
                    "{name}: record {id} was acknowledged ending at {acked} but ends at {end}"
                ));
            }
            last_record = Some(id);
            pos = end;
        }
        // Retention drops a prefix of the stream, which keeps every
        // writer's order: a record it took ended at or before the head
        // and precedes every record of its writer still there.
        let mut first_found: HashMap<u32, u64> = HashMap::new();
        for id in found.keys() {
            let writer = self.records[id].writer;
            let first = first_found.entry(writer).or_insert(*id);
            *first = (*first).min(*id);
        }
        let trimmed = |record: &Record| match record.ack {
            Ack::At(end) => end <= head,
            Ack::Duplicate => {
                head > 0
                    && first_found
                        .get(&record.writer)
                        .is_none_or(|&f| record.id < f)
            }
            Ack::None => false,
        };
        for record in self.records.values() {
            if record.ack != Ack::None && !found.contains_key(&record.id) && !trimmed(record) {
                return Err(format!(
                    "{name}: acknowledged record {} ({:?}, producer {:?}) is missing",
                    record.id, record.ack, record.producer
                ));
            }
        }

        // Closing is atomic with its data and permanent.
        let close_record = found.keys().copied().find(|id| self.records[id].close);
        if let Some(id) = close_record {
            if last_record != Some(id) {
                return Err(format!("{name}: data follows the closing record {id}"));
            }
            if !closed {
                return Err(format!(
                    "{name}: the closing record {id} is present but the stream is open"
                ));
            }
        } else if closed {
            return Err(format!(
                "{name}: the stream is closed but its closing append is missing"
            ));
        }
        if self.closed && !closed {
            return Err(format!("{name}: an acknowledged close was lost"));
        }
        if closed {
            let response = http
                .post(&url)
                .header("content-type", self.kind.content_type())
                .body(match self.kind {
                    Kind::Binary => b"after close".to_vec(),
                    Kind::Json => b"{\"after\":\"close\"}".to_vec(),
                })
                .send()
                .await
                .map_err(|e| format!("{name}: POST to the closed stream failed: {e}"))?;
            if response.status() != StatusCode::CONFLICT
                || !is_true(response.headers(), "stream-closed")
            {
                return Err(format!(
                    "{name}: POST to a closed stream answered {} (closed header: {})",
                    response.status(),
                    is_true(response.headers(), "stream-closed")
                ));
            }
        }

        // Offsets handed out are valid read positions.
        let acked: Vec<u64> = found.values().map(|&(_, end)| end).collect();
        for _ in 0..3.min(acked.len()) {
            let end = acked[rng.usize(..acked.len())];
            let response = http
                .get(format!("{url}?offset={}", offset_string(end)))
                .send()
                .await
                .map_err(|e| format!("{name}: GET at {end} failed: {e}"))?;
            if response.status() == StatusCode::GONE {
                // Retention trimmed past it since the read above.
                continue;
            }
            if response.status() != StatusCode::OK {
                return Err(format!(
                    "{name}: GET at {end} answered {}",
                    response.status()
                ));
            }
            let next = next_offset(response.headers());
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("{name}: GET at {end} body: {e}"))?;
            let mut chunk = Vec::new();
            append_stored(self.kind, &body, &mut chunk)?;
            let start = end as usize;
            if data.get(start..start + chunk.len()) != Some(chunk.as_slice())
                || next != Some(end + chunk.len() as u64)
                || (chunk.is_empty() && start < data.len())
            {
                return Err(format!(
                    "{name}: GET at offset {end} returned {} bytes (next {next:?}) that are not the stream's bytes from there",
                    chunk.len()
                ));
            }
        }

        // What survived this restart must survive every later one.
        let mut gone = Vec::new();
        for record in self.records.values_mut() {
            match (record.ack, found.get(&record.id)) {
                (Ack::None | Ack::Duplicate, Some(&(_, end))) => {
                    if record.ack == Ack::None {
                        stats.unacknowledged_present += 1;
                    }
                    record.ack = Ack::At(end);
                }
                (Ack::None, None) if record.producer.is_none() => gone.push(record.id),
                _ => {}
            }
        }
        // Trimmed records can never come back: forget them.
        self.records
            .retain(|_, record| !matches!(record.ack, Ack::At(end) if end <= head));
        stats.unacknowledged_absent += gone.len() as u64;
        for id in gone {
            self.records.remove(&id);
            self.lost.insert(id);
        }
        if closed && !self.closed {
            stats.closes_observed_after_kill += 1;
        }
        self.closed = closed;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// HTTP helpers

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_true(headers: &HeaderMap, name: &str) -> bool {
    header(headers, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The position named by `Stream-Next-Offset` (`<generation>_<position>`).
fn next_offset(headers: &HeaderMap) -> Option<u64> {
    header(headers, "stream-next-offset")?
        .split_once('_')?
        .1
        .parse()
        .ok()
}

fn offset_string(position: u64) -> String {
    format!("{:016}_{:016}", 0, position)
}

/// Appends a read response's body to `out` in the stream's stored form.
fn append_stored(kind: Kind, body: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    match kind {
        Kind::Binary => out.extend_from_slice(body),
        Kind::Json => {
            let inner = body
                .strip_prefix(b"[")
                .and_then(|b| b.strip_suffix(b"]"))
                .ok_or_else(|| "a JSON read is not an array".to_owned())?;
            if !inner.is_empty() {
                out.extend_from_slice(inner);
                out.push(b',');
            }
        }
    }
    Ok(())
}

/// Reads a whole stream from its head: where it starts, its stored bytes,
/// and whether the read at the tail reported it closed. A trim while it
/// reads (`410`) starts it over from the new head.
async fn read_all(
    http: &reqwest::Client,
    url: &str,
    kind: Kind,
) -> Result<(u64, Vec<u8>, bool), String> {
    let mut refused = String::new();
    for _ in 0..5 {
        match read_from_head(http, url, kind).await? {
            Ok(read) => return Ok(read),
            Err(gone) => refused = gone,
        }
    }
    let start = match http.head(url).send().await {
        Ok(response) => header(response.headers(), "stream-start-offset").map(str::to_owned),
        Err(_) => None,
    };
    Err(format!(
        "{url}: trimmed during five reads in a row (HEAD: Stream-Start-Offset {start:?}); the last: {refused}"
    ))
}

/// [`read_all`] once; `Ok(Err(what))` when retention trimmed the stream
/// meanwhile.
async fn read_from_head(
    http: &reqwest::Client,
    url: &str,
    kind: Kind,
) -> Result<Result<(u64, Vec<u8>, bool), String>, String> {
    let mut out = Vec::new();
    let mut offset = "-1".to_owned();
    let mut head = None;
    for _ in 0..100_000 {
        let response = http
            .get(format!("{url}?offset={offset}"))
            .send()
            .await
            .map_err(|e| format!("{url}: GET failed: {e}"))?;
        if response.status() == StatusCode::GONE {
            let next = header(response.headers(), "stream-next-offset").map(str::to_owned);
            let body = response.text().await.unwrap_or_default();
            return Ok(Err(format!(
                "410 at offset {offset} (next {next:?}) after {} bytes: {body}",
                out.len()
            )));
        }
        if response.status() != StatusCode::OK {
            return Err(format!("{url}: GET answered {}", response.status()));
        }
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{url}: GET body: {e}"))?;
        let before = out.len() as u64;
        append_stored(kind, &body, &mut out)?;
        if head.is_none() {
            // The first answer ends at Stream-Next-Offset, so it starts
            // its stored length before it.
            let next = next_offset(&headers)
                .ok_or_else(|| format!("{url}: GET without Stream-Next-Offset"))?;
            head = Some(next - (out.len() as u64 - before));
        }
        if is_true(&headers, "stream-up-to-date") {
            let head = head.unwrap_or_default();
            return Ok(Ok((head, out, is_true(&headers, "stream-closed"))));
        }
        let next = header(&headers, "stream-next-offset")
            .ok_or_else(|| format!("{url}: GET without Stream-Next-Offset"))?;
        if next == offset {
            return Err(format!("{url}: a read at {offset} made no progress"));
        }
        offset = next.to_owned();
    }
    Err(format!("{url}: too many reads"))
}

/// Sends one record; `Err` only on a transport failure (a dead server).
async fn send(
    http: &reqwest::Client,
    url: &str,
    kind: Kind,
    record: &Record,
) -> Result<(StatusCode, HeaderMap), reqwest::Error> {
    let mut request = http
        .post(url)
        .header("content-type", kind.content_type())
        .body(record.body.to_vec());
    if let Some((id, seq)) = &record.producer {
        request = request
            .header("producer-id", id.as_str())
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string());
    }
    if record.close {
        request = request.header("stream-closed", "true");
    }
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    // Drain the (empty or problem) body so the connection can be reused.
    let _ = response.bytes().await?;
    Ok((status, headers))
}

// ---------------------------------------------------------------------------
// Appenders

/// What an appender hands back when it stops.
struct JobOut {
    stream: usize,
    records: Vec<Record>,
    producer: Option<Producer>,
    closed: bool,
}

#[derive(Clone)]
struct Target {
    http: reqwest::Client,
    url: String,
    name: String,
    kind: Kind,
    stream: usize,
    /// No new request is started after this.
    deadline: Instant,
}

/// Short random pauses keep the data volume bounded on fast backends.
async fn pace(rng: &mut fastrand::Rng) {
    if rng.bool() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Checks the answer to an acknowledged write and returns its end position.
fn acknowledged(
    target: &Target,
    record: &Record,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<u64, String> {
    let expected = if record.producer.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    if status != expected {
        return Err(format!(
            "{}: append of record {} (producer {:?}, close {}) answered {status}, expected {expected}",
            target.name, record.id, record.producer, record.close
        ));
    }
    if record.close && !is_true(headers, "stream-closed") {
        return Err(format!(
            "{}: append-and-close of record {} answered without Stream-Closed",
            target.name, record.id
        ));
    }
    if let Some((_, seq)) = &record.producer
        && header(headers, "producer-seq") != Some(seq.to_string().as_str())
    {
        return Err(format!(
            "{}: record {} answered Producer-Seq {:?}, expected {seq}",
            target.name,
            record.id,
            header(headers, "producer-seq")
        ));
    }
    next_offset(headers).ok_or_else(|| {
        format!(
            "{}: acknowledgement of record {} has no Stream-Next-Offset",
            target.name, record.id
        )
    })
}

/// Plain appends, one at a time, until the server dies.
async fn plain_writer(target: Target, writer: u32, seed: u64) -> Result<JobOut, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut records = Vec::new();
    while Instant::now() < target.deadline {
        let mut record = Record::new(&mut rng, target.kind, writer);
        match send(&target.http, &target.url, target.kind, &record).await {
            Err(_) => {
                records.push(record);
                break;
            }
            Ok((status, headers)) => {
                record.ack = Ack::At(acknowledged(&target, &record, status, &headers)?);
                records.push(record);
            }
        }
        pace(&mut rng).await;
    }
    Ok(JobOut {
        stream: target.stream,
        records,
        producer: None,
        closed: false,
    })
}

/// Sends (or retries) one producer record; `Ok(false)` when the server died.
async fn producer_send(
    target: &Target,
    producer: &mut Producer,
    mut record: Record,
    retry: bool,
    records: &mut Vec<Record>,
) -> Result<bool, String> {
    let Some((_, seq)) = record.producer.clone() else {
        return Err("producer record without producer".into());
    };
    match send(&target.http, &target.url, target.kind, &record).await {
        Err(_) => {
            producer.pending = Some(record.clone());
            records.push(record);
            Ok(false)
        }
        Ok((StatusCode::NO_CONTENT, headers)) if retry => {
            // Written by the attempt whose answer was lost: not again.
            if header(&headers, "producer-seq") != Some(seq.to_string().as_str())
                || (record.close && !is_true(&headers, "stream-closed"))
            {
                return Err(format!(
                    "{}: duplicate of record {} answered Producer-Seq {:?}, closed {}",
                    target.name,
                    record.id,
                    header(&headers, "producer-seq"),
                    is_true(&headers, "stream-closed")
                ));
            }
            record.ack = Ack::Duplicate;
            producer.next_seq = seq + 1;
            records.push(record);
            Ok(true)
        }
        Ok((status, headers)) => {
            record.ack = Ack::At(acknowledged(target, &record, status, &headers)?);
            producer.next_seq = seq + 1;
            records.push(record);
            Ok(true)
        }
    }
}

fn producer_record(rng: &mut fastrand::Rng, kind: Kind, producer: &Producer) -> Record {
    let mut record = Record::new(rng, kind, producer.writer);
    record.producer = Some((producer.id.clone(), producer.next_seq));
    record
}

/// Idempotent-producer appends: first the retry of a request whose answer
/// was lost, then new ones; now and then a deliberate duplicate.
async fn producer_writer(
    target: Target,
    mut producer: Producer,
    seed: u64,
) -> Result<JobOut, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut records = Vec::new();
    while Instant::now() < target.deadline {
        let (record, retry) = match producer.pending.take() {
            Some(record) => (record, true),
            None => (producer_record(&mut rng, target.kind, &producer), false),
        };
        let duplicate = record.clone();
        if !producer_send(&target, &mut producer, record, retry, &mut records).await? {
            break;
        }
        if rng.u8(..10) == 0 {
            match send(&target.http, &target.url, target.kind, &duplicate).await {
                Err(_) => break,
                Ok((StatusCode::NO_CONTENT, _)) => {}
                Ok((status, _)) => {
                    return Err(format!(
                        "{}: deliberate duplicate of record {} answered {status}, expected 204",
                        target.name, duplicate.id
                    ));
                }
            }
        }
        pace(&mut rng).await;
    }
    Ok(JobOut {
        stream: target.stream,
        records,
        producer: Some(producer),
        closed: false,
    })
}

/// Appends until `close_at`, then sends an append-and-close.
async fn closer(
    target: Target,
    writer: u32,
    close_at: Instant,
    mut producer: Option<Producer>,
    seed: u64,
) -> Result<JobOut, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut records = Vec::new();
    let mut closed = false;
    while Instant::now() < target.deadline {
        let closing = Instant::now() >= close_at;
        let mut record = match &producer {
            Some(p) => producer_record(&mut rng, target.kind, p),
            None => Record::new(&mut rng, target.kind, writer),
        };
        record.close = closing;
        if let Some(p) = producer.as_mut() {
            if !producer_send(&target, p, record, false, &mut records).await? {
                break;
            }
        } else {
            match send(&target.http, &target.url, target.kind, &record).await {
                Err(_) => {
                    records.push(record);
                    break;
                }
                Ok((status, headers)) => {
                    record.ack = Ack::At(acknowledged(&target, &record, status, &headers)?);
                    records.push(record);
                }
            }
        }
        if closing {
            closed = true;
            break;
        }
        pace(&mut rng).await;
    }
    Ok(JobOut {
        stream: target.stream,
        records,
        producer,
        closed,
    })
}

// ---------------------------------------------------------------------------
// The crash cycles

struct World {
    streams: Vec<StreamModel>,
    /// Producers of the shared producer stream, with its index.
    producers: Vec<(usize, Producer)>,
    /// Producers that closed (or tried to close) a per-cycle stream.
    close_producers: Vec<(usize, Producer)>,
    /// Streams created and deleted along the way.
    lives: Vec<Life>,
    stats: Stats,
}

/// Streams written in every cycle: name, kind, plain writers, producers.
const SHARED_STREAMS: &[(&str, Kind, u32, u32)] = &[
    ("crash/bin-0", Kind::Binary, 2, 0),
    ("crash/bin-1", Kind::Binary, 1, 0),
    ("crash/prod", Kind::Binary, 0, 2),
    ("crash/json", Kind::Json, 2, 0),
];

impl World {
    fn new() -> Self {
        Self {
            streams: Vec::new(),
            producers: Vec::new(),
            close_producers: Vec::new(),
            lives: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Checks every stream; streams created and deleted earlier are all
    /// checked the first time and at the end, a sample otherwise.
    async fn verify(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        rng: &mut fastrand::Rng,
        last: bool,
    ) -> Result<(), String> {
        for stream in &mut self.streams {
            stream.verify(http, base, rng, &mut self.stats).await?;
        }
        for life in &mut self.lives {
            if last || life.exists.is_none() || rng.u8(..8) == 0 {
                life.verify(http, base).await?;
            }
        }
        Ok(())
    }

    async fn create(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        name: String,
        kind: Kind,
    ) -> Result<usize, String> {
        let stream = StreamModel::new(name, kind);
        let response = http
            .put(stream.url(base))
            .header("content-type", kind.content_type())
            .send()
            .await
            .map_err(|e| format!("PUT {}: {e}", stream.name))?;
        if response.status() != StatusCode::CREATED {
            return Err(format!(
                "PUT {} answered {}",
                stream.name,
                response.status()
            ));
        }
        self.streams.push(stream);
        Ok(self.streams.len() - 1)
    }

    /// Work done with the server up and no kill pending: stream creation and
    /// the retries of producers whose close may have been lost.
    async fn prepare(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        cycle: usize,
    ) -> Result<usize, String> {
        if cycle == 0 {
            let mut writer = 0;
            for &(name, kind, _, producers) in SHARED_STREAMS {
                let index = self.create(http, base, name.to_owned(), kind).await?;
                for p in 0..producers {
                    self.producers.push((
                        index,
                        Producer {
                            id: format!("p{p}"),
                            writer: 1000 + writer,
                            next_seq: 0,
                            pending: None,
                        },
                    ));
                    writer += 1;
                }
            }
        }
        let mut retried = Vec::new();
        for (index, producer) in &mut self.close_producers {
            let Some(record) = producer.pending.take() else {
                continue;
            };
            let stream = &self.streams[*index];
            let target = Target {
                http: http.clone(),
                url: stream.url(base),
                name: stream.name.clone(),
                kind: stream.kind,
                stream: *index,
                deadline: Instant::now(),
            };
            let close = record.close;
            let mut records = Vec::new();
            if !producer_send(&target, producer, record, true, &mut records).await? {
                return Err(format!("{}: the server failed during a retry", target.name));
            }
            retried.push(JobOut {
                stream: *index,
                records,
                producer: None,
                closed: close,
            });
        }
        for out in retried {
            self.merge(out)?;
        }
        self.create(http, base, format!("crash/close-{cycle}"), Kind::Binary)
            .await
    }

    fn merge(&mut self, out: JobOut) -> Result<(), String> {
        for record in out.records {
            if record.ack != Ack::None {
                self.stats.acknowledged += 1;
            }
            if record.ack == Ack::Duplicate {
                self.stats.producer_duplicates += 1;
            }
            self.streams[out.stream].merge(record)?;
        }
        if out.closed {
            self.stats.closes_acknowledged += 1;
            self.streams[out.stream].closed = true;
        }
        if let Some(producer) = out.producer {
            let slot = self
                .producers
                .iter_mut()
                .chain(self.close_producers.iter_mut())
                .find(|(index, p)| *index == out.stream && p.writer == producer.writer);
            match slot {
                Some((_, slot)) => *slot = producer,
                None => self.close_producers.push((out.stream, producer)),
            }
        }
        Ok(())
    }
}

async fn run_cycles(
    mode: &str,
    retention: bool,
    seed: u64,
    cycles: usize,
) -> Result<Stats, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let data = dir.path().join("data");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut world = World::new();
    for cycle in 0..=cycles {
        let log = dir.path().join(format!("server-{cycle}.log"));
        let server = Server::start(mode, &data, log, retention).await?;
        let http = client();
        world
            .verify(&http, &server.base, &mut rng, cycle == cycles)
            .await
            .map_err(|e| {
                format!(
                    "after restart {cycle}: {e}\nserver log:\n{}",
                    server.log_tail()
                )
            })?;
        if cycle == cycles {
            server.kill();
            break;
        }
        let close_stream = world
            .prepare(&http, &server.base, cycle)
            .await
            .map_err(|e| format!("cycle {cycle}: {e}"))?;

        // The kill comes at a random moment; the close sometimes well
        // before it, sometimes racing it, sometimes never.
        let start = Instant::now();
        let kill_after = Duration::from_millis(rng.u64(100..=700));
        let close_after = match rng.u8(..3) {
            0 => Duration::from_millis(rng.u64(20..=80)),
            1 => kill_after.saturating_sub(Duration::from_millis(rng.u64(0..=15))),
            _ => kill_after + Duration::from_secs(60),
        };
        let deadline = start + kill_after + Duration::from_secs(5);
        let base = server.base.clone();
        let target = |index: usize| {
            let stream = &world.streams[index];
            Target {
                http: http.clone(),
                url: stream.url(&base),
                name: stream.name.clone(),
                kind: stream.kind,
                stream: index,
                deadline,
            }
        };
        let mut jobs = tokio::task::JoinSet::new();
        let mut writer = 0;
        for (index, &(_, _, plain, _)) in SHARED_STREAMS.iter().enumerate() {
            for _ in 0..plain {
                jobs.spawn(plain_writer(target(index), writer, rng.u64(..)));
                writer += 1;
            }
        }
        for (index, producer) in &world.producers {
            jobs.spawn(producer_writer(
                target(*index),
                producer.clone(),
                rng.u64(..),
            ));
        }
        let close_writer = 2000 + cycle as u32;
        let close_producer = (cycle % 2 == 1).then(|| Producer {
            id: format!("closer-{cycle}"),
            writer: close_writer,
            next_seq: 0,
            pending: None,
        });
        jobs.spawn(closer(
            target(close_stream),
            close_writer,
            start + close_after,
            close_producer,
            rng.u64(..),
        ));
        let lives = tokio::spawn(lifecycle(
            http.clone(),
            base.clone(),
            cycle,
            deadline,
            rng.u64(..),
        ));

        tokio::time::sleep(kill_after).await;
        server.kill();

        let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
            let mut outs = Vec::new();
            while let Some(joined) = jobs.join_next().await {
                outs.push(joined.map_err(|e| format!("appender panicked: {e}"))?);
            }
            Ok::<_, String>(outs)
        })
        .await
        .map_err(|_| format!("cycle {cycle}: appenders did not stop after the kill"))??;
        for out in joined {
            world.merge(out.map_err(|e| format!("cycle {cycle}: {e}"))?)?;
        }
        let lives = tokio::time::timeout(JOIN_TIMEOUT, lives)
            .await
            .map_err(|_| format!("cycle {cycle}: the lifecycle job did not stop"))?
            .map_err(|e| format!("lifecycle job panicked: {e}"))?
            .map_err(|e| format!("cycle {cycle}: {e}"))?;
        for life in &lives {
            world.stats.creates_acknowledged += u64::from(life.created == Step::Acked);
            world.stats.deletes_acknowledged += u64::from(life.deleted == Step::Acked);
        }
        world.lives.extend(lives);
    }
    Ok(world.stats)
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

fn cycles() -> usize {
    std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CYCLES)
}

async fn crash_test(mode: &str, retention: bool) {
    let seed = seed();
    let cycles = cycles();
    eprintln!("crash test {mode} (retention: {retention}): CRASH_SEED={seed}, {cycles} cycles");
    let started = Instant::now();
    match run_cycles(mode, retention, seed, cycles).await {
        Ok(stats) => eprintln!(
            "crash test {mode}: passed in {:.1?}: {stats:?}",
            started.elapsed()
        ),
        Err(error) => panic!("crash test {mode} failed (replay with CRASH_SEED={seed}): {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_file_durable() {
    crash_test("file-durable", false).await;
}

/// `file-durable` with retention trimming during the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_file_durable_with_retention() {
    crash_test("file-durable", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_acid() {
    crash_test("acid", true).await;
}

/// `file-fast` does not sync before acknowledging, but a process crash
/// leaves the page cache intact: nothing acknowledged may be lost either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_file_fast() {
    crash_test("file-fast", false).await;
}

/// `file-fast` with retention trimming during the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_file_fast_with_retention() {
    crash_test("file-fast", true).await;
}

/// A second server on a data directory in use exits at startup, naming the
/// directory and the process that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_a_data_dir_in_use_exits() {
    for mode in ["file-durable", "file-fast", "acid"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let first = Server::start(mode, &data, dir.path().join("first.log"), false)
            .await
            .unwrap_or_else(|e| panic!("{mode}: first server: {e}"));
        let mut second = server_command(mode, &data, free_port(), false)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the second server");
        let deadline = Instant::now() + READY_TIMEOUT;
        let status = loop {
            if let Some(status) = second.try_wait().expect("poll the second server") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = second.kill();
                let _ = second.wait();
                panic!("{mode}: the second server did not exit");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stderr = String::new();
        second
            .stderr
            .take()
            .expect("piped stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{mode}: second server exited {status}");
        assert!(
            stderr.contains(&data.display().to_string()),
            "{mode}: the message does not name {}: {stderr}",
            data.display()
        );
        assert!(
            stderr.contains(&format!("pid {}", first.child.id())),
            "{mode}: the message does not name the holder pid {}: {stderr}",
            first.child.id()
        );
        // The first server is unaffected.
        let response = client()
            .get(format!("{}/readyz", first.base))
            .send()
            .await
            .expect("first server still answers");
        assert_eq!(response.status(), StatusCode::OK, "{mode}");
        first.kill();
    }
}
