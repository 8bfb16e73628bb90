//! The storage boundary: the [`Storage`] trait, its error type and the
//! backends.
//!
//! # Division of labour
//! The protocol engine ([`crate::engine`]) owns every rule of the protocol and
//! keeps stream metadata in memory; a backend only persists what the engine
//! decided and hands data back. Each mutation arrives as one [`Mutation`] that
//! carries the data *and* the metadata it changes (producer state,
//! `Stream-Seq`, the closed flag), so a durable backend can commit them
//! atomically.
//!
//! # Guarantees every backend gives
//! - **Order.** Mutations of one stream are applied in the order the calls to
//!   [`Storage::submit`] were made; the engine serialises those calls per stream.
//!   Calls return at once after queueing and never block on I/O.
//! - **Atomicity.** A mutation is applied entirely or not at all.
//! - **Acknowledgement.** The future returned by `submit` resolves `Ok` once
//!   the mutation is as durable as the backend promises (memory: applied;
//!   file-durable and acid: on disk). The engine exposes data to readers and
//!   answers the client only after that.
//! - **Consistency check.** Each append names the position it starts at; a
//!   backend refuses an append that does not start at its tail, so a failed
//!   commit can never leave later, already queued appends at wrong offsets.
//! - **Reads** hand out [`Bytes`] slices of stored records without copying,
//!   never wait behind a commit in progress, and never see data past the
//!   position the engine asks for. A record is never split by a read's byte
//!   budget: a read stops after the record that reaches it.
//!
//! # Retention (storage side)
//! A backend groups each stream's records into chunks of about its chunk
//! size (a record is never split), and reports them with
//! [`Storage::chunks`]: where each starts and ends and when it was last
//! written. [`Mutation::Trim`] drops whole chunks from a stream's head; the
//! head is kept across restarts ([`RecoveredStream::head`]) and a read that
//! begins before it fails with [`StorageError::Trimmed`]. A read before a
//! fork's base (never trimmed) still starts at the base. The engine decides
//! what to trim; nothing in the store trims on its own.
//!
//! # Changes to this contract
//! - `Mutation::Trim`, `Storage::chunks`, `ChunkInfo`,
//!   `RecoveredStream::head` and `StorageError::Trimmed` are new (retention).
//!   A trim past the tail moves the tail (create-at-head, for imports).
//! - The file modes keep a write-ahead log per commit shard, chunk files per
//!   stream and checkpoints (`docs/storage.md`); `FileOptions` grew the
//!   matching settings and `segment_bytes` is now the size of a log segment.
//!   `AcidStorage::open_with` takes `AcidOptions` (page cache, chunk size).

pub mod acid;
pub mod chunk_list;
pub mod codec;
pub mod config;
#[cfg(test)]
pub mod fault;
pub mod file;
pub mod instrumented;
pub mod lock;
pub mod memory;
pub mod metadata;
pub mod postgres;
mod queue;
#[cfg(test)]
mod recovery_tests;
pub mod shared;
#[cfg(test)]
pub(crate) mod suite;
mod zeros;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::protocol::producer::ProducerState;

pub use acid::AcidStorage;
pub use file::{FileOptions, FileStorage};
pub use instrumented::InstrumentedStorage;
pub use memory::InMemoryStorage;
pub use postgres::PostgresStorage;

/// A stream instance's identifier, unique for the life of a store (a stream
/// deleted and re-created at the same path gets a new one).
pub type StreamId = u64;

