//! What an open loads from a database: every stream's spec, state and
//! producers, never its records, so an open reads metadata only (records are
//! verified by the reads that meet them).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::ReadableTable;

use super::handle::Db;
use super::tables::{PRODUCERS, SPECS, STATES, StoredState, db_error};
use crate::protocol::producer::ProducerState;
use crate::storage::{RecoveredStream, StorageError, StreamId, StreamSpec};

/// The writer's view of a stream.
#[derive(Clone, Copy, Debug)]
pub(super) struct Head {
    pub(super) tail: u64,
    pub(super) chunk_start: Option<u64>,
}

/// The heads of streams whose data retention trimmed.
pub(super) fn trimmed_heads(recovered: &[RecoveredStream]) -> HashMap<StreamId, u64> {
    recovered
        .iter()
        .filter(|s| s.head > s.spec.base)
        .map(|s| (s.spec.id, s.head))
        .collect()
}

pub(super) fn load(
    db: &Db,
    path: &Path,
) -> Result<(Vec<RecoveredStream>, HashMap<StreamId, Head>), StorageError> {
    let txn = db.begin_read()?;
    let specs = txn.open_table(SPECS).map_err(db_error)?;
    let states = txn.open_table(STATES).map_err(db_error)?;
    let producers = txn.open_table(PRODUCERS).map_err(db_error)?;
    let mut by_id: BTreeMap<StreamId, RecoveredStream> = BTreeMap::new();
    let mut chunk_starts: HashMap<StreamId, Option<u64>> = HashMap::new();
    for entry in specs.iter().map_err(db_error)? {
        let (id, raw) = entry.map_err(db_error)?;
        let spec: StreamSpec = serde_json::from_slice(raw.value()).map_err(|e| {
            StorageError::Corrupt(format!(
                "database file {}: spec of stream {} is invalid: {e}",
                path.display(),
                id.value()
            ))
        })?;
        let state: StoredState = match states.get(id.value()).map_err(db_error)? {
            Some(raw) => serde_json::from_slice(raw.value()).map_err(|e| {
                StorageError::Corrupt(format!(
                    "database file {}: state of stream {} is invalid: {e}",
                    path.display(),
                    id.value()
                ))
            })?,
            None => StoredState {
                tail: spec.base,
                ..StoredState::default()
            },
        };
        let head = state.head.unwrap_or(spec.base);
        by_id.insert(
            id.value(),
            RecoveredStream {
                spec,
                tail: state.tail,
                closed: state.closed.then_some(state.closed_by),
                producers: Vec::new(),
                stream_seq: state.stream_seq,
                soft_deleted: state.soft_deleted,
                head,
            },
        );
        chunk_starts.insert(
            id.value(),
            state.chunk_start.or((state.tail > head).then_some(head)),
        );
    }
    for entry in producers.iter().map_err(db_error)? {
        let (key, value) = entry.map_err(db_error)?;
        let (id, producer) = key.value();
        let (epoch, last_seq) = value.value();
        if let Some(stream) = by_id.get_mut(&id) {
            stream
                .producers
                .push((producer.to_owned(), ProducerState { epoch, last_seq }));
        }
    }
    let heads = by_id
        .iter()
        .map(|(&id, s)| {
            (
                id,
                Head {
                    tail: s.tail,
                    chunk_start: chunk_starts.get(&id).copied().flatten(),
                },
            )
        })
        .collect();
    Ok((by_id.into_values().collect(), heads))
}
