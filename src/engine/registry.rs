//! The streams by path: the only code that inserts and removes entries,
//! changes their lifecycle status, and moves the gauges that count them
//! (`durable_streams_streams`, `durable_streams_storage_bytes`).
//!
//! Lock order: the path map before a stream, a fork before its source.
//! Both are `std` locks held for in-memory work only.

// The map's key hashes an entry's path, which never changes; the entry's
// interior mutability does not touch it.
#![allow(clippy::mutable_key_type)]

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::entry::{Inner, Status, StreamEntry};
use super::error::EngineError;
use crate::metrics::event::{LiveStreamsChanged, StoredBytes};
use crate::storage::StreamId;

/// Paths come from clients: the hasher is keyed at random per map, so no
/// client can aim paths at one bucket, and is quicker than SipHash.
type Map = HashSet<ByPath, ahash::RandomState>;

/// An entry keyed by its own path, so the map keeps no second copy of it.
struct ByPath(Arc<StreamEntry>);

impl Borrow<str> for ByPath {
    fn borrow(&self) -> &str {
        self.0.path()
    }
}

/// Hashes as the path does, as [`Borrow`] requires.
impl Hash for ByPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.path().hash(state);
    }
}

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.path() == other.0.path()
    }
}

impl Eq for ByPath {}

/// What [`Registry::retire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retirement {
    /// The stream was removed already.
    AlreadyRemoved,
    /// The stream was soft-deleted already.
    AlreadySoftDeleted,
    /// Now soft-deleted: forks still read through it.
    SoftDeleted,
    /// Now removed.
    Removed,
}

/// The path map and the stream counters.
pub(super) struct Registry {
    streams: RwLock<Map>,
    next_id: AtomicU64,
    /// `durable_streams_storage_bytes{backend}`.
    stored_bytes: StoredBytes,
}

