//! One stream instance in memory: its immutable spec, its writer ledger,
//! its lifecycle, and the [`Signal`] live readers follow.
//!
//! An entry is what every replica of a stream keeps locally: with a
//! single-node backend it is the stream's authoritative state; with a
//! backend shared by several servers it is a cache of the stored row that
//! still carries the wake-ups of the local readers.

use std::any::Any;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

use super::state::{Ledger, WriterState};
use crate::clock;
use crate::protocol::header::ContentType;
use crate::storage::{ForkLink, RecoveredStream, StreamId, StreamSpec};

/// The committed view of a stream that live readers follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Signal {
    /// Position after the last committed byte.
    pub tail: u64,
    /// The stream is closed.
    pub closed: bool,
    /// The stream was deleted or expired.
    pub gone: bool,
}

/// Bit of a packed [`Signal`] set when the stream is closed.
const CLOSED_BIT: u64 = 1 << 62;
/// Bit of a packed [`Signal`] set when the stream is gone.
const GONE_BIT: u64 = 1 << 63;

impl Signal {
    /// The signal in one word: the tail below bit 62, the flags above (a
    /// tail never reaches 2^62 bytes).
    fn pack(self) -> u64 {
        debug_assert!(self.tail < CLOSED_BIT);
        self.tail | if self.closed { CLOSED_BIT } else { 0 } | if self.gone { GONE_BIT } else { 0 }
    }

    fn unpack(word: u64) -> Self {
        Self {
            tail: word & !(CLOSED_BIT | GONE_BIT),
            closed: word & CLOSED_BIT != 0,
            gone: word & GONE_BIT != 0,
        }
    }

    /// The committed view of `inner`.
    fn of(inner: &Inner) -> Self {
        Self {
            tail: inner.ledger.committed.tail,
            closed: inner.ledger.committed.is_closed(),
            gone: inner.status != Status::Live,
        }
    }
}

/// Lifecycle of a stream instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Live,
    /// Deleted or expired while forks still read through it.
    SoftDeleted,
    /// Removed for good.
    Removed,
}

/// What layers above attach to an entry.
type Attachments = Vec<Arc<dyn Any + Send + Sync>>;

/// When a stream with a sliding TTL was accessed: only such streams keep
/// one (boxed in [`Inner`], as most streams have no TTL).
#[derive(Clone, Copy, Debug)]
pub(super) struct Accesses {
    /// The last access here.
    pub last: Instant,
    /// The last access recorded in a shared store (creation or an append
    /// records it there too).
    pub store_touched: Instant,
}

/// Mutable per-stream bookkeeping, behind the entry's lock.
#[derive(Debug)]
pub(super) struct Inner {
    pub ledger: Ledger,
    /// Set for streams with a sliding TTL, whose expiry runs from them.
    pub accesses: Option<Box<Accesses>>,
    /// Forks reading through this stream.
    pub forks: u32,
    pub status: Status,
    /// The stream's creation is committed (always, for recovered streams).
    pub created: bool,
    /// What only followed streams need, created by the first
    /// [`StreamEntry::subscribe`] or [`StreamEntry::attachment`]: most
    /// streams are never followed. Kept under the lock every publish holds
    /// (one pointer here, not a `OnceLock` and a `Mutex` in the entry).
    followers: Option<Box<Followers>>,
}

/// The parts of an entry only followed streams need.
#[derive(Debug, Default)]
struct Followers {
    /// The channel live readers follow (hundreds of bytes once made).
    signal: Option<watch::Sender<Signal>>,
    /// State that layers above keep per instance (see
    /// [`StreamEntry::attachment`]).
    attachments: Attachments,
}

impl Inner {
    /// The channel live readers follow, once one subscribed.
    fn signal(&self) -> Option<&watch::Sender<Signal>> {
        self.followers.as_ref()?.signal.as_ref()
    }
}

/// The parts of a [`StreamSpec`] most streams leave unset, boxed so that
/// a plain stream's entry does not carry their room.
#[derive(Debug)]
struct RareSpec {
    /// Where the stream's own data begins (a fork's offset; 0 otherwise).
    base: u64,
    ttl_secs: Option<u64>,
    expires_at_ms: Option<i64>,
    fork: Option<ForkLink>,
}

