//! `--version`, `--help`, `check-config`, `print-config` and usage errors.

use crate::helpers::{run, write};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn version_names_the_commit() {
    let dir = temp();
    let run = run(dir.path(), &["--version"], &[]);
    assert_eq!(run.code, Some(0));
    let version = run.stdout.trim();
    let prefix = format!(
        "durable-streams-server {} (commit ",
        env!("CARGO_PKG_VERSION")
    );
    assert!(version.starts_with(&prefix), "{version}");
    let commit = version[prefix.len()..].trim_end_matches(')');
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
}

#[test]
fn help_explains_commands_layers_and_exit_codes() {
    let dir = temp();
    let run = run(dir.path(), &["--help"], &[]);
    assert_eq!(run.code, Some(0));
    for needle in [
        "serve",
        "check-config",
        "print-config",
        "--profile",
        "[env: DS_PROFILE=]",
        "--config-dir",
        "[env: DS_CONFIG_DIR=]",
        "DS_TRANSPORT__TLS__CERT_PATH",
        "Exit codes: 0 ok, 2 bad command line, 3 load_config",
    ] {
        assert!(
            run.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    let sub = crate::helpers::run(dir.path(), &["print-config", "--help"], &[]);
    assert!(sub.stdout.contains("--sources"), "{}", sub.stdout);
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = temp();
    let run = run(dir.path(), &["--no-such-flag"], &[]);
    assert_eq!(run.code, Some(2));
    let run = crate::helpers::run(dir.path(), &["import"], &[]);
    assert_eq!(run.code, Some(2), "import needs a file");
    let run = crate::helpers::run(dir.path(), &["import", "x", "--on-conflict", "maybe"], &[]);
    assert_eq!(run.code, Some(2), "unknown conflict policy");
}

#[test]
fn check_config_passes_or_exits_with_the_phase_code() {
    let dir = temp();
    let ok = run(dir.path(), &["check-config", "--profile", "dev"], &[]);
    assert_eq!(ok.code, Some(0), "{ok:#?}");
    assert_eq!(
        ok.stdout.trim(),
        "configuration ok: profile dev; layers: built-in defaults, built-in profile dev"
    );
    assert!(ok.stderr.is_empty(), "{ok:#?}");

    let warned = crate::helpers::run(
        dir.path(),
        &["check-config"],
        &[("DS_PROXY__TRUSTED_PROXIES", "10.0.0.0/8")],
    );
    assert_eq!(warned.code, Some(0), "{warned:#?}");
    assert!(warned.stderr.starts_with("warning: "), "{warned:#?}");

    let bad = crate::helpers::run(
        dir.path(),
        &["check-config"],
        &[("DS_PROXY__ENABLED", "true")],
    );
    bad.failed("validate_config", 4);
    let bad = crate::helpers::run(
        dir.path(),
        &["check-config"],
        &[("DS_PROXY__ENABLE", "true")],
    );
    bad.failed("load_config", 3);
}

#[test]
fn print_config_output_is_a_config_file_that_loads_back() {
    let dir = temp();
    let env = [("DS_SERVER__BIND_ADDRESS", "127.0.0.1:7777")];
    let first = run(dir.path(), &["print-config", "--profile", "prod"], &env);
    assert_eq!(first.code, Some(0), "{first:#?}");
    assert!(
        first.stdout.contains("mode = \"file-durable\""),
        "{}",
        first.stdout
    );
    write(dir.path(), "effective.toml", &first.stdout);
    let second = crate::helpers::run(
        dir.path(),
        &["print-config", "--config", "effective.toml"],
        &[],
    );
    assert_eq!(second.code, Some(0), "{second:#?}");
    let body = |text: &str| text.lines().skip(3).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&first.stdout), body(&second.stdout));
}

#[test]
fn print_config_sources_name_the_layer_of_each_value() {
    let dir = temp();
    write(
        dir.path(),
        "config/local.toml",
        "# local overrides\n[server]\nbind_address = \"127.0.0.1:6000\"\n",
    );
    let run = run(
        dir.path(),
        &["print-config", "--sources"],
        &[
            ("DS_PROFILE", "dev"),
            ("DS_HTTP__CORS_ORIGINS", "https://a.example"),
        ],
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    let line_of = |key: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {}", run.stdout))
            .to_owned()
    };
    assert!(line_of("bind_address").ends_with("# config/local.toml:3"));
    assert!(line_of("cors_origins").ends_with("# env DS_HTTP__CORS_ORIGINS"));
    assert!(line_of("rust_log").ends_with("# built-in profile dev"));
    assert!(line_of("max_read_bytes").ends_with("# built-in defaults"));
    assert!(run.stdout.contains("# profile: dev\n"), "{}", run.stdout);
}

#[test]
fn print_config_shows_an_invalid_config_and_then_fails() {
    let dir = temp();
    let run = run(
        dir.path(),
        &["print-config"],
        &[("DS_TRANSPORT__MODE", "mtls")],
    );
    assert!(run.stdout.contains("mode = \"mtls\""), "{}", run.stdout);
    run.failed("validate_config", 4);
}

#[test]
fn the_config_dir_comes_from_the_flag_or_the_environment() {
    let dir = temp();
    write(
        dir.path(),
        "etc/ds/local.toml",
        "[server]\nbind_address = \"127.0.0.1:6001\"\n",
    );
    for (args, env) in [
        (vec!["print-config", "--config-dir", "etc/ds"], vec![]),
        (vec!["print-config"], vec![("DS_CONFIG_DIR", "etc/ds")]),
    ] {
        let run = run(dir.path(), &args, &env);
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(
            run.stdout.contains("bind_address = \"127.0.0.1:6001\""),
            "{}",
            run.stdout
        );
    }
}
