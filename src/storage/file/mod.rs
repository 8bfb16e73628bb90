//! The file backends, `file-durable` and `file-fast`: a write-ahead log
//! sharded by stream, each stream's records in chunk files of its own, and
//! periodic checkpoints. `docs/storage.md` describes the layout.
//!
//! # Durability
//! - `file-durable`: a batch is written to its shard's log and
//!   `fdatasync`ed before any of its mutations is acknowledged. An
//!   acknowledged append survives `kill -9` and power loss.
//! - `file-fast`: a batch is written (to the page cache) before it is
//!   acknowledged, and each log synced at least every `sync_interval`. An
//!   acknowledged append survives `kill -9`; a power loss may lose the last
//!   `sync_interval` of acknowledged writes, never more, and never corrupts.
//!
//! Chunk files are written after the log, without a sync, in writes of many
//! records (held in memory meanwhile, within `chunk_buffer_bytes`): the log
//! is what makes a write durable until a checkpoint has written and synced
//! the chunk files and recorded every stream's state; only then are the log
//! segments before it deleted.
//!
//! # Commit shards
//! Streams are spread over `commit_shards` shards by id (a fork goes to its
//! source's shard, so a family keeps the order of today's single log). Each
//! shard groups what is queued into one batch; in `file-durable` the next
//! batch gathers while one syncs (see the `shard` module).
//!
//! # Reads
//! Readers see only what is committed, never wait for a writer, take the
//! newest records of a stream from memory and older ones with `pread` from
//! its chunk files (a sparse index beside each chunk finds a position
//! without holding record positions in memory).
//!
//! # Recovery
//! Opening reads the checkpoint and replays each shard's log from the
//! position it names (at most about `max_replay_bytes`), then writes a new
//! checkpoint. A torn tail of a log is truncated and logged, and the zeros
//! that end the newest (preallocated) segment are its end; a bad frame
//! anywhere else stops startup with the file and offset, unless the operator
//! names exactly that place in `truncate_corrupt_at`. A directory written by
//! the first layout (one shared log of `.seg` files) is converted in place:
//! its log is replayed into chunk files, a checkpoint written, and only then
//! are the old segments deleted, so an interrupted conversion starts over.

mod checkpoint;
mod chunk;
mod files;
mod ids;
mod layout;
mod options;
mod progress;
mod reader;
mod recovery;
mod refusal;
mod removal;
mod shard;
mod spec;
mod state;
mod tail_cache;
mod unwritten;
mod wal;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod unwritten_tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use super::lock::DirLock;
use super::metadata::MetadataDir;
use super::queue::CommitQueue;
use super::{
    ChunkInfo, Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture,
    StreamId, StreamSpec,
};
use checkpoint::LogPosition;
use files::FileCache;
use shard::Shard;
use state::{ChunkWrites, Dirty, Head, Heads, Planner, State, Stream, StreamSet, Target};
use unwritten::ShardBuffer;

pub use layout::CHECKPOINT as CHECKPOINT_FILE;
pub use options::FileOptions;

fn backend_name(durable: bool) -> &'static str {
    if durable { "file-durable" } else { "file-fast" }
}

/// Wakes the checkpoint thread.
#[derive(Default)]
struct Signal {
    stop: bool,
    wanted: bool,
}

/// The state shared by a store's handles and threads.
pub struct Shared {
    dir: PathBuf,
    options: FileOptions,
    backend: &'static str,
    streams: RwLock<StreamSet>,
    files: FileCache,
    shards: Vec<Shard>,
    dirty: Mutex<Dirty>,
    /// Forks whose shard is not the one their id hashes to.
    routes: RwLock<HashMap<StreamId, usize>>,
    poisoned: Mutex<Option<String>>,
    logged: AtomicU64,
    signal: Mutex<Signal>,
    wake: Condvar,
    /// Told when a checkpoint made room in the replay budget.
    room: Condvar,
    checkpointing: Mutex<()>,
    recovered: Mutex<Vec<RecoveredStream>>,
    read_only: bool,
}

impl Shared {
    fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn poison(&self, reason: String) {
        // After a failed sync the kernel may have dropped dirty pages; no
        // later write can be trusted until the log is replayed again.
        tracing::error!(dir = %self.dir.display(), %reason, "storage writer failed; refusing writes until restart");
        let mut poisoned = self.poisoned.lock().unwrap_or_else(PoisonError::into_inner);
        poisoned.get_or_insert(reason);
    }

    /// Counts log bytes written; wakes the checkpoint thread past half the
    /// replay budget.
    fn logged(&self, bytes: u64) {
        let total = self.logged.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if total >= self.options.max_replay_bytes / 2 {
            self.want_checkpoint();
        }
    }