/// `content_type` shared: a common value (one that [`ContentType`] keeps
/// without an allocation; a handful) by every entry that has it, any other
/// in an allocation of its own. An entry then holds a pointer, not the 48
/// bytes of a `ContentType`.
fn shared_content_type(content_type: ContentType) -> Arc<ContentType> {
    /// Bounded by the common values: only those borrow their text.
    static COMMON: Mutex<Vec<Arc<ContentType>>> = Mutex::new(Vec::new());
    if !matches!(content_type.raw, Cow::Borrowed(_)) {
        return Arc::new(content_type);
    }
    let mut common = COMMON.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = common.iter().find(|shared| ***shared == content_type) {
        return found.clone();
    }
    let shared = Arc::new(content_type);
    common.push(shared.clone());
    shared
}

/// One stream instance.
///
/// Its spec is kept in pieces (every stream in memory has an entry, so its
/// size is the memory of an idle stream): the content type parsed once
/// (its raw text is the spec's), the rarely set fields boxed;
/// `StreamEntry::spec` puts the spec back together.
pub struct StreamEntry {
    id: StreamId,
    created_at_ms: i64,
    path: Box<str>,
    content_type: Arc<ContentType>,
    rare: Option<Box<RareSpec>>,
    pub(super) source: Option<Arc<StreamEntry>>,
    inner: Mutex<Inner>,
    /// The published [`Signal`], packed: what [`Self::snapshot`] reads.
    published: AtomicU64,
    /// Where the stream's retained data starts: `spec.base` until retention
    /// drops chunks from its head; only ever moves forward.
    head: AtomicU64,
}

