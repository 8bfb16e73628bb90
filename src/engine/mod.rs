//! The protocol engine: every stream rule of the protocol, independent of
//! transport and of the storage backend.
//!
//! The engine keeps each stream's metadata in memory (rebuilt from the
//! backend at start), validates every request against it, submits the
//! resulting [`Mutation`](crate::storage::Mutation) to storage, and
//! publishes committed changes through the stream's [`Signal`] so live
//! readers wake without polling.
//!
//! # Layout
//! - `rules`: the write rules as pure functions over a `WriterView`
//!   (append validation, duplicates, idempotent create, fork positions).
//! - `state`: the writer ledger, committed plus pending writes.
//! - `entry`: [`StreamEntry`], one stream instance, and its [`Signal`].
//! - `registry`: the streams by path; the only code that inserts and removes
//!   entries and moves the stream and byte gauges.
//! - `create`, `append`, `lifecycle` (lookup, expiry, delete), `read`,
//!   `transfer` (snapshot, restore, import), `retention` (trimming stream
//!   heads to `[storage.retention]`): the operations.
//! - `replica`: the same operations over a store several servers share,
//!   whose rows are the authority (the entries a cache).
//! - `request`: the request and outcome types; `error`: [`EngineError`];
//!   `observer`: [`DataObserver`].
//!
//! Locks: the path map and each stream's ledger are `std` locks held only
//! for in-memory work, never across an `.await`; the map is always locked
//! before a stream, a fork before its source.

mod append;
mod create;
mod entry;
mod error;
mod lifecycle;
mod observer;
mod read;
mod registry;
mod replica;
#[cfg(test)]
mod replica_tests;
mod request;
mod retention;
pub(crate) mod rules;
mod state;
#[cfg(test)]
pub(crate) mod testing;
mod transfer;

use std::sync::{Arc, OnceLock};

pub use entry::{Signal, StreamEntry};
pub use error::EngineError;
pub use observer::DataObserver;
pub use read::resolve_start;
pub use replica::RECHECK_INTERVAL;
pub use request::{
    Access, AppendRequest, Appended, CreateRequest, Created, ForkRequest, ReadResult,
};
pub use transfer::Import;

use append::MAX_IN_FLIGHT_WRITE_BYTES;
use registry::Registry;

use crate::storage::Storage;
use crate::storage::shared::SharedStreams;

/// Limits the engine enforces.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Most bytes a stream may hold (its own data, not its fork source's).
    pub max_stream_bytes: u64,
    /// Most payload bytes one read hands out (catch-up chunking).
    pub max_read_bytes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_stream_bytes: u64::MAX,
            max_read_bytes: 4 << 20,
        }
    }
}

/// A cheap, cloneable handle to the engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    registry: Registry,
    limits: EngineLimits,
    /// Bytes of appends queued in storage and not yet acknowledged.
    write_budget: tokio::sync::Semaphore,
    /// Told about committed data (subscriptions); unset costs one load.
    observer: OnceLock<Arc<dyn DataObserver>>,
    /// The store, when several servers share it: then the authority on
    /// writer state (see `replica`).
    store: Option<Arc<dyn SharedStreams>>,
    /// Streams whose deletion this server submitted and the shared store
    /// has not confirmed yet, with how many such writes are in flight:
    /// their stored rows are older than what this server knows.
    retiring: std::sync::Mutex<std::collections::HashMap<crate::storage::StreamId, usize>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.shared.storage.backend_name())
            .field("streams", &self.stream_count())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `storage`, with the streams the backend recovered.
    pub fn new(storage: Arc<dyn Storage>, limits: EngineLimits) -> Self {
        let recovered = storage.recover();
        let store = storage.shared();
        let engine = Self {
            shared: Arc::new(Shared {
                registry: Registry::new(storage.backend_name()),
                storage,
                limits,
                write_budget: tokio::sync::Semaphore::new(MAX_IN_FLIGHT_WRITE_BYTES),
                observer: OnceLock::new(),
                store,
                retiring: Default::default(),
            }),
        };
        engine.restore(recovered);
        engine
    }

    /// Installs the observer told about committed data. Only the first
    /// call takes effect; returns whether this one did.
    pub fn set_observer(&self, observer: Arc<dyn DataObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    fn observe(&self, entry: &StreamEntry, tail: u64) {
        if let Some(observer) = self.shared.observer.get() {
            observer.stream_changed(entry.path(), tail);
        }
    }

    /// The backend in use.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// How many streams are live or kept for forks.
    pub fn stream_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Whether a stream (live or kept for forks) occupies `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.shared.registry.contains(path)
    }
}
