//! Cross-replica wake-ups over `LISTEN`/`NOTIFY`.
//!
//! [`Notifier`] publishes `(stream, tail)` pairs on the schema's channel
//! from its own connection, **outside** the append transactions (a
//! `NOTIFY` inside one takes a global lock at commit that serialises
//! every committing transaction): everything reported while one
//! `pg_notify` is on its way goes out in the next, merged per stream.
//! Notifications are best effort; a lost one is covered by the readers'
//! periodic re-check.
//!
//! [`Listener`] holds a connection that `LISTEN`s on the channel and hands
//! what arrives to a channel of [`ListenEvent`]s, reconnecting with
//! back-off when the connection fails. After every (re)connection it sends
//! [`ListenEvent::Resync`]: what was published meanwhile is lost, so
//! subscribers must re-check every tail they wait on.
//!
//! Payloads are `id:tail` pairs separated by commas, at most
//! [`MAX_PAYLOAD_BYTES`] each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::Connector;
use super::writer::MAX_BACKOFF;
use crate::storage::StreamId;

/// Longest payload sent in one notification (PostgreSQL's limit is 8000
/// bytes).
pub const MAX_PAYLOAD_BYTES: usize = 7_900;

/// First wait before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The notification channel of the store in `schema`.
pub fn channel(schema: &str) -> String {
    format!("{schema}.tails")
}

/// What a [`Listener`] reports.
pub use crate::storage::shared::TailEvent as ListenEvent;

/// Publishes tails; cheap to clone. Its task ends when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct Notifier {
    sender: mpsc::UnboundedSender<Vec<(StreamId, u64)>>,
}

impl Notifier {
    /// Starts the publishing task on the current Tokio runtime.
    pub fn spawn(connector: Arc<Connector>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(publish(connector, receiver));
        Self { sender }
    }

    /// Queues `tails` for the next notification; never blocks.
    pub fn notify(&self, tails: &[(StreamId, u64)]) {
        if !tails.is_empty() {
            let _ = self.sender.send(tails.to_vec());
        }
    }
}

async fn publish(
    connector: Arc<Connector>,
    mut receiver: mpsc::UnboundedReceiver<Vec<(StreamId, u64)>>,
) {
    let channel = channel(&connector.options.schema);
    let mut connection: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    let mut backoff = MIN_BACKOFF;
    let mut retry_at = tokio::time::Instant::now();
    while let Some(first) = receiver.recv().await {
        let mut merged: HashMap<StreamId, u64> = HashMap::new();
        let mut merge = |tails: Vec<(StreamId, u64)>| {
            for (id, tail) in tails {
                let slot = merged.entry(id).or_insert(tail);
                *slot = (*slot).max(tail);
            }
        };
        merge(first);
        while let Ok(more) = receiver.try_recv() {
            merge(more);
        }
        if connection.is_none() && tokio::time::Instant::now() >= retry_at {
            let opened = match super::connect(&connector, "notifier").await {
                Ok(client) => client
                    .prepare("SELECT pg_notify($1, $2)")
                    .await
                    .map(|statement| (client, statement))
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match opened {
                Ok(opened) => {
                    connection = Some(opened);
                    backoff = MIN_BACKOFF;
                }
                Err(error) => {
                    tracing::debug!(%error, "the notifier cannot reach the database");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let Some((client, statement)) = connection.as_ref() else {
            // Dropped: readers re-check their tails periodically.
            continue;
        };
        let payloads = encode(&merged);
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 2]> = payloads
            .iter()
            .map(|payload| [&channel as _, payload as _])
            .collect();
        let sent = futures_util::future::join_all(
            params
                .iter()
                .map(|params| client.execute(statement, params)),
        )
        .await;
        if let Some(Err(error)) = sent.into_iter().find(Result::is_err) {
            tracing::debug!(%error, "a notification was not sent");
            if client.is_closed() {
                connection = None;
            }
        }
    }
}

/// `id:tail` pairs, comma-separated, split into payloads that fit.
fn encode(tails: &HashMap<StreamId, u64>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for (id, tail) in tails {
        let pair = format!("{id}:{tail}");
        if !current.is_empty() && current.len() + 1 + pair.len() > MAX_PAYLOAD_BYTES {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&pair);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The pairs of a payload; malformed pairs are skipped.
fn decode(payload: &str) -> Vec<(StreamId, u64)> {
    payload
        .split(',')
        .filter_map(|pair| {
            let (id, tail) = pair.split_once(':')?;
            Some((id.parse().ok()?, tail.parse().ok()?))
        })
        .collect()
}

/// A `LISTEN`ing connection; stops when dropped.
#[derive(Debug)]
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening (on the current Tokio runtime); events go to
    /// `events` until it is closed or the listener dropped.
    pub fn spawn(connector: Arc<Connector>, events: mpsc::UnboundedSender<ListenEvent>) -> Self {
        Self {
            task: tokio::spawn(listen(connector, events)),
        }
    }
}

async fn listen(connector: Arc<Connector>, events: mpsc::UnboundedSender<ListenEvent>) {
    let channel = channel(&connector.options.schema);
    let mut backoff = MIN_BACKOFF;
    loop {
        match listen_once(&connector, &channel, &events, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%error, "the listener lost its connection; reconnecting");
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: `LISTEN`, then forward notifications until the
/// connection ends (`Err`) or nobody listens any more (`Ok`).
async fn listen_once(
    connector: &Connector,
    channel: &str,
    events: &mpsc::UnboundedSender<ListenEvent>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let (client, mut connection) = super::connect_raw(connector, "listener")
        .await
        .map_err(|e| e.to_string())?;
    let statement = format!("LISTEN \"{channel}\"");
    let mut listen = std::pin::pin!(client.batch_execute(&statement));
    let mut listening = false;
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx));
        tokio::select! {
            done = &mut listen, if !listening => {
                done.map_err(|e| e.to_string())?;
                listening = true;
                *backoff = MIN_BACKOFF;
                if events.send(ListenEvent::Resync).is_err() {
                    return Ok(());
                }
            }
            message = message => match message {
                Some(Ok(AsyncMessage::Notification(note))) if note.channel() == channel => {
                    let tails = decode(note.payload());
                    if !tails.is_empty() && events.send(ListenEvent::Tails(tails)).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the connection closed".into()),
            },
            () = events.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_below_the_limit_and_decode_back() {
        let tails: HashMap<StreamId, u64> = (0..2_000u64).map(|id| (id, id * 1_000)).collect();
        let payloads = encode(&tails);
        assert!(payloads.len() > 1);
        let mut back: Vec<(StreamId, u64)> = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD_BYTES);
            back.extend(decode(payload));
        }
        back.sort_unstable();
        let mut expected: Vec<(StreamId, u64)> = tails.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(back, expected);
        assert_eq!(decode("1:2,x:3,4,5:6"), vec![(1, 2), (5, 6)]);
    }
}
