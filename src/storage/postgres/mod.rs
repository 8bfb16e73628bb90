//! The `postgres` backend: streams in a PostgreSQL database, so several
//! server replicas can share one store (and the database's replication
//! and backups carry the data).
//!
//! - Writes go through one group-commit writer (`writer`): each batch of
//!   queued mutations is one transaction of set-based statements whose
//!   tail check (`UPDATE … WHERE tail = start`) enforces the
//!   `OutOfOrder` contract inside the transaction. Acknowledged means
//!   committed.
//! - Reads and metadata use a pool of other connections, so they never
//!   wait behind a commit (MVCC: they see the last committed state).
//! - [`schema`] migrates the database at open, serialised across replicas
//!   by an advisory lock; [`notify`] has the `LISTEN`/`NOTIFY` plumbing for
//!   cross-replica wake-ups.
//! - An unreachable database answers [`StorageError::Unavailable`] and the
//!   backend reconnects by itself; see `writer` for commits whose outcome
//!   is unknown.
//!
//! Positions, ids and producer numbers are stored as `bigint`; values past
//! `2^63 - 1` are refused.

/// The columns of `streams` that [`recovered_stream`] reads, in its order
/// (a macro, so statements can `concat!` it).
macro_rules! stream_columns {
    () => {
        "id, path, content_type, ttl_secs, expires_at_ms, created_at_ms, base, fork_source, \
         fork_source_path, fork_offset, fork_sub_offset, tail, closed, closed_by_producer, \
         closed_by_epoch, closed_by_seq, stream_seq, status, coalesce(head, base)"
    };
}

mod chunks;
mod coordination;
mod error;
mod lane;
pub mod notify;
pub mod options;
mod plan;
mod replicas;
pub mod schema;
mod sql;
mod tls;
mod writer;

#[cfg(test)]
pub mod testdb;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use notify::{ListenEvent, Listener, Notifier};
pub use options::{OptionsError, PostgresOptions};

use self::error::{is_connection_error, storage_error};
use super::queue::{CommitQueue, WriterThread};
use super::{
    ChunkInfo, ClosedBy, ForkLink, Mutation, ReadChunk, RecoveredStream, Storage, StorageError,
    StorageFuture, StreamId, StreamSpec,
};
use crate::protocol::producer::ProducerState;

/// Connections (and threads) committing appends decided under row locks:
/// hot streams on different lanes commit in parallel.
const LANES: usize = 4;

/// How to open connections: the options and the TLS connector.
pub struct Connector {
    /// What `[storage.postgres]` says.
    pub options: PostgresOptions,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Reads the TLS material the options name.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] naming the certificate or key file that
    /// cannot be used.
    pub fn new(options: PostgresOptions) -> Result<Self, StorageError> {
        let tls = tls::connector(&options.tls).map_err(StorageError::Unavailable)?;
        Ok(Self { options, tls })
    }
}

/// The encrypted (or, with `sslmode=prefer`, possibly plain) socket.
type TlsStream =
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// Opens a connection for `role` (shown in `application_name`): the
/// client, and the connection the caller must drive.
async fn connect_raw(
    connector: &Connector,
    role: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
    ),
    StorageError,
> {
    let mut config = connector.options.client.clone();
    let name = config.get_application_name().unwrap_or_default().to_owned();
    config.application_name(format!("{name} ({role})").trim());
    let connecting = config.connect(connector.tls.clone());
    match tokio::time::timeout(connector.options.connect_timeout, connecting).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(error)) => Err(storage_error(
            &format!("connecting to {}", connector.options.redacted_url),
            &error,
        )),
        Err(_) => Err(StorageError::Unavailable(format!(
            "connecting to {} timed out after {} ms",
            connector.options.redacted_url,
            connector.options.connect_timeout.as_millis()
        ))),
    }
}

/// Opens a connection for `role` whose I/O runs as a task on the current
/// runtime.
async fn connect(
    connector: &Connector,
    role: &str,
) -> Result<tokio_postgres::Client, StorageError> {
    let (client, connection) = connect_raw(connector, role).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a database connection ended");
        }
    });
    Ok(client)
}

