//! Appends decided inside the database transaction, for replicas that
//! share the store ([`SharedStreams::append`](crate::storage::shared::SharedStreams::append)).
//!
//! Each lane is a thread with its own connection (a [`Writer`] that also
//! prepares the row-locking statements). It takes every append queued
//! since its last commit and, in one transaction:
//! 1. `BEGIN`, `SELECT … FOR UPDATE` of the streams' rows (in id order, so
//!    lanes of several replicas never deadlock on each other) and their
//!    producers, pipelined in one round trip;
//! 2. runs each append's [`Decide`] in queue order over the locked row,
//!    which then moves to the state the append leaves;
//! 3. writes the records, producer states and tails (the writer's
//!    set-based statements) and commits, in a second round trip.
//!
//! The row lock makes the decision and the write one step across every
//! replica: offsets are dense and strictly increasing whoever writes. A
//! commit whose outcome stays unknown answers `Unavailable` (the writer's
//! `txid_status` check decides when it can), never a guess; a producer's
//! retry is then judged against what the database holds.
//!
//! Streams are spread over the lanes by id, so one stream's appends keep
//! their order within a replica and hot streams on different lanes commit
//! in parallel.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::error::{copy_error, is_connection_error, storage_error, timed_out};
use super::plan::{self, Known};
use super::streams_with_producers;
use super::writer::{Attempt, Writer};
use crate::storage::shared::Decide;
use crate::storage::{Append, Mutation, RecoveredStream, StorageError, StorageFuture, StreamId};

/// Most appends one transaction takes.
const MAX_JOBS: usize = 1024;

/// Statements a lane prepares besides the writer's: the row locks.
const LOCK_SQL: &[&str] = &[
    concat!(
        "SELECT ",
        stream_columns!(),
        " FROM streams WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE"
    ),
    "SELECT stream_id, producer_id, epoch, last_seq FROM producers
      WHERE stream_id = ANY($1::int8[])",
];

/// One append waiting for its lane.
struct Job {
    id: StreamId,
    decide: Decide,
    reply: oneshot::Sender<Result<RecoveredStream, StorageError>>,
}

/// The lanes of one store; appends are handed to them by stream id.
pub(super) struct Lanes {
    senders: Vec<mpsc::UnboundedSender<Job>>,
}

impl Lanes {
    /// Starts `count` lane threads over `shared`; they end when the lanes
    /// are dropped.
    pub(super) fn start(shared: &Arc<Shared>, count: usize) -> Result<Self, StorageError> {
        let mut senders = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let (sender, receiver) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StorageError::Io)?;
            let writer = Writer::with_extra(shared.clone(), LOCK_SQL);
            std::thread::Builder::new()
                .name(format!("ds-postgres-lane-{index}"))
                .spawn(move || runtime.block_on(run(writer, receiver)))
                .map_err(StorageError::Io)?;
            senders.push(sender);
        }
        Ok(Self { senders })
    }

    /// Queues an append of stream `id` on its lane.
    pub(super) fn append(&self, id: StreamId, decide: Decide) -> StorageFuture<RecoveredStream> {
        let (reply, answer) = oneshot::channel();
        let lane = &self.senders[(id % self.senders.len() as u64) as usize];
        let sent = lane.send(Job { id, decide, reply });
        Box::pin(async move {
            if sent.is_err() {
                return Err(StorageError::Unavailable("the store is closed".into()));
            }
            answer.await.unwrap_or_else(|_| {
                Err(StorageError::Unavailable(
                    "the append was dropped unanswered".into(),
                ))
            })
        })
    }
}

/// Commits batches until the lane's queue is closed.
async fn run(mut writer: Writer, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let verdicts = commit(&mut writer, &mut batch).await;
        for (job, verdict) in batch.into_iter().zip(verdicts) {
            let _ = job.reply.send(verdict);
        }
    }
}

type Verdict = Result<RecoveredStream, StorageError>;

