//! `[storage]`: the backend and its settings, as the configuration holds them.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::redact::redact_url_password;

/// `storage.chunk_bytes` when not set.
pub const DEFAULT_CHUNK_BYTES: u64 = 8 << 20;

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
    /// A PostgreSQL database (`[storage.postgres]`).
    #[serde(alias = "postgresql")]
    Postgres,
}

impl StorageMode {
    /// The canonical spelling used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Memory => "memory",
            StorageMode::FileFast => "file-fast",
            StorageMode::FileDurable => "file-durable",
            StorageMode::Acid => "acid",
            StorageMode::Postgres => "postgres",
        }
    }

    /// Whether the backend keeps its data in `storage.data_dir`.
    pub fn uses_data_dir(self) -> bool {
        !matches!(self, StorageMode::Memory | StorageMode::Postgres)
    }
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// File backends: size at which a commit shard's write-ahead log starts
    /// a new segment file.
    pub segment_bytes: u64,
    /// `file-fast`: longest time acknowledged data may stay unsynced.
    pub fast_sync_interval_ms: u64,
    /// File backends: discard the log from this `<segment>:<offset>` on, as
    /// named by a corruption error at startup. Set it once, then remove it.
    pub truncate_corrupt_at: Option<String>,
    /// File backends: commit shards, each with its own log and writer; 0
    /// means one per core (at least two in the file modes).
    pub commit_shards: u64,
    /// Size at which a stream's next record starts a new chunk (the unit
    /// retention trims; a chunk file in the file modes), on every backend.
    pub chunk_bytes: u64,
    /// File backends: most bytes of recent records kept in memory for
    /// readers at the tail, over all streams.
    pub tail_cache_bytes: u64,
    /// File backends: most bytes of committed records held in memory until
    /// they are written to their chunk files (the log holds them durably),
    /// over all streams.
    pub chunk_buffer_bytes: u64,
    /// File backends: most chunk files held open at once.
    pub max_open_files: u64,
    /// File backends: longest time between checkpoints while anything is
    /// written.
    pub checkpoint_interval_secs: u64,
    /// File backends: log bytes a restart after a crash replays at most
    /// (about); a checkpoint is taken at half of it.
    pub max_replay_bytes: u64,
    /// Retention: how much of each stream's oldest data is kept.
    pub retention: RetentionConfig,
    /// `acid` tuning.
    pub acid: AcidConfig,
    /// `postgres` mode: the database.
    pub postgres: PostgresConfig,
}

/// `[storage.retention]`: limits on what each stream keeps, enforced by
/// dropping whole chunks from its head. 0 turns a limit off (the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Drop chunks whose newest record is older than this many seconds.
    pub max_age_secs: u64,
    /// Keep at most about this many bytes per stream (whole chunks).
    pub max_bytes: u64,
    /// Per-prefix overrides; the longest matching prefix wins.
    pub rules: Vec<RetentionRule>,
}

/// `[[storage.retention.rules]]`: the limits of the streams under a path
/// prefix, in place of the defaults of `[storage.retention]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionRule {
    /// Stream path prefix, as in URLs (`/v1/stream/chat/`).
    pub prefix: String,
    /// As `storage.retention.max_age_secs`, for these streams.
    pub max_age_secs: u64,
    /// As `storage.retention.max_bytes`, for these streams.
    pub max_bytes: u64,
}

/// The limits one stream is held to; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Oldest data kept, in seconds.
    pub max_age_secs: u64,
    /// Most bytes kept.
    pub max_bytes: u64,
}

impl RetentionLimits {
    /// Whether any limit is set.
    pub fn is_on(self) -> bool {
        self.max_age_secs > 0 || self.max_bytes > 0
    }
}

impl RetentionConfig {
    /// Whether any stream can be held to a limit.
    pub fn is_on(&self) -> bool {
        self.limits_default().is_on() || self.rules.iter().any(|r| r.limits().is_on())
    }

    /// The limits of the stream at `path`: those of the longest matching
    /// rule's prefix, else the defaults.
    pub fn limits_for(&self, path: &str) -> RetentionLimits {
        self.rules
            .iter()
            .filter(|rule| path.starts_with(rule.prefix.as_str()))
            .max_by_key(|rule| rule.prefix.len())
            .map_or_else(|| self.limits_default(), RetentionRule::limits)
    }

    fn limits_default(&self) -> RetentionLimits {
        RetentionLimits {
            max_age_secs: self.max_age_secs,
            max_bytes: self.max_bytes,
        }
    }
}

impl RetentionRule {
    fn limits(&self) -> RetentionLimits {
        RetentionLimits {
            max_age_secs: self.max_age_secs,
            max_bytes: self.max_bytes,
        }
    }
}

/// `[storage.acid]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcidConfig {
    /// redb's page cache, in bytes, over all of the store's databases.
    pub cache_bytes: u64,
}

impl Default for AcidConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
        }
    }
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
            commit_shards: 0,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            tail_cache_bytes: 64 << 20,
            chunk_buffer_bytes: 16 << 20,
            max_open_files: 512,
            checkpoint_interval_secs: 60,
            max_replay_bytes: 256 << 20,
            retention: RetentionConfig::default(),
            acid: AcidConfig::default(),
            postgres: PostgresConfig::default(),
        }
    }
}

/// `[storage.postgres]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?sslmode=…`, libpq's
    /// URI form; the TLS parameters `sslmode`, `sslrootcert`, `sslcert`
    /// and `sslkey` are honoured. Holds the password: never shown.
    pub url: Option<String>,
    /// The schema holding the server's tables (created when missing).
    pub schema: String,
    /// Connections for reads and metadata; the writer and the listener
    /// hold one each besides.
    pub pool_size: usize,
    /// Longest wait for a connection (connecting, or a free pooled one).
    pub connect_timeout_ms: u64,
    /// Server-side limit of one statement (`statement_timeout`); 0: none.
    pub statement_timeout_ms: u64,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: "durable_streams".into(),
            pool_size: 16,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
            application_name: "durable-streams-server".into(),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    /// The URL carries the password: shown redacted, as by `print-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_deref().map(redact_url_password))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("application_name", &self.application_name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, max_age_secs: u64, max_bytes: u64) -> RetentionRule {
        RetentionRule {
            prefix: prefix.into(),
            max_age_secs,
            max_bytes,
        }
    }

    #[test]
    fn the_longest_matching_prefix_sets_a_streams_retention() {
        let retention = RetentionConfig {
            max_age_secs: 0,
            max_bytes: 1000,
            rules: vec![
                rule("/v1/stream/", 10, 0),
                rule("/v1/stream/chat/", 20, 0),
                rule("/v1/stream/chat/keep/", 0, 0),
            ],
        };
        assert!(retention.is_on());
        let limits = |path| retention.limits_for(path);
        assert_eq!(limits("/v1/stream/chat/room").max_age_secs, 20);
        assert_eq!(limits("/v1/stream/other").max_age_secs, 10);
        assert_eq!(limits("/elsewhere").max_bytes, 1000);
        // A rule with both limits at 0 keeps everything under its prefix.
        assert!(!limits("/v1/stream/chat/keep/x").is_on());
        assert!(!RetentionConfig::default().is_on());
    }
}