/// State shared by the handles, the writer thread and the read path.
pub(crate) struct Shared {
    connector: Arc<Connector>,
    pool: Pool,
    queue: CommitQueue,
    recovered: Mutex<Vec<RecoveredStream>>,
    /// Told about committed tails, once attached.
    notifier: OnceLock<Notifier>,
    /// Serialises metadata writes, so changes of a key apply in call order.
    metadata_writes: tokio::sync::Mutex<()>,
    /// The session holding this server's role locks (`coordination`).
    roles: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    read_only: bool,
    /// When the store was opened, Unix milliseconds: the write time of
    /// records stored without one.
    opened_ms: i64,
}

/// The PostgreSQL backend. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStorage {
    shared: Arc<Shared>,
    _writer: Option<Arc<WriterThread<Shared>>>,
    /// Appends decided under the row lock (none when read-only).
    lanes: Option<Arc<lane::Lanes>>,
    /// This store's block of stream ids, and the next id in it.
    id_block: u64,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("url", &self.shared.connector.options.redacted_url)
            .field("schema", &self.shared.connector.options.schema)
            .finish()
    }
}

pub use crate::storage::shared::StoredTail;

impl PostgresStorage {
    /// Connects, migrates the schema (waiting for other replicas doing the
    /// same), loads every stream and starts the writer. Must run inside a
    /// Tokio runtime, which then drives the pooled connections.
    ///
    /// # Errors
    /// When the database is unreachable, a certificate or key named by the
    /// URL cannot be used, a migration fails, or the schema is newer than
    /// this server.
    pub async fn open(options: PostgresOptions) -> Result<Self, StorageError> {
        Self::open_with(options, false).await
    }

    /// Connects and loads every stream without changing anything (for a
    /// live export beside running servers): no migration, no writer.
    ///
    /// # Errors
    /// As [`PostgresStorage::open`]; also when the schema is missing or not
    /// at this server's version.
    pub async fn open_read_only(options: PostgresOptions) -> Result<Self, StorageError> {
        Self::open_with(options, true).await
    }

    async fn open_with(options: PostgresOptions, read_only: bool) -> Result<Self, StorageError> {
        let connector = Arc::new(Connector::new(options.clone())?);
        {
            let client = connect(&connector, "migrations").await?;
            if read_only {
                schema::check_version(&client, &options.schema).await?;
            } else {
                schema::migrate(&client, &options.schema).await?;
            }
        }
        let pool = pool(&connector)?;
        let recovered = load(&pool).await?;
        let shared = Arc::new(Shared {
            connector,
            pool,
            queue: CommitQueue::new("postgres"),
            recovered: Mutex::new(recovered),
            notifier: OnceLock::new(),
            metadata_writes: tokio::sync::Mutex::new(()),
            roles: tokio::sync::Mutex::new(None),
            read_only,
            opened_ms: super::chunk_list::now_ms(),
        });
        if read_only {
            shared.queue.close();
            return Ok(Self {
                shared,
                _writer: None,
                lanes: None,
                id_block: 0,
                next_id: Arc::default(),
            });
        }
        let id_block = replicas::reserve_id_block(&shared.pool).await?;
        let lanes = lane::Lanes::start(&shared, LANES)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("ds-postgres-writer")
            .build()
            .map_err(StorageError::Io)?;
        let writer = writer::Writer::new(shared.clone());
        let thread = std::thread::Builder::new()
            .name("ds-postgres-writer".into())
            .spawn(move || writer.run(runtime))
            .map_err(StorageError::Io)?;
        let handle = WriterThread::new(shared.clone(), |shared| &shared.queue, thread);
        Ok(Self {
            shared,
            _writer: Some(Arc::new(handle)),
            lanes: Some(Arc::new(lanes)),
            id_block,
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        })
    }

