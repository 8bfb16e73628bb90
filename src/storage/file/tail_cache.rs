//! The tail cache: the newest records of a shard's streams, kept in memory
//! within a byte budget so live readers at the tail need no file read.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;

use super::state::{RECENT_ENTRY_COST, RECENT_MAX_RECORD, RECENT_PER_STREAM, State, Stream};

/// A stream's recent records, `(end, data)` oldest first. Boxed: every
/// stream's state stays in memory and most hold no records (an idle
/// stream's are released), so an empty queue costs one pointer, not the
/// 32 bytes of a `VecDeque`.
#[derive(Default)]
#[allow(clippy::box_collection)]
pub struct RecentQueue(Option<Box<VecDeque<(u64, Bytes)>>>);

impl RecentQueue {
    /// Holds no record.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|queue| queue.is_empty())
    }

    /// How many records it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    /// Holds memory (records or room for them).
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }

    /// The oldest record.
    pub fn front(&self) -> Option<&(u64, Bytes)> {
        self.0.as_ref()?.front()
    }

    /// Takes the oldest record.
    pub fn pop_front(&mut self) -> Option<(u64, Bytes)> {
        self.0.as_mut()?.pop_front()
    }

    /// Adds the newest record. Most streams hold one record when idle: a
    /// new queue has room for one, not the four a first push reserves.
    pub fn push_back(&mut self, record: (u64, Bytes)) {
        self.0
            .get_or_insert_with(|| Box::new(VecDeque::with_capacity(1)))
            .push_back(record);
    }

    /// The records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, Bytes)> {
        self.0.iter().flat_map(|queue| queue.iter())
    }

    /// Drops the records and frees the queue.
    pub fn release(&mut self) {
        self.0 = None;
    }
}

/// A record's cost as [`State::recent_bytes`] counts it: a kept record is
/// at most [`RECENT_MAX_RECORD`] bytes, and a stream's sum at most
/// [`RECENT_PER_STREAM`] and one more record, so it fits in 16 bits.
pub fn recent_cost(bytes: usize) -> u16 {
    u16::try_from(bytes).unwrap_or(u16::MAX)
}

const _: () = assert!(
    RECENT_PER_STREAM + RECENT_MAX_RECORD + RECENT_ENTRY_COST <= u16::MAX as usize,
    "a stream's recent records' cost must fit State::recent_bytes"
);

/// Keeps the newest records of streams in memory within a byte budget,
/// evicting the streams appended to least recently.
///
/// The order is a queue of `(tick, stream)`, oldest first; a stream's
/// place is the entry whose tick is its [`State::cached_at`], and entries
/// it left behind are skipped when reached. Ticks are 32 bits (4 bytes
/// less in every stream's state) and wrap: an entry left behind is dropped
/// by the next compaction, well before 2^32 newer ticks could make its
/// tick its stream's again. A queue, not a tree: its
/// entries sit in one buffer instead of thousands of small nodes, each of
/// which would keep a heap page resident among the freed transients of
/// the appends that made it. A stream still in the newer half of the order
/// keeps its place (the order is then approximate within that half, which
/// is what lets most appends at many streams skip moving it).
///
/// A checkpoint may drop an idle stream's records without the cache
/// (see [`State::release_idle_recent`]): their cost stays counted in the
/// stream's `recent_bytes` and here until the cache next touches the
/// stream.
pub struct TailCache {
    cap: usize,
    pub(super) used: usize,
    tick: u32,
    order: VecDeque<(u32, Arc<Stream>)>,
    /// Streams with a place in `order`.
    placed: usize,
}