    /// Holds a writer while the log since the last checkpoint is at
    /// `max_replay_bytes`, until a checkpoint makes room: the replay after
    /// a crash stays within it however fast data arrives.
    fn wait_for_replay_room(&self) {
        let full = || self.logged.load(Ordering::Acquire) >= self.options.max_replay_bytes;
        if !full() {
            return;
        }
        let mut signal = self.signal.lock().unwrap_or_else(PoisonError::into_inner);
        while full() && !signal.stop && self.poisoned().is_none() {
            signal.wanted = true;
            self.wake.notify_one();
            signal = self
                .room
                .wait_timeout(signal, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Wakes the checkpoint thread for a checkpoint now.
    fn want_checkpoint(&self) {
        self.signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wanted = true;
        self.wake.notify_one();
    }

    fn hashed_shard(&self, id: StreamId) -> usize {
        (layout::mix(id) % self.shards.len() as u64) as usize
    }

    fn shard_of(&self, id: StreamId) -> usize {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
            .unwrap_or_else(|| self.hashed_shard(id))
    }

    fn stream(&self, id: StreamId) -> Option<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Syncs every chunk file and directory changed since the last
    /// checkpoint.
    fn sync_dirty(&self) -> Result<(), StorageError> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        let sync = |path: &Path, all: bool| -> Result<(), StorageError> {
            match std::fs::File::open(path) {
                Ok(file) => if all {
                    file.sync_all()
                } else {
                    file.sync_data()
                }
                .map_err(|e| StorageError::path("sync", path, e)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::path("open for sync", path, e)),
            }
        };
        for &(id, start) in &dirty.chunks {
            sync(&layout::chunk_path(&self.dir, id, start), false)?;
            sync(&layout::index_path(&self.dir, id, start), false)?;
        }
        for dir in &dirty.dirs {
            sync(dir, true)?;
        }
        Ok(())
    }

    /// Drops the recent records of streams idle for [`state::RECENT_IDLE_MS`]
    /// (see [`State::release_idle_recent`]), as a checkpoint does.
    fn release_idle_recent(&self) {
        let now = super::chunk_list::now_ms();
        let streams: Vec<Arc<Stream>> = self
            .streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for stream in streams {
            release_if_idle(&stream, now);
        }
    }

    /// Takes a checkpoint: every stream's committed state and each shard's
    /// log position (publishing paused meanwhile), the chunk files synced,
    /// the checkpoint replaced, the log before it deleted.
    fn checkpoint(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self
            .checkpointing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let logged = self.logged.load(Ordering::Acquire);
        let mut body;
        let positions: Vec<LogPosition>;
        {
            let published: Vec<_> = self
                .shards
                .iter()
                .map(|s| s.published.lock().unwrap_or_else(PoisonError::into_inner))
                .collect();
            positions = published.iter().map(|p| **p).collect();
            let streams = self.streams.read().unwrap_or_else(PoisonError::into_inner);
            body = Vec::with_capacity(64 + streams.len() * 192);
            checkpoint::encode_header(
                &mut body,
                self.options.chunk_bytes,
                &positions,
                streams.len() as u64,
            );
            let now = super::chunk_list::now_ms();
            for stream in streams.iter() {
                release_if_idle(stream, now);
                let state = stream.state.read().unwrap_or_else(PoisonError::into_inner);
                checkpoint::encode_stream(&mut body, &state.record(stream.id));
            }
        }
        // Every record the checkpoint covers must be in its chunk file
        // before the log that holds it can go.
        for shard in &self.shards {
            shard.buffer.write_all(&self.files, &self.dirty)?;
        }
        if let Err(error) = self.sync_dirty() {
            self.poison(format!(
                "syncing chunk files for a checkpoint failed: {error}"
            ));
            return Err(error);
        }
        checkpoint::write(&self.dir, body)?;
        self.logged.fetch_sub(logged, Ordering::AcqRel);
        self.room.notify_all();
        for (shard, seq) in layout::list_wal(&self.dir)? {
            if positions
                .get(shard as usize)
                .is_none_or(|position| seq < position.seq)
            {
                let path = layout::wal_path(&self.dir, shard, seq);
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), %error, "cannot delete a checkpointed log segment");
                }
            }
        }
        tracing::debug!(dir = %self.dir.display(), "checkpoint written");
        Ok(())
    }
}

/// [`State::release_idle_recent`] with [`state::RECENT_IDLE_MS`], locking
/// the state for writing only when there is something to drop, so readers
/// of the streams that keep nothing are not held up.
fn release_if_idle(stream: &Stream, now_ms: i64) {
    let idle = state::RECENT_IDLE_MS;
    let holds = (stream.state.read().unwrap_or_else(PoisonError::into_inner))
        .holds_idle_recent(now_ms, idle);
    if holds {
        (stream.state.write().unwrap_or_else(PoisonError::into_inner))
            .release_idle_recent(now_ms, idle);
    }
}