    /// The connector, for a [`Listener`] or [`Notifier`] of this store.
    pub fn connector(&self) -> Arc<Connector> {
        self.shared.connector.clone()
    }

    /// Publishes the tails of every later commit through `notifier`
    /// (after the commit, outside its transaction). Only the first call
    /// takes effect; returns whether this one did.
    pub fn attach_notifier(&self, notifier: Notifier) -> bool {
        self.shared.notifier.set(notifier).is_ok()
    }

    /// The stored state of `ids` (those still stored), for re-checking the
    /// tails live readers wait on.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn stream_tails(&self, ids: &[StreamId]) -> Result<Vec<StoredTail>, StorageError> {
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|&id| i64::try_from(id).ok())
            .collect();
        let rows = query(
            &self.shared.pool,
            "reading stream tails",
            "SELECT id, tail, closed, status FROM streams WHERE id = ANY($1::int8[])",
            &[&ids],
        )
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = get(row, 3)?;
                Ok(StoredTail {
                    id: unsigned(get(row, 0)?, "stream id")?,
                    tail: unsigned(get(row, 1)?, "tail")?,
                    closed: get(row, 2)?,
                    soft_deleted: status == "soft_deleted",
                })
            })
            .collect()
    }
}

/// The read pool: connections made on demand up to `pool_size`, a closed
/// one replaced when handed back.
fn pool(connector: &Arc<Connector>) -> Result<Pool, StorageError> {
    let options = &connector.options;
    let mut config = options.client.clone();
    let name = config.get_application_name().unwrap_or_default().to_owned();
    config.application_name(format!("{name} (reader)").trim());
    let manager = Manager::from_config(
        config,
        connector.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StorageError::Unavailable(format!("the connection pool: {e}")))
}

/// Runs one statement on a pooled connection. A connection found broken
/// (the server restarted since it was pooled) is replaced and the
/// statement tried once more: reads are idempotent.
async fn query(
    pool: &Pool,
    action: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StorageError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let client = pool.get().await.map_err(|e| pool_error(action, e))?;
        let statement = client.prepare_cached(sql).await;
        let outcome = match statement {
            Ok(statement) => client.query(&statement, params).await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(rows) => return Ok(rows),
            Err(error) if tries == 1 && is_connection_error(&error) => {
                let _ = deadpool_postgres::Object::take(client);
            }
            Err(error) => return Err(storage_error(action, &error)),
        }
    }
}

fn pool_error(action: &str, error: deadpool_postgres::PoolError) -> StorageError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => storage_error(action, &error),
        other => StorageError::Unavailable(format!("{action}: no database connection: {other}")),
    }
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
) -> Result<T, StorageError> {
    row.try_get(index)
        .map_err(|e| StorageError::Corrupt(format!("an unexpected value in the database: {e}")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(value)
        .map_err(|_| StorageError::Corrupt(format!("a negative {what} ({value}) in the database")))
}

fn optional_unsigned(value: Option<i64>, what: &str) -> Result<Option<u64>, StorageError> {
    value.map(|v| unsigned(v, what)).transpose()
}

/// Every stored stream with its producers, from one consistent snapshot.
async fn load(pool: &Pool) -> Result<Vec<RecoveredStream>, StorageError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| pool_error("loading streams", e))?;
    let failed = |e: tokio_postgres::Error| storage_error("loading streams", &e);
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(failed)?;
    let streams = transaction
        .query(
            &format!("SELECT {STREAM_COLUMNS} FROM streams ORDER BY id"),
            &[],
        )
        .await
        .map_err(failed)?;
    let producers = transaction
        .query(
            "SELECT stream_id, producer_id, epoch, last_seq FROM producers
              ORDER BY stream_id, producer_id",
            &[],
        )
        .await
        .map_err(failed)?;
    transaction.commit().await.map_err(failed)?;
    Ok(streams_with_producers(&streams, &producers)?
        .into_values()
        .collect())
}

/// The columns of `streams` that [`recovered_stream`] reads, in its order.
const STREAM_COLUMNS: &str = stream_columns!();

