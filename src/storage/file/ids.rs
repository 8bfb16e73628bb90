//! Maps keyed by stream id with a cheap hash.
//!
//! The writer looks a stream's head up several times per append (planning,
//! the undo of a failed batch); the standard SipHash cost more than the
//! rest of the lookup. Stream ids are assigned by the store itself (a
//! counter), never taken from a request, so they cannot be chosen to make
//! buckets collide: spreading them with splitmix64's finaliser is enough.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::super::{StreamId, spread};

/// Hashes stream ids (and other `u64` keys) with [`spread`].
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = spread(self.0 ^ n);
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
}

/// A map from stream id to `V` hashed by [`IdHasher`].
pub type IdMap<V> = HashMap<StreamId, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::IdHasher;

    /// Consecutive ids land in different buckets of a small table and
    /// different top bits (the two parts of the hash a map uses).
    #[test]
    fn consecutive_ids_spread() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (0..64u64).map(|id| build.hash_one(id)).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 63).collect();
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 32, "low bits: {}", low.len());
        assert!(high.len() > 32, "top bits: {}", high.len());
    }
}