/// Runs checkpoints: every `checkpoint_interval` while anything was
/// written, and as soon as the log since the last one passes half of
/// `max_replay_bytes`.
fn run_checkpoints(shared: Arc<Shared>) {
    let mut signal = shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
    let mut last = std::time::Instant::now();
    let mut sweep = false;
    loop {
        if signal.stop {
            return;
        }
        let interval = shared.options.checkpoint_interval;
        // A checkpoint asked for while the last one ran found no one
        // waiting on `wake`: `wanted` alone remembers it.
        let mut timed_out = false;
        if !signal.wanted {
            let waited;
            (signal, waited) = shared
                .wake
                .wait_timeout(signal, interval.saturating_sub(last.elapsed()))
                .unwrap_or_else(PoisonError::into_inner);
            if signal.stop {
                return;
            }
            timed_out = waited.timed_out();
        }
        let due = signal.wanted
            || (timed_out || last.elapsed() >= interval)
                && shared.logged.load(Ordering::Acquire) > 0;
        if !due {
            if last.elapsed() >= interval {
                last = std::time::Instant::now();
                if std::mem::take(&mut sweep) {
                    // The last checkpoint found streams appended to just
                    // before it: nothing written since, so no checkpoint
                    // comes to drop their records once idle.
                    drop(signal);
                    shared.release_idle_recent();
                    signal = shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
                }
            }
            continue;
        }
        signal.wanted = false;
        drop(signal);
        if shared.poisoned().is_none()
            && let Err(error) = shared.checkpoint()
        {
            tracing::error!(dir = %shared.dir.display(), %error, "checkpoint failed");
        }
        sweep = true;
        last = std::time::Instant::now();
        signal = shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

/// What a store's last handle stops: the threads, then a final checkpoint
/// (so a clean restart reads nothing but it), then the directory lock.
struct Inner {
    shared: Arc<Shared>,
    /// Tests: stop as `kill -9` would, without the final checkpoint.
    #[cfg(test)]
    abandoned: std::sync::atomic::AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    metadata: Arc<MetadataDir>,
    _lock: Option<DirLock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for shard in &self.shared.shards {
            shard.queue.close();
        }
        for thread in self
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = thread.join();
        }
        self.shared
            .signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
        #[cfg(test)]
        if self.abandoned.load(Ordering::Acquire) {
            return;
        }
        if !self.shared.read_only
            && self.shared.poisoned().is_none()
            && let Err(error) = self.shared.checkpoint()
        {
            tracing::error!(dir = %self.shared.dir.display(), %error, "final checkpoint failed; the next start replays the log");
            return;
        }
        if !self.shared.read_only && self.shared.poisoned().is_none() {
            // The final checkpoint names the end of every log.
            for (index, shard) in self.shared.shards.iter().enumerate() {
                let end = *shard
                    .published
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                wal::cut_unwritten(&self.shared.dir, index as u32, end.seq, end.offset);
            }
        }
    }
}

/// The file store. Cheap to clone.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage")
            .field("dir", &self.inner.shared.dir)
            .field("backend", &self.inner.shared.backend)
            .finish()
    }
}

impl FileStorage {
    /// Opens (or creates) the store in `dir`: locks it, converts a first
    /// layout directory, replays the log since the last checkpoint, writes a
    /// new checkpoint and starts the commit shards.
    ///
    /// # Errors
    /// When the directory is locked or unusable, or stored data is corrupt.
    pub fn open(dir: &Path, options: FileOptions) -> Result<Self, StorageError> {
        let lock = DirLock::acquire(dir)?;
        Self::open_with(dir, options, Some(lock))
    }

