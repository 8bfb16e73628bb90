//! Streams in and out whole, with their offsets, writer state and fork
//! lineage: the committed state of every stream (for export, and for
//! rebuilding the engine from what a backend recovered), and imports.

use std::sync::Arc;

use bytes::Bytes;

use super::Engine;
use super::entry::{Status, StreamEntry};
use super::error::EngineError;
use super::rules::WriterView;
use crate::protocol::producer::ProducerState;
use crate::storage::{Append, Mutation, RecoveredStream, StorageError};

impl Engine {
    /// Rebuilds entries from recovered streams; sources before forks.
    pub(super) fn restore(&self, mut recovered: Vec<RecoveredStream>) {
        recovered.sort_by_key(|s| s.spec.id);
        let mut by_id = std::collections::HashMap::new();
        for stream in recovered {
            let source = stream
                .spec
                .fork
                .as_ref()
                .and_then(|link| by_id.get(&link.source).cloned());
            let entry = StreamEntry::committed(stream, source);
            by_id.insert(entry.id(), entry.clone());
            self.shared.registry.adopt(entry);
        }
    }

    /// The committed state of every stream, sources before their forks
    /// (for export).
    pub fn snapshot_streams(&self) -> Vec<RecoveredStream> {
        let mut entries = self.shared.registry.entries();
        entries.sort_by_key(|entry| entry.id());
        entries
            .into_iter()
            .filter_map(|entry| {
                let inner = entry.lock();
                if inner.status == Status::Removed {
                    return None;
                }
                let state = &inner.ledger.committed;
                let mut producers: Vec<(String, ProducerState)> =
                    state.producers().map(|(id, s)| (id.clone(), *s)).collect();
                producers.sort();
                Some(RecoveredStream {
                    spec: entry.spec(),
                    head: entry.head(),
                    tail: state.tail,
                    closed: state.closing().clone(),
                    producers,
                    stream_seq: state.stream_seq().map(str::to_owned),
                    soft_deleted: inner.status == Status::SoftDeleted,
                })
            })
            .collect()
    }

    /// Starts importing a stream with the given state: its records follow
    /// through [`Import::append`], and [`Import::finish`] makes it visible.
    /// Offsets, producer state and fork lineage are preserved; the fork source
    /// must already be present (sources are exported before their forks).
    /// A stream retention trimmed (`head` past its base) is recreated at
    /// its head: its records start there and reads before it answer as
    /// trimmed.
    ///
    /// # Errors
    /// When the path is taken, the fork source is missing, or storage fails.
    pub async fn begin_import(&self, mut stream: RecoveredStream) -> Result<Import, EngineError> {
        let registry = &self.shared.registry;
        if registry.contains(&stream.spec.path) {
            return Err(EngineError::ConfigMismatch(
                "a stream already exists at this path",
            ));
        }
        let source = match &mut stream.spec.fork {
            Some(link) => {
                let source = registry
                    .get(&link.source_path)
                    .ok_or(EngineError::ForkSourceNotFound)?;
                link.source = source.id();
                Some(source)
            }
            None => None,
        };
        stream.spec.id = registry.allocate_id();
        self.shared
            .storage
            .submit(Mutation::Create {
                spec: stream.spec.clone(),
                data: Bytes::new(),
                closed: false,
            })
            .await?;
        let head = stream.head.max(stream.spec.base);
        if head > stream.spec.base {
            // A trim past the empty stream's tail moves it to the head.
            let trimmed = self
                .shared
                .storage
                .submit(Mutation::Trim {
                    id: stream.spec.id,
                    before: head,
                })
                .await;
            if let Err(error) = trimmed {
                drop(
                    self.shared
                        .storage
                        .submit(Mutation::Remove { id: stream.spec.id })
                        .await,
                );
                return Err(error.into());
            }
        }
        let tail = head;
        Ok(Import {
            engine: self.clone(),
            stream,
            source,
            tail,
        })
    }

    /// Removes the stream at `path`, whatever its state (import `replace`).
    ///
    /// # Errors
    /// A storage failure, or the stream has forks.
    pub async fn remove_for_import(&self, path: &str) -> Result<(), EngineError> {
        if let Some(entry) = self.shared.registry.get(path) {
            if entry.lock().forks > 0 {
                return Err(EngineError::ConfigMismatch(
                    "the existing stream has forks and cannot be replaced",
                ));
            }
            if let (_, Some(written)) = self.delete_entry(&entry) {
                written.await?;
            }
        }
        Ok(())
    }
}

/// A stream being imported; see [`Engine::begin_import`].
pub struct Import {
    engine: Engine,
    stream: RecoveredStream,
    source: Option<Arc<StreamEntry>>,
    tail: u64,
}

impl Import {
    /// A data-less append of the stream's writer state.
    fn state_append(&self) -> Append {
        Append {
            id: self.stream.spec.id,
            start: self.tail,
            data: Bytes::new(),
            producer: None,
            stream_seq: None,
            close: None,
        }
    }

