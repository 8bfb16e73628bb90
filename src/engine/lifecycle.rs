//! A stream's life after creation: lookup (which expires a stream whose
//! time is up), `DELETE`, the expiry sweeper, and the release of fork
//! sources whose last fork went away.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use super::entry::{Accesses, Status, StreamEntry};
use super::error::EngineError;
use super::registry::Retirement;
use super::request::Access;
use crate::clock;
use crate::metrics::event::{StreamDeleted, StreamsExpired};
use crate::storage::shared::SharedStreams;
use crate::storage::{Mutation, StorageFuture};

/// What deleting an entry did, as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deletion {
    /// Kept for its forks: answers `410` from now on.
    Soft,
    /// Gone.
    Removed,
    /// Someone else deleted it first.
    AlreadyGone,
}

impl Engine {
    /// Finds the live stream at `path`, expiring it if its time is up.
    /// With a shared store this server's view of the last access may be
    /// older than another server's: a stream that looks expired answers
    /// [`EngineError::NotFound`] but is only deleted by
    /// [`Engine::lookup_fresh`] or the sweep, which read the store first.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] or [`EngineError::Gone`].
    pub fn lookup(&self, path: &str, access: Access) -> Result<Arc<StreamEntry>, EngineError> {
        self.lookup_with(path, access, self.shared.store.is_none())
    }

    /// [`Engine::lookup`] right after [`Engine::refresh`] of `path`: the
    /// view is the store's, so an expired stream is deleted.
    pub(super) fn lookup_refreshed(
        &self,
        path: &str,
        access: Access,
    ) -> Result<Arc<StreamEntry>, EngineError> {
        self.lookup_with(path, access, true)
    }

    fn lookup_with(
        &self,
        path: &str,
        access: Access,
        may_expire: bool,
    ) -> Result<Arc<StreamEntry>, EngineError> {
        let entry = self
            .shared
            .registry
            .get(path)
            .ok_or(EngineError::NotFound)?;
        let now = Instant::now();
        let mut inner = entry.lock();
        match inner.status {
            Status::SoftDeleted => return Err(EngineError::Gone),
            Status::Removed => return Err(EngineError::NotFound),
            Status::Live => {}
        }
        if entry.is_expired(&inner, now) {
            drop(inner);
            if !may_expire {
                return Err(EngineError::NotFound);
            }
            return Err(self.expire(&entry));
        }
        if access == Access::Touch
            && let Some(accesses) = inner.accesses.as_deref_mut()
        {
            accesses.last = now;
            self.record_access(&entry, accesses, now);
        }
        drop(inner);
        Ok(entry)
    }

    /// Records an access of a stream with a sliding TTL in the shared
    /// store, if any, so other servers see it extended. TTLs count whole
    /// seconds: writing at most once per tenth of the TTL (and at least
    /// once a second) keeps the stored time that close to the truth while
    /// a hot reader does not write on every request.
    fn record_access(&self, entry: &StreamEntry, accesses: &mut Accesses, now: Instant) {
        let (Some(store), Some(ttl)) = (&self.shared.store, entry.ttl_secs()) else {
            return;
        };
        let every = Duration::from_millis(ttl.saturating_mul(100)).min(Duration::from_secs(1));
        if now.saturating_duration_since(accesses.store_touched) < every {
            return;
        }
        accesses.store_touched = now;
        spawn_ack(store.touch(entry.id(), clock::unix_ms()));
    }

    /// Deletes an expired stream; tells the caller what the client sees.
    fn expire(&self, entry: &Arc<StreamEntry>) -> EngineError {
        let (deletion, written) = self.delete_entry(entry);
        if let Some(written) = written {
            spawn_ack(written);
        }
        match deletion {
            Deletion::Soft => {
                StreamsExpired { count: 1 }.emit();
                EngineError::Gone
            }
            Deletion::Removed => {
                StreamsExpired { count: 1 }.emit();
                EngineError::NotFound
            }
            Deletion::AlreadyGone => EngineError::NotFound,
        }
    }

