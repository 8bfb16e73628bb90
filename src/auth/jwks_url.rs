//! The JWKS at `auth.jwks_url`: fetched at start, refreshed every
//! `jwks_refresh_interval_secs` (sooner while no set was ever fetched),
//! and again when a token names a key id the set does not have (an issuer
//! rotating its keys), at most once per `jwks_min_refetch_interval_secs`.
//! A failed fetch is logged and the last good set stays in use.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::AuthSetupError;
use super::file::Material;
use super::jwk::{KeySet, MAX_JWKS_BYTES};
use crate::shutdown::ShutdownToken;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// No answer, or not a complete one.
    #[error("request failed: {0}")]
    Request(String),
    /// A status other than 2xx.
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
    /// A body larger than [`MAX_JWKS_BYTES`].
    #[error("the body is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// Not a usable key set.
    #[error("{0}")]
    Invalid(String),
}

/// How the fetcher paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FetchTiming {
    /// Between two scheduled fetches.
    pub(crate) refresh_interval: Duration,
    /// Time limit of one fetch.
    pub(crate) timeout: Duration,
    /// Least time between two fetches caused by unknown key ids (also the
    /// retry interval while no set was ever fetched).
    pub(crate) min_refetch_interval: Duration,
}

/// The fetched key set.
#[derive(Debug)]
pub(crate) struct JwksFetcher {
    url: url::Url,
    client: reqwest::Client,
    timing: FetchTiming,
    current: RwLock<Option<Arc<KeySet>>>,
    /// When the last fetch started; held during a fetch, so concurrent
    /// callers wait for it instead of fetching again.
    last_fetch: Mutex<Option<Instant>>,
}

impl JwksFetcher {
    /// A fetcher with nothing fetched yet.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub(crate) fn new(url: url::Url, timing: FetchTiming) -> Result<Self, AuthSetupError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timing.timeout)
            .connect_timeout(timing.timeout)
            .user_agent(concat!(
                "durable-streams-server/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|error| AuthSetupError::HttpClient(error.to_string()))?;
        Ok(Self {
            url,
            client,
            timing,
            current: RwLock::new(None),
            last_fetch: Mutex::new(None),
        })
    }

    /// The set in use; `None` until a fetch succeeded.
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches now, whatever the pacing. Logs the outcome.
    ///
    /// # Errors
    /// Why the fetch failed; the last good set stays in use.
    pub(crate) async fn refresh(&self) -> Result<(), FetchError> {
        let mut last_fetch = self.last_fetch.lock().await;
        *last_fetch = Some(Instant::now());
        self.fetch_and_swap().await
    }

    /// After a token named `kid`, which the set lacks: fetches again unless
    /// the last fetch is too recent. Returns whether the set in use now has
    /// the key (maybe thanks to a fetch another request made meanwhile).
    pub(crate) async fn refresh_for_kid(&self, kid: &str) -> bool {
        let has_kid = || self.current().is_some_and(|set| set.has_kid(kid));
        let mut last_fetch = self.last_fetch.lock().await;
        if has_kid() {
            return true;
        }
        if last_fetch.is_some_and(|at| at.elapsed() < self.timing.min_refetch_interval) {
            return false;
        }
        *last_fetch = Some(Instant::now());
        // `fetch_and_swap` logs failures.
        let _ = self.fetch_and_swap().await;
        has_kid()
    }

    async fn fetch_and_swap(&self) -> Result<(), FetchError> {
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(
                    what = KeySet::WHAT,
                    url = %self.url,
                    summary = %set.summary(),
                    "JWKS fetched"
                );
                for note in set.notes() {
                    tracing::warn!(what = KeySet::WHAT, url = %self.url, "{note}");
                }
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(set));
                Ok(())
            }
            Err(error) => {
                tracing::error!(
                    url = %self.url,
                    %error,
                    have_keys = self.current().is_some(),
                    "JWKS fetch failed; the last good set stays in use"
                );
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let request = |error: reqwest::Error| FetchError::Request(error.to_string());
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(request)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request)? {
            if (body.len() + chunk.len()) as u64 > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body).map_err(FetchError::Invalid)
    }

    /// Fetches at once, then on schedule until `shutdown` fires: every
    /// refresh interval, or every minimum refetch interval while no set was
    /// ever fetched.
    pub(crate) fn spawn_refresher(self: Arc<Self>, shutdown: ShutdownToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                // `refresh` logs its outcome.
                let _ = tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = self.refresh() => result,
                };
                let wait = if self.current().is_some() {
                    self.timing.refresh_interval
                } else {
                    self.timing.min_refetch_interval
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }
}
