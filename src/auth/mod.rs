//! Access control: who a request acts as ([`AccessControl::authenticate`]
//! → [`Principal`]) and whether it may do what it asks
//! ([`Principal::check`], [`Principal::check_pattern`]).
//!
//! With `auth.mode = "token"` a request is authenticated by, in order:
//! a bearer token (`Authorization: Bearer`, or `auth.query_param` when set),
//! which is an API key when its SHA-256 is in `auth.api_keys_path`, else a
//! JWT verified against the JWKS of `auth.jwks_path` or `auth.jwks_url`; a
//! client identity (verified certificate, trusted proxy header) listed in
//! `[[auth.identities]]`; otherwise it is anonymous, with `auth.anonymous`'s
//! grants. A bad token is refused (`401`), never downgraded to anonymous.
//!
//! # Layout
//! - this file: [`AuthSettings`] (from the `[auth]` settings) and
//!   [`AccessControl`], the handle requests authenticate with.
//! - `credentials`: where the bearer token is, and keeping it out of logs.
//! - `principal`: [`Principal`] and the authorization check.
//! - `grant`: [`Grant`], path globs and path normalisation.
//! - `jwt`, `jwk`: token verification and key sets.
//! - `api_key`: the API-key file.
//! - `identity`: `[[auth.identities]]`.
//! - `file`, `jwks_url`: the JWKS and API-key files reloaded on change; the
//!   JWKS fetched from a URL.
//! - `error`: [`Rejection`], [`Denial`], [`AuthSetupError`].

mod api_key;
pub mod config;
mod credentials;
mod error;
mod file;
mod grant;
mod identity;
mod jwk;
mod jwks_url;
mod jwt;
mod principal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use api_key::{ApiKey, ApiKeys};
pub use credentials::{bearer_token, without_query_param};
pub use error::{AuthFileError, AuthSetupError, Denial, GrantError, Rejection};
pub use grant::Grant;
pub use jwk::{Algorithm, KeySet};
pub use principal::{Principal, PrincipalKind};

use crate::client::ClientIdentity;
use crate::shutdown::ShutdownToken;
use crate::watch::ReloadTiming;
use config::{AuthConfig, AuthMode};
use file::FileBacked;
use identity::IdentityMap;
use jwks_url::{FetchTiming, JwksFetcher};
use jwt::TokenRules;

/// Where token-signing keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeySource {
    /// No JWTs accepted.
    None,
    /// A JWKS file, reloaded on change.
    File(PathBuf),
    /// A JWKS URL, fetched and refreshed.
    Url(url::Url, FetchTiming),
}

/// The `[auth]` settings, parsed and checked.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    keys: KeySource,
    rules: TokenRules,
    api_keys_path: Option<PathBuf>,
    query_param: Option<String>,
    anonymous: Arc<[Grant]>,
    identities: IdentityMap,
}

impl AuthSettings {
    /// The settings of `auth.mode = "token"`; `None` for `"none"`.
    ///
    /// # Errors
    /// As [`parse`](Self::parse).
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthSetupError> {
        match config.mode {
            AuthMode::None => Ok(None),
            AuthMode::Token => Self::parse(config).map(Some),
        }
    }

    /// Parses the settings whatever the mode (validation checks them
    /// before they are used).
    ///
    /// # Errors
    /// The first bad grant, identity or JWKS URL.
    pub fn parse(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let set =
            |path: &Option<PathBuf>| path.as_ref().filter(|p| !p.as_os_str().is_empty()).cloned();
        let keys = match (set(&config.jwks_path), config.jwks_url.as_deref()) {
            (Some(path), _) => KeySource::File(path),
            (None, Some(url)) if !url.trim().is_empty() => KeySource::Url(
                check_jwks_url(url).map_err(AuthSetupError::JwksUrl)?,
                FetchTiming {
                    refresh_interval: Duration::from_secs(config.jwks_refresh_interval_secs.max(1)),
                    timeout: Duration::from_secs(config.jwks_fetch_timeout_secs.max(1)),
                    min_refetch_interval: Duration::from_secs(
                        config.jwks_min_refetch_interval_secs.max(1),
                    ),
                },
            ),
            _ => KeySource::None,
        };
        let anonymous =
            Grant::from_configs(&config.anonymous).map_err(|source| AuthSetupError::Grant {
                key: "auth.anonymous".into(),
                source,
            })?;
        let non_empty = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(Self {
            keys,
            rules: TokenRules {
                issuer: non_empty(&config.issuer),
                audience: non_empty(&config.audience),
                leeway_secs: config.leeway_secs,
                claim: config.claim.clone(),
            },
            api_keys_path: set(&config.api_keys_path),
            query_param: non_empty(&config.query_param),
            anonymous: anonymous.into(),
            identities: IdentityMap::from_config(&config.identities)?,
        })
    }

