//! The `acid` backend: streams in one redb database. Each group commit is one
//! redb write transaction, so a stream's data, producer state, `Stream-Seq`,
//! closed flag, expiry settings and fork lineage change together or not at
//! all, and an acknowledged append survives `kill -9` and power loss.
//!
//! Every stored record carries a CRC32C of its payload, verified on open and
//! on every read, so corrupt data is never served.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::chunk_list::{self, Chunk, ChunkList};
use super::lock::DirLock;
use super::queue::{Ack, CommitQueue, Next, WriterThread, commit_spans, fail_all};
use super::{
    ChunkInfo, ClosedBy, Mutation, ReadChunk, RecoveredStream, Storage, StorageError,
    StorageFuture, StreamId, StreamSpec,
};
use crate::metrics::event::StorageCommitted;
use crate::protocol::producer::ProducerState;

/// Immutable stream descriptions (JSON of [`StreamSpec`]).
const SPECS: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_specs");
/// Mutable stream state (JSON of [`StoredState`]).
const STATES: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_states");
/// Producer state by (stream, producer id): (epoch, last seq).
const PRODUCERS: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("producers");
/// Records by (stream, end position): CRC32C (4 bytes LE) then payload.
const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("records");
/// The metadata area (see [`super::metadata`]): CRC32C (4 bytes LE) then value.
const METADATA: TableDefinition<&str, &[u8]> = TableDefinition::new("metadata");
/// Sealed chunks by (stream, start): when their newest record was written
/// (Unix ms). The chunk being written is in the stream's state.
const CHUNKS: TableDefinition<(u64, u64), i64> = TableDefinition::new("chunks");
/// Most payload bytes one transaction commits.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "streams.redb";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StoredState {
    tail: u64,
    closed: bool,
    closed_by: Option<ClosedBy>,
    stream_seq: Option<String>,
    soft_deleted: bool,
    /// Where the retained data starts (absent: the spec's base).
    #[serde(default)]
    head: Option<u64>,
    /// Start of the chunk being written (absent in databases written before
    /// chunks: one chunk from the head).
    #[serde(default)]
    chunk_start: Option<u64>,
    /// When its newest record was written, Unix ms.
    #[serde(default)]
    last_write_ms: i64,
}

/// Tuning of the acid backend.
#[derive(Clone, Copy, Debug)]
pub struct AcidOptions {
    /// redb's page cache, in bytes, shared out over the databases.
    pub cache_bytes: usize,
    /// Payload bytes after which a stream's next record starts a new chunk.
    pub chunk_bytes: u64,
    /// Databases (each with its own writer and commits); 0 means one per
    /// core. A directory keeps the databases it has: streams stay where
    /// they were written.
    pub shards: usize,
}

impl Default for AcidOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            chunk_bytes: 8 << 20,
            shards: 0,
        }
    }
}

/// The database file of shard `index` (the first keeps the name of the
/// single database of earlier versions).
fn database_file(index: usize) -> String {
    if index == 0 {
        DATABASE_FILE.to_owned()
    } else {
        format!("streams-{index}.redb")
    }
}

/// How many databases `dir` holds (the highest shard present, plus one).
fn databases_in(dir: &Path) -> Result<usize, StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::path("list the data directory", dir, e)),
    };
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::path("list the data directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let index = if name == DATABASE_FILE {
            Some(0)
        } else {
            name.strip_prefix("streams-")
                .and_then(|n| n.strip_suffix(".redb"))
                .and_then(|n| n.parse::<usize>().ok())
        };
        if let Some(index) = index {
            count = count.max(index + 1);
        }
    }
    Ok(count)
}

/// The redb backend: one or more databases, each stream in one of them (a
/// fork in its source's), each database with its own writer thread, so
/// their commits and syncs overlap. Cheap to clone.
#[derive(Clone)]
pub struct AcidStorage {
    shards: Arc<Vec<DbShard>>,
    /// Streams not in the database their id hashes to.
    routes: Arc<std::sync::RwLock<HashMap<StreamId, usize>>>,
    recovered: Arc<Mutex<Vec<RecoveredStream>>>,
    dir: PathBuf,
    _lock: Option<Arc<DirLock>>,
}

impl std::fmt::Debug for AcidStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcidStorage")
            .field("dir", &self.dir)
            .field("databases", &self.shards.len())
            .finish()
    }
}

