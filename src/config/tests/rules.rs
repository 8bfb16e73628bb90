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