    /// The query parameter that may carry a token, if enabled.
    pub fn query_param(&self) -> Option<&str> {
        self.query_param.as_deref()
    }
}

/// Checks `auth.jwks_url`: an absolute `https` URL (or `http` to a loopback
/// host), without credentials in it.
///
/// # Errors
/// What is wrong with it.
pub fn check_jwks_url(raw: &str) -> Result<url::Url, String> {
    let url =
        url::Url::parse(raw.trim()).map_err(|error| format!("{raw:?} is not a URL: {error}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(format!("{raw:?} has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{raw:?} is plain http to a non-loopback host: keys fetched that way can be \
                 replaced in transit"
            ));
        }
        other => return Err(format!("{raw:?} has scheme {other:?}, not https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL holds credentials; a JWKS is public and needs none".into());
    }
    Ok(url)
}

/// The token-signing keys in use.
#[derive(Debug)]
enum Jwks {
    File(FileBacked<KeySet>),
    Url(Arc<JwksFetcher>),
}

impl Jwks {
    fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            Self::File(file) => Some(file.current()),
            Self::Url(fetcher) => fetcher.current(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    settings: AuthSettings,
    jwks: Option<Jwks>,
    api_keys: Option<FileBacked<ApiKeys>>,
    anonymous: Principal,
}

/// Authenticates requests; a cheap `Clone` handle. Created once at start
/// ([`load`](Self::load)), then kept current by
/// [`spawn_background`](Self::spawn_background).
#[derive(Clone, Debug)]
pub struct AccessControl {
    shared: Arc<Shared>,
}

impl AccessControl {
    /// Reads the JWKS and API-key files (blocking). A JWKS URL is not
    /// fetched yet: tokens get [`Rejection::UnknownKey`] until
    /// [`spawn_background`](Self::spawn_background)'s first fetch, or
    /// [`fetch_jwks`](Self::fetch_jwks), succeeds.
    ///
    /// # Errors
    /// A file that is unreadable or invalid, or an HTTP client that cannot
    /// be built.
    pub fn load(settings: AuthSettings) -> Result<Self, AuthSetupError> {
        let jwks = match &settings.keys {
            KeySource::None => None,
            KeySource::File(path) => Some(Jwks::File(FileBacked::load(path)?)),
            KeySource::Url(url, timing) => {
                Some(Jwks::Url(Arc::new(JwksFetcher::new(url.clone(), *timing)?)))
            }
        };
        let api_keys = settings
            .api_keys_path
            .as_deref()
            .map(FileBacked::load)
            .transpose()?;
        let anonymous = Principal::new(
            Arc::from("anonymous"),
            PrincipalKind::Anonymous,
            Arc::clone(&settings.anonymous),
            None,
        );
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                jwks,
                api_keys,
                anonymous,
            }),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &AuthSettings {
        &self.shared.settings
    }

    /// Whether JWTs can be verified now (a key set is loaded or fetched),
    /// for readiness.
    pub fn has_token_keys(&self) -> bool {
        self.shared
            .jwks
            .as_ref()
            .is_some_and(|jwks| jwks.current().is_some())
    }

