//! The engine over a store shared by several servers
//! ([`SharedStreams`]): the store's rows are the authority, this server's
//! entries a cache of them that carries its local readers' wake-ups.
//!
//! - Appends: [`rules::plan_append`] runs inside the store's transaction,
//!   over the locked row ([`StoredView`]); the entry then takes the state
//!   the store committed.
//! - Lookups that answer a client ([`Engine::lookup_fresh`]) read the row
//!   first: a stream created, appended to, closed or deleted through
//!   another server is seen at once.
//! - Live readers: other servers' commits are reported by the store
//!   (`LISTEN`/`NOTIFY`), and every waited-on tail is re-read each
//!   [`RECHECK_INTERVAL`] besides, so a lost report or a database failover
//!   never strands a reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Engine;
use super::entry::{Status, StreamEntry};
use super::error::EngineError;
use super::request::{Access, AppendRequest, Appended};
use super::rules::{self, AppendPlan, Confirmation, StreamFacts, WriterView};
use crate::clock;
use crate::metrics::event::{AppendWritten, ProducerDuplicate, StreamClosed};
use crate::protocol::producer::ProducerState;
use crate::storage::shared::{SharedStreams, StoredTail, TailEvent};
use crate::storage::{ClosedBy, RecoveredStream, StorageError};

/// How often the tails live readers wait on are re-read from the store.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(500);

/// A stored row as the append rules see it.
struct StoredView<'a>(&'a RecoveredStream);

impl WriterView for StoredView<'_> {
    fn tail(&self) -> u64 {
        self.0.tail
    }

    fn closed(&self) -> Option<&Option<ClosedBy>> {
        self.0.closed.as_ref()
    }

    fn producer(&self, id: &str) -> Option<ProducerState> {
        self.0
            .producers
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, state)| *state)
    }

    fn stream_seq(&self) -> Option<&str> {
        self.0.stream_seq.as_deref()
    }
}

/// What the store says of a stream's writer state.
struct Stored {
    tail: u64,
    /// Where retention left the data starting, when read.
    head: Option<u64>,
    closed: Option<Option<ClosedBy>>,
    soft_deleted: bool,
}

impl From<&RecoveredStream> for Stored {
    fn from(row: &RecoveredStream) -> Self {
        Self {
            tail: row.tail,
            head: Some(row.head),
            closed: row.closed.clone(),
            soft_deleted: row.soft_deleted,
        }
    }
}

impl From<&StoredTail> for Stored {
    fn from(row: &StoredTail) -> Self {
        Self {
            tail: row.tail,
            head: None,
            closed: row.closed.then_some(None),
            soft_deleted: row.soft_deleted,
        }
    }
}

/// Makes a stream with a sliding TTL look expired to this server.
fn settle_expiry(entry: &StreamEntry) {
    let Some(ttl) = entry.ttl_secs() else {
        return;
    };
    let now = Instant::now();
    let mut inner = entry.lock();
    if let Some(expired) = now.checked_sub(Duration::from_secs(ttl))
        && let Some(accesses) = inner.accesses.as_deref_mut()
    {
        accesses.last = accesses.last.min(expired);
    }
}

impl Engine {
    /// The shared store, when the backend is one.
    pub(super) fn shared_store(&self) -> Option<Arc<dyn SharedStreams>> {
        self.shared.store.clone()
    }

    /// Finds the live stream at `path` as it stands now: with a shared
    /// store, after reading its row (another server may have created,
    /// changed or deleted it); otherwise as [`Engine::lookup`].
    ///
    /// # Errors
    /// As [`Engine::lookup`]; a storage failure reading the row.
    pub async fn lookup_fresh(
        &self,
        path: &str,
        access: Access,
    ) -> Result<Arc<StreamEntry>, EngineError> {
        self.refresh(path).await?;
        self.lookup_refreshed(path, access)
    }

