//! Layering tests with `figment::Jail` (a temporary working directory and a
//! scoped environment), and the check that `config/default.toml` matches the
//! built-in defaults.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::Jail;

use super::load::{collect_leaves, schema};
use super::source::parse_toml;
use super::*;

const SHIPPED_DEFAULT: &str = include_str!("../../config/default.toml");

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn options(profile: &str) -> ConfigLoadOptions {
    ConfigLoadOptions {
        profile: profile.into(),
        ..ConfigLoadOptions::default()
    }
}

fn messages(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{p} [hint: {}]", p.hint))
        .collect::<Vec<_>>()
        .join("\n")
}

fn clean(jail: &mut Jail) -> figment::Result<()> {
    jail.clear_env();
    jail.create_dir("config")?;
    Ok(())
}

#[test]
fn default_toml_equals_the_built_in_defaults() {
    let parsed: Config = toml::from_str(SHIPPED_DEFAULT).expect("default.toml is valid");
    assert_eq!(parsed, Config::default());
}

#[test]
fn default_toml_lists_every_key() {
    // Keys without a default appear commented out: `# key = example`.
    let uncommented: String = SHIPPED_DEFAULT
        .lines()
        .map(|line| {
            let rest = line.trim_start().strip_prefix("# ").unwrap_or(line);
            let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if is_key { rest } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dict: figment::value::Dict = toml::from_str(&uncommented).expect("valid TOML");
    let (mut listed, mut known) = (Vec::new(), Vec::new());
    collect_leaves(&dict, "", &mut listed);
    collect_leaves(&schema(), "", &mut known);
    let listed: BTreeSet<String> = listed.into_iter().collect();
    let known: BTreeSet<String> = known.into_iter().collect();
    assert_eq!(
        listed.symmetric_difference(&known).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "config/default.toml and the settings tree disagree"
    );
    // And every key line carries a comment.
    for line in SHIPPED_DEFAULT.lines() {
        let rest = line.trim_start().strip_prefix("# ").unwrap_or(line);
        if rest.contains(" = ") && !line.starts_with("# ") {
            assert!(line.contains(" # "), "key without a comment: {line}");
        }
    }
}

#[test]
fn every_layer_in_order() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        // keys[i] is set by layers 0..=i, so layer i must win for it.
        let keys = [
            "server.shutdown_delay_secs",
            "server.drain_timeout_secs",
            "limits.max_read_bytes",
            "limits.max_stream_name_bytes",
            "transport.connection.long_poll_timeout_secs",
        ];
        let file = |layer: usize| -> String {
            let mut text = String::new();
            for key in &keys[layer..] {
                text.push_str(&format!("{key} = {}\n", 100 + layer));
            }
            text
        };
        jail.create_file("config/default.toml", &file(0))?;
        jail.create_file("config/dev.toml", &file(1))?;
        jail.create_file("config/local.toml", &file(2))?;
        jail.create_file("extra.toml", &file(3))?;
        jail.set_env(env_var(keys[4]), 104);
        jail.set_env("DS_OBSERVABILITY__RUST_LOG", "warn");
        jail.set_env("RUST_LOG", "error");
        let loaded = load(&ConfigLoadOptions {
            profile: "dev".into(),
            config_dir: ConfigDir::Default,
            config_file: Some("extra.toml".into()),
        });
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        let config = loaded.config();
        assert_eq!(config.server.shutdown_delay_secs, 100);
        assert_eq!(config.server.drain_timeout_secs, 101);
        assert_eq!(config.limits.max_read_bytes, 102);
        assert_eq!(config.limits.max_stream_name_bytes, 103);
        assert_eq!(config.transport.connection.long_poll_timeout_secs, 104);
        assert_eq!(loaded.source_of(keys[0]), "config/default.toml:1");
        assert_eq!(loaded.source_of(keys[1]), "config/dev.toml:1");
        assert_eq!(loaded.source_of(keys[2]), "config/local.toml:1");
        assert_eq!(loaded.source_of(keys[3]), "extra.toml:1");
        assert_eq!(
            loaded.source_of(keys[4]),
            "env DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS"
        );
        // Built-in profile defaults sit between the built-in defaults and the files.
        assert_eq!(config.server.bind_address, "127.0.0.1:4437");
        assert_eq!(
            loaded.source_of("server.bind_address"),
            "built-in profile dev"
        );
        assert_eq!(
            loaded.source_of("limits.max_memory_bytes"),
            "built-in defaults"
        );
        // RUST_LOG beats DS_OBSERVABILITY__RUST_LOG.
        assert_eq!(config.observability.rust_log, "error");
        assert_eq!(loaded.source_of("observability.rust_log"), "env RUST_LOG");
        assert_eq!(
            loaded.layers(),
            [
                "built-in defaults",
                "built-in profile dev",
                "config/default.toml",
                "config/dev.toml",
                "config/local.toml",
                "extra.toml",
                "env DS_OBSERVABILITY__RUST_LOG",
                "env DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS",
                "env RUST_LOG",
            ]
        );
        Ok(())
    });
}

