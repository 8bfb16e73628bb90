//! The group-commit writer: one thread with its own single-threaded Tokio
//! runtime and its own connection, draining the commit queue. Everything
//! queued since the last commit becomes one transaction of set-based
//! statements (`unnest` arrays), sent pipelined in one round trip, then
//! `COMMIT` in a second: a hot stream gets as many appends per commit as
//! arrive during one.
//!
//! # Outcomes
//! - The tail check (`UPDATE … WHERE tail = start`) failing rolls back; the
//!   writer learns the stored tails and plans again, refusing exactly the
//!   appends that do not start at their tail (the `OutOfOrder` contract).
//! - A failure before `COMMIT` was sent: nothing was committed; the batch
//!   fails [`StorageError::Unavailable`] (or `Full`).
//! - The connection lost (or silent past the deadline) after `COMMIT` was
//!   sent: the outcome is unknown. The writer reconnects and asks the
//!   server (`txid_status`) what became of the transaction, and answers
//!   accordingly; if it cannot find out in time it answers `Unavailable`,
//!   never a guess, and logs the transaction id.
//! - Unreachable database: batches fail at once while the writer waits
//!   out a growing back-off (up to [`MAX_BACKOFF`]) between attempts to
//!   reconnect; the first batch after recovery reconnects.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use super::Shared;
use super::error::{
    copy_error, is_aborted_transaction, is_connection_error, storage_error, timed_out,
};
use super::plan::{self, Known, Plan};
use super::sql::{
    CREATE_SQL, PRODUCERS_SQL, RECORDS_SQL, REMOVE_SQL, SOFT_DELETE_SQL, STATUS_SQL, TAILS_SQL,
    TXID_SQL, UPDATE_SQL,
};
use crate::metrics::event::StorageCommits;
use crate::storage::queue::{Ack, Next, commit_spans};
use crate::storage::{Mutation, StorageError, StreamId};

/// Most payload bytes one transaction commits.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Plans per batch before giving up (each learns the tails that refused
/// the previous one, so a second plan is exact).
const MAX_ATTEMPTS: usize = 4;
/// First wait before reconnecting after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `application_name` suffix of the writer's connection.
const ROLE: &str = "writer";

/// The writer's statements, prepared once per connection.
struct Statements {
    txid: Statement,
    create: Statement,
    update: Statement,
    records: Statement,
    producers: Statement,
    soft_delete: Statement,
    remove: Statement,
    tails: Statement,
    status: Statement,
}

pub(super) struct Connection {
    pub(super) client: Client,
    statements: Statements,
    /// The statements of [`Writer::with_extra`], in its order.
    pub(super) extra: Vec<Statement>,
}

/// What one transaction attempt came to.
pub(super) enum Attempt {
    Committed,
    /// Nothing committed; these streams failed the tail check, these
    /// creations found their stream already stored.
    Mismatch {
        streams: Vec<StreamId>,
        creates: Vec<usize>,
    },
    /// Nothing committed.
    Failed(StorageError),
    /// `COMMIT` was sent; its answer never came.
    InDoubt {
        txid: i64,
        error: StorageError,
    },
}

/// The writer thread's state.
pub struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) connection: Option<Connection>,
    /// More statements to prepare on each connection.
    extra_sql: &'static [&'static str],
    /// No connection attempt before this instant (back-off).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Transactions whose outcome could not be learnt, to check once the
    /// database answers again.
    in_doubt: Vec<i64>,
    /// The commit histograms, resolved once.
    commits: StorageCommits,
}

