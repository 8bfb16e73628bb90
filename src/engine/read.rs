//! Reads of committed data: from the position the client asked for, up to
//! a committed tail, through the stream's fork sources, in chunks of at
//! most `max_read_bytes`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::Engine;
use super::entry::{Signal, StreamEntry};
use super::error::EngineError;
use super::request::ReadResult;
use crate::protocol::offset::ReadFrom;
use crate::storage::{ReadChunk, StorageError, StreamId};

/// The start position of a read for the committed tail, of a stream whose
/// data starts at `first` ([`StreamEntry::first_position`]).
pub fn resolve_start(from: ReadFrom, first: u64, tail: u64) -> u64 {
    match from {
        ReadFrom::Start => first.min(tail),
        ReadFrom::Now | ReadFrom::Beyond => tail,
        ReadFrom::At(offset) => offset.position().min(tail),
    }
}

type ChainRead<'a> = Pin<Box<dyn Future<Output = Result<ReadChunk, EngineError>> + Send + 'a>>;

impl Engine {
    /// Reads committed data from `from` as the client asked.
    ///
    /// # Errors
    /// [`EngineError::OffsetNotAtBoundary`] for a JSON offset inside a
    /// message, or a storage failure.
    pub async fn read(
        &self,
        entry: &Arc<StreamEntry>,
        from: ReadFrom,
    ) -> Result<ReadResult, EngineError> {
        let snapshot = entry.snapshot();
        let start = resolve_start(from, entry.first_position(), snapshot.tail);
        self.read_resolved(entry, from, start, snapshot).await
    }

    /// Reads committed data from `start`, which `from` resolved to
    /// ([`resolve_start`]) when the reader began, up to `snapshot`'s tail:
    /// what the plain read and the live reads (which resolve their start
    /// once, then wait) share.
    ///
    /// The store commits a trim a moment before retention hears back and
    /// moves the stream's head, so a start resolved from the old head may
    /// already be gone: a read from the stream's start then goes on from
    /// the store's head; an explicit offset before it stays
    /// [`StorageError::Trimmed`].
    ///
    /// # Errors
    /// As [`Engine::read`].
    pub async fn read_resolved(
        &self,
        entry: &Arc<StreamEntry>,
        from: ReadFrom,
        start: u64,
        snapshot: Signal,
    ) -> Result<ReadResult, EngineError> {
        match self.read_at(entry, start, snapshot).await {
            // `read_at` moved the engine's head to the store's.
            Err(EngineError::Storage(StorageError::Trimmed { .. })) if from == ReadFrom::Start => {
                let start = resolve_start(from, entry.first_position(), snapshot.tail);
                self.read_at(entry, start, snapshot).await
            }
            other => other,
        }
    }

    /// Reads committed data from a resolved position, given a snapshot.
    async fn read_at(
        &self,
        entry: &Arc<StreamEntry>,
        start: u64,
        snapshot: Signal,
    ) -> Result<ReadResult, EngineError> {
        let start = start.min(snapshot.tail);
        let chunk = match self
            .read_chain(
                entry,
                start,
                snapshot.tail,
                self.shared.limits.max_read_bytes,
            )
            .await
        {
            Ok(chunk) => chunk,
            Err(EngineError::Storage(StorageError::Trimmed { id, head })) => {
                // The store's head is the stream's: a trim is visible to
                // reads once committed, a moment before its caller learns
                // that it was.
                if id == entry.id() {
                    entry.advance_head(head);
                }
                return Err(StorageError::Trimmed { id, head }.into());
            }
            Err(error) => return Err(error),
        };
        if chunk.starts_mid_record && entry.content_type().is_json() {
            return Err(EngineError::OffsetNotAtBoundary);
        }
        let next = chunk.end.max(start);
        let up_to_date = next >= snapshot.tail;
        Ok(ReadResult {
            start,
            records: chunk.records,
            next,
            up_to_date,
            closed: up_to_date && snapshot.closed,
        })
    }

