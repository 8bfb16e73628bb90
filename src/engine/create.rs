//! `PUT`: creating a stream, forking one, or confirming an identical one
//! (spec §4.1 idempotent create).

use std::sync::Arc;

use bytes::Bytes;

use super::Engine;
use super::entry::{Status, StreamEntry};
use super::error::EngineError;
use super::request::{Access, CreateRequest, Created, ForkRequest};
use super::rules::{self, CreateSettings, ForkIntent, SourceFacts, WriterView};
use super::state::WriterState;
use crate::clock;
use crate::metrics::event::StreamCreated;
use crate::storage::{ForkLink, Mutation, StorageError, StreamSpec};

/// A fork resolved against its source.
struct ResolvedFork {
    source: Arc<StreamEntry>,
    /// The data copied from the source's next append
    /// (`Stream-Fork-Sub-Offset`).
    prefix: Bytes,
    link: ForkLink,
    offset_requested: bool,
}

impl ResolvedFork {
    fn intent(&self) -> ForkIntent<'_> {
        ForkIntent {
            link: &self.link,
            offset_requested: self.offset_requested,
        }
    }
}

impl Engine {
    /// `PUT`: creates a stream or confirms an identical one.
    ///
    /// # Errors
    /// See [`EngineError`].
    pub async fn create(&self, request: CreateRequest) -> Result<Created, EngineError> {
        let Some(store) = self.shared_store() else {
            return self.create_once(request).await;
        };
        match self.create_once(request.clone()).await {
            // Another server created a stream at the path between this
            // server's look at the store and its commit (refused by the
            // path's uniqueness): answer as for a stream found there.
            Err(EngineError::Storage(error)) => match store.find(&request.path).await {
                Ok(Some(_)) => self.create_once(request).await,
                _ => Err(error.into()),
            },
            outcome => outcome,
        }
    }

    async fn create_once(&self, request: CreateRequest) -> Result<Created, EngineError> {
        // With a shared store, judge against what is stored now.
        self.refresh(&request.path).await?;
        if let Some(fork) = &request.fork {
            self.refresh(&fork.source_path).await?;
        }
        // Resolve the fork source and its materialised prefix first: that may
        // read storage, which must not happen under the map lock.
        let fork = match &request.fork {
            Some(fork) => Some(self.resolve_fork(fork).await?),
            None => None,
        };
        let source = fork.as_ref().map(|fork| SourceFacts {
            content_type: fork.source.content_type(),
            ttl_secs: fork.source.ttl_secs(),
            expires_at: fork.source.expires_at(),
        });
        let settings = rules::create_settings(&request, source)?;
        let initial = rules::initial_payload(&settings.content_type, &request.body)?;

        if let Some(existing) = self.shared.registry.get(&request.path) {
            match self.lookup_refreshed(&request.path, Access::Touch) {
                Ok(entry) if Arc::ptr_eq(&entry, &existing) => {
                    wait_created(&entry).await?;
                    return confirm_existing(&entry, &request, &settings, fork.as_ref());
                }
                Ok(_) => {
                    return Err(EngineError::ConfigMismatch(
                        "the stream changed concurrently",
                    ));
                }
                Err(EngineError::Gone) => return Err(EngineError::PathOccupied),
                Err(EngineError::NotFound) => {}
                Err(other) => return Err(other),
            }
        }
        self.create_new(request, settings, initial, fork).await
    }

