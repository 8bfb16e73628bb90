//! The database schema and its versioned migrations.
//!
//! Migrations run when a server opens the store, under a session advisory
//! lock, so replicas starting together apply each one exactly once (the
//! others wait, then find nothing to do). `schema_migrations` records what
//! was applied; a database migrated by a newer server refuses to open.
//!
//! # Tables (version 1)
//! - `streams`: one row per stream instance (live or soft-deleted): its
//!   spec (path, content type, TTL/expiry, creation time, fork lineage,
//!   base) and its writer state (tail, closed flag and closing producer,
//!   `Stream-Seq`, status, last access). The path is unique; the check runs
//!   at commit, so one transaction may remove a stream and create another
//!   at its path in either order. `fillfactor` leaves room for the tail
//!   updates to stay on their page (HOT updates).
//! - `producers`: producer state per `(stream, Producer-Id)`.
//! - `records`: one row per stored record, `[start_pos, end_pos)` with its
//!   bytes; JSON streams need the boundaries. Keyed by `(stream, end_pos)`
//!   so a read from an offset is one index range scan.
//! - `metadata`: the key/value area (subscriptions, leases, keys).
//!
//! # Version 2
//! - `streams.head`: where retention left the stream's data starting
//!   (NULL: at `base`, nothing trimmed).
//! - `records.written_ms`: commit time of the record, for age-based
//!   retention (NULL for rows written before).
//!
//! # Version 3
//! - `replica_blocks`: the sequence each opened store takes its block of
//!   stream ids from, so replicas never hand out the same id.

use tokio_postgres::Client;

use super::error::storage_error;
use crate::storage::StorageError;

/// One schema change.
struct Migration {
    version: i32,
    description: &'static str,
    /// SQL with `{schema}` standing for the schema's (validated) name.
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "streams, producers, records, metadata",
        sql: r"
CREATE TABLE {schema}.streams (
    id                 bigint PRIMARY KEY,
    path               text NOT NULL,
    content_type       text NOT NULL,
    ttl_secs           bigint,
    expires_at_ms      bigint,
    created_at_ms      bigint NOT NULL,
    base               bigint NOT NULL,
    fork_source        bigint,
    fork_source_path   text,
    fork_offset        bigint,
    fork_sub_offset    bigint,
    tail               bigint NOT NULL,
    closed             boolean NOT NULL DEFAULT false,
    closed_by_producer text,
    closed_by_epoch    bigint,
    closed_by_seq      bigint,
    stream_seq         text,
    status             text NOT NULL DEFAULT 'live',
    last_access_ms     bigint NOT NULL,
    CONSTRAINT streams_path_unique UNIQUE (path) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT streams_status CHECK (status IN ('live', 'soft_deleted')),
    CONSTRAINT streams_tail CHECK (tail >= base),
    CONSTRAINT streams_fork CHECK ((fork_source IS NULL) = (fork_source_path IS NULL))
) WITH (fillfactor = 70);
CREATE INDEX streams_fork_source ON {schema}.streams (fork_source) WHERE fork_source IS NOT NULL;
CREATE INDEX streams_expires_at ON {schema}.streams (expires_at_ms) WHERE expires_at_ms IS NOT NULL;

CREATE TABLE {schema}.producers (
    stream_id   bigint NOT NULL,
    producer_id text NOT NULL,
    epoch       bigint NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (stream_id, producer_id)
);

CREATE TABLE {schema}.records (
    stream_id bigint NOT NULL,
    start_pos bigint NOT NULL,
    end_pos   bigint NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (stream_id, end_pos),
    CONSTRAINT records_length CHECK (end_pos - start_pos = octet_length(data))
);

CREATE TABLE {schema}.metadata (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);
",
    },
    Migration {
        version: 2,
        description: "stream heads and record write times, for retention",
        // The default is set after the column is added, so existing rows
        // keep NULL instead of the table being rewritten.
        sql: r"
ALTER TABLE {schema}.streams ADD COLUMN head bigint;
ALTER TABLE {schema}.records ADD COLUMN written_ms bigint;
ALTER TABLE {schema}.records
    ALTER COLUMN written_ms SET DEFAULT (extract(epoch FROM now()) * 1000)::bigint;
",
    },
    Migration {
        version: 3,
        description: "blocks of stream ids, one per opened store",
        sql: r"
CREATE SEQUENCE {schema}.replica_blocks AS bigint START 1;
",
    },
];

