//! The rules of `[storage]`.

use super::{Checker, is_set};
use crate::config::StorageMode;
use crate::storage::postgres::PostgresOptions;

impl Checker<'_> {
    pub(super) fn storage(&mut self) {
        let storage = &self.config.storage;
        let dir_set = is_set(&storage.data_dir);
        if storage.mode.uses_data_dir() && !dir_set {
            self.error(
                "storage.mode",
                format!(
                    "`storage.mode` = \"{}\" keeps its files in `storage.data_dir`, which is not set",
                    storage.mode
                ),
                "set DS_STORAGE__DATA_DIR (or data_dir under [storage]) to a writable directory, \
                 or use storage.mode = \"memory\""
                    .into(),
            );
        }
        let minimums = [
            ("storage.segment_bytes", storage.segment_bytes, 1 << 20),
            ("storage.chunk_bytes", storage.chunk_bytes, 4 << 10),
            ("storage.max_open_files", storage.max_open_files, 16),
            (
                "storage.checkpoint_interval_secs",
                storage.checkpoint_interval_secs,
                1,
            ),
            (
                "storage.max_replay_bytes",
                storage.max_replay_bytes,
                1 << 20,
            ),
            (
                "storage.acid.cache_bytes",
                storage.acid.cache_bytes,
                1 << 20,
            ),
        ];
        for (key, value, minimum) in minimums {
            if value < minimum {
                self.error(
                    key,
                    format!("`{key}` = {value} is below its minimum of {minimum}"),
                    format!("set `{key}` to at least {minimum}, or remove it to use the default"),
                );
            }
        }
        if storage.commit_shards > 256 {
            self.error(
                "storage.commit_shards",
                format!(
                    "`storage.commit_shards` = {} is more than 256",
                    storage.commit_shards
                ),
                "use 0 (one per core) or a number up to 256".into(),
            );
        }
        if storage.max_replay_bytes < storage.segment_bytes {
            self.warn(
                "storage.max_replay_bytes",
                format!(
                    "`storage.max_replay_bytes` = {} is below `storage.segment_bytes` = {}: \
                     a replay after a crash can reach a whole segment",
                    storage.max_replay_bytes, storage.segment_bytes
                ),
                "raise max_replay_bytes or lower segment_bytes".into(),
            );
        }
        if !storage.mode.uses_data_dir() && dir_set {
            let (message, hint) = if storage.mode == StorageMode::Postgres {
                (
                    "`storage.data_dir` is set but storage.mode = \"postgres\" keeps its data in \
                     the database",
                    "remove data_dir",
                )
            } else {
                (
                    "`storage.data_dir` is set but storage.mode = \"memory\" keeps nothing on disk",
                    "choose a durable storage.mode, or remove data_dir",
                )
            };
            self.warn("storage.data_dir", message.into(), hint.into());
        }
        self.retention();
        if storage.mode == StorageMode::Postgres
            && let Err(error) = PostgresOptions::from_config(&storage.postgres)
        {
            self.error(error.key, error.message, error.hint);
        }
    }

    /// `[storage.retention]`: each rule names a distinct path prefix and
    /// keeps at least one whole chunk's worth of bytes.
    fn retention(&mut self) {
        let storage = &self.config.storage;
        let retention = &storage.retention;
        let mut byte_limits = vec![(
            "storage.retention.max_bytes",
            "storage.retention.max_bytes".to_owned(),
            retention.max_bytes,
        )];
        let mut seen = std::collections::BTreeSet::new();
        for (index, rule) in retention.rules.iter().enumerate() {
            let key = "storage.retention.rules";
            let at = format!("{key}[{index}].prefix");
            if !rule.prefix.starts_with('/') {
                self.error(
                    key,
                    format!(
                        "`{at}` = {:?} is not a URL path (it must start with `/`)",
                        rule.prefix
                    ),
                    "write the stream path prefix as in URLs, e.g. \"/v1/stream/chat/\"".into(),
                );
            } else if !seen.insert(rule.prefix.as_str()) {
                self.error(
                    key,
                    format!(
                        "`{at}` = {:?} repeats an earlier rule's prefix",
                        rule.prefix
                    ),
                    "merge the two rules into one".into(),
                );
            }
            byte_limits.push((key, format!("{key}[{index}].max_bytes"), rule.max_bytes));
        }
        for (key, at, max_bytes) in byte_limits {
            if max_bytes > 0 && max_bytes < storage.chunk_bytes {
                self.warn(
                    key,
                    format!(
                        "`{at}` = {max_bytes} is below `storage.chunk_bytes` = {}: retention drops \
                         whole chunks and never the newest, so a stream keeps up to a chunk more",
                        storage.chunk_bytes
                    ),
                    "raise max_bytes or lower storage.chunk_bytes".into(),
                );
            }
        }
    }
}
