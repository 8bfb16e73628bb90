//! The writer thread of a database: each batch of mutations is one redb
//! write transaction.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use redb::ReadableTable;

use super::load::Head;
use super::shard::Shared;
use super::tables::{
    CHUNKS, PRODUCERS, RECORDS, SPECS, STATES, StoredState, begin_durable, db_error, framed,
    load_state,
};
use crate::metrics::event::StorageCommitted;
use crate::storage::chunk_list;
use crate::storage::queue::{Ack, Next, commit_spans, fail_all};
use crate::storage::{Mutation, StorageError, StreamId};

/// Most payload bytes one transaction commits.
pub(super) const MAX_BATCH_BYTES: usize = 16 << 20;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) heads: HashMap<StreamId, Head>,
    pub(super) chunk_bytes: u64,
}

/// Tables of one write transaction.
pub(super) struct Tables<'t> {
    specs: redb::Table<'t, u64, &'static [u8]>,
    states: redb::Table<'t, u64, &'static [u8]>,
    producers: redb::Table<'t, (u64, &'static str), (u64, u64)>,
    records: redb::Table<'t, (u64, u64), &'static [u8]>,
    chunks: redb::Table<'t, (u64, u64), i64>,
}

impl Writer {
    pub(super) fn run(mut self) {
        while let Next::Batch(batch) = self.shared.queue.next_batch(MAX_BATCH_BYTES, None) {
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<(Mutation, Ack)>) {
        let before = self.heads.clone();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut trimmed = Vec::new();
        let spans = commit_spans("acid", batch.iter().map(|(_, ack)| ack), batch.len());
        let started = std::time::Instant::now();
        let outcome = self.apply_batch(batch, &mut accepted, &mut trimmed);
        if !accepted.is_empty() {
            StorageCommitted {
                backend: "acid",
                batch: accepted.len(),
                elapsed: started.elapsed(),
            }
            .emit();
        }
        drop(spans);
        match outcome {
            Ok(()) => {
                if !trimmed.is_empty() {
                    let mut heads = self
                        .shared
                        .trimmed
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (id, head) in trimmed {
                        match head {
                            Some(head) => heads.insert(id, head),
                            None => heads.remove(&id),
                        };
                    }
                }
                for ack in accepted {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(error) => {
                self.heads = before;
                tracing::error!(path = %self.shared.path.display(), error = %error, "transaction failed");
                fail_all(accepted, &error);
            }
        }
    }

    /// Stores a record ending at `end`, sealing the current chunk first
    /// when the record does not fit in it.
    fn put_record(
        &mut self,
        tables: &mut Tables<'_>,
        id: StreamId,
        state: &mut StoredState,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let Some(head) = self.heads.get_mut(&id) else {
            return Ok(());
        };
        let now = chunk_list::now_ms();
        let used = head.chunk_start.map(|start| head.tail - start);
        if chunk_list::starts_new_chunk(used, data.len() as u64, self.chunk_bytes) {
            if let Some(start) = head.chunk_start {
                tables
                    .chunks
                    .insert((id, start), state.last_write_ms)
                    .map_err(db_error)?;
            }
            head.chunk_start = Some(head.tail);
        }
        let end = head.tail + data.len() as u64;
        tables
            .records
            .insert((id, end), framed(data).as_slice())
            .map_err(db_error)?;
        head.tail = end;
        state.tail = end;
        state.chunk_start = head.chunk_start;
        state.last_write_ms = now;
        Ok(())
    }

    /// Drops the chunks of `id` that end at or before `before`; returns the
    /// new head.
    fn trim(
        &mut self,
        tables: &mut Tables<'_>,
        id: StreamId,
        state: &mut StoredState,
        before: u64,
    ) -> Result<u64, StorageError> {
        let Some(head) = self.heads.get_mut(&id) else {
            return Ok(state.tail);
        };
        // Past the tail, everything goes and the stream continues at
        // `before`.
        let moved = before > head.tail;
        if moved {
            head.tail = before;
            state.tail = before;
        }
        let mut sealed = Vec::new();
        for entry in tables
            .chunks
            .range((id, 0)..=(id, u64::MAX))
            .map_err(db_error)?
        {
            let (key, _) = entry.map_err(db_error)?;
            sealed.push(key.value().1);
        }
        let active = head.chunk_start;
        let mut starts: Vec<u64> = sealed.clone();
        starts.extend(active);
        let end_of = |i: usize| starts.get(i + 1).copied().unwrap_or(head.tail);
        let drop = (0..starts.len())
            .find(|&i| end_of(i) > before)
            .unwrap_or(starts.len());
        let new_head = starts.get(drop).copied().unwrap_or(head.tail);
        let current = state.head.unwrap_or(new_head);
        if drop == 0 && !moved {
            return Ok(current);
        }
        for &start in sealed.iter().take(drop) {
            tables.chunks.remove((id, start)).map_err(db_error)?;
        }
        if drop == starts.len() {
            head.chunk_start = None;
            state.chunk_start = None;
        }
        tables
            .records
            .retain_in((id, 0)..=(id, new_head), |_, _| false)
            .map_err(db_error)?;
        state.head = Some(new_head);
        Ok(new_head)
    }

    /// Applies a batch in one transaction. Mutations refused on their own
    /// (out of order, unknown stream) are answered at once and left out.
    fn apply_batch(
        &mut self,
        batch: Vec<(Mutation, Ack)>,
        accepted: &mut Vec<Ack>,
        trimmed: &mut Vec<(StreamId, Option<u64>)>,
    ) -> Result<(), StorageError> {
        let txn = begin_durable(self.shared.db.writable()?)?;
        {
            let mut tables = Tables {
                specs: txn.open_table(SPECS).map_err(db_error)?,
                states: txn.open_table(STATES).map_err(db_error)?,
                producers: txn.open_table(PRODUCERS).map_err(db_error)?,
                records: txn.open_table(RECORDS).map_err(db_error)?,
                chunks: txn.open_table(CHUNKS).map_err(db_error)?,
            };
            let mut dirty: HashMap<StreamId, StoredState> = HashMap::new();
            for (mutation, ack) in batch {
                match mutation {
                    Mutation::Create { spec, data, closed } => {
                        let json = serde_json::to_vec(&spec)
                            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                        tables
                            .specs
                            .insert(spec.id, json.as_slice())
                            .map_err(db_error)?;
                        let mut state = StoredState {
                            tail: spec.base,
                            closed,
                            ..StoredState::default()
                        };
                        self.heads.insert(
                            spec.id,
                            Head {
                                tail: spec.base,
                                chunk_start: None,
                            },
                        );
                        if !data.is_empty() {
                            self.put_record(&mut tables, spec.id, &mut state, &data)?;
                        }
                        dirty.insert(spec.id, state);
                    }
                    Mutation::Append(append) => {
                        match self.heads.get(&append.id) {
                            None => {
                                let _ = ack.send(Err(StorageError::UnknownStream(append.id)));
                                continue;
                            }
                            Some(head) if head.tail != append.start => {
                                let _ = ack.send(Err(StorageError::OutOfOrder {
                                    id: append.id,
                                    start: append.start,
                                    tail: head.tail,
                                }));
                                continue;
                            }
                            Some(_) => {}
                        }
                        load_state(append.id, &tables.states, &mut dirty)?;
                        let mut state = dirty.remove(&append.id).unwrap_or_default();
                        if !append.data.is_empty() {
                            self.put_record(&mut tables, append.id, &mut state, &append.data)?;
                        }
                        if let Some((producer, next)) = &append.producer {
                            tables
                                .producers
                                .insert((append.id, producer.as_str()), (next.epoch, next.last_seq))
                                .map_err(db_error)?;
                        }
                        if append.stream_seq.is_some() {
                            state.stream_seq = append.stream_seq;
                        }
                        if let Some(by) = append.close
                            && !state.closed
                        {
                            state.closed = true;
                            state.closed_by = by;
                        }
                        dirty.insert(append.id, state);
                    }
                    Mutation::SoftDelete { id } => {
                        if self.heads.contains_key(&id) {
                            load_state(id, &tables.states, &mut dirty)?;
                            dirty.entry(id).or_default().soft_deleted = true;
                        }
                    }
                    Mutation::Remove { id } => {
                        dirty.remove(&id);
                        self.heads.remove(&id);
                        trimmed.push((id, None));
                        tables.specs.remove(id).map_err(db_error)?;
                        tables.states.remove(id).map_err(db_error)?;
                        tables
                            .records
                            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                            .map_err(db_error)?;
                        tables
                            .chunks
                            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                            .map_err(db_error)?;
                        tables
                            .producers
                            .retain_in((id, "")..(id + 1, ""), |_, _| false)
                            .map_err(db_error)?;
                    }
                    Mutation::Trim { id, before } => {
                        if self.heads.contains_key(&id) {
                            load_state(id, &tables.states, &mut dirty)?;
                            let mut state = dirty.remove(&id).unwrap_or_default();
                            let head = self.trim(&mut tables, id, &mut state, before)?;
                            if state.head.is_some() {
                                trimmed.push((id, Some(head)));
                            }
                            dirty.insert(id, state);
                        }
                    }
                }
                accepted.push(ack);
            }
            for (id, state) in dirty {
                let json = serde_json::to_vec(&state)
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                tables
                    .states
                    .insert(id, json.as_slice())
                    .map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }
}
