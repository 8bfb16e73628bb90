//! The open-file cache: chunk files kept open for the writer and for
//! readers, at most `max_open_files` at once, the least recently used closed
//! first (a file in use stays open until its last user drops it).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::super::{StorageError, StreamId};
use super::layout;

type Key = (StreamId, u64);

#[derive(Default)]
struct Lru {
    files: HashMap<Key, (Arc<File>, u64)>,
    order: BTreeMap<u64, Key>,
    tick: u64,
}

/// Open chunk files by (stream, chunk start).
pub struct FileCache {
    root: PathBuf,
    cap: usize,
    writable: bool,
    lru: Mutex<Lru>,
    /// Held while directories are created or removed, so that a removal
    /// of an empty fan-out directory never races a creation inside it.
    dirs: Mutex<()>,
}

impl FileCache {
    /// A cache of at most `cap` files under `root`; `writable` opens them
    /// for writing too.
    pub fn new(root: &Path, cap: usize, writable: bool) -> Self {
        Self {
            root: root.to_path_buf(),
            cap: cap.max(1),
            writable,
            lru: Mutex::new(Lru::default()),
            dirs: Mutex::new(()),
        }
    }

    fn insert(&self, lru: &mut Lru, key: Key, file: Arc<File>) {
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((_, old)) = lru.files.insert(key, (file, tick)) {
            lru.order.remove(&old);
        }
        lru.order.insert(tick, key);
        while lru.files.len() > self.cap {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            lru.files.remove(&victim);
        }
    }

    /// The chunk file of stream `id` starting at `start`, opened if needed.
    ///
    /// # Errors
    /// When it cannot be opened (a trimmed or removed chunk: `NotFound`).
    pub fn get(&self, id: StreamId, start: u64) -> Result<Arc<File>, std::io::Error> {
        let key = (id, start);
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((file, tick)) = lru.files.get(&key).map(|(f, t)| (f.clone(), *t)) {
            lru.tick += 1;
            let now = lru.tick;
            lru.order.remove(&tick);
            lru.order.insert(now, key);
            if let Some(entry) = lru.files.get_mut(&key) {
                entry.1 = now;
            }
            return Ok(file);
        }
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(self.writable)
                .open(layout::chunk_path(&self.root, id, start))?,
        );
        self.insert(&mut lru, key, file.clone());
        Ok(file)
    }

    /// Creates (or starts over) that chunk file, creating its directories.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn create(&self, id: StreamId, start: u64) -> Result<Arc<File>, StorageError> {
        let path = layout::chunk_path(&self.root, id, start);
        let dir = layout::stream_dir(&self.root, id);
        let _dirs = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
        std::fs::create_dir_all(&dir).map_err(|e| match StorageError::from_write(e) {
            StorageError::Io(e) => StorageError::path("create stream directory", &dir, e),
            full => full,
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| match StorageError::from_write(e) {
                StorageError::Io(e) => StorageError::path("create chunk file", &path, e),
                full => full,
            })?;
        let file = Arc::new(file);
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        self.insert(&mut lru, (id, start), file.clone());
        Ok(file)
    }

    /// Holds off directory creation while the caller removes directories.
    pub fn lock_dirs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.dirs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the cached files of stream `id` (removed), or only those
    /// starting before `before` (trimmed).
    pub fn forget(&self, id: StreamId, before: Option<u64>) {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<(Key, u64)> = lru
            .files
            .iter()
            .filter(|((sid, start), _)| *sid == id && before.is_none_or(|b| *start < b))
            .map(|(key, (_, tick))| (*key, *tick))
            .collect();
        for (key, tick) in keys {
            lru.files.remove(&key);
            lru.order.remove(&tick);
        }
    }
}