/// Streams read with [`STREAM_COLUMNS`] and their producers, read as
/// `stream_id, producer_id, epoch, last_seq`, by stream id.
fn streams_with_producers(
    streams: &[tokio_postgres::Row],
    producers: &[tokio_postgres::Row],
) -> Result<BTreeMap<StreamId, RecoveredStream>, StorageError> {
    let mut by_id: BTreeMap<StreamId, RecoveredStream> = BTreeMap::new();
    for row in streams {
        let stream = recovered_stream(row)?;
        by_id.insert(stream.spec.id, stream);
    }
    for row in producers {
        let id = unsigned(get(row, 0)?, "stream id")?;
        let state = ProducerState {
            epoch: unsigned(get(row, 2)?, "producer epoch")?,
            last_seq: unsigned(get(row, 3)?, "producer sequence")?,
        };
        if let Some(stream) = by_id.get_mut(&id) {
            stream.producers.push((get(row, 1)?, state));
        }
    }
    Ok(by_id)
}

fn recovered_stream(row: &tokio_postgres::Row) -> Result<RecoveredStream, StorageError> {
    let id = unsigned(get(row, 0)?, "stream id")?;
    let fork = match (
        optional_unsigned(get(row, 7)?, "fork source")?,
        get::<Option<String>>(row, 8)?,
    ) {
        (Some(source), Some(source_path)) => Some(ForkLink {
            source,
            source_path,
            offset: optional_unsigned(get(row, 9)?, "fork offset")?.unwrap_or_default(),
            sub_offset: optional_unsigned(get(row, 10)?, "fork sub-offset")?.unwrap_or_default(),
        }),
        _ => None,
    };
    let closed: bool = get(row, 12)?;
    let closed_by = match (
        get::<Option<String>>(row, 13)?,
        optional_unsigned(get(row, 14)?, "closing epoch")?,
        optional_unsigned(get(row, 15)?, "closing sequence")?,
    ) {
        (Some(producer_id), Some(epoch), Some(seq)) => Some(ClosedBy {
            producer_id,
            epoch,
            seq,
        }),
        _ => None,
    };
    let status: String = get(row, 17)?;
    Ok(RecoveredStream {
        spec: StreamSpec {
            id,
            path: get(row, 1)?,
            content_type: get(row, 2)?,
            ttl_secs: optional_unsigned(get(row, 3)?, "Stream-TTL")?,
            expires_at_ms: get(row, 4)?,
            created_at_ms: get(row, 5)?,
            fork,
            base: unsigned(get(row, 6)?, "base")?,
        },
        head: unsigned(get(row, 18)?, "head")?,
        tail: unsigned(get(row, 11)?, "tail")?,
        closed: closed.then_some(closed_by),
        producers: Vec::new(),
        stream_seq: get(row, 16)?,
        soft_deleted: status == "soft_deleted",
    })
}

const READ_SQL: &str = "
SELECT start_pos, end_pos, data FROM records
 WHERE stream_id = $1 AND end_pos > $2 AND start_pos < $3 AND start_pos < $4
 ORDER BY end_pos";
const FIRST_RECORD_SQL: &str = "
SELECT start_pos, end_pos, data FROM records
 WHERE stream_id = $1 AND end_pos > $2 AND start_pos < $3
 ORDER BY end_pos LIMIT 1";