    /// Opens the store for reading only, beside a server that may be writing
    /// it (a live export): no lock, no writer, nothing on disk changed, and
    /// a frame that does not verify at the end of a log is taken as a write
    /// in progress. A checkpoint taken meanwhile is noticed and the open
    /// retried.
    ///
    /// # Errors
    /// When the store cannot be read, is corrupt, or still has the first
    /// layout (start a server on it once to convert it).
    pub fn open_read_only(dir: &Path) -> Result<Self, StorageError> {
        let mut attempt = 0;
        loop {
            match Self::open_with(dir, FileOptions::default(), None) {
                Err(StorageError::Corrupt(_)) if attempt < 5 => {
                    // A checkpoint may have deleted log segments between
                    // reading it and the log: read both again.
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Tests: stops the store as `kill -9` would leave it, with everything
    /// since the last checkpoint only in the log (the page cache survives a
    /// process crash, so what was written stays written).
    #[cfg(test)]
    pub fn abandon(self) {
        self.inner.abandoned.store(true, Ordering::Release);
    }

    /// Takes a checkpoint now (tests and the final one at shutdown).
    ///
    /// # Errors
    /// When syncing or writing fails.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.inner.shared.checkpoint()
    }

    fn read_blocking(
        shared: &Shared,
        id: StreamId,
        chunks: Vec<chunk::Committed>,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<ReadChunk, StorageError> {
        let mut out = ReadChunk::empty(from);
        let mut taken = 0usize;
        for committed in chunks {
            let start = out.end.max(committed.start);
            let committed_end = committed.end;
            let path = layout::chunk_path(&shared.dir, id, committed.start);
            let file = match shared.files.get(id, committed.start) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Trimmed or removed since the read was planned.
                    let head = shared.stream(id).map_or(until, |s| {
                        s.state
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .head()
                    });
                    return Err(StorageError::Trimmed { id, head });
                }
                Err(e) => return Err(StorageError::path("open chunk file", &path, e)),
            };
            let index = layout::index_path(&shared.dir, id, committed.start);
            taken += chunk::read(
                chunk::ChunkFile {
                    file: &file,
                    path: &path,
                    index: &index,
                },
                committed,
                start,
                until,
                max_bytes - taken,
                &mut out,
            )?;
            if taken >= max_bytes || out.end < committed_end.min(until) {
                break;
            }
        }
        Ok(out)
    }
}

impl Storage for FileStorage {
    fn backend_name(&self) -> &'static str {
        self.inner.shared.backend
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let shared = &self.inner.shared;
        let shard = match &mutation {
            Mutation::Create { spec, .. } => {
                let shard = spec.fork.as_ref().map_or_else(
                    || shared.hashed_shard(spec.id),
                    |link| shared.shard_of(link.source),
                );
                if shard != shared.hashed_shard(spec.id) {
                    shared
                        .routes
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(spec.id, shard);
                }
                shard
            }
            Mutation::Append(append) => shared.shard_of(append.id),
            Mutation::SoftDelete { id } | Mutation::Trim { id, .. } => shared.shard_of(*id),
            Mutation::Remove { id } => {
                let shard = shared.shard_of(*id);
                shared
                    .routes
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
                shard
            }
        };
        shared.shards[shard].queue.submit(mutation)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        let shared = &self.inner.shared;
        let Some(stream) = shared.stream(id) else {
            return Box::pin(std::future::ready(Err(StorageError::UnknownStream(id))));
        };
        let plan = {
            let state = stream.state.read().unwrap_or_else(PoisonError::into_inner);
            let head = state.head();
            if from < head && state.trimmed() {
                return Box::pin(std::future::ready(Err(StorageError::Trimmed { id, head })));
            }
            let (from, until) = (from.max(head), until.min(state.tail));
            if from >= until {
                return Box::pin(std::future::ready(Ok(ReadChunk::empty(from))));
            }
            // Live readers at the tail are served from memory.
            if let Some(chunk) = state.read_recent(from, until, max_bytes) {
                return Box::pin(std::future::ready(Ok(chunk)));
            }
            let chunks = state.chunks.chunks();
            let first = state.chunks.index_of(from).unwrap_or(0);
            let last = state.chunks.index_of(until - 1).unwrap_or(0);
            // Taken under the state's lock: whatever is not among them now
            // is in the chunk file already.
            let unwritten = stream
                .unwritten
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let plan: Vec<chunk::Committed> = (first..=last)
                .map(|i| {
                    let limit = (i + 1 == chunks.len())
                        .then(|| state.active().map(|a| (a.len, a.index_entries)))
                        .flatten();
                    chunk::Committed {
                        start: chunks[i].start,
                        end: state.chunks.end_of(i, state.tail),
                        limit,
                        memory: unwritten.snapshot(chunks[i].start, limit.map(|(len, _)| len)),
                    }
                })
                .collect();
            (plan, from, until)
        };
        let shared = shared.clone();
        Box::pin(async move {
            let (chunks, from, until) = plan;
            tokio::task::spawn_blocking(move || {
                Self::read_blocking(&shared, id, chunks, from, until, max_bytes)
            })
            .await
            .unwrap_or_else(|e| Err(StorageError::Unavailable(format!("read task failed: {e}"))))
        })
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        super::take_recovered(&self.inner.shared.recovered)
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        self.inner.metadata.put(key, value)
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        self.inner.metadata.load()
    }

    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<ChunkInfo>> {
        let outcome = self
            .inner
            .shared
            .stream(id)
            .ok_or(StorageError::UnknownStream(id))
            .map(|stream| {
                let state = stream.state.read().unwrap_or_else(PoisonError::into_inner);
                state.chunks.infos(state.tail)
            });
        Box::pin(std::future::ready(outcome))
    }
}
