//! Turns a batch of mutations into the rows of one transaction's set-based
//! statements, applying the storage contract's checks that need no
//! database (unknown streams, appends that do not chain).
//!
//! The plan assumes the stored tail of a stream it knows nothing about is
//! where the batch's first append to it starts; the transaction checks
//! that assumption (`UPDATE … WHERE tail = start`). When it fails, the
//! writer rolls back, learns the real tails and plans again with them in
//! `known`, which makes every later check here exact.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::storage::{Mutation, StorageError, StreamId};

/// What the writer learned about streams from the database: the stored
/// tail, or `None` when the stream is not stored.
pub type Known = HashMap<StreamId, Option<u64>>;

/// Rows of `INSERT INTO streams`.
#[derive(Debug, Default)]
pub struct CreateRows {
    pub id: Vec<i64>,
    pub path: Vec<String>,
    pub content_type: Vec<String>,
    pub ttl_secs: Vec<Option<i64>>,
    pub expires_at_ms: Vec<Option<i64>>,
    pub created_at_ms: Vec<i64>,
    pub base: Vec<i64>,
    pub fork_source: Vec<Option<i64>>,
    pub fork_source_path: Vec<Option<String>>,
    pub fork_offset: Vec<Option<i64>>,
    pub fork_sub_offset: Vec<Option<i64>>,
    pub tail: Vec<i64>,
    pub closed: Vec<bool>,
    /// The job each row comes from.
    pub job: Vec<usize>,
}

/// Rows of the `UPDATE streams` that moves tails: one per stream.
#[derive(Debug, Default)]
pub struct UpdateRows {
    pub id: Vec<i64>,
    /// Where the batch's first append to the stream starts.
    pub start: Vec<i64>,
    pub new_tail: Vec<i64>,
    pub close: Vec<bool>,
    pub closed_by_producer: Vec<Option<String>>,
    pub closed_by_epoch: Vec<Option<i64>>,
    pub closed_by_seq: Vec<Option<i64>>,
    pub stream_seq: Vec<Option<String>>,
}

/// Rows of `INSERT INTO records`.
#[derive(Debug, Default)]
pub struct RecordRows {
    pub stream_id: Vec<i64>,
    pub start: Vec<i64>,
    pub end: Vec<i64>,
    pub data: Vec<Bytes>,
}

/// Rows of the producer upsert, one per `(stream, producer)`.
#[derive(Debug, Default)]
pub struct ProducerRows {
    pub stream_id: Vec<i64>,
    pub producer_id: Vec<String>,
    pub epoch: Vec<i64>,
    pub last_seq: Vec<i64>,
}

/// One transaction's worth of work.
#[derive(Debug, Default)]
pub struct Plan {
    pub creates: CreateRows,
    pub updates: UpdateRows,
    pub records: RecordRows,
    pub producers: ProducerRows,
    pub soft_deletes: Vec<i64>,
    pub removes: Vec<i64>,
    /// Jobs refused without the database, with their errors.
    pub refused: Vec<(usize, StorageError)>,
    /// Jobs that commit with the transaction.
    pub included: Vec<usize>,
    /// The jobs of each stream with an update row, so a failed tail check
    /// can be traced back.
    pub update_jobs: HashMap<StreamId, Vec<usize>>,
    /// `(stream, tail)` of every stream whose tail or state the
    /// transaction changes, for notifications after the commit.
    pub changed: Vec<(StreamId, u64)>,
}

impl Plan {
    /// Whether the transaction would write anything.
    pub fn is_empty(&self) -> bool {
        self.included.is_empty()
    }
}

/// What the plan tracks per stream while walking the batch.
#[derive(Clone, Copy, Debug)]
struct Running {
    /// The tail so far; `None` until the first append says where it is.
    tail: Option<u64>,
    /// The stream is known not to exist (or was removed in this batch).
    gone: bool,
    /// Index of the stream's row in `updates`, once it has one.
    update_row: Option<usize>,
    /// A close is already part of the batch.
    closed: bool,
}

