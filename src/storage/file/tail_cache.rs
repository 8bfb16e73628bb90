//! The tail cache: the newest records of a shard's streams, kept in memory
//! within a byte budget so live readers at the tail need no file read.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;

use super::state::{RECENT_ENTRY_COST, RECENT_MAX_RECORD, RECENT_PER_STREAM, State, Stream};

/// Keeps the newest records of streams in memory within a byte budget,
/// evicting the streams appended to least recently.
///
/// A stream's place in the order is its [`State::cached_at`] tick, so an
/// append finds it without a map lookup; a stream still in the newer half
/// of the order keeps its place (the order is then approximate within that
/// half, which is what lets most appends at many streams skip moving it).
pub struct TailCache {
    cap: usize,
    pub(super) used: usize,
    tick: u64,
    order: BTreeMap<u64, Arc<Stream>>,
}

impl TailCache {
    /// A cache of at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            used: 0,
            tick: 0,
            order: BTreeMap::new(),
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
        if data.len() > RECENT_MAX_RECORD || self.cap == 0 {
            // The recent records must reach the tail without a gap.
            self.used -= state.recent_bytes;
            state.recent.clear();
            state.recent_bytes = 0;
            return;
        }
        let cost = data.len() + RECENT_ENTRY_COST;
        state.recent_bytes += cost;
        self.used += cost;
        state.recent.push_back((end, data));
        while state.recent_bytes > RECENT_PER_STREAM {
            let Some((_, old)) = state.recent.pop_front() else {
                break;
            };
            state.recent_bytes -= old.len() + RECENT_ENTRY_COST;
            self.used -= old.len() + RECENT_ENTRY_COST;
        }
        match state.cached_at {
            Some(at) if self.tick - at < (self.order.len() / 2) as u64 => {}
            Some(at) => {
                if let Some(entry) = self.order.remove(&at) {
                    self.tick += 1;
                    self.order.insert(self.tick, entry);
                    state.cached_at = Some(self.tick);
                }
            }
            None => {
                self.tick += 1;
                self.order.insert(self.tick, stream.clone());
                state.cached_at = Some(self.tick);
            }
        }
    }

    /// Drops `stream`'s records (its state locked for writing).
    pub(super) fn forget(&mut self, state: &mut State) {
        self.used -= state.recent_bytes;
        state.recent.clear();
        state.recent_bytes = 0;
        if let Some(at) = state.cached_at.take() {
            self.order.remove(&at);
        }
    }

    /// Evicts whole streams, least recently appended first, until within
    /// the budget. Takes each victim's lock: call it holding none.
    pub(super) fn evict(&mut self) {
        while self.used > self.cap {
            let Some((_, stream)) = self.order.pop_first() else {
                break;
            };
            let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
            self.used -= state.recent_bytes;
            state.recent.clear();
            state.recent_bytes = 0;
            state.cached_at = None;
        }
    }
}
