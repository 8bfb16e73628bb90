//! The subscription state machine: subscriptions and their linked streams,
//! wakes, generations and leases, persisted in the store's metadata area.
//!
//! # Wakes and fencing
//! A subscription is *pending* when a linked stream's tail is past its
//! acknowledged position. A pending subscription without a wake in progress
//! starts one:
//! - **webhook**: the generation is bumped and a signed notification is
//!   queued for delivery (see [`super::webhook`]). A `2xx` answer with
//!   `{"done": true}` acknowledges the wake's snapshot at once; any other
//!   `2xx` starts the lease, which callbacks extend and a callback with
//!   `done` ends.
//! - **pull-wake**: an event is appended to the wake stream. A worker
//!   `claim`s the lease (bumping the generation); `ack` and `release` end it.
//!
//! Callbacks, acks and releases carry `wake_id` and `generation`; anything
//! but the current wake's is answered `FENCED`, so a worker whose lease
//! expired or was superseded can never move offsets. An expired lease ends
//! the wake; pending data then starts the next one.
//!
//! Locks: one `std` mutex over all subscriptions, held only for in-memory
//! work; persistence is ordered by an async mutex and always writes the
//! latest state of a subscription, so writes never go backwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::SubscriptionSettings;
use super::error::SubscriptionError;
use super::model::{
    self, Kind, Link, PutBody, STATE_VERSION, Stored, SubscriptionConfig, Wake, WakeEvent,
};
use super::pattern::Pattern;
use super::signing::SigningKey;
use crate::engine::{Access, AppendRequest, DataObserver, Engine};
use crate::metrics::event::{
    LeaseClaimed, LeasesExpired, LeasesHeld, SubscriptionAcked, WakeEventFailed, WakeEventWritten,
    WebhookQueueFull,
};
use crate::protocol::header::ContentType;
use crate::protocol::offset::{ReadFrom, parse_read_from};
use crate::shutdown::ShutdownToken;

/// Metadata key prefix of subscription records.
const SUB_PREFIX: &str = "subscriptions/sub/";
/// Metadata key of the generated signing key (PKCS#8 DER).
const KEY_ENTRY: &str = "subscriptions/signing-key";
/// Most observer events buffered while the state is still loading.
const MAX_EARLY_EVENTS: usize = 100_000;

/// A subscription in memory: its persisted record plus what is rebuilt.
#[derive(Debug)]
pub(super) struct Sub {
    pub stored: Stored,
    pattern: Option<Pattern>,
    /// Known tails of linked streams.
    pub tails: HashMap<String, u64>,
    /// A delivery task owns the current webhook wake.
    pub delivering: bool,
    /// A wake-stream append is in flight.
    writing_event: bool,
}

impl Sub {
    fn new(stored: Stored) -> Self {
        let pattern = stored
            .config
            .pattern
            .as_deref()
            .and_then(|p| Pattern::parse(p).ok());
        Self {
            stored,
            pattern,
            tails: HashMap::new(),
            delivering: false,
            writing_event: false,
        }
    }

    fn tail(&self, name: &str) -> u64 {
        self.tails.get(name).copied().unwrap_or(0)
    }

    /// Linked streams with unacknowledged data, and their tails.
    pub fn pending(&self) -> Vec<(String, u64)> {
        self.stored
            .links
            .iter()
            .filter_map(|(name, link)| {
                let tail = self.tail(name);
                (tail > link.acked).then(|| (name.clone(), tail))
            })
            .collect()
    }

    fn is_pending(&self) -> bool {
        self.stored
            .links
            .iter()
            .any(|(name, link)| self.tail(name) > link.acked)
    }

    fn lease_active(&self, now_ms: i64) -> bool {
        self.stored
            .wake
            .as_ref()
            .and_then(|w| w.lease_expires_at_ms)
            .is_some_and(|at| at > now_ms)
    }

    /// The streams of a wake as sent to consumers.
    pub fn wake_streams(&self, snapshot: &[(String, u64)]) -> Vec<Value> {
        snapshot
            .iter()
            .map(|(name, tail)| {
                let acked = self.stored.links.get(name).map_or(0, |l| l.acked);
                json!({
                    "path": name,
                    "offset": model::offset(acked),
                    "tail_offset": model::offset(*tail),
                    "has_pending": *tail > acked,
                })
            })
            .collect()
    }
}

/// Loading state of the subscription store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Loading {
    /// Still reading the metadata.
    Pending,
    /// Ready.
    Ready,
    /// Failed; the APIs answer `503`.
    Failed(String),
}

#[derive(Default)]
pub(super) struct State {
    pub subs: HashMap<String, Sub>,
    loaded: bool,
    early: Vec<(String, u64)>,
}

impl State {
    /// The subscription `key`, which must be of `kind`.
    fn sub_of_kind(&mut self, key: &str, kind: Kind) -> Result<&mut Sub, SubscriptionError> {
        let sub = self.subs.get_mut(key).ok_or(SubscriptionError::NotFound)?;
        if sub.stored.config.kind != kind {
            return Err(SubscriptionError::WrongType(kind.as_str()));
        }
        Ok(sub)
    }
}