/// The newest schema version this server knows.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock key serialising migrations of `schema`: a fixed
/// prefix and the schema name, hashed, so stores in other schemas of the
/// same database migrate independently.
fn lock_key(schema: &str) -> i64 {
    let digest = crc32c::crc32c(format!("durable-streams-migrate:{schema}").as_bytes());
    0x6473_0000_0000_0000 | i64::from(digest)
}

/// Brings `schema` to [`LATEST_VERSION`], creating it when missing.
///
/// # Errors
/// When the database is unreachable, a migration fails (nothing of it is
/// applied), or the schema is newer than this server.
pub async fn migrate(client: &Client, schema: &str) -> Result<(), StorageError> {
    let key = lock_key(schema);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(|e| storage_error("taking the migration lock", &e))?;
    let outcome = migrate_locked(client, schema).await;
    // Released on disconnect too, if this fails.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .map_err(|e| storage_error("releasing the migration lock", &e));
    outcome.and(unlocked.map(drop))
}

async fn migrate_locked(client: &Client, schema: &str) -> Result<(), StorageError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(|e| storage_error("looking up the schema", &e))?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| storage_error(&format!("creating schema {schema}"), &e))?;
    }
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version     integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await
        .map_err(|e| storage_error("creating the migrations table", &e))?;
    let current = current_version(client, schema).await?;
    if current > LATEST_VERSION {
        return Err(newer_schema(schema, current));
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let sql = format!(
            "BEGIN;\n{}\nINSERT INTO {schema}.schema_migrations (version, description) \
             VALUES ({}, '{}');\nCOMMIT;",
            migration.sql.replace("{schema}", schema),
            migration.version,
            migration.description
        );
        if let Err(error) = client.batch_execute(&sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(storage_error(
                &format!(
                    "applying migration {} ({}) to schema {schema}",
                    migration.version, migration.description
                ),
                &error,
            ));
        }
        tracing::info!(
            schema,
            version = migration.version,
            description = migration.description,
            "database migration applied"
        );
    }
    Ok(())
}

/// The version `schema` is at (0 before the first migration).
async fn current_version(client: &Client, schema: &str) -> Result<i32, StorageError> {
    let row = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .map_err(|e| storage_error("reading the schema version", &e))?;
    row.try_get(0)
        .map_err(|e| storage_error("reading the schema version", &e))
}

fn newer_schema(schema: &str, found: i32) -> StorageError {
    StorageError::Unavailable(format!(
        "database schema {schema} is at version {found}, newer than this server knows \
         ({LATEST_VERSION}); it was migrated by a newer release: run that release (or newer), \
         or restore a backup taken before the upgrade"
    ))
}

/// Checks, without changing anything, that `schema` is at exactly the
/// version this server knows (for read-only opens).
///
/// # Errors
/// When the schema is missing, older or newer.
pub async fn check_version(client: &Client, schema: &str) -> Result<(), StorageError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'schema_migrations'",
            &[&schema],
        )
        .await
        .map_err(|e| storage_error("looking up the schema", &e))?
        .is_some();
    if !exists {
        return Err(StorageError::Unavailable(format!(
            "the database has no durable-streams schema {schema}: start a server on it once, \
             or check storage.postgres.url and storage.postgres.schema"
        )));
    }
    match current_version(client, schema).await? {
        version if version == LATEST_VERSION => Ok(()),
        version if version > LATEST_VERSION => Err(newer_schema(schema, version)),
        version => Err(StorageError::Unavailable(format!(
            "database schema {schema} is at version {version}, older than this server \
             ({LATEST_VERSION}): start a server on it once to migrate it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_by_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1);
            assert!(!migration.description.contains('\''));
        }
    }

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("a"), lock_key("a"));
    }
}
