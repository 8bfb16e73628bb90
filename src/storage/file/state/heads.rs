//! The writer's view of its shard's streams.
//!
//! A shard's writer keeps, for every stream, where it has written up to:
//! ahead of the committed [`State`](super::State) by the batches written
//! but not yet published. That view lives in the shared [`Stream`] itself
//! ([`WriterHead`]), and the writer's map holds one pointer per stream: a
//! map of heads beside the streams cost about 107 bytes per idle stream
//! (64-byte slots at a power-of-two capacity), one of pointers about 15.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::super::StreamId;
use super::super::chunk::Active;
use super::{PackedActive, Stream, StreamSet};

/// A copy of the writer's view of a stream, taken to change it (and kept
/// to undo a batch that could not be written).
#[derive(Clone)]
pub struct Head {
    /// The shared stream.
    pub stream: Arc<Stream>,
    /// The tail after everything written.
    pub tail: u64,
    /// The chunk being written.
    pub active: Option<Active>,
}

impl Head {
    /// The writer's view of `stream` as last saved.
    pub fn of(stream: Arc<Stream>) -> Self {
        let (tail, active) = stream.head.load();
        Self {
            stream,
            tail,
            active,
        }
    }

    /// Makes this the writer's view of its stream.
    pub fn save(&self) {
        self.stream.head.store(self.tail, self.active);
    }
}

/// Where a [`Stream`] keeps its writer's view. Atomics because the stream
/// is shared, but only its shard's writer reads or writes them (and the
/// replay before that writer starts, which hands them over with the
/// thread), so `Relaxed` is enough: nothing else is ordered by them.
#[derive(Default)]
pub struct WriterHead {
    tail: AtomicU64,
    active: [AtomicU64; 3],
}

impl WriterHead {
    fn load(&self) -> (u64, Option<Active>) {
        let tail = self.tail.load(Ordering::Relaxed);
        let words = self
            .active
            .each_ref()
            .map(|word| word.load(Ordering::Relaxed));
        (tail, PackedActive::from_words(words).get())
    }

    fn store(&self, tail: u64, active: Option<Active>) {
        self.tail.store(tail, Ordering::Relaxed);
        let words = PackedActive::pack(active).words();
        for (word, value) in self.active.iter().zip(words) {
            word.store(value, Ordering::Relaxed);
        }
    }
}

/// The streams a writer writes to, by id; each keeps its writer's view.
#[derive(Default)]
pub struct Heads(StreamSet);

impl Heads {
    /// A copy of the writer's view of stream `id`, if it has the stream.
    pub fn snapshot(&self, id: StreamId) -> Option<Head> {
        self.0.get(id).cloned().map(Head::of)
    }

    /// The stream `id`, if the writer has it.
    pub fn stream(&self, id: StreamId) -> Option<&Arc<Stream>> {
        self.0.get(id)
    }

    /// Keeps `head` as the writer's view of its stream, adding the stream
    /// if new.
    pub fn insert(&mut self, head: Head) {
        head.save();
        self.0.insert(head.stream);
    }

    /// Forgets stream `id`.
    pub fn remove(&mut self, id: StreamId) -> Option<Arc<Stream>> {
        self.0.remove(id)
    }

    /// How many streams the writer has.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The streams, their views kept in them.
    pub fn into_streams(self) -> impl Iterator<Item = Arc<Stream>> {
        self.0.into_streams()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::super::chunk::Active;
    use super::super::{State, Stream};
    use super::{Head, Heads};

    fn stream(id: u64) -> Arc<Stream> {
        Arc::new(Stream::new(id, State::new(Box::default(), 0, None)))
    }

    /// A head kept is what a later snapshot sees, with or without a chunk
    /// being written; a removed stream has none.
    #[test]
    fn a_kept_head_comes_back() {
        let mut heads = Heads::default();
        let mut active = Active::new(10);
        let _ = active.add(10, 70_000);
        let _ = active.add(70_010, 5);
        heads.insert(Head {
            stream: stream(7),
            tail: 70_015,
            active: Some(active),
        });
        heads.insert(Head {
            stream: stream(8),
            tail: 3,
            active: None,
        });
        let seven = heads.snapshot(7).expect("stream 7");
        assert_eq!((seven.tail, seven.active), (70_015, Some(active)));
        assert_eq!(seven.stream.id, 7);
        let eight = heads.snapshot(8).expect("stream 8");
        assert_eq!((eight.tail, eight.active), (3, None));

        // A chunk dropped (a trim past the tail) reads back as none.
        Head {
            active: None,
            tail: 90_000,
            ..seven
        }
        .save();
        let seven = heads.snapshot(7).expect("stream 7");
        assert_eq!((seven.tail, seven.active), (90_000, None));

        assert_eq!(heads.remove(7).map(|s| s.id), Some(7));
        assert!(heads.snapshot(7).is_none());
        assert_eq!(heads.len(), 1);
    }
}
