//! The database schema: tables, the stored state of a stream, record
//! framing, and opening a database.

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::block::BlockBuilder;
use crate::storage::{ClosedBy, StorageError, StreamId};

/// Immutable stream descriptions (JSON of [`StreamSpec`]).
pub(super) const SPECS: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_specs");
/// Mutable stream state (JSON of [`StoredState`]).
pub(super) const STATES: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_states");
/// Producer state by (stream, producer id): (epoch, last seq).
pub(super) const PRODUCERS: TableDefinition<(u64, &str), (u64, u64)> =
    TableDefinition::new("producers");
/// Records by (stream, end position): CRC32C (4 bytes LE) then payload.
/// Written by earlier versions only (one value per record); read, trimmed
/// and deleted as before, and always before a stream's blocks.
pub(super) const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("records");
/// Blocks of records by (stream, end of the last record), the layout of
/// [`super::block`]; every record written now is in a block.
pub(super) const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("record_blocks");
/// The metadata area (see [`super::metadata`]): CRC32C (4 bytes LE) then value.
pub(super) const METADATA: TableDefinition<&str, &[u8]> = TableDefinition::new("metadata");
/// Sealed chunks by (stream, start): when their newest record was written
/// (Unix ms). The chunk being written is in the stream's state.
pub(super) const CHUNKS: TableDefinition<(u64, u64), i64> = TableDefinition::new("chunks");
/// The acknowledgement log's state: under [`LOG_APPLIED`], the newest log
/// generation whose frames are all in this database.
pub(super) const LOG_STATE: TableDefinition<&str, u64> = TableDefinition::new("log_state");
/// The key of [`LOG_STATE`] naming the newest generation applied.
pub(super) const LOG_APPLIED: &str = "applied_generation";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct StoredState {
    pub(super) tail: u64,
    pub(super) closed: bool,
    pub(super) closed_by: Option<ClosedBy>,
    pub(super) stream_seq: Option<String>,
    pub(super) soft_deleted: bool,
    /// Where the retained data starts (absent: the spec's base).
    #[serde(default)]
    pub(super) head: Option<u64>,
    /// Start of the chunk being written (absent in databases written before
    /// chunks: one chunk from the head).
    #[serde(default)]
    pub(super) chunk_start: Option<u64>,
    /// When its newest record was written, Unix ms.
    #[serde(default)]
    pub(super) last_write_ms: i64,
}

pub(super) fn db_error(error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Io(io) => StorageError::from_write(io),
        redb::Error::Corrupted(detail) => StorageError::Corrupt(detail),
        redb::Error::ValueTooLarge(len) => {
            StorageError::Full(format!("a value of {len} bytes is too large"))
        }
        other => StorageError::Unavailable(other.to_string()),
    }
}

pub(super) fn verified_payload<'a>(
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

/// Opens the database, allowing read-only handles in other processes (a live
/// export) beside this writer. Nothing but redb's header and allocator state
/// is read: every commit records the allocator state ([`begin_durable`]), so
/// even after `kill -9` the open needs no walk over the data, and records
/// carry their own checksums, verified when read.
pub(super) fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StorageError> {
    let corrupt = |detail: String| {
        StorageError::Corrupt(format!(
            "database file {} is corrupt: {detail}",
            path.display()
        ))
    };
    let opened = std::panic::catch_unwind(|| {
        redb::Builder::new()
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

/// Makes sure the tables exist, so reads never meet a missing table.
pub(super) fn prepare_tables(db: &Database) -> Result<(), StorageError> {
    let txn = begin_durable(db)?;
    {
        txn.open_table(SPECS).map_err(db_error)?;
        txn.open_table(STATES).map_err(db_error)?;
        txn.open_table(PRODUCERS).map_err(db_error)?;
        txn.open_table(RECORDS).map_err(db_error)?;
        txn.open_table(BLOCKS).map_err(db_error)?;
        txn.open_table(METADATA).map_err(db_error)?;
        txn.open_table(CHUNKS).map_err(db_error)?;
        txn.open_table(LOG_STATE).map_err(db_error)?;
    }
    txn.commit().map_err(db_error)
}

/// A write transaction that is durable when its commit returns and records
/// redb's allocator state, so the open after a crash loads that state
/// instead of rebuilding it from every page of the file.
pub(super) fn begin_durable(db: &Database) -> Result<WriteTransaction, StorageError> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Puts a stream's stored state into `dirty` unless it is already there.
pub(super) fn load_state(
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
pub(super) fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The newest log generation whose frames are all in the database (0 in a
/// database written before the log existed).
pub(super) fn applied_generation(txn: &redb::ReadTransaction) -> Result<u64, StorageError> {
    match txn.open_table(LOG_STATE) {
        Ok(table) => Ok(table
            .get(LOG_APPLIED)
            .map_err(db_error)?
            .map_or(0, |g| g.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(db_error(e)),
    }
}

/// Tables of one write transaction.
pub(super) struct Tables<'t> {
    pub(super) specs: redb::Table<'t, u64, &'static [u8]>,
    pub(super) states: redb::Table<'t, u64, &'static [u8]>,
    pub(super) producers: redb::Table<'t, (u64, &'static str), (u64, u64)>,
    /// Records of earlier versions, one per value (trimmed and removed).
    pub(super) records: redb::Table<'t, (u64, u64), &'static [u8]>,
    pub(super) blocks: redb::Table<'t, (u64, u64), &'static [u8]>,
    pub(super) chunks: redb::Table<'t, (u64, u64), i64>,
    /// Each stream's block being filled in this transaction.
    pub(super) building: HashMap<StreamId, BlockBuilder>,
}

impl<'t> Tables<'t> {
    /// Opens the tables in `txn`.
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            specs: txn.open_table(SPECS).map_err(db_error)?,
            states: txn.open_table(STATES).map_err(db_error)?,
            producers: txn.open_table(PRODUCERS).map_err(db_error)?,
            records: txn.open_table(RECORDS).map_err(db_error)?,
            blocks: txn.open_table(BLOCKS).map_err(db_error)?,
            chunks: txn.open_table(CHUNKS).map_err(db_error)?,
            building: HashMap::new(),
        })
    }

    /// Stores the block being filled for `id`, if any.
    pub(super) fn close_block(&mut self, id: StreamId) -> Result<(), StorageError> {
        match self.building.remove(&id) {
            Some(block) => self.store_block(id, block),
            None => Ok(()),
        }
    }

    /// Stores every block being filled.
    pub(super) fn close_blocks(&mut self) -> Result<(), StorageError> {
        for (id, block) in std::mem::take(&mut self.building) {
            self.store_block(id, block)?;
        }
        Ok(())
    }

    fn store_block(&mut self, id: StreamId, block: BlockBuilder) -> Result<(), StorageError> {
        if !block.is_empty() {
            self.blocks
                .insert((id, block.end()), block.finish().as_slice())
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Drops the records and blocks of `id` that end at or before `end`.
    pub(super) fn drop_records(&mut self, id: StreamId, end: u64) -> Result<(), StorageError> {
        self.records
            .retain_in((id, 0)..=(id, end), |_, _| false)
            .map_err(db_error)?;
        self.blocks
            .retain_in((id, 0)..=(id, end), |_, _| false)
            .map_err(db_error)
    }
}
