//! `[storage.postgres]` turned into what the backend connects with: the
//! client configuration from the URL (libpq's URI form), the TLS policy
//! its `ssl*` parameters ask for, and the pool and timeout settings.
//!
//! The URL is parsed here and nowhere else; configuration validation calls
//! [`PostgresOptions::from_config`] so `check-config` reports what startup
//! would. Messages never contain the password.

use std::path::PathBuf;
use std::time::Duration;

use crate::redact::redact_url_password;
use crate::storage::config::PostgresConfig;

/// libpq's `sslmode`, as far as it applies to a client without GSSAPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, certificate not checked (libpq's
    /// `allow` is treated the same: TLS is tried first).
    Prefer,
    /// TLS or fail; certificate not checked unless `sslrootcert` is set.
    Require,
    /// TLS, certificate chain checked against `sslrootcert` (or the system
    /// roots); the host name is not.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// Where trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's store (`sslrootcert=system`, or unset).
    System,
    /// A PEM file.
    File(PathBuf),
}

/// The TLS part of the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_certs: RootCerts,
    /// Whether `sslrootcert` named a file (libpq then verifies in `require`).
    pub root_certs_given: bool,
    /// `sslcert` and `sslkey`: a client certificate chain and its key (PEM).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Everything the backend needs to reach its database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// The client configuration (host, user, password, database, timeouts,
    /// `search_path`, `statement_timeout`, `application_name`).
    pub client: tokio_postgres::Config,
    /// TLS policy.
    pub tls: TlsOptions,
    /// The schema of the server's tables.
    pub schema: String,
    /// Pooled connections for reads and metadata.
    pub pool_size: usize,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Server-side statement limit, if any.
    pub statement_timeout: Option<Duration>,
    /// The URL without its password, for messages.
    pub redacted_url: String,
    /// Size of the position windows that group records into chunks
    /// (`storage.chunk_bytes`).
    pub chunk_bytes: u64,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.redacted_url)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Why `[storage.postgres]` cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionsError {
    /// The dotted key at fault.
    pub key: &'static str,
    /// What is wrong (never the password).
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl OptionsError {
    fn new(key: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// URL parameters this module interprets itself; the rest go to the client.
const TLS_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Longest schema name: PostgreSQL keeps 63 bytes of a name, and the
/// notification channel is the schema's name plus `.tails`.
const MAX_SCHEMA_BYTES: usize = 57;

impl PostgresOptions {
    /// Reads `[storage.postgres]`.
    ///
    /// # Errors
    /// When the URL is missing or malformed, names an unknown `sslmode`, or
    /// a setting is out of range.
    pub fn from_config(config: &PostgresConfig) -> Result<Self, OptionsError> {
        const URL: &str = "storage.postgres.url";
        let url_hint = "set DS_STORAGE__POSTGRES__URL to \
                        postgres://user:password@host:5432/database?sslmode=verify-full";
        let raw = config
            .url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                OptionsError::new(
                    URL,
                    "storage.mode = \"postgres\" needs storage.postgres.url, which is not set",
                    url_hint,
                )
            })?;
        let redacted_url = redact_url_password(raw);
        let parsed = url::Url::parse(raw).map_err(|error| {
            OptionsError::new(
                URL,
                format!("storage.postgres.url {redacted_url:?} is not a URL: {error}"),
                url_hint,
            )
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(OptionsError::new(
                URL,
                format!(
                    "storage.postgres.url {redacted_url:?} has scheme {:?}, not postgres://",
                    parsed.scheme()
                ),
                url_hint,
            ));
        }
        let tls = tls_options(&parsed, &redacted_url)?;
        // The client parses the rest (host, port, user, password, database
        // and its own parameters), so both agree on libpq's rules.
        let mut without_tls = parsed.clone();
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(name, _)| !TLS_PARAMETERS.contains(&name.as_ref()))
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        without_tls.set_query(None);
        if !kept.is_empty() {
            without_tls.query_pairs_mut().extend_pairs(kept);
        }
        let mut client: tokio_postgres::Config = without_tls.as_str().parse().map_err(|error| {
            OptionsError::new(
                URL,
                format!("storage.postgres.url {redacted_url:?} is not usable: {error}"),
                "use libpq's URI form; see the PostgreSQL documentation on connection URIs",
            )
        })?;
        client.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });

        let schema = config.schema.trim().to_owned();
        let valid_schema = !schema.is_empty()
            && schema.len() <= MAX_SCHEMA_BYTES
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit()
            && !schema.starts_with("pg_");
        if !valid_schema {
            return Err(OptionsError::new(
                "storage.postgres.schema",
                format!(
                    "storage.postgres.schema {:?} is not a plain schema name",
                    config.schema
                ),
                "use lower-case letters, digits and underscores (not starting with a digit or \
                 pg_), at most 57 bytes, e.g. durable_streams",
            ));
        }
        if config.pool_size == 0 {
            return Err(OptionsError::new(
                "storage.postgres.pool_size",
                "storage.postgres.pool_size is 0",
                "give at least 1 connection; 16 suits most servers",
            ));
        }
        if config.connect_timeout_ms == 0 {
            return Err(OptionsError::new(
                "storage.postgres.connect_timeout_ms",
                "storage.postgres.connect_timeout_ms is 0",
                "give the longest wait for a connection in milliseconds, e.g. 5000",
            ));
        }
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        if client.get_connect_timeout().is_none() {
            client.connect_timeout(connect_timeout);
        }
        if client.get_application_name().is_none() && !config.application_name.is_empty() {
            client.application_name(&config.application_name);
        }
        // Dead peers (a failed-over primary) are noticed by TCP keepalive
        // on idle connections, not only when a query times out.
        client.keepalives(true);
        client.keepalives_idle(Duration::from_secs(30));
        let statement_timeout = (config.statement_timeout_ms > 0)
            .then(|| Duration::from_millis(config.statement_timeout_ms));
        let mut session = format!("-c search_path={schema}");
        if let Some(timeout) = statement_timeout {
            session.push_str(&format!(" -c statement_timeout={}", timeout.as_millis()));
        }
        let options = match client.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {session}"),
            _ => session,
        };
        client.options(&options);
        Ok(Self {
            client,
            tls,
            schema,
            pool_size: config.pool_size,
            connect_timeout,
            statement_timeout,
            redacted_url,
            chunk_bytes: crate::storage::config::DEFAULT_CHUNK_BYTES,
        })
    }

    /// How long a whole transaction may take before the client gives up on
    /// it: the server's statement limit plus the time to connect, so a
    /// server that stopped answering cannot hold a writer forever.
    pub fn transaction_deadline(&self) -> Duration {
        self.statement_timeout.unwrap_or(Duration::from_secs(60)) + self.connect_timeout
    }
}

