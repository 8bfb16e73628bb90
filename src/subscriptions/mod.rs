//! Consumer subscriptions: the reserved `{base}/__ds/` APIs (spec §6–7)
//! through which workers are woken when streams matching a pattern get data.
//! The HTTP routes live in the HTTP layer; this module is everything
//! behind them.
//!
//! # Layout
//! - this file: `Subscriptions`, the manager's handle, its settings and
//!   its start.
//! - `state`: the state machine of one subscription (links, wakes,
//!   generations, leases), synchronous and without I/O.
//! - `control`: the operations the APIs call (create, read, delete,
//!   link, ack, claim, release).
//! - `store`: persistence in the store's metadata area, and loading at
//!   start (with the signing key).
//! - `wake`: starting wakes, appending pull-wake events, the lease ticker.
//! - `webhook`: signed delivery off the request path, with retries.
//! - `replicated`: the same over a store several servers share (the
//!   `postgres` backend): the stored records are the authority, changed
//!   under the store's cross-server lock, and one server at a time runs the
//!   background work.
//! - [`model`]: the normalised configuration and the persisted state;
//!   `wire`: the JSON of the APIs as serde types.
//! - [`pattern`]: glob patterns; `signing`: the Ed25519 key, the JWKS and
//!   `Webhook-Signature`; `ssrf`: which webhook targets are allowed.
//! - [`error`]: [`SubscriptionError`], what the APIs refuse.
//!
//! Enabled by `subscriptions.enabled`; without it `__ds` paths answer `404`.
//!
//! Locks: one `std` mutex over all subscriptions, held only for in-memory
//! work; persistence is ordered by an async mutex and always writes the
//! latest state of a subscription, so writes never go backwards.

mod control;
pub mod error;
pub mod model;
pub mod pattern;
mod replicated;
pub(crate) mod signing;
pub(crate) mod ssrf;
mod state;
mod store;
mod wake;
mod webhook;
pub(crate) mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub(crate) use control::PutOutcome;
pub(crate) use error::SubscriptionError;

use crate::engine::{DataObserver, Engine};
use crate::protocol::name::NameLimits;
use crate::shutdown::ShutdownToken;
use crate::storage::shared::SharedStreams;
use signing::SigningKey;
use state::Sub;

/// Loading state of the subscription store.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Loading {
    /// Still reading the metadata.
    Pending,
    /// Ready.
    Ready,
    /// Failed; the APIs answer `503`.
    Failed(String),
}

/// Every subscription, by key (`<root><id>`).
#[derive(Default)]
struct State {
    subs: std::collections::HashMap<String, Sub>,
    loaded: bool,
    /// Engine notifications that arrived while loading, replayed after.
    early: Vec<(String, u64)>,
}

impl State {
    /// The subscription `key`.
    fn sub(&mut self, key: &str) -> Result<&mut Sub, SubscriptionError> {
        self.subs.get_mut(key).ok_or(SubscriptionError::NotFound)
    }

    /// The subscription `key`, which must be of `kind`.
    fn sub_of_kind(&mut self, key: &str, kind: model::Kind) -> Result<&mut Sub, SubscriptionError> {
        let sub = self.sub(key)?;
        if sub.stored.config.kind != kind {
            return Err(SubscriptionError::WrongType(kind.as_str()));
        }
        Ok(sub)
    }
}

/// Shared by the handle, the tasks and the engine observer.
struct Shared {
    engine: Engine,
    settings: SubscriptionSettings,
    state: Mutex<State>,
    loading: watch::Sender<Loading>,
    persist_lock: tokio::sync::Mutex<()>,
    deliveries: mpsc::Sender<String>,
    key: OnceLock<Arc<SigningKey>>,
    client: reqwest::Client,
    /// Number of subscriptions, read without the lock on the append path.
    count: AtomicUsize,
    shutdown: ShutdownToken,
    /// The store shared with other servers, when it is one.
    replicated: Option<Arc<dyn SharedStreams>>,
    /// Whether this server runs the background work (always, unless the
    /// store is shared).
    leading: AtomicBool,
}