/// Spreads stream ids evenly over a range (splitmix64's finaliser): picks a
/// stream's commit shard, database and fan-out directory.
pub(crate) fn spread(id: StreamId) -> u64 {
    let mut x = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A boxed future returned by storage operations.
pub type StorageFuture<T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'static>>;

/// A [`StorageFuture`] of what is already known; a success boxes nothing
/// (a unit future has no size), as a store answering at once needs on
/// every write.
pub(crate) fn settled(result: Result<(), StorageError>) -> StorageFuture<()> {
    /// Ready with `Ok(())`.
    struct Succeeded;

    impl Future for Succeeded {
        type Output = Result<(), StorageError>;

        fn poll(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    match result {
        Ok(()) => Box::pin(Succeeded),
        Err(error) => Box::pin(std::future::ready(Err(error))),
    }
}

/// A fork's link to its source.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForkLink {
    /// The source stream instance.
    pub source: StreamId,
    /// The source's path, as given in `Stream-Forked-From`.
    pub source_path: String,
    /// The position in the source where the fork branches off.
    pub offset: u64,
    /// `Stream-Fork-Sub-Offset` as requested (0 when absent).
    pub sub_offset: u64,
}

/// Everything fixed when a stream is created.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamSpec {
    /// The stream instance.
    pub id: StreamId,
    /// Its URL path (the stream's identity).
    pub path: String,
    /// `Content-Type` as given at creation.
    pub content_type: String,
    /// Sliding TTL in seconds.
    pub ttl_secs: Option<u64>,
    /// Absolute expiry, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Set for forks.
    pub fork: Option<ForkLink>,
    /// Where the stream's own data begins (the fork offset, or 0).
    pub base: u64,
}

/// Who closed a stream, remembered so a producer's retry of the closing
/// request is recognised as a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClosedBy {
    /// `Producer-Id` of the closing request.
    pub producer_id: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// One atomic change to a stream.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Create a stream, with its initial data (possibly empty) and state.
    Create {
        /// The immutable description.
        spec: StreamSpec,
        /// Initial bytes, stored as the first record when non-empty.
        data: Bytes,
        /// Whether it is created closed.
        closed: bool,
    },
    /// Append a record and/or update the stream's writer state.
    Append(Append),
    /// Mark a stream soft-deleted: gone for clients, kept for its forks.
    SoftDelete {
        /// The stream instance.
        id: StreamId,
    },
    /// Remove a stream and its data for good.
    Remove {
        /// The stream instance.
        id: StreamId,
    },
    /// Drop the stream's oldest data (retention): every whole chunk that
    /// ends at or before `before` (see [`Storage::chunks`]). The stream's
    /// head becomes the start of the first chunk kept, or its tail when none
    /// is; a chunk is never cut, so a `before` inside a chunk keeps that
    /// chunk. Trimming nothing, or an unknown stream, is not an error.
    ///
    /// A `before` past the tail drops everything and moves the tail there
    /// too: the stream continues at `before`, and reads before it fail
    /// with [`StorageError::Trimmed`]. An import recreates a stream that
    /// retention trimmed this way (created, then trimmed to its head,
    /// then its records appended from there), so offsets are kept.
    Trim {
        /// The stream instance.
        id: StreamId,
        /// Drop the chunks that end at or before this position.
        before: u64,
    },
}

/// An append, possibly empty (a close-only request), with the writer state
/// that must be committed together with it.
#[derive(Clone, Debug)]
pub struct Append {
    /// The stream instance.
    pub id: StreamId,
    /// Where the data starts: the stream's tail before this append.
    pub start: u64,
    /// The record to store; empty for a close without data.
    pub data: Bytes,
    /// New state of the producer that sent it.
    pub producer: Option<(String, ProducerState)>,
    /// New `Stream-Seq` watermark.
    pub stream_seq: Option<String>,
    /// Set when this append closes the stream.
    pub close: Option<Option<ClosedBy>>,
}

/// Records handed back by a read.
#[derive(Clone, Debug, Default)]
pub struct ReadChunk {
    /// Stored records in order; the first may start mid-record when the read
    /// began there, the last may end at `until`.
    pub records: Vec<Bytes>,
    /// The position just after the last byte returned.
    pub end: u64,
    /// Whether the read began in the middle of a record.
    pub starts_mid_record: bool,
}

impl ReadChunk {
    /// Nothing read yet, for a read starting at `from`.
    pub fn empty(from: u64) -> Self {
        Self {
            records: Vec::new(),
            end: from,
            starts_mid_record: false,
        }
    }