impl Writer {
    /// A writer for `shared`'s queue; connects on its first batch.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self::with_extra(shared, &[])
    }

    /// A writer that also prepares `extra_sql` on each connection (see
    /// [`Connection::extra`]).
    pub fn with_extra(shared: Arc<Shared>, extra_sql: &'static [&'static str]) -> Self {
        Self {
            shared,
            connection: None,
            extra_sql,
            retry_at: None,
            backoff: MIN_BACKOFF,
            in_doubt: Vec::new(),
            commits: StorageCommits::register("postgres"),
        }
    }

    /// Commits batches until the queue is closed and drained.
    pub fn run(mut self, runtime: tokio::runtime::Runtime) {
        while let Next::Batch(batch) = self.shared.queue.next_batch(MAX_BATCH_BYTES, None) {
            runtime.block_on(self.commit(batch));
        }
    }

    async fn commit(&mut self, batch: Vec<(Mutation, Ack)>) {
        let spans = commit_spans("postgres", batch.iter().map(|(_, ack)| ack), batch.len());
        let started = Instant::now();
        let (mutations, acks): (Vec<Mutation>, Vec<Ack>) = batch.into_iter().unzip();
        let (verdicts, committed) = self.apply(&mutations).await;
        if committed > 0 {
            self.commits.emit(committed, started.elapsed());
        }
        drop(spans);
        for (ack, verdict) in acks.into_iter().zip(verdicts) {
            let _ = ack.send(verdict);
        }
    }

    /// Commits what it can of `batch`: one verdict per mutation, and how
    /// many committed.
    async fn apply(&mut self, batch: &[Mutation]) -> (Vec<Result<(), StorageError>>, usize) {
        let mut verdicts: Vec<Option<Result<(), StorageError>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut known = Known::new();
        let mut skip: HashSet<usize> = HashSet::new();
        let mut committed = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            let plan = plan::plan(batch, &known, &skip);
            for (job, error) in plan.refused.iter().map(|(job, e)| (*job, copy_error(e))) {
                verdicts[job] = Some(Err(error));
            }
            if plan.is_empty() {
                break;
            }
            let outcome = match self.connect().await {
                Ok(()) => self.attempt(&plan, true).await,
                Err(error) => Attempt::Failed(error),
            };
            let outcome = match outcome {
                Attempt::InDoubt { txid, error } => self.resolve(txid, error).await,
                other => other,
            };
            match outcome {
                Attempt::Committed => {
                    committed = plan.included.len();
                    for &job in &plan.included {
                        verdicts[job] = Some(Ok(()));
                    }
                    if let Some(notifier) = self.shared.notifier.get() {
                        notifier.notify(&plan.changed);
                    }
                    break;
                }
                Attempt::Failed(error) | Attempt::InDoubt { error, .. } => {
                    for &job in &plan.included {
                        verdicts[job] = Some(Err(copy_error(&error)));
                    }
                    break;
                }
                Attempt::Mismatch { streams, creates } => {
                    for job in creates {
                        let id = match &batch[job] {
                            Mutation::Create { spec, .. } => spec.id,
                            _ => 0,
                        };
                        verdicts[job] = Some(Err(StorageError::Unavailable(format!(
                            "stream {id} (or its path) is already stored in the database"
                        ))));
                        skip.insert(job);
                    }
                    // Refused jobs are planned again too: with the real
                    // tails, one refused for not chaining on a write that
                    // the database then refused may start at the tail.
                    if let Err(error) = self.learn_tails(&streams, &mut known).await {
                        for &job in plan.included.iter().filter(|job| !skip.contains(job)) {
                            verdicts[job] = Some(Err(copy_error(&error)));
                        }
                        break;
                    }
                    if attempt == MAX_ATTEMPTS {
                        for &job in plan.included.iter().filter(|job| !skip.contains(job)) {
                            verdicts[job] = Some(Err(StorageError::Unavailable(
                                "the batch could not be reconciled with the stored tails".into(),
                            )));
                        }
                    }
                }
            }
        }
        let verdicts = verdicts
            .into_iter()
            .map(|v| {
                v.unwrap_or_else(|| {
                    Err(StorageError::Unavailable(
                        "the write was not attempted".into(),
                    ))
                })
            })
            .collect();
        (verdicts, committed)
    }

    /// Makes sure there is a connection, unless the back-off says to wait.
    pub(super) async fn connect(&mut self) -> Result<(), StorageError> {
        if self.connection.is_some() {
            return Ok(());
        }
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return Err(StorageError::Unavailable(format!(
                "the database at {} is unreachable; reconnecting",
                self.shared.connector.options.redacted_url
            )));
        }
        match self.open_connection().await {
            Ok(connection) => {
                self.connection = Some(connection);
                self.retry_at = None;
                self.backoff = MIN_BACKOFF;
                self.check_in_doubt().await;
                Ok(())
            }
            Err(error) => {
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Err(error)
            }
        }
    }

    async fn open_connection(&self) -> Result<Connection, StorageError> {
        let client = super::connect(&self.shared.connector, ROLE).await?;
        let prepare = |sql: &'static str| client.prepare(sql);
        let prepared = futures_util::future::try_join_all(
            [
                prepare(TXID_SQL),
                prepare(CREATE_SQL),
                prepare(UPDATE_SQL),
                prepare(RECORDS_SQL),
                prepare(PRODUCERS_SQL),
                prepare(SOFT_DELETE_SQL),
                prepare(REMOVE_SQL),
                prepare(TAILS_SQL),
                prepare(STATUS_SQL),
            ]
            .into_iter()
            .chain(self.extra_sql.iter().map(|sql| prepare(sql))),
        );
        let prepared =
            tokio::time::timeout(self.shared.connector.options.connect_timeout, prepared)
                .await
                .map_err(|_| timed_out("preparing the writer's statements"))?
                .map_err(|e| storage_error("preparing the writer's statements", &e))?;
        let mut prepared = prepared.into_iter();
        let mut next = || {
            prepared
                .next()
                .ok_or_else(|| timed_out("preparing statements"))
        };
        let statements = Statements {
            txid: next()?,
            create: next()?,
            update: next()?,
            records: next()?,
            producers: next()?,
            soft_delete: next()?,
            remove: next()?,
            tails: next()?,
            status: next()?,
        };
        let extra = prepared.collect();
        Ok(Connection {
            client,
            statements,
            extra,
        })
    }

    /// One transaction: the statements pipelined (after `BEGIN` when
    /// `begin`; otherwise the caller began it), checked, then `COMMIT` (or
    /// `ROLLBACK` when a tail check failed).
    pub(super) async fn attempt(&mut self, plan: &Plan, begin: bool) -> Attempt {
        let Some(connection) = self.connection.as_ref() else {
            return Attempt::Failed(StorageError::Unavailable("no connection".into()));
        };
        let deadline = self.shared.connector.options.transaction_deadline();
        let statements =
            tokio::time::timeout(deadline, run_statements(connection, plan, begin)).await;
        let results = match statements {
            Ok(results) => results,
            Err(_) => {
                // `COMMIT` was never sent: dropping the connection makes
                // the server abort the transaction.
                self.connection = None;
                return Attempt::Failed(timed_out("the transaction's statements"));
            }
        };
        let connection_lost = results
            .errors
            .iter()
            .any(|(_, error)| is_connection_error(error));
        if connection_lost {
            self.connection = None;
            let (action, error) = &results.errors[0];
            return Attempt::Failed(storage_error(action, error));
        }
        let mismatched: Vec<StreamId> = plan
            .updates
            .id
            .iter()
            .filter(|id| !results.updated.contains(id))
            .filter_map(|&id| u64::try_from(id).ok())
            .collect();
        let conflicting: Vec<usize> = plan
            .creates
            .id
            .iter()
            .zip(&plan.creates.job)
            .filter(|(id, _)| !results.created.contains(id))
            .map(|(_, &job)| job)
            .collect();
        let root_error = results
            .errors
            .iter()
            .find(|(_, error)| !is_aborted_transaction(error));
        let check_passed = results.checked && mismatched.is_empty() && conflicting.is_empty();
        if !results.errors.is_empty() || !check_passed {
            if let Err(error) = connection.client.batch_execute("ROLLBACK").await {
                self.connection = None;
                return Attempt::Failed(storage_error("rolling back", &error));
            }
            if results.checked && (!mismatched.is_empty() || !conflicting.is_empty()) {
                return Attempt::Mismatch {
                    streams: mismatched,
                    creates: conflicting,
                };
            }
            return Attempt::Failed(match root_error.or(results.errors.first()) {
                Some((action, error)) => storage_error(action, error),
                None => StorageError::Unavailable("the transaction failed".into()),
            });
        }
        let Some(txid) = results.txid else {
            return Attempt::Failed(StorageError::Unavailable(
                "the transaction id was not returned".into(),
            ));
        };
        match tokio::time::timeout(deadline, connection.client.batch_execute("COMMIT")).await {
            Ok(Ok(())) => Attempt::Committed,
            Ok(Err(error)) if !is_connection_error(&error) => {
                // Refused at commit (a deferred check, serialization): the
                // server rolled it back.
                Attempt::Failed(storage_error("committing", &error))
            }
            Ok(Err(error)) => {
                self.connection = None;
                Attempt::InDoubt {
                    txid,
                    error: storage_error("committing (outcome unknown)", &error),
                }
            }
            Err(_) => {
                self.connection = None;
                Attempt::InDoubt {
                    txid,
                    error: timed_out("COMMIT (outcome unknown)"),
                }
            }
        }
    }

    /// Finds out what became of transaction `txid` after its `COMMIT` went
    /// unanswered, reconnecting as needed, within the transaction deadline.
    pub(super) async fn resolve(&mut self, txid: i64, error: StorageError) -> Attempt {
        let give_up = Instant::now() + self.shared.connector.options.transaction_deadline();
        loop {
            if self.connection.is_none() {
                self.retry_at = None;
                let _ = self.connect().await;
            }
            if let Some(connection) = self.connection.as_ref() {
                let status = connection
                    .client
                    .query_one(&connection.statements.status, &[&txid])
                    .await;
                match status {
                    Ok(row) => match row
                        .try_get::<_, Option<String>>(0)
                        .ok()
                        .flatten()
                        .as_deref()
                    {
                        Some("committed") => return Attempt::Committed,
                        Some("aborted") => {
                            return Attempt::Failed(StorageError::Unavailable(format!(
                                "the transaction was aborted: {error}"
                            )));
                        }
                        // Still in progress: the old session is finishing.
                        _ => {}
                    },
                    Err(e) if is_connection_error(&e) => self.connection = None,
                    Err(_) => {}
                }
            }
            if Instant::now() >= give_up {
                tracing::error!(
                    txid,
                    error = %error,
                    "a commit's outcome is unknown; its writes were answered 503 and may \
                     nevertheless be stored"
                );
                self.in_doubt.push(txid);
                return Attempt::InDoubt { txid, error };
            }
            tokio::time::sleep(MIN_BACKOFF).await;
        }
    }

    /// Reports what became of transactions answered while in doubt.
    async fn check_in_doubt(&mut self) {
        let Some(connection) = self.connection.as_ref() else {
            return;
        };
        let mut still = Vec::new();
        for txid in std::mem::take(&mut self.in_doubt) {
            let status = connection
                .client
                .query_one(&connection.statements.status, &[&txid])
                .await
                .ok()
                .and_then(|row| row.try_get::<_, Option<String>>(0).ok().flatten());
            match status.as_deref() {
                Some("committed") => tracing::error!(
                    txid,
                    "a transaction answered 503 while in doubt was committed: the streams it \
                     wrote are ahead of this server's view until it restarts"
                ),
                Some("aborted") => tracing::info!(txid, "an in-doubt transaction was aborted"),
                _ => still.push(txid),
            }
        }
        self.in_doubt = still;
    }

    /// Reads the stored tails of `streams` into `known`.
    async fn learn_tails(
        &mut self,
        streams: &[StreamId],
        known: &mut Known,
    ) -> Result<(), StorageError> {
        let Some(connection) = self.connection.as_ref() else {
            return Err(StorageError::Unavailable("no connection".into()));
        };
        let ids: Vec<i64> = streams
            .iter()
            .filter_map(|&id| i64::try_from(id).ok())
            .collect();
        let rows = connection
            .client
            .query(&connection.statements.tails, &[&ids])
            .await
            .map_err(|e| {
                if is_connection_error(&e) {
                    self.connection = None;
                }
                storage_error("reading stored tails", &e)
            })?;
        for &id in streams {
            known.insert(id, None);
        }
        for row in rows {
            let id: i64 = row
                .try_get(0)
                .map_err(|e| storage_error("reading stored tails", &e))?;
            let tail: i64 = row
                .try_get(1)
                .map_err(|e| storage_error("reading stored tails", &e))?;
            if let (Ok(id), Ok(tail)) = (u64::try_from(id), u64::try_from(tail)) {
                known.insert(id, Some(tail));
            }
        }
        Ok(())
    }
}

