//! The in-memory backend: records kept as compact owned [`Bytes`], nothing
//! persisted. An acknowledged append is applied, not durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::{Bytes, BytesMut};

use super::chunk_list::{self, ChunkList};
use super::metadata::MemoryMetadata;
use super::{
    Append, ChunkInfo, Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture,
    StreamId,
};

/// Payload bytes after which a stream's next record starts a new chunk
/// (the unit retention trims).
pub const CHUNK_BYTES: u64 = 1 << 20;

/// Records up to this size are copied into their stream's current block, so
/// that small records share one allocation and one reference count instead
/// of each holding its own (plus the shared header its first read makes):
/// about 60 bytes less per 64-byte record.
const PACKED_RECORD_MAX: usize = 1024;

/// The largest block small records are packed into. Blocks grow with what
/// the stream holds, so a stream written once keeps one record's room.
const BLOCK_MAX: usize = 16 * 1024;

/// Keeps every stream's records in process memory, within a byte budget.
#[derive(Clone, Debug)]
pub struct InMemoryStorage {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    streams: RwLock<HashMap<StreamId, Arc<RwLock<Records>>>>,
    metadata: MemoryMetadata,
    used_bytes: AtomicU64,
    max_bytes: u64,
    chunk_bytes: u64,
}

/// One stream's records, each with the position just after it; `base` is
/// where the first retained record starts.
#[derive(Debug, Default)]
struct Records {
    base: u64,
    records: std::collections::VecDeque<(u64, Bytes)>,
    chunks: ChunkList,
    /// The room left in the block the last small record was copied into.
    open: BytesMut,
    /// Retention dropped data: reads before `base` are refused.
    trimmed: bool,
}

impl Records {
    fn tail(&self) -> u64 {
        self.records.back().map_or(self.base, |(end, _)| *end)
    }

    /// Adds a record, starting a new chunk when the current one is full.
    fn push(&mut self, data: Bytes, chunk_bytes: u64) {
        let tail = self.tail();
        let used = self.chunks.active().map(|c| tail - c.start);
        let now = chunk_list::now_ms();
        if chunk_list::starts_new_chunk(used, data.len() as u64, chunk_bytes) {
            self.chunks.start_chunk(tail, now);
        } else {
            self.chunks.touch(now);
        }
        let data = self.pack(data, tail);
        if self.records.capacity() == 0 {
            // Most streams hold few records: room for one, not the four a
            // first push reserves.
            self.records.reserve_exact(1);
        }
        self.records.push_back((tail + data.len() as u64, data));
    }

    /// `data` as it is kept: small records copied into the current block.
    fn pack(&mut self, data: Bytes, tail: u64) -> Bytes {
        if data.len() > PACKED_RECORD_MAX {
            return data;
        }
        if self.open.capacity() < data.len() {
            let held = usize::try_from(tail - self.base).unwrap_or(BLOCK_MAX);
            self.open = BytesMut::with_capacity(held.clamp(data.len(), BLOCK_MAX));
        }
        self.open.extend_from_slice(&data);
        self.open.split().freeze()
    }

    /// Drops the chunks ending at or before `before`; returns the bytes freed.
    fn trim(&mut self, before: u64) -> u64 {
        let tail = self.tail();
        if before > tail {
            // Everything goes and the stream continues at `before`.
            self.chunks = ChunkList::default();
            self.records.clear();
            self.open = BytesMut::new();
            let freed = tail - self.base;
            self.base = before;
            self.trimmed = true;
            return freed;
        }
        if self.chunks.trim(before, tail).is_empty() {
            return 0;
        }
        let head = self.chunks.head(tail);
        let drop = self.records.partition_point(|&(end, _)| end <= head);
        self.records.drain(..drop);
        let freed = head - self.base;
        self.base = head;
        self.trimmed = true;
        freed
    }

    fn start_of(&self, index: usize) -> u64 {
        if index == 0 {
            self.base
        } else {
            self.records[index - 1].0
        }
    }
}

impl Default for InMemoryStorage {
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

impl InMemoryStorage {
    /// A store that refuses appends once `max_bytes` of payload are held.
    pub fn new(max_bytes: u64) -> Self {
        Self::with_chunk_bytes(max_bytes, CHUNK_BYTES)
    }

