//! A set of streams found by id.
//!
//! Every stream sits in the store's map and in its shard writer's, so each
//! map's slot is part of what an idle stream costs: keyed by the id inside
//! the [`Stream`], a slot is one pointer (9 bytes with its control byte)
//! instead of a separate id and pointer (17).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use super::super::super::StreamId;
use super::super::ids::IdHasher;
use super::Stream;

/// A stream in a [`StreamSet`], equal to another by id.
struct ById(Arc<Stream>);

impl Borrow<StreamId> for ById {
    fn borrow(&self) -> &StreamId {
        &self.0.id
    }
}

impl Hash for ById {
    // As the id's own hash, which `Borrow` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

/// Streams by id, at most one per id.
#[derive(Default)]
pub struct StreamSet(HashSet<ById, BuildHasherDefault<IdHasher>>);

impl StreamSet {
    /// Stream `id`, if present.
    pub fn get(&self, id: StreamId) -> Option<&Arc<Stream>> {
        self.0.get(&id).map(|entry| &entry.0)
    }

    /// Adds `stream`, replacing one with its id.
    pub fn insert(&mut self, stream: Arc<Stream>) {
        self.0.replace(ById(stream));
    }

    /// Takes stream `id` out.
    pub fn remove(&mut self, id: StreamId) -> Option<Arc<Stream>> {
        self.0.take(&id).map(|entry| entry.0)
    }

    /// How many streams.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The streams, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Stream>> {
        self.0.iter().map(|entry| &entry.0)
    }

    /// The streams, in no order, taken out.
    pub fn into_streams(self) -> impl Iterator<Item = Arc<Stream>> {
        self.0.into_iter().map(|entry| entry.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{State, Stream};
    use super::StreamSet;

    /// Found by id, replaced by a stream of the same id, gone once removed.
    #[test]
    fn streams_are_found_by_id() {
        let stream = |id| Arc::new(Stream::new(id, State::new(Box::default(), 0, None)));
        let mut set = StreamSet::default();
        let first = stream(5);
        set.insert(first.clone());
        set.insert(stream(6));
        assert!(set.get(5).is_some_and(|s| Arc::ptr_eq(s, &first)));
        let second = stream(5);
        set.insert(second.clone());
        assert_eq!(set.len(), 2);
        assert!(set.get(5).is_some_and(|s| Arc::ptr_eq(s, &second)));
        assert!(set.remove(5).is_some_and(|s| Arc::ptr_eq(&s, &second)));
        assert!(set.get(5).is_none() && set.remove(5).is_none());
        let mut ids: Vec<u64> = set.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [6]);
    }
}
