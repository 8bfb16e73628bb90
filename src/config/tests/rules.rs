//! The rules across keys, checked on layered configurations.

use figment::Jail;

use super::*;

fn validate_env(vars: &[(&str, &str)], profile: &str) -> Vec<ConfigProblem> {
    let mut errors = Vec::new();
    Jail::expect_with(|jail| {
        jail.clear_env();
        for (name, value) in vars {
            jail.set_env(name, value);
        }
        let loaded = load(&ConfigLoadOptions {
            config_dir: ConfigDir::None,
            ..options(profile)
        });
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        errors = loaded.validate().errors;
        Ok(())
    });
    errors
}

#[test]
fn tls_needs_cert_and_key_in_one_problem() {
    let errors = validate_env(&[], "prod-tls");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    let error = &errors[0];
    assert_eq!(error.source.as_deref(), Some("built-in profile prod-tls"));
    assert!(
        error
            .message
            .contains("transport.tls.cert_path and transport.tls.key_path"),
        "{error}"
    );
    assert!(
        error
            .hint
            .contains("DS_TRANSPORT__TLS__CERT_PATH and DS_TRANSPORT__TLS__KEY_PATH"),
        "{}",
        error.hint
    );
    let errors = validate_env(
        &[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__CERT_PATH", "c"),
        ],
        "default",
    );
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(
        errors[0]
            .message
            .contains("needs transport.tls.key_path, which is not set")
    );
    assert_eq!(errors[0].source.as_deref(), Some("env DS_TRANSPORT__MODE"));
}

#[test]
fn tls_cross_field_rules() {
    let cert = [
        ("DS_TRANSPORT__TLS__CERT_PATH", "c"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "k"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut vars = cert.to_vec();
        vars.extend_from_slice(extra);
        vars
    };
    let errors = validate_env(&with(&[("DS_TRANSPORT__MODE", "mtls")]), "default");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(
        errors[0].message.contains("client_ca_path"),
        "{}",
        errors[0]
    );

    let errors = validate_env(
        &with(&[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__CLIENT_CA_PATH", "ca"),
        ]),
        "default",
    );
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert_eq!(
        errors[0].key.as_deref(),
        Some("transport.tls.client_ca_path")
    );

    let errors = validate_env(&cert, "default");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(errors[0].message.contains("plain HTTP"), "{}", errors[0]);

    let errors = validate_env(
        &[("DS_TRANSPORT__HTTP__VERSIONS", "http1,http2")],
        "default",
    );
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(
        errors[0].message.contains("http2, which needs TLS"),
        "{}",
        errors[0]
    );

    let errors = validate_env(
        &with(&[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__ALPN_PROTOCOLS", "h2"),
            ("DS_TRANSPORT__TLS__MIN_VERSION", "1.3"),
            ("DS_TRANSPORT__TLS__MAX_VERSION", "1.2"),
        ]),
        "default",
    );
    assert_eq!(errors.len(), 2, "{}", messages(&errors));
}

#[test]
fn production_profiles_refuse_wildcard_cors_unless_allowed() {
    let errors = validate_env(&[("DS_HTTP__CORS_ORIGINS", "*")], "prod");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(
        errors[0]
            .message
            .contains("refused in the production profile prod")
    );
    assert_eq!(
        errors[0].source.as_deref(),
        Some("env DS_HTTP__CORS_ORIGINS")
    );
    let errors = validate_env(
        &[
            ("DS_HTTP__CORS_ORIGINS", "*"),
            ("DS_HTTP__ALLOW_WILDCARD_CORS", "true"),
        ],
        "prod",
    );
    assert!(errors.is_empty(), "{}", messages(&errors));
    assert!(validate_env(&[], "default").is_empty());
    let errors = validate_env(
        &[("DS_HTTP__CORS_ORIGINS", "https://a.example, a.example/")],
        "dev",
    );
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
}

#[test]
fn proxy_rules() {
    let errors = validate_env(&[("DS_PROXY__ENABLED", "true")], "default");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(errors[0].hint.contains("DS_PROXY__TRUSTED_PROXIES"));
    let errors = validate_env(
        &[
            ("DS_PROXY__ENABLED", "true"),
            ("DS_PROXY__TRUSTED_PROXIES", "10.0.0.0/8,nope"),
        ],
        "default",
    );
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(errors[0].message.contains("nope"));
    let errors = validate_env(&[("DS_PROXY__IDENTITY__MODE", "header")], "default");
    assert_eq!(errors.len(), 2, "{}", messages(&errors));
    assert!(
        errors
            .iter()
            .any(|e| e.key.as_deref() == Some("proxy.identity.require_tls")),
        "{}",
        messages(&errors)
    );
    // Over plain HTTP the header is believed only when require_tls is off.
    let errors = validate_env(
        &[
            ("DS_PROXY__ENABLED", "true"),
            ("DS_PROXY__TRUSTED_PROXIES", "10.0.0.0/8"),
            ("DS_PROXY__IDENTITY__MODE", "header"),
            ("DS_PROXY__IDENTITY__REQUIRE_TLS", "false"),
        ],
        "default",
    );
    assert!(errors.is_empty(), "{}", messages(&errors));
}

#[test]
fn other_rules() {
    let errors = validate_env(
        &[
            ("DS_STORAGE__MODE", "acid"),
            ("DS_OBSERVABILITY__RUST_LOG", "info,[bad"),
            ("DS_SERVER__BIND_ADDRESS", "4437"),
            ("DS_LIMITS__MAX_READ_BYTES", "0"),
            ("DS_OBSERVABILITY__OTLP__SAMPLING_RATIO", "2"),
        ],
        "default",
    );
    let keys: Vec<&str> = errors.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "server.bind_address",
            "limits.max_read_bytes",
            "storage.mode",
            "observability.rust_log",
            "observability.otlp.sampling_ratio"
        ],
        "{}",
        messages(&errors)
    );
}