    /// Sweeps expired streams; returns how many were reclaimed.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let mut reclaimed = 0;
        for entry in self.shared.registry.entries() {
            let expired = {
                let mut inner = entry.lock();
                inner.ledger.release_idle();
                inner.status == Status::Live && entry.is_expired(&inner, now)
            };
            if expired {
                if let (_, Some(written)) = self.delete_entry(&entry) {
                    spawn_ack(written);
                }
                reclaimed += 1;
            }
        }
        StreamsExpired { count: reclaimed }.emit();
        reclaimed
    }

    /// Sweeps the streams a shared store finds expired (none when another
    /// server is sweeping): each is deleted only if still expired once its
    /// row is read again, by the same path as a client's lookup.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn sweep_shared(&self, store: &dyn SharedStreams) -> Result<usize, EngineError> {
        let mut reclaimed = 0;
        for path in store.expired(clock::unix_ms()).await? {
            match self.lookup_fresh(&path, Access::Peek).await {
                Err(EngineError::NotFound | EngineError::Gone) => reclaimed += 1,
                Err(error) => return Err(error),
                Ok(_) => {}
            }
        }
        Ok(reclaimed)
    }

    /// Starts a background task that reclaims expired streams every
    /// `interval` (at least 100 ms); it ends when the engine is dropped.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn_sweeper(&self, interval: Duration) {
        self.spawn_every(interval, |engine| async move {
            match engine.shared_store() {
                Some(store) => {
                    if let Err(error) = engine.sweep_shared(&*store).await {
                        tracing::warn!(%error, "the expiry sweep failed");
                    }
                }
                None => {
                    engine.sweep_expired();
                }
            }
        });
    }

    /// Starts a background task that runs `work` every `interval` (at least
    /// 100 ms, a late run delaying the next); it ends when the engine is
    /// dropped, as the task holds it only while `work` runs.
    pub(super) fn spawn_every<F, Work>(&self, interval: Duration, mut work: F)
    where
        F: FnMut(Engine) -> Work + Send + 'static,
        Work: std::future::Future<Output = ()> + Send + 'static,
    {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                work(Engine { shared }).await;
            }
        });
    }

    /// `DELETE`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Gone`], or a storage failure.
    pub async fn delete(&self, path: &str) -> Result<(), EngineError> {
        let entry = self.lookup_fresh(path, Access::Peek).await?;
        // Sources deleted through other servers are released with their
        // last fork only if this server knows they are deleted.
        let mut source = entry.source.clone();
        while let Some(known) = source {
            self.refresh(known.path()).await?;
            source = known.source.clone();
        }
        match self.delete_entry(&entry) {
            (Deletion::Soft | Deletion::Removed, written) => {
                // Answer only once the deletion is as durable as the backend
                // promises: a crash must not bring back a stream whose
                // DELETE was acknowledged. (If the write fails, the stream
                // stays hidden until a restart shows it again.)
                if let Some(written) = written {
                    written.await?;
                }
                StreamDeleted.emit();
                Ok(())
            }
            (Deletion::AlreadyGone, _) => Err(EngineError::NotFound),
        }
    }

    /// Soft-deletes an entry with forks, removes it otherwise. Returns the
    /// storage write that persists it, if this call made the change.
    pub(super) fn delete_entry(
        &self,
        entry: &Arc<StreamEntry>,
    ) -> (Deletion, Option<StorageFuture<()>>) {
        let storage = &self.shared.storage;
        let id = entry.id();
        match self.shared.registry.retire(entry) {
            Retirement::AlreadyRemoved => (Deletion::AlreadyGone, None),
            Retirement::AlreadySoftDeleted => (Deletion::Soft, None),
            Retirement::SoftDeleted => (
                Deletion::Soft,
                Some(self.retiring(id, storage.submit(Mutation::SoftDelete { id }))),
            ),
            Retirement::Removed => {
                let written = self.retiring(id, storage.submit(Mutation::Remove { id }));
                if let Some(source) = &entry.source {
                    self.release_fork(source);
                }
                (Deletion::Removed, Some(written))
            }
        }
    }

    /// Drops one fork reference; removes a soft-deleted source whose last
    /// fork went away, cascading up the chain.
    pub(super) fn release_fork(&self, source: &Arc<StreamEntry>) {
        let mut next = Some(source.clone());
        while let Some(entry) = next.take() {
            if !self.shared.registry.release_fork(&entry) {
                return;
            }
            let id = entry.id();
            spawn_ack(self.retiring(id, self.shared.storage.submit(Mutation::Remove { id })));
            next = entry.source.clone();
        }
    }
}

/// Drives a storage acknowledgement nobody waits for, logging a failure.
pub(super) fn spawn_ack(ack: StorageFuture<()>) {
    tokio::spawn(async move {
        if let Err(error) = ack.await {
            tracing::error!(error = %error, "background storage operation failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{create, engine, fork, plain};

    #[tokio::test]
    async fn delete_removes_and_a_second_delete_finds_nothing() {
        let engine = engine();
        create(&engine, plain("/s")).await;
        engine.delete("/s").await.expect("deleted");
        assert!(matches!(
            engine.lookup("/s", Access::Peek),
            Err(EngineError::NotFound)
        ));
        assert!(matches!(
            engine.delete("/s").await,
            Err(EngineError::NotFound)
        ));
        assert_eq!(engine.stream_count(), 0);
    }

    #[tokio::test]
    async fn a_deleted_source_is_gone_while_forks_read_through_it() {
        let engine = engine();
        create(&engine, plain("/src")).await;
        create(&engine, fork("/a", "/src")).await;
        create(&engine, fork("/b", "/a")).await;
        engine.delete("/src").await.expect("soft");
        engine.delete("/a").await.expect("soft");
        assert!(matches!(
            engine.lookup("/src", Access::Peek),
            Err(EngineError::Gone)
        ));
        assert!(matches!(engine.delete("/a").await, Err(EngineError::Gone)));
        assert_eq!(engine.stream_count(), 3);
        // The last fork going releases the whole chain.
        engine.delete("/b").await.expect("removed");
        assert_eq!(engine.stream_count(), 0);
        assert!(!engine.contains("/src"));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_expire_on_lookup_and_in_the_sweep() {
        let engine = engine();
        let mut ttl = plain("/ttl");
        ttl.ttl_secs = Some(10);
        create(&engine, ttl.clone()).await;
        ttl.path = "/other".into();
        create(&engine, ttl).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        // Reads keep a sliding TTL alive, HEAD does not (spec §4.5).
        engine.lookup("/ttl", Access::Touch).expect("alive");
        engine.lookup("/other", Access::Peek).expect("alive");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(
            engine.lookup("/other", Access::Peek),
            Err(EngineError::NotFound)
        ));
        assert_eq!(engine.sweep_expired(), 0);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(engine.sweep_expired(), 1);
        assert_eq!(engine.stream_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_runs_until_the_engine_is_dropped() {
        let engine = engine();
        let mut ttl = plain("/ttl");
        ttl.ttl_secs = Some(1);
        create(&engine, ttl).await;
        engine.spawn_sweeper(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(engine.stream_count(), 0);
        let weak = Arc::downgrade(&engine.shared);
        drop(engine);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(weak.upgrade().is_none());
    }
}