    /// Brings the entry at `path` in line with the shared store's row
    /// (nothing without a shared store).
    pub(super) async fn refresh(&self, path: &str) -> Result<(), EngineError> {
        let Some(store) = self.shared_store() else {
            return Ok(());
        };
        let stored = store.find(path).await?;
        if stored
            .as_ref()
            .is_some_and(|row| self.is_retiring(row.spec.id))
        {
            // This server deleted it; the row is older than that.
            return Ok(());
        }
        let current = self.shared.registry.get(path);
        let mut adopted = None;
        match (current, stored) {
            (None, None) => {}
            (Some(entry), None) => {
                // Still being created here, or gone from the store.
                if entry.lock().created {
                    self.shared.registry.forget(&entry);
                }
            }
            (Some(entry), Some(row)) if entry.id() == row.spec.id => {
                self.absorb(&entry, &Stored::from(&row));
                if row
                    .spec
                    .expires_at_ms
                    .is_some_and(|at| at <= clock::unix_ms())
                {
                    // Its expiry is settled in the store (by any server):
                    // expired here too, whatever this server saw since.
                    settle_expiry(&entry);
                    return Ok(());
                }
            }
            (current, Some(row)) => {
                if current.is_some_and(|entry| !entry.lock().created) {
                    // A creation in flight here loses to the stored
                    // stream; its commit will fail on the path.
                    return Ok(());
                }
                adopted = Some(self.adopt_stored(&*store, row).await?);
            }
        }
        match adopted {
            Some(entry) => self.sync_access(&*store, &entry, true).await?,
            None => match self.shared.registry.get(path) {
                Some(entry) if self.looks_expired(&entry) => {
                    self.sync_access(&*store, &entry, false).await?;
                }
                _ => {}
            },
        }
        // Expired as this server sees it: deleted only if still expired as
        // stored when its expiry is settled (an access through another
        // server a moment ago wins).
        if let Some(entry) = self.shared.registry.get(path)
            && self.looks_expired(&entry)
            && !store.claim_expiry(entry.id(), clock::unix_ms()).await?
        {
            self.sync_access(&*store, &entry, true).await?;
        }
        Ok(())
    }

    /// Whether a live entry is expired as far as this server knows.
    fn looks_expired(&self, entry: &StreamEntry) -> bool {
        let inner = entry.lock();
        inner.status == Status::Live && entry.is_expired(&inner, Instant::now())
    }

    /// Takes the last access of a stream with a sliding TTL from the
    /// store: as it is for an entry just `adopted` (its own time is when
    /// it was read), the later of both otherwise (this server's last
    /// accesses reach the store a little late).
    async fn sync_access(
        &self,
        store: &dyn SharedStreams,
        entry: &Arc<StreamEntry>,
        adopted: bool,
    ) -> Result<(), EngineError> {
        let Some(ttl) = entry.ttl_secs() else {
            return Ok(());
        };
        let Some(stored_ms) = store.last_access(entry.id()).await? else {
            return Ok(());
        };
        let now = Instant::now();
        // Older than the TTL is expired however much older: capping the
        // age keeps the subtraction within the clock's range.
        let age = u64::try_from(clock::unix_ms().saturating_sub(stored_ms)).unwrap_or(0);
        let age = Duration::from_millis(age).min(Duration::from_secs(ttl));
        let stored = now.checked_sub(age).unwrap_or(now);
        let mut inner = entry.lock();
        let Some(accesses) = inner.accesses.as_deref_mut() else {
            return Ok(());
        };
        if adopted {
            accesses.last = stored;
            accesses.store_touched = stored;
        } else if stored > accesses.last {
            accesses.last = stored;
        }
        Ok(())
    }