#[test]
fn the_metrics_listener_must_differ_from_the_main_one_unless_both_are_ephemeral() {
    let same = [
        ("DS_SERVER__BIND_ADDRESS", "127.0.0.1:4437"),
        ("DS_OBSERVABILITY__METRICS__BIND_ADDRESS", "127.0.0.1:4437"),
    ];
    let errors = validate_env(&same, "default");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert_eq!(
        errors[0].key.as_deref(),
        Some("observability.metrics.bind_address")
    );
    // Port 0 means "any free port" for each listener: no conflict.
    let ephemeral = [
        ("DS_SERVER__BIND_ADDRESS", "127.0.0.1:0"),
        ("DS_OBSERVABILITY__METRICS__BIND_ADDRESS", "127.0.0.1:0"),
    ];
    let errors = validate_env(&ephemeral, "default");
    assert!(errors.is_empty(), "{}", messages(&errors));
}

#[test]
fn the_metrics_path_may_not_hide_a_probe_or_a_stream() {
    for path in ["/healthz", "/readyz/", "/v1/stream", "/v1/stream/metrics"] {
        let errors = validate_env(&[("DS_OBSERVABILITY__METRICS__PATH", path)], "default");
        assert_eq!(errors.len(), 1, "{path}: {}", messages(&errors));
        assert_eq!(errors[0].key.as_deref(), Some("observability.metrics.path"));
    }
    for path in ["/metrics", "/v1/streams-metrics", "/internal/metrics"] {
        let errors = validate_env(&[("DS_OBSERVABILITY__METRICS__PATH", path)], "default");
        assert!(errors.is_empty(), "{path}: {}", messages(&errors));
    }
}

#[test]
fn an_otlp_endpoint_must_be_an_http_url_with_a_host() {
    for endpoint in ["http://", "http://a b:4317", "otel:4317", "ftp://otel:21"] {
        let errors = validate_env(
            &[
                ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
                ("DS_OBSERVABILITY__OTLP__ENDPOINT", endpoint),
            ],
            "default",
        );
        assert_eq!(errors.len(), 1, "{endpoint}: {}", messages(&errors));
        assert_eq!(
            errors[0].key.as_deref(),
            Some("observability.otlp.endpoint")
        );
    }
}

