//! Progress of a replay, logged at `info`: what is to be replayed when it
//! starts, records and bytes per shard every few seconds while it runs,
//! and the totals with the duration when it ends, so an operator watching
//! a slow start sees it advance.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

/// Time between two progress lines.
const EVERY: Duration = Duration::from_secs(2);

/// Counts what a replay applied.
pub(super) struct ReplayProgress {
    started: Instant,
    last_logged: Cell<Instant>,
    shard: Cell<u32>,
    /// Where the segment being read was before the last record.
    position: Cell<u64>,
    records: Cell<u64>,
    bytes: Cell<u64>,
    shard_records: Cell<u64>,
    shard_bytes: Cell<u64>,
}

impl ReplayProgress {
    /// Logs the start of a replay of about `to_replay` bytes of log.
    pub(super) fn start(dir: &Path, to_replay: u64) -> Self {
        tracing::info!(dir = %dir.display(), bytes = to_replay, "replaying the log since the last checkpoint");
        let now = Instant::now();
        Self {
            started: now,
            last_logged: Cell::new(now),
            shard: Cell::new(0),
            position: Cell::new(0),
            records: Cell::new(0),
            bytes: Cell::new(0),
            shard_records: Cell::new(0),
            shard_bytes: Cell::new(0),
        }
    }

    /// A new segment of `shard` is read from `from`.
    pub(super) fn segment(&self, shard: u32, from: u64) {
        if shard != self.shard.get() {
            self.shard.set(shard);
            self.shard_records.set(0);
            self.shard_bytes.set(0);
        }
        self.position.set(from);
    }

    /// A record ending at `end` of the current segment was applied.
    pub(super) fn applied(&self, end: u64) {
        let bytes = end.saturating_sub(self.position.get());
        self.position.set(end);
        self.records.set(self.records.get() + 1);
        self.bytes.set(self.bytes.get() + bytes);
        self.shard_records.set(self.shard_records.get() + 1);
        self.shard_bytes.set(self.shard_bytes.get() + bytes);
        if self.last_logged.get().elapsed() >= EVERY {
            self.last_logged.set(Instant::now());
            tracing::info!(
                shard = self.shard.get(),
                shard_records = self.shard_records.get(),
                shard_bytes = self.shard_bytes.get(),
                records = self.records.get(),
                bytes = self.bytes.get(),
                "replaying the log"
            );
        }
    }

    /// Logs the end of the replay.
    pub(super) fn finish(&self, streams: usize) {
        tracing::info!(
            records = self.records.get(),
            bytes = self.bytes.get(),
            streams,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "log replayed"
        );
    }
}