    /// Reads committed records of stream instance `id` in `[from, until)`
    /// without fork resolution (for export).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn read_own(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<ReadChunk, EngineError> {
        Ok(self.shared.storage.read(id, from, until, max_bytes).await?)
    }

    /// Reads `[from, until)` of a stream, through its fork sources: the
    /// part before the stream's own data comes from its source.
    pub(super) fn read_chain<'a>(
        &'a self,
        entry: &'a Arc<StreamEntry>,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> ChainRead<'a> {
        Box::pin(async move {
            let mut out = ReadChunk {
                records: Vec::new(),
                end: from,
                starts_mid_record: false,
            };
            let base = entry.base();
            let mut taken = 0usize;
            if let Some(source) = &entry.source
                && from < base
            {
                let upto = until.min(base);
                out = self.read_chain(source, from, upto, max_bytes).await?;
                taken = out.records.iter().map(Bytes::len).sum();
                if out.end < upto || taken >= max_bytes {
                    return Ok(out);
                }
            }
            let own_from = out.end.max(base);
            if own_from < until {
                let own = self
                    .shared
                    .storage
                    .read(entry.id(), own_from, until, max_bytes - taken)
                    .await?;
                if out.records.is_empty() {
                    out.starts_mid_record = own.starts_mid_record;
                }
                out.records.extend(own.records);
                out.end = own.end.max(out.end);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::engine::testing::{append, create, engine_with, fork, plain};
    use crate::engine::{Access, EngineLimits};
    use crate::protocol::offset::Offset;

    fn concat(result: &ReadResult) -> Vec<u8> {
        result.records.concat()
    }

    #[tokio::test]
    async fn reads_resolve_their_start_and_report_the_tail() {
        let engine = engine_with(EngineLimits::default());
        create(&engine, plain("/s")).await;
        append(&engine, "/s", b"hello ").await;
        append(&engine, "/s", b"world").await;
        let entry = engine.lookup("/s", Access::Touch).expect("live");
        let all = engine.read(&entry, ReadFrom::Start).await.expect("read");
        assert_eq!(concat(&all), b"hello world");
        assert_eq!((all.start, all.next, all.up_to_date), (0, 11, true));
        let mid = engine
            .read(&entry, ReadFrom::At(Offset(3)))
            .await
            .expect("read");
        assert_eq!(concat(&mid), b"lo world");
        let now = engine.read(&entry, ReadFrom::Now).await.expect("read");
        assert!(now.is_empty() && now.up_to_date && now.next == 11);
        assert_eq!(resolve_start(ReadFrom::Beyond, 0, 11), 11);
        assert_eq!(resolve_start(ReadFrom::Start, 4, 11), 4);
        assert_eq!(resolve_start(ReadFrom::At(Offset(99)), 0, 11), 11);
    }

    #[tokio::test]
    async fn reads_are_chunked_by_the_limit_and_resume_where_they_stopped() {
        let engine = engine_with(EngineLimits {
            max_read_bytes: 4,
            ..EngineLimits::default()
        });
        create(&engine, plain("/s")).await;
        for record in [b"aa", b"bb", b"cc"] {
            append(&engine, "/s", record).await;
        }
        let entry = engine.lookup("/s", Access::Touch).expect("live");
        let first = engine.read(&entry, ReadFrom::Start).await.expect("read");
        assert_eq!(concat(&first), b"aabb");
        assert!(!first.up_to_date);
        let rest = engine
            .read(&entry, ReadFrom::At(Offset(first.next)))
            .await
            .expect("read");
        assert_eq!(concat(&rest), b"cc");
        assert!(rest.up_to_date);
    }

    #[tokio::test]
    async fn a_fork_reads_its_source_up_to_the_fork_point_then_its_own_data() {
        let engine = engine_with(EngineLimits::default());
        create(&engine, plain("/src")).await;
        append(&engine, "/src", b"abc").await;
        create(&engine, fork("/f", "/src")).await;
        append(&engine, "/src", b"XYZ").await;
        append(&engine, "/f", b"def").await;
        let entry = engine.lookup("/f", Access::Touch).expect("live");
        let read = engine.read(&entry, ReadFrom::Start).await.expect("read");
        assert_eq!(concat(&read), b"abcdef");
        let own = engine
            .read_own(entry.id(), 3, 6, usize::MAX)
            .await
            .expect("own");
        assert_eq!(own.records.concat(), b"def");
    }

    #[tokio::test]
    async fn a_json_offset_inside_a_message_is_refused() {
        let engine = engine_with(EngineLimits::default());
        let mut json = plain("/j");
        json.content_type = Some(crate::protocol::header::ContentType::new(
            "application/json",
        ));
        json.body = Bytes::from_static(b"[1,22]");
        create(&engine, json).await;
        let entry = engine.lookup("/j", Access::Touch).expect("live");
        assert!(matches!(
            engine.read(&entry, ReadFrom::At(Offset(3))).await,
            Err(EngineError::OffsetNotAtBoundary)
        ));
        let whole = engine.read(&entry, ReadFrom::Start).await.expect("read");
        assert_eq!(concat(&whole), b"1,22,");
    }
}