impl AcidStorage {
    /// Opens (or creates) the store in `dir` with default options: locks
    /// the directory, loads and verifies every stream, and starts the
    /// writer threads.
    ///
    /// # Errors
    /// When the directory is locked, a database cannot be opened, or a
    /// record fails verification.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, AcidOptions::default())
    }

    /// [`AcidStorage::open`] with `options`.
    ///
    /// # Errors
    /// As [`AcidStorage::open`].
    pub fn open_with(dir: &Path, options: AcidOptions) -> Result<Self, StorageError> {
        let lock = DirLock::acquire(dir)?;
        let wanted = match options.shards {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
        .clamp(1, 64);
        let count = wanted.max(databases_in(dir)?);
        let cache = (options.cache_bytes / count).max(1 << 20);
        let shards = (0..count)
            .map(|i| DbShard::open(dir.join(database_file(i)), &options, cache))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::assemble(dir, shards, Some(lock)))
    }

    /// Opens the databases read-only beside a server that may be writing
    /// them (a live export).
    ///
    /// # Errors
    /// When a database cannot be opened or fails verification.
    pub fn open_read_only(dir: &Path) -> Result<Self, StorageError> {
        let count = databases_in(dir)?.max(1);
        let shards = (0..count)
            .map(|i| DbShard::open_read_only(dir.join(database_file(i))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::assemble(dir, shards, None))
    }

    fn assemble(dir: &Path, shards: Vec<DbShard>, lock: Option<DirLock>) -> Self {
        let mut recovered = Vec::new();
        let mut routes = HashMap::new();
        for (index, shard) in shards.iter().enumerate() {
            for stream in shard.recover() {
                if hashed(stream.spec.id, shards.len()) != index {
                    routes.insert(stream.spec.id, index);
                }
                recovered.push(stream);
            }
        }
        Self {
            shards: Arc::new(shards),
            routes: Arc::new(std::sync::RwLock::new(routes)),
            recovered: Arc::new(Mutex::new(recovered)),
            dir: dir.to_path_buf(),
            _lock: lock.map(Arc::new),
        }
    }

    /// The first database file (the only one of earlier versions).
    pub fn path(&self) -> &Path {
        &self.shards[0].shared.path
    }

    fn shard_of(&self, id: StreamId) -> &DbShard {
        let index = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
            .unwrap_or_else(|| hashed(id, self.shards.len()));
        &self.shards[index]
    }
}

/// The database a stream id hashes to.
fn hashed(id: StreamId, count: usize) -> usize {
    (super::spread(id) % count as u64) as usize
}

impl Storage for AcidStorage {
    fn backend_name(&self) -> &'static str {
        "acid"
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let shard = match &mutation {
            Mutation::Create { spec, .. } => {
                let index = match &spec.fork {
                    Some(link) => {
                        let source = self.shard_of(link.source);
                        self.shards
                            .iter()
                            .position(|s| Arc::ptr_eq(&s.shared, &source.shared))
                            .unwrap_or(0)
                    }
                    None => hashed(spec.id, self.shards.len()),
                };
                if index != hashed(spec.id, self.shards.len()) {
                    self.routes
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(spec.id, index);
                }
                &self.shards[index]
            }
            Mutation::Append(append) => self.shard_of(append.id),
            Mutation::SoftDelete { id } | Mutation::Trim { id, .. } => self.shard_of(*id),
            Mutation::Remove { id } => {
                let shard = self.shard_of(*id);
                self.routes
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
                shard
            }
        };
        shard.submit(mutation)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        self.shard_of(id).read(id, from, until, max_bytes)
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        super::take_recovered(&self.recovered)
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        self.shards[0].put_metadata(key, value)
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        self.shards[0].metadata()
    }

    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<ChunkInfo>> {
        self.shard_of(id).chunks(id)
    }
}

/// The writer's view of a stream.
#[derive(Clone, Copy, Debug)]
struct Head {
    tail: u64,
    chunk_start: Option<u64>,
}

fn db_error(error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Io(io) => StorageError::from_write(io),
        redb::Error::Corrupted(detail) => StorageError::Corrupt(detail),
        redb::Error::ValueTooLarge(len) => {
            StorageError::Full(format!("a value of {len} bytes is too large"))
        }
        other => StorageError::Unavailable(other.to_string()),
    }
}

/// The database, writable (the server) or read-only (a live export).
enum Db {
    Writable(Database),
    ReadOnly(redb::ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        match self {
            Db::Writable(db) => db.begin_read().map_err(db_error),
            Db::ReadOnly(db) => db.begin_read().map_err(db_error),
        }
    }

    fn writable(&self) -> Result<&Database, StorageError> {
        match self {
            Db::Writable(db) => Ok(db),
            Db::ReadOnly(_) => Err(StorageError::Unavailable(
                "the store is open read-only".into(),
            )),
        }
    }
}

struct Shared {
    path: PathBuf,
    db: Db,
    queue: CommitQueue,
    recovered: Mutex<Vec<RecoveredStream>>,
    /// Heads of the streams retention trimmed (reads before them refused).
    trimmed: std::sync::RwLock<HashMap<StreamId, u64>>,
}

/// One redb database of the store, with its writer thread.
#[derive(Clone)]
struct DbShard {
    shared: Arc<Shared>,
    _writer: Option<Arc<WriterThread<Shared>>>,
}

