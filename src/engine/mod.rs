//! The protocol engine: every stream rule of the protocol, independent of
//! transport and of the storage backend.
//!
//! The engine keeps each stream's metadata in memory (rebuilt from the
//! backend at start), validates every request against it, submits the
//! resulting [`Mutation`] to storage, and publishes committed changes through
//! the stream's [`Signal`] so live readers wake without polling.
//!
//! Locks: the path map and each stream's ledger are `std` mutexes held only
//! for in-memory work, never across an `.await`; the map is always locked
//! before a stream, a fork before its source.

mod error;
mod observer;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

pub use error::EngineError;
pub use observer::DataObserver;
use state::{Ledger, WriterState};

use ::metrics::{counter, gauge};

use crate::metrics::{RejectReason, name as metric};

use crate::protocol::header::{ContentType, ProducerHeaders};
use crate::protocol::json;
use crate::protocol::offset::ReadFrom;
use crate::protocol::producer::{self, ProducerDecision, ProducerState};
use crate::storage::{
    Append, ClosedBy, ForkLink, Mutation, ReadChunk, RecoveredStream, Storage, StorageError,
    StreamId, StreamSpec,
};

/// The committed view of a stream that live readers follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Signal {
    /// Position after the last committed byte.
    pub tail: u64,
    /// The stream is closed.
    pub closed: bool,
    /// The stream was deleted or expired.
    pub gone: bool,
}

/// Lifecycle of a stream instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Live,
    /// Deleted or expired while forks still read through it.
    SoftDeleted,
    /// Removed for good.
    Removed,
}

/// Mutable per-stream bookkeeping besides the writer ledger.
#[derive(Debug)]
struct Inner {
    ledger: Ledger,
    last_access: Instant,
    forks: usize,
    status: Status,
    /// The stream's creation is committed (always, for recovered streams).
    created: bool,
}

/// One stream instance.
#[derive(Debug)]
pub struct StreamEntry {
    spec: StreamSpec,
    content_type: ContentType,
    expires_at: Option<OffsetDateTime>,
    source: Option<Arc<StreamEntry>>,
    inner: Mutex<Inner>,
    signal: watch::Sender<Signal>,
}

impl StreamEntry {
    /// The stream's content type.
    pub fn content_type(&self) -> &ContentType {
        &self.content_type
    }

    /// A stable identifier that differs across delete and re-create.
    pub fn id(&self) -> StreamId {
        self.spec.id
    }

    /// The configured sliding TTL.
    pub fn ttl_secs(&self) -> Option<u64> {
        self.spec.ttl_secs
    }

    /// The configured absolute expiry.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    /// The committed state readers see.
    pub fn snapshot(&self) -> Signal {
        *self.signal.borrow()
    }

    /// Subscribes to committed changes (the notification hub).
    pub fn subscribe(&self) -> watch::Receiver<Signal> {
        self.signal.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, inner: &Inner) {
        let next = Signal {
            tail: inner.ledger.committed.tail,
            closed: inner.ledger.committed.closed.is_some(),
            gone: inner.status != Status::Live,
        };
        self.signal.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    fn is_expired(&self, inner: &Inner, now: Instant) -> bool {
        if let Some(at) = self.expires_at
            && OffsetDateTime::now_utc() >= at
        {
            return true;
        }
        match self.spec.ttl_secs {
            Some(ttl) => {
                now.saturating_duration_since(inner.last_access) >= Duration::from_secs(ttl)
            }
            None => false,
        }
    }
}

/// Limits the engine enforces.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Most bytes a stream may hold (its own data, not its fork source's).
    pub max_stream_bytes: u64,
    /// Most payload bytes one read hands out (catch-up chunking).
    pub max_read_bytes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_stream_bytes: u64::MAX,
            max_read_bytes: 4 << 20,
        }
    }
}

/// A cheap, cloneable handle to the engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    /// `durable_streams_storage_bytes{backend}`, resolved once.
    stored_bytes: ::metrics::Gauge,
    streams: RwLock<HashMap<String, Arc<StreamEntry>>>,
    next_id: AtomicU64,
    limits: EngineLimits,
    /// Bytes of appends queued in storage and not yet acknowledged.
    write_budget: tokio::sync::Semaphore,
    /// Told about committed data (subscriptions); unset costs one load.
    observer: OnceLock<Arc<dyn DataObserver>>,
}

/// Most bytes of appends that may wait for storage at once.
const MAX_IN_FLIGHT_WRITE_BYTES: usize = 64 << 20;

/// A fork request from `PUT` headers.
#[derive(Clone, Debug)]
pub struct ForkRequest {
    /// `Stream-Forked-From`.
    pub source_path: String,
    /// `Stream-Fork-Offset`, if given.
    pub offset: Option<ReadFrom>,
    /// `Stream-Fork-Sub-Offset` (0 when absent).
    pub sub_offset: u64,
}

/// A `PUT`.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// The stream path.
    pub path: String,
    /// `Content-Type`, if given.
    pub content_type: Option<ContentType>,
    /// `Stream-TTL`.
    pub ttl_secs: Option<u64>,
    /// `Stream-Expires-At`.
    pub expires_at: Option<OffsetDateTime>,
    /// `Stream-Closed: true`.
    pub closed: bool,
    /// Fork headers.
    pub fork: Option<ForkRequest>,
    /// Initial data.
    pub body: Bytes,
}

/// The result of a `PUT`.
#[derive(Clone, Debug)]
pub struct Created {
    /// The stream.
    pub entry: Arc<StreamEntry>,
    /// `true` for a new stream (`201`), `false` for a matching one (`200`).
    pub new: bool,
    /// Its tail.
    pub tail: u64,
    /// Whether it is closed.
    pub closed: bool,
}