/// Runs one transaction for `batch`: one verdict per job.
async fn commit(writer: &mut Writer, batch: &mut [Job]) -> Vec<Verdict> {
    let failed_all = |error: &StorageError, n: usize| -> Vec<Verdict> {
        (0..n).map(|_| Err(copy_error(error))).collect()
    };
    if let Err(error) = writer.connect().await {
        return failed_all(&error, batch.len());
    }
    let mut rows = match lock(writer, batch).await {
        Ok(rows) => rows,
        Err(error) => return failed_all(&error, batch.len()),
    };
    let mut known = Known::new();
    for (&id, row) in &rows {
        known.insert(id, Some(row.tail));
    }
    let mut verdicts = Vec::with_capacity(batch.len());
    let mut mutations = Vec::new();
    for job in batch.iter_mut() {
        let Some(row) = rows.get_mut(&job.id).filter(|row| !row.soft_deleted) else {
            verdicts.push(Err(StorageError::UnknownStream(job.id)));
            continue;
        };
        match (job.decide)(row) {
            Some(append) if append.start != row.tail => {
                verdicts.push(Err(StorageError::OutOfOrder {
                    id: job.id,
                    start: append.start,
                    tail: row.tail,
                }));
            }
            Some(append) => {
                apply(row, &append);
                mutations.push(Mutation::Append(append));
                verdicts.push(Ok(row.clone()));
            }
            None => verdicts.push(Ok(row.clone())),
        }
    }
    let plan = plan::plan(&mutations, &known, &Default::default());
    if let Some((_, error)) = plan.refused.first() {
        // A value past the database's range: refuse the batch, as later
        // appends of its stream were decided on top of it.
        let error = copy_error(error);
        rollback(writer).await;
        return failed_all(&error, batch.len());
    }
    if plan.is_empty() {
        // Nothing to write: end the transaction, releasing the locks.
        rollback(writer).await;
        return verdicts;
    }
    let outcome = match writer.attempt(&plan, false).await {
        Attempt::InDoubt { txid, error } => writer.resolve(txid, error).await,
        other => other,
    };
    match outcome {
        Attempt::Committed => {
            if let Some(notifier) = writer.shared.notifier.get() {
                notifier.notify(&plan.changed);
            }
            verdicts
        }
        Attempt::Failed(error) | Attempt::InDoubt { error, .. } => failed_all(&error, batch.len()),
        Attempt::Mismatch { .. } => failed_all(
            &StorageError::Unavailable("a locked stream changed under its lock".into()),
            batch.len(),
        ),
    }
}

/// Begins the transaction and locks the batch's stream rows: the streams
/// found, with their producers.
async fn lock(
    writer: &mut Writer,
    batch: &[Job],
) -> Result<HashMap<StreamId, RecoveredStream>, StorageError> {
    let Some(connection) = writer.connection.as_ref() else {
        return Err(StorageError::Unavailable("no connection".into()));
    };
    let mut ids: Vec<i64> = batch
        .iter()
        .filter_map(|job| i64::try_from(job.id).ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let client = &connection.client;
    let deadline = writer.shared.connector.options.transaction_deadline();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
    let locked = tokio::time::timeout(deadline, async {
        tokio::join!(
            client.batch_execute("BEGIN"),
            client.query(&connection.extra[0], &params),
            client.query(&connection.extra[1], &params),
        )
    })
    .await;
    let (begun, streams, producers) = match locked {
        Ok(results) => results,
        Err(_) => {
            // `COMMIT` never sent: the server aborts with the connection.
            writer.connection = None;
            return Err(timed_out("locking streams"));
        }
    };
    let outcome = begun
        .and(streams)
        .and_then(|streams| producers.map(|producers| (streams, producers)));
    match outcome {
        Ok((streams, producers)) => {
            let rows = streams_with_producers(&streams, &producers);
            if rows.is_err() {
                rollback(writer).await;
            }
            Ok(rows?.into_iter().collect())
        }
        Err(error) => {
            if is_connection_error(&error) {
                writer.connection = None;
            } else {
                rollback(writer).await;
            }
            Err(storage_error("locking streams", &error))
        }
    }
}

/// Ends the open transaction without writing; a failure drops the
/// connection (the server then aborts it).
async fn rollback(writer: &mut Writer) {
    let Some(connection) = writer.connection.as_ref() else {
        return;
    };
    if connection.client.batch_execute("ROLLBACK").await.is_err() {
        writer.connection = None;
    }
}

/// Moves a locked row to the state `append` leaves it in.
fn apply(row: &mut RecoveredStream, append: &Append) {
    row.tail = append.start + append.data.len() as u64;
    if let Some(close) = &append.close
        && row.closed.is_none()
    {
        row.closed = Some(close.clone());
    }
    if let Some((id, state)) = &append.producer {
        match row.producers.iter_mut().find(|(known, _)| known == id) {
            Some(slot) => slot.1 = *state,
            None => row.producers.push((id.clone(), *state)),
        }
    }
    if let Some(seq) = &append.stream_seq {
        row.stream_seq = Some(seq.clone());
    }
}
