//! Per-stream writer state: what is committed, and what is queued in storage
//! but not yet acknowledged.
//!
//! Validation ([`super::rules`]: producer rules, `Stream-Seq`, closed
//! checks) runs against the *effective* state — committed plus pending — so
//! appends to one stream can be pipelined into a backend's group commit.
//! Readers only ever see the committed state. Both are a [`WriterView`].

use std::collections::{HashMap, VecDeque};

use super::rules::WriterView;
use crate::protocol::producer::ProducerState;
use crate::storage::ClosedBy;

/// State as of the last acknowledged mutation.
#[derive(Clone, Debug, Default)]
pub struct WriterState {
    /// Position after the last committed byte.
    pub tail: u64,
    /// The rest, once any of it is set: boxed, as most streams are never
    /// closed and never see a producer or a `Stream-Seq`, and every
    /// stream's state stays in memory.
    extras: Option<Box<WriterExtras>>,
}

/// The writer state besides the tail.
#[derive(Clone, Debug, Default)]
pub struct WriterExtras {
    /// `Some` once closed; the inner value names the closing producer.
    pub closed: Option<Option<ClosedBy>>,
    /// Producer states by `Producer-Id`.
    pub producers: HashMap<String, ProducerState>,
    /// The last accepted `Stream-Seq`.
    pub stream_seq: Option<String>,
}

impl WriterState {
    /// The state at `tail` with these values.
    pub fn new(
        tail: u64,
        closed: Option<Option<ClosedBy>>,
        producers: impl IntoIterator<Item = (String, ProducerState)>,
        stream_seq: Option<String>,
    ) -> Self {
        let producers: HashMap<_, _> = producers.into_iter().collect();
        let set = closed.is_some() || !producers.is_empty() || stream_seq.is_some();
        Self {
            tail,
            extras: set.then(|| {
                Box::new(WriterExtras {
                    closed,
                    producers,
                    stream_seq,
                })
            }),
        }
    }

    /// The state besides the tail, for changing it.
    pub fn extras_mut(&mut self) -> &mut WriterExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Every producer's state, in no particular order.
    pub fn producers(&self) -> impl Iterator<Item = (&String, &ProducerState)> {
        self.extras
            .iter()
            .flat_map(|extras| extras.producers.iter())
    }

    /// The closing state: `Some` once closed.
    pub fn closing(&self) -> &Option<Option<ClosedBy>> {
        const OPEN: &Option<Option<ClosedBy>> = &None;
        self.extras.as_ref().map_or(OPEN, |extras| &extras.closed)
    }

    /// Whether the stream is closed.
    pub fn is_closed(&self) -> bool {
        self.closing().is_some()
    }
}

/// A mutation queued in storage, not yet acknowledged. Kept small: every
/// stream written to keeps its queue's capacity, and most mutations change
/// only the tail.
#[derive(Clone, Debug)]
pub struct PendingOp {
    /// Its number within the stream.
    pub op: u64,
    /// The tail once it is applied.
    pub end: u64,
    /// What else it changes, when anything does.
    pub changes: Option<Box<PendingChanges>>,
}

/// The writer-state changes of a pending mutation besides its tail.
#[derive(Clone, Debug)]
pub struct PendingChanges {
    /// Set when it closes the stream.
    pub close: Option<Option<ClosedBy>>,
    /// The producer state it sets.
    pub producer: Option<(String, ProducerState)>,
    /// The `Stream-Seq` it sets.
    pub stream_seq: Option<String>,
}

/// Committed state plus the queue of pending operations.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Acknowledged state.
    pub committed: WriterState,
    /// Boxed, and only while the stream is in use (see
    /// [`Ledger::release_idle`]): every stream's entry stays in memory, and
    /// an absent queue costs a pointer, not a `VecDeque`'s 32 bytes.
    #[allow(clippy::box_collection)]
    pending: Option<Box<VecDeque<PendingOp>>>,
    next_op: u64,
}

impl Ledger {
    /// A ledger whose committed state is `state`.
    pub fn new(state: WriterState) -> Self {
        Self {
            committed: state,
            pending: None,
            next_op: 0,
        }
    }

