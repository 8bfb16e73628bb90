//! One test per startup failure class: exit code, phase and the one line.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::helpers::{pem, permissions_are_bypassed, run, write};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn toml_syntax_error_shows_file_and_line() {
    let dir = temp();
    write(
        dir.path(),
        "config/local.toml",
        "[server]\nbind_address = \"127.0.0.1:1\"\nshutdown_delay_secs = = 3\n",
    );
    let run = run(dir.path(), &[], &[]);
    let line = run.failed("load_config", 3);
    assert!(line.contains("config/local.toml:3:"), "{line}");
    assert!(line.contains("TOML syntax error at line 3"), "{line}");
}

#[test]
fn unknown_keys_name_the_key_and_its_source_all_at_once() {
    let dir = temp();
    write(
        dir.path(),
        "config/default.toml",
        "[server]\nbind_adress = \"0.0.0.0:1\"\n",
    );
    let run = run(dir.path(), &[], &[("DS_LIMITS__MAX_READ_BYTE", "1")]);
    let line = run.failed("load_config", 3);
    assert!(line.contains("2 problems"), "{line}");
    assert!(
        line.contains("config/default.toml:2: unknown key `server.bind_adress`"),
        "{line}"
    );
    assert!(
        line.contains("did you mean `server.bind_address`?"),
        "{line}"
    );
    assert!(
        line.contains("env DS_LIMITS__MAX_READ_BYTE: unknown key `limits.max_read_byte`"),
        "{line}"
    );
    assert!(
        line.contains("did you mean DS_LIMITS__MAX_READ_BYTES?"),
        "{line}"
    );
}