#[test]
fn built_in_profile_defaults_sit_between_built_in_defaults_and_files() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/default.toml",
            "[server]\nbind_address = \"127.0.0.1:3\"\n",
        )?;
        let loaded = load(&options("dev"));
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        // dev sets both keys; default.toml overrides one of them.
        assert_eq!(loaded.config().server.bind_address, "127.0.0.1:3");
        assert_eq!(
            loaded.source_of("server.bind_address"),
            "config/default.toml:2"
        );
        assert_eq!(loaded.config().observability.rust_log, "debug");
        assert_eq!(
            loaded.source_of("observability.rust_log"),
            "built-in profile dev"
        );
        Ok(())
    });
}

#[test]
fn the_config_dir_can_move_and_must_then_exist() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_dir("etc")?;
        jail.create_file(
            "etc/local.toml",
            "[server]\nbind_address = \"127.0.0.1:9\"\n",
        )?;
        jail.create_file(
            "config/local.toml",
            "[server]\nbind_address = \"127.0.0.1:8\"\n",
        )?;
        let loaded = load(&ConfigLoadOptions {
            config_dir: ConfigDir::Path("etc".into()),
            ..options("default")
        });
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        assert_eq!(loaded.config().server.bind_address, "127.0.0.1:9");

        let loaded = load(&ConfigLoadOptions {
            config_dir: ConfigDir::Path("missing".into()),
            ..options("default")
        });
        assert_eq!(
            loaded.problems().len(),
            1,
            "{}",
            messages(loaded.problems())
        );
        assert!(
            loaded.problems()[0]
                .message
                .contains("config directory missing does not exist")
        );

        // Without an explicit directory, a missing ./config is fine.
        jail.change_dir("etc")?;
        let loaded = load(&options("prod"));
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        Ok(())
    });
}

#[test]
fn the_config_file_must_exist() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        let loaded = load(&ConfigLoadOptions {
            config_file: Some("nope.toml".into()),
            ..options("default")
        });
        let problems = loaded.problems();
        assert_eq!(problems.len(), 1, "{}", messages(problems));
        assert_eq!(problems[0].source.as_deref(), Some("--config"));
        assert!(problems[0].message.contains("nope.toml"), "{}", problems[0]);
        Ok(())
    });
}

#[test]
fn built_in_profiles_work_without_files() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let prod = load(&options("prod"));
        assert!(prod.problems().is_empty(), "{}", messages(prod.problems()));
        let config = prod.config();
        assert_eq!(config.storage.mode, StorageMode::FileDurable);
        assert_eq!(
            config.storage.data_dir.as_deref(),
            Some(Path::new("/var/lib/durable-streams"))
        );
        assert_eq!(config.observability.log_format, LogFormat::Json);
        assert_eq!(config.http.cors_origins, "");
        assert!(
            prod.validate().errors.is_empty(),
            "{}",
            messages(&prod.validate().errors)
        );

        let tls = load(&options("prod-tls"));
        assert_eq!(tls.config().transport.mode, TransportMode::Tls);
        assert_eq!(
            tls.config().transport.http.versions,
            [HttpVersion::Http1, HttpVersion::Http2]
        );
        let mtls = load(&options("prod-mtls"));
        assert_eq!(mtls.config().transport.mode, TransportMode::Mtls);
        let dev = load(&options("dev"));
        assert_eq!(dev.config().observability.rust_log, "debug");
        assert_eq!(load(&options("default")).into_config(), Config::default());
        Ok(())
    });
}