/// The subscription manager: a cheap, cloneable handle.
#[derive(Clone)]
pub(crate) struct Subscriptions {
    shared: Arc<Shared>,
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

impl Subscriptions {
    /// Creates the manager, hooks it into `engine`, and starts loading the
    /// persisted state and the background tasks (delivery, lease expiry),
    /// which stop when `shutdown` fires.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn start(
        engine: Engine,
        settings: SubscriptionSettings,
        shutdown: ShutdownToken,
    ) -> Self {
        let (deliveries, queue) = mpsc::channel(settings.max_queued_deliveries.max(1));
        let client = webhook::client(&settings);
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
            replicated: engine.storage().shared(),
            leading: AtomicBool::new(false),
        });
        engine.set_observer(Arc::new(Observer(Arc::downgrade(&shared))));
        let this = Self { shared };
        let loader = this.clone();
        tokio::spawn(async move {
            let state = match loader.load().await {
                Ok(()) => Loading::Ready,
                Err(error) => {
                    tracing::error!(error = %error, "subscriptions could not be loaded; the __ds APIs answer 503");
                    Loading::Failed(error.to_string())
                }
            };
            loader.shared.loading.send_replace(state);
        });
        webhook::spawn_dispatcher(this.clone(), queue);
        this.spawn_ticker();
        this
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> &SubscriptionSettings {
        &self.shared.settings
    }

    /// Waits until the persisted state is loaded.
    ///
    /// # Errors
    /// [`SubscriptionError::Unavailable`] when loading failed or the server
    /// shuts down first.
    pub(crate) async fn ready(&self) -> Result<(), SubscriptionError> {
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
    pub(crate) fn signing_key(&self) -> Result<Arc<SigningKey>, SubscriptionError> {
        self.shared
            .key
            .get()
            .cloned()
            .ok_or_else(|| SubscriptionError::Unavailable("the signing key is not loaded".into()))
    }

    /// Updates the count read on the append path.
    fn recount(&self, state: &State) {
        self.shared.count.store(state.subs.len(), Ordering::Relaxed);
    }

    /// Waits `delay` unless the server shuts down first; returns whether
    /// the full delay passed.
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shared.shutdown.cancelled() => false,
        }
    }
}

/// Settings of the subscription manager, from `[subscriptions]`.
#[derive(Clone, Debug)]
pub(crate) struct SubscriptionSettings {
    /// Where the signing key comes from (unset: generated and stored).
    pub signing_key_path: Option<PathBuf>,
    /// SSRF rules.
    pub policy: ssrf::TargetPolicy,
    /// Default lease.
    pub default_lease_ttl_ms: u64,
    /// Shortest lease.
    pub min_lease_ttl_ms: u64,
    /// Longest lease.
    pub max_lease_ttl_ms: u64,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Time limit of one webhook request.
    pub delivery_timeout: Duration,
    /// Bound of the delivery queue.
    pub max_queued_deliveries: usize,
    /// Webhook requests in flight at once.
    pub max_concurrent_deliveries: usize,
    /// Most subscriptions.
    pub max_subscriptions: usize,
    /// Stream name rules.
    pub name_limits: NameLimits,
    /// How often leases are checked for expiry.
    pub tick_interval: Duration,
    /// Longest request body of the `__ds` APIs.
    pub max_body_bytes: usize,
    /// Deepest nesting of a `__ds` JSON body (`limits.max_json_depth`).
    pub max_json_depth: usize,
    /// Longest worker name and subscription id (`limits.max_identifier_bytes`).
    pub max_identifier_bytes: usize,
}

impl SubscriptionSettings {
    /// The rules used to normalise a `PUT` body.
    pub(crate) fn rules(&self) -> model::Rules {
        model::Rules {
            default_lease_ttl_ms: self.default_lease_ttl_ms,
            min_lease_ttl_ms: self.min_lease_ttl_ms,
            max_lease_ttl_ms: self.max_lease_ttl_ms,
            name_limits: self.name_limits,
        }
    }
}