    /// Fetches the JWKS URL now, if one is configured.
    ///
    /// # Errors
    /// Why the fetch failed (also logged); the last good set stays in use.
    pub async fn fetch_jwks(&self) -> Result<(), String> {
        match &self.shared.jwks {
            Some(Jwks::Url(fetcher)) => fetcher.refresh().await.map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// Reloads the JWKS and API-key files if they changed (or `force`).
    /// Blocking; the background task calls it on changes.
    ///
    /// # Errors
    /// The first file rejected; its previous version stays in use.
    pub fn reload_files(&self, force: bool) -> Result<(), AuthFileError> {
        let jwks = match &self.shared.jwks {
            Some(Jwks::File(file)) => file.reload(force).map(|_| ()),
            _ => Ok(()),
        };
        let api_keys = match &self.shared.api_keys {
            Some(file) => file.reload(force).map(|_| ()),
            None => Ok(()),
        };
        jwks.and(api_keys)
    }

    /// Keeps the material current until `shutdown`: reloads the files on
    /// changes in their directories, on a poll and on SIGHUP, and fetches
    /// the JWKS URL at once and then on schedule. Must be called within a
    /// Tokio runtime.
    pub fn spawn_background(
        &self,
        timing: ReloadTiming,
        shutdown: ShutdownToken,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut files: Vec<&Path> = Vec::new();
        if let Some(Jwks::File(file)) = &self.shared.jwks {
            files.push(file.path());
        }
        if let Some(file) = &self.shared.api_keys {
            files.push(file.path());
        }
        if !files.is_empty() {
            let access = self.clone();
            tasks.push(crate::watch::spawn_reloader(
                "access-control files",
                &crate::watch::parent_dirs(files),
                timing,
                shutdown.clone(),
                // `reload` logs its own outcome.
                move |force| {
                    let _ = access.reload_files(force);
                },
            ));
        }
        if let Some(Jwks::Url(fetcher)) = &self.shared.jwks {
            tasks.push(Arc::clone(fetcher).spawn_refresher(shutdown));
        }
        tasks
    }

    /// Who the request acts as: the bearer token's principal when there is
    /// a token (`bearer`, from [`bearer_token`]), else the principal of a
    /// listed client identity, else the anonymous one. `now` is Unix
    /// seconds. Awaits only to fetch a JWKS URL again for a token naming an
    /// unknown key (at most once per `jwks_min_refetch_interval_secs`).
    ///
    /// # Errors
    /// [`Rejection`] when a token is present but not accepted.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        identity: Option<&ClientIdentity>,
        now: u64,
    ) -> Result<Principal, Rejection> {
        if let Some(token) = bearer {
            return self.authenticate_token(token, now).await;
        }
        if let Some(identity) = identity
            && let Some(grants) = self.shared.settings.identities.grants_of(identity)
        {
            return Ok(Principal::new(
                Arc::from(identity.name.as_str()),
                PrincipalKind::Identity(identity.source),
                Arc::clone(grants),
                None,
            ));
        }
        Ok(self.shared.anonymous.clone())
    }

    async fn authenticate_token(&self, token: &str, now: u64) -> Result<Principal, Rejection> {
        if let Some(api_keys) = &self.shared.api_keys
            && let Some(key) = api_keys.current().find(token)
        {
            return Ok(Principal::new(
                Arc::from(key.name()),
                PrincipalKind::ApiKey,
                Arc::clone(key.grants()),
                None,
            ));
        }
        let jwks = match &self.shared.jwks {
            Some(jwks) if jwt::looks_like_jwt(token) => jwks,
            _ if self.shared.api_keys.is_some() => return Err(Rejection::UnknownApiKey),
            _ => return Err(Rejection::MalformedToken),
        };
        let rules = &self.shared.settings.rules;
        let verify = |keys: Option<Arc<KeySet>>| match keys {
            Some(keys) => jwt::verify(token, &keys, rules, now),
            None => Err(Rejection::UnknownKey),
        };
        let verified = match (verify(jwks.current()), jwks) {
            (Err(Rejection::UnknownKey), Jwks::Url(fetcher)) => match jwt::key_id(token) {
                Some(kid) if fetcher.refresh_for_kid(&kid).await => verify(fetcher.current()),
                _ => Err(Rejection::UnknownKey),
            },
            (result, _) => result,
        }?;
        let name: Arc<str> = Arc::from(verified.subject.as_deref().unwrap_or("token"));
        Ok(Principal::new(
            name,
            PrincipalKind::Token,
            verified.grants.into(),
            Some(verified.expires_at),
        ))
    }
}

#[cfg(test)]
mod tests;