/// Reads `[from, until)` of stream `id`, stopping after the record that
/// reaches `max_bytes`. Records being contiguous, those are exactly the
/// records starting before `from + max_bytes`, which bounds the scan.
async fn read(
    pool: &Pool,
    id: StreamId,
    from: u64,
    until: u64,
    max_bytes: usize,
) -> Result<ReadChunk, StorageError> {
    let mut chunk = ReadChunk::empty(from);
    if from >= until {
        return Ok(chunk);
    }
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (id_i, from_i, until_i) = (clamp(id), clamp(from), clamp(until));
    let budget = clamp(from.saturating_add(max_bytes.max(1) as u64));
    let mut rows = query(
        pool,
        "reading records",
        READ_SQL,
        &[&id_i, &from_i, &until_i, &budget],
    )
    .await?;
    if rows.is_empty() {
        // `from` lies before the stream's first record (a fork's base).
        rows = query(
            pool,
            "reading records",
            FIRST_RECORD_SQL,
            &[&id_i, &from_i, &until_i],
        )
        .await?;
    }
    let first_start = match rows.first() {
        Some(row) => Some(unsigned(get(row, 0)?, "record start")?),
        None => None,
    };
    // Nothing where the read starts: retention may have dropped it.
    if first_start.is_none_or(|start| start > from)
        && let Some(head) = chunks::trimmed_head(pool, id, from).await?
    {
        return Err(StorageError::Trimmed { id, head });
    }
    let mut taken = 0usize;
    for row in &rows {
        let start = unsigned(get(row, 0)?, "record start")?;
        let end = unsigned(get(row, 1)?, "record end")?;
        let data: &[u8] = get(row, 2)?;
        if end.checked_sub(start) != Some(data.len() as u64) {
            return Err(StorageError::Corrupt(format!(
                "record [{start}, {end}) of stream {id} holds {} bytes",
                data.len()
            )));
        }
        if !chunk.records.is_empty() && start != chunk.end {
            return Err(StorageError::Corrupt(format!(
                "stream {id} has a gap at position {}",
                chunk.end
            )));
        }
        let part = ReadChunk::part(start, data.len(), from, until);
        let piece = Bytes::copy_from_slice(&data[part.clone()]);
        taken += chunk.push(start, part, piece);
        if taken >= max_bytes || chunk.end >= until {
            break;
        }
    }
    Ok(chunk)
}

impl Storage for PostgresStorage {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        if self.shared.read_only {
            return Box::pin(std::future::ready(Err(StorageError::Unavailable(
                "the store is open read-only".into(),
            ))));
        }
        if let Mutation::Trim { id, before } = mutation {
            // Only old data: no ordering with the writer's batches needed.
            let shared = self.shared.clone();
            return Box::pin(async move {
                let chunk_bytes = shared.connector.options.chunk_bytes;
                chunks::trim(&shared.pool, id, before, chunk_bytes).await
            });
        }
        self.shared.queue.submit(mutation)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        let shared = self.shared.clone();
        Box::pin(async move { read(&shared.pool, id, from, until, max_bytes).await })
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        super::take_recovered(&self.shared.recovered)
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        let shared = self.shared.clone();
        let key = key.to_owned();
        Box::pin(async move {
            super::metadata::check_key(&key)?;
            if shared.read_only {
                return Err(StorageError::Unavailable(
                    "the store is open read-only".into(),
                ));
            }
            let _serialised = shared.metadata_writes.lock().await;
            match value {
                Some(value) => {
                    let value: &[u8] = &value;
                    query(
                        &shared.pool,
                        "writing metadata",
                        "INSERT INTO metadata (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &value],
                    )
                    .await?;
                }
                None => {
                    query(
                        &shared.pool,
                        "removing metadata",
                        "DELETE FROM metadata WHERE key = $1",
                        &[&key],
                    )
                    .await?;
                }
            }
            Ok(())
        })
    }

    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<ChunkInfo>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let chunk_bytes = shared.connector.options.chunk_bytes;
            chunks::chunks(&shared.pool, id, chunk_bytes, shared.opened_ms).await
        })
    }

    fn shared(&self) -> Option<Arc<dyn super::shared::SharedStreams>> {
        Some(Arc::new(self.clone()))
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let rows = query(
                &shared.pool,
                "reading metadata",
                "SELECT key, value FROM metadata",
                &[],
            )
            .await?;
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                let value: &[u8] = get(row, 1)?;
                entries.push((get::<String>(row, 0)?, Bytes::copy_from_slice(value)));
            }
            // Byte order, as the other backends: not the database collation.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(entries)
        })
    }
}
