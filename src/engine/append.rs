//! `POST`: appending, closing, or both, with the producer and `Stream-Seq`
//! rules applied under the stream's lock ([`super::rules`]) and the write
//! pipelined into storage; duplicates are answered once what they confirm
//! is committed.

use std::sync::Arc;

use super::Engine;
use super::entry::StreamEntry;
use super::error::EngineError;
use super::request::{Access, AppendRequest, Appended};
use super::rules::{self, AppendPlan, Confirmation, Confirms, StreamFacts};
use crate::metrics::event::{
    AppendWritten, ProducerDuplicate, ProducerRejected, RejectReason, StreamClosed,
};
use crate::storage::{Mutation, StorageError, StorageFuture};

/// Most bytes of appends that may wait for storage at once.
pub(super) const MAX_IN_FLIGHT_WRITE_BYTES: usize = 64 << 20;

/// An append queued in storage: its outcome holds once `ack` resolves.
struct Queued {
    op: u64,
    ack: StorageFuture<()>,
    outcome: Appended,
    /// Payload bytes of the append.
    bytes: u64,
}

/// What planning an append under the stream lock led to.
enum Planned {
    Queued(Queued),
    /// Nothing to write (a duplicate); answer once it is confirmed.
    Duplicate(Confirms),
}

impl Engine {
    /// `POST`: appends, closes, or both.
    ///
    /// # Errors
    /// See [`EngineError`].
    pub async fn append(
        &self,
        path: &str,
        request: AppendRequest,
    ) -> Result<Appended, EngineError> {
        if let Some(store) = self.shared_store() {
            // Boxed: inline, the shared store's steps would add about
            // 1.6 KB to every local append's future (boxed per request).
            return Box::pin(self.append_shared(&*store, path, request)).await;
        }
        rules::check_append_request(&request)?;
        let entry = self.lookup(path, Access::Touch)?;
        let data = rules::append_payload(entry.content_type(), &request.body);

        // Back-pressure: writers wait here, not in memory, when storage is
        // slower than the offered load.
        let cost = data
            .as_ref()
            .map_or(0, |data| data.len())
            .clamp(1, MAX_IN_FLIGHT_WRITE_BYTES);
        let _permit = self
            .shared
            .write_budget
            .acquire_many(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
            .map_err(|_| StorageError::Unavailable("the server is shutting down".into()))?;
        let queued = match self
            .plan_append(&entry, &request, data)
            .inspect_err(count_rejection)?
        {
            Planned::Queued(queued) => queued,
            Planned::Duplicate(confirms) => {
                if request.producer.is_some() {
                    ProducerDuplicate.emit();
                }
                return confirm(&entry, &confirms).await;
            }
        };
        let result = queued.ack.await;
        let mut inner = entry.lock();
        match result {
            Ok(()) => {
                inner.ledger.acknowledge(queued.op);
                entry.publish(&inner);
                self.shared.registry.committed(&inner, queued.bytes);
                let tail = inner.ledger.committed.tail;
                drop(inner);
                self.observe(&entry, tail);
                AppendWritten {
                    bytes: queued.bytes,
                }
                .emit();
                if request.close {
                    StreamClosed.emit();
                }
                Ok(queued.outcome)
            }
            Err(error) => {
                inner.ledger.fail(queued.op);
                let created = inner.created;
                drop(inner);
                // Wake duplicates waiting on the failed write.
                entry.nudge();
                if !created && matches!(error, StorageError::UnknownStream(_)) {
                    // Queued behind a creation the store refused: the stream
                    // never existed.
                    return Err(EngineError::NotFound);
                }
                Err(error.into())
            }
        }
    }

    /// Applies the rules under the stream lock and, when the append
    /// writes, queues it in storage. Never awaits.
    fn plan_append(
        &self,
        entry: &Arc<StreamEntry>,
        request: &AppendRequest,
        data: Result<bytes::Bytes, crate::protocol::json::JsonError>,
    ) -> Result<Planned, EngineError> {
        let mut inner = entry.lock();
        let facts = StreamFacts {
            content_type: entry.content_type(),
            base: entry.base(),
            max_stream_bytes: self.shared.limits.max_stream_bytes,
        };
        let write = match rules::plan_append(&inner.ledger, facts, request, data)? {
            AppendPlan::Write(write) => write,
            AppendPlan::Duplicate(confirms) => return Ok(Planned::Duplicate(confirms)),
        };
        let outcome = write.outcome();
        let bytes = write.data.len() as u64;
        let op = inner.ledger.push(
            write.end(),
            write.close.clone(),
            write.producer.clone(),
            write.stream_seq.clone(),
        );
        let ack = self
            .shared
            .storage
            .submit(Mutation::Append(write.into_append(entry.id())));
        Ok(Planned::Queued(Queued {
            op,
            ack,
            outcome,
            bytes,
        }))
    }
}

/// Answers a request that writes nothing (a duplicate) once the state it
/// confirms is committed, from the committed state. While that state is
/// only pending it waits; if the pending write fails, so does this, and the
/// client's next retry writes it.
async fn confirm(entry: &Arc<StreamEntry>, confirms: &Confirms) -> Result<Appended, EngineError> {
    let mut signal = entry.subscribe();
    loop {
        let verdict = {
            let inner = entry.lock();
            rules::confirmation(confirms, &inner.ledger.committed, &inner.ledger)
        };
        match verdict {
            Confirmation::Confirmed(outcome) => return Ok(outcome),
            Confirmation::Lost => {
                return Err(StorageError::Unavailable(
                    "the original write of this retry failed".into(),
                )
                .into());
            }
            Confirmation::Pending => {}
        }
        // Every acknowledgement of a write changes the tail or the closed
        // flag, and every failure notifies: no wake-up is lost.
        if signal.changed().await.is_err() {
            return Err(EngineError::NotFound);
        }
    }
}

/// Counts a producer request the rules refused.
pub(super) fn count_rejection(error: &EngineError) {
    let reason = match error {
        EngineError::StaleEpoch { .. } => RejectReason::StaleEpoch,
        EngineError::SequenceGap { .. } => RejectReason::SequenceGap,
        EngineError::EpochMustStartAtZero => RejectReason::EpochSeq,
        _ => return,
    };
    ProducerRejected { reason }.emit();
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;
    use crate::engine::EngineLimits;
    use crate::engine::testing::{append, create, engine, plain, produced};
    use crate::protocol::header::ContentType;
    use crate::protocol::offset::ReadFrom;
    use crate::storage::fault::{Fault, FaultyStorage};
    use crate::storage::{InMemoryStorage, Storage};

    fn faulty() -> (Arc<FaultyStorage>, Engine) {
        let faults = FaultyStorage::new(Arc::new(InMemoryStorage::default()));
        let storage: Arc<dyn Storage> = faults.clone();
        (faults, Engine::new(storage, EngineLimits::default()))
    }

    #[tokio::test]
    async fn appends_move_the_tail_and_a_close_ends_the_stream() {
        let engine = engine();
        create(&engine, plain("/s")).await;
        assert_eq!(append(&engine, "/s", b"abc").await.tail, 3);
        let mut close = produced(b"", 0, 0);
        close.close = true;
        let closed = engine.append("/s", close.clone()).await.expect("closed");
        assert!(closed.closed && closed.wrote);
        // The closing producer's retry is confirmed, anything else refused.
        let retry = engine.append("/s", close).await.expect("duplicate");
        assert!(retry.closed && !retry.wrote);
        assert!(matches!(
            engine.append("/s", plain_append(b"x")).await,
            Err(EngineError::Closed { tail: 3 })
        ));
    }

    fn plain_append(body: &'static [u8]) -> AppendRequest {
        AppendRequest {
            content_type: Some(ContentType::new("text/plain")),
            body: Bytes::from_static(body),
            close: false,
            producer: None,
            stream_seq: None,
        }
    }

    #[tokio::test]
    async fn a_producer_retry_is_answered_without_writing() {
        let engine = engine();
        create(&engine, plain("/s")).await;
        let first = engine.append("/s", produced(b"a", 0, 0)).await.expect("a");
        assert!(first.wrote);
        let again = engine
            .append("/s", produced(b"a", 0, 0))
            .await
            .expect("dup");
        assert!(!again.wrote);
        assert_eq!((again.tail, again.producer), (1, first.producer));
        assert!(matches!(
            engine.append("/s", produced(b"c", 0, 2)).await,
            Err(EngineError::SequenceGap { .. })
        ));
        assert!(matches!(
            engine.append("/missing", produced(b"c", 0, 0)).await,
            Err(EngineError::NotFound)
        ));
    }

    #[tokio::test]
    async fn a_failed_write_advances_nothing() {
        let (faults, engine) = faulty();
        create(&engine, plain("/s")).await;
        faults.fail_next(Fault::Full, 1);
        let mut request = produced(b"a", 0, 0);
        request.stream_seq = Some("1".into());
        assert!(matches!(
            engine.append("/s", request.clone()).await,
            Err(EngineError::Storage(StorageError::Full(_)))
        ));
        // The same producer sequence and Stream-Seq are accepted again.
        let written = engine.append("/s", request).await.expect("written");
        assert!(written.wrote);
        assert_eq!(written.tail, 1);
    }

    #[tokio::test]
    async fn writes_queued_behind_a_failing_one_fail_too() {
        let (faults, engine) = faulty();
        create(&engine, plain("/s")).await;
        let gate = faults.hold_failures();
        faults.fail_next(Fault::Unavailable, 1);
        let first = tokio::spawn({
            let engine = engine.clone();
            async move { engine.append("/s", plain_append(b"aa")).await }
        });
        faults.until_injected(1).await;
        let second = tokio::spawn({
            let engine = engine.clone();
            async move { engine.append("/s", plain_append(b"bb")).await }
        });
        tokio::task::yield_now().await;
        gate.release();
        assert!(first.await.expect("join").is_err());
        assert!(second.await.expect("join").is_err());
        let entry = engine.lookup("/s", Access::Peek).expect("live");
        assert_eq!(entry.snapshot().tail, 0);
        let read = engine.read(&entry, ReadFrom::Start).await.expect("read");
        assert!(read.is_empty());
    }

    /// A producer's retry that arrives while its original write is pending
    /// must not be confirmed as a duplicate if that write fails, even when
    /// another writer's append commits before the retry looks again.
    #[tokio::test]
    async fn a_retry_is_not_confirmed_when_the_original_failed_and_others_committed() {
        let (faults, engine) = faulty();
        create(&engine, plain("/s")).await;
        let gate = faults.hold_failures();
        faults.fail_next(Fault::Full, 1);
        let original = tokio::spawn({
            let engine = engine.clone();
            async move { engine.append("/s", produced(b"xx", 0, 0)).await }
        });
        faults.until_injected(1).await;
        let mut retry = Box::pin(engine.append("/s", produced(b"xx", 0, 0)));
        assert!(
            (&mut retry).now_or_never().is_none(),
            "the retry waits for the original"
        );
        gate.release();
        assert!(matches!(
            original.await.expect("join"),
            Err(EngineError::Storage(StorageError::Full(_)))
        ));
        // Before the retry runs again, another append commits and moves the
        // tail to where the failed write would have ended.
        let other = engine.append("/s", plain_append(b"yy")).await;
        assert_eq!(other.expect("append").tail, 2);
        match retry.await {
            Ok(outcome) => panic!("confirmed a write that never happened: {outcome:?}"),
            Err(error) => assert!(
                matches!(error, EngineError::Storage(StorageError::Unavailable(_))),
                "{error:?}"
            ),
        }
        // The producer's next attempt writes it.
        let written = engine.append("/s", produced(b"xx", 0, 0)).await;
        assert!(written.expect("append").wrote);
    }
}
