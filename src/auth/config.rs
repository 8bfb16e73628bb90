//! `[auth]`: authentication and authorization, as the configuration holds them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

keyword_enum! {
    /// Whether requests are authenticated (`auth.mode`).
    pub enum AuthMode {
        /// Everyone may do everything; access is controlled in front of
        /// the server, if at all.
        #[default]
        None = "none",
        /// Bearer tokens (JWTs, API keys) and client identities, mapped to
        /// grants; requests without credentials get `auth.anonymous`.
        Token = "token",
    }
}

keyword_enum! {
    /// An operation a grant allows.
    pub enum AccessOp {
        /// `GET` and `HEAD`, catch-up and live reads; a fork's source.
        #[default]
        Read = "read",
        /// `POST`: appends, and closing a stream.
        Append = "append",
        /// `PUT`: creating a stream (and forking one).
        Create = "create",
        /// `DELETE`.
        Delete = "delete",
        /// The `__ds` subscription APIs, on the streams they name.
        Subscribe = "subscribe",
    }
}

keyword_enum! {
    /// Where an identity of `[[auth.identities]]` may come from.
    pub enum IdentitySourceFilter {
        /// A verified client certificate or a trusted proxy's header.
        #[default]
        Any = "any",
        /// A verified client certificate only (`mtls`).
        Certificate = "certificate",
        /// A trusted proxy's identity header only.
        ProxyHeader = "proxy-header",
    }
}

/// A grant: the operations allowed on the paths matching any of the globs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantConfig {
    /// Absolute path globs, e.g. `/v1/stream/tenant-a/**` (`*` one
    /// segment, `**` any number).
    pub paths: Vec<String>,
    /// The operations allowed there.
    pub ops: Vec<AccessOp>,
}

/// One `[[auth.identities]]` entry: a client identity and its grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Which identity sources the entry applies to.
    pub source: IdentitySourceFilter,
    /// The identity's name: the certificate's subject common name (else
    /// its first subject alternative name), or the proxy header's value.
    pub name: Option<String>,
    /// One of the certificate's subject alternative names, as
    /// `DNS:host`, `URI:spiffe://…`, `email:…` or `IP:…`.
    pub san: Option<String>,
    /// What the identity may do.
    pub grants: Vec<GrantConfig>,
}

/// `[auth]`: authentication and authorization of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `token`.
    pub mode: AuthMode,
    /// JWKS file with the keys that sign bearer JWTs (reloaded on change).
    pub jwks_path: Option<PathBuf>,
    /// URL of the JWKS with the keys that sign bearer JWTs.
    pub jwks_url: Option<String>,
    /// Seconds between two fetches of `jwks_url`.
    pub jwks_refresh_interval_secs: u64,
    /// Time limit of one fetch of `jwks_url`, in seconds.
    pub jwks_fetch_timeout_secs: u64,
    /// Least time between two fetches of `jwks_url` caused by tokens
    /// naming an unknown key id.
    pub jwks_min_refetch_interval_secs: u64,
    /// Required `iss` of JWTs, when set.
    pub issuer: Option<String>,
    /// Required `aud` of JWTs (one of them, when a list), when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The JWT claim holding the token's grants.
    pub claim: String,
    /// File of API keys: names, SHA-256 hashes and grants (reloaded on change).
    pub api_keys_path: Option<PathBuf>,
    /// Query parameter that may carry a bearer token, for `EventSource`;
    /// unset accepts tokens in the `Authorization` header only.
    pub query_param: Option<String>,
    /// Grants of requests without credentials.
    pub anonymous: Vec<GrantConfig>,
    /// Client identities (certificates, trusted-proxy headers) and their grants.
    pub identities: Vec<IdentityConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            jwks_path: None,
            jwks_url: None,
            jwks_refresh_interval_secs: 300,
            jwks_fetch_timeout_secs: 10,
            jwks_min_refetch_interval_secs: 30,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            claim: "ds".into(),
            api_keys_path: None,
            query_param: None,
            anonymous: Vec::new(),
            identities: Vec::new(),
        }
    }
}