/// Shared by the handle, the tasks and the engine observer.
pub(super) struct Shared {
    pub engine: Engine,
    pub settings: SubscriptionSettings,
    pub state: Mutex<State>,
    pub loading: watch::Sender<Loading>,
    persist_lock: tokio::sync::Mutex<()>,
    pub deliveries: mpsc::Sender<String>,
    pub key: OnceLock<Arc<SigningKey>>,
    pub client: reqwest::Client,
    /// Number of subscriptions, read without the lock on the append path.
    count: AtomicUsize,
    pub shutdown: ShutdownToken,
}

/// The subscription manager: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Subscriptions {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("count", &self.shared.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The engine observer: a weak link, so the engine never keeps the manager
/// alive.
struct Observer(std::sync::Weak<Shared>);

impl DataObserver for Observer {
    fn stream_changed(&self, path: &str, tail: u64) {
        if let Some(shared) = self.0.upgrade() {
            Subscriptions { shared }.stream_changed(path, tail);
        }
    }
}

pub(super) fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A random URL-safe token of `bytes` bytes of entropy.
fn token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    fastrand_fill(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Fills `out` from the system random source (tokens are secrets).
fn fastrand_fill(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(out).is_err() {
        // The system source failing is exceptional; fall back to a seeded
        // generator rather than failing the request.
        for byte in out.iter_mut() {
            *byte = fastrand::u8(..);
        }
    }
}

/// Constant-time comparison of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What a `PUT` did.
#[derive(Debug)]
pub enum PutOutcome {
    /// Created (`201`).
    Created(Value),
    /// Existed with the same configuration (`200`).
    Confirmed(Value),
}

/// One entry of an ack list.
#[derive(Debug, serde::Deserialize)]
pub struct AckEntry {
    /// Stream name.
    pub stream: String,
    /// Offset acknowledged up to.
    pub offset: String,
}

/// Body of a callback or ack.
#[derive(Debug, serde::Deserialize)]
pub struct AckBody {
    /// The wake.
    pub wake_id: String,
    /// Its generation.
    pub generation: u64,
    /// Acknowledged positions.
    #[serde(default)]
    pub acks: Vec<AckEntry>,
    /// Ends the wake.
    #[serde(default)]
    pub done: bool,
}

/// Body of a release.
#[derive(Debug, serde::Deserialize)]
pub struct ReleaseBody {
    /// The wake.
    pub wake_id: String,
    /// Its generation.
    pub generation: u64,
}

impl Subscriptions {
    /// Creates the manager, hooks it into `engine` and, inside a tokio
    /// runtime, starts loading the persisted state and the background tasks
    /// (delivery, lease expiry), which stop when `shutdown` fires.
    pub fn start(engine: Engine, settings: SubscriptionSettings, shutdown: ShutdownToken) -> Self {
        let (deliveries, queue) = mpsc::channel(settings.max_queued_deliveries.max(1));
        let client = super::webhook::client(&settings);
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            settings,
            state: Mutex::new(State::default()),
            loading: watch::Sender::new(Loading::Pending),
            persist_lock: tokio::sync::Mutex::new(()),
            deliveries,
            key: OnceLock::new(),
            client,
            count: AtomicUsize::new(0),
            shutdown,
        });
        engine.set_observer(Arc::new(Observer(Arc::downgrade(&shared))));
        let this = Self { shared };
        if tokio::runtime::Handle::try_current().is_ok() {
            let loader = this.clone();
            tokio::spawn(async move {
                let outcome = loader.load().await;
                let state = match outcome {
                    Ok(()) => Loading::Ready,
                    Err(error) => {
                        tracing::error!(error = %error, "subscriptions could not be loaded; the __ds APIs answer 503");
                        Loading::Failed(error.to_string())
                    }
                };
                loader.shared.loading.send_replace(state);
            });
            super::webhook::spawn_dispatcher(this.clone(), queue);
            this.spawn_ticker();
        }
        this
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the persisted state is loaded.
    ///
    /// # Errors
    /// [`SubscriptionError::Unavailable`] when loading failed or the server
    /// shuts down first.
    pub async fn ready(&self) -> Result<(), SubscriptionError> {
        let mut loading = self.shared.loading.subscribe();
        let state = loading
            .wait_for(|state| *state != Loading::Pending)
            .await
            .map_err(|_| SubscriptionError::Unavailable("shutting down".into()))?
            .clone();
        match state {
            Loading::Failed(why) => Err(SubscriptionError::Unavailable(why)),
            _ => Ok(()),
        }
    }

    /// The webhook signing key (after [`Self::ready`]).
    ///
    /// # Errors
    /// [`SubscriptionError::Unavailable`] before the key is loaded.
    pub fn signing_key(&self) -> Result<Arc<SigningKey>, SubscriptionError> {
        self.shared
            .key
            .get()
            .cloned()
            .ok_or_else(|| SubscriptionError::Unavailable("the signing key is not loaded".into()))
    }

    /// Loads the signing key and every subscription, rebuilds tails from the
    /// engine, replays changes seen meanwhile and resumes wakes.
    async fn load(&self) -> Result<(), SubscriptionError> {
        let storage = self.shared.engine.storage().clone();
        let entries = storage.metadata().await?;
        let key = match &self.shared.settings.signing_key_path {
            Some(path) => SigningKey::from_pem_file(path).map_err(|e| {
                SubscriptionError::Unavailable(format!("signing key {}: {e}", path.display()))
            })?,
            None => match entries.iter().find(|(k, _)| k == KEY_ENTRY) {
                Some((_, der)) => SigningKey::from_pkcs8(der).map_err(|e| {
                    SubscriptionError::Unavailable(format!("stored signing key: {e}"))
                })?,
                None => {
                    let (key, der) = SigningKey::generate()
                        .map_err(|e| SubscriptionError::Unavailable(e.to_string()))?;
                    storage
                        .put_metadata(KEY_ENTRY, Some(Bytes::from(der)))
                        .await?;
                    tracing::info!(kid = key.kid(), "generated a webhook signing key");
                    key
                }
            },
        };
        let _ = self.shared.key.set(Arc::new(key));
        let mut subs = HashMap::new();
        for (entry_key, raw) in &entries {
            let Some(key) = entry_key.strip_prefix(SUB_PREFIX) else {
                continue;
            };
            match serde_json::from_slice::<Stored>(raw) {
                Ok(stored) if stored.version == STATE_VERSION => {
                    let mut sub = Sub::new(stored);
                    for name in sub.stored.links.keys() {
                        let full = format!("{}{name}", sub.stored.root);
                        if let Ok(entry) = self.shared.engine.lookup(&full, Access::Peek) {
                            sub.tails.insert(name.clone(), entry.snapshot().tail);
                        }
                    }
                    subs.insert(key.to_owned(), sub);
                }
                Ok(stored) => tracing::error!(
                    subscription = %stored.id,
                    version = stored.version,
                    "skipping a subscription record of an unknown version"
                ),
                Err(error) => tracing::error!(
                    key = %entry_key,
                    error = %error,
                    "skipping an unreadable subscription record"
                ),
            }
        }
        let early = {
            let mut state = self.lock();
            state.subs = subs;
            state.loaded = true;
            self.shared.count.store(state.subs.len(), Ordering::Relaxed);
            std::mem::take(&mut state.early)
        };
        for (path, tail) in early {
            self.stream_changed(&path, tail);
        }
        let keys: Vec<String> = self.lock().subs.keys().cloned().collect();
        tracing::info!(subscriptions = keys.len(), "subscriptions loaded");
        for key in keys {
            self.kick(&key);
        }
        self.update_lease_gauge();
        Ok(())
    }

    /// The engine's notification: stream `path` now ends at `tail`.
    fn stream_changed(&self, path: &str, tail: u64) {
        let mut state = self.lock();
        if !state.loaded {
            if state.early.len() < MAX_EARLY_EVENTS {
                state.early.push((path.to_owned(), tail));
            }
            return;
        }
        if self.shared.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut to_persist = Vec::new();
        let mut to_kick = Vec::new();
        for (key, sub) in state.subs.iter_mut() {
            let Some(name) = path.strip_prefix(sub.stored.root.as_str()) else {
                continue;
            };
            if sub.stored.config.wake_stream.as_deref() == Some(name) {
                continue;
            }
            let linked = sub.stored.links.contains_key(name);
            let matched = sub.pattern.as_ref().is_some_and(|p| p.matches(name));
            if !linked && !matched {
                continue;
            }
            if !linked {
                sub.stored.links.insert(
                    name.to_owned(),
                    Link {
                        explicit: false,
                        glob: true,
                        acked: 0,
                    },
                );
                to_persist.push(key.clone());
            }
            let known = sub.tails.entry(name.to_owned()).or_insert(0);
            if tail > *known {
                *known = tail;
            } else if tail < *known {
                // Tails only grow: a smaller one is a new stream at the same
                // path (deleted and re-created), whose data is all new.
                *known = tail;
                if let Some(link) = sub.stored.links.get_mut(name) {
                    link.acked = 0;
                }
                to_persist.push(key.clone());
            }
            if sub.is_pending() {
                to_kick.push(key.clone());
            }
        }
        drop(state);
        for key in &to_kick {
            self.kick(key);
        }
        for key in to_persist {
            self.persist_later(key);
        }
    }

    /// Starts a wake for `key` if it is pending and none is in progress.
    /// Never awaits; persistence and I/O go to tasks.
    pub(super) fn kick(&self, key: &str) {
        let now = now_ms();
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(key) else {
            return;
        };
        let mut changed = false;
        match sub.stored.config.kind {
            Kind::Webhook => {
                if sub.stored.wake.is_none() && sub.is_pending() {
                    sub.stored.generation += 1;
                    sub.stored.wake = Some(Wake {
                        wake_id: format!("w_{}", token(12)),
                        generation: sub.stored.generation,
                        token: token(32),
                        holder: None,
                        lease_expires_at_ms: None,
                        snapshot: sub.pending(),
                    });
                    changed = true;
                }
                let undelivered = sub
                    .stored
                    .wake
                    .as_ref()
                    .is_some_and(|w| w.lease_expires_at_ms.is_none());
                if undelivered && !sub.delivering {
                    match self.shared.deliveries.try_send(key.to_owned()) {
                        Ok(()) => sub.delivering = true,
                        Err(_) => {
                            // Queue full: the ticker offers it again.
                            WebhookQueueFull.emit();
                        }
                    }
                }
            }
            Kind::PullWake => {
                let claimed = sub.lease_active(now);
                if !claimed && sub.stored.wake_event.is_none() && sub.is_pending() {
                    sub.stored.wake_event = Some(WakeEvent {
                        wake_id: format!("w_{}", token(12)),
                        written: false,
                    });
                    changed = true;
                }
                let unwritten = sub.stored.wake_event.as_ref().is_some_and(|e| !e.written);
                if unwritten && !sub.writing_event {
                    sub.writing_event = true;
                    let this = self.clone();
                    let key = key.to_owned();
                    // The task persists the state once the event is written.
                    spawn(async move { this.write_wake_event(&key).await });
                    return;
                }
            }
        }
        drop(state);
        if changed {
            self.persist_later(key.to_owned());
        }
    }

    /// Appends the pending wake event of a pull-wake subscription.
    async fn write_wake_event(&self, key: &str) {
        let prepared = {
            let state = self.lock();
            state.subs.get(key).and_then(|sub| {
                let event = sub.stored.wake_event.as_ref()?;
                let wake = sub.stored.config.wake_stream.as_ref()?;
                let body = json!({
                    "type": "wake",
                    "subscription_id": sub.stored.id,
                    "wake_id": event.wake_id,
                    "generation": sub.stored.generation,
                    "streams": sub.wake_streams(&sub.pending()),
                });
                Some((
                    format!("{}{wake}", sub.stored.root),
                    event.wake_id.clone(),
                    body,
                ))
            })
        };
        let Some((wake_path, wake_id, body)) = prepared else {
            self.finish_event_write(key, None);
            return;
        };
        let outcome = match self.shared.engine.lookup(&wake_path, Access::Peek) {
            Ok(entry) => {
                let request = AppendRequest {
                    content_type: Some(ContentType::new(&entry.content_type().raw)),
                    body: Bytes::from(body.to_string()),
                    close: false,
                    producer: None,
                    stream_seq: None,
                };
                self.shared
                    .engine
                    .append(&wake_path, request)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                WakeEventWritten.emit();
                self.finish_event_write(key, Some(&wake_id));
            }
            Err(error) => {
                WakeEventFailed {
                    wake_stream: &wake_path,
                    error: &error,
                }
                .emit();
                self.finish_event_write(key, None);
            }
        }
    }

    fn finish_event_write(&self, key: &str, written: Option<&str>) {
        {
            let mut state = self.lock();
            let Some(sub) = state.subs.get_mut(key) else {
                return;
            };
            sub.writing_event = false;
            if let (Some(id), Some(event)) = (written, sub.stored.wake_event.as_mut())
                && event.wake_id == id
            {
                event.written = true;
            }
        }
        self.persist_later(key.to_owned());
    }

    /// Writes the latest state of `key` in a task.
    pub(super) fn persist_later(&self, key: String) {
        let this = self.clone();
        spawn(async move {
            if let Err(error) = this.persist(&key).await {
                tracing::error!(subscription = %key, error = %error, "cannot persist subscription state");
            }
        });
    }

    /// Writes the latest state of `key` (or removes it when gone).
    pub(super) async fn persist(&self, key: &str) -> Result<(), SubscriptionError> {
        let _order = self.shared.persist_lock.lock().await;
        let value = {
            let state = self.lock();
            match state.subs.get(key) {
                Some(sub) => Some(
                    serde_json::to_vec(&sub.stored)
                        .map_err(|e| SubscriptionError::Unavailable(e.to_string()))?,
                ),
                None => None,
            }
        };
        self.shared
            .engine
            .storage()
            .put_metadata(&format!("{SUB_PREFIX}{key}"), value.map(Bytes::from))
            .await?;
        Ok(())
    }

    fn key(root: &str, id: &str) -> String {
        format!("{root}{id}")
    }

    fn view(&self, sub: &Sub) -> Value {
        let stored = &sub.stored;
        let config = &stored.config;
        let streams: Vec<Value> = stored
            .links
            .iter()
            .map(|(name, link)| {
                let tail = sub.tail(name);
                json!({
                    "path": name,
                    "link_type": if link.explicit { "explicit" } else { "glob" },
                    "acked_offset": model::offset(link.acked),
                    "tail_offset": model::offset(tail.max(link.acked)),
                    "has_pending": tail > link.acked,
                })
            })
            .collect();
        let mut view = json!({
            "id": stored.id,
            "type": config.kind.as_str(),
            "streams": streams,
            "lease_ttl_ms": config.lease_ttl_ms,
            "generation": stored.generation,
        });
        if let Some(pattern) = &config.pattern {
            view["pattern"] = json!(pattern);
        }
        if let Some(description) = &config.description {
            view["description"] = json!(description);
        }
        if let Some(created) = model::rfc3339(stored.created_at_ms) {
            view["created_at"] = json!(created);
        }
        if let Some(url) = &config.webhook_url {
            let kid = self.shared.key.get().map(|k| k.kid().to_owned());
            view["webhook"] = json!({
                "url": url,
                "signing": {
                    "alg": "ed25519",
                    "kid": kid,
                    "jwks_url": format!("{}__ds/jwks.json", stored.public_root),
                },
            });
        }
        if let Some(wake) = &config.wake_stream {
            view["wake_stream"] = json!(wake);
        }
        if let Some(wake) = &stored.wake {
            let mut w = json!({ "wake_id": wake.wake_id, "generation": wake.generation });
            if let Some(holder) = &wake.holder {
                w["holder"] = json!(holder);
            }
            if let Some(at) = wake.lease_expires_at_ms.and_then(model::rfc3339) {
                w["lease_expires_at"] = json!(at);
            }
            view["wake"] = w;
        }
        view
    }

    /// `PUT __ds/subscriptions/{id}`: creates, or confirms an identical
    /// configuration.
    ///
    /// # Errors
    /// Invalid body or URL, a different existing configuration (`Exists`),
    /// too many subscriptions, or a storage failure.
    pub async fn put(
        &self,
        root: &str,
        public_root: &str,
        id: &str,
        body: PutBody,
    ) -> Result<PutOutcome, SubscriptionError> {
        self.ready().await?;
        model::check_id(id)?;
        let config: SubscriptionConfig = body.normalise(self.shared.settings.rules())?;
        if let Some(url) = &config.webhook_url {
            self.shared.settings.policy.check_url(url)?;
        }
        let key = Self::key(root, id);
        // Streams the pattern already matches are linked at their tail: a
        // subscription wakes for new data, not for history.
        let matching: Vec<(String, u64)> = match &config.pattern {
            Some(raw) if !self.lock().subs.contains_key(&key) => {
                let pattern = Pattern::parse(raw)?;
                self.shared
                    .engine
                    .snapshot_streams()
                    .into_iter()
                    .filter(|stream| !stream.soft_deleted)
                    .filter_map(|stream| {
                        let name = stream.spec.path.strip_prefix(root)?;
                        let own_wake = config.wake_stream.as_deref() == Some(name);
                        (!own_wake && pattern.matches(name)).then(|| (name.to_owned(), stream.tail))
                    })
                    .take(model::MAX_EXPLICIT_STREAMS)
                    .collect()
            }
            _ => Vec::new(),
        };
        {
            let mut state = self.lock();
            if let Some(existing) = state.subs.get(&key) {
                return if existing.stored.config == config {
                    Ok(PutOutcome::Confirmed(self.view(existing)))
                } else {
                    Err(SubscriptionError::Exists)
                };
            }
            if state.subs.len() >= self.shared.settings.max_subscriptions {
                return Err(SubscriptionError::TooMany(
                    self.shared.settings.max_subscriptions,
                ));
            }
            let mut links = std::collections::BTreeMap::new();
            for name in &config.streams {
                links.insert(
                    name.clone(),
                    Link {
                        explicit: true,
                        glob: false,
                        acked: 0,
                    },
                );
            }
            let stored = Stored {
                version: STATE_VERSION,
                id: id.to_owned(),
                root: root.to_owned(),
                public_root: public_root.to_owned(),
                config,
                created_at_ms: now_ms(),
                generation: 0,
                links,
                wake: None,
                wake_event: None,
            };
            let mut sub = Sub::new(stored);
            for (name, tail) in matching {
                sub.tails.insert(name.clone(), tail);
                sub.stored.links.entry(name).or_insert(Link {
                    explicit: false,
                    glob: true,
                    acked: tail,
                });
            }
            // Existing explicit streams start acknowledged at their tail
            // (a subscription wakes for new data, not history).
            let names: Vec<String> = sub.stored.links.keys().cloned().collect();
            for name in names {
                if let Ok(entry) = self
                    .shared
                    .engine
                    .lookup(&format!("{root}{name}"), Access::Peek)
                {
                    let tail = entry.snapshot().tail;
                    sub.tails.insert(name.clone(), tail);
                    if let Some(link) = sub.stored.links.get_mut(&name) {
                        link.acked = tail;
                    }
                }
            }
            state.subs.insert(key.clone(), sub);
            self.shared.count.store(state.subs.len(), Ordering::Relaxed);
        }
        if let Err(error) = self.persist(&key).await {
            let mut state = self.lock();
            state.subs.remove(&key);
            self.shared.count.store(state.subs.len(), Ordering::Relaxed);
            return Err(error);
        }
        let state = self.lock();
        let view = state
            .subs
            .get(&key)
            .map(|sub| self.view(sub))
            .ok_or(SubscriptionError::NotFound)?;
        Ok(PutOutcome::Created(view))
    }

    /// `GET __ds/subscriptions/{id}`.
    ///
    /// # Errors
    /// `NotFound`, or the store is unavailable.
    pub async fn get(&self, root: &str, id: &str) -> Result<Value, SubscriptionError> {
        self.ready().await?;
        let state = self.lock();
        state
            .subs
            .get(&Self::key(root, id))
            .map(|sub| self.view(sub))
            .ok_or(SubscriptionError::NotFound)
    }

    /// `DELETE __ds/subscriptions/{id}`.
    ///
    /// # Errors
    /// `NotFound`, or a storage failure.
    pub async fn delete(&self, root: &str, id: &str) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let key = Self::key(root, id);
        {
            let mut state = self.lock();
            if state.subs.remove(&key).is_none() {
                return Err(SubscriptionError::NotFound);
            }
            self.shared.count.store(state.subs.len(), Ordering::Relaxed);
        }
        self.update_lease_gauge();
        self.persist(&key).await
    }

    /// `POST __ds/subscriptions/{id}/streams`: links explicit streams.
    ///
    /// # Errors
    /// `NotFound`, an invalid name, or a storage failure.
    pub async fn add_streams(
        &self,
        root: &str,
        id: &str,
        streams: Vec<String>,
    ) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let limits = self.shared.settings.name_limits;
        for name in &streams {
            model::check_stream_name(name, limits)?;
        }
        let key = Self::key(root, id);
        {
            let mut state = self.lock();
            let sub = state
                .subs
                .get_mut(&key)
                .ok_or(SubscriptionError::NotFound)?;
            if sub.stored.links.len() + streams.len() > model::MAX_EXPLICIT_STREAMS {
                return Err(SubscriptionError::InvalidRequest(
                    "too many linked streams".into(),
                ));
            }
            for name in streams {
                if let Some(link) = sub.stored.links.get_mut(&name) {
                    link.explicit = true;
                    continue;
                }
                let tail = self
                    .shared
                    .engine
                    .lookup(&format!("{root}{name}"), Access::Peek)
                    .map_or(0, |entry| entry.snapshot().tail);
                sub.tails.insert(name.clone(), tail);
                sub.stored.links.insert(
                    name,
                    Link {
                        explicit: true,
                        glob: false,
                        acked: tail,
                    },
                );
            }
        }
        self.persist(&key).await
    }

    /// `DELETE __ds/subscriptions/{id}/streams/{name}`: unlinks a stream.
    ///
    /// # Errors
    /// `NotFound` (subscription), or a storage failure.
    pub async fn remove_stream(
        &self,
        root: &str,
        id: &str,
        name: &str,
    ) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let key = Self::key(root, id);
        {
            let mut state = self.lock();
            let sub = state
                .subs
                .get_mut(&key)
                .ok_or(SubscriptionError::NotFound)?;
            sub.stored.links.remove(name);
            sub.tails.remove(name);
        }
        self.persist(&key).await
    }

    /// Applies acks to a subscription's links.
    fn apply_acks(sub: &mut Sub, acks: &[AckEntry]) -> Result<(), SubscriptionError> {
        let mut updates = Vec::with_capacity(acks.len());
        for ack in acks {
            if !sub.stored.links.contains_key(&ack.stream) {
                return Err(SubscriptionError::InvalidStream(ack.stream.clone()));
            }
            let position = match parse_read_from(&ack.offset) {
                Ok(ReadFrom::At(offset)) => offset.position(),
                Ok(ReadFrom::Start) => 0,
                _ => return Err(SubscriptionError::InvalidOffset(ack.offset.clone())),
            };
            if position > sub.tail(&ack.stream) {
                return Err(SubscriptionError::InvalidOffset(ack.offset.clone()));
            }
            updates.push((ack.stream.clone(), position));
        }
        for (name, position) in updates {
            if let Some(link) = sub.stored.links.get_mut(&name) {
                link.acked = link.acked.max(position);
            }
        }
        Ok(())
    }

    /// Checks the fencing and the token of a request against the current
    /// wake.
    fn check_wake(
        sub: &Sub,
        wake_id: &str,
        generation: u64,
        bearer: Option<&str>,
        now: i64,
    ) -> Result<(), SubscriptionError> {
        let bearer = bearer.ok_or(SubscriptionError::Unauthorized)?;
        let wake = sub.stored.wake.as_ref().ok_or(SubscriptionError::Fenced)?;
        if wake.generation != generation
            || wake.wake_id != wake_id
            || sub.stored.generation != generation
            || wake.lease_expires_at_ms.is_some_and(|at| at <= now)
        {
            return Err(SubscriptionError::Fenced);
        }
        if !same_token(&wake.token, bearer) {
            return Err(SubscriptionError::Unauthorized);
        }
        Ok(())
    }

    /// `POST …/callback` (webhook) and `POST …/ack` (pull-wake): moves
    /// acknowledged offsets; with `done`, ends the wake. Answers whether
    /// another wake follows.
    ///
    /// # Errors
    /// `NotFound`, `WrongType`, `Unauthorized`, `Fenced`, a bad ack, or a
    /// storage failure.
    pub async fn ack(
        &self,
        root: &str,
        id: &str,
        kind: Kind,
        bearer: Option<&str>,
        body: AckBody,
    ) -> Result<bool, SubscriptionError> {
        self.ready().await?;
        let key = Self::key(root, id);
        let now = now_ms();
        let next_wake = {
            let mut state = self.lock();
            let sub = state.sub_of_kind(&key, kind)?;
            Self::check_wake(sub, &body.wake_id, body.generation, bearer, now)?;
            Self::apply_acks(sub, &body.acks)?;
            if body.done {
                sub.stored.wake = None;
                sub.is_pending()
            } else {
                let ttl = i64::try_from(sub.stored.config.lease_ttl_ms).unwrap_or(i64::MAX);
                if let Some(wake) = sub.stored.wake.as_mut() {
                    wake.lease_expires_at_ms = Some(now.saturating_add(ttl));
                }
                false
            }
        };
        SubscriptionAcked {
            kind: kind.as_str(),
        }
        .emit();
        self.persist(&key).await?;
        if body.done {
            self.update_lease_gauge();
            self.kick(&key);
        }
        Ok(next_wake)
    }

    /// `POST …/claim` (pull-wake): takes the lease for `worker`. `None`
    /// when there is nothing to do.
    ///
    /// # Errors
    /// `NotFound`, `WrongType`, `AlreadyClaimed`, or a storage failure.
    pub async fn claim(
        &self,
        root: &str,
        id: &str,
        worker: &str,
    ) -> Result<Option<Value>, SubscriptionError> {
        self.ready().await?;
        if worker.is_empty() || worker.len() > 256 {
            return Err(SubscriptionError::InvalidRequest(
                "worker must be 1 to 256 bytes".into(),
            ));
        }
        let key = Self::key(root, id);
        let now = now_ms();
        let claimed = {
            let mut state = self.lock();
            let sub = state.sub_of_kind(&key, Kind::PullWake)?;
            if sub.lease_active(now) {
                let holder = sub
                    .stored
                    .wake
                    .as_ref()
                    .and_then(|w| w.holder.clone())
                    .unwrap_or_default();
                return Err(SubscriptionError::AlreadyClaimed { holder });
            }
            let pending = sub.pending();
            if pending.is_empty() {
                sub.stored.wake = None;
                sub.stored.wake_event = None;
                None
            } else {
                sub.stored.generation += 1;
                let wake_id = sub
                    .stored
                    .wake_event
                    .take()
                    .map_or_else(|| format!("w_{}", token(12)), |e| e.wake_id);
                let ttl = i64::try_from(sub.stored.config.lease_ttl_ms).unwrap_or(i64::MAX);
                let wake = Wake {
                    wake_id,
                    generation: sub.stored.generation,
                    token: token(32),
                    holder: Some(worker.to_owned()),
                    lease_expires_at_ms: Some(now.saturating_add(ttl)),
                    snapshot: pending,
                };
                let answer = json!({
                    "subscription_id": sub.stored.id,
                    "wake_id": wake.wake_id,
                    "generation": wake.generation,
                    "token": wake.token,
                    "worker": worker,
                    "lease_ttl_ms": sub.stored.config.lease_ttl_ms,
                    "lease_expires_at": wake.lease_expires_at_ms.and_then(model::rfc3339),
                    "streams": sub.wake_streams(&wake.snapshot),
                });
                sub.stored.wake = Some(wake);
                Some(answer)
            }
        };
        self.persist(&key).await?;
        if claimed.is_some() {
            LeaseClaimed.emit();
            self.update_lease_gauge();
        }
        Ok(claimed)
    }

    /// `POST …/release` (pull-wake): gives the lease back without acking.
    ///
    /// # Errors
    /// `NotFound`, `WrongType`, `Unauthorized`, `Fenced`, or a storage
    /// failure.
    pub async fn release(
        &self,
        root: &str,
        id: &str,
        bearer: Option<&str>,
        body: ReleaseBody,
    ) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let key = Self::key(root, id);
        let now = now_ms();
        {
            let mut state = self.lock();
            let sub = state.sub_of_kind(&key, Kind::PullWake)?;
            Self::check_wake(sub, &body.wake_id, body.generation, bearer, now)?;
            sub.stored.wake = None;
        }
        self.persist(&key).await?;
        self.update_lease_gauge();
        self.kick(&key);
        Ok(())
    }

    /// Every tick: ends expired leases (and wakes again when data is
    /// pending), and offers undelivered wakes and unwritten wake events
    /// again.
    fn tick(&self) {
        let now = now_ms();
        let mut expired = Vec::new();
        let mut retry = Vec::new();
        {
            let mut state = self.lock();
            for (key, sub) in state.subs.iter_mut() {
                let lease_over = sub
                    .stored
                    .wake
                    .as_ref()
                    .and_then(|w| w.lease_expires_at_ms)
                    .is_some_and(|at| at <= now);
                if lease_over {
                    sub.stored.wake = None;
                    expired.push(key.clone());
                    continue;
                }
                let undelivered = sub.stored.config.kind == Kind::Webhook
                    && !sub.delivering
                    && match &sub.stored.wake {
                        Some(wake) => wake.lease_expires_at_ms.is_none(),
                        None => sub.is_pending(),
                    };
                let unwritten = sub.stored.wake_event.as_ref().is_some_and(|e| !e.written)
                    && !sub.writing_event;
                if undelivered || unwritten {
                    retry.push(key.clone());
                }
            }
        }
        if !expired.is_empty() {
            LeasesExpired {
                count: expired.len(),
            }
            .emit();
            self.update_lease_gauge();
        }
        for key in expired.iter().chain(retry.iter()) {
            self.kick(key);
        }
    }

    fn spawn_ticker(&self) {
        let weak = Arc::downgrade(&self.shared);
        let shutdown = self.shared.shutdown.clone();
        let period = self.shared.settings.tick_interval;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let Some(shared) = weak.upgrade() else { return };
                let this = Subscriptions { shared };
                if *this.shared.loading.borrow() == Loading::Ready {
                    this.tick();
                }
            }
        });
    }

    /// Sets the active-leases gauge.
    pub(super) fn update_lease_gauge(&self) {
        let now = now_ms();
        let active = self
            .lock()
            .subs
            .values()
            .filter(|sub| sub.lease_active(now))
            .count();
        LeasesHeld { active }.emit();
    }

    /// Marks the delivery of `key` as finished (the task ends).
    pub(super) fn delivery_finished(&self, key: &str) {
        if let Some(sub) = self.lock().subs.get_mut(key) {
            sub.delivering = false;
        }
    }

    /// Records a webhook's `2xx` answer for the wake of `generation`: `done`
    /// acknowledges the snapshot and ends the wake, otherwise the lease
    /// starts.
    pub(super) fn delivered(&self, key: &str, generation: u64, done: bool) {
        let now = now_ms();
        {
            let mut state = self.lock();
            let Some(sub) = state.subs.get_mut(key) else {
                return;
            };
            let Some(wake) = sub.stored.wake.as_mut() else {
                // Acked by a callback during the request.
                return;
            };
            if wake.generation != generation || wake.lease_expires_at_ms.is_some() {
                return;
            }
            if done {
                let snapshot = std::mem::take(&mut wake.snapshot);
                sub.stored.wake = None;
                for (name, tail) in snapshot {
                    if let Some(link) = sub.stored.links.get_mut(&name) {
                        link.acked = link.acked.max(tail);
                    }
                }
            } else {
                let ttl = i64::try_from(sub.stored.config.lease_ttl_ms).unwrap_or(i64::MAX);
                wake.lease_expires_at_ms = Some(now.saturating_add(ttl));
            }
        }
        self.update_lease_gauge();
        if done {
            self.kick(key);
        } else {
            self.persist_later(key.to_owned());
        }
    }

    /// What a delivery of `key` needs, if its wake is still undelivered:
    /// the target, the generation and the body.
    pub(super) fn delivery(&self, key: &str) -> Option<(String, u64, Vec<u8>)> {
        let state = self.lock();
        let sub = state.subs.get(key)?;
        let wake = sub.stored.wake.as_ref()?;
        if wake.lease_expires_at_ms.is_some() {
            return None;
        }
        let url = sub.stored.config.webhook_url.clone()?;
        let body = json!({
            "type": "wake",
            "subscription_id": sub.stored.id,
            "wake_id": wake.wake_id,
            "generation": wake.generation,
            "callback_url": format!("{}__ds/subscriptions/{}/callback", sub.stored.public_root, sub.stored.id),
            "callback_token": wake.token,
            "lease_ttl_ms": sub.stored.config.lease_ttl_ms,
            "streams": sub.wake_streams(&wake.snapshot),
        });
        Some((url, wake.generation, body.to_string().into_bytes()))
    }

    /// Waits `delay` unless the server shuts down first; returns whether
    /// the full delay passed.
    pub(super) async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shared.shutdown.cancelled() => false,
        }
    }
}

/// Spawns `future` when inside a tokio runtime.
fn spawn(future: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(future);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_in_constant_time() {
        let a = token(32);
        let b = token(32);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..10]));
    }
}