impl DbShard {
    /// Opens (or creates) the database at `path`, loads and verifies every
    /// stream in it, and starts its writer thread.
    fn open(
        path: PathBuf,
        options: &AcidOptions,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let db = open_database(&path, cache_bytes)?;
        prepare_tables(&db)?;
        let db = Db::Writable(db);
        let (recovered, heads) = load(&db, &path)?;
        let trimmed = trimmed_heads(&recovered);
        let shared = Arc::new(Shared {
            path,
            db,
            queue: CommitQueue::new("acid"),
            recovered: Mutex::new(recovered),
            trimmed: std::sync::RwLock::new(trimmed),
        });
        let writer = Writer {
            shared: shared.clone(),
            heads,
            chunk_bytes: options.chunk_bytes,
        };
        let thread = std::thread::Builder::new()
            .name("ds-acid-writer".into())
            .spawn(move || writer.run())
            .map_err(StorageError::Io)?;
        let handle = WriterThread::new(shared.clone(), |shared| &shared.queue, thread);
        Ok(Self {
            _writer: Some(Arc::new(handle)),
            shared,
        })
    }

    /// Opens the database at `path` read-only beside a server that may be
    /// writing it: redb's single-writer mode lets readers follow its
    /// commits.
    fn open_read_only(path: PathBuf) -> Result<Self, StorageError> {
        let db = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open_read_only(&path)
            .map_err(|e| match db_error(e) {
                StorageError::Corrupt(detail) => StorageError::Corrupt(format!(
                    "database file {} is corrupt: {detail}",
                    path.display()
                )),
                other => other,
            })?;
        let db = Db::ReadOnly(db);
        let (recovered, _) = load(&db, &path)?;
        let trimmed = trimmed_heads(&recovered);
        let shared = Arc::new(Shared {
            path,
            db,
            queue: CommitQueue::new("acid"),
            recovered: Mutex::new(recovered),
            trimmed: std::sync::RwLock::new(trimmed),
        });
        shared.queue.close();
        Ok(Self {
            _writer: None,
            shared,
        })
    }

    fn read_blocking(
        shared: &Shared,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<ReadChunk, StorageError> {
        let mut chunk = ReadChunk::empty(from);
        if let Some(&head) = shared
            .trimmed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            && from < head
        {
            return Err(StorageError::Trimmed { id, head });
        }
        if from >= until {
            return Ok(chunk);
        }
        let txn = shared.db.begin_read()?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let mut taken = 0usize;
        for entry in records
            .range((id, from + 1)..=(id, u64::MAX))
            .map_err(db_error)?
        {
            let (key, value) = entry.map_err(db_error)?;
            let (_, end) = key.value();
            let payload = verified_payload(value.value(), id, end, &shared.path)?;
            let start = end - payload.len() as u64;
            if start >= until {
                break;
            }
            let part = ReadChunk::part(start, payload.len(), from, until);
            let piece = Bytes::copy_from_slice(&payload[part.clone()]);
            taken += chunk.push(start, part, piece);
            if taken >= max_bytes || chunk.end >= until {
                break;
            }
        }
        Ok(chunk)
    }
}

fn verified_payload<'a>(
    value: &'a [u8],
    id: StreamId,
    end: u64,
    path: &Path,
) -> Result<&'a [u8], StorageError> {
    let corrupt = || {
        StorageError::Corrupt(format!(
            "database file {}: record of stream {id} ending at position {end} fails its checksum",
            path.display()
        ))
    };
    let (crc, payload) = value.split_first_chunk::<4>().ok_or_else(corrupt)?;
    if u32::from_le_bytes(*crc) != crc32c::crc32c(payload) || (payload.len() as u64) > end {
        return Err(corrupt());
    }
    Ok(payload)
}

/// Opens the database with redb's page checksums verified, allowing
/// read-only handles in other processes (a live export) beside this writer.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StorageError> {
    let corrupt = |detail: String| {
        StorageError::Corrupt(format!(
            "database file {} is corrupt: {detail}",
            path.display()
        ))
    };
    let opened = std::panic::catch_unwind(|| {
        redb::Builder::new()
            .set_check_integrity_on_open(true)
            .set_cache_size(cache_bytes)
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .create(path)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StorageError::Locked {
            dir: path.to_path_buf(),
            holder: "another process (redb lock)".into(),
        }),
        Ok(Err(error)) => Err(match db_error(error) {
            StorageError::Corrupt(detail) => corrupt(detail),
            other => other,
        }),
        Err(_) => Err(corrupt("the database engine could not read it".into())),
    }
}

/// Loads every stream and verifies every record.
fn prepare_tables(db: &Database) -> Result<(), StorageError> {
    // Make sure the tables exist, so reads never meet a missing table.
    let txn = db.begin_write().map_err(db_error)?;
    {
        txn.open_table(SPECS).map_err(db_error)?;
        txn.open_table(STATES).map_err(db_error)?;
        txn.open_table(PRODUCERS).map_err(db_error)?;
        txn.open_table(RECORDS).map_err(db_error)?;
        txn.open_table(METADATA).map_err(db_error)?;
        txn.open_table(CHUNKS).map_err(db_error)?;
    }
    txn.commit().map_err(db_error)
}

