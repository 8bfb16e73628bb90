//! [`SharedStreams`] for the `postgres` backend: what lets several servers
//! share one database as interchangeable replicas.
//!
//! - Appends go through the [`lane`](super::lane)s, decided under the
//!   stream's row lock.
//! - Stream ids come from a block reserved per opened store (the
//!   `replica_blocks` sequence), so replicas never hand out the same one.
//! - Other replicas' commits are reported through `LISTEN`/`NOTIFY`
//!   ([`super::notify`]).

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{
    Listener, Notifier, PostgresStorage, STREAM_COLUMNS, get, query, recovered_stream, unsigned,
};
use crate::storage::shared::{Decide, SharedStreams, StoredTail, TailEvent};
use crate::storage::{RecoveredStream, StorageError, StorageFuture, StreamId};

/// Ids of one block: a store's ids are `block << ID_BLOCK_BITS` onwards.
pub(super) const ID_BLOCK_BITS: u32 = 32;

impl PostgresStorage {
    fn read_only_error<T: Send + 'static>(&self) -> Option<StorageFuture<T>> {
        self.shared.read_only.then(|| {
            Box::pin(std::future::ready(Err(StorageError::Unavailable(
                "the store is open read-only".into(),
            )))) as StorageFuture<T>
        })
    }

    /// The stored stream the query `condition` (on `$1`) selects, without
    /// its producers (the engine reads those under the row lock).
    fn find_where<P>(
        &self,
        condition: &'static str,
        param: P,
    ) -> StorageFuture<Option<RecoveredStream>>
    where
        P: tokio_postgres::types::ToSql + Sync + Send + 'static,
    {
        let shared = self.shared.clone();
        Box::pin(async move {
            let sql = format!("SELECT {STREAM_COLUMNS} FROM streams WHERE {condition}");
            let rows = query(&shared.pool, "looking up a stream", &sql, &[&param]).await?;
            rows.first().map(recovered_stream).transpose()
        })
    }
}

impl SharedStreams for PostgresStorage {
    fn append(&self, id: StreamId, decide: Decide) -> StorageFuture<RecoveredStream> {
        if let Some(refused) = self.read_only_error() {
            return refused;
        }
        match &self.lanes {
            Some(lanes) => lanes.append(id, decide),
            None => Box::pin(std::future::ready(Err(StorageError::Unavailable(
                "the store has no writer".into(),
            )))),
        }
    }

    fn find(&self, path: &str) -> StorageFuture<Option<RecoveredStream>> {
        self.find_where("path = $1", path.to_owned())
    }

    fn find_id(&self, id: StreamId) -> StorageFuture<Option<RecoveredStream>> {
        match i64::try_from(id) {
            Ok(id) => self.find_where("id = $1", id),
            Err(_) => Box::pin(std::future::ready(Ok(None))),
        }
    }

    fn tails(&self, ids: Vec<StreamId>) -> StorageFuture<Vec<StoredTail>> {
        let store = self.clone();
        Box::pin(async move { store.stream_tails(&ids).await })
    }

    fn allocate_id(&self) -> StreamId {
        let local = self.next_id.fetch_add(1, Ordering::Relaxed);
        (self.id_block << ID_BLOCK_BITS) | (local & ((1 << ID_BLOCK_BITS) - 1))
    }

    fn watch(&self, events: mpsc::UnboundedSender<TailEvent>) -> Box<dyn Send + Sync> {
        let connector = self.connector();
        self.shared
            .notifier
            .get_or_init(|| Notifier::spawn(connector.clone()));
        Box::new(Listener::spawn(connector, events))
    }
}

/// Reserves this store's block of stream ids.
pub(super) async fn reserve_id_block(pool: &deadpool_postgres::Pool) -> Result<u64, StorageError> {
    let rows = query(
        pool,
        "reserving stream ids",
        "SELECT nextval('replica_blocks')",
        &[],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| StorageError::Unavailable("reserving stream ids: no answer".into()))?;
    let block = unsigned(get(row, 0)?, "id block")?;
    if block >= 1 << (63 - ID_BLOCK_BITS) {
        return Err(StorageError::Full(
            "the replica_blocks sequence is exhausted".into(),
        ));
    }
    Ok(block)
}