    async fn create_new(
        &self,
        request: CreateRequest,
        settings: CreateSettings,
        initial: Bytes,
        fork: Option<ResolvedFork>,
    ) -> Result<Created, EngineError> {
        let (data, base, link, source) = match fork {
            Some(fork) => {
                let mut data = Vec::with_capacity(fork.prefix.len() + initial.len());
                data.extend_from_slice(&fork.prefix);
                data.extend_from_slice(&initial);
                (
                    Bytes::from(data),
                    fork.link.offset,
                    Some(fork.link),
                    Some(fork.source),
                )
            }
            None => (initial, 0, None, None),
        };
        rules::check_initial_size(data.len(), self.shared.limits.max_stream_bytes)?;
        let spec = StreamSpec {
            id: match self.shared_store() {
                Some(store) => store.allocate_id(),
                None => self.shared.registry.allocate_id(),
            },
            path: request.path.clone(),
            content_type: settings.content_type.raw.to_string(),
            ttl_secs: settings.ttl_secs,
            expires_at_ms: settings.expires_at_ms(),
            created_at_ms: clock::unix_ms(),
            fork: link,
            base,
        };
        let state = WriterState::new(base, None, [], None);
        let entry = StreamEntry::new(spec.clone(), source.clone(), state, Status::Live);
        let tail = base + data.len() as u64;
        let close = request.closed.then_some(None);
        let (op, ack) = self.shared.registry.insert(&entry, |inner| {
            let op = inner.ledger.push(tail, close, None, None);
            let ack = self.shared.storage.submit(Mutation::Create {
                spec,
                data,
                closed: request.closed,
            });
            (op, ack)
        })?;
        match ack.await {
            Ok(()) => {
                let mut inner = entry.lock();
                inner.ledger.acknowledge(op);
                inner.created = true;
                entry.publish(&inner);
                self.shared
                    .registry
                    .committed(&inner, entry.own_bytes(&inner));
                drop(inner);
                // Wake requests waiting for the creation even when the
                // published state did not change (an empty, open stream).
                entry.nudge();
                StreamCreated {
                    closed: request.closed,
                }
                .emit();
                self.observe(&entry, tail);
                Ok(Created {
                    entry,
                    new: true,
                    tail,
                    closed: request.closed,
                })
            }
            Err(error) => {
                self.shared.registry.abandon(&entry, op);
                if let Some(source) = &source {
                    self.release_fork(source);
                }
                Err(error.into())
            }
        }
    }

    async fn resolve_fork(&self, request: &ForkRequest) -> Result<ResolvedFork, EngineError> {
        let source = match self.lookup_refreshed(&request.source_path, Access::Peek) {
            Ok(source) => source,
            Err(EngineError::Gone) => return Err(EngineError::ForkSourceGone),
            Err(EngineError::NotFound) => return Err(EngineError::ForkSourceNotFound),
            Err(other) => return Err(other),
        };
        let tail = source.snapshot().tail;
        let offset = rules::fork_offset(request.offset, tail)?;
        let json = source.content_type().is_json();
        let mut prefix = Bytes::new();
        if request.sub_offset > 0 {
            let chunk = self.read_chain(&source, offset, tail, 1).await?;
            let record = chunk.records.first().cloned().unwrap_or_default();
            let cut = rules::fork_cut(&record, chunk.starts_mid_record, json, request.sub_offset)?;
            prefix = Bytes::copy_from_slice(&record[..cut]);
        } else if json && offset < tail {
            let chunk = self.read_chain(&source, offset, tail, 1).await?;
            rules::check_message_boundary(chunk.starts_mid_record)?;
        }
        let link = ForkLink {
            source: source.id(),
            source_path: request.source_path.clone(),
            offset,
            sub_offset: request.sub_offset,
        };
        Ok(ResolvedFork {
            source,
            prefix,
            link,
            offset_requested: request.offset.is_some(),
        })
    }
}

/// Waits until the creation of `entry` is committed, so a `PUT` that finds
/// the stream does not confirm it before it is durable.
///
/// # Errors
/// [`StorageError::Unavailable`] when the creation failed or the stream went
/// away meanwhile; the client may retry.
pub(super) async fn wait_created(entry: &Arc<StreamEntry>) -> Result<(), EngineError> {
    let mut signal = entry.subscribe();
    loop {
        {
            let inner = entry.lock();
            if inner.status != Status::Live {
                return Err(StorageError::Unavailable(
                    "the concurrent creation of this stream did not complete".into(),
                )
                .into());
            }
            if inner.created {
                return Ok(());
            }
        }
        if signal.changed().await.is_err() {
            return Err(EngineError::NotFound);
        }
    }
}

