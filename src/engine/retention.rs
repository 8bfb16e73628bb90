//! Retention (`[storage.retention]`): dropping whole chunks from the head of
//! streams that hold older, or more, data than their limits allow. The
//! chunk holding the tail is never dropped, so a stream keeps its newest
//! data whatever the limits.

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use super::entry::{Status, StreamEntry};
use super::error::EngineError;
use crate::clock;
use crate::metrics::event::BytesTrimmed;
use crate::storage::config::{RetentionConfig, RetentionLimits};
use crate::storage::{ChunkInfo, Mutation, StorageError, StreamId};

/// The role lock of the server trimming a shared store's streams.
const RETENTION_ROLE: &str = "retention";

/// Where to trim a stream whose chunks are `chunks` (oldest first): the end
/// of the newest chunk that `limits` drop at `now_ms`, or `None` to keep
/// them all. A chunk goes when its newest record is older than the age
/// limit, or when keeping it would keep more than the byte limit.
pub(super) fn trim_point(
    chunks: &[ChunkInfo],
    limits: RetentionLimits,
    now_ms: i64,
) -> Option<u64> {
    let (newest, older) = chunks.split_last()?;
    let mut dropped = 0;
    if limits.max_age_secs > 0 {
        let age_ms = i64::try_from(limits.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let horizon = now_ms.saturating_sub(age_ms);
        dropped = older
            .iter()
            .take_while(|chunk| chunk.last_write_ms < horizon)
            .count();
    }
    if limits.max_bytes > 0 {
        let over = older
            .iter()
            .take_while(|chunk| newest.end - chunk.start > limits.max_bytes)
            .count();
        dropped = dropped.max(over);
    }
    dropped.checked_sub(1).map(|last| older[last].end)
}

impl Engine {
    /// Trims every live stream without forks to its retention limits;
    /// returns the bytes dropped. A stream with forks keeps its data, which
    /// they read through. With a shared store, the streams are the
    /// store's, and only the server holding the store's retention role
    /// trims (the others answer 0).
    ///
    /// # Errors
    /// A storage failure (the streams before it were trimmed).
    pub async fn enforce_retention(&self, retention: &RetentionConfig) -> Result<u64, EngineError> {
        let mut trimmed = 0;
        if let Some(store) = self.shared_store() {
            if !store.lead(RETENTION_ROLE).await? {
                return Ok(0);
            }
            for (id, path) in store.trimmable().await? {
                let limits = retention.limits_for(&path);
                if limits.is_on() {
                    trimmed += self.trim(id, &path, limits).await?;
                }
            }
            return Ok(trimmed);
        }
        for entry in self.shared.registry.entries() {
            let limits = retention.limits_for(entry.path());
            if limits.is_on() && Self::may_trim(&entry) {
                trimmed += self.trim(entry.id(), entry.path(), limits).await?;
            }
        }
        Ok(trimmed)
    }

    fn may_trim(entry: &StreamEntry) -> bool {
        let inner = entry.lock();
        inner.status == Status::Live && inner.created && inner.forks == 0
    }

    /// Trims stream `id` at `path` to `limits`; returns the bytes dropped.
    async fn trim(
        &self,
        id: StreamId,
        path: &str,
        limits: RetentionLimits,
    ) -> Result<u64, EngineError> {
        let storage = &self.shared.storage;
        let chunks = match storage.chunks(id).await {
            Ok(chunks) => chunks,
            // Deleted since the list was taken.
            Err(StorageError::UnknownStream(_)) => return Ok(0),
            Err(error) => return Err(error.into()),
        };
        let Some(before) = trim_point(&chunks, limits, clock::unix_ms()) else {
            return Ok(0);
        };
        storage.submit(Mutation::Trim { id, before }).await?;
        if let Some(entry) = self
            .shared
            .registry
            .get(path)
            .filter(|entry| entry.id() == id)
        {
            entry.advance_head(before);
        }
        let bytes = before - chunks[0].start;
        BytesTrimmed { bytes }.emit();
        tracing::debug!(path, head = before, bytes, "retention trimmed a stream");
        Ok(bytes)
    }

    /// Starts a background task that enforces `retention` every `interval`
    /// (at least 100 ms); it ends when the engine is dropped. Nothing starts
    /// when no limit is set.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn_retention(&self, interval: Duration, retention: RetentionConfig) {
        if !retention.is_on() {
            return;
        }
        let retention = Arc::new(retention);
        self.spawn_every(interval, move |engine| {
            let retention = Arc::clone(&retention);
            async move {
                if let Err(error) = engine.enforce_retention(&retention).await {
                    tracing::warn!(%error, "the retention sweep failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::testing::{append, create, keep_bytes, plain, trimmed_unheard};
    use crate::engine::{Access, EngineLimits};
    use crate::protocol::offset::{Offset, ReadFrom};
    use crate::storage::acid::AcidOptions;
    use crate::storage::{AcidStorage, FileOptions, FileStorage, InMemoryStorage, Storage};

    fn chunk(start: u64, end: u64, last_write_ms: i64) -> ChunkInfo {
        ChunkInfo {
            start,
            end,
            last_write_ms,
        }
    }

    fn limits(max_age_secs: u64, max_bytes: u64) -> RetentionLimits {
        RetentionLimits {
            max_age_secs,
            max_bytes,
        }
    }

    #[test]
    fn whole_chunks_go_by_age_or_size_but_never_the_newest() {
        let chunks = [
            chunk(0, 10, 1_000),
            chunk(10, 20, 2_000),
            chunk(20, 30, 3_000),
        ];
        // Newer than a second each at 1.5 s; then the oldest first.
        assert_eq!(trim_point(&chunks, limits(1, 0), 1_500), None);
        assert_eq!(trim_point(&chunks, limits(1, 0), 3_100), Some(20));
        assert_eq!(trim_point(&chunks, limits(1, 0), 2_500), Some(10));
        // Everything is old, but the chunk at the tail stays.
        assert_eq!(trim_point(&chunks, limits(1, 0), 99_000), Some(20));
        // At most 15 bytes: keeping [10, 30) would be 20, so keep [20, 30).
        assert_eq!(trim_point(&chunks, limits(0, 15), 0), Some(20));
        assert_eq!(trim_point(&chunks, limits(0, 20), 0), Some(10));
        assert_eq!(trim_point(&chunks, limits(0, 30), 0), None);
        // The stricter of the two wins.
        assert_eq!(trim_point(&chunks, limits(1, 15), 2_500), Some(20));
        assert_eq!(trim_point(&chunks, limits(5, 20), 99_000), Some(20));
        assert_eq!(trim_point(&[], limits(1, 1), 0), None);
        assert_eq!(trim_point(&chunks[..1], limits(0, 1), 0), None);
    }

    const CHUNK: u64 = 4096;
    static BLOCK: [u8; 4096] = [b'x'; 4096];

    /// A read from the start of a stream of three one-record chunks, the
    /// first two trimmed, gets the third; a read of the first is gone.
    async fn reads_start_at_the_third_chunk(engine: &Engine, entry: &Arc<StreamEntry>) {
        let read = engine.read(entry, ReadFrom::Start).await.expect("read");
        assert_eq!((read.start, read.next), (2 * CHUNK, 3 * CHUNK));
        let before = engine.read(entry, ReadFrom::At(Offset(CHUNK))).await;
        assert!(
            matches!(
                before,
                Err(EngineError::Storage(StorageError::Trimmed { head, .. })) if head == 2 * CHUNK
            ),
            "{before:?}"
        );
    }

    /// Three one-record chunks in `/r/s` and in `/keep`; a rule for `/r/`
    /// keeps one chunk's worth. Reopened, for a backend that persists.
    async fn trims_and_keeps_the_head(open: impl Fn(&Path) -> Arc<dyn Storage>, persistent: bool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::new(open(dir.path()), EngineLimits::default());
        for path in ["/r/s", "/keep"] {
            create(&engine, plain(path)).await;
            for _ in 0..3 {
                append(&engine, path, &BLOCK).await;
            }
        }
        let retention = keep_bytes("/r/", CHUNK);
        assert_eq!(
            engine.enforce_retention(&retention).await.expect("trim"),
            2 * CHUNK
        );
        // Nothing more to drop: the chunk at the tail stays.
        assert_eq!(engine.enforce_retention(&retention).await.expect("trim"), 0);
        let check = |engine: Engine| async move {
            let entry = engine.lookup("/r/s", Access::Peek).expect("live");
            assert_eq!(
                (entry.head(), entry.first_position()),
                (2 * CHUNK, 2 * CHUNK)
            );
            reads_start_at_the_third_chunk(&engine, &entry).await;
            let kept = engine.lookup("/keep", Access::Peek).expect("live");
            assert_eq!(kept.first_position(), 0);
            let all = engine.read(&kept, ReadFrom::Start).await.expect("read");
            assert_eq!(all.start, 0);
            let own = engine
                .read_own(kept.id(), 0, 3 * CHUNK, usize::MAX)
                .await
                .expect("read");
            assert_eq!(own.end, 3 * CHUNK);
        };
        check(engine).await;
        if persistent {
            check(Engine::new(open(dir.path()), EngineLimits::default())).await;
        }
    }

    #[tokio::test]
    async fn memory_streams_are_trimmed_to_their_rule() {
        trims_and_keeps_the_head(
            |_| Arc::new(InMemoryStorage::with_chunk_bytes(u64::MAX, CHUNK)),
            false,
        )
        .await;
    }

    fn file(dir: &Path, durable: bool) -> Arc<dyn Storage> {
        let options = FileOptions {
            durable,
            chunk_bytes: CHUNK,
            ..FileOptions::default()
        };
        Arc::new(FileStorage::open(dir, options).expect("open"))
    }

    #[tokio::test]
    async fn file_durable_streams_are_trimmed_and_stay_trimmed() {
        trims_and_keeps_the_head(|dir| file(dir, true), true).await;
    }

    #[tokio::test]
    async fn file_fast_streams_are_trimmed_and_stay_trimmed() {
        trims_and_keeps_the_head(|dir| file(dir, false), true).await;
    }

    #[tokio::test]
    async fn acid_streams_are_trimmed_and_stay_trimmed() {
        trims_and_keeps_the_head(
            |dir| {
                let options = AcidOptions {
                    chunk_bytes: CHUNK,
                    ..AcidOptions::default()
                };
                Arc::new(AcidStorage::open_with(dir, options).expect("open"))
            },
            true,
        )
        .await;
    }

    /// A trim the store committed before retention heard back, so the
    /// engine's head is still the old one (after a restart, the first sweep
    /// races the first reads): a read from the start begins at the store's
    /// head, and the engine's head follows; an offset before it is gone.
    #[tokio::test]
    async fn a_read_from_the_start_follows_a_trim_not_yet_acknowledged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stores: [Arc<dyn Storage>; 2] = [
            Arc::new(InMemoryStorage::with_chunk_bytes(u64::MAX, CHUNK)),
            file(dir.path(), true),
        ];
        for storage in stores {
            let (engine, entry) = trimmed_unheard(storage, "/r/s", &BLOCK).await;
            reads_start_at_the_third_chunk(&engine, &entry).await;
            assert_eq!(entry.first_position(), 2 * CHUNK);
        }
    }
}