impl Registry {
    /// An empty registry of a store whose backend is `backend`.
    pub fn new(backend: &'static str) -> Self {
        Self {
            streams: RwLock::new(HashSet::default()),
            next_id: AtomicU64::new(1),
            stored_bytes: StoredBytes::register(backend),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Map> {
        self.streams.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map> {
        self.streams.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry at `path`, whatever its status.
    pub fn get(&self, path: &str) -> Option<Arc<StreamEntry>> {
        self.read().get(path).map(|found| found.0.clone())
    }

    /// Whether an entry (live or kept for forks) occupies `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.read().contains(path)
    }

    /// How many entries the map holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> Vec<Arc<StreamEntry>> {
        self.read().iter().map(|found| found.0.clone()).collect()
    }

    /// A fresh stream instance id.
    pub fn allocate_id(&self) -> StreamId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a stream that is committed already (recovered or imported):
    /// counts it, its bytes, and its fork reference on its source.
    pub fn adopt(&self, entry: Arc<StreamEntry>) {
        self.adopt_into(&mut self.write(), entry);
    }

    /// Adds a stream read from a shared store, unless the same instance is
    /// here already (returned then); another instance at its path is taken
    /// out, as the store replaced it.
    pub fn install(&self, entry: Arc<StreamEntry>) -> Arc<StreamEntry> {
        let mut map = self.write();
        if let Some(current) = map.get(entry.path()).map(|found| found.0.clone()) {
            if current.id() == entry.id() {
                return current;
            }
            let mut inner = current.lock();
            if inner.status == Status::Live {
                live_streams_changed(-1.0);
            }
            self.remove(&mut map, &current, &mut inner);
        }
        self.adopt_into(&mut map, entry.clone());
        entry
    }

    /// Takes out a stream a shared store no longer holds.
    pub fn forget(&self, entry: &Arc<StreamEntry>) {
        let mut map = self.write();
        let mut inner = entry.lock();
        match inner.status {
            Status::Removed => return,
            Status::Live => live_streams_changed(-1.0),
            Status::SoftDeleted => {}
        }
        self.remove(&mut map, entry, &mut inner);
    }

    /// Marks a live stream soft-deleted because a shared store says so.
    pub fn soft_deleted_elsewhere(&self, inner: &mut Inner) {
        if inner.status == Status::Live {
            live_streams_changed(-1.0);
            inner.status = Status::SoftDeleted;
        }
    }

    fn adopt_into(&self, map: &mut Map, entry: Arc<StreamEntry>) {
        self.next_id
            .fetch_max(entry.id().saturating_add(1), Ordering::Relaxed);
        let inner = entry.lock();
        if let Some(source) = &entry.source {
            source.lock().forks += 1;
        }
        self.bytes_changed(entry.own_bytes(&inner) as f64);
        if inner.status == Status::Live {
            live_streams_changed(1.0);
        }
        drop(inner);
        map.replace(ByPath(entry));
    }

    /// Inserts a new, uncommitted stream at its path if the path is free,
    /// taking a fork reference on its source. `queue` runs while the path
    /// is reserved, before any other request can find the entry: it queues
    /// the creation in storage, so nothing reaches storage ahead of it.
    ///
    /// # Errors
    /// [`EngineError::ConfigMismatch`] when another creation won the path,
    /// [`EngineError::ForkSourceGone`] when the source went away.
    pub fn insert<T>(
        &self,
        entry: &Arc<StreamEntry>,
        queue: impl FnOnce(&mut Inner) -> T,
    ) -> Result<T, EngineError> {
        let mut map = self.write();
        if let Some(current) = map.get(entry.path())
            && current.0.lock().status != Status::Removed
        {
            return Err(EngineError::ConfigMismatch(
                "the stream was created concurrently",
            ));
        }
        if let Some(source) = &entry.source {
            let mut source_inner = source.lock();
            if source_inner.status != Status::Live {
                return Err(EngineError::ForkSourceGone);
            }
            source_inner.forks += 1;
        }
        let queued = queue(&mut entry.lock());
        map.replace(ByPath(entry.clone()));
        live_streams_changed(1.0);
        Ok(queued)
    }

    /// Counts `bytes` a write of the stream committed, unless the stream
    /// was removed meanwhile (its removal already left them out).
    pub fn committed(&self, inner: &Inner, bytes: u64) {
        if inner.status != Status::Removed {
            self.bytes_changed(bytes as f64);
        }
    }

    /// Takes back a creation storage refused: the entry leaves the map and
    /// is marked removed; its fork reference is the caller's to release.
    pub fn abandon(&self, entry: &Arc<StreamEntry>, op: u64) {
        let mut map = self.write();
        remove_if_current(&mut map, entry);
        drop(map);
        let mut inner = entry.lock();
        if inner.status == Status::Live {
            live_streams_changed(-1.0);
        }
        inner.status = Status::Removed;
        inner.ledger.fail(op);
        entry.publish(&inner);
    }

    /// Takes a live stream out of service: soft-deleted while forks read
    /// through it, removed otherwise. A removed stream's fork reference on
    /// its source is the caller's to release.
    pub fn retire(&self, entry: &Arc<StreamEntry>) -> Retirement {
        let mut map = self.write();
        let mut inner = entry.lock();
        match inner.status {
            Status::Removed => return Retirement::AlreadyRemoved,
            Status::SoftDeleted => return Retirement::AlreadySoftDeleted,
            Status::Live => {}
        }
        live_streams_changed(-1.0);
        if inner.forks > 0 {
            inner.status = Status::SoftDeleted;
            entry.publish(&inner);
            return Retirement::SoftDeleted;
        }
        self.remove(&mut map, entry, &mut inner);
        Retirement::Removed
    }

    /// Drops one fork reference from `source`; removes it when it was
    /// soft-deleted and this was its last fork. Returns whether it was
    /// removed (its own source reference is then the caller's to release).
    pub fn release_fork(&self, source: &Arc<StreamEntry>) -> bool {
        let mut map = self.write();
        let mut inner = source.lock();
        inner.forks = inner.forks.saturating_sub(1);
        if inner.forks > 0 || inner.status != Status::SoftDeleted {
            return false;
        }
        self.remove(&mut map, source, &mut inner);
        true
    }

    fn remove(&self, map: &mut Map, entry: &Arc<StreamEntry>, inner: &mut Inner) {
        inner.status = Status::Removed;
        entry.publish(inner);
        self.bytes_changed(-(entry.own_bytes(inner) as f64));
        remove_if_current(map, entry);
    }

    /// `durable_streams_storage_bytes` moves by `delta`.
    fn bytes_changed(&self, delta: f64) {
        self.stored_bytes.emit(delta);
    }
}

/// Removes `entry` from the map unless another instance took its path.
fn remove_if_current(map: &mut Map, entry: &Arc<StreamEntry>) {
    if map
        .get(entry.path())
        .is_some_and(|current| Arc::ptr_eq(&current.0, entry))
    {
        map.remove(entry.path());
    }
}

/// `durable_streams_streams` moves by `delta`.
fn live_streams_changed(delta: f64) {
    LiveStreamsChanged { delta }.emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::WriterState;
    use crate::storage::{ForkLink, RecoveredStream, StreamSpec};

    fn spec(id: StreamId, path: &str, fork: Option<StreamId>) -> StreamSpec {
        StreamSpec {
            id,
            path: path.into(),
            content_type: "text/plain".into(),
            ttl_secs: None,
            expires_at_ms: None,
            created_at_ms: 0,
            fork: fork.map(|source| ForkLink {
                source,
                source_path: "/src".into(),
                offset: 0,
                sub_offset: 0,
            }),
            base: 0,
        }
    }

    fn fresh(id: StreamId, path: &str, source: Option<Arc<StreamEntry>>) -> Arc<StreamEntry> {
        let fork = source.as_ref().map(|s| s.id());
        StreamEntry::new(
            spec(id, path, fork),
            source,
            WriterState::default(),
            Status::Live,
        )
    }

    #[test]
    fn a_path_holds_one_live_stream() {
        let registry = Registry::new("memory");
        let a = fresh(registry.allocate_id(), "/a", None);
        let op = registry
            .insert(&a, |inner| inner.ledger.push(3, None, None, None))
            .expect("free");
        assert!(registry.contains("/a"));
        let b = fresh(registry.allocate_id(), "/a", None);
        assert!(matches!(
            registry.insert(&b, |_| ()),
            Err(EngineError::ConfigMismatch(_))
        ));
        // A refused creation frees the path for the next one.
        registry.abandon(&a, op);
        assert!(!registry.contains("/a"));
        assert!(a.snapshot().gone);
        registry.insert(&b, |_| ()).expect("free again");
        assert!(Arc::ptr_eq(&registry.get("/a").expect("b"), &b));
        // Retiring the old instance leaves the new one in place.
        assert_eq!(registry.retire(&a), Retirement::AlreadyRemoved);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn a_source_with_forks_is_kept_until_its_last_fork_goes() {
        let registry = Registry::new("memory");
        let source = fresh(1, "/src", None);
        registry.insert(&source, |_| ()).expect("free");
        let fork = fresh(2, "/fork", Some(source.clone()));
        registry.insert(&fork, |_| ()).expect("free");
        assert_eq!(registry.retire(&source), Retirement::SoftDeleted);
        assert_eq!(registry.retire(&source), Retirement::AlreadySoftDeleted);
        assert!(registry.contains("/src"));
        let late = fresh(3, "/late", Some(source.clone()));
        assert!(matches!(
            registry.insert(&late, |_| ()),
            Err(EngineError::ForkSourceGone)
        ));
        assert_eq!(registry.retire(&fork), Retirement::Removed);
        assert!(registry.release_fork(&source));
        assert!(!registry.contains("/src"));
        assert!(source.snapshot().gone);
    }

    #[test]
    fn adopted_streams_keep_their_ids_and_fork_references() {
        let registry = Registry::new("memory");
        let recovered = |id, path: &str, fork| RecoveredStream {
            spec: spec(id, path, fork),
            head: 0,
            tail: 5,
            closed: None,
            producers: Vec::new(),
            stream_seq: None,
            soft_deleted: fork.is_none(),
        };
        let source = StreamEntry::committed(recovered(7, "/src", None), None);
        registry.adopt(source.clone());
        let fork = StreamEntry::committed(recovered(9, "/fork", Some(7)), Some(source.clone()));
        registry.adopt(fork.clone());
        assert_eq!(registry.allocate_id(), 10);
        assert_eq!(source.lock().forks, 1);
        assert_eq!(registry.retire(&fork), Retirement::Removed);
        assert!(registry.release_fork(&source));
        assert_eq!(registry.len(), 0);
    }
}
