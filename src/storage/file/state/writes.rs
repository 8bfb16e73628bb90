//! The chunk-file writes of a batch, and what the next checkpoint must
//! sync because of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::super::super::{StorageError, StreamId};
use super::super::chunk::IndexEntry;
use super::super::files::FileCache;
use super::super::layout;

/// Chunk files and directories changed since the last checkpoint, which
/// must be synced before the next one is written.
#[derive(Default)]
pub struct Dirty {
    /// Chunk files (and their indexes) written.
    pub chunks: HashSet<(StreamId, u64)>,
    /// Directories whose entries changed.
    pub dirs: HashSet<PathBuf>,
}

/// The chunk-file writes of one batch.
#[derive(Default)]
pub struct ChunkWrites {
    /// The records' frames are kept as unwritten bytes when published
    /// (the commit path), not written here (replay).
    pub(super) defer_frames: bool,
    pub(super) created: Vec<(StreamId, u64)>,
    /// Frames by chunk: file offset of the first byte, the bytes.
    pub(super) frames: BTreeMap<(StreamId, u64), (u64, Vec<u8>)>,
    pub(super) index: Vec<(StreamId, u64, IndexEntry)>,
}

impl ChunkWrites {
    /// Writes that create chunk files and write index entries, leaving the
    /// records' frames to be kept unwritten when published.
    pub fn deferred() -> Self {
        Self {
            defer_frames: true,
            ..Self::default()
        }
    }

    /// Writes everything, recording what the next checkpoint must sync.
    ///
    /// # Errors
    /// When a write fails ([`StorageError::Full`] on a full disk).
    pub fn apply(
        &self,
        root: &Path,
        files: &FileCache,
        dirty: &Mutex<Dirty>,
    ) -> Result<(), StorageError> {
        for &(id, start) in &self.created {
            files.create(id, start)?;
        }
        for (&(id, start), (offset, bytes)) in &self.frames {
            let file = files.get(id, start).map_err(|e| {
                StorageError::path("open chunk file", &layout::chunk_path(root, id, start), e)
            })?;
            file.write_all_at(bytes, *offset)
                .map_err(StorageError::from_write)?;
        }
        for &(id, start, (at, entry)) in &self.index {
            let path = layout::index_path(root, id, start);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .and_then(|file| file.write_all_at(&entry, at))
                .map_err(StorageError::from_write)?;
        }
        let mut dirty = dirty.lock().unwrap_or_else(PoisonError::into_inner);
        for &(id, start) in &self.created {
            let stream_dir = layout::stream_dir(root, id);
            if let Some(fan_out) = stream_dir.parent() {
                if let Some(top) = fan_out.parent() {
                    dirty.dirs.insert(top.to_path_buf());
                }
                dirty.dirs.insert(fan_out.to_path_buf());
            }
            dirty.dirs.insert(stream_dir);
            dirty.chunks.insert((id, start));
        }
        dirty.chunks.extend(self.frames.keys().copied());
        Ok(())
    }

    /// Replay: leaves out the writes into chunk files that are gone (and
    /// not created by these writes). A trim deleted such a file after the
    /// checkpoint the replay started from, and that trim follows in the
    /// log: the bytes would be dropped again. `present` remembers each
    /// chunk's answer, so a file is looked up once per replay, not once per
    /// logged append; a chunk still retained once the replay ends must not
    /// be marked absent there.
    pub fn skip_gone(&mut self, root: &Path, present: &mut HashMap<(StreamId, u64), bool>) {
        for &key in &self.created {
            present.insert(key, true);
        }
        self.frames.retain(|&(id, start), _| {
            *present
                .entry((id, start))
                .or_insert_with(|| layout::chunk_path(root, id, start).exists())
        });
        self.index
            .retain(|&(id, start, _)| present.get(&(id, start)).copied().unwrap_or(true));
    }
}