#[test]
fn auth_rules() {
    let errors = validate_env(&[("DS_AUTH__MODE", "token")], "prod");
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert_eq!(errors[0].key.as_deref(), Some("auth.mode"));
    assert!(
        errors[0].hint.contains("auth.jwks_path"),
        "{}",
        errors[0].hint
    );
    let errors = validate_env(
        &[
            ("DS_AUTH__MODE", "token"),
            ("DS_AUTH__JWKS_PATH", "/etc/jwks.json"),
            ("DS_AUTH__QUERY_PARAM", "access_token"),
        ],
        "prod",
    );
    assert!(errors.is_empty(), "{}", messages(&errors));
    let errors = validate_env(
        &[
            ("DS_AUTH__MODE", "token"),
            ("DS_AUTH__JWKS_URL", "http://idp.example.com/jwks.json"),
            ("DS_AUTH__QUERY_PARAM", "a b"),
            ("DS_AUTH__CLAIM", ""),
            ("DS_AUTH__JWKS_FETCH_TIMEOUT_SECS", "0"),
        ],
        "default",
    );
    let keys: Vec<&str> = errors.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "auth.jwks_fetch_timeout_secs",
            "auth.jwks_url",
            "auth.claim",
            "auth.query_param"
        ],
        "{}",
        messages(&errors)
    );
    assert!(errors[1].message.contains("plain http"), "{}", errors[1]);
    for (url, why) in [
        ("https://user:pw@idp.example.com/jwks", "credentials"),
        ("ftp://idp.example.com/jwks", "scheme"),
        ("not a url", "not a URL"),
    ] {
        let errors = validate_env(
            &[("DS_AUTH__MODE", "token"), ("DS_AUTH__JWKS_URL", url)],
            "default",
        );
        assert_eq!(errors.len(), 1, "{url}: {}", messages(&errors));
        assert!(errors[0].message.contains(why), "{url}: {}", errors[0]);
    }
    let errors = validate_env(
        &[
            ("DS_AUTH__MODE", "token"),
            ("DS_AUTH__JWKS_URL", "http://127.0.0.1:8080/jwks"),
            ("DS_AUTH__JWKS_PATH", "/etc/jwks.json"),
        ],
        "default",
    );
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(errors[0].message.contains("both set"), "{}", errors[0]);
}

#[test]
fn auth_grants_and_identities_are_checked_where_they_are_written() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/local.toml",
            "[auth]\nmode = \"token\"\nanonymous = [{ paths = [\"/v1/stream/public/**\"], ops = \
             [\"read\"] }]\n\n[[auth.identities]]\nname = \"writer\"\ngrants = [{ paths = \
             [\"/v1/stream/t/**\"], ops = [\"append\", \"create\"] }]\n",
        )?;
        let loaded = load(&options("default"));
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        let validation = loaded.validate();
        assert!(
            validation.errors.is_empty(),
            "{}",
            messages(&validation.errors)
        );
        // Identities without mtls or a proxy identity header never match.
        assert_eq!(
            validation.warnings[0].key.as_deref(),
            Some("auth.identities"),
            "{}",
            messages(&validation.warnings)
        );
        assert_eq!(loaded.config().auth.identities[0].grants[0].ops.len(), 2);

        jail.create_file(
            "config/local.toml",
            "[auth]\nmode = \"token\"\nanonymous = [{ paths = [\"v1/stream/public/**\"], ops = \
             [\"read\"] }]\n",
        )?;
        let errors = load(&options("default")).validate().errors;
        assert_eq!(errors.len(), 2, "{}", messages(&errors));
        assert_eq!(errors[0].key.as_deref(), Some("auth.mode"));
        assert_eq!(errors[1].key.as_deref(), Some("auth.anonymous"));
        assert!(
            errors[1].message.contains("start with `/`"),
            "{}",
            errors[1]
        );
        assert_eq!(errors[1].source.as_deref(), Some("config/local.toml:3"));

        jail.create_file(
            "config/local.toml",
            "[[auth.identities]]\nname = \"a\"\nsan = \"DNS:a\"\n",
        )?;
        let validation = load(&options("default")).validate();
        assert_eq!(
            validation.errors[0].key.as_deref(),
            Some("auth.identities"),
            "{}",
            messages(&validation.errors)
        );
        assert!(validation.errors[0].message.contains("exactly one"));

        jail.create_file(
            "config/local.toml",
            "[auth]\nanonymous = [{ path = [\"/x\"], ops = [\"read\"] }]\n",
        )?;
        let loaded = load(&options("default"));
        assert_eq!(
            loaded.problems()[0].key.as_deref(),
            Some("auth.anonymous"),
            "{}",
            messages(loaded.problems())
        );
        Ok(())
    });
}

