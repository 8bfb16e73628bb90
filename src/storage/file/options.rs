//! Tuning of the file backends and the number of commit shards it gives.

use std::time::Duration;

use super::shard;

/// Tuning of the file backends.
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// Sync before acknowledging (`file-durable`) or not (`file-fast`).
    pub durable: bool,
    /// Size at which a shard's log starts a new segment file.
    pub segment_bytes: u64,
    /// `file-fast`: the longest time written data stays unsynced.
    pub sync_interval: Duration,
    /// Discard a log from this `<segment file name>:<offset>` on, as named
    /// by a corruption error. Anything else is ignored.
    pub truncate_corrupt_at: Option<String>,
    /// Commit shards; 0 means one per core, at least two.
    pub commit_shards: usize,
    /// Size at which a stream's next record starts a new chunk file.
    pub chunk_bytes: u64,
    /// Most bytes of recent records kept in memory, over all streams.
    pub tail_cache_bytes: usize,
    /// Most bytes of committed records held in memory until written to
    /// their chunk files, over all streams.
    pub chunk_buffer_bytes: usize,
    /// Most chunk files held open at once.
    pub max_open_files: usize,
    /// Longest time between checkpoints while anything is written.
    pub checkpoint_interval: Duration,
    /// Log bytes after which a checkpoint is taken, bounding the replay
    /// after a crash (a checkpoint starts at half of it).
    pub max_replay_bytes: u64,
    /// Take a checkpoint whenever a log segment is full, which keeps the
    /// log to about one segment per shard (on by default; tests of damaged
    /// logs turn it off to keep several segments).
    pub checkpoint_on_full_segment: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            durable: true,
            segment_bytes: 64 << 20,
            sync_interval: Duration::from_millis(100),
            truncate_corrupt_at: None,
            commit_shards: 0,
            chunk_bytes: 8 << 20,
            tail_cache_bytes: 64 << 20,
            chunk_buffer_bytes: 16 << 20,
            max_open_files: 512,
            checkpoint_interval: Duration::from_secs(60),
            max_replay_bytes: 256 << 20,
            checkpoint_on_full_segment: true,
        }
    }
}

impl FileOptions {
    pub(super) fn shard_count(&self) -> usize {
        match self.commit_shards {
            0 => std::thread::available_parallelism()
                .map_or(1, usize::from)
                .max(shard::MIN_DEFAULT_SHARDS),
            n => n,
        }
        .clamp(1, 256)
    }
}
