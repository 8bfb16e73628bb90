//! Names and places of the file store's files inside the data directory.
//!
//! ```text
//! <data_dir>/LOCK                      one server per directory
//! <data_dir>/checkpoint                the latest checkpoint (replaced atomically)
//! <data_dir>/wal/SSS-NNNNNNNNNNNNNNNNNNNN.wal      write-ahead log of shard SSS
//! <data_dir>/streams/XX/YY/<id hex>/<start>.dat    a chunk of a stream's records
//! <data_dir>/streams/XX/YY/<id hex>/<start>.idx    its sparse index
//! <data_dir>/metadata/…                the metadata area (see storage::metadata)
//! ```
//!
//! `XX/YY` are two bytes of a hash of the stream id, so that millions of
//! streams spread over 65,536 directories instead of sharing one.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::super::{StorageError, StreamId};

/// The checkpoint file.
pub const CHECKPOINT: &str = "checkpoint";
/// A checkpoint being written.
pub const CHECKPOINT_TEMP: &str = "checkpoint.tmp";
/// The directory of the write-ahead log segments.
pub const WAL_DIR: &str = "wal";
/// The directory of the chunk files.
pub const STREAMS_DIR: &str = "streams";
/// Suffix of a chunk file.
pub const CHUNK_SUFFIX: &str = ".dat";
/// Suffix of a chunk's sparse index.
pub const INDEX_SUFFIX: &str = ".idx";

pub(crate) use super::super::spread as mix;

/// The fan-out directory holding stream `id`'s directory.
pub fn fan_out_dir(root: &Path, id: StreamId) -> PathBuf {
    let h = mix(id);
    root.join(STREAMS_DIR)
        .join(format!("{:02x}", (h >> 56) as u8))
        .join(format!("{:02x}", (h >> 48) as u8))
}

/// The directory of stream `id`'s chunk files.
pub fn stream_dir(root: &Path, id: StreamId) -> PathBuf {
    fan_out_dir(root, id).join(format!("{id:016x}"))
}

/// The chunk file of stream `id` starting at stream position `start`.
pub fn chunk_path(root: &Path, id: StreamId, start: u64) -> PathBuf {
    stream_dir(root, id).join(format!("{start:020}{CHUNK_SUFFIX}"))
}

/// The sparse index of that chunk.
pub fn index_path(root: &Path, id: StreamId, start: u64) -> PathBuf {
    stream_dir(root, id).join(format!("{start:020}{INDEX_SUFFIX}"))
}

/// The start position a chunk or index file name encodes.
pub fn chunk_start_of(name: &str) -> Option<u64> {
    name.strip_suffix(CHUNK_SUFFIX)
        .or_else(|| name.strip_suffix(INDEX_SUFFIX))
        .and_then(|n| n.parse().ok())
}

/// The file name of segment `seq` of shard `shard`'s log.
pub fn wal_name(shard: u32, seq: u64) -> String {
    format!("{shard:03}-{seq:020}.wal")
}

/// The shard and segment number a log file name encodes.
pub fn parse_wal_name(name: &str) -> Option<(u32, u64)> {
    let (shard, seq) = name.strip_suffix(".wal")?.split_once('-')?;
    Some((shard.parse().ok()?, seq.parse().ok()?))
}

/// The path of a log segment.
pub fn wal_path(root: &Path, shard: u32, seq: u64) -> PathBuf {
    root.join(WAL_DIR).join(wal_name(shard, seq))
}

/// Every log segment in the data directory, by shard and number.
///
/// # Errors
/// When the log directory cannot be listed.
pub fn list_wal(root: &Path) -> Result<Vec<(u32, u64)>, StorageError> {
    let dir = root.join(WAL_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::path("list the write-ahead log", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::path("list the write-ahead log", &dir, e))?;
        if let Some(parsed) = entry.file_name().to_str().and_then(parse_wal_name) {
            out.push(parsed);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Makes a directory's entries durable.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::path("sync the directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_wal_name(&wal_name(3, 17)), Some((3, 17)));
        assert_eq!(parse_wal_name("00000000000000000001.seg"), None);
        let path = chunk_path(Path::new("/d"), 5, 1234);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(chunk_start_of(name), Some(1234));
        assert!(path.starts_with(stream_dir(Path::new("/d"), 5)));
    }

    #[test]
    fn ids_spread_over_the_fan_out() {
        let dirs: std::collections::HashSet<PathBuf> = (1..=1000)
            .map(|id| fan_out_dir(Path::new("/d"), id))
            .collect();
        assert!(dirs.len() > 990, "{} distinct directories", dirs.len());
    }
}
