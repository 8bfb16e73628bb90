//! The chunk a stream is writing, packed for the state every stream keeps
//! in memory.

use super::super::chunk::{Active, INDEX_INTERVAL};

/// An `Option<Active>` in 24 bytes instead of 40: the index's next offset
/// (always a whole number of [`INDEX_INTERVAL`]s, see [`Active::add`]) is
/// kept as that number, beside the entry count in one word, and `None` is
/// that word at 0 (an active chunk's next offset is at least one
/// interval). With it the store's `Stream`, which holds two of these (the
/// committed chunk and its writer's), fits a smaller allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedActive {
    start: u64,
    len: u64,
    index: u64,
}

impl PackedActive {
    /// `active`, packed.
    pub fn pack(active: Option<Active>) -> Self {
        let Some(active) = active else {
            return Self::default();
        };
        // Rounded up (and to one at least) if ever not whole: an index
        // entry then comes a little later, which costs a read some parsing,
        // never a wrong answer.
        let intervals = active.index_next.div_ceil(INDEX_INTERVAL).max(1);
        let intervals = u32::try_from(intervals).unwrap_or(u32::MAX);
        Self {
            start: active.start,
            len: active.len,
            index: (u64::from(intervals) << 32) | u64::from(active.index_entries),
        }
    }

    /// The chunk, if any.
    pub fn get(self) -> Option<Active> {
        (self.index != 0).then(|| Active {
            start: self.start,
            len: self.len,
            index_entries: self.index as u32,
            index_next: (self.index >> 32) * INDEX_INTERVAL,
        })
    }

    /// Its three words, to keep in atomics.
    pub fn words(self) -> [u64; 3] {
        [self.start, self.len, self.index]
    }

    /// The value whose [`words`](Self::words) these are.
    pub fn from_words([start, len, index]: [u64; 3]) -> Self {
        Self { start, len, index }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::chunk::{Active, INDEX_INTERVAL};
    use super::PackedActive;

    /// Whatever `Active::new` and `Active::add` make comes back unchanged,
    /// and `None` stays `None`.
    #[test]
    fn active_chunks_round_trip() {
        assert_eq!(PackedActive::pack(None).get(), None);
        let mut active = Active::new(7);
        assert_eq!(PackedActive::pack(Some(active)).get(), Some(active));
        for size in [10, 70_000, 5, 300_000, 1] {
            let _ = active.add(active.start + active.len, size);
            let packed = PackedActive::pack(Some(active));
            assert_eq!(packed.get(), Some(active));
            assert_eq!(PackedActive::from_words(packed.words()), packed);
        }
        assert!(active.index_entries >= 2 && active.index_next > INDEX_INTERVAL);
    }
}