/// The heads of streams whose data retention trimmed.
fn trimmed_heads(recovered: &[RecoveredStream]) -> HashMap<StreamId, u64> {
    recovered
        .iter()
        .filter(|s| s.head > s.spec.base)
        .map(|s| (s.spec.id, s.head))
        .collect()
}

fn load(
    db: &Db,
    path: &Path,
) -> Result<(Vec<RecoveredStream>, HashMap<StreamId, Head>), StorageError> {
    let txn = db.begin_read()?;
    let specs = txn.open_table(SPECS).map_err(db_error)?;
    let states = txn.open_table(STATES).map_err(db_error)?;
    let producers = txn.open_table(PRODUCERS).map_err(db_error)?;
    let records = txn.open_table(RECORDS).map_err(db_error)?;
    let mut by_id: BTreeMap<StreamId, RecoveredStream> = BTreeMap::new();
    let mut chunk_starts: HashMap<StreamId, Option<u64>> = HashMap::new();
    for entry in specs.iter().map_err(db_error)? {
        let (id, raw) = entry.map_err(db_error)?;
        let spec: StreamSpec = serde_json::from_slice(raw.value()).map_err(|e| {
            StorageError::Corrupt(format!(
                "database file {}: spec of stream {} is invalid: {e}",
                path.display(),
                id.value()
            ))
        })?;
        let state: StoredState = match states.get(id.value()).map_err(db_error)? {
            Some(raw) => serde_json::from_slice(raw.value()).map_err(|e| {
                StorageError::Corrupt(format!(
                    "database file {}: state of stream {} is invalid: {e}",
                    path.display(),
                    id.value()
                ))
            })?,
            None => StoredState {
                tail: spec.base,
                ..StoredState::default()
            },
        };
        // Every record must verify and follow its predecessor exactly.
        let head = state.head.unwrap_or(spec.base);
        let mut expected = head;
        for record in records
            .range((id.value(), 0)..=(id.value(), u64::MAX))
            .map_err(db_error)?
        {
            let (key, value) = record.map_err(db_error)?;
            let (_, end) = key.value();
            let payload = verified_payload(value.value(), id.value(), end, path)?;
            if end - payload.len() as u64 != expected {
                return Err(StorageError::Corrupt(format!(
                    "database file {}: stream {} has a gap before position {end}",
                    path.display(),
                    id.value()
                )));
            }
            expected = end;
        }
        if expected != state.tail {
            return Err(StorageError::Corrupt(format!(
                "database file {}: stream {} records end at {expected} but its state says {}",
                path.display(),
                id.value(),
                state.tail
            )));
        }
        by_id.insert(
            id.value(),
            RecoveredStream {
                spec,
                tail: state.tail,
                closed: state.closed.then_some(state.closed_by),
                producers: Vec::new(),
                stream_seq: state.stream_seq,
                soft_deleted: state.soft_deleted,
                head,
            },
        );
        chunk_starts.insert(
            id.value(),
            state.chunk_start.or((state.tail > head).then_some(head)),
        );
    }
    for entry in producers.iter().map_err(db_error)? {
        let (key, value) = entry.map_err(db_error)?;
        let (id, producer) = key.value();
        let (epoch, last_seq) = value.value();
        if let Some(stream) = by_id.get_mut(&id) {
            stream
                .producers
                .push((producer.to_owned(), ProducerState { epoch, last_seq }));
        }
    }
    let heads = by_id
        .iter()
        .map(|(&id, s)| {
            (
                id,
                Head {
                    tail: s.tail,
                    chunk_start: chunk_starts.get(&id).copied().flatten(),
                },
            )
        })
        .collect();
    Ok((by_id.into_values().collect(), heads))
}

impl Storage for DbShard {
    fn backend_name(&self) -> &'static str {
        "acid"
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        self.shared.queue.submit(mutation)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                Self::read_blocking(&shared, id, from, until, max_bytes)
            })
            .await
            .unwrap_or_else(|e| Err(StorageError::Unavailable(format!("read task failed: {e}"))))
        })
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        super::take_recovered(&self.shared.recovered)
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        let shared = self.shared.clone();
        let key = key.to_owned();
        Box::pin(async move {
            super::metadata::check_key(&key)?;
            tokio::task::spawn_blocking(move || put_metadata_blocking(&shared, &key, value))
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Unavailable(format!(
                        "metadata write task failed: {e}"
                    )))
                })
        })
    }

    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<ChunkInfo>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || chunks_blocking(&shared, id))
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Unavailable(format!("read task failed: {e}")))
                })
        })
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || load_metadata_blocking(&shared))
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Unavailable(format!(
                        "metadata read task failed: {e}"
                    )))
                })
        })
    }
}