/// A `POST`.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// `Content-Type`, if given.
    pub content_type: Option<ContentType>,
    /// The body.
    pub body: Bytes,
    /// `Stream-Closed: true`.
    pub close: bool,
    /// The producer triple.
    pub producer: Option<ProducerHeaders>,
    /// `Stream-Seq`.
    pub stream_seq: Option<String>,
}

/// The result of a `POST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The tail after the request.
    pub tail: u64,
    /// Whether the stream is closed after the request.
    pub closed: bool,
    /// Whether data (or a close) was written, as opposed to a duplicate.
    pub wrote: bool,
    /// The producer state to echo.
    pub producer: Option<ProducerState>,
}

/// The result of a read.
#[derive(Clone, Debug)]
pub struct ReadResult {
    /// Where the read started.
    pub start: u64,
    /// Records (payload as stored).
    pub records: Vec<Bytes>,
    /// Position after the returned data.
    pub next: u64,
    /// The read reached the committed tail.
    pub up_to_date: bool,
    /// The stream is closed and the read reached its final offset.
    pub closed: bool,
}

impl ReadResult {
    /// Total payload bytes.
    pub fn len(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }

    /// No data was returned.
    pub fn is_empty(&self) -> bool {
        self.records.iter().all(Bytes::is_empty)
    }
}

/// How an operation refreshes a sliding TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes keep the stream alive.
    Touch,
    /// `HEAD` does not (spec §4.5).
    Peek,
}

fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn ms_to_datetime(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn datetime_to_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Engine {
    /// An engine over `storage`, with the streams the backend recovered.
    pub fn new(storage: Arc<dyn Storage>, limits: EngineLimits) -> Self {
        let recovered = storage.recover();
        let engine = Self {
            shared: Arc::new(Shared {
                stored_bytes: gauge!(metric::STORAGE_BYTES, "backend" => storage.backend_name()),
                storage,
                streams: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                limits,
                write_budget: tokio::sync::Semaphore::new(MAX_IN_FLIGHT_WRITE_BYTES),
                observer: OnceLock::new(),
            }),
        };
        engine.restore(recovered);
        engine
    }

    /// Installs the observer told about committed data. Only the first
    /// call takes effect; returns whether this one did.
    pub fn set_observer(&self, observer: Arc<dyn DataObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    fn observe(&self, entry: &StreamEntry, tail: u64) {
        if let Some(observer) = self.shared.observer.get() {
            observer.stream_changed(&entry.spec.path, tail);
        }
    }

    /// The backend in use.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// How many streams are live or kept for forks.
    pub fn stream_count(&self) -> usize {
        self.map_read().len()
    }

    /// Whether a stream (live or kept for forks) occupies `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.map_read().contains_key(path)
    }

    /// The committed state of every stream, sources before their forks
    /// (for export).
    pub fn snapshot_streams(&self) -> Vec<RecoveredStream> {
        let mut entries: Vec<Arc<StreamEntry>> = self.map_read().values().cloned().collect();
        entries.sort_by_key(|entry| entry.spec.id);
        entries
            .into_iter()
            .filter_map(|entry| {
                let inner = entry.lock();
                if inner.status == Status::Removed {
                    return None;
                }
                let state = &inner.ledger.committed;
                let mut producers: Vec<(String, ProducerState)> = state
                    .producers
                    .iter()
                    .map(|(id, s)| (id.clone(), *s))
                    .collect();
                producers.sort();
                Some(RecoveredStream {
                    spec: entry.spec.clone(),
                    tail: state.tail,
                    closed: state.closed.clone(),
                    producers,
                    stream_seq: state.stream_seq.clone(),
                    soft_deleted: inner.status == Status::SoftDeleted,
                    head: entry.spec.base,
                })
            })
            .collect()
    }

    /// Reads committed records of stream instance `id` in `[from, until)`
    /// without fork resolution (for export).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn read_own(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<ReadChunk, EngineError> {
        Ok(self.shared.storage.read(id, from, until, max_bytes).await?)
    }

    /// Starts importing a stream with the given state: its records follow
    /// through [`Import::append`], and [`Import::finish`] makes it visible.
    /// Offsets, producer state and fork lineage are preserved; the fork source
    /// must already be present (sources are exported before their forks).
    ///
    /// # Errors
    /// When the path is taken, the fork source is missing, or storage fails.
    pub async fn begin_import(&self, mut stream: RecoveredStream) -> Result<Import, EngineError> {
        if self.map_read().contains_key(&stream.spec.path) {
            return Err(EngineError::ConfigMismatch(
                "a stream already exists at this path",
            ));
        }
        let source = match &mut stream.spec.fork {
            Some(link) => {
                let source = self
                    .map_read()
                    .get(&link.source_path)
                    .cloned()
                    .ok_or(EngineError::ForkSourceNotFound)?;
                link.source = source.spec.id;
                Some(source)
            }
            None => None,
        };
        stream.spec.id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .storage
            .submit(Mutation::Create {
                spec: stream.spec.clone(),
                data: Bytes::new(),
                closed: false,
            })
            .await?;
        let tail = stream.spec.base;
        Ok(Import {
            engine: self.clone(),
            stream,
            source,
            tail,
        })
    }

    /// Removes the stream at `path`, whatever its state (import `replace`).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn remove_for_import(&self, path: &str) -> Result<(), EngineError> {
        let entry = self.map_read().get(path).cloned();
        if let Some(entry) = entry {
            let forks = entry.lock().forks;
            if forks > 0 {
                return Err(EngineError::ConfigMismatch(
                    "the existing stream has forks and cannot be replaced",
                ));
            }
            if let (_, Some(written)) = self.delete_entry(&entry) {
                written.await?;
            }
        }
        Ok(())
    }

    fn map_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<StreamEntry>>> {
        self.shared
            .streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn map_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<StreamEntry>>> {
        self.shared
            .streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `durable_streams_streams` moves by `delta` (deltas, not absolute
    /// values, so several engines in one process add up).
    fn live_streams_changed(delta: f64) {
        gauge!(metric::STREAMS).increment(delta);
    }

    /// `durable_streams_storage_bytes` moves by `delta`.
    fn stored_bytes_changed(&self, delta: f64) {
        if delta != 0.0 {
            self.shared.stored_bytes.increment(delta);
        }
    }

    /// Bytes of its own a stream holds in storage.
    fn own_bytes(entry: &StreamEntry, inner: &Inner) -> f64 {
        inner.ledger.committed.tail.saturating_sub(entry.spec.base) as f64
    }

    /// Rebuilds entries from recovered streams; sources before forks.
    fn restore(&self, mut recovered: Vec<RecoveredStream>) {
        recovered.sort_by_key(|s| s.spec.id);
        let mut by_id: HashMap<StreamId, Arc<StreamEntry>> = HashMap::new();
        let mut map = self.map_write();
        let now = Instant::now();
        for stream in recovered {
            let max_id = self
                .shared
                .next_id
                .load(Ordering::Relaxed)
                .max(stream.spec.id + 1);
            self.shared.next_id.store(max_id, Ordering::Relaxed);
            let source = stream
                .spec
                .fork
                .as_ref()
                .and_then(|link| by_id.get(&link.source).cloned());
            if let Some(source) = &source {
                source.lock().forks += 1;
            }
            let state = WriterState {
                tail: stream.tail,
                closed: stream.closed,
                producers: stream.producers.into_iter().collect(),
                stream_seq: stream.stream_seq,
            };
            let status = if stream.soft_deleted {
                Status::SoftDeleted
            } else {
                Status::Live
            };
            let own = stream.tail.saturating_sub(stream.spec.base) as f64;
            self.stored_bytes_changed(own);
            if status == Status::Live {
                Self::live_streams_changed(1.0);
            }
            let entry = new_entry(stream.spec, source, state, status, now);
            entry.lock().created = true;
            by_id.insert(entry.spec.id, entry.clone());
            map.insert(entry.spec.path.clone(), entry);
        }
    }

    /// Finds the live stream at `path`, expiring it if its time is up.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] or [`EngineError::Gone`].
    pub fn lookup(&self, path: &str, access: Access) -> Result<Arc<StreamEntry>, EngineError> {
        let entry = self
            .map_read()
            .get(path)
            .cloned()
            .ok_or(EngineError::NotFound)?;
        let now = Instant::now();
        let mut inner = entry.lock();
        match inner.status {
            Status::SoftDeleted => return Err(EngineError::Gone),
            Status::Removed => return Err(EngineError::NotFound),
            Status::Live => {}
        }
        if entry.is_expired(&inner, now) {
            drop(inner);
            return Err(self.expire(&entry));
        }
        if access == Access::Touch {
            inner.last_access = now;
        }
        drop(inner);
        Ok(entry)
    }

    /// Deletes an expired stream; tells the caller what the client sees.
    fn expire(&self, entry: &Arc<StreamEntry>) -> EngineError {
        let (deletion, written) = self.delete_entry(entry);
        if let Some(written) = written {
            spawn_ack(written);
        }
        match deletion {
            Deletion::Soft => {
                counter!(metric::STREAMS_EXPIRED_TOTAL).increment(1);
                EngineError::Gone
            }
            Deletion::Removed => {
                counter!(metric::STREAMS_EXPIRED_TOTAL).increment(1);
                EngineError::NotFound
            }
            Deletion::AlreadyGone => EngineError::NotFound,
        }
    }

    /// Sweeps expired streams; returns how many were reclaimed.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let candidates: Vec<Arc<StreamEntry>> = self.map_read().values().cloned().collect();
        let mut reclaimed = 0;
        for entry in candidates {
            let expired = {
                let inner = entry.lock();
                inner.status == Status::Live && entry.is_expired(&inner, now)
            };
            if expired {
                if let (_, Some(written)) = self.delete_entry(&entry) {
                    spawn_ack(written);
                }
                reclaimed += 1;
            }
        }
        if reclaimed > 0 {
            counter!(metric::STREAMS_EXPIRED_TOTAL).increment(reclaimed as u64);
        }
        reclaimed
    }

    /// `PUT`: creates a stream or confirms an identical one.
    ///
    /// # Errors
    /// See [`EngineError`].
    pub async fn create(&self, request: CreateRequest) -> Result<Created, EngineError> {
        // Resolve the fork source and its materialised prefix first: that may
        // read storage, which must not happen under the map lock.
        let fork = match &request.fork {
            Some(fork) => Some(self.resolve_fork(fork).await?),
            None => None,
        };
        let content_type = match (&request.content_type, &fork) {
            (Some(requested), Some(fork)) if !requested.matches(&fork.source.content_type) => {
                return Err(EngineError::ContentTypeMismatch);
            }
            (Some(requested), _) => requested.clone(),
            (None, Some(fork)) => fork.source.content_type.clone(),
            (None, None) => ContentType::default_binary(),
        };
        let (ttl_secs, expires_at) = match (&fork, request.ttl_secs, request.expires_at) {
            (Some(fork), None, None) => (fork.source.spec.ttl_secs, fork.source.expires_at),
            (_, ttl, at) => (ttl, at),
        };
        let initial = if content_type.is_json() && !request.body.is_empty() {
            Bytes::from(json::flatten(&request.body, true)?.bytes)
        } else {
            Bytes::copy_from_slice(&request.body)
        };

        let existing = self.map_read().get(&request.path).cloned();
        if let Some(existing) = existing {
            match self.lookup(&request.path, Access::Touch) {
                Ok(entry) if Arc::ptr_eq(&entry, &existing) => {
                    wait_created(&entry).await?;
                    return confirm_existing(
                        &entry,
                        &request,
                        &content_type,
                        ttl_secs,
                        expires_at,
                        fork.as_ref(),
                    );
                }
                Ok(_) => {
                    return Err(EngineError::ConfigMismatch(
                        "the stream changed concurrently",
                    ));
                }
                Err(EngineError::Gone) => return Err(EngineError::PathOccupied),
                Err(EngineError::NotFound) => {}
                Err(other) => return Err(other),
            }
        }

        let (data, base, link, source) = match fork {
            Some(fork) => {
                let mut data = Vec::with_capacity(fork.prefix.len() + initial.len());
                data.extend_from_slice(&fork.prefix);
                data.extend_from_slice(&initial);
                (
                    Bytes::from(data),
                    fork.offset,
                    Some(fork.link),
                    Some(fork.source),
                )
            }
            None => (initial, 0, None, None),
        };
        if data.len() as u64 > self.shared.limits.max_stream_bytes {
            return Err(EngineError::StreamTooLarge {
                limit: self.shared.limits.max_stream_bytes,
            });
        }
        let spec = StreamSpec {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            path: request.path.clone(),
            content_type: content_type.raw.clone(),
            ttl_secs,
            expires_at_ms: expires_at.map(datetime_to_ms),
            created_at_ms: now_ms(),
            fork: link,
            base,
        };
        let state = WriterState {
            tail: base,
            ..WriterState::default()
        };
        let entry = new_entry(
            spec.clone(),
            source.clone(),
            state,
            Status::Live,
            Instant::now(),
        );
        let tail = base + data.len() as u64;
        let close = request.closed.then_some(None);

        let (op, ack) = {
            let mut map = self.map_write();
            if let Some(current) = map.get(&request.path)
                && current.lock().status != Status::Removed
            {
                return Err(EngineError::ConfigMismatch(
                    "the stream was created concurrently",
                ));
            }
            if let Some(source) = &source {
                let mut source_inner = source.lock();
                if source_inner.status != Status::Live {
                    return Err(EngineError::ForkSourceGone);
                }
                source_inner.forks += 1;
            }
            let op = entry.lock().ledger.push(tail, close, None, None);
            let ack = self.shared.storage.submit(Mutation::Create {
                spec,
                data,
                closed: request.closed,
            });
            map.insert(request.path.clone(), entry.clone());
            Self::live_streams_changed(1.0);
            (op, ack)
        };
        match ack.await {
            Ok(()) => {
                let mut inner = entry.lock();
                inner.ledger.acknowledge(op);
                inner.created = true;
                entry.publish(&inner);
                // Removed meanwhile: the removal already left these bytes out.
                if inner.status != Status::Removed {
                    self.stored_bytes_changed(Self::own_bytes(&entry, &inner));
                }
                drop(inner);
                // Wake requests waiting for the creation even when the
                // published state did not change (an empty, open stream).
                entry.signal.send_modify(|_| {});
                counter!(metric::STREAMS_CREATED_TOTAL).increment(1);
                if request.closed {
                    counter!(metric::STREAMS_CLOSED_TOTAL).increment(1);
                }
                self.observe(&entry, tail);
                Ok(Created {
                    entry: entry.clone(),
                    new: true,
                    tail,
                    closed: request.closed,
                })
            }
            Err(error) => {
                let mut map = self.map_write();
                if map
                    .get(&request.path)
                    .is_some_and(|current| Arc::ptr_eq(current, &entry))
                {
                    map.remove(&request.path);
                }
                drop(map);
                let mut inner = entry.lock();
                if inner.status == Status::Live {
                    Self::live_streams_changed(-1.0);
                }
                inner.status = Status::Removed;
                inner.ledger.fail(op);
                entry.publish(&inner);
                drop(inner);
                if let Some(source) = &source {
                    self.release_fork(source);
                }
                Err(error.into())
            }
        }
    }

    async fn resolve_fork(&self, request: &ForkRequest) -> Result<ResolvedFork, EngineError> {
        let source = match self.lookup(&request.source_path, Access::Peek) {
            Ok(source) => source,
            Err(EngineError::Gone) => return Err(EngineError::ForkSourceGone),
            Err(EngineError::NotFound) => return Err(EngineError::ForkSourceNotFound),
            Err(other) => return Err(other),
        };
        let tail = source.snapshot().tail;
        let offset = match request.offset {
            None | Some(ReadFrom::Now) => tail,
            Some(ReadFrom::Start) => 0,
            Some(ReadFrom::At(offset)) if offset.position() <= tail => offset.position(),
            Some(_) => {
                return Err(EngineError::InvalidForkPosition(
                    "fork offset is beyond the source's tail",
                ));
            }
        };
        let mut prefix = Bytes::new();
        if request.sub_offset > 0 {
            let chunk = self.read_chain(&source, offset, tail, 1).await?;
            let record = chunk.records.first().cloned().unwrap_or_default();
            if record.is_empty() {
                return Err(EngineError::InvalidForkPosition(
                    "no data follows the fork offset",
                ));
            }
            let cut = if source.content_type.is_json() {
                if chunk.starts_mid_record {
                    return Err(EngineError::InvalidForkPosition(
                        "fork offset is inside a JSON message",
                    ));
                }
                json::message_prefix_len(&record, request.sub_offset).ok_or(
                    EngineError::InvalidForkPosition(
                        "sub-offset exceeds the messages of the next append",
                    ),
                )?
            } else {
                usize::try_from(request.sub_offset)
                    .ok()
                    .filter(|&n| n <= record.len())
                    .ok_or(EngineError::InvalidForkPosition(
                        "sub-offset exceeds the bytes of the next append",
                    ))?
            };
            prefix = Bytes::copy_from_slice(&record[..cut]);
        } else if source.content_type.is_json() && offset < tail {
            let chunk = self.read_chain(&source, offset, tail, 1).await?;
            if chunk.starts_mid_record {
                return Err(EngineError::InvalidForkPosition(
                    "fork offset is inside a JSON message",
                ));
            }
        }
        let link = ForkLink {
            source: source.spec.id,
            source_path: request.source_path.clone(),
            offset,
            sub_offset: request.sub_offset,
        };
        Ok(ResolvedFork {
            source,
            offset,
            prefix,
            link,
            requested_offset: request.offset.is_some(),
        })
    }

    /// `POST`: appends, closes, or both.
    ///
    /// # Errors
    /// See [`EngineError`].
    pub async fn append(
        &self,
        path: &str,
        request: AppendRequest,
    ) -> Result<Appended, EngineError> {
        if request.body.is_empty() && !request.close {
            return Err(EngineError::EmptyBody);
        }
        if !request.body.is_empty() && request.content_type.is_none() {
            return Err(EngineError::MissingContentType);
        }
        let entry = self.lookup(path, Access::Touch)?;
        let data_result = if request.body.is_empty() {
            Ok(Bytes::new())
        } else if entry.content_type.is_json() {
            json::flatten(&request.body, false).map(|flat| Bytes::from(flat.bytes))
        } else {
            Ok(Bytes::copy_from_slice(&request.body))
        };

        // Back-pressure: writers wait here, not in memory, when storage is
        // slower than the offered load.
        let cost = data_result
            .as_ref()
            .map_or(0, Bytes::len)
            .clamp(1, MAX_IN_FLIGHT_WRITE_BYTES);
        let _permit = self
            .shared
            .write_budget
            .acquire_many(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
            .map_err(|_| StorageError::Unavailable("the server is shutting down".into()))?;
        let plan = self
            .plan_append(&entry, &request, data_result)
            .inspect_err(count_rejection)?;
        let (op, ack, outcome, bytes) = match plan {
            AppendPlan::Submitted {
                op,
                ack,
                outcome,
                bytes,
            } => (op, ack, outcome, bytes),
            AppendPlan::Answered(confirms) => {
                if request.producer.is_some() {
                    counter!(metric::PRODUCER_DUPLICATES_TOTAL).increment(1);
                }
                return Self::confirm(&entry, &confirms).await;
            }
        };
        let result = ack.await;
        let mut inner = entry.lock();
        match result {
            Ok(()) => {
                inner.ledger.acknowledge(op);
                entry.publish(&inner);
                // Removed meanwhile: the removal already left these bytes out.
                if inner.status != Status::Removed {
                    self.stored_bytes_changed(bytes as f64);
                }
                let tail = inner.ledger.committed.tail;
                drop(inner);
                self.observe(&entry, tail);
                crate::metrics::append_written(bytes);
                if request.close {
                    counter!(metric::STREAMS_CLOSED_TOTAL).increment(1);
                }
                Ok(outcome)
            }
            Err(error) => {
                inner.ledger.fail(op);
                let created = inner.created;
                drop(inner);
                // Wake duplicates waiting on the failed write.
                entry.signal.send_modify(|_| {});
                if !created && matches!(error, StorageError::UnknownStream(_)) {
                    // Queued behind a creation the store refused: the stream
                    // never existed.
                    return Err(EngineError::NotFound);
                }
                Err(error.into())
            }
        }
    }

    /// Validates an append under the stream lock and, when it writes,
    /// queues it in storage. Never awaits.
    fn plan_append(
        &self,
        entry: &Arc<StreamEntry>,
        request: &AppendRequest,
        data_result: Result<Bytes, json::JsonError>,
    ) -> Result<AppendPlan, EngineError> {
        let mut inner = entry.lock();
        let ledger = &mut inner.ledger;
        if let Some(closed_by) = ledger.closed() {
            let retry_of_close = match (&request.producer, closed_by) {
                (Some(p), Some(by)) => {
                    p.id == by.producer_id && p.epoch == by.epoch && p.seq == by.seq
                }
                _ => false,
            };
            if retry_of_close || (request.body.is_empty() && request.producer.is_none()) {
                // A retry of the closing request, or a repeated plain close:
                // both are idempotent (spec §4.3, §5.7).
                return Ok(AppendPlan::Answered(Confirms::Closed {
                    producer: request.producer.as_ref().map(|p| p.id.clone()),
                }));
            }
            if let Some(p) = &request.producer
                && ledger
                    .producer(&p.id)
                    .is_some_and(|state| p.epoch < state.epoch)
            {
                let current = ledger.producer(&p.id).map_or(0, |state| state.epoch);
                return Err(EngineError::StaleEpoch { current });
            }
            return Err(EngineError::Closed {
                tail: ledger.tail(),
            });
        }
        if let Some(requested) = request
            .content_type
            .as_ref()
            .filter(|_| !request.body.is_empty())
            && !requested.matches(&entry.content_type)
        {
            return Err(EngineError::ContentTypeMismatch);
        }
        let mut producer_next = None;
        if let Some(p) = &request.producer {
            match producer::decide(ledger.producer(&p.id), p.epoch, p.seq) {
                ProducerDecision::Accept { next } => producer_next = Some((p.id.clone(), next)),
                ProducerDecision::Duplicate { .. } => {
                    return Ok(AppendPlan::Answered(Confirms::Producer {
                        id: p.id.clone(),
                        accepted: ProducerState {
                            epoch: p.epoch,
                            last_seq: p.seq,
                        },
                    }));
                }
                ProducerDecision::StaleEpoch { current_epoch } => {
                    return Err(EngineError::StaleEpoch {
                        current: current_epoch,
                    });
                }
                ProducerDecision::Gap { expected, received } => {
                    return Err(EngineError::SequenceGap { expected, received });
                }
                ProducerDecision::EpochMustStartAtZero => {
                    return Err(EngineError::EpochMustStartAtZero);
                }
            }
        }
        if let Some(seq) = &request.stream_seq
            && ledger.stream_seq().is_some_and(|last| seq.as_str() <= last)
        {
            return Err(EngineError::StreamSeqRegression);
        }
        let data = data_result?;
        let start = ledger.tail();
        let limit = self.shared.limits.max_stream_bytes;
        if start - entry.spec.base + data.len() as u64 > limit {
            return Err(EngineError::StreamTooLarge { limit });
        }
        let end = start + data.len() as u64;
        let close = request.close.then(|| {
            request.producer.as_ref().map(|p| ClosedBy {
                producer_id: p.id.clone(),
                epoch: p.epoch,
                seq: p.seq,
            })
        });
        let op = ledger.push(
            end,
            close.clone(),
            producer_next.clone(),
            request.stream_seq.clone(),
        );
        let bytes = data.len() as u64;
        let ack = self.shared.storage.submit(Mutation::Append(Append {
            id: entry.spec.id,
            start,
            data,
            producer: producer_next.clone(),
            stream_seq: request.stream_seq.clone(),
            close,
        }));
        let outcome = Appended {
            tail: end,
            closed: request.close,
            wrote: true,
            producer: producer_next.map(|(_, state)| state),
        };
        Ok(AppendPlan::Submitted {
            op,
            ack,
            outcome,
            bytes,
        })
    }

    /// Answers a request that writes nothing (a duplicate) once the state
    /// it confirms is committed, from the committed state. While that state
    /// is only pending it waits; if the pending write fails, so does this,
    /// and the client's next retry writes it. Checking the state itself,
    /// not the tail, matters: a close moves no tail, and other writers'
    /// appends may pass the position a failed write would have reached.
    async fn confirm(
        entry: &Arc<StreamEntry>,
        confirms: &Confirms,
    ) -> Result<Appended, EngineError> {
        let mut signal = entry.subscribe();
        loop {
            {
                let inner = entry.lock();
                let ledger = &inner.ledger;
                let committed = &ledger.committed;
                let (producer, done, pending) = match confirms {
                    Confirms::Closed { producer } => (
                        producer.as_deref(),
                        committed.closed.is_some(),
                        ledger.closed().is_some(),
                    ),
                    Confirms::Producer { id, accepted } => (
                        Some(id.as_str()),
                        committed.producers.get(id).is_some_and(|s| s >= accepted),
                        ledger.producer(id).is_some_and(|s| s >= *accepted),
                    ),
                };
                if done {
                    return Ok(Appended {
                        tail: committed.tail,
                        closed: committed.closed.is_some(),
                        wrote: false,
                        producer: producer.and_then(|id| committed.producers.get(id).copied()),
                    });
                }
                if !pending {
                    return Err(StorageError::Unavailable(
                        "the original write of this retry failed".into(),
                    )
                    .into());
                }
            }
            // Every acknowledgement of a write changes the tail or the
            // closed flag, and every failure notifies: no wake-up is lost.
            if signal.changed().await.is_err() {
                return Err(EngineError::NotFound);
            }
        }
    }

    /// Starts a background task that reclaims expired streams every
    /// `interval`; it ends when the engine is dropped.
    pub fn spawn_sweeper(&self, interval: Duration) {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let reclaimed = Engine { shared }.sweep_expired();
                if reclaimed > 0 {
                    tracing::debug!(reclaimed, "expired streams reclaimed");
                }
            }
        });
    }

    /// `DELETE`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Gone`], or a storage failure.
    pub async fn delete(&self, path: &str) -> Result<(), EngineError> {
        let entry = self.lookup(path, Access::Peek)?;
        match self.delete_entry(&entry) {
            (Deletion::Soft | Deletion::Removed, written) => {
                // Answer only once the deletion is as durable as the backend
                // promises: a crash must not bring back a stream whose
                // DELETE was acknowledged. (If the write fails, the stream
                // stays hidden until a restart shows it again.)
                if let Some(written) = written {
                    written.await?;
                }
                counter!(metric::STREAMS_DELETED_TOTAL).increment(1);
                Ok(())
            }
            (Deletion::AlreadyGone, _) => Err(EngineError::NotFound),
        }
    }

    /// Soft-deletes an entry with forks, removes it otherwise. Returns the
    /// storage write that persists it, if this call made the change.
    fn delete_entry(
        &self,
        entry: &Arc<StreamEntry>,
    ) -> (Deletion, Option<crate::storage::StorageFuture<()>>) {
        let mut map = self.map_write();
        let mut inner = entry.lock();
        match inner.status {
            Status::Removed => return (Deletion::AlreadyGone, None),
            Status::SoftDeleted => return (Deletion::Soft, None),
            Status::Live => {}
        }
        Self::live_streams_changed(-1.0);
        if inner.forks > 0 {
            inner.status = Status::SoftDeleted;
            entry.publish(&inner);
            drop(inner);
            drop(map);
            let written = self
                .shared
                .storage
                .submit(Mutation::SoftDelete { id: entry.spec.id });
            return (Deletion::Soft, Some(written));
        }
        inner.status = Status::Removed;
        entry.publish(&inner);
        self.stored_bytes_changed(-Self::own_bytes(entry, &inner));
        drop(inner);
        if map
            .get(&entry.spec.path)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            map.remove(&entry.spec.path);
        }
        drop(map);
        let written = self
            .shared
            .storage
            .submit(Mutation::Remove { id: entry.spec.id });
        if let Some(source) = &entry.source {
            self.release_fork(source);
        }
        (Deletion::Removed, Some(written))
    }

    /// Drops one fork reference; removes a soft-deleted source whose last
    /// fork went away, cascading up the chain.
    fn release_fork(&self, source: &Arc<StreamEntry>) {
        let mut next = Some(source.clone());
        while let Some(entry) = next.take() {
            let mut map = self.map_write();
            let mut inner = entry.lock();
            inner.forks = inner.forks.saturating_sub(1);
            if inner.forks > 0 || inner.status != Status::SoftDeleted {
                return;
            }
            inner.status = Status::Removed;
            entry.publish(&inner);
            self.stored_bytes_changed(-Self::own_bytes(&entry, &inner));
            drop(inner);
            if map
                .get(&entry.spec.path)
                .is_some_and(|current| Arc::ptr_eq(current, &entry))
            {
                map.remove(&entry.spec.path);
            }
            drop(map);
            spawn_ack(
                self.shared
                    .storage
                    .submit(Mutation::Remove { id: entry.spec.id }),
            );
            next = entry.source.clone();
        }
    }

    /// Reads committed data from `from` as the client asked.
    ///
    /// # Errors
    /// [`EngineError::OffsetNotAtBoundary`] for a JSON offset inside a
    /// message, or a storage failure.
    pub async fn read(
        &self,
        entry: &Arc<StreamEntry>,
        from: ReadFrom,
    ) -> Result<ReadResult, EngineError> {
        let snapshot = entry.snapshot();
        self.read_at(entry, resolve_start(from, snapshot.tail), snapshot)
            .await
    }

    /// Reads committed data from a resolved position, given a snapshot.
    ///
    /// # Errors
    /// As [`Engine::read`].
    pub async fn read_at(
        &self,
        entry: &Arc<StreamEntry>,
        start: u64,
        snapshot: Signal,
    ) -> Result<ReadResult, EngineError> {
        let start = start.min(snapshot.tail);
        let chunk = self
            .read_chain(
                entry,
                start,
                snapshot.tail,
                self.shared.limits.max_read_bytes,
            )
            .await?;
        if chunk.starts_mid_record && entry.content_type.is_json() {
            return Err(EngineError::OffsetNotAtBoundary);
        }
        let next = chunk.end.max(start);
        let up_to_date = next >= snapshot.tail;
        Ok(ReadResult {
            start,
            records: chunk.records,
            next,
            up_to_date,
            closed: up_to_date && snapshot.closed,
        })
    }

    /// Reads `[from, until)` of a stream, through its fork sources.
    fn read_chain<'a>(
        &'a self,
        entry: &'a Arc<StreamEntry>,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ReadChunk, EngineError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let mut out = ReadChunk {
                records: Vec::new(),
                end: from,
                starts_mid_record: false,
            };
            let base = entry.spec.base;
            let mut taken = 0usize;
            if let Some(source) = &entry.source
                && from < base
            {
                let upto = until.min(base);
                out = self.read_chain(source, from, upto, max_bytes).await?;
                taken = out.records.iter().map(Bytes::len).sum();
                if out.end < upto || taken >= max_bytes {
                    return Ok(out);
                }
            }
            let own_from = out.end.max(base);
            if own_from < until {
                let own = self
                    .shared
                    .storage
                    .read(entry.spec.id, own_from, until, max_bytes - taken)
                    .await?;
                if out.records.is_empty() {
                    out.starts_mid_record = own.starts_mid_record;
                }
                out.records.extend(own.records);
                out.end = own.end.max(out.end);
            }
            Ok(out)
        })
    }
}

