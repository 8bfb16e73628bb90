//! One database of the store with its writer thread, and the reads and
//! metadata changes served from it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use redb::ReadableTable;

use super::AcidOptions;
use super::block::Block;
use super::handle::Db;
use super::load::{load, trimmed_heads};
use super::log::{AckLog, fold_logged, log_path, replayable, second_log_path, unapplied_in_order};
use super::tables::{
    BLOCKS, CHUNKS, METADATA, RECORDS, SPECS, STATES, StoredState, applied_generation, db_error,
    framed, open_database, prepare_tables, verified_payload,
};
use super::writer::Writer;
use crate::storage::chunk_list::{self, Chunk, ChunkList};
use crate::storage::queue::{CommitQueue, WriterThread};
use crate::storage::{
    ChunkInfo, Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture,
    StreamId, StreamSpec,
};

pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) db: Db,
    pub(super) queue: CommitQueue,
    pub(super) recovered: Mutex<Vec<RecoveredStream>>,
    /// Heads of the streams retention trimmed (reads before them refused).
    pub(super) trimmed: std::sync::RwLock<HashMap<StreamId, u64>>,
    /// Acknowledged records in the log, not yet in redb: by stream, each
    /// record's start and payload, in order from the stream's redb tail.
    pub(super) unapplied: Mutex<Unapplied>,
    /// Payload bytes after which a stream's next record starts a new chunk.
    pub(super) chunk_bytes: u64,
}

/// Records waiting in the log, by stream.
pub(super) type Unapplied = HashMap<StreamId, Vec<LoggedRecord>>;

/// A record acknowledged from the log, not yet in redb.
#[derive(Clone, Debug)]
pub(super) struct LoggedRecord {
    /// Stream position of its first byte.
    pub(super) start: u64,
    /// Its payload.
    pub(super) data: Bytes,
    /// When it was logged (Unix ms): its chunk's write time.
    pub(super) written_ms: i64,
}

/// One redb database of the store, with its writer thread.
#[derive(Clone)]
pub(super) struct DbShard {
    pub(super) shared: Arc<Shared>,
    pub(super) _writer: Option<Arc<WriterThread<Shared>>>,
}