/// One metadata change in its own transaction with immediate durability
/// (redb lets it wait for the stream writer's transaction, never interleave).
fn put_metadata_blocking(
    shared: &Shared,
    key: &str,
    value: Option<Bytes>,
) -> Result<(), StorageError> {
    let db = shared.db.writable()?;
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    {
        let mut table = txn.open_table(METADATA).map_err(db_error)?;
        match value {
            Some(value) => {
                table
                    .insert(key, framed(&value).as_slice())
                    .map_err(db_error)?;
            }
            None => {
                table.remove(key).map_err(db_error)?;
            }
        }
    }
    txn.commit().map_err(db_error)
}

fn chunks_blocking(shared: &Shared, id: StreamId) -> Result<Vec<ChunkInfo>, StorageError> {
    let txn = shared.db.begin_read()?;
    let states = txn.open_table(STATES).map_err(db_error)?;
    let state: StoredState = match states.get(id).map_err(db_error)? {
        Some(raw) => serde_json::from_slice(raw.value())
            .map_err(|e| StorageError::Corrupt(format!("state of stream {id} is invalid: {e}")))?,
        None => return Err(StorageError::UnknownStream(id)),
    };
    let table = match txn.open_table(CHUNKS) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db_error(e)),
    };
    let mut list = Vec::new();
    if let Some(table) = table {
        for entry in table.range((id, 0)..=(id, u64::MAX)).map_err(db_error)? {
            let (key, ms) = entry.map_err(db_error)?;
            list.push(Chunk {
                start: key.value().1,
                last_write_ms: ms.value(),
            });
        }
    }
    let head = state
        .head
        .unwrap_or(list.first().map_or(state.tail, |c| c.start));
    if let Some(start) = state
        .chunk_start
        .or((state.tail > head && list.is_empty()).then_some(head))
    {
        list.push(Chunk {
            start,
            last_write_ms: state.last_write_ms,
        });
    }
    Ok(ChunkList::from_chunks(list).infos(state.tail))
}

fn load_metadata_blocking(shared: &Shared) -> Result<Vec<(String, Bytes)>, StorageError> {
    let txn = shared.db.begin_read()?;
    let table = match txn.open_table(METADATA) {
        Ok(table) => table,
        // A database written before the metadata area existed (read-only).
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_error(e)),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(db_error)? {
        let (key, raw) = entry.map_err(db_error)?;
        let raw = raw.value();
        let value = raw
            .split_at_checked(4)
            .filter(|(crc, value)| crc32c::crc32c(value).to_le_bytes() == **crc)
            .map(|(_, value)| Bytes::copy_from_slice(value))
            .ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "database file {}: metadata entry {:?} fails its checksum",
                    shared.path.display(),
                    key.value()
                ))
            })?;
        out.push((key.value().to_owned(), value));
    }
    Ok(out)
}

struct Writer {
    shared: Arc<Shared>,
    heads: HashMap<StreamId, Head>,
    chunk_bytes: u64,
}

/// Tables of one write transaction.
struct Tables<'t> {
    specs: redb::Table<'t, u64, &'static [u8]>,
    states: redb::Table<'t, u64, &'static [u8]>,
    producers: redb::Table<'t, (u64, &'static str), (u64, u64)>,
    records: redb::Table<'t, (u64, u64), &'static [u8]>,
    chunks: redb::Table<'t, (u64, u64), i64>,
}