fn int(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

fn out_of_range(what: &str) -> StorageError {
    StorageError::Full(format!(
        "{what} is beyond the range the database stores (2^63 - 1)"
    ))
}

/// Plans `batch`, leaving out the jobs in `skip` (refused on an earlier
/// attempt) and using what `known` says about stored streams.
pub fn plan(batch: &[Mutation], known: &Known, skip: &HashSet<usize>) -> Plan {
    let mut plan = Plan::default();
    let mut running: HashMap<StreamId, Running> = HashMap::new();
    let mut producer_rows: HashMap<(StreamId, String), usize> = HashMap::new();
    let state_of = |running: &mut HashMap<StreamId, Running>, id: StreamId| -> Running {
        *running.entry(id).or_insert_with(|| Running {
            tail: known.get(&id).copied().flatten(),
            gone: known.get(&id).is_some_and(Option::is_none),
            update_row: None,
            closed: false,
        })
    };
    for (job, mutation) in batch.iter().enumerate() {
        if skip.contains(&job) {
            continue;
        }
        match mutation {
            Mutation::Create { spec, data, closed } => {
                let tail = spec.base.checked_add(data.len() as u64);
                let link = spec.fork.as_ref();
                let numbers = (
                    int(spec.id),
                    int(spec.base),
                    tail.and_then(int),
                    spec.ttl_secs.map(int),
                    link.map(|l| (int(l.source), int(l.offset), int(l.sub_offset))),
                );
                let (Some(id), Some(base), Some(tail_i), ttl, fork) = numbers else {
                    plan.refused.push((job, out_of_range("a stream position")));
                    continue;
                };
                let Some(ttl) = ttl.map_or(Some(None), |t| t.map(Some)) else {
                    plan.refused.push((job, out_of_range("Stream-TTL")));
                    continue;
                };
                let fork = match fork {
                    None => None,
                    Some((Some(source), Some(offset), Some(sub))) => Some((source, offset, sub)),
                    Some(_) => {
                        plan.refused.push((job, out_of_range("a fork position")));
                        continue;
                    }
                };
                let rows = &mut plan.creates;
                rows.id.push(id);
                rows.path.push(spec.path.clone());
                rows.content_type.push(spec.content_type.clone());
                rows.ttl_secs.push(ttl);
                rows.expires_at_ms.push(spec.expires_at_ms);
                rows.created_at_ms.push(spec.created_at_ms);
                rows.base.push(base);
                rows.fork_source.push(fork.map(|f| f.0));
                rows.fork_source_path
                    .push(link.map(|l| l.source_path.clone()));
                rows.fork_offset.push(fork.map(|f| f.1));
                rows.fork_sub_offset.push(fork.map(|f| f.2));
                rows.tail.push(tail_i);
                rows.closed.push(*closed);
                rows.job.push(job);
                if !data.is_empty() {
                    push_record(&mut plan.records, id, base, tail_i, data.clone());
                }
                running.insert(
                    spec.id,
                    Running {
                        tail: Some(spec.base + data.len() as u64),
                        gone: false,
                        update_row: None,
                        closed: *closed,
                    },
                );
                plan.changed.push((spec.id, spec.base + data.len() as u64));
                plan.included.push(job);
            }
            Mutation::Append(append) => {
                let mut state = state_of(&mut running, append.id);
                if state.gone {
                    plan.refused
                        .push((job, StorageError::UnknownStream(append.id)));
                    continue;
                }
                if let Some(tail) = state.tail
                    && tail != append.start
                {
                    plan.refused.push((
                        job,
                        StorageError::OutOfOrder {
                            id: append.id,
                            start: append.start,
                            tail,
                        },
                    ));
                    continue;
                }
                let end = append.start.checked_add(append.data.len() as u64);
                let producer = match &append.producer {
                    None => Some(None),
                    Some((pid, p)) => match (int(p.epoch), int(p.last_seq)) {
                        (Some(epoch), Some(seq)) => Some(Some((pid, epoch, seq))),
                        _ => None,
                    },
                };
                let closed_by = match &append.close {
                    Some(Some(by)) => match (int(by.epoch), int(by.seq)) {
                        (Some(epoch), Some(seq)) => Some(Some((&by.producer_id, epoch, seq))),
                        _ => None,
                    },
                    _ => Some(None),
                };
                let (Some(id), Some(start), Some(end_i), Some(producer), Some(closed_by)) = (
                    int(append.id),
                    int(append.start),
                    end.and_then(int),
                    producer,
                    closed_by,
                ) else {
                    plan.refused
                        .push((job, out_of_range("a stream position or producer number")));
                    continue;
                };
                let row = match state.update_row {
                    Some(row) => row,
                    None => {
                        let rows = &mut plan.updates;
                        rows.id.push(id);
                        rows.start.push(start);
                        rows.new_tail.push(start);
                        rows.close.push(false);
                        rows.closed_by_producer.push(None);
                        rows.closed_by_epoch.push(None);
                        rows.closed_by_seq.push(None);
                        rows.stream_seq.push(None);
                        rows.id.len() - 1
                    }
                };
                let rows = &mut plan.updates;
                rows.new_tail[row] = end_i;
                if append.close.is_some() && !state.closed {
                    state.closed = true;
                    rows.close[row] = true;
                    if let Some((pid, epoch, seq)) = closed_by {
                        rows.closed_by_producer[row] = Some(pid.clone());
                        rows.closed_by_epoch[row] = Some(epoch);
                        rows.closed_by_seq[row] = Some(seq);
                    }
                }
                if let Some(seq) = &append.stream_seq {
                    rows.stream_seq[row] = Some(seq.clone());
                }
                if let Some((pid, epoch, seq)) = producer {
                    let key = (append.id, pid.clone());
                    let producers = &mut plan.producers;
                    match producer_rows.get(&key) {
                        Some(&at) => {
                            producers.epoch[at] = epoch;
                            producers.last_seq[at] = seq;
                        }
                        None => {
                            producer_rows.insert(key, producers.stream_id.len());
                            producers.stream_id.push(id);
                            producers.producer_id.push(pid.clone());
                            producers.epoch.push(epoch);
                            producers.last_seq.push(seq);
                        }
                    }
                }
                if !append.data.is_empty() {
                    push_record(&mut plan.records, id, start, end_i, append.data.clone());
                }
                let end = append.start + append.data.len() as u64;
                state.tail = Some(end);
                state.update_row = Some(row);
                running.insert(append.id, state);
                plan.update_jobs.entry(append.id).or_default().push(job);
                plan.changed.push((append.id, end));
                plan.included.push(job);
            }
            Mutation::SoftDelete { id } => {
                if let Some(id_i) = int(*id) {
                    plan.soft_deletes.push(id_i);
                    let tail = state_of(&mut running, *id).tail;
                    plan.changed.extend(tail.map(|t| (*id, t)));
                }
                plan.included.push(job);
            }
            Mutation::Trim { .. } => {
                // `PostgresStorage::submit` runs trims itself.
                plan.refused.push((
                    job,
                    StorageError::Unavailable("a trim reached the writer".into()),
                ));
            }
            Mutation::Remove { id } => {
                if let Some(id_i) = int(*id) {
                    plan.removes.push(id_i);
                }
                let mut state = state_of(&mut running, *id);
                state.gone = true;
                running.insert(*id, state);
                plan.included.push(job);
            }
        }
    }
    plan.included.sort_unstable();
    plan
}

fn push_record(rows: &mut RecordRows, id: i64, start: i64, end: i64, data: Bytes) {
    rows.stream_id.push(id);
    rows.start.push(start);
    rows.end.push(end);
    rows.data.push(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::producer::ProducerState;
    use crate::storage::{Append, ClosedBy, StreamSpec};

    fn create(id: u64, data: &'static [u8]) -> Mutation {
        Mutation::Create {
            spec: StreamSpec {
                id,
                path: format!("/s{id}"),
                content_type: "text/plain".into(),
                ttl_secs: None,
                expires_at_ms: None,
                created_at_ms: 0,
                fork: None,
                base: 0,
            },
            data: Bytes::from_static(data),
            closed: false,
        }
    }

    fn append(id: u64, start: u64, data: &'static [u8]) -> Append {
        Append {
            id,
            start,
            data: Bytes::from_static(data),
            producer: None,
            stream_seq: None,
            close: None,
        }
    }

    #[test]
    fn appends_of_one_stream_become_one_update_and_chain() {
        let mut first = append(1, 10, b"ab");
        first.producer = Some((
            "p".into(),
            ProducerState {
                epoch: 1,
                last_seq: 0,
            },
        ));
        first.stream_seq = Some("a".into());
        let mut second = append(1, 12, b"c");
        second.producer = Some((
            "p".into(),
            ProducerState {
                epoch: 1,
                last_seq: 1,
            },
        ));
        second.close = Some(Some(ClosedBy {
            producer_id: "p".into(),
            epoch: 1,
            seq: 1,
        }));
        let batch = [
            Mutation::Append(first),
            Mutation::Append(second),
            Mutation::Append(append(1, 20, b"x")),
        ];
        let plan = plan(&batch, &Known::new(), &HashSet::new());
        assert_eq!(plan.updates.id, vec![1]);
        assert_eq!(plan.updates.start, vec![10]);
        assert_eq!(plan.updates.new_tail, vec![13]);
        assert_eq!(plan.updates.close, vec![true]);
        assert_eq!(plan.updates.closed_by_seq, vec![Some(1)]);
        assert_eq!(plan.updates.stream_seq, vec![Some("a".into())]);
        assert_eq!(plan.producers.last_seq, vec![1], "one row per producer");
        assert_eq!(plan.records.start, vec![10, 12]);
        assert_eq!(plan.included, vec![0, 1]);
        assert!(matches!(
            plan.refused[..],
            [(
                2,
                StorageError::OutOfOrder {
                    start: 20,
                    tail: 13,
                    ..
                }
            )]
        ));
    }

    #[test]
    fn known_tails_and_removals_refuse_exactly() {
        let known = Known::from([(1, Some(5)), (2, None)]);
        let batch = [
            Mutation::Append(append(1, 3, b"x")),
            Mutation::Append(append(1, 5, b"y")),
            Mutation::Append(append(2, 0, b"z")),
            Mutation::Remove { id: 1 },
            Mutation::Append(append(1, 6, b"w")),
        ];
        let plan = plan(&batch, &known, &HashSet::new());
        let refused: Vec<usize> = plan.refused.iter().map(|(job, _)| *job).collect();
        assert_eq!(refused, vec![0, 2, 4]);
        assert_eq!(plan.updates.start, vec![5]);
        assert_eq!(plan.included, vec![1, 3]);
        assert_eq!(plan.removes, vec![1]);
    }

    #[test]
    fn a_created_stream_takes_appends_in_the_same_batch() {
        let batch = [
            create(7, b"ab"),
            Mutation::Append(append(7, 2, b"c")),
            Mutation::Append(append(7, 2, b"d")),
        ];
        let skip = HashSet::new();
        let plan = plan(&batch, &Known::new(), &skip);
        assert_eq!(plan.creates.tail, vec![2]);
        assert_eq!(plan.records.end, vec![2, 3]);
        assert_eq!(plan.updates.start, vec![2]);
        assert_eq!(plan.refused.len(), 1);
        let skipped = super::plan(&batch, &Known::new(), &HashSet::from([0]));
        assert!(skipped.creates.id.is_empty());
        assert_eq!(skipped.included, vec![1], "the database decides");
        assert_eq!(skipped.changed, vec![(7, 3)]);
    }

    #[test]
    fn numbers_beyond_the_database_range_are_refused() {
        let plan = plan(
            &[Mutation::Append(append(1, u64::MAX - 1, b"xy"))],
            &Known::new(),
            &HashSet::new(),
        );
        assert!(matches!(plan.refused[..], [(0, StorageError::Full(_))]));
        assert!(plan.is_empty());
    }
}
