//! [`SharedStreams`] for the `postgres` backend: what lets several servers
//! share one database as interchangeable replicas.
//!
//! - Appends go through the [`lane`](super::lane)s, decided under the
//!   stream's row lock.
//! - Stream ids come from a block reserved per opened store (the
//!   `replica_blocks` sequence), so replicas never hand out the same one.
//! - A stream's last access lives in its row (`last_access_ms`): appends
//!   set it in their transaction, reads through [`SharedStreams::touch`],
//!   so a sliding TTL is judged on every replica's accesses.
//! - The expiry sweep's candidates are read under a transaction-scoped
//!   advisory lock taken without waiting, so replicas sweeping at the same
//!   moment do not all do the same work.
//! - Other replicas' commits are reported through `LISTEN`/`NOTIFY`
//!   ([`super::notify`]).

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{
    Listener, Notifier, PostgresStorage, STREAM_COLUMNS, get, query, recovered_stream, unsigned,
};
use crate::storage::shared::{
    Decide, LockedMetadata, SharedStreams, StoredPosition, StoredTail, TailEvent,
};
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

    fn last_access(&self, id: StreamId) -> StorageFuture<Option<i64>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Ok(id) = i64::try_from(id) else {
                return Ok(None);
            };
            let rows = query(
                &shared.pool,
                "reading a last access",
                LAST_ACCESS_SQL,
                &[&id],
            )
            .await?;
            rows.first().map(|row| get(row, 0)).transpose()
        })
    }

    fn touch(&self, id: StreamId, at_ms: i64) -> StorageFuture<()> {
        if let Some(refused) = self.read_only_error() {
            return refused;
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            let Ok(id) = i64::try_from(id) else {
                return Ok(());
            };
            query(
                &shared.pool,
                "recording an access",
                TOUCH_SQL,
                &[&id, &at_ms],
            )
            .await?;
            Ok(())
        })
    }

    fn expired(&self, now_ms: i64) -> StorageFuture<Vec<String>> {
        let shared = self.shared.clone();
        let key = sweep_lock_key(&self.shared.connector.options.schema);
        Box::pin(async move {
            let rows = query(
                &shared.pool,
                "finding expired streams",
                EXPIRED_SQL,
                &[&now_ms, &key],
            )
            .await?;
            rows.iter().map(|row| get(row, 0)).collect()
        })
    }

    fn claim_expiry(&self, id: StreamId, now_ms: i64) -> StorageFuture<bool> {
        if let Some(refused) = self.read_only_error() {
            return refused;
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            let Ok(id) = i64::try_from(id) else {
                return Ok(false);
            };
            let rows = query(
                &shared.pool,
                "claiming an expired stream",
                CLAIM_EXPIRY_SQL,
                &[&id, &now_ms],
            )
            .await?;
            Ok(!rows.is_empty())
        })
    }

    fn trimmable(&self) -> StorageFuture<Vec<(StreamId, String)>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let rows = query(&shared.pool, "listing streams to trim", TRIMMABLE_SQL, &[]).await?;
            rows.iter()
                .map(|row| Ok((unsigned(get(row, 0)?, "stream id")?, get(row, 1)?)))
                .collect()
        })
    }

    fn lock_metadata(&self, key: &str) -> StorageFuture<Box<dyn LockedMetadata>> {
        Box::pin(super::coordination::lock_metadata(
            self.shared.clone(),
            key.to_owned(),
        ))
    }

    fn lead(&self, role: &'static str) -> StorageFuture<bool> {
        if let Some(refused) = self.read_only_error() {
            return refused;
        }
        Box::pin(super::coordination::lead(self.shared.clone(), role))
    }

    fn positions(
        &self,
        paths: Vec<String>,
        prefix: Option<String>,
    ) -> StorageFuture<Vec<StoredPosition>> {
        Box::pin(super::coordination::positions(
            self.shared.clone(),
            paths,
            prefix,
        ))
    }

    fn watch(&self, events: mpsc::UnboundedSender<TailEvent>) -> Box<dyn Send + Sync> {
        let connector = self.connector();
        self.shared
            .notifier
            .get_or_init(|| Notifier::spawn(connector.clone()));
        Box::new(Listener::spawn(connector, events))
    }
}

const LAST_ACCESS_SQL: &str = "SELECT last_access_ms FROM streams WHERE id = $1";
const TOUCH_SQL: &str =
    "UPDATE streams SET last_access_ms = $2 WHERE id = $1 AND last_access_ms < $2";
/// Still expired as stored (a concurrent access's update either committed
/// before this statement, which then finds the row extended, or comes
/// after it and no longer matters): the expiry time is pinned, so every
/// server reading the row sees the stream expired.
const CLAIM_EXPIRY_SQL: &str = "
UPDATE streams SET expires_at_ms = least(coalesce(expires_at_ms, $2), $2)
 WHERE id = $1 AND status = 'live'
   AND (expires_at_ms <= $2 OR last_access_ms + ttl_secs * 1000 <= $2)
RETURNING id";
const TRIMMABLE_SQL: &str = "
SELECT s.id, s.path FROM streams s
 WHERE s.status = 'live'
   AND NOT EXISTS (SELECT 1 FROM streams f WHERE f.fork_source = s.id)";
/// The lock is held to the statement's end only; whoever misses it finds
/// nothing this time (an expired stream stays expired for the next sweep).
const EXPIRED_SQL: &str = "
WITH sweeper AS (SELECT pg_try_advisory_xact_lock($2) AS held)
SELECT s.path FROM sweeper, streams s
 WHERE sweeper.held AND s.status = 'live'
   AND (s.expires_at_ms <= $1 OR s.last_access_ms + s.ttl_secs * 1000 <= $1)";

/// The advisory lock key of `schema`'s expiry sweep.
fn sweep_lock_key(schema: &str) -> i64 {
    let digest = crc32c::crc32c(format!("durable-streams-sweep:{schema}").as_bytes());
    0x6473_0001_0000_0000 | i64::from(digest)
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