/// What the pipelined statements returned.
struct Results {
    txid: Option<i64>,
    created: HashSet<i64>,
    updated: HashSet<i64>,
    /// Whether the creations and the tail check both ran (their results
    /// are meaningful even if a later statement failed).
    checked: bool,
    /// Failures, in statement order, with what was being done.
    errors: Vec<(&'static str, tokio_postgres::Error)>,
}

/// Sends `BEGIN` and every statement of `plan` without waiting in
/// between, then collects the answers.
async fn run_statements(connection: &Connection, plan: &Plan, begin: bool) -> Results {
    let client = &connection.client;
    let s = &connection.statements;
    let now = now_ms();
    let c = &plan.creates;
    let u = &plan.updates;
    let r = &plan.records;
    let p = &plan.producers;
    let data: Vec<&[u8]> = r.data.iter().map(|d| d.as_ref()).collect();
    let create_params: [&(dyn ToSql + Sync); 14] = [
        &c.id,
        &c.path,
        &c.content_type,
        &c.ttl_secs,
        &c.expires_at_ms,
        &c.created_at_ms,
        &c.base,
        &c.fork_source,
        &c.fork_source_path,
        &c.fork_offset,
        &c.fork_sub_offset,
        &c.tail,
        &c.closed,
        &now,
    ];
    let update_params: [&(dyn ToSql + Sync); 9] = [
        &u.id,
        &u.start,
        &u.new_tail,
        &u.close,
        &u.closed_by_producer,
        &u.closed_by_epoch,
        &u.closed_by_seq,
        &u.stream_seq,
        &now,
    ];
    let record_params: [&(dyn ToSql + Sync); 4] = [&r.stream_id, &r.start, &r.end, &data];
    let producer_params: [&(dyn ToSql + Sync); 4] =
        [&p.stream_id, &p.producer_id, &p.epoch, &p.last_seq];
    let soft_params: [&(dyn ToSql + Sync); 1] = [&plan.soft_deletes];
    let remove_params: [&(dyn ToSql + Sync); 1] = [&plan.removes];

    // Each future sends its request when first polled; `join!` polls them
    // in this order, so they go out back to back, in order.
    let (begin, txid, created, updated, records, producers, soft, removed) = tokio::join!(
        optional(begin, client.batch_execute("BEGIN")),
        client.query_one(&s.txid, &[]),
        optional(!c.id.is_empty(), client.query(&s.create, &create_params)),
        optional(!u.id.is_empty(), client.query(&s.update, &update_params)),
        optional(
            !r.stream_id.is_empty(),
            client.execute(&s.records, &record_params)
        ),
        optional(
            !p.stream_id.is_empty(),
            client.execute(&s.producers, &producer_params)
        ),
        optional(
            !plan.soft_deletes.is_empty(),
            client.execute(&s.soft_delete, &soft_params)
        ),
        optional(
            !plan.removes.is_empty(),
            client.execute(&s.remove, &remove_params)
        ),
    );
    let mut results = Results {
        txid: None,
        created: HashSet::new(),
        updated: HashSet::new(),
        checked: false,
        errors: Vec::new(),
    };
    if let Some(Err(error)) = begin {
        results.errors.push(("beginning a transaction", error));
    }
    match txid {
        Ok(row) => match row.try_get(0) {
            Ok(txid) => results.txid = Some(txid),
            Err(error) => results.errors.push(("reading the transaction id", error)),
        },
        Err(error) => results.errors.push(("reading the transaction id", error)),
    }
    let ids = |rows: Vec<tokio_postgres::Row>| -> HashSet<i64> {
        rows.iter().filter_map(|row| row.try_get(0).ok()).collect()
    };
    let mut checked = true;
    match created {
        Some(Ok(rows)) => results.created = ids(rows),
        Some(Err(error)) => {
            checked = false;
            results.errors.push(("creating streams", error));
        }
        None => {}
    }
    match updated {
        Some(Ok(rows)) => results.updated = ids(rows),
        Some(Err(error)) => {
            checked = false;
            results.errors.push(("appending to streams", error));
        }
        None => {}
    }
    results.checked = checked;
    for (action, outcome) in [
        ("storing records", records),
        ("storing producer state", producers),
        ("soft-deleting streams", soft),
        ("removing streams", removed),
    ] {
        if let Some(Err(error)) = outcome {
            results.errors.push((action, error));
        }
    }
    results
}

/// Runs `future` only when `wanted`, so empty statements cost nothing.
async fn optional<T>(wanted: bool, future: impl Future<Output = T>) -> Option<T> {
    if wanted { Some(future.await) } else { None }
}

fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