/// Answers a `PUT` that found a stream at its path: `200` when it asks for
/// what exists, `409` otherwise.
fn confirm_existing(
    entry: &Arc<StreamEntry>,
    request: &CreateRequest,
    settings: &CreateSettings,
    fork: Option<&ResolvedFork>,
) -> Result<Created, EngineError> {
    let inner = entry.lock();
    let closed = inner.ledger.closed().is_some();
    rules::check_same_create(
        &entry.spec(),
        closed,
        settings,
        fork.map(ResolvedFork::intent),
        request.closed,
    )?;
    Ok(Created {
        entry: entry.clone(),
        new: false,
        tail: inner.ledger.tail(),
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineLimits;
    use crate::engine::testing::{append, create, engine, engine_with, fork, plain};
    use crate::protocol::header::ContentType;
    use crate::protocol::offset::Offset;
    use crate::protocol::offset::ReadFrom;

    #[tokio::test]
    async fn a_create_is_new_once_then_confirmed_while_it_matches() {
        let engine = engine();
        let created = engine.create(plain("/s")).await.expect("created");
        assert!(created.new);
        assert_eq!((created.tail, created.closed), (0, false));
        let again = engine.create(plain("/s")).await.expect("confirmed");
        assert!(!again.new);
        assert!(Arc::ptr_eq(&again.entry, &created.entry));
        let mut other = plain("/s");
        other.content_type = Some(ContentType::new("application/json"));
        assert!(matches!(
            engine.create(other).await,
            Err(EngineError::ConfigMismatch("content type differs"))
        ));
        let mut closed = plain("/s");
        closed.closed = true;
        assert!(matches!(
            engine.create(closed).await,
            Err(EngineError::ConfigMismatch("closed state differs"))
        ));
    }

    #[tokio::test]
    async fn initial_data_and_a_closed_create_are_stored_together() {
        let engine = engine();
        let mut request = plain("/s");
        request.body = Bytes::from_static(b"hello");
        request.closed = true;
        let created = engine.create(request).await.expect("created");
        assert_eq!((created.tail, created.closed), (5, true));
        let snapshot = created.entry.snapshot();
        assert_eq!((snapshot.tail, snapshot.closed), (5, true));
        let limited = engine_with(EngineLimits {
            max_stream_bytes: 4,
            ..EngineLimits::default()
        });
        let mut big = plain("/big");
        big.body = Bytes::from_static(b"hello");
        assert!(matches!(
            limited.create(big).await,
            Err(EngineError::StreamTooLarge { limit: 4 })
        ));
        assert!(!limited.contains("/big"));
    }

    #[tokio::test]
    async fn a_fork_starts_at_its_offset_with_the_sub_offset_prefix() {
        let engine = engine();
        create(&engine, plain("/src")).await;
        append(&engine, "/src", b"abc").await;
        append(&engine, "/src", b"defg").await;
        let mut request = fork("/f", "/src");
        if let Some(fork) = request.fork.as_mut() {
            fork.offset = Some(ReadFrom::At(Offset(3)));
            fork.sub_offset = 2;
        }
        let created = engine.create(request.clone()).await.expect("fork");
        assert_eq!(created.tail, 5);
        assert_eq!(created.entry.content_type().raw, "text/plain");
        let read = engine
            .read(&created.entry, ReadFrom::Start)
            .await
            .expect("read");
        assert_eq!(read.records.concat(), b"abcde");
        // The same fork request is confirmed; another offset is not.
        assert!(!engine.create(request.clone()).await.expect("same").new);
        if let Some(fork) = request.fork.as_mut() {
            fork.offset = Some(ReadFrom::At(Offset(0)));
        }
        assert!(matches!(
            engine.create(request).await,
            Err(EngineError::ConfigMismatch(_))
        ));
    }

    #[tokio::test]
    async fn forks_need_a_live_source_and_a_position_inside_it() {
        let engine = engine();
        assert!(matches!(
            engine.create(fork("/f", "/missing")).await,
            Err(EngineError::ForkSourceNotFound)
        ));
        create(&engine, plain("/src")).await;
        let mut beyond = fork("/f", "/src");
        if let Some(fork) = beyond.fork.as_mut() {
            fork.sub_offset = 1;
        }
        assert!(matches!(
            engine.create(beyond).await,
            Err(EngineError::InvalidForkPosition(_))
        ));
        create(&engine, fork("/keep", "/src")).await;
        engine.delete("/src").await.expect("soft-deleted");
        assert!(matches!(
            engine.create(fork("/f", "/src")).await,
            Err(EngineError::ForkSourceGone)
        ));
        // A soft-deleted stream still occupies its path.
        assert!(matches!(
            engine.create(plain("/src")).await,
            Err(EngineError::PathOccupied)
        ));
    }

    #[tokio::test]
    async fn a_deleted_path_can_be_created_again_as_a_new_instance() {
        let engine = engine();
        let first = engine.create(plain("/s")).await.expect("created");
        engine.delete("/s").await.expect("deleted");
        let second = engine.create(plain("/s")).await.expect("created");
        assert!(second.new);
        assert_ne!(first.entry.id(), second.entry.id());
    }
}
