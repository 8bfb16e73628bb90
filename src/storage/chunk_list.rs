//! Chunk bookkeeping shared by the backends: where each retained chunk of a
//! stream starts and when it was last written, the rule that starts a new
//! chunk, and what a [`super::Mutation::Trim`] drops. One entry per chunk
//! (a few MiB of data), never one per record.

use super::ChunkInfo;

/// One chunk: where it starts and when its newest record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Stream position of its first byte.
    pub start: u64,
    /// Unix milliseconds of its newest record.
    pub last_write_ms: i64,
}

/// A stream's chunks, oldest first; the last one is the one being written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkList {
    chunks: Chunks,
}

/// The chunks themselves: most streams never leave their first chunk, and
/// every stream's list stays in memory, so one chunk is kept in place
/// rather than in an allocation of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Chunks {
    #[default]
    None,
    One(Chunk),
    Many(Vec<Chunk>),
}

impl Chunks {
    fn as_slice(&self) -> &[Chunk] {
        match self {
            Self::None => &[],
            Self::One(chunk) => std::slice::from_ref(chunk),
            Self::Many(chunks) => chunks,
        }
    }

    fn push(&mut self, chunk: Chunk) {
        match self {
            Self::None => *self = Self::One(chunk),
            Self::One(first) => *self = Self::Many(vec![*first, chunk]),
            Self::Many(chunks) => chunks.push(chunk),
        }
    }

    fn last_mut(&mut self) -> Option<&mut Chunk> {
        match self {
            Self::None => None,
            Self::One(chunk) => Some(chunk),
            Self::Many(chunks) => chunks.last_mut(),
        }
    }

    /// Takes out the first `count` chunks.
    fn drain_front(&mut self, count: usize) -> Vec<Chunk> {
        let all = std::mem::take(self).into_vec();
        let (dropped, kept) = all.split_at(count.min(all.len()));
        *self = Self::from_vec(kept.to_vec());
        dropped.to_vec()
    }

    fn into_vec(self) -> Vec<Chunk> {
        match self {
            Self::None => Vec::new(),
            Self::One(chunk) => vec![chunk],
            Self::Many(chunks) => chunks,
        }
    }

    fn from_vec(chunks: Vec<Chunk>) -> Self {
        match chunks.as_slice() {
            [] => Self::None,
            [one] => Self::One(*one),
            _ => Self::Many(chunks),
        }
    }
}

