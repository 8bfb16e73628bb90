//! Coordination between replicas beyond streams: metadata entries changed
//! under a cross-replica lock (a transaction holding an advisory lock on
//! the key), role locks held by one replica's session at a time, and the
//! positions of streams by path.

use std::sync::Arc;

use bytes::Bytes;

use super::error::storage_error;
use super::{Shared, connect, get, pool_error, query, unsigned};
use crate::storage::shared::{LockedMetadata, StoredPosition};
use crate::storage::{StorageError, StorageFuture};

/// An advisory lock key: a fixed prefix per kind of lock, and the hash
/// of the schema and the name, so stores in other schemas do not contend.
fn lock_key(kind: u16, schema: &str, name: &str) -> i64 {
    let digest = crc32c::crc32c(format!("{schema}:{name}").as_bytes());
    (0x6473_i64 << 48) | (i64::from(kind) << 32) | i64::from(digest)
}

/// Lock kinds, in the second 16 bits of the key.
const METADATA_LOCK: u16 = 2;
const ROLE_LOCK: u16 = 3;

/// A metadata entry locked in an open transaction on a pooled connection.
struct Locked {
    /// `None` once committed; a connection dropped mid-transaction is
    /// closed, not pooled, so the database rolls it back.
    client: Option<deadpool_postgres::Object>,
    key: String,
    value: Option<Bytes>,
}

impl Drop for Locked {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl LockedMetadata for Locked {
    fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }

    fn commit(mut self: Box<Self>, value: Option<Bytes>) -> StorageFuture<()> {
        Box::pin(async move {
            let client = self
                .client
                .as_ref()
                .ok_or_else(|| StorageError::Unavailable("the lock was released".into()))?;
            let failed = |e: tokio_postgres::Error| storage_error("writing metadata", &e);
            if value != self.value {
                match &value {
                    Some(value) => {
                        let value: &[u8] = value;
                        client
                            .execute(
                                "INSERT INTO metadata (key, value) VALUES ($1, $2)
                                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                                &[&self.key, &value],
                            )
                            .await
                            .map_err(failed)?;
                    }
                    None => {
                        client
                            .execute("DELETE FROM metadata WHERE key = $1", &[&self.key])
                            .await
                            .map_err(failed)?;
                    }
                }
            }
            client.batch_execute("COMMIT").await.map_err(failed)?;
            // Back to the pool, outside any transaction.
            drop(self.client.take());
            Ok(())
        })
    }
}

/// Opens a transaction, waits for the lock of metadata entry `key` and
/// reads the entry.
pub(super) async fn lock_metadata(
    shared: Arc<Shared>,
    key: String,
) -> Result<Box<dyn LockedMetadata>, StorageError> {
    crate::storage::metadata::check_key(&key)?;
    if shared.read_only {
        return Err(StorageError::Unavailable(
            "the store is open read-only".into(),
        ));
    }
    let lock = lock_key(METADATA_LOCK, &shared.connector.options.schema, &key);
    let client = shared
        .pool
        .get()
        .await
        .map_err(|e| pool_error("locking metadata", e))?;
    let mut locked = Locked {
        client: Some(client),
        key,
        value: None,
    };
    let failed = |e: tokio_postgres::Error| storage_error("locking metadata", &e);
    let client = locked
        .client
        .as_ref()
        .ok_or_else(|| StorageError::Unavailable("locking metadata: no connection".into()))?;
    client.batch_execute("BEGIN").await.map_err(failed)?;
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(failed)?;
    let rows = client
        .query("SELECT value FROM metadata WHERE key = $1", &[&locked.key])
        .await
        .map_err(failed)?;
    let value = match rows.first() {
        Some(row) => Some(Bytes::copy_from_slice(get::<&[u8]>(row, 0)?)),
        None => None,
    };
    locked.value = value;
    Ok(Box::new(locked))
}

/// Whether this store's role session holds the lock of `role`, taking it
/// when free. A closed session (the database restarted, the network
/// broke) lost its locks: a new one is opened and tries again.
pub(super) async fn lead(shared: Arc<Shared>, role: &'static str) -> Result<bool, StorageError> {
    let key = lock_key(ROLE_LOCK, &shared.connector.options.schema, role);
    let mut session = shared.roles.lock().await;
    if session
        .as_ref()
        .is_none_or(tokio_postgres::Client::is_closed)
    {
        *session = None;
        *session = Some(connect(&shared.connector, "roles").await?);
    }
    let Some(client) = session.as_ref() else {
        return Ok(false);
    };
    // Taking a session lock already held only counts it again; it is
    // released when the session ends.
    match client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
    {
        Ok(row) => get(&row, 0),
        Err(error) => {
            *session = None;
            Err(storage_error("taking a role lock", &error))
        }
    }
}

const POSITIONS_SQL: &str = "
SELECT path, tail, created_at_ms FROM streams
 WHERE status = 'live'
   AND (path = ANY($1::text[]) OR ($2::text IS NOT NULL AND starts_with(path, $2)))";

/// The positions of the live streams at one of `paths` or under `prefix`.
pub(super) async fn positions(
    shared: Arc<Shared>,
    paths: Vec<String>,
    prefix: Option<String>,
) -> Result<Vec<StoredPosition>, StorageError> {
    let rows = query(
        &shared.pool,
        "reading stream positions",
        POSITIONS_SQL,
        &[&paths, &prefix],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredPosition {
                path: get(row, 0)?,
                tail: unsigned(get(row, 1)?, "tail")?,
                created_at_ms: get(row, 2)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_kind_schema_and_name() {
        let key = lock_key(METADATA_LOCK, "s", "a");
        assert_ne!(key, lock_key(ROLE_LOCK, "s", "a"));
        assert_ne!(key, lock_key(METADATA_LOCK, "t", "a"));
        assert_ne!(key, lock_key(METADATA_LOCK, "s", "b"));
        assert_eq!(key, lock_key(METADATA_LOCK, "s", "a"));
    }
}