#[test]
fn auth_settings_without_token_mode_are_flagged() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("DS_AUTH__API_KEYS_PATH", "/etc/keys.toml");
        let validation = load(&LoadOptions {
            config_dir: ConfigDir::None,
            ..options("default")
        })
        .validate();
        assert!(
            validation.errors.is_empty(),
            "{}",
            messages(&validation.errors)
        );
        assert_eq!(
            validation.warnings[0].key.as_deref(),
            Some("auth.api_keys_path")
        );
        assert!(validation.warnings[0].hint.contains("DS_AUTH__MODE=token"));
        Ok(())
    });
}

#[test]
fn postgres_mode_needs_a_usable_url_and_never_shows_its_password() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.set_env("DS_STORAGE__MODE", "postgres");
        let loaded = load(&options("default"));
        let errors = loaded.validate().errors;
        let url = errors
            .iter()
            .find(|p| p.key.as_deref() == Some("storage.postgres.url"))
            .expect("a url problem");
        assert!(url.message.contains("not set"), "{url}");
        assert!(
            url.hint.contains("DS_STORAGE__POSTGRES__URL"),
            "{}",
            url.hint
        );

        jail.set_env(
            "DS_STORAGE__POSTGRES__URL",
            "postgres://ds:hunter2@db:5432/streams?sslmode=maybe",
        );
        let loaded = load(&options("default"));
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        let errors = loaded.validate().errors;
        let text = messages(&errors);
        assert!(text.contains("unknown sslmode \"maybe\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            errors[0].source.as_deref(),
            Some("env DS_STORAGE__POSTGRES__URL")
        );
        let printed = render::render(&loaded, true);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("postgres://ds:<redacted>@db:5432/streams"),
            "{printed}"
        );

        jail.set_env(
            "DS_STORAGE__POSTGRES__URL",
            "postgres://ds:hunter2@db:5432/streams?sslmode=verify-full",
        );
        jail.set_env("DS_STORAGE__POSTGRES__POOL_SIZE", "4");
        let loaded = load(&options("default"));
        let validation = loaded.validate();
        assert!(
            validation.errors.is_empty(),
            "{}",
            messages(&validation.errors)
        );
        assert_eq!(loaded.config().storage.postgres.pool_size, 4);
        assert_eq!(loaded.config().storage.mode, StorageMode::Postgres);
        Ok(())
    });
}

#[test]
fn retention_rules_name_distinct_url_prefixes() {
    Jail::expect_with(|jail| {
        clean(jail)?;
        jail.create_file(
            "config/local.toml",
            "[storage.retention]\nmax_bytes = 1024\n\n[[storage.retention.rules]]\nprefix = \
             \"/v1/stream/chat/\"\nmax_age_secs = 60\n\n[[storage.retention.rules]]\nprefix = \
             \"/v1/stream/chat/\"\n\n[[storage.retention.rules]]\nprefix = \"logs/\"\n",
        )?;
        let loaded = load(&options("default"));
        assert!(
            loaded.problems().is_empty(),
            "{}",
            messages(loaded.problems())
        );
        let retention = &loaded.config().storage.retention;
        assert_eq!(retention.rules.len(), 3);
        assert_eq!(retention.limits_for("/v1/stream/x").max_bytes, 1024);
        let validation = loaded.validate();
        assert_eq!(
            validation.errors.len(),
            2,
            "{}",
            messages(&validation.errors)
        );
        assert!(validation.errors[0].message.contains("rules[1].prefix"));
        assert!(validation.errors[0].message.contains("repeats"));
        assert!(validation.errors[1].message.contains("start with `/`"));
        // A byte limit below one chunk keeps up to a chunk more than asked.
        assert_eq!(
            validation.warnings[0].key.as_deref(),
            Some("storage.retention.max_bytes"),
            "{}",
            messages(&validation.warnings)
        );
        Ok(())
    });
}