    /// Whether anything is queued and unacknowledged.
    #[cfg(test)]
    pub fn has_pending(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| !pending.is_empty())
    }

    /// Queues an operation; returns its number.
    pub fn push(
        &mut self,
        end: u64,
        close: Option<Option<ClosedBy>>,
        producer: Option<(String, ProducerState)>,
        stream_seq: Option<String>,
    ) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        let changes = (close.is_some() || producer.is_some() || stream_seq.is_some()).then(|| {
            Box::new(PendingChanges {
                close,
                producer,
                stream_seq,
            })
        });
        self.pending
            .get_or_insert_with(Box::default)
            .push_back(PendingOp { op, end, changes });
        op
    }

    /// Records that operation `op` (and, storage being ordered, every earlier
    /// one) is acknowledged.
    pub fn acknowledge(&mut self, op: u64) {
        let Some(pending) = self.pending.as_deref_mut() else {
            return;
        };
        while pending.front().is_some_and(|front| front.op <= op) {
            let Some(done) = pending.pop_front() else {
                break;
            };
            let committed = &mut self.committed;
            committed.tail = committed.tail.max(done.end);
            let Some(changes) = done.changes else {
                continue;
            };
            let PendingChanges {
                close,
                producer,
                stream_seq,
            } = *changes;
            let state = committed.extras_mut();
            if close.is_some() && state.closed.is_none() {
                state.closed = close;
            }
            if let Some((id, producer)) = producer {
                let slot = state.producers.entry(id).or_insert(producer);
                *slot = (*slot).max(producer);
            }
            if let Some(seq) = stream_seq
                && state
                    .stream_seq
                    .as_deref()
                    .is_none_or(|current| seq.as_str() > current)
            {
                state.stream_seq = Some(seq);
            }
        }
    }

    /// Frees the queue when nothing is pending: a stream keeps it between
    /// appends (no allocation per append), not while idle.
    pub fn release_idle(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|pending| pending.is_empty())
        {
            self.pending = None;
        }
    }

    /// Records that operation `op` failed: it and every later queued
    /// operation are dropped (storage refuses them, as they were built on it).
    pub fn fail(&mut self, op: u64) {
        if let Some(pending) = self.pending.as_deref_mut() {
            pending.retain(|pending| pending.op < op);
        }
    }

    /// The changes of the pending operations, newest first.
    fn pending_changes(&self) -> impl Iterator<Item = &PendingChanges> {
        self.pending
            .iter()
            .flat_map(|pending| pending.iter().rev())
            .filter_map(|op| op.changes.as_deref())
    }
}

/// The committed state.
impl WriterView for WriterState {
    fn tail(&self) -> u64 {
        self.tail
    }

    fn closed(&self) -> Option<&Option<ClosedBy>> {
        self.closing().as_ref()
    }

    fn producer(&self, id: &str) -> Option<ProducerState> {
        self.extras.as_ref()?.producers.get(id).copied()
    }

    fn stream_seq(&self) -> Option<&str> {
        self.extras.as_ref()?.stream_seq.as_deref()
    }
}

/// The effective state: committed plus pending.
impl WriterView for Ledger {
    fn tail(&self) -> u64 {
        self.pending
            .as_ref()
            .and_then(|pending| pending.back())
            .map_or(self.committed.tail, |op| op.end)
    }

    fn closed(&self) -> Option<&Option<ClosedBy>> {
        self.pending_changes()
            .find_map(|op| op.close.as_ref())
            .or(WriterView::closed(&self.committed))
    }

    fn producer(&self, id: &str) -> Option<ProducerState> {
        self.pending_changes()
            .find_map(|op| {
                op.producer
                    .as_ref()
                    .filter(|(pid, _)| pid == id)
                    .map(|(_, s)| *s)
            })
            .or_else(|| self.committed.producer(id))
    }

    fn stream_seq(&self) -> Option<&str> {
        self.pending_changes()
            .find_map(|op| op.stream_seq.as_deref())
            .or(self.committed.stream_seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer(epoch: u64, last_seq: u64) -> Option<(String, ProducerState)> {
        Some(("p".into(), ProducerState { epoch, last_seq }))
    }

    #[test]
    fn effective_state_sees_pending_and_commits_in_order() {
        let mut ledger = Ledger::default();
        let a = ledger.push(10, None, producer(0, 0), Some("a".into()));
        let b = ledger.push(20, Some(None), producer(0, 1), None);
        assert_eq!(ledger.tail(), 20);
        assert!(ledger.closed().is_some());
        assert_eq!(
            ledger.producer("p"),
            Some(ProducerState {
                epoch: 0,
                last_seq: 1
            })
        );
        assert_eq!(ledger.stream_seq(), Some("a"));
        assert_eq!(ledger.committed.tail, 0);
        // Acknowledging the later op implies the earlier one.
        ledger.acknowledge(b);
        ledger.acknowledge(a);
        assert_eq!(ledger.committed.tail, 20);
        assert!(ledger.committed.is_closed());
        assert_eq!(ledger.committed.producer("p").map(|p| p.last_seq), Some(1));
        assert!(!ledger.has_pending());
    }

    #[test]
    fn an_idle_ledger_releases_its_queue_and_a_busy_one_keeps_it() {
        let mut ledger = Ledger::default();
        let a = ledger.push(10, None, None, None);
        ledger.release_idle();
        assert!(ledger.has_pending(), "a pending op is kept");
        ledger.acknowledge(a);
        assert!(ledger.pending.is_some());
        ledger.release_idle();
        assert!(ledger.pending.is_none());
        assert_eq!(ledger.committed.tail, 10);
    }

    #[test]
    fn failure_drops_the_op_and_its_successors() {
        let mut ledger = Ledger::default();
        let a = ledger.push(10, None, None, None);
        let b = ledger.push(20, None, producer(0, 0), None);
        let _c = ledger.push(30, None, None, None);
        ledger.fail(b);
        assert_eq!(ledger.tail(), 10);
        assert_eq!(ledger.producer("p"), None);
        ledger.acknowledge(a);
        assert_eq!(ledger.committed.tail, 10);
    }
}
