//! The `acid` backend: streams in one redb database. Each group commit is one
//! redb write transaction, so a stream's data, producer state, `Stream-Seq`,
//! closed flag, expiry settings and fork lineage change together or not at
//! all, and an acknowledged append survives `kill -9` and power loss.
//!
//! Every stored record carries a CRC32C of its payload, verified on every
//! read, so corrupt data is never served. An open reads the streams' metadata
//! only, so its time grows with the number of streams, not stored bytes.

mod block;
mod handle;
mod load;
mod log;
mod mover;
mod reopen;
mod shard;
mod syncer;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use self::shard::DbShard;
use super::lock::DirLock;
use super::{
    ChunkInfo, Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture, StreamId,
};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "streams.redb";

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