fn tls_options(url: &url::Url, redacted_url: &str) -> Result<TlsOptions, OptionsError> {
    const URL: &str = "storage.postgres.url";
    let parameter = |name: &str| {
        url.query_pairs()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .last()
    };
    let mode = match parameter("sslmode") {
        None => SslMode::Prefer,
        Some(text) => SslMode::parse(&text).ok_or_else(|| {
            OptionsError::new(
                URL,
                format!("storage.postgres.url {redacted_url:?} has an unknown sslmode {text:?}"),
                "use sslmode=disable, prefer, require, verify-ca or verify-full",
            )
        })?,
    };
    let root = parameter("sslrootcert").filter(|p| !p.is_empty());
    let root_certs_given = root.as_deref().is_some_and(|p| p != "system");
    let root_certs = match root {
        Some(path) if path != "system" => RootCerts::File(PathBuf::from(path)),
        _ => RootCerts::System,
    };
    let client_cert = match (parameter("sslcert"), parameter("sslkey")) {
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            Some((PathBuf::from(cert), PathBuf::from(key)))
        }
        (None, None) => None,
        _ => {
            return Err(OptionsError::new(
                URL,
                format!(
                    "storage.postgres.url {redacted_url:?} sets only one of sslcert and sslkey"
                ),
                "give both sslcert (PEM certificate chain) and sslkey (PEM private key), or neither",
            ));
        }
    };
    if mode == SslMode::Disable && (root_certs_given || client_cert.is_some()) {
        return Err(OptionsError::new(
            URL,
            format!(
                "storage.postgres.url {redacted_url:?} has sslmode=disable but names certificates"
            ),
            "remove sslrootcert/sslcert/sslkey, or choose sslmode=verify-full",
        ));
    }
    Ok(TlsOptions {
        mode,
        root_certs,
        root_certs_given,
        client_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> Result<PostgresOptions, OptionsError> {
        PostgresOptions::from_config(&PostgresConfig {
            url: Some(url.into()),
            ..PostgresConfig::default()
        })
    }

    #[test]
    fn a_full_url_is_understood() {
        let options = options(
            "postgres://ds:pw@db.example:6432/streams?sslmode=verify-full&sslrootcert=/ca.pem\
             &sslcert=/c.pem&sslkey=/k.pem&application_name=mine",
        )
        .expect("valid");
        assert_eq!(options.tls.mode, SslMode::VerifyFull);
        assert_eq!(options.tls.root_certs, RootCerts::File("/ca.pem".into()));
        assert_eq!(
            options.tls.client_cert,
            Some(("/c.pem".into(), "/k.pem".into()))
        );
        assert_eq!(options.client.get_user(), Some("ds"));
        assert_eq!(options.client.get_password(), Some(&b"pw"[..]));
        assert_eq!(options.client.get_dbname(), Some("streams"));
        assert_eq!(options.client.get_ports(), &[6432]);
        assert_eq!(options.client.get_application_name(), Some("mine"));
        assert_eq!(
            options.client.get_options(),
            Some("-c search_path=durable_streams -c statement_timeout=10000")
        );
        assert_eq!(
            options.redacted_url,
            "postgres://ds:<redacted>@db.example:6432/streams?sslmode=verify-full\
             &sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem&application_name=mine"
        );
        assert!(!format!("{options:?}").contains("pw@"));
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for (url, expected) in [
            ("mysql://u:secret@h/db", "scheme"),
            (
                "postgres://u:secret@h/db?sslmode=sometimes",
                "unknown sslmode",
            ),
            ("postgres://u:secret@h/db?sslcert=/c.pem", "only one of"),
            (
                "postgres://u:secret@h/db?sslmode=disable&sslrootcert=/ca",
                "sslmode=disable",
            ),
            ("postgres://u:secret@h/db?frobnicate=1", "not usable"),
            ("not a url secret", "not a URL"),
        ] {
            let error = options(url).expect_err(url);
            assert!(error.message.contains(expected), "{url}: {error}");
            assert!(!error.message.contains("secret"), "{url}: {error}");
            assert_eq!(error.key, "storage.postgres.url");
        }
        let missing = PostgresOptions::from_config(&PostgresConfig::default()).expect_err("unset");
        assert!(missing.message.contains("not set"), "{missing}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for schema in ["durable_streams", "ds2", "_x"] {
            let config = PostgresConfig {
                url: Some("postgres://h/db".into()),
                schema: schema.into(),
                ..PostgresConfig::default()
            };
            assert!(PostgresOptions::from_config(&config).is_ok(), "{schema}");
        }
        for schema in ["", "Upper", "a-b", "1x", "pg_x", "a;drop", &"x".repeat(58)] {
            let config = PostgresConfig {
                url: Some("postgres://h/db".into()),
                schema: schema.into(),
                ..PostgresConfig::default()
            };
            let error = PostgresOptions::from_config(&config).expect_err(schema);
            assert_eq!(error.key, "storage.postgres.schema");
        }
    }

    #[test]
    fn libpq_defaults_apply() {
        let options = options("postgresql://h/db").expect("valid");
        assert_eq!(options.tls.mode, SslMode::Prefer);
        assert_eq!(options.tls.root_certs, RootCerts::System);
        assert_eq!(
            options.client.get_application_name(),
            Some("durable-streams-server")
        );
        assert_eq!(
            options.client.get_connect_timeout(),
            Some(&Duration::from_secs(5))
        );
    }
}