/// A stream being imported; see [`Engine::begin_import`].
pub struct Import {
    engine: Engine,
    stream: RecoveredStream,
    source: Option<Arc<StreamEntry>>,
    tail: u64,
}

impl Import {
    fn append_mutation(&self, start: u64, data: Bytes) -> Mutation {
        Mutation::Append(Append {
            id: self.stream.spec.id,
            start,
            data,
            producer: None,
            stream_seq: None,
            close: None,
        })
    }

    /// Appends the next record.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn append(&mut self, record: Bytes) -> Result<(), EngineError> {
        let len = record.len() as u64;
        self.engine
            .shared
            .storage
            .submit(self.append_mutation(self.tail, record))
            .await?;
        self.tail += len;
        Ok(())
    }

    /// Where the next record starts.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Abandons the import, removing what was stored.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn abort(self) -> Result<(), EngineError> {
        self.engine
            .shared
            .storage
            .submit(Mutation::Remove {
                id: self.stream.spec.id,
            })
            .await?;
        Ok(())
    }

    /// Stores the writer state and makes the stream visible.
    ///
    /// # Errors
    /// When the records do not end at the declared tail, or storage fails.
    pub async fn finish(self) -> Result<(), EngineError> {
        let storage = &self.engine.shared.storage;
        let id = self.stream.spec.id;
        if self.tail != self.stream.tail {
            drop(storage.submit(Mutation::Remove { id }).await);
            return Err(StorageError::Corrupt(format!(
                "imported records of {} end at {} but the stream declares {}",
                self.stream.spec.path, self.tail, self.stream.tail
            ))
            .into());
        }
        for (producer, state) in &self.stream.producers {
            let mut append = Append {
                id,
                start: self.tail,
                data: Bytes::new(),
                producer: None,
                stream_seq: None,
                close: None,
            };
            append.producer = Some((producer.clone(), *state));
            storage.submit(Mutation::Append(append)).await?;
        }
        if self.stream.stream_seq.is_some() || self.stream.closed.is_some() {
            let append = Append {
                id,
                start: self.tail,
                data: Bytes::new(),
                producer: None,
                stream_seq: self.stream.stream_seq.clone(),
                close: self.stream.closed.clone(),
            };
            storage.submit(Mutation::Append(append)).await?;
        }
        if self.stream.soft_deleted {
            storage.submit(Mutation::SoftDelete { id }).await?;
        }
        let state = WriterState {
            tail: self.tail,
            closed: self.stream.closed,
            producers: self.stream.producers.into_iter().collect(),
            stream_seq: self.stream.stream_seq,
        };
        let status = if self.stream.soft_deleted {
            Status::SoftDeleted
        } else {
            Status::Live
        };
        let entry = new_entry(
            self.stream.spec,
            self.source.clone(),
            state,
            status,
            Instant::now(),
        );
        if let Some(source) = &self.source {
            source.lock().forks += 1;
        }
        self.engine
            .stored_bytes_changed(self.tail.saturating_sub(entry.spec.base) as f64);
        if status == Status::Live {
            Engine::live_streams_changed(1.0);
        }
        self.engine
            .map_write()
            .insert(entry.spec.path.clone(), entry);
        Ok(())
    }
}