#[test]
fn shipped_profiles_equal_the_built_in_ones_and_validate_once_paths_are_given() {
    for profile in DeploymentProfile::BUILT_IN {
        Jail::expect_with(|jail| {
            jail.clear_env();
            if profile.starts_with("prod-") {
                jail.set_env("DS_TRANSPORT__TLS__CERT_PATH", "tls.crt");
                jail.set_env("DS_TRANSPORT__TLS__KEY_PATH", "tls.key");
            }
            if profile == "prod-mtls" {
                jail.set_env("DS_TRANSPORT__TLS__CLIENT_CA_PATH", "ca.crt");
            }
            let shipped = load(&ConfigLoadOptions {
                config_dir: ConfigDir::Path(shipped_dir()),
                ..options(profile)
            });
            assert!(
                shipped.problems().is_empty(),
                "{profile}: {}",
                messages(shipped.problems())
            );
            let errors = shipped.validate().errors;
            assert!(errors.is_empty(), "{profile}: {}", messages(&errors));
            let built_in = load(&ConfigLoadOptions {
                config_dir: ConfigDir::None,
                ..options(profile)
            });
            assert_eq!(shipped.config(), built_in.config(), "{profile}");
            Ok(())
        });
    }
}

#[test]
fn custom_profiles_need_their_file() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/staging.toml",
            "[server]\nbind_address = \"127.0.0.1:7\"\n",
        )?;
        let staging = load(&options("staging"));
        assert!(
            staging.problems().is_empty(),
            "{}",
            messages(staging.problems())
        );
        assert_eq!(staging.config().server.bind_address, "127.0.0.1:7");
        assert!(!staging.profile().is_production());

        let missing = load(&options("qa"));
        assert_eq!(missing.problems().len(), 1);
        assert!(
            missing.problems()[0]
                .message
                .contains("\"qa\" is not built in")
        );
        assert!(missing.problems()[0].hint.contains("prod-tls"));

        for bad in ["local", "Prod", "-x", "a/b"] {
            assert_eq!(load(&options(bad)).problems().len(), 1, "{bad}");
        }
        Ok(())
    });
}

#[test]
fn environment_lists_are_comma_lists() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("DS_PROXY__ENABLED", "true");
        jail.set_env("DS_PROXY__TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.5");
        jail.set_env("DS_TRANSPORT__HTTP__VERSIONS", "http1");
        jail.set_env("DS_OBSERVABILITY__OTLP__RESOURCE_ATTRIBUTES", "a=1,b=2");
        jail.set_env("DS_TRANSPORT__TLS__MIN_VERSION", "1.3");
        jail.set_env("DS_STORAGE__DATA_DIR", "4437");
        let config = Config::from_env().expect("valid");
        assert_eq!(config.proxy.trusted_proxies, ["10.0.0.0/8", "192.168.1.5"]);
        assert_eq!(config.transport.http.versions, [HttpVersion::Http1]);
        assert_eq!(
            config.observability.otlp.resource_attributes,
            ["a=1", "b=2"]
        );
        assert_eq!(config.transport.tls.min_version, TlsVersion::V1_3);
        assert_eq!(config.storage.data_dir.as_deref(), Some(Path::new("4437")));
        Ok(())
    });
}

#[test]
fn env_overrides_defaults() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("DS_SERVER__BIND_ADDRESS", "127.0.0.1:9");
        jail.set_env("DS_STORAGE__MODE", "durable");
        jail.set_env("DS_STORAGE__DATA_DIR", "data");
        jail.set_env("DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS", "1");
        jail.set_env("DS_HTTP__STREAM_BASE_PATH", "/streams");
        jail.set_env("DS_PROFILE", "ignored-here");
        jail.set_env("DS_CONFIG_DIR", "ignored-here");
        let config = Config::from_env().expect("valid");
        assert_eq!(config.server.bind_address, "127.0.0.1:9");
        assert_eq!(config.storage.mode, StorageMode::FileDurable);
        assert_eq!(config.transport.connection.long_poll_timeout_secs, 1);
        assert_eq!(config.http.stream_base_path, "/streams");
        Ok(())
    });
}