#[test]
fn bad_env_values_name_key_value_variable_and_accepted_values() {
    let dir = temp();
    let run = run(dir.path(), &[], &[("DS_LIMITS__MAX_READ_BYTES", "lots")]);
    let line = run.failed("load_config", 3);
    assert!(
        line.contains("env DS_LIMITS__MAX_READ_BYTES: `limits.max_read_bytes` = \"lots\""),
        "{line}"
    );
    assert!(line.contains("a whole number"), "{line}");

    let run = crate::helpers::run(dir.path(), &[], &[("DS_TRANSPORT__MODE", "https")]);
    let line = run.failed("load_config", 3);
    assert!(line.contains("`transport.mode` = \"https\""), "{line}");
    assert!(line.contains("hint: use one of: http, tls, mtls"), "{line}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let dir = temp();
    let run = run(dir.path(), &["--config", "missing.toml"], &[]);
    let line = run.failed("load_config", 3);
    assert!(line.contains("missing.toml, does not exist"), "{line}");

    let run = crate::helpers::run(dir.path(), &["--config-dir", "nowhere"], &[]);
    let line = run.failed("load_config", 3);
    assert!(
        line.contains("config directory nowhere does not exist"),
        "{line}"
    );
}

#[test]
fn a_port_in_use_fails_in_bind_listener() {
    let dir = temp();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let run = run(dir.path(), &[], &[("DS_SERVER__BIND_ADDRESS", &address)]);
    let line = run.failed("bind_listener", 8);
    assert!(
        line.contains(&format!(
            "cannot listen on {address}: the address is already in use"
        )),
        "{line}"
    );
    assert!(line.contains("DS_SERVER__BIND_ADDRESS"), "{line}");
}

#[test]
fn an_unwritable_data_dir_fails_in_open_storage() {
    let dir = temp();
    write(dir.path(), "file", "not a directory");
    let data_dir = dir.path().join("file/data");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let env = [
        ("DS_STORAGE__MODE", "file-durable"),
        ("DS_STORAGE__DATA_DIR", data_dir),
    ];
    let run = run(dir.path(), &[], &env);
    let line = run.failed("open_storage", 6);
    assert!(line.contains("storage.data_dir"), "{line}");
    assert!(line.contains("cannot be created"), "{line}");
    assert!(line.contains("DS_STORAGE__DATA_DIR"), "{line}");

    // A read-only directory, where permissions apply (not as root).
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    if permissions_are_bypassed(&locked) {
        eprintln!("running as root: the permission variant is covered by the path variant");
        return;
    }
    let locked = locked.to_str().expect("utf-8 path");
    let env = [
        ("DS_STORAGE__MODE", "acid"),
        ("DS_STORAGE__DATA_DIR", locked),
    ];
    let run = crate::helpers::run(dir.path(), &[], &env);
    let line = run.failed("open_storage", 6);
    assert!(line.contains("is not writable"), "{line}");
    assert!(line.contains("write access"), "{line}");
}

#[test]
fn tls_mode_without_a_certificate_fails_validation() {
    let dir = temp();
    let run = run(dir.path(), &[], &[("DS_TRANSPORT__MODE", "tls")]);
    let line = run.failed("validate_config", 4);
    assert!(
        line.contains(
            "env DS_TRANSPORT__MODE: `transport.mode` = \"tls\" needs transport.tls.cert_path \
             and transport.tls.key_path, which are not set"
        ),
        "{line}"
    );
    assert!(
        line.contains("set DS_TRANSPORT__TLS__CERT_PATH and DS_TRANSPORT__TLS__KEY_PATH"),
        "{line}"
    );
}

#[test]
fn an_otlp_endpoint_variable_that_is_no_url_fails_in_init_telemetry() {
    let dir = temp();
    let run = run(
        dir.path(),
        &[],
        &[
            ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url"),
        ],
    );
    let line = run.failed("init_telemetry", 5);
    assert!(
        line.contains(
            "OTEL_EXPORTER_OTLP_ENDPOINT = \"not-a-url\" is not an http:// or https:// URL"
        ),
        "{line}"
    );
}

#[test]
fn an_unreadable_key_fails_in_load_tls() {
    let dir = temp();
    write(dir.path(), "tls/tls.crt", &pem("CERTIFICATE"));
    std::fs::create_dir(dir.path().join("tls/key-dir")).expect("mkdir");
    let env = [
        ("DS_TRANSPORT__MODE", "tls"),
        ("DS_TRANSPORT__TLS__CERT_PATH", "tls/tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/key-dir"),
    ];
    let run = run(dir.path(), &[], &env);
    let line = run.failed("load_tls", 7);
    assert!(
        line.contains("`transport.tls.key_path` = \"tls/key-dir\" cannot be read"),
        "{line}"
    );
    assert!(line.contains("DS_TRANSPORT__TLS__KEY_PATH"), "{line}");

    // A key file that holds a certificate instead.
    write(dir.path(), "tls/wrong.key", &pem("CERTIFICATE"));
    let env = [
        env[0],
        env[1],
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/wrong.key"),
    ];
    let line_run = crate::helpers::run(dir.path(), &[], &env);
    let line = line_run.failed("load_tls", 7);
    assert!(
        line.contains(
            "does not hold a PEM private key (-----BEGIN PRIVATE KEY-----) (found: CERTIFICATE)"
        ),
        "{line}"
    );

    // A key file the server's user may not read (not as root).
    write(dir.path(), "tls/tls.key", &pem("PRIVATE KEY"));
    let key = dir.path().join("tls/tls.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    if std::fs::read(&key).is_ok() {
        eprintln!("running as root: the permission variant is covered by the directory variant");
        return;
    }
    let env = [
        env[0],
        env[1],
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/tls.key"),
    ];
    let run = crate::helpers::run(dir.path(), &[], &env);
    let line = run.failed("load_tls", 7);
    assert!(line.contains("Permission denied"), "{line}");
}

#[test]
fn mtls_without_a_client_ca_fails_validation() {
    let dir = temp();
    let env = [
        ("DS_TRANSPORT__MODE", "mtls"),
        ("DS_TRANSPORT__TLS__CERT_PATH", "tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls.key"),
    ];
    let run = run(dir.path(), &[], &env);
    let line = run.failed("validate_config", 4);
    assert!(
        line.contains("needs transport.tls.client_ca_path"),
        "{line}"
    );
    assert!(line.contains("DS_TRANSPORT__TLS__CLIENT_CA_PATH"), "{line}");
}

#[test]
fn pem_blocks_that_do_not_parse_fail_in_load_tls() {
    let dir = temp();
    write(dir.path(), "tls/tls.crt", &pem("CERTIFICATE"));
    write(dir.path(), "tls/tls.key", &pem("PRIVATE KEY"));
    let env = [
        ("DS_TRANSPORT__MODE", "tls"),
        ("DS_TRANSPORT__TLS__CERT_PATH", "tls/tls.crt"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "tls/tls.key"),
    ];
    for args in [&["check-config"][..], &[][..]] {
        let run = run(dir.path(), args, &env);
        let line = run.failed("load_tls", 7);
        assert!(
            line.contains("`transport.tls.cert_path` = \"tls/tls.crt\" holds"),
            "{line}"
        );
        assert!(line.contains("does not parse"), "{line}");
    }
}

#[test]
fn prod_tls_alone_says_what_is_missing_and_how_to_provide_it() {
    let dir = temp();
    let run = run(dir.path(), &["--profile", "prod-tls"], &[]);
    let line = run.failed("validate_config", 4);
    assert_eq!(
        line,
        "startup failed in validate_config: built-in profile prod-tls: `transport.mode` = \
         \"tls\" needs transport.tls.cert_path and transport.tls.key_path, which are not set; \
         hint: set DS_TRANSPORT__TLS__CERT_PATH and DS_TRANSPORT__TLS__KEY_PATH to PEM files, \
         or cert_path and key_path under [transport.tls] in config/local.toml or a --config file"
    );
}

#[test]
fn an_unknown_profile_is_an_error() {
    let dir = temp();
    let run = run(dir.path(), &[], &[("DS_PROFILE", "staging")]);
    let line = run.failed("load_config", 3);
    assert!(
        line.contains("profile \"staging\" is not built in"),
        "{line}"
    );
    assert!(
        line.contains("default, dev, prod, prod-tls, prod-mtls"),
        "{line}"
    );
}

#[test]
fn a_bad_webhook_signing_key_fails_in_load_tls() {
    let dir = temp();
    write(dir.path(), "webhook/signing-key.pem", &pem("CERTIFICATE"));
    let env = [
        ("DS_SUBSCRIPTIONS__ENABLED", "true"),
        (
            "DS_SUBSCRIPTIONS__SIGNING_KEY_PATH",
            "webhook/signing-key.pem",
        ),
    ];
    let run = run(dir.path(), &[], &env);
    let line = run.failed("load_tls", 7);
    assert!(
        line.contains("webhook signing key webhook/signing-key.pem"),
        "{line}"
    );
    assert!(line.contains("subscriptions.signing_key_path"), "{line}");

    let env = [
        env[0],
        ("DS_SUBSCRIPTIONS__SIGNING_KEY_PATH", "webhook/missing.pem"),
    ];
    let run = crate::helpers::run(dir.path(), &[], &env);
    let line = run.failed("load_tls", 7);
    assert!(line.contains("cannot read the key file"), "{line}");
}