impl Writer {
    fn run(mut self) {
        while let Next::Batch(batch) = self.shared.queue.next_batch(MAX_BATCH_BYTES, None) {
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<(Mutation, Ack)>) {
        let before = self.heads.clone();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut trimmed = Vec::new();
        let spans = commit_spans("acid", batch.iter().map(|(_, ack)| ack), batch.len());
        let started = std::time::Instant::now();
        let outcome = self.apply_batch(batch, &mut accepted, &mut trimmed);
        if !accepted.is_empty() {
            StorageCommitted {
                backend: "acid",
                batch: accepted.len(),
                elapsed: started.elapsed(),
            }
            .emit();
        }
        drop(spans);
        match outcome {
            Ok(()) => {
                if !trimmed.is_empty() {
                    let mut heads = self
                        .shared
                        .trimmed
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (id, head) in trimmed {
                        match head {
                            Some(head) => heads.insert(id, head),
                            None => heads.remove(&id),
                        };
                    }
                }
                for ack in accepted {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(error) => {
                self.heads = before;
                tracing::error!(path = %self.shared.path.display(), error = %error, "transaction failed");
                fail_all(accepted, &error);
            }
        }
    }

    /// Stores a record ending at `end`, sealing the current chunk first
    /// when the record does not fit in it.
    fn put_record(
        &mut self,
        tables: &mut Tables<'_>,
        id: StreamId,
        state: &mut StoredState,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let Some(head) = self.heads.get_mut(&id) else {
            return Ok(());
        };
        let now = chunk_list::now_ms();
        let used = head.chunk_start.map(|start| head.tail - start);
        if chunk_list::starts_new_chunk(used, data.len() as u64, self.chunk_bytes) {
            if let Some(start) = head.chunk_start {
                tables
                    .chunks
                    .insert((id, start), state.last_write_ms)
                    .map_err(db_error)?;
            }
            head.chunk_start = Some(head.tail);
        }
        let end = head.tail + data.len() as u64;
        tables
            .records
            .insert((id, end), framed(data).as_slice())
            .map_err(db_error)?;
        head.tail = end;
        state.tail = end;
        state.chunk_start = head.chunk_start;
        state.last_write_ms = now;
        Ok(())
    }

    /// Drops the chunks of `id` that end at or before `before`; returns the
    /// new head.
    fn trim(
        &mut self,
        tables: &mut Tables<'_>,
        id: StreamId,
        state: &mut StoredState,
        before: u64,
    ) -> Result<u64, StorageError> {
        let Some(head) = self.heads.get_mut(&id) else {
            return Ok(state.tail);
        };
        // Past the tail, everything goes and the stream continues at
        // `before`.
        let moved = before > head.tail;
        if moved {
            head.tail = before;
            state.tail = before;
        }
        let mut sealed = Vec::new();
        for entry in tables
            .chunks
            .range((id, 0)..=(id, u64::MAX))
            .map_err(db_error)?
        {
            let (key, _) = entry.map_err(db_error)?;
            sealed.push(key.value().1);
        }
        let active = head.chunk_start;
        let mut starts: Vec<u64> = sealed.clone();
        starts.extend(active);
        let end_of = |i: usize| starts.get(i + 1).copied().unwrap_or(head.tail);
        let drop = (0..starts.len())
            .find(|&i| end_of(i) > before)
            .unwrap_or(starts.len());
        let new_head = starts.get(drop).copied().unwrap_or(head.tail);
        let current = state.head.unwrap_or(new_head);
        if drop == 0 && !moved {
            return Ok(current);
        }
        for &start in sealed.iter().take(drop) {
            tables.chunks.remove((id, start)).map_err(db_error)?;
        }
        if drop == starts.len() {
            head.chunk_start = None;
            state.chunk_start = None;
        }
        tables
            .records
            .retain_in((id, 0)..=(id, new_head), |_, _| false)
            .map_err(db_error)?;
        state.head = Some(new_head);
        Ok(new_head)
    }

    /// Applies a batch in one transaction. Mutations refused on their own
    /// (out of order, unknown stream) are answered at once and left out.
    fn apply_batch(
        &mut self,
        batch: Vec<(Mutation, Ack)>,
        accepted: &mut Vec<Ack>,
        trimmed: &mut Vec<(StreamId, Option<u64>)>,
    ) -> Result<(), StorageError> {
        let mut txn = self.shared.db.writable()?.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        {
            let mut tables = Tables {
                specs: txn.open_table(SPECS).map_err(db_error)?,
                states: txn.open_table(STATES).map_err(db_error)?,
                producers: txn.open_table(PRODUCERS).map_err(db_error)?,
                records: txn.open_table(RECORDS).map_err(db_error)?,
                chunks: txn.open_table(CHUNKS).map_err(db_error)?,
            };
            let mut dirty: HashMap<StreamId, StoredState> = HashMap::new();
            for (mutation, ack) in batch {
                match mutation {
                    Mutation::Create { spec, data, closed } => {
                        let json = serde_json::to_vec(&spec)
                            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                        tables
                            .specs
                            .insert(spec.id, json.as_slice())
                            .map_err(db_error)?;
                        let mut state = StoredState {
                            tail: spec.base,
                            closed,
                            ..StoredState::default()
                        };
                        self.heads.insert(
                            spec.id,
                            Head {
                                tail: spec.base,
                                chunk_start: None,
                            },
                        );
                        if !data.is_empty() {
                            self.put_record(&mut tables, spec.id, &mut state, &data)?;
                        }
                        dirty.insert(spec.id, state);
                    }
                    Mutation::Append(append) => {
                        match self.heads.get(&append.id) {
                            None => {
                                let _ = ack.send(Err(StorageError::UnknownStream(append.id)));
                                continue;
                            }
                            Some(head) if head.tail != append.start => {
                                let _ = ack.send(Err(StorageError::OutOfOrder {
                                    id: append.id,
                                    start: append.start,
                                    tail: head.tail,
                                }));
                                continue;
                            }
                            Some(_) => {}
                        }
                        load_state(append.id, &tables.states, &mut dirty)?;
                        let mut state = dirty.remove(&append.id).unwrap_or_default();
                        if !append.data.is_empty() {
                            self.put_record(&mut tables, append.id, &mut state, &append.data)?;
                        }
                        if let Some((producer, next)) = &append.producer {
                            tables
                                .producers
                                .insert((append.id, producer.as_str()), (next.epoch, next.last_seq))
                                .map_err(db_error)?;
                        }
                        if append.stream_seq.is_some() {
                            state.stream_seq = append.stream_seq;
                        }
                        if let Some(by) = append.close
                            && !state.closed
                        {
                            state.closed = true;
                            state.closed_by = by;
                        }
                        dirty.insert(append.id, state);
                    }
                    Mutation::SoftDelete { id } => {
                        if self.heads.contains_key(&id) {
                            load_state(id, &tables.states, &mut dirty)?;
                            dirty.entry(id).or_default().soft_deleted = true;
                        }
                    }
                    Mutation::Remove { id } => {
                        dirty.remove(&id);
                        self.heads.remove(&id);
                        trimmed.push((id, None));
                        tables.specs.remove(id).map_err(db_error)?;
                        tables.states.remove(id).map_err(db_error)?;
                        tables
                            .records
                            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                            .map_err(db_error)?;
                        tables
                            .chunks
                            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                            .map_err(db_error)?;
                        tables
                            .producers
                            .retain_in((id, "")..(id + 1, ""), |_, _| false)
                            .map_err(db_error)?;
                    }
                    Mutation::Trim { id, before } => {
                        if self.heads.contains_key(&id) {
                            load_state(id, &tables.states, &mut dirty)?;
                            let mut state = dirty.remove(&id).unwrap_or_default();
                            let head = self.trim(&mut tables, id, &mut state, before)?;
                            if state.head.is_some() {
                                trimmed.push((id, Some(head)));
                            }
                            dirty.insert(id, state);
                        }
                    }
                }
                accepted.push(ack);
            }
            for (id, state) in dirty {
                let json = serde_json::to_vec(&state)
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                tables
                    .states
                    .insert(id, json.as_slice())
                    .map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }
}

/// Puts a stream's stored state into `dirty` unless it is already there.
fn load_state(
    id: StreamId,
    states: &redb::Table<u64, &[u8]>,
    dirty: &mut HashMap<StreamId, StoredState>,
) -> Result<(), StorageError> {
    if let std::collections::hash_map::Entry::Vacant(slot) = dirty.entry(id) {
        let state = match states.get(id).map_err(db_error)? {
            Some(raw) => serde_json::from_slice(raw.value()).map_err(|e| {
                StorageError::Corrupt(format!("state of stream {id} is invalid: {e}"))
            })?,
            None => StoredState::default(),
        };
        slot.insert(state);
    }
    Ok(())
}

/// A stored record: CRC32C of the payload, then the payload.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Append;

    const RECORDS_WRITTEN: usize = 300;

    /// One database, so that every record is in `streams.redb`.
    fn open_one(dir: &Path) -> Result<AcidStorage, StorageError> {
        AcidStorage::open_with(
            dir,
            AcidOptions {
                shards: 1,
                ..AcidOptions::default()
            },
        )
    }

    fn spec(id: u64) -> StreamSpec {
        StreamSpec {
            id,
            path: format!("/v1/stream/a{id}"),
            content_type: "application/octet-stream".into(),
            ttl_secs: None,
            expires_at_ms: None,
            created_at_ms: 0,
            fork: None,
            base: 0,
        }
    }

    /// A recognisable payload of 200 bytes for record `i`.
    fn payload(i: usize) -> Vec<u8> {
        let mut out = format!("acid-record-{i:04}:").into_bytes();
        out.resize(200, b'a' + (i % 26) as u8);
        out
    }

    /// Stream 1 with `RECORDS_WRITTEN` records, one transaction each; the
    /// store is closed when this returns.
    async fn write_store(dir: &Path) -> Vec<u8> {
        let store = open_one(dir).expect("open");
        store
            .submit(Mutation::Create {
                spec: spec(1),
                data: Bytes::new(),
                closed: false,
            })
            .await
            .expect("create");
        let mut all = Vec::new();
        for i in 0..RECORDS_WRITTEN {
            let data = payload(i);
            store
                .submit(Mutation::Append(Append {
                    id: 1,
                    start: all.len() as u64,
                    data: Bytes::from(data.clone()),
                    producer: None,
                    stream_seq: None,
                    close: None,
                }))
                .await
                .expect("append");
            all.extend_from_slice(&data);
        }
        all
    }

    /// Opens the store; if that works, everything it serves must be a
    /// prefix of what was written (an older commit at worst), never altered.
    async fn open_and_check(dir: &Path, written: &[u8]) -> Result<(), StorageError> {
        let store = open_one(dir)?;
        for stream in store.recover() {
            assert_eq!(stream.spec.id, 1, "an unknown stream appeared");
            assert!(stream.tail <= written.len() as u64);
            let mut data = Vec::new();
            let mut from = 0;
            while from < stream.tail {
                let chunk = store.read(1, from, stream.tail, 1 << 20).await?;
                assert!(chunk.end > from, "a read made no progress");
                data.extend(chunk.records.concat());
                from = chunk.end;
            }
            assert_eq!(data, written[..data.len()], "served data differs");
        }
        Ok(())
    }

    fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
        haystack
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(at, _)| at)
            .collect()
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_record_fails_the_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_store(dir.path()).await;
        let path = dir.path().join(DATABASE_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        // An early record: its page is shared by every later commit, so no
        // older commit can stand in for it.
        let found = occurrences(&bytes, &payload(5));
        assert!(!found.is_empty(), "record 5 is in the file");
        for at in found {
            bytes[at + 100] ^= 0x5a;
        }
        std::fs::write(&path, bytes).expect("write");
        match open_one(dir.path()) {
            Err(StorageError::Corrupt(message)) => {
                assert!(message.contains(&path.display().to_string()), "{message}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn flipped_bytes_anywhere_never_panic_or_serve_altered_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_store(dir.path()).await;
        let path = dir.path().join(DATABASE_FILE);
        let pristine = std::fs::read(&path).expect("read");
        let mut rng = fastrand::Rng::with_seed(11);
        let mut refused = 0;
        for round in 0..64 {
            let mut bytes = pristine.clone();
            let at = rng.usize(..bytes.len());
            bytes[at] ^= 1 << rng.u8(..8);
            std::fs::write(&path, &bytes).expect("write");
            let outcome = open_and_check(dir.path(), &written).await;
            if outcome.is_err() {
                refused += 1;
            }
            eprintln!("round {round}: byte {at} of {}: {outcome:?}", bytes.len());
        }
        assert!(refused > 0, "no flipped byte was ever noticed");
    }

    #[tokio::test]
    async fn a_record_failing_its_checksum_fails_the_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_store(dir.path()).await;
        let path = dir.path().join(DATABASE_FILE);
        // Alter a record through redb itself, so its page checksums hold and
        // only the record's own CRC32C can tell.
        let end = 8 * 200;
        {
            let db = Database::create(&path).expect("open with redb");
            let txn = db.begin_write().expect("write txn");
            {
                let mut records = txn.open_table(RECORDS).expect("records");
                let mut value = records
                    .get((1, end))
                    .expect("get")
                    .expect("record 7")
                    .value()
                    .to_vec();
                value[4 + 50] ^= 0x5a;
                records.insert((1, end), value.as_slice()).expect("insert");
            }
            txn.commit().expect("commit");
        }
        match open_one(dir.path()) {
            Err(StorageError::Corrupt(message)) => {
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(
                    message.contains(&format!("stream 1 ending at position {end}")),
                    "{message}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn streams_stay_in_their_database_when_the_count_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = |shards| {
            AcidStorage::open_with(
                dir.path(),
                AcidOptions {
                    shards,
                    ..AcidOptions::default()
                },
            )
            .expect("open")
        };
        {
            let store = open(3);
            for id in 1..=12 {
                store
                    .submit(Mutation::Create {
                        spec: spec(id),
                        data: Bytes::from(payload(id as usize)),
                        closed: false,
                    })
                    .await
                    .expect("create");
            }
            let mut fork = spec(13);
            fork.fork = Some(crate::storage::ForkLink {
                source: 5,
                source_path: spec(5).path,
                offset: 200,
                sub_offset: 0,
            });
            fork.base = 200;
            store
                .submit(Mutation::Create {
                    spec: fork,
                    data: Bytes::from_static(b"own"),
                    closed: false,
                })
                .await
                .expect("fork");
            let used = (0..3)
                .filter(|&i| dir.path().join(database_file(i)).exists())
                .count();
            assert_eq!(used, 3);
        }
        for shards in [1, 5] {
            let store = open(shards);
            let mut streams = store.recover();
            streams.sort_by_key(|s| s.spec.id);
            let ours = streams.iter().filter(|s| s.spec.id <= 13).count();
            assert_eq!(ours, 13, "{shards} databases asked");
            for id in 1..=12u64 {
                let chunk = store.read(id, 0, 200, usize::MAX).await.expect("read");
                assert_eq!(chunk.records.concat(), payload(id as usize));
                store
                    .submit(Mutation::Append(Append {
                        id,
                        start: 200,
                        data: Bytes::from_static(b"+"),
                        producer: None,
                        stream_seq: None,
                        close: None,
                    }))
                    .await
                    .expect("append");
            }
            let id = 100 + shards as u64;
            store
                .submit(Mutation::Create {
                    spec: spec(id),
                    data: Bytes::from_static(b"new"),
                    closed: false,
                })
                .await
                .expect("create");
            drop(store);
            let store = open(shards);
            assert!(store.recover().iter().any(|s| s.spec.id == id));
            for id in 1..=12u64 {
                let appended = store.read(id, 200, 201, 10).await.expect("read");
                assert_eq!(appended.records.concat(), b"+");
                store
                    .submit(Mutation::Trim { id, before: 0 })
                    .await
                    .expect("trim nothing");
            }
            // Undo the appends for the next round.
            drop(store);
            let store = open(shards);
            for id in 1..=12u64 {
                store.submit(Mutation::Remove { id }).await.expect("remove");
                store
                    .submit(Mutation::Create {
                        spec: spec(id),
                        data: Bytes::from(payload(id as usize)),
                        closed: false,
                    })
                    .await
                    .expect("re-create");
            }
        }
    }
}
