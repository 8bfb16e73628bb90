//! Why a request is refused ([`Rejection`]: its credentials; [`Denial`]:
//! what it asks for), and why access control cannot start
//! ([`AuthSetupError`]). Each refusal has a fixed, short `reason` for the
//! `durable_streams_auth_denied_total{reason}` counter and the logs; none
//! of the messages carries a token, a key or a hash.

use std::path::PathBuf;

/// Credentials that were presented but are not accepted (HTTP `401`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header is not \"Bearer <token>\"")]
    MalformedHeader,
    /// A token both in the `Authorization` header and in the query string.
    #[error("a token was sent both in the Authorization header and in the query string")]
    ConflictingCredentials,
    /// Not a compact JWS with a JSON header and payload.
    #[error("the token is not a well-formed JWT")]
    MalformedToken,
    /// An `alg` other than EdDSA, ES256 and RS256 (`none` and HMAC included).
    #[error("the token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// The `alg` does not fit the key its `kid` names.
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    /// No key with the token's `kid` (or none at all yet).
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// No `exp` claim: bearer tokens must expire.
    #[error("the token has no expiry (exp)")]
    MissingExpiry,
    /// Past `exp` (plus the leeway).
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` (minus the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not `auth.issuer`.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not name `auth.audience`.
    #[error("the token is meant for another audience")]
    WrongAudience,
    /// The grants claim is not a list of valid grants.
    #[error("the token's grants claim is malformed")]
    BadGrants,
    /// Not a JWT, and no API key has its hash.
    #[error("unknown API key")]
    UnknownApiKey,
}

impl Rejection {
    /// The metric label and log field.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MalformedHeader => "malformed_header",
            Self::ConflictingCredentials => "conflicting_credentials",
            Self::MalformedToken => "malformed_token",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::MissingExpiry => "missing_expiry",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadGrants => "bad_grants",
            Self::UnknownApiKey => "unknown_api_key",
        }
    }
}

/// A request its principal may not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// No credentials, and the anonymous grants do not allow it (HTTP
    /// `401`: credentials may help).
    #[error("this request needs credentials")]
    CredentialsRequired,
    /// Authenticated, but no grant allows it (HTTP `403`).
    #[error("the credentials do not allow this operation on this path")]
    NotGranted,
    /// Not a normalised absolute path (an empty, `.` or `..` segment,
    /// encoded or not): nothing is granted on it.
    #[error("the path is not a normalised absolute path")]
    InvalidPath,
}

impl Denial {
    /// The metric label and log field.
    pub fn reason(self) -> &'static str {
        match self {
            Self::CredentialsRequired => "credentials_required",
            Self::NotGranted => "not_granted",
            Self::InvalidPath => "invalid_path",
        }
    }
}

/// Why a grant (from the configuration, an API-key file or a token) is not
/// accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// `paths` is empty.
    #[error("a grant needs at least one path")]
    NoPaths,
    /// `ops` is empty.
    #[error("a grant needs at least one operation")]
    NoOps,
    /// A path glob that is not accepted.
    #[error("grant path {path:?} {why}")]
    BadPath {
        /// The path as written.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A file of access-control material (JWKS, API keys) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFileError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than anything sensible.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The content is wrong.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        reason: String,
    },
}

/// Why access control cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    /// A grant of `auth.anonymous` or `[[auth.identities]]`.
    #[error("`{key}`: {source}")]
    Grant {
        /// The configuration key.
        key: String,
        /// What is wrong.
        #[source]
        source: GrantError,
    },
    /// An `[[auth.identities]]` entry.
    #[error("`{key}`: {why}")]
    Identity {
        /// The entry, e.g. `auth.identities[2]`.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The JWKS or API-key file.
    #[error(transparent)]
    File(#[from] AuthFileError),
    /// `auth.jwks_url` is not a usable URL.
    #[error("`auth.jwks_url`: {0}")]
    JwksUrl(String),
    /// The HTTP client for `auth.jwks_url` cannot be built.
    #[error("cannot build the HTTP client for auth.jwks_url: {0}")]
    HttpClient(String),
}

impl AuthSetupError {
    /// How to fix it, for the startup diagnostics.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Grant { .. } => {
                "write grants as { paths = [\"/v1/stream/tenant-a/**\"], ops = [\"read\"] }"
            }
            Self::Identity { .. } => {
                "give each entry exactly one of name and san, and list each identity once"
            }
            Self::File(AuthFileError::Read { .. }) => {
                "check the path and that the server's user may read the file"
            }
            Self::File(AuthFileError::TooLarge { .. }) => "point the key at the right file",
            Self::File(AuthFileError::Invalid { .. }) => {
                "fix the entry named; README: Access control describes both files"
            }
            Self::JwksUrl(_) => "use https://host/path (http:// only on loopback addresses)",
            Self::HttpClient(_) => "report this as a bug",
        }
    }
}