    /// [`InMemoryStorage::new`] with chunks of `chunk_bytes`.
    pub fn with_chunk_bytes(max_bytes: u64, chunk_bytes: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                streams: RwLock::new(HashMap::new()),
                metadata: MemoryMetadata::default(),
                used_bytes: AtomicU64::new(0),
                max_bytes,
                chunk_bytes,
            }),
        }
    }

    /// Payload bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used_bytes.load(Ordering::Relaxed)
    }

    fn stream(&self, id: StreamId) -> Option<Arc<RwLock<Records>>> {
        self.shared
            .streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn reserve(&self, bytes: u64) -> Result<(), StorageError> {
        let shared = &self.shared;
        shared
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= shared.max_bytes)
            })
            .map(drop)
            .map_err(|_| {
                StorageError::Full(format!(
                    "the in-memory store holds its limit of {} bytes",
                    shared.max_bytes
                ))
            })
    }

    fn release(&self, bytes: u64) {
        self.shared.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn apply(&self, mutation: Mutation) -> Result<(), StorageError> {
        match mutation {
            Mutation::Create { spec, data, .. } => {
                self.reserve(data.len() as u64)?;
                let mut records = Records {
                    base: spec.base,
                    ..Records::default()
                };
                if !data.is_empty() {
                    records.push(data, self.shared.chunk_bytes);
                }
                let previous = self
                    .shared
                    .streams
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(spec.id, Arc::new(RwLock::new(records)));
                if let Some(previous) = previous {
                    self.release_all(&previous);
                }
                Ok(())
            }
            Mutation::Append(append) => self.append(append),
            Mutation::SoftDelete { .. } => Ok(()),
            Mutation::Remove { id } => {
                let removed = self
                    .shared
                    .streams
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let Some(records) = removed {
                    self.release_all(&records);
                }
                Ok(())
            }
            Mutation::Trim { id, before } => {
                if let Some(stream) = self.stream(id) {
                    let freed = stream
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .trim(before);
                    self.release(freed);
                }
                Ok(())
            }
        }
    }

    fn release_all(&self, records: &RwLock<Records>) {
        let records = records.read().unwrap_or_else(PoisonError::into_inner);
        self.release(records.tail() - records.base);
    }

    fn append(&self, append: Append) -> Result<(), StorageError> {
        let stream = self
            .stream(append.id)
            .ok_or(StorageError::UnknownStream(append.id))?;
        let mut records = stream.write().unwrap_or_else(PoisonError::into_inner);
        let tail = records.tail();
        if append.start != tail {
            return Err(StorageError::OutOfOrder {
                id: append.id,
                start: append.start,
                tail,
            });
        }
        if append.data.is_empty() {
            return Ok(());
        }
        self.reserve(append.data.len() as u64)?;
        records.push(append.data, self.shared.chunk_bytes);
        Ok(())
    }

    fn read_now(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<ReadChunk, StorageError> {
        let stream = self.stream(id).ok_or(StorageError::UnknownStream(id))?;
        let records = stream.read().unwrap_or_else(PoisonError::into_inner);
        if records.trimmed && from < records.base {
            return Err(StorageError::Trimmed {
                id,
                head: records.base,
            });
        }
        let from = from.max(records.base);
        let until = until.min(records.tail());
        let mut chunk = ReadChunk::empty(from);
        if from >= until {
            return Ok(chunk);
        }
        let first = records.records.partition_point(|&(end, _)| end <= from);
        let mut taken = 0usize;
        for index in first..records.records.len() {
            let start = records.start_of(index);
            if start >= until {
                break;
            }
            let record = &records.records[index].1;
            let part = ReadChunk::part(start, record.len(), from, until);
            taken += chunk.push(start, part.clone(), record.slice(part));
            if taken >= max_bytes {
                break;
            }
        }
        Ok(chunk)
    }
}

impl Storage for InMemoryStorage {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn submits_at_once(&self) -> bool {
        true
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        super::settled(self.apply(mutation))
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        let outcome = self.read_now(id, from, until, max_bytes);
        Box::pin(std::future::ready(outcome))
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        Vec::new()
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        self.shared.metadata.put(key, value)
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        self.shared.metadata.load()
    }

    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<ChunkInfo>> {
        let outcome = self
            .stream(id)
            .ok_or(StorageError::UnknownStream(id))
            .map(|stream| {
                let records = stream.read().unwrap_or_else(PoisonError::into_inner);
                records.chunks.infos(records.tail())
            });
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(records: &mut Records, data: &[u8]) -> Bytes {
        records.push(Bytes::copy_from_slice(data), CHUNK_BYTES);
        records
            .records
            .back()
            .map(|(_, kept)| kept.clone())
            .unwrap_or_default()
    }

    #[test]
    fn small_records_share_a_block_and_keep_their_bytes() {
        let mut records = Records::default();
        let kept: Vec<Bytes> = [&b"one"[..], b"two!", b"three", b"xy"]
            .into_iter()
            .map(|data| pushed(&mut records, data))
            .collect();
        let texts: Vec<&[u8]> = kept.iter().map(|data| &data[..]).collect();
        assert_eq!(texts, [&b"one"[..], b"two!", b"three", b"xy"]);
        // Blocks grow with what the stream holds: the third record opened
        // one of 7 bytes (all the stream held), and the fourth fits after it.
        assert_eq!(kept[2].as_ptr().wrapping_add(5), kept[3].as_ptr());
        assert_eq!(records.open.capacity(), 0);
        assert_eq!(records.tail(), 14);
    }

    #[test]
    fn large_records_are_kept_as_given() {
        let mut records = Records::default();
        let data = Bytes::from(vec![7u8; PACKED_RECORD_MAX + 1]);
        records.push(data.clone(), CHUNK_BYTES);
        let kept = records
            .records
            .back()
            .map(|(_, kept)| kept.clone())
            .unwrap_or_default();
        assert_eq!(kept.as_ptr(), data.as_ptr());
    }

    #[test]
    fn a_trim_of_everything_lets_the_block_go() {
        let mut records = Records::default();
        pushed(&mut records, b"abc");
        assert_eq!(records.trim(10), 3);
        assert_eq!(records.open.capacity(), 0);
        assert_eq!(&pushed(&mut records, b"de")[..], b"de");
        assert_eq!(records.tail(), 12);
    }
}