impl DbShard {
    /// Opens (or creates) the database at `path`, loads and verifies every
    /// stream in it, and starts its writer thread.
    pub(super) fn open(
        path: PathBuf,
        options: &AcidOptions,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let db = open_database(&path, cache_bytes)?;
        // redb can panic on damaged pages; that is a corrupt file here.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepare_tables(&db))).map_err(
            |_| {
                StorageError::Corrupt(format!(
                    "database file {} is corrupt: the database engine could not update it",
                    path.display()
                ))
            },
        )??;
        let db = Db::writable(db, &path, cache_bytes);
        let (mut log, first) = AckLog::open(log_path(&path))?;
        let (mut spare, second) = AckLog::open(second_log_path(&path))?;
        let applied = applied_generation(&db.begin_read()?)?;
        let (logged, newest) = unapplied_in_order(vec![first, second], applied);
        log.skip_past(newest);
        spare.skip_past(newest);
        let (_, heads) = load(&db, &path)?;
        let shared = Arc::new(Shared {
            path,
            db,
            queue: CommitQueue::new("acid"),
            recovered: Mutex::new(Vec::new()),
            trimmed: std::sync::RwLock::new(HashMap::new()),
            unapplied: Mutex::new(HashMap::new()),
            chunk_bytes: options.chunk_bytes,
        });
        let mut writer = Writer::new(shared.clone(), heads, options.chunk_bytes, [log, spare]);
        // Appends acknowledged from the log before a crash go into redb now,
        // so the log starts over empty.
        let replay = replayable(&writer.heads, logged, |a| a, &shared.path, true)?;
        if !replay.is_empty() {
            tracing::info!(path = %shared.path.display(), appends = replay.len(),
                "moving acknowledged appends from the log into the database");
            writer.commit(
                replay
                    .into_iter()
                    .map(|append| (Mutation::Append(append), None, chunk_list::now_ms()))
                    .collect(),
                false,
            )?;
        }
        writer.log.restart();
        let (recovered, heads) = load(&shared.db, &shared.path)?;
        writer.heads = heads;
        *shared
            .trimmed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = trimmed_heads(&recovered);
        *shared
            .recovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = recovered;
        writer.start_syncer()?;
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
    pub(super) fn open_read_only(path: PathBuf) -> Result<Self, StorageError> {
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
        let (mut recovered, heads) = load(&db, &path)?;
        // What the server acknowledged from its log and has not moved into
        // redb yet: read after the database, so a move in between shows up
        // as appends already there (skipped) or a gap (where this stops).
        let applied = applied_generation(&db.begin_read()?)?;
        let mut files = Vec::with_capacity(2);
        for log in [log_path(&path), second_log_path(&path)] {
            match AckLog::read(&log) {
                Ok(logged) => files.push(logged),
                Err(StorageError::Path { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        let (logged, _) = unapplied_in_order(files, applied);
        let unapplied = fold_logged(
            &mut recovered,
            replayable(&heads, logged, |a| a, &path, false)?,
        );
        let trimmed = trimmed_heads(&recovered);
        let shared = Arc::new(Shared {
            path,
            db,
            queue: CommitQueue::new("acid"),
            recovered: Mutex::new(recovered),
            trimmed: std::sync::RwLock::new(trimmed),
            unapplied: Mutex::new(unapplied),
            chunk_bytes: AcidOptions::default().chunk_bytes,
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
        let chunk = ReadChunk::empty(from);
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
        // The log's records first: everything before the first of them is
        // in redb by the time the read transaction below begins.
        let (first, logged): (Option<u64>, Vec<LoggedRecord>) = match shared
            .unapplied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            Some(records) => {
                // In stream order: the lock is held for the records read,
                // not for every record the log holds.
                let skip = records.partition_point(|r| r.start + r.data.len() as u64 <= from);
                (
                    records.first().map(|r| r.start),
                    records[skip..]
                        .iter()
                        .take_while(|r| r.start < until)
                        .cloned()
                        .collect(),
                )
            }
            None => (None, Vec::new()),
        };
        let in_database = first.map_or(until, |first| until.min(first));
        let chunk = Self::read_database(shared, id, from, in_database, max_bytes, chunk)?;
        if logged.is_empty() || chunk.end < in_database.max(from) {
            return Ok(chunk);
        }
        let mut chunk = chunk;
        let mut taken: usize = chunk.records.iter().map(Bytes::len).sum();
        for LoggedRecord { start, data, .. } in logged {
            if taken >= max_bytes {
                break;
            }
            let part = ReadChunk::part(start, data.len(), from, until);
            let piece = data.slice(part.clone());
            taken += chunk.push(start, part, piece);
        }
        Ok(chunk)
    }

    /// Reads `[from, until)` from redb into `chunk`: the records of
    /// earlier versions first, then the blocks (a stream's records written
    /// since follow all of its older ones).
    fn read_database(
        shared: &Shared,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
        chunk: ReadChunk,
    ) -> Result<ReadChunk, StorageError> {
        if from >= until {
            return Ok(chunk);
        }
        let txn = shared.db.begin_read()?;
        let mut reading = Reading {
            shared,
            txn: &txn,
            id,
            from,
            until,
            max_bytes,
            taken: 0,
            expected: None,
            chunk,
        };
        let range = (id, from + 1)..=(id, u64::MAX);
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        for entry in records.range(range.clone()).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (_, end) = key.value();
            let payload = verified_payload(value.value(), id, end, &shared.path)?;
            if reading.take(end - payload.len() as u64, payload)? {
                return Ok(reading.chunk);
            }
        }
        let blocks = match txn.open_table(BLOCKS) {
            Ok(blocks) => blocks,
            // A database of an earlier version, opened read-only.
            Err(redb::TableError::TableDoesNotExist(_)) => return reading.finish(),
            Err(e) => return Err(db_error(e)),
        };
        for entry in blocks.range(range).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (_, end) = key.value();
            let block = Block::decode(value.value(), id, end, &shared.path)?;
            // One copy of the part of the block the read can use; each
            // record is a slice of it.
            let payloads = block.payloads();
            let skip = usize::try_from(from.saturating_sub(end - payloads.len() as u64))
                .unwrap_or(usize::MAX)
                .min(payloads.len());
            let keep = usize::try_from(until.saturating_sub(end - payloads.len() as u64))
                .unwrap_or(usize::MAX)
                .min(payloads.len());
            let copied = Bytes::copy_from_slice(&payloads[skip.min(keep)..keep]);
            for (start, range) in block.records() {
                let lo = range.start.clamp(skip, keep) - skip;
                let hi = range.end.clamp(skip, keep) - skip;
                if reading.take_part(start, range.len(), copied.slice(lo..hi))? {
                    return Ok(reading.chunk);
                }
            }
        }
        reading.finish()
    }
}

/// A read of one stream's records from redb, in order.
struct Reading<'a> {
    shared: &'a Shared,
    txn: &'a redb::ReadTransaction,
    id: StreamId,
    from: u64,
    until: u64,
    max_bytes: usize,
    taken: usize,
    /// Where the next record must start: the open loads no records, so
    /// the reads check that the records they meet are whole and follow
    /// each other.
    expected: Option<u64>,
    chunk: ReadChunk,
}

impl Reading<'_> {
    /// Takes the record `data` starting at `start`; whether the read is
    /// done.
    fn take(&mut self, start: u64, data: &[u8]) -> Result<bool, StorageError> {
        let part = ReadChunk::part(start, data.len(), self.from, self.until);
        let piece = Bytes::copy_from_slice(&data[part]);
        self.take_part(start, data.len(), piece)
    }

    /// Takes the record of `len` bytes starting at `start`, of which `piece`
    /// is the part within the read's range; whether the read is done.
    fn take_part(&mut self, start: u64, len: usize, piece: Bytes) -> Result<bool, StorageError> {
        let (id, from, until) = (self.id, self.from, self.until);
        let wanted = match self.expected {
            Some(end) => end,
            // Data starts at the stream's head, which may lie past `from`
            // (a fork's base). A trim committed after the check above
            // answers as that check would have: a read below the
            // retained head is gone, never served with a hole.
            None if start > from => match head_of(self.txn, id)? {
                RetainedStart::Trimmed(head) if from < head => {
                    return Err(StorageError::Trimmed { id, head });
                }
                RetainedStart::Trimmed(head) | RetainedStart::Base(head) => from.max(head),
            },
            None => start,
        };
        // Checked before the range's end: a record's key is not covered
        // by its checksum, so a damaged key shows as a record out of place.
        if start != wanted {
            return Err(missing(self.shared, id, wanted));
        }
        if start >= until {
            // A range that ends before the stream's head (a fork read
            // below its base) holds nothing here.
            return Ok(true);
        }
        let end = start + len as u64;
        self.expected = Some(end);
        if end <= from {
            // Before the range, in a block that reaches into it.
            return Ok(false);
        }
        let part = ReadChunk::part(start, len, from, until);
        debug_assert_eq!(part.len(), piece.len());
        self.taken += self.chunk.push(start, part, piece);
        Ok(self.taken >= self.max_bytes || self.chunk.end >= until)
    }

    /// The records ran out before `until`: fine at the tail only.
    fn finish(self) -> Result<ReadChunk, StorageError> {
        let (id, chunk) = (self.id, self.chunk);
        let states = self.txn.open_table(STATES).map_err(db_error)?;
        if let Some(raw) = states.get(id).map_err(db_error)? {
            let state = serde_json::from_slice::<StoredState>(raw.value()).map_err(|e| {
                StorageError::Corrupt(format!(
                    "database file {}: state of stream {id} is invalid: {e}",
                    self.shared.path.display()
                ))
            })?;
            if state.tail > chunk.end && self.until > chunk.end {
                return Err(missing(self.shared, id, chunk.end));
            }
        }
        Ok(chunk)
    }
}

/// Where a stream's retained data starts.
enum RetainedStart {
    /// Its base: nothing was trimmed.
    Base(u64),
    /// Where retention cut it.
    Trimmed(u64),
}

/// Where a stream's retained data starts, as `txn` sees it.
fn head_of(txn: &redb::ReadTransaction, id: StreamId) -> Result<RetainedStart, StorageError> {
    let invalid = |what: &str, e: serde_json::Error| {
        StorageError::Corrupt(format!("{what} of stream {id} is invalid: {e}"))
    };
    let specs = txn.open_table(SPECS).map_err(db_error)?;
    let Some(raw) = specs.get(id).map_err(db_error)? else {
        return Err(StorageError::UnknownStream(id));
    };
    let spec: StreamSpec = serde_json::from_slice(raw.value()).map_err(|e| invalid("spec", e))?;
    let states = txn.open_table(STATES).map_err(db_error)?;
    let head = match states.get(id).map_err(db_error)? {
        Some(raw) => {
            serde_json::from_slice::<StoredState>(raw.value())
                .map_err(|e| invalid("state", e))?
                .head
        }
        None => None,
    };
    Ok(head.map_or(RetainedStart::Base(spec.base), RetainedStart::Trimmed))
}

/// A stream's records do not reach `at` without a gap.
fn missing(shared: &Shared, id: StreamId, at: u64) -> StorageError {
    StorageError::Corrupt(format!(
        "database file {}: stream {id} has no record at position {at}",
        shared.path.display()
    ))
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
        crate::storage::take_recovered(&self.shared.recovered)
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        let shared = self.shared.clone();
        let key = key.to_owned();
        Box::pin(async move {
            crate::storage::metadata::check_key(&key)?;
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
pub(super) fn put_metadata_blocking(
    shared: &Shared,
    key: &str,
    value: Option<Bytes>,
) -> Result<(), StorageError> {
    let txn = shared.db.begin_write()?;
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

pub(super) fn chunks_blocking(
    shared: &Shared,
    id: StreamId,
) -> Result<Vec<ChunkInfo>, StorageError> {
    let logged: Vec<(u64, u64, i64)> = shared
        .unapplied
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .map(|records| {
            records
                .iter()
                .map(|r| (r.start, r.data.len() as u64, r.written_ms))
                .collect()
        })
        .unwrap_or_default();
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
    let mut active = state
        .chunk_start
        .or((state.tail > head && list.is_empty()).then_some(head));
    let (mut tail, mut last_write_ms) = (state.tail, state.last_write_ms);
    // The records still in the log, chunked as the writer will chunk them
    // when it moves them into redb (none left when it did so meanwhile).
    for (start, len, written_ms) in logged {
        if start != tail {
            break;
        }
        if chunk_list::starts_new_chunk(active.map(|s| tail - s), len, shared.chunk_bytes) {
            if let Some(start) = active {
                list.push(Chunk {
                    start,
                    last_write_ms,
                });
            }
            active = Some(tail);
        }
        tail += len;
        last_write_ms = written_ms;
    }
    if let Some(start) = active {
        list.push(Chunk {
            start,
            last_write_ms,
        });
    }
    Ok(ChunkList::from_chunks(list).infos(tail))
}

pub(super) fn load_metadata_blocking(
    shared: &Shared,
) -> Result<Vec<(String, Bytes)>, StorageError> {
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
