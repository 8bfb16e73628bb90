//! The postgres mode's TLS through the binary: `sslmode` and the
//! certificates in `storage.postgres.url` are honoured, as the server's
//! `pg_hba.conf` proves (it refuses the roles used here without TLS, or
//! without a client certificate).

use crate::common::postgres;
use crate::helpers::run;

/// Runs `import` of an empty export into `url`.
fn import(dir: &std::path::Path, url: &str) -> crate::helpers::Run {
    let input = dir.join("empty.jsonl");
    std::fs::write(
        &input,
        "{\"header\":{\"format\":\"durable-streams-export\",\"version\":1}}\n{\"summary\":{\"streams\":0}}\n",
    )
    .expect("write export");
    run(
        dir,
        &["import", input.to_str().expect("utf8")],
        &[
            ("DS_STORAGE__MODE", "postgres"),
            ("DS_STORAGE__POSTGRES__URL", url),
            ("DS_STORAGE__POSTGRES__CONNECT_TIMEOUT_MS", "3000"),
        ],
    )
}

#[test]
fn sslmode_and_certificates_in_the_url_are_honoured() {
    let tls = postgres::tls();
    let db = postgres::database_name();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = tls.ca_path.display().to_string();
    let port = tls.port;
    let url = |user: &str, host: &str, query: &str| {
        format!("postgres://{user}@{host}:{port}/{db}?{query}")
    };

    // Verified TLS: the CA and the host name match.
    let ok = import(
        dir.path(),
        &url(
            "tls_only",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    );
    assert_eq!(ok.code, Some(0), "{ok:#?}");
    // Encrypted without verification, as libpq's require.
    let ok = import(dir.path(), &url("tls_only", "127.0.0.1", "sslmode=require"));
    assert_eq!(ok.code, Some(0), "{ok:#?}");
    // Without TLS the server refuses this role.
    let refused = import(dir.path(), &url("tls_only", "127.0.0.1", "sslmode=disable"));
    let line = refused.failed("open_storage", 6);
    assert!(line.contains("pg_hba.conf"), "{line}");

    // Another CA: verification fails.
    let other = crate::common::pki::Ca::new("some other CA");
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, &other.pem).expect("write CA");
    let refused = import(
        dir.path(),
        &url(
            "tls_only",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
        ),
    );
    let line = refused.failed("open_storage", 6);
    assert!(line.to_lowercase().contains("certificate"), "{line}");

    // A client certificate, as `cert` authentication requires.
    let client = tls.ca.client("cert_user", &[]);
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, &client.cert_pem).expect("write cert");
    std::fs::write(&key, &client.key_pem).expect("write key");
    let with_cert = format!(
        "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        cert.display(),
        key.display()
    );
    let ok = import(dir.path(), &url("cert_user", "localhost", &with_cert));
    assert_eq!(ok.code, Some(0), "{ok:#?}");
    let refused = import(
        dir.path(),
        &url(
            "cert_user",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    );
    let line = refused.failed("open_storage", 6);
    assert!(
        line.contains("certificate") || line.contains("cert_user"),
        "{line}"
    );
}