/// The start position of a read for the committed tail.
pub fn resolve_start(from: ReadFrom, tail: u64) -> u64 {
    match from {
        ReadFrom::Start => 0,
        ReadFrom::Now | ReadFrom::Beyond => tail,
        ReadFrom::At(offset) => offset.position().min(tail),
    }
}

enum AppendPlan {
    /// Queued in storage; the outcome holds once `ack` resolves.
    Submitted {
        op: u64,
        ack: crate::storage::StorageFuture<()>,
        outcome: Appended,
        /// Payload bytes of the append.
        bytes: u64,
    },
    /// Nothing to write (a duplicate); answer once it is confirmed.
    Answered(Confirms),
}

/// What a request that writes nothing confirms.
enum Confirms {
    /// The stream is closed; `producer` names the retrying producer.
    Closed { producer: Option<String> },
    /// The producer's `(epoch, seq)` was accepted.
    Producer { id: String, accepted: ProducerState },
}

enum Deletion {
    Soft,
    Removed,
    AlreadyGone,
}

struct ResolvedFork {
    source: Arc<StreamEntry>,
    offset: u64,
    prefix: Bytes,
    link: ForkLink,
    requested_offset: bool,
}

fn new_entry(
    spec: StreamSpec,
    source: Option<Arc<StreamEntry>>,
    state: WriterState,
    status: Status,
    now: Instant,
) -> Arc<StreamEntry> {
    let signal = Signal {
        tail: state.tail,
        closed: state.closed.is_some(),
        gone: status != Status::Live,
    };
    Arc::new(StreamEntry {
        content_type: ContentType::new(&spec.content_type),
        expires_at: spec.expires_at_ms.and_then(ms_to_datetime),
        source,
        inner: Mutex::new(Inner {
            ledger: Ledger::new(state),
            last_access: now,
            forks: 0,
            status,
            created: false,
        }),
        signal: watch::Sender::new(signal),
        spec,
    })
}

