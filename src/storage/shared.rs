//! The seam for a store shared by several servers (the `postgres`
//! backend): there the stored rows, not the engine's memory, are the
//! authority on a stream's writer state, so interchangeable replicas assign
//! the same offsets and see each other's writes.
//!
//! The engine keeps its rules; the store runs them inside its transaction
//! through a [`Decide`] callback over the locked stream row, so both sides
//! keep one job each and the rules exist once.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Append, RecoveredStream, StorageFuture, StreamId};

/// Decides what an append writes, given the stream's writer state as
/// stored and locked: `Some` with the append (starting at the stored tail)
/// to commit, `None` to write nothing. May run more than once when the
/// transaction is retried; only the last run counts.
pub type Decide = Box<dyn FnMut(&RecoveredStream) -> Option<Append> + Send>;

/// A stream's stored position, as [`SharedStreams::tails`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredTail {
    /// The stream instance.
    pub id: StreamId,
    /// Its committed tail.
    pub tail: u64,
    /// Whether it is closed.
    pub closed: bool,
    /// Whether it is soft-deleted.
    pub soft_deleted: bool,
}

/// A live stream's stored position, as [`SharedStreams::positions`]
/// reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPosition {
    /// The stream's full path.
    pub path: String,
    /// Its committed tail.
    pub tail: u64,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A metadata entry read under a lock every server sharing the store
/// respects: until it is committed or dropped, no other server can lock
/// the same key. Dropping it releases the lock and writes nothing.
pub trait LockedMetadata: Send {
    /// The entry's value when it was locked (`None`: no entry).
    fn value(&self) -> Option<&Bytes>;

    /// Sets (or, with `None`, removes) the entry and releases the lock.
    fn commit(self: Box<Self>, value: Option<Bytes>) -> StorageFuture<()>;
}

/// What a store shared by several servers reports about other servers'
/// commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailEvent {
    /// These streams reached (at least) these tails.
    Tails(Vec<(StreamId, u64)>),
    /// Reports may have been missed: every waited-on tail must be checked.
    Resync,
}

/// A store whose streams several servers write at once.
pub trait SharedStreams: Send + Sync + 'static {
    /// Locks stream `id`'s row, runs `decide` on its stored state, commits
    /// what it returns, and resolves with the state right after this
    /// append (the state `decide` saw, when it wrote nothing). Concurrent
    /// appends share transactions.
    ///
    /// # Errors
    /// [`super::StorageError::UnknownStream`] when the stream is not stored
    /// or soft-deleted; `Unavailable` when the database is unreachable or a
    /// commit's outcome is unknown.
    fn append(&self, id: StreamId, decide: Decide) -> StorageFuture<RecoveredStream>;

    /// The stored stream (live or soft-deleted) at `path`.
    fn find(&self, path: &str) -> StorageFuture<Option<RecoveredStream>>;

    /// The stored stream instance `id`.
    fn find_id(&self, id: StreamId) -> StorageFuture<Option<RecoveredStream>>;

    /// The stored positions of those of `ids` still stored.
    fn tails(&self, ids: Vec<StreamId>) -> StorageFuture<Vec<StoredTail>>;

    /// A stream id no other server sharing the store hands out.
    fn allocate_id(&self) -> StreamId;

    /// When stream `id` was last accessed (Unix milliseconds), as every
    /// server sharing the store recorded it; `None` when not stored.
    fn last_access(&self, id: StreamId) -> StorageFuture<Option<i64>>;

    /// Records an access to stream `id` at `at_ms` (Unix milliseconds), so
    /// the other servers see its sliding TTL extended. Never moves the
    /// stored time back.
    fn touch(&self, id: StreamId, at_ms: i64) -> StorageFuture<()>;

    /// The paths of the live streams whose expiry time or sliding TTL has
    /// passed at `now_ms`, for the one server sweeping now: empty for the
    /// others sweeping at the same moment.
    fn expired(&self, now_ms: i64) -> StorageFuture<Vec<String>>;

    /// Settles the expiry of stream `id` if, as stored, it is live and
    /// expired at `now_ms` (its expiry time or sliding TTL passed): pins
    /// its stored expiry time at `now_ms` at the latest, so it stays
    /// expired for every server whatever accesses follow, and answers
    /// `true`; the caller then deletes it. `false` when an access through
    /// any server extended it meanwhile (or it is gone): the check and the
    /// pin are one statement, so such an access wins.
    fn claim_expiry(&self, id: StreamId, now_ms: i64) -> StorageFuture<bool>;

    /// The live streams no fork reads through, by id and path: those
    /// retention may trim.
    fn trimmable(&self) -> StorageFuture<Vec<(StreamId, String)>>;

    /// Locks metadata entry `key` across servers and reads it, for a
    /// read-modify-write that no other server interleaves with.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    fn lock_metadata(&self, key: &str) -> StorageFuture<Box<dyn LockedMetadata>>;

    /// Whether this server holds the lock of `role` (taken now when free):
    /// one server at a time runs a role's background jobs. Held until this
    /// server's session with the store ends (it stops or dies).
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable (the lock is then
    /// lost).
    fn lead(&self, role: &'static str) -> StorageFuture<bool>;

    /// The positions of the live streams at one of `paths` or whose path
    /// starts with `prefix`.
    fn positions(
        &self,
        paths: Vec<String>,
        prefix: Option<String>,
    ) -> StorageFuture<Vec<StoredPosition>>;

    /// Starts reporting other servers' commits to `events`; the reports
    /// stop when the returned guard is dropped.
    fn watch(&self, events: mpsc::UnboundedSender<TailEvent>) -> Box<dyn Send + Sync>;
}
