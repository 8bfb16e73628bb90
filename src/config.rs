//! The settings tree and its loading: built-in defaults overridden by `DS_*`
//! environment variables (`__` separates levels, so
//! `DS_SERVER__BIND_ADDRESS` sets `server.bind_address`).

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

/// Where the protocol routes are mounted unless `http.stream_base_path` says otherwise.
pub const DEFAULT_STREAM_BASE_PATH: &str = "/v1/stream";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener and lifecycle.
    pub server: ServerConfig,
    /// Size limits.
    pub limits: LimitsConfig,
    /// HTTP surface.
    pub http: HttpConfig,
    /// Storage backend.
    pub storage: StorageConfig,
    /// Transport settings.
    pub transport: TransportConfig,
    /// Logging.
    pub observability: ObservabilityConfig,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` to listen on.
    pub bind_address: String,
    /// Seconds between SIGTERM and the listener closing, while `/readyz`
    /// already answers `503` (lets load balancers stop routing to us).
    pub shutdown_delay_secs: u64,
    /// Upper bound, in seconds, on the whole shutdown.
    pub drain_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0:4437".into(),
            shutdown_delay_secs: 1,
            drain_timeout_secs: 25,
        }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body; larger ones get `413` without being buffered.
    pub max_request_body_bytes: u64,
    /// Total payload bytes the in-memory backend may hold.
    pub max_memory_bytes: u64,
    /// Payload bytes one stream may hold.
    pub max_stream_bytes: u64,
    /// Longest stream name, in bytes.
    pub max_stream_name_bytes: usize,
    /// Most `/`-separated segments in a stream name.
    pub max_stream_name_segments: usize,
    /// Most payload bytes one read response carries.
    pub max_read_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 10 << 20,
            max_memory_bytes: 256 << 20,
            max_stream_bytes: 1 << 30,
            max_stream_name_bytes: 1024,
            max_stream_name_segments: 8,
            max_read_bytes: 4 << 20,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `*` or a comma-separated list of allowed origins.
    pub cors_origins: String,
    /// Acknowledges `*` in production profiles.
    pub allow_wildcard_cors: bool,
    /// Mount path of the protocol routes.
    pub stream_base_path: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: "*".into(),
            allow_wildcard_cors: false,
            stream_base_path: DEFAULT_STREAM_BASE_PATH.into(),
        }
    }
}

/// Storage backends by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMode {
    /// Process memory; nothing survives a restart.
    #[default]
    Memory,
    /// Segment files, not fsynced before acknowledgement.
    #[serde(alias = "fast")]
    FileFast,
    /// Segment files, fsynced before acknowledgement.
    #[serde(alias = "file", alias = "durable")]
    FileDurable,
    /// redb transactions.
    #[serde(alias = "redb")]
    Acid,
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which backend.
    pub mode: StorageMode,
    /// Where durable backends keep their files.
    pub data_dir: Option<PathBuf>,
    /// Seconds between sweeps that reclaim expired streams.
    pub expiry_sweep_interval_secs: u64,
    /// File backends: size at which a new segment file starts.
    pub segment_bytes: u64,
    /// `file-fast`: longest time acknowledged data may stay unsynced.
    pub fast_sync_interval_ms: u64,
    /// File backends: discard the log from this `<segment>:<offset>` on, as
    /// named by a corruption error at startup. Set it once, then remove it.
    pub truncate_corrupt_at: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            mode: StorageMode::Memory,
            data_dir: None,
            expiry_sweep_interval_secs: 5,
            segment_bytes: 64 << 20,
            fast_sync_interval_ms: 100,
            truncate_corrupt_at: None,
        }
    }
}

/// `[transport]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Live-read connection behaviour.
    pub connection: ConnectionConfig,
}

/// `[transport.connection]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// How long a long-poll waits for data before answering `204`.
    pub long_poll_timeout_secs: u64,
    /// SSE connections end after this many seconds so CDNs can collapse
    /// them; 0 keeps them open.
    pub sse_reconnect_interval_secs: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            long_poll_timeout_secs: 30,
            sse_reconnect_interval_secs: 60,
        }
    }
}

/// `[observability]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `tracing` filter directives; `RUST_LOG` overrides it.
    pub rust_log: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            rust_log: "info".into(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Defaults overridden by `DS_*` environment variables.
    ///
    /// # Errors
    /// When a variable names an unknown key or holds a bad value.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::figment()
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))
    }

    /// The layered sources, for callers that add their own.
    pub fn figment() -> Figment {
        Figment::from(Serialized::defaults(Config::default())).merge(
            Env::prefixed("DS_")
                .split("__")
                .ignore(&["profile", "config_dir"]),
        )
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DS_SERVER__BIND_ADDRESS", "127.0.0.1:9");
            jail.set_env("DS_STORAGE__MODE", "durable");
            jail.set_env("DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS", "1");
            jail.set_env("DS_HTTP__STREAM_BASE_PATH", "/streams");
            let config = Config::from_env().expect("valid");
            assert_eq!(config.server.bind_address, "127.0.0.1:9");
            assert_eq!(config.storage.mode, StorageMode::FileDurable);
            assert_eq!(config.transport.connection.long_poll_timeout_secs, 1);
            assert_eq!(config.http.stream_base_path, "/streams");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DS_SERVER__BIND_ADRESS", "x");
            assert!(Config::from_env().is_err());
            Ok(())
        });
    }
}
