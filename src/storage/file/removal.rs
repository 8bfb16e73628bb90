//! Deleting what the store no longer holds: a trimmed chunk's files, a
//! removed stream's directory and the empty fan-out directories above it,
//! noting the directories a checkpoint must sync.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::super::{StorageError, StreamId};
use super::files::FileCache;
use super::layout;
use super::state::Dirty;

fn remove_file(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::path("delete", path, e)),
    }
}

/// Deletes a chunk file and its index.
///
/// # Errors
/// When a file exists but cannot be deleted.
pub fn remove_chunk_files(root: &Path, id: StreamId, start: u64) -> Result<(), StorageError> {
    remove_file(&layout::chunk_path(root, id, start))?;
    remove_file(&layout::index_path(root, id, start))
}

/// Deletes a stream's directory and everything in it, and the fan-out
/// directories above it once they are empty.
///
/// # Errors
/// When it exists but cannot be deleted.
pub fn remove_stream_files(
    root: &Path,
    id: StreamId,
    files: &FileCache,
    dirty: &Mutex<Dirty>,
) -> Result<(), StorageError> {
    let dir = layout::stream_dir(root, id);
    let _dirs = files.lock_dirs();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::path("delete stream directory", &dir, e)),
    }
    // Its chunks may still be listed as dirty: the checkpoint skips files
    // that are gone. Removing a directory that is not empty fails: kept.
    let mut dirty = dirty.lock().unwrap_or_else(PoisonError::into_inner);
    dirty.dirs.remove(&dir);
    let mut parent = dir.parent();
    while let Some(up) = parent.filter(|p| {
        p.starts_with(root.join(layout::STREAMS_DIR)) && *p != root.join(layout::STREAMS_DIR)
    }) {
        dirty.dirs.insert(up.to_path_buf());
        if std::fs::remove_dir(up).is_err() {
            break;
        }
        parent = up.parent();
    }
    if let Some(up) = parent {
        dirty.dirs.insert(up.to_path_buf());
    }
    Ok(())
}