/// Whether a record of `record_bytes` starts a new chunk, given the bytes
/// the current chunk holds (`None`: there is none yet). A chunk is never
/// empty and a record never split, so a record larger than `chunk_bytes`
/// gets a chunk of its own.
pub fn starts_new_chunk(current: Option<u64>, record_bytes: u64, chunk_bytes: u64) -> bool {
    match current {
        None => true,
        Some(used) => used > 0 && used.saturating_add(record_bytes) > chunk_bytes,
    }
}

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ChunkList {
    /// A list holding `chunks` (oldest first).
    pub fn from_chunks(chunks: Vec<Chunk>) -> Self {
        Self {
            chunks: Chunks::from_vec(chunks),
        }
    }

    /// The chunks, oldest first.
    pub fn chunks(&self) -> &[Chunk] {
        self.chunks.as_slice()
    }

    /// The chunk being written, if any.
    pub fn active(&self) -> Option<&Chunk> {
        self.chunks().last()
    }

    /// Starts a new chunk at `start`.
    pub fn start_chunk(&mut self, start: u64, now_ms: i64) {
        self.chunks.push(Chunk {
            start,
            last_write_ms: now_ms,
        });
    }

    /// Records a write into the current chunk.
    pub fn touch(&mut self, now_ms: i64) {
        if let Some(active) = self.chunks.last_mut() {
            active.last_write_ms = active.last_write_ms.max(now_ms);
        }
    }

    /// Where the retained data starts: the first chunk's start, or `tail`
    /// when there is no chunk.
    pub fn head(&self, tail: u64) -> u64 {
        self.chunks().first().map_or(tail, |c| c.start)
    }

    /// The index of the chunk holding position `pos`, if retained.
    pub fn index_of(&self, pos: u64) -> Option<usize> {
        let after = self.chunks().partition_point(|c| c.start <= pos);
        after.checked_sub(1)
    }

    /// Where chunk `index` ends, given the stream's tail.
    pub fn end_of(&self, index: usize, tail: u64) -> u64 {
        self.chunks().get(index + 1).map_or(tail, |c| c.start)
    }

    /// The chunks as [`ChunkInfo`]s.
    pub fn infos(&self, tail: u64) -> Vec<ChunkInfo> {
        let chunks = self.chunks();
        (0..chunks.len())
            .map(|i| ChunkInfo {
                start: chunks[i].start,
                end: self.end_of(i, tail),
                last_write_ms: chunks[i].last_write_ms,
            })
            .collect()
    }

    /// Drops every chunk that ends at or before `before`; returns the
    /// dropped chunks, oldest first.
    pub fn trim(&mut self, before: u64, tail: u64) -> Vec<Chunk> {
        let count = self.chunks().len();
        let keep_from = (0..count)
            .find(|&i| self.end_of(i, tail) > before)
            .unwrap_or(count);
        if keep_from == 0 {
            return Vec::new();
        }
        self.chunks.drain_front(keep_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(starts: &[u64]) -> ChunkList {
        let mut list = ChunkList::default();
        for (i, &start) in starts.iter().enumerate() {
            list.start_chunk(start, i as i64);
        }
        list
    }

    #[test]
    fn a_record_never_splits_and_chunks_are_never_empty() {
        assert!(starts_new_chunk(None, 1, 10));
        assert!(
            !starts_new_chunk(Some(0), 50, 10),
            "an empty chunk takes anything"
        );
        assert!(!starts_new_chunk(Some(4), 6, 10));
        assert!(starts_new_chunk(Some(4), 7, 10));
    }

    #[test]
    fn trim_drops_whole_chunks_only() {
        let mut chunks = list(&[0, 10, 20]);
        assert!(
            chunks.trim(9, 25).is_empty(),
            "a cut inside a chunk keeps it"
        );
        assert_eq!(chunks.head(25), 0);
        let dropped = chunks.trim(20, 25);
        assert_eq!(dropped.iter().map(|c| c.start).collect::<Vec<_>>(), [0, 10]);
        assert_eq!(chunks.head(25), 20);
        assert_eq!(
            chunks.infos(25),
            vec![ChunkInfo {
                start: 20,
                end: 25,
                last_write_ms: 2
            }]
        );
        assert_eq!(
            chunks.trim(25, 25).len(),
            1,
            "the last chunk goes once it ends before"
        );
        assert_eq!(chunks.head(25), 25);
        assert!(chunks.infos(25).is_empty());
    }

    /// One chunk lives in the list itself; more move to an allocation and
    /// back as they are trimmed.
    #[test]
    fn one_chunk_is_kept_in_place() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<ChunkList>(), 24);
        let mut chunks = list(&[0]);
        assert!(matches!(chunks.chunks, Chunks::One(_)));
        chunks.touch(9);
        assert_eq!(chunks.active().map(|c| c.last_write_ms), Some(9));
        chunks.start_chunk(10, 10);
        chunks.start_chunk(20, 11);
        assert_eq!(chunks.infos(25).len(), 3);
        assert_eq!(chunks.trim(20, 25).len(), 2);
        assert!(matches!(
            chunks.chunks,
            Chunks::One(Chunk { start: 20, .. })
        ));
        assert_eq!(chunks.trim(25, 25).len(), 1);
        assert_eq!(chunks, ChunkList::default());
    }

    #[test]
    fn positions_map_to_their_chunk() {
        let chunks = list(&[5, 10, 20]);
        assert_eq!(chunks.index_of(4), None);
        assert_eq!(chunks.index_of(5), Some(0));
        assert_eq!(chunks.index_of(19), Some(1));
        assert_eq!(chunks.index_of(99), Some(2));
        assert_eq!(chunks.end_of(1, 30), 20);
        assert_eq!(chunks.end_of(2, 30), 30);
    }
}
