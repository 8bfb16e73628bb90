//! Real PostgreSQL for the unit tests: clusters started with
//! `scripts/pg-test-cluster.sh` (initdb + pg_ctl on a free loopback port,
//! as an unprivileged user when the tests run as root).
//!
//! One [`Cluster::shared`] serves the whole test binary, each test in a
//! database of its own ([`Cluster::database`]); a watcher started with it
//! stops it and removes its directory once the test process exits. Tests
//! that stop or restart the server take a [`Cluster::dedicated`] one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::storage::Storage;
use crate::storage::config::PostgresConfig;

use super::PostgresOptions;

/// A running test cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    /// `postgres://ds@127.0.0.1:<port>/postgres`, the superuser's URL.
    url: String,
    /// Removes the directory of a dedicated cluster when dropped.
    _temp: Option<tempfile::TempDir>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-cluster.sh")
}

/// Runs the script; its last line of output is the URL.
fn run_script(command: &str, dir: &Path, server_options: &str) -> Result<String, String> {
    let output = Command::new("bash")
        .arg(script())
        .arg(command)
        .arg(dir)
        .env("PG_TEST_WATCH_PID", std::process::id().to_string())
        .env("PG_TEST_SERVER_OPTS", server_options)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if !output.status.success() {
        return Err(format!(
            "pg-test-cluster.sh {command} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().last().unwrap_or_default().trim().to_owned())
}

/// A directory the cluster's user can reach (its parent searchable).
fn cluster_dir() -> tempfile::TempDir {
    let temp = tempfile::Builder::new()
        .prefix("ds-pgtest-")
        .tempdir()
        .expect("temp dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod temp dir");
    }
    temp
}

/// Speed over durability for the shared cluster: no test depends on
/// surviving an operating-system crash.
const SHARED_OPTIONS: &str = "-c fsync=off -c full_page_writes=off";

impl Cluster {
    /// The cluster shared by this test binary, started on first use.
    ///
    /// # Panics
    /// When no cluster can be started (PostgreSQL not installed).
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            // The watcher removes the directory when this process exits.
            let dir = cluster_dir().keep().join("cluster");
            let url = run_script("start", &dir, SHARED_OPTIONS)
                .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
            Cluster {
                dir,
                url,
                _temp: None,
            }
        })
    }

    /// A cluster of its own (for tests that stop or restart it), with
    /// `server_options` (`-c name=value …`); stopped and removed on drop.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn dedicated(server_options: &str) -> Cluster {
        let temp = cluster_dir();
        let dir = temp.path().join("cluster");
        let url = run_script("start", &dir, server_options)
            .unwrap_or_else(|e| panic!("cannot start a test PostgreSQL: {e}"));
        Cluster {
            dir,
            url,
            _temp: Some(temp),
        }
    }

    /// The cluster's directory (its data, certificates, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The superuser's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn stop(&self) {
        run_script("stop", &self.dir, "").expect("stop the test PostgreSQL");
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self, server_options: &str) {
        run_script("restart", &self.dir, server_options).expect("restart the test PostgreSQL");
    }

    /// A fresh, empty database.
    pub async fn database(&self) -> TestDb {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "ds_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.admin().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .expect("create a test database");
        let base = self
            .url
            .rsplit_once('/')
            .map_or(&*self.url, |(base, _)| base);
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A connection as the superuser to the `postgres` database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self._temp.is_some() {
            let _ = run_script("stop", &self.dir, "");
        }
    }
}

/// One test's database.
#[derive(Clone, Debug)]
pub struct TestDb {
    /// Its URL (no password; the test cluster trusts loopback).
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// `[storage.postgres]` for it.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig {
            url: Some(format!("{}?sslmode=disable", self.url)),
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            ..PostgresConfig::default()
        }
    }

    /// The backend's options for it.
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions::from_config(&self.config()).expect("valid test options")
    }
}

/// A storage-suite harness: a fresh database on the shared cluster, each
/// open a new [`super::PostgresStorage`] on it, handed out through `wrap`.
async fn harness_wrapped(
    wrap: fn(Arc<dyn Storage>) -> Arc<dyn Storage>,
) -> crate::storage::suite::Harness {
    let db = Cluster::shared().database().await;
    crate::storage::suite::Harness::opened_by(
        move |_| {
            let mut options = db.options();
            options.chunk_bytes = crate::storage::suite::SUITE_CHUNK_BYTES;
            Box::pin(async move {
                let store = super::PostgresStorage::open(options).await.expect("open");
                wrap(Arc::new(store))
            })
        },
        true,
    )
}

/// The storage suite's harness for this backend.
pub async fn suite_harness() -> crate::storage::suite::Harness {
    harness_wrapped(|store| store).await
}

/// [`suite_harness`] through the metrics wrapper.
pub async fn suite_harness_instrumented() -> crate::storage::suite::Harness {
    harness_wrapped(|store| Arc::new(crate::storage::InstrumentedStorage::new(store))).await
}