/// Counts a producer request the rules refused.
fn count_rejection(error: &EngineError) {
    let reason = match error {
        EngineError::StaleEpoch { .. } => RejectReason::StaleEpoch,
        EngineError::SequenceGap { .. } => RejectReason::SequenceGap,
        EngineError::EpochMustStartAtZero => RejectReason::EpochSeq,
        _ => return,
    };
    match reason {
        RejectReason::StaleEpoch => {
            counter!(metric::PRODUCER_REJECTIONS_TOTAL, "reason" => "stale_epoch").increment(1);
        }
        RejectReason::SequenceGap => {
            counter!(metric::PRODUCER_REJECTIONS_TOTAL, "reason" => "sequence_gap").increment(1);
        }
        RejectReason::EpochSeq => {
            counter!(metric::PRODUCER_REJECTIONS_TOTAL, "reason" => "epoch_seq").increment(1);
        }
    }
}

/// Drives a storage acknowledgement nobody waits for, logging a failure.
fn spawn_ack(ack: crate::storage::StorageFuture<()>) {
    tokio::spawn(async move {
        if let Err(error) = ack.await {
            tracing::error!(error = %error, "background storage operation failed");
        }
    });
}

/// Waits until the creation of `entry` is committed, so a `PUT` that finds
/// the stream does not confirm it before it is durable.
///
/// # Errors
/// [`StorageError::Unavailable`] when the creation failed or the stream went
/// away meanwhile; the client may retry.
async fn wait_created(entry: &Arc<StreamEntry>) -> Result<(), EngineError> {
    let mut signal = entry.subscribe();
    loop {
        {
            let inner = entry.lock();
            if inner.status != Status::Live {
                return Err(StorageError::Unavailable(
                    "the concurrent creation of this stream did not complete".into(),
                )
                .into());
            }
            if inner.created {
                return Ok(());
            }
        }
        if signal.changed().await.is_err() {
            return Err(EngineError::NotFound);
        }
    }
}