    /// Tracks a deletion of stream `id` being written: until `written`
    /// resolves, reads of the store do not bring the stream back.
    pub(super) fn retiring(
        &self,
        id: crate::storage::StreamId,
        written: crate::storage::StorageFuture<()>,
    ) -> crate::storage::StorageFuture<()> {
        if self.shared.store.is_none() {
            return written;
        }
        *self.retiring_ids().entry(id).or_default() += 1;
        let shared = self.shared.clone();
        Box::pin(async move {
            let result = written.await;
            let engine = Engine { shared };
            let mut retiring = engine.retiring_ids();
            if let Some(count) = retiring.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    retiring.remove(&id);
                }
            }
            result
        })
    }

    fn is_retiring(&self, id: crate::storage::StreamId) -> bool {
        self.retiring_ids().contains_key(&id)
    }

    fn retiring_ids(&self) -> std::sync::MutexGuard<'_, HashMap<crate::storage::StreamId, usize>> {
        self.shared
            .retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs a stream read from the store, after its fork sources.
    async fn adopt_stored(
        &self,
        store: &dyn SharedStreams,
        row: RecoveredStream,
    ) -> Result<Arc<StreamEntry>, EngineError> {
        // The chain of sources not known here, nearest first.
        let mut chain = vec![row];
        let mut source = None;
        while let Some(link) = chain.last().and_then(|row| row.spec.fork.clone()) {
            if let Some(known) = self
                .shared
                .registry
                .get(&link.source_path)
                .filter(|entry| entry.id() == link.source)
            {
                source = Some(known);
                break;
            }
            match store.find_id(link.source).await? {
                Some(row) => chain.push(row),
                // The source went away meanwhile; so will the fork.
                None => return Err(EngineError::NotFound),
            }
        }
        let mut installed = None;
        while let Some(row) = chain.pop() {
            let entry = StreamEntry::committed(row, source.take());
            let entry = self.shared.registry.install(entry);
            installed = Some(entry.clone());
            source = Some(entry);
        }
        installed.ok_or(EngineError::NotFound)
    }

    /// Takes the stored state of an entry's stream when it is ahead of
    /// what the entry holds, and wakes its readers.
    fn absorb(&self, entry: &Arc<StreamEntry>, stored: &Stored) {
        if let Some(head) = stored.head {
            entry.advance_head(head);
        }
        let mut inner = entry.lock();
        let committed = &mut inner.ledger.committed;
        let grown = stored.tail.saturating_sub(committed.tail);
        if grown > 0 {
            committed.tail = stored.tail;
        }
        if stored.tail >= committed.tail && !committed.is_closed() && stored.closed.is_some() {
            committed.extras_mut().closed.clone_from(&stored.closed);
        }
        self.shared.registry.committed(&inner, grown);
        if stored.soft_deleted {
            self.shared.registry.soft_deleted_elsewhere(&mut inner);
        }
        entry.publish(&inner);
    }

    /// `POST` with a shared store: the rules run inside the store's
    /// transaction over the locked row.
    pub(super) async fn append_shared(
        &self,
        store: &dyn SharedStreams,
        path: &str,
        request: AppendRequest,
    ) -> Result<Appended, EngineError> {
        rules::check_append_request(&request)?;
        let entry = self.lookup_fresh(path, Access::Touch).await?;
        super::create::wait_created(&entry).await?;
        let data = rules::append_payload(entry.content_type(), &request.body);
        let verdict: Arc<Mutex<Option<Result<AppendPlan, EngineError>>>> = Arc::default();
        let decide = {
            let entry = entry.clone();
            let verdict = verdict.clone();
            let max_stream_bytes = self.shared.limits.max_stream_bytes;
            let request = request.clone();
            Box::new(move |row: &RecoveredStream| {
                let facts = StreamFacts {
                    content_type: entry.content_type(),
                    base: entry.base(),
                    max_stream_bytes,
                };
                let plan = rules::plan_append(&StoredView(row), facts, &request, data.clone());
                let write = match &plan {
                    Ok(AppendPlan::Write(write)) => Some(write.clone().into_append(entry.id())),
                    _ => None,
                };
                *verdict.lock().unwrap_or_else(PoisonError::into_inner) = Some(plan);
                write
            })
        };
        let after = match store.append(entry.id(), decide).await {
            Ok(after) => after,
            Err(StorageError::UnknownStream(_)) => {
                // Deleted through another server: answer as it stands.
                self.refresh(path).await?;
                return Err(self
                    .lookup_refreshed(path, Access::Peek)
                    .err()
                    .unwrap_or(EngineError::NotFound));
            }
            Err(error) => return Err(error.into()),
        };
        self.absorb(&entry, &Stored::from(&after));
        let plan = verdict
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(EngineError::Storage(StorageError::Unavailable(
                "the append was not decided".into(),
            )))?;
        match plan.inspect_err(super::append::count_rejection)? {
            AppendPlan::Write(write) => {
                let tail = write.end();
                self.observe(&entry, tail);
                AppendWritten {
                    bytes: write.data.len() as u64,
                }
                .emit();
                if request.close {
                    StreamClosed.emit();
                }
                Ok(write.outcome())
            }
            AppendPlan::Duplicate(confirms) => {
                if request.producer.is_some() {
                    ProducerDuplicate.emit();
                }
                let view = StoredView(&after);
                match rules::confirmation(&confirms, &view, &view) {
                    Confirmation::Confirmed(outcome) => Ok(outcome),
                    Confirmation::Pending | Confirmation::Lost => Err(StorageError::Unavailable(
                        "the original write of this retry is not stored".into(),
                    )
                    .into()),
                }
            }
        }
    }

    /// Starts following other servers' commits (nothing without a shared
    /// store): reported tails and a re-read every [`RECHECK_INTERVAL`] wake
    /// local readers. Each periodic re-read tells `reachable` whether the
    /// store answered. Ends when the engine is dropped.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn_replica_watch(&self, reachable: impl Fn(bool) + Send + 'static) {
        let Some(store) = self.shared_store() else {
            return;
        };
        let (events, mut reports) = mpsc::unbounded_channel();
        let guard = store.watch(events);
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let _listening = guard;
            let mut ticker = tokio::time::interval(RECHECK_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let reported = tokio::select! {
                    event = reports.recv() => match event {
                        Some(TailEvent::Tails(tails)) => Some(tails),
                        Some(TailEvent::Resync) => None,
                        None => return,
                    },
                    _ = ticker.tick() => None,
                };
                let Some(shared) = weak.upgrade() else { return };
                let engine = Engine { shared };
                let periodic = reported.is_none();
                let outcome = engine.recheck(&*store, reported).await;
                if let Err(error) = &outcome {
                    tracing::debug!(%error, "re-reading waited-on tails failed");
                }
                if periodic {
                    reachable(outcome.is_ok());
                }
            }
        });
    }

    /// Re-reads the stored state of the streams local readers wait on:
    /// those in `reported` when given, all of them otherwise.
    async fn recheck(
        &self,
        store: &dyn SharedStreams,
        reported: Option<Vec<(u64, u64)>>,
    ) -> Result<(), StorageError> {
        let reported: Option<HashMap<u64, u64>> = reported.map(|tails| tails.into_iter().collect());
        let watched: HashMap<u64, Arc<StreamEntry>> = self
            .shared
            .registry
            .entries()
            .into_iter()
            .filter(|entry| entry.is_watched() && entry.lock().created)
            .filter(|entry| {
                reported.as_ref().is_none_or(|tails| {
                    tails
                        .get(&entry.id())
                        .is_some_and(|&tail| tail >= entry.snapshot().tail)
                })
            })
            .map(|entry| (entry.id(), entry))
            .collect();
        if watched.is_empty() && reported.is_some() {
            return Ok(());
        }
        let stored = store.tails(watched.keys().copied().collect()).await?;
        let mut missing = watched;
        for row in &stored {
            if let Some(entry) = missing.remove(&row.id) {
                self.absorb(&entry, &Stored::from(row));
            }
        }
        for entry in missing.values() {
            if entry.lock().status != Status::Removed {
                self.shared.registry.forget(entry);
            }
        }
        Ok(())
    }
}