    /// The bytes of a stored record (`len` bytes from position `start`)
    /// that a read of `[from, until)` takes.
    pub fn part(start: u64, len: usize, from: u64, until: u64) -> std::ops::Range<usize> {
        let lo = usize::try_from(from.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(len);
        let hi = usize::try_from(until.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(len);
        lo..hi.max(lo)
    }

    /// Adds `piece`, the bytes `part` of the record starting at `start`;
    /// returns how many bytes it holds.
    pub fn push(&mut self, start: u64, part: std::ops::Range<usize>, piece: Bytes) -> usize {
        if self.records.is_empty() && part.start > 0 {
            self.starts_mid_record = true;
        }
        self.end = start + part.end as u64;
        let taken = piece.len();
        self.records.push(piece);
        taken
    }
}

/// A stream as found when a store is opened.
#[derive(Clone, Debug)]
pub struct RecoveredStream {
    /// Its immutable description.
    pub spec: StreamSpec,
    /// Its tail.
    pub tail: u64,
    /// Whether it is closed, and by whom.
    pub closed: Option<Option<ClosedBy>>,
    /// Producer states.
    pub producers: Vec<(String, ProducerState)>,
    /// The `Stream-Seq` watermark.
    pub stream_seq: Option<String>,
    /// Soft-deleted (kept only for forks).
    pub soft_deleted: bool,
    /// Where the stream's retained data starts: `spec.base` until
    /// [`Mutation::Trim`] drops chunks from its head.
    pub head: u64,
}

/// A run of whole records at the head or tail of a stream: the unit that
/// retention drops ([`Mutation::Trim`]). Backends start a new chunk once the
/// current one holds about their configured chunk size; a record is never
/// split between two chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Stream position of its first byte.
    pub start: u64,
    /// Stream position just after its last byte.
    pub end: u64,
    /// When its newest record was written, Unix milliseconds (for a chunk
    /// restored from a store written before chunk times were kept: when it
    /// was opened).
    pub last_write_ms: i64,
}

/// What can go wrong in a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend's byte budget is exhausted (`507`).
    #[error("storage is full: {0}")]
    Full(String),
    /// A temporary condition; the client may retry (`503`).
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// An append did not start at the stream's stored tail (an earlier
    /// queued write failed).
    #[error("append to stream {id} at {start} does not match the stored tail {tail}")]
    OutOfOrder {
        /// The stream instance.
        id: StreamId,
        /// Where the append claimed to start.
        start: u64,
        /// The stored tail.
        tail: u64,
    },
    /// The stream is unknown to the backend.
    #[error("stream {0} is not in storage")]
    UnknownStream(StreamId),
    /// An I/O failure.
    #[error("storage I/O failed")]
    Io(#[from] std::io::Error),
    /// An I/O failure on a named file or directory.
    #[error("cannot {action} {}", path.display())]
    Path {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {} is locked by {holder}", dir.display())]
    Locked {
        /// The directory.
        dir: std::path::PathBuf,
        /// Who holds it, as recorded in its lock file.
        holder: String,
    },
    /// Stored data failed verification.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A read began before the stream's head: retention dropped that data.
    #[error("stream {id} starts at {head} now; earlier data was trimmed")]
    Trimmed {
        /// The stream instance.
        id: StreamId,
        /// Its head, where its retained data starts.
        head: u64,
    },
}

/// Hands over, once, what a backend recovered at open: the first call of
/// [`Storage::recover`] gets it, later ones get nothing.
pub(crate) fn take_recovered(
    recovered: &std::sync::Mutex<Vec<RecoveredStream>>,
) -> Vec<RecoveredStream> {
    std::mem::take(
        &mut *recovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The `memory` backend as `[storage]` sets it: chunks (what retention
/// drops) of `storage.chunk_bytes`, at most `max_memory_bytes` of payload.
pub fn open_memory(storage: &config::StorageConfig, max_memory_bytes: u64) -> InMemoryStorage {
    InMemoryStorage::with_chunk_bytes(max_memory_bytes, storage.chunk_bytes.max(4 << 10))
}

/// Opens the backend the `[storage]` section selects; memory holds at most
/// `max_memory_bytes` of payload.
///
/// # Errors
/// When a durable mode has no `storage.data_dir`, or the backend fails to
/// open (locked directory, I/O failure, corruption, unreachable database).
pub fn open(
    storage: &config::StorageConfig,
    max_memory_bytes: u64,
) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    use config::StorageMode;
    let dir = || {
        storage.data_dir.clone().ok_or_else(|| {
            StorageError::Unavailable(
                "storage.data_dir (DS_STORAGE__DATA_DIR) is required for durable modes".into(),
            )
        })
    };
    let file_options = |durable| FileOptions {
        durable,
        segment_bytes: storage.segment_bytes.max(1 << 20),
        sync_interval: std::time::Duration::from_millis(storage.fast_sync_interval_ms.max(1)),
        truncate_corrupt_at: storage.truncate_corrupt_at.clone(),
        commit_shards: usize::try_from(storage.commit_shards).unwrap_or(usize::MAX),
        chunk_bytes: storage.chunk_bytes.max(4 << 10),
        tail_cache_bytes: usize::try_from(storage.tail_cache_bytes).unwrap_or(usize::MAX),
        // Within a quarter of the replay budget, so that a writer refusing
        // batches it cannot write (a full disk) does so before the log since
        // the last checkpoint is full.
        chunk_buffer_bytes: usize::try_from(
            storage
                .chunk_buffer_bytes
                .min(storage.max_replay_bytes.max(1 << 20) / 4),
        )
        .unwrap_or(usize::MAX),
        max_open_files: usize::try_from(storage.max_open_files)
            .unwrap_or(usize::MAX)
            .max(16),
        checkpoint_interval: std::time::Duration::from_secs(
            storage.checkpoint_interval_secs.max(1),
        ),
        max_replay_bytes: storage.max_replay_bytes.max(1 << 20),
        checkpoint_on_full_segment: true,
    };
    Ok(match storage.mode {
        StorageMode::Memory => std::sync::Arc::new(open_memory(storage, max_memory_bytes)),
        StorageMode::FileFast => {
            std::sync::Arc::new(FileStorage::open(&dir()?, file_options(false))?)
        }
        StorageMode::FileDurable => {
            std::sync::Arc::new(FileStorage::open(&dir()?, file_options(true))?)
        }
        StorageMode::Acid => std::sync::Arc::new(AcidStorage::open_with(
            &dir()?,
            acid::AcidOptions {
                cache_bytes: usize::try_from(storage.acid.cache_bytes).unwrap_or(usize::MAX),
                chunk_bytes: storage.chunk_bytes.max(4 << 10),
                shards: usize::try_from(storage.commit_shards).unwrap_or(usize::MAX),
            },
        )?),
        StorageMode::Postgres => std::sync::Arc::new(open_postgres(
            &storage.postgres,
            storage.chunk_bytes,
            false,
        )?),
    })
}

/// Opens the `postgres` backend from synchronous code running on (or
/// beside) a multi-threaded Tokio runtime, which then drives its
/// connections; `read_only` opens it for a live export.
///
/// # Errors
/// When `[storage.postgres]` is invalid, no runtime is running, or the
/// backend fails to open.
pub fn open_postgres(
    config: &config::PostgresConfig,
    chunk_bytes: u64,
    read_only: bool,
) -> Result<PostgresStorage, StorageError> {
    let mut options = postgres::PostgresOptions::from_config(config)
        .map_err(|error| StorageError::Unavailable(error.message))?;
    options.chunk_bytes = chunk_bytes.max(4 << 10);
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        StorageError::Unavailable("the postgres backend needs a Tokio runtime".into())
    })?;
    let opening = async move {
        if read_only {
            PostgresStorage::open_read_only(options).await
        } else {
            PostgresStorage::open(options).await
        }
    };
    // Blocking here is what the callers expect (startup opens storage on a
    // blocking thread); `block_in_place` keeps it legal on a worker too.
    tokio::task::block_in_place(|| runtime.block_on(opening))
}

impl StorageError {
    /// An I/O failure on `path` while doing `action`.
    pub fn path(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Path {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Classifies a write failure: a full disk (`ENOSPC`) or a file past
    /// its size limit (`EFBIG`: a quota or `RLIMIT_FSIZE`) is
    /// [`StorageError::Full`]; writes are taken again once space returns.
    pub fn from_write(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::StorageFull
            || error.raw_os_error() == Some(libc::ENOSPC)
        {
            Self::Full("the disk holding the data directory is full".into())
        } else if error.raw_os_error() == Some(libc::EFBIG) {
            Self::Full(format!("the data directory takes no more data: {error}"))
        } else {
            Self::Io(error)
        }
    }
}

/// A persistence backend for streams. Object-safe; shared as `Arc<dyn Storage>`.
///
/// See the [module docs](self) for the guarantees each implementation gives.
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `file-durable`, …).
    fn backend_name(&self) -> &'static str;

    /// Whether [`submit`](Self::submit)'s futures are always ready when
    /// returned (the store applies a mutation in the call): a wrapper may
    /// then take their answer at once instead of waiting on them.
    fn submits_at_once(&self) -> bool {
        false
    }

    /// Queues a mutation and returns a future that resolves when it is
    /// acknowledged. Must not block; must apply mutations of a stream in call
    /// order.
    fn submit(&self, mutation: Mutation) -> StorageFuture<()>;

    /// Reads stored data of stream `id` in `[from, until)`, stopping after the
    /// record that reaches `max_bytes`.
    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk>;

    /// The streams in the store, for rebuilding the engine's state at start.
    ///
    /// Backends read and verify their files when they are opened (their
    /// constructors report failures); this only hands over what was loaded.
    fn recover(&self) -> Vec<RecoveredStream>;

    /// Sets (or, with `None`, removes) an entry of the metadata area: a small
    /// key/value map beside the streams for state that is not stream data
    /// (subscriptions, leases, a generated signing key). Resolves once the
    /// change is as durable as the backend's appends are (see
    /// [`metadata`]); changes of one key apply in call order.
    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()>;

    /// Every entry of the metadata area, ordered by key.
    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>>;

    /// The chunks of stream `id`'s retained data, oldest first, for a
    /// retention policy to choose what [`Mutation::Trim`] drops. An empty
    /// stream (or one trimmed to its tail) has none.
    ///
    /// # Errors
    /// [`StorageError::UnknownStream`], or a failure reading the store.
    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<ChunkInfo>>;

    /// The store as shared by several servers, when it is one: the engine
    /// then takes writer state from the store instead of its memory.
    fn shared(&self) -> Option<std::sync::Arc<dyn shared::SharedStreams>> {
        None
    }
}