impl TailCache {
    /// A cache of at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            used: 0,
            tick: 0,
            order: VecDeque::new(),
            placed: 0,
        }
    }

    /// Adds `data`, ending at `end`, to the records of `stream` (whose
    /// state is `state`, locked for writing).
    pub(super) fn remember(
        &mut self,
        stream: &Arc<Stream>,
        state: &mut State,
        end: u64,
        data: Bytes,
    ) {
        if data.len() > RECENT_MAX_RECORD || self.cap == 0 || state.recent.is_empty() {
            // The recent records must reach the tail without a gap (and
            // records a checkpoint released are still counted here).
            self.used -= state.recent_bytes as usize;
            state.recent_bytes = 0;
            state.recent.release();
            if data.len() > RECENT_MAX_RECORD || self.cap == 0 {
                return;
            }
        }
        let cost = data.len() + RECENT_ENTRY_COST;
        state.recent_bytes += recent_cost(cost);
        self.used += cost;
        state.recent.push_back((end, data));
        while state.recent_bytes as usize > RECENT_PER_STREAM {
            let Some((_, old)) = state.recent.pop_front() else {
                break;
            };
            state.recent_bytes -= recent_cost(old.len() + RECENT_ENTRY_COST);
            self.used -= old.len() + RECENT_ENTRY_COST;
        }
        let half = u32::try_from(self.placed / 2).unwrap_or(u32::MAX);
        match state.cached_at.map(NonZeroU32::get) {
            Some(at) if self.tick.wrapping_sub(at) < half => {}
            Some(_) => {
                state.cached_at = Some(self.next_tick());
                self.order.push_back((self.tick, stream.clone()));
                self.compact(stream);
            }
            None => {
                state.cached_at = Some(self.next_tick());
                self.placed += 1;
                self.order.push_back((self.tick, stream.clone()));
                self.compact(stream);
            }
        }
    }

    /// Advances the order's clock: ticks start at 1 and skip 0 when they
    /// wrap, so a place is never 0.
    fn next_tick(&mut self) -> NonZeroU32 {
        self.tick = self.tick.wrapping_add(1).max(1);
        NonZeroU32::new(self.tick).unwrap_or(NonZeroU32::MIN)
    }

    /// Drops the entries streams left behind once they are most of the
    /// queue. An entry is current when its tick is its stream's place;
    /// `current` (whose state the caller holds locked) was just placed at
    /// the newest tick, so its lock is not taken again.
    fn compact(&mut self, current: &Arc<Stream>) {
        if self.order.len() <= 2 * self.placed + 64 {
            return;
        }
        let newest = self.tick;
        self.order.retain(|(tick, stream)| {
            if Arc::ptr_eq(stream, current) {
                return *tick == newest;
            }
            stream
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .cached_at
                .is_some_and(|at| at.get() == *tick)
        });
        if self.order.capacity() > 4 * self.order.len().max(16) {
            self.order.shrink_to_fit();
        }
    }

    /// Drops `stream`'s records (its state locked for writing).
    pub(super) fn forget(&mut self, state: &mut State) {
        self.used -= state.recent_bytes as usize;
        state.recent.release();
        state.recent_bytes = 0;
        if state.cached_at.take().is_some() {
            // Its entry stays in the queue, skipped when reached.
            self.placed -= 1;
        }
    }

    /// Evicts whole streams, least recently appended first, until within
    /// the budget. Takes each victim's lock: call it holding none.
    pub(super) fn evict(&mut self) {
        while self.used > self.cap {
            let Some((tick, stream)) = self.order.pop_front() else {
                break;
            };
            let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
            if state.cached_at.map(NonZeroU32::get) != Some(tick) {
                continue;
            }
            self.used -= state.recent_bytes as usize;
            state.recent.release();
            state.recent_bytes = 0;
            state.cached_at = None;
            self.placed -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, PoisonError};

    use bytes::Bytes;

    use super::super::state::{RECENT_ENTRY_COST, State, Stream};
    use super::TailCache;

    /// Every stream's `Stream` stays in memory: with its `Arc`'s counts and
    /// glibc's 8-byte header it fits a 192-byte chunk (a byte more costs
    /// 208). It holds its writer's view too, which a map of 64-byte
    /// slots kept beside it before.
    #[test]
    fn a_stream_stays_small() {
        let size = std::mem::size_of::<Stream>();
        assert!(size <= 168, "Stream is {size} bytes");
    }

    fn stream(id: u64) -> Arc<Stream> {
        Arc::new(Stream::new(id, State::new(Box::default(), 0, None)))
    }

    /// Appends one 100-byte record to `stream` through `cache`.
    fn append(cache: &mut TailCache, stream: &Arc<Stream>) {
        let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
        state.tail += 100;
        let end = state.tail;
        cache.remember(stream, &mut state, end, Bytes::from(vec![7u8; 100]));
    }

    fn held(stream: &Stream) -> usize {
        stream
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .recent
            .len()
    }

    /// What the streams say their records cost, together.
    fn counted(streams: &[Arc<Stream>]) -> usize {
        streams
            .iter()
            .map(|s| {
                s.state
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recent_bytes as usize
            })
            .sum()
    }

    /// Within its budget the cache evicts the streams appended to longest
    /// ago, keeps the newest, and takes an evicted stream back in when it
    /// is appended to again (and can evict it again later).
    #[test]
    fn evicts_the_oldest_streams_and_takes_them_back() {
        let per_record = 100 + RECENT_ENTRY_COST;
        let mut cache = TailCache::new(4 * per_record);
        let streams: Vec<Arc<Stream>> = (1..=8).map(stream).collect();
        for s in &streams {
            append(&mut cache, s);
            cache.evict();
        }
        assert!(cache.used <= 4 * per_record, "{}", cache.used);
        let kept: Vec<usize> = streams.iter().map(|s| held(s)).collect();
        assert_eq!(kept, [0, 0, 0, 0, 1, 1, 1, 1]);

        // The first stream again: in the cache, and one more of the old
        // ones out.
        append(&mut cache, &streams[0]);
        cache.evict();
        assert_eq!(held(&streams[0]), 1);
        assert_eq!(held(&streams[4]), 0);
        assert!(cache.used <= 4 * per_record, "{}", cache.used);

        // Many appends to every stream in turn: the budget holds.
        for _ in 0..50 {
            for s in &streams {
                append(&mut cache, s);
                cache.evict();
                assert!(cache.used <= 4 * per_record, "{}", cache.used);
            }
        }
        assert_eq!(counted(&streams), cache.used);
        // The stream appended to last is never the one evicted.
        assert!(held(&streams[7]) >= 1);
    }

    /// Records a checkpoint released from an idle stream stay counted
    /// until the cache touches the stream again, then leave the count:
    /// the count never drifts from what the streams say they cost.
    #[test]
    fn released_records_leave_the_count_when_next_touched() {
        let per_record = 100 + RECENT_ENTRY_COST;
        let mut cache = TailCache::new(3 * per_record);
        let streams: Vec<Arc<Stream>> = (1..=3).map(stream).collect();
        for s in &streams {
            append(&mut cache, s);
        }
        let release = |s: &Arc<Stream>| {
            let mut state = s.state.write().unwrap_or_else(PoisonError::into_inner);
            state.release_idle_recent(i64::MAX, 0);
            assert!(!state.recent.is_allocated(), "the queue is freed too");
        };
        release(&streams[0]);
        release(&streams[1]);
        assert_eq!(held(&streams[0]), 0);
        assert_eq!(cache.used, 3 * per_record, "still counted");

        // Appended to again: its released record leaves the count.
        append(&mut cache, &streams[0]);
        assert_eq!(held(&streams[0]), 1);
        assert_eq!(cache.used, 3 * per_record);

        // Over the budget: the oldest place (the other released stream)
        // goes first, taking its counted cost with it.
        append(&mut cache, &streams[2]);
        cache.evict();
        assert_eq!(cache.used, 3 * per_record);
        assert_eq!(held(&streams[1]), 0);
        assert_eq!(held(&streams[2]), 2);
        assert_eq!(counted(&streams), cache.used);
    }

    /// A stream appended to over and over leaves places behind in the
    /// order; they are dropped, so the order stays within a bound of the
    /// streams placed, and each entry is two words.
    #[test]
    fn the_order_stays_bounded() {
        assert_eq!(
            std::mem::size_of::<(u32, Arc<Stream>)>(),
            16,
            "an order entry grew"
        );
        let mut cache = TailCache::new(1 << 20);
        let streams: Vec<Arc<Stream>> = (1..=4).map(stream).collect();
        for _ in 0..2_000 {
            for s in &streams {
                append(&mut cache, s);
                cache.evict();
                assert!(cache.order.len() <= 2 * cache.placed + 65);
            }
        }
        assert_eq!(cache.placed, 4);
        assert!(streams.iter().all(|s| held(s) >= 1));
    }
}