    /// Appends the next record.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn append(&mut self, record: Bytes) -> Result<(), EngineError> {
        let len = record.len() as u64;
        let append = Append {
            data: record,
            ..self.state_append()
        };
        self.engine
            .shared
            .storage
            .submit(Mutation::Append(append))
            .await?;
        self.tail += len;
        Ok(())
    }

    /// Where the next record starts.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Abandons the import, removing what was stored.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn abort(self) -> Result<(), EngineError> {
        self.engine
            .shared
            .storage
            .submit(Mutation::Remove {
                id: self.stream.spec.id,
            })
            .await?;
        Ok(())
    }

    /// Stores the writer state and makes the stream visible.
    ///
    /// # Errors
    /// When the records do not end at the declared tail, or storage fails.
    pub async fn finish(self) -> Result<(), EngineError> {
        let storage = &self.engine.shared.storage;
        let id = self.stream.spec.id;
        if self.tail != self.stream.tail {
            drop(storage.submit(Mutation::Remove { id }).await);
            return Err(StorageError::Corrupt(format!(
                "imported records of {} end at {} but the stream declares {}",
                self.stream.spec.path, self.tail, self.stream.tail
            ))
            .into());
        }
        for (producer, state) in &self.stream.producers {
            let append = Append {
                producer: Some((producer.clone(), *state)),
                ..self.state_append()
            };
            storage.submit(Mutation::Append(append)).await?;
        }
        if self.stream.stream_seq.is_some() || self.stream.closed.is_some() {
            let append = Append {
                stream_seq: self.stream.stream_seq.clone(),
                close: self.stream.closed.clone(),
                ..self.state_append()
            };
            storage.submit(Mutation::Append(append)).await?;
        }
        if self.stream.soft_deleted {
            storage.submit(Mutation::SoftDelete { id }).await?;
        }
        let entry = StreamEntry::committed(self.stream, self.source);
        self.engine.shared.registry.adopt(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{append, create, engine, fork, plain, produced};
    use crate::engine::{Access, EngineLimits};
    use crate::protocol::offset::ReadFrom;
    use crate::storage::InMemoryStorage;

    #[tokio::test]
    async fn a_snapshot_imports_into_another_engine_unchanged() {
        let from = engine();
        create(&from, plain("/src")).await;
        append(&from, "/src", b"abc").await;
        let mut closing = produced(b"d", 0, 0);
        closing.close = true;
        closing.stream_seq = Some("7".into());
        from.append("/src", closing).await.expect("closed");
        create(&from, fork("/f", "/src")).await;
        append(&from, "/f", b"ef").await;
        from.delete("/src").await.expect("soft");

        let to = Engine::new(
            Arc::new(InMemoryStorage::default()),
            EngineLimits::default(),
        );
        for stream in from.snapshot_streams() {
            let entry = from.shared.registry.get(&stream.spec.path).expect("entry");
            let own = from
                .read_own(entry.id(), stream.spec.base, stream.tail, usize::MAX)
                .await
                .expect("read");
            let mut import = to.begin_import(stream).await.expect("begin");
            for record in own.records {
                import.append(record).await.expect("record");
            }
            import.finish().await.expect("finish");
        }
        let strip = |streams: Vec<RecoveredStream>| {
            streams
                .into_iter()
                .map(|s| {
                    (
                        s.spec.path,
                        s.tail,
                        s.closed,
                        s.producers,
                        s.stream_seq,
                        s.soft_deleted,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(to.snapshot_streams()), strip(from.snapshot_streams()));
        let entry = to.lookup("/f", Access::Peek).expect("fork");
        let read = to.read(&entry, ReadFrom::Start).await.expect("read");
        assert_eq!(read.records.concat(), b"abcdef");
        assert!(matches!(
            to.lookup("/src", Access::Peek),
            Err(EngineError::Gone)
        ));
    }

    #[tokio::test]
    async fn an_import_that_ends_short_is_refused_and_leaves_nothing() {
        let exported = engine();
        create(&exported, plain("/s")).await;
        append(&exported, "/s", b"abc").await;
        let mut stream = exported.snapshot_streams().remove(0);
        stream.tail = 5;
        let engine = engine();
        let mut import = engine.begin_import(stream.clone()).await.expect("begin");
        import
            .append(Bytes::from_static(b"abc"))
            .await
            .expect("record");
        assert!(matches!(
            import.finish().await,
            Err(EngineError::Storage(StorageError::Corrupt(_)))
        ));
        assert!(!engine.contains("/s"));
        create(&engine, plain("/s")).await;
        assert!(matches!(
            engine.begin_import(stream).await,
            Err(EngineError::ConfigMismatch(_))
        ));
        engine.remove_for_import("/s").await.expect("removed");
        assert!(!engine.contains("/s"));
    }
}