/// Compares a `PUT` against an existing stream (spec §4.1 idempotent create).
fn confirm_existing(
    entry: &Arc<StreamEntry>,
    request: &CreateRequest,
    content_type: &ContentType,
    ttl_secs: Option<u64>,
    expires_at: Option<OffsetDateTime>,
    fork: Option<&ResolvedFork>,
) -> Result<Created, EngineError> {
    if !content_type.matches(&entry.content_type) {
        return Err(EngineError::ConfigMismatch("content type differs"));
    }
    if ttl_secs != entry.spec.ttl_secs {
        return Err(EngineError::ConfigMismatch("Stream-TTL differs"));
    }
    let stored_ms = entry.spec.expires_at_ms;
    if expires_at.map(datetime_to_ms) != stored_ms {
        return Err(EngineError::ConfigMismatch("Stream-Expires-At differs"));
    }
    match (fork, &entry.spec.fork) {
        (None, _) => {}
        (Some(_), None) => return Err(EngineError::ConfigMismatch("the stream is not a fork")),
        (Some(requested), Some(link)) => {
            if requested.link.source != link.source
                || (requested.requested_offset && requested.offset != link.offset)
                || requested.link.sub_offset != link.sub_offset
            {
                return Err(EngineError::ConfigMismatch("fork source or offset differs"));
            }
        }
    }
    let inner = entry.lock();
    let closed = inner.ledger.closed().is_some();
    if request.closed != closed {
        return Err(EngineError::ConfigMismatch("closed state differs"));
    }
    Ok(Created {
        entry: entry.clone(),
        new: false,
        tail: inner.ledger.tail(),
        closed,
    })
}
