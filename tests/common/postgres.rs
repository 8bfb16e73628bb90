//! A real PostgreSQL for the integration tests: one cluster per test
//! binary, started with `scripts/pg-test-cluster.sh` (initdb + pg_ctl on a
//! free loopback port, as an unprivileged user when run as root) and
//! stopped by the script's watcher when the test process exits; a fresh
//! database per test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The shared cluster: its directory and superuser URL.
struct Cluster {
    dir: PathBuf,
    url: String,
}

/// The cluster's superuser URL (`postgres://ds@127.0.0.1:<port>/postgres`).
fn cluster_url() -> &'static str {
    &cluster().url
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let temp = tempfile::Builder::new()
            .prefix("ds-pgtest-")
            .tempdir()
            .expect("temp dir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod");
        }
        // The script's watcher removes it when this process exits.
        let dir = temp.keep().join("cluster");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-cluster.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .env("PG_TEST_WATCH_PID", std::process::id().to_string())
            .env("PG_TEST_SERVER_OPTS", "-c fsync=off")
            .output()
            .expect("run pg-test-cluster.sh");
        assert!(
            output.status.success(),
            "cannot start the test PostgreSQL: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Cluster { dir, url }
    })
}

/// Runs `sql` as the superuser on the `postgres` database.
fn admin(sql: &str) {
    on_admin_session(async |client| {
        client.batch_execute(sql).await.expect("admin statement");
    });
}

/// Runs `work` on a new session of the cluster's administrator.
fn on_admin_session<T>(work: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(cluster_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(connection);
        work(&client).await
    })
}

/// The first column of the first row `sql` answers, as text, on a new
/// session.
fn admin_value(sql: &str) -> String {
    on_admin_session(async |client| {
        let row = client.query_one(sql, &[]).await.expect("admin query");
        row.get::<_, String>(0)
    })
}

/// The URL of a fresh, empty database (TLS disabled: loopback only).
pub fn database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = cluster_url();
    let name = format!(
        "ds_it_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    admin(&format!("CREATE DATABASE {name} TEMPLATE template0"));
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{name}?sslmode=disable")
}

/// TLS on the shared cluster, switched on once: the server's certificate
/// and the CA that signed it, and two roles whose `pg_hba.conf` lines make
/// the server prove what the client did: `tls_only` is refused without
/// TLS, `cert_user` must present a client certificate (CN `cert_user`).
pub struct Tls {
    /// The CA, as a PEM file.
    pub ca_path: PathBuf,
    /// The CA itself, to issue client certificates.
    pub ca: super::pki::Ca,
    /// The cluster's port.
    pub port: u16,
}

/// Switches TLS on (once) and describes it.
pub fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let cluster = cluster();
        let ca = super::pki::Ca::new("durable-streams test database CA");
        let server = ca.server(super::pki::fresh_serial());
        let files = [
            ("server.crt", server.cert_pem.as_str()),
            ("server.key", server.key_pem.as_str()),
            ("ca.crt", ca.pem.as_str()),
        ];
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            // The server's user must own its key, readable by it alone.
            let owner = std::fs::metadata(&cluster.dir).expect("cluster dir");
            for (name, contents) in files {
                let path = cluster.dir.join(name);
                std::fs::write(&path, contents).expect("write TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))
                    .expect("chown");
            }
        }
        let hba = cluster.dir.join("data/pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl all tls_only 127.0.0.1/32 trust\n\
                 host all tls_only 127.0.0.1/32 reject\n\
                 hostssl all cert_user 127.0.0.1/32 cert\n\
                 host all cert_user 127.0.0.1/32 reject\n{rules}"
            ),
        )
        .expect("write pg_hba.conf");
        let dir = cluster.dir.display();
        // One at a time: ALTER SYSTEM refuses to run in a transaction block.
        for statement in [
            "CREATE ROLE tls_only LOGIN SUPERUSER".to_owned(),
            "CREATE ROLE cert_user LOGIN SUPERUSER".to_owned(),
            format!("ALTER SYSTEM SET ssl_cert_file = '{dir}/server.crt'"),
            format!("ALTER SYSTEM SET ssl_key_file = '{dir}/server.key'"),
            format!("ALTER SYSTEM SET ssl_ca_file = '{dir}/ca.crt'"),
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin(&statement);
        }
        // The reload is asynchronous: wait until a new session sees it
        // (the postmaster sets up TLS before it starts that session).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while admin_value("SHOW ssl") != "on" {
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL never turned TLS on"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let port = cluster_url()
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .expect("port");
        Tls {
            ca_path: cluster.dir.join("ca.crt"),
            ca,
            port,
        }
    })
}

/// A fresh database's name, for URLs of other users.
pub fn database_name() -> String {
    let url = database();
    url.rsplit_once('/')
        .and_then(|(_, rest)| rest.split('?').next())
        .expect("database name")
        .to_owned()
}

fn cluster_script(command: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-cluster.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(command)
        .arg(&cluster().dir)
        .output()
        .expect("run pg-test-cluster.sh");
    assert!(
        output.status.success(),
        "pg-test-cluster.sh {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stops the shared cluster (fast shutdown): every test of the binary
/// loses its database until [`restart`].
pub fn stop() {
    cluster_script("stop");
}

/// Starts the shared cluster again on its port.
pub fn restart() {
    cluster_script("restart");
}