impl std::fmt::Debug for StreamEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEntry")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("signal", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl StreamEntry {
    /// A new entry in `status` whose committed writer state is `state`.
    pub(super) fn new(
        spec: StreamSpec,
        source: Option<Arc<StreamEntry>>,
        state: WriterState,
        status: Status,
    ) -> Arc<Self> {
        let signal = Signal {
            tail: state.tail,
            closed: state.is_closed(),
            gone: status != Status::Live,
        };
        let accesses = spec.ttl_secs.map(|_| {
            let now = Instant::now();
            Box::new(Accesses {
                last: now,
                store_touched: now,
            })
        });
        let rare_set = spec.base != 0
            || spec.ttl_secs.is_some()
            || spec.expires_at_ms.is_some()
            || spec.fork.is_some();
        let rare = rare_set.then(|| {
            Box::new(RareSpec {
                base: spec.base,
                ttl_secs: spec.ttl_secs,
                expires_at_ms: spec.expires_at_ms,
                fork: spec.fork,
            })
        });
        Arc::new(Self {
            id: spec.id,
            created_at_ms: spec.created_at_ms,
            path: spec.path.into_boxed_str(),
            content_type: shared_content_type(ContentType::new(&spec.content_type)),
            rare,
            source,
            inner: Mutex::new(Inner {
                ledger: Ledger::new(state),
                accesses,
                forks: 0,
                status,
                created: false,
                followers: None,
            }),
            published: AtomicU64::new(signal.pack()),
            head: AtomicU64::new(spec.base),
        })
    }

    /// The entry of a stream that is committed already: one a backend
    /// recovered, or one an import finished. `source` is its fork source's
    /// entry.
    pub(super) fn committed(
        stream: RecoveredStream,
        source: Option<Arc<StreamEntry>>,
    ) -> Arc<Self> {
        let status = if stream.soft_deleted {
            Status::SoftDeleted
        } else {
            Status::Live
        };
        let state = WriterState::new(
            stream.tail,
            stream.closed,
            stream.producers,
            stream.stream_seq,
        );
        let entry = Self::new(stream.spec, source, state, status);
        entry.lock().created = true;
        entry.advance_head(stream.head);
        entry
    }

    /// Where the stream's retained data starts now: its base until
    /// retention trimmed it.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Where a read from the start of the stream (`offset=-1`) begins: 0
    /// (through any fork source) until retention trimmed the stream's own
    /// data, its head after.
    pub fn first_position(&self) -> u64 {
        let head = self.head();
        if head > self.base() { head } else { 0 }
    }

    /// Records that the data before `head` was trimmed.
    pub(super) fn advance_head(&self, head: u64) {
        self.head.fetch_max(head, Ordering::AcqRel);
    }

    /// The stream's content type.
    pub fn content_type(&self) -> &ContentType {
        &self.content_type
    }

    /// A stable identifier that differs across delete and re-create.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The stream's path (its identity).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the stream's own data begins (the fork offset, or 0).
    pub(super) fn base(&self) -> u64 {
        self.rare.as_ref().map_or(0, |rare| rare.base)
    }

    /// The configured sliding TTL.
    pub fn ttl_secs(&self) -> Option<u64> {
        self.rare.as_ref().and_then(|rare| rare.ttl_secs)
    }

    /// The configured absolute expiry, Unix milliseconds.
    pub(super) fn expires_at_ms(&self) -> Option<i64> {
        self.rare.as_ref().and_then(|rare| rare.expires_at_ms)
    }

    /// The configured absolute expiry.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        // Derived when asked (rarely): one field less in every entry.
        self.expires_at_ms().and_then(clock::from_unix_ms)
    }

    /// The stream's spec, put back together (for the rare callers that
    /// need all of it: exports, and comparing a repeated creation).
    pub(super) fn spec(&self) -> StreamSpec {
        StreamSpec {
            id: self.id,
            path: self.path.to_string(),
            content_type: self.content_type.raw.to_string(),
            ttl_secs: self.ttl_secs(),
            expires_at_ms: self.expires_at_ms(),
            created_at_ms: self.created_at_ms,
            fork: self.rare.as_ref().and_then(|rare| rare.fork.clone()),
            base: self.base(),
        }
    }

    /// The committed state readers see.
    pub fn snapshot(&self) -> Signal {
        Signal::unpack(self.published.load(Ordering::Acquire))
    }

    /// Whether any reader follows the stream's changes.
    pub(super) fn is_watched(&self) -> bool {
        self.lock()
            .signal()
            .is_some_and(|signal| signal.receiver_count() > 0)
    }

    /// Subscribes to committed changes (the notification hub). The caller
    /// must not hold the entry's lock.
    pub fn subscribe(&self) -> watch::Receiver<Signal> {
        // Created under the lock every publish holds, so the channel starts
        // from the state published last and misses no later change.
        let mut inner = self.lock();
        let current = Signal::of(&inner);
        inner
            .followers
            .get_or_insert_with(Box::default)
            .signal
            .get_or_insert_with(|| watch::Sender::new(current))
            .subscribe()
    }

    /// The `T` the layers above keep for this stream instance, created on
    /// first use and dropped with the entry. The HTTP layer keeps its SSE
    /// fan-out here: one encoded chunk shared by every reader of the
    /// instance, gone when the instance is.
    pub fn attachment<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut inner = self.lock();
        let attachments = &mut inner.followers.get_or_insert_with(Box::default).attachments;
        if let Some(found) = attachments
            .iter()
            .find_map(|any| Arc::clone(any).downcast::<T>().ok())
        {
            return found;
        }
        let created = Arc::new(T::default());
        attachments.push(created.clone());
        created
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the committed state in `inner` to live readers (only when
    /// it changed).
    pub(super) fn publish(&self, inner: &Inner) {
        let next = Signal::of(inner);
        self.published.store(next.pack(), Ordering::Release);
        if let Some(signal) = inner.signal() {
            signal.send_if_modified(|current| {
                let changed = *current != next;
                *current = next;
                changed
            });
        }
    }

    /// Wakes every subscriber even though the published state did not
    /// change: requests waiting for a creation or for a write that failed
    /// re-check the ledger.
    pub(super) fn nudge(&self) {
        // Without a channel nobody waits: a later subscriber checks the
        // ledger after subscribing.
        if let Some(signal) = self.lock().signal() {
            signal.send_modify(|_| {});
        }
    }

    /// Bytes of its own the stream holds in storage (its committed data
    /// past its fork point).
    pub(super) fn own_bytes(&self, inner: &Inner) -> u64 {
        inner.ledger.committed.tail.saturating_sub(self.base())
    }

    /// Whether the stream's absolute expiry or sliding TTL has passed.
    pub(super) fn is_expired(&self, inner: &Inner, now: Instant) -> bool {
        // Compared in the spec's own unit: no date built per request.
        let Some(rare) = &self.rare else {
            return false;
        };
        if let Some(at_ms) = rare.expires_at_ms
            && clock::unix_ms() >= at_ms
        {
            return true;
        }
        match (rare.ttl_secs, &inner.accesses) {
            (Some(ttl), Some(accesses)) => {
                now.saturating_duration_since(accesses.last) >= Duration::from_secs(ttl)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::WriterView;

    /// Every stream's entry stays in memory: with its `Arc`'s counts and
    /// glibc's 8-byte header it fits a 160-byte chunk (144 and more bytes
    /// cost 176).
    #[test]
    fn an_entry_stays_small() {
        let size = std::mem::size_of::<StreamEntry>();
        assert!(size <= 136, "StreamEntry is {size} bytes");
    }

    fn spec(ttl_secs: Option<u64>, expires_at_ms: Option<i64>) -> StreamSpec {
        StreamSpec {
            id: 7,
            path: "/v1/stream/a".into(),
            content_type: "application/json".into(),
            ttl_secs,
            expires_at_ms,
            created_at_ms: 0,
            fork: None,
            base: 4,
        }
    }

    #[test]
    fn publishing_notifies_only_on_change_and_nudging_always() {
        let entry = StreamEntry::new(spec(None, None), None, WriterState::default(), Status::Live);
        let mut signal = entry.subscribe();
        signal.borrow_and_update();
        entry.publish(&entry.lock());
        assert!(!signal.has_changed().expect("open"));
        entry.nudge();
        assert!(signal.has_changed().expect("open"));
        signal.borrow_and_update();
        {
            let mut inner = entry.lock();
            inner.ledger.committed.tail = 10;
            inner.status = Status::SoftDeleted;
            entry.publish(&inner);
            assert_eq!(entry.own_bytes(&inner), 6);
        }
        assert_eq!(
            *signal.borrow_and_update(),
            Signal {
                tail: 10,
                closed: false,
                gone: true
            }
        );
    }

    #[test]
    fn committed_entries_are_created_and_keep_their_state() {
        let stream = RecoveredStream {
            spec: spec(None, None),
            head: 0,
            tail: 9,
            closed: Some(None),
            producers: Vec::new(),
            stream_seq: Some("b".into()),
            soft_deleted: true,
        };
        let entry = StreamEntry::committed(stream, None);
        let inner = entry.lock();
        assert!(inner.created);
        assert_eq!(inner.status, Status::SoftDeleted);
        assert_eq!(inner.ledger.stream_seq(), Some("b"));
        assert!(entry.content_type().is_json());
        drop(inner);
        assert_eq!(
            entry.snapshot(),
            Signal {
                tail: 9,
                closed: true,
                gone: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sliding_ttl_runs_from_the_last_access() {
        let entry = StreamEntry::new(
            spec(Some(2), None),
            None,
            WriterState::default(),
            Status::Live,
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!entry.is_expired(&entry.lock(), Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(entry.is_expired(&entry.lock(), Instant::now()));
        let past = StreamEntry::new(
            spec(None, Some(clock::unix_ms() - 1)),
            None,
            WriterState::default(),
            Status::Live,
        );
        assert!(past.is_expired(&past.lock(), Instant::now()));
    }

    /// Every stream in memory has an entry, so its size is much of what
    /// an idle stream costs: with the `Arc`'s two counts it fills a
    /// 256-byte allocation, not 512 as it did with the whole spec inline.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_entry_with_its_counts_fits_256_bytes() {
        let size = std::mem::size_of::<StreamEntry>();
        assert!(size + 16 <= 256 - 8, "{size} bytes");
    }

    #[test]
    fn the_spec_put_back_together_is_the_one_given() {
        let fork = crate::storage::ForkLink {
            source: 3,
            source_path: "/v1/stream/src".into(),
            offset: 4,
            sub_offset: 1,
        };
        let mut given = spec(Some(60), Some(1_000));
        given.content_type = "Text/Plain; charset=utf-8".into();
        given.created_at_ms = 12;
        given.fork = Some(fork);
        let entry = StreamEntry::new(given.clone(), None, WriterState::default(), Status::Live);
        assert_eq!(entry.spec(), given);
        assert_eq!(entry.ttl_secs(), Some(60));
        assert!(entry.content_type().is_text_like());
        let plain = spec(None, None);
        let entry = StreamEntry::new(plain.clone(), None, WriterState::default(), Status::Live);
        assert_eq!(entry.spec(), plain);
        assert!(entry.lock().accesses.is_none());
    }

    #[test]
    fn attachments_are_one_per_type() {
        #[derive(Default)]
        struct Counter(std::sync::atomic::AtomicUsize);
        let entry = StreamEntry::new(spec(None, None), None, WriterState::default(), Status::Live);
        let a = entry.attachment::<Counter>();
        a.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = entry.attachment::<Counter>();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*entry.attachment::<String>(), "");
    }
}