#[test]
fn unknown_keys_name_the_key_and_where_it_came_from() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/local.toml",
            "[server]\nbind_address = \"127.0.0.1:5\"\nbind_adress = \"x\"\n\n[serverr]\nport = 1\n",
        )?;
        jail.set_env("DS_SERVER__PORT", "4437");
        jail.set_env("DS_TRANSPORT__TLS__CERT", "x");
        let loaded = load(&options("default"));
        let problems = loaded.problems();
        assert_eq!(problems.len(), 4, "{}", messages(problems));
        assert_eq!(problems[0].source.as_deref(), Some("config/local.toml:3"));
        assert_eq!(problems[0].message, "unknown key `server.bind_adress`");
        assert_eq!(problems[0].hint, "did you mean `server.bind_address`?");
        assert_eq!(problems[1].source.as_deref(), Some("config/local.toml:5"));
        assert_eq!(problems[1].message, "unknown key `serverr`");
        assert_eq!(problems[2].source.as_deref(), Some("env DS_SERVER__PORT"));
        assert_eq!(problems[2].message, "unknown key `server.port`");
        assert_eq!(
            problems[3].source.as_deref(),
            Some("env DS_TRANSPORT__TLS__CERT")
        );
        assert_eq!(
            problems[3].hint,
            "did you mean DS_TRANSPORT__TLS__CERT_PATH?"
        );
        // The good key in the same file still applies.
        assert_eq!(loaded.config().server.bind_address, "127.0.0.1:5");
        Ok(())
    });
}

#[test]
fn bad_values_name_key_value_source_and_accepted_values() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/local.toml",
            "[limits]\nmax_read_bytes = \"lots\"\n[transport]\nhttp = 3\n",
        )?;
        jail.set_env("DS_STORAGE__MODE", "disk");
        jail.set_env("DS_PROXY__ENABLED", "yes");
        jail.set_env("DS_SERVER__SHUTDOWN_DELAY_SECS", "-1");
        let loaded = load(&options("default"));
        let problems = loaded.problems();
        assert_eq!(problems.len(), 5, "{}", messages(problems));
        let text = messages(problems);
        assert!(
            text.contains(
                "config/local.toml:2: `limits.max_read_bytes` = \"lots\" is not a whole number"
            ),
            "{text}"
        );
        assert!(
            text.contains("config/local.toml:4: `transport.http` is a table"),
            "{text}"
        );
        assert!(
            text.contains("env DS_PROXY__ENABLED: `proxy.enabled` = \"yes\" is not true or false"),
            "{text}"
        );
        assert!(
            text.contains("env DS_SERVER__SHUTDOWN_DELAY_SECS: `server.shutdown_delay_secs` = -1"),
            "{text}"
        );
        let mode = problems
            .iter()
            .find(|p| p.key.as_deref() == Some("storage.mode"))
            .expect("storage.mode problem");
        assert_eq!(mode.source.as_deref(), Some("env DS_STORAGE__MODE"));
        assert!(mode.message.contains("\"disk\""), "{mode}");
        assert!(
            mode.hint.contains("memory") && mode.hint.contains("file-durable"),
            "{}",
            mode.hint
        );
        Ok(())
    });
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/default.toml",
            "[server]\nbind_address = 0.0.0.0:1\n",
        )?;
        let loaded = load(&options("default"));
        let problems = loaded.problems();
        assert_eq!(problems.len(), 1, "{}", messages(problems));
        let source = problems[0].source.as_deref().unwrap_or_default();
        assert!(source.starts_with("config/default.toml:2:"), "{source}");
        assert!(problems[0].message.contains("line 2"), "{}", problems[0]);
        Ok(())
    });
}

#[test]
fn load_and_validation_problems_are_reported_together() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("DS_SERVER__PORT", "1");
        jail.set_env("DS_TRANSPORT__MODE", "tls");
        jail.set_env("DS_PROXY__ENABLED", "true");
        let error = Config::from_env().expect_err("three problems");
        assert_eq!(error.problems().len(), 3, "{error}");
        let line = error.to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.contains("3 problems: (1) env DS_SERVER__PORT"),
            "{line}"
        );
        Ok(())
    });
}

#[test]
fn every_shipped_file_parses_without_unknown_keys() {
    for entry in std::fs::read_dir(shipped_dir()).expect("config dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let (dict, origin) = parse_toml(&path, &text).expect("valid TOML");
        let mut leaves = Vec::new();
        collect_leaves(&dict, "", &mut leaves);
        let mut known = Vec::new();
        collect_leaves(&schema(), "", &mut known);
        for leaf in leaves {
            assert!(
                known.contains(&leaf),
                "{}: unknown key {leaf}",
                origin.describe(&leaf)
            );
        }
    }
}

mod rules;
