//! Rules that span several keys, and values of the right type whose content
//! is wrong (addresses, CIDRs, header names, filter directives). Every
//! problem names the key, its value, where it came from and how to fix it.

use std::path::PathBuf;

use super::load::{LoadedConfig, env_var};
use super::problem::ConfigProblem;
use super::syntax::{is_host_port, is_http_url, is_ip_or_cidr, is_origin};
use super::{AlpnProtocol, Config, ForwardedHeaders, HttpVersion, IdentityMode, TransportMode};

mod auth;
mod storage;

/// What validation found.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    /// Problems that stop the server from starting.
    pub errors: Vec<ConfigProblem>,
    /// Settings that are allowed but probably not meant (logged at start).
    pub warnings: Vec<ConfigProblem>,
}

pub(super) fn validate(loaded: &LoadedConfig) -> Validation {
    let mut checker = Checker {
        loaded,
        config: loaded.config(),
        found: Validation::default(),
    };
    checker.server();
    checker.limits();
    checker.http();
    checker.storage();
    checker.transport();
    checker.proxy();
    checker.subscriptions();
    checker.auth();
    checker.observability();
    checker.found
}

struct Checker<'a> {
    loaded: &'a LoadedConfig,
    config: &'a Config,
    found: Validation,
}

/// Whether an optional path is set to something (an empty value counts as unset).
pub(crate) fn is_set(path: &Option<PathBuf>) -> bool {
    path.as_ref().is_some_and(|p| !p.as_os_str().is_empty())
}

impl Checker<'_> {
    fn problem(&self, key: &str, message: String, hint: String) -> ConfigProblem {
        ConfigProblem::new(message, hint)
            .with_key(key)
            .with_source(self.loaded.source_of(key))
    }

    fn error(&mut self, key: &str, message: String, hint: String) {
        let problem = self.problem(key, message, hint);
        self.found.errors.push(problem);
    }

    fn warn(&mut self, key: &str, message: String, hint: String) {
        let problem = self.problem(key, message, hint);
        self.found.warnings.push(problem);
    }

    fn server(&mut self) {
        let server = &self.config.server;
        if !is_host_port(&server.bind_address) {
            self.error(
                "server.bind_address",
                format!(
                    "`server.bind_address` = {:?} is not host:port",
                    server.bind_address
                ),
                "use host:port, e.g. 0.0.0.0:4437, 127.0.0.1:4437 or [::]:4437 \
                 (DS_SERVER__BIND_ADDRESS)"
                    .into(),
            );
        }
        if server.drain_timeout_secs < server.shutdown_delay_secs {
            self.warn(
                "server.drain_timeout_secs",
                format!(
                    "`server.drain_timeout_secs` = {} is shorter than `server.shutdown_delay_secs` \
                     = {}, so the drain timeout cuts the delay short",
                    server.drain_timeout_secs, server.shutdown_delay_secs
                ),
                "make the drain timeout longer than the shutdown delay".into(),
            );
        }
    }

    fn limits(&mut self) {
        let limits = &self.config.limits;
        let nonzero = [
            (
                "limits.max_request_body_bytes",
                limits.max_request_body_bytes,
            ),
            ("limits.max_memory_bytes", limits.max_memory_bytes),
            ("limits.max_stream_bytes", limits.max_stream_bytes),
            (
                "limits.max_stream_name_bytes",
                limits.max_stream_name_bytes as u64,
            ),
            (
                "limits.max_stream_name_segments",
                limits.max_stream_name_segments as u64,
            ),
            ("limits.max_read_bytes", limits.max_read_bytes as u64),
            ("limits.max_header_bytes", limits.max_header_bytes as u64),
            ("limits.max_query_bytes", limits.max_query_bytes as u64),
            (
                "limits.max_identifier_bytes",
                limits.max_identifier_bytes as u64,
            ),
            ("limits.max_json_depth", limits.max_json_depth as u64),
            (
                "storage.expiry_sweep_interval_secs",
                self.config.storage.expiry_sweep_interval_secs,
            ),
            (
                "transport.connection.long_poll_timeout_secs",
                self.config.transport.connection.long_poll_timeout_secs,
            ),
            (
                "auth.jwks_refresh_interval_secs",
                self.config.auth.jwks_refresh_interval_secs,
            ),
            (
                "auth.jwks_fetch_timeout_secs",
                self.config.auth.jwks_fetch_timeout_secs,
            ),
            (
                "auth.jwks_min_refetch_interval_secs",
                self.config.auth.jwks_min_refetch_interval_secs,
            ),
        ];
        for (key, value) in nonzero {
            if value == 0 {
                self.error(
                    key,
                    format!("`{key}` = 0 is not allowed"),
                    format!("set `{key}` to at least 1, or remove it to use the default"),
                );
            }
        }
    }

    fn http(&mut self) {
        let http = &self.config.http;
        let base = http.stream_base_path.as_str();
        if base
            .chars()
            .any(|c| c.is_whitespace() || "{}*?#".contains(c))
        {
            self.error(
                "http.stream_base_path",
                format!("`http.stream_base_path` = {base:?} is not a plain URL path"),
                "use a path such as /v1/stream (no spaces, `{`, `}`, `*`, `?` or `#`)".into(),
            );
        }
        let origins: Vec<&str> = http
            .cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        let wildcard = origins.contains(&"*");
        if wildcard && origins.len() > 1 {
            self.error(
                "http.cors_origins",
                format!(
                    "`http.cors_origins` = {:?} mixes `*` with a list of origins",
                    http.cors_origins
                ),
                "use either `*` or a comma list of origins".into(),
            );
        } else if wildcard && self.loaded.profile().is_production() && !http.allow_wildcard_cors {
            self.error(
                "http.cors_origins",
                format!(
                    "`http.cors_origins` = \"*\" is refused in the production profile {}",
                    self.loaded.profile()
                ),
                "list the browser origins allowed (DS_HTTP__CORS_ORIGINS=https://app.example.com), \
                 or set http.allow_wildcard_cors = true to allow any origin on purpose"
                    .into(),
            );
        }
        let bad: Vec<&str> = origins
            .iter()
            .copied()
            .filter(|o| *o != "*" && !is_origin(o))
            .collect();
        if !bad.is_empty() {
            self.error(
                "http.cors_origins",
                format!(
                    "`http.cors_origins` has entries that are not origins: {}",
                    bad.join(", ")
                ),
                "write origins as scheme://host[:port], without a path or trailing slash, \
                 e.g. https://app.example.com"
                    .into(),
            );
        }
    }

    fn transport(&mut self) {
        let transport = &self.config.transport;
        let tls = &transport.tls;
        let mode = transport.mode;
        let paths = [
            ("transport.tls.cert_path", is_set(&tls.cert_path)),
            ("transport.tls.key_path", is_set(&tls.key_path)),
            ("transport.tls.client_ca_path", is_set(&tls.client_ca_path)),
        ];
        if mode.is_tls() {
            let missing: Vec<&str> = paths[..2]
                .iter()
                .filter(|(_, set)| !set)
                .map(|(key, _)| *key)
                .collect();
            if !missing.is_empty() {
                let envs: Vec<String> = missing.iter().map(|k| env_var(k)).collect();
                let names: Vec<&str> = missing
                    .iter()
                    .map(|k| k.rsplit('.').next().unwrap_or(k))
                    .collect();
                self.error(
                    "transport.mode",
                    format!(
                        "`transport.mode` = \"{mode}\" needs {}, {} not set",
                        missing.join(" and "),
                        if missing.len() == 1 {
                            "which is"
                        } else {
                            "which are"
                        }
                    ),
                    format!(
                        "set {} to PEM files, or {} under [transport.tls] in config/local.toml \
                         or a --config file",
                        envs.join(" and "),
                        names.join(" and ")
                    ),
                );
            }
        }
        match mode {
            TransportMode::Mtls if !paths[2].1 => self.error(
                "transport.mode",
                "`transport.mode` = \"mtls\" needs transport.tls.client_ca_path (the CAs that \
                 sign client certificates), which is not set"
                    .into(),
                "set DS_TRANSPORT__TLS__CLIENT_CA_PATH to a PEM bundle, or use transport.mode = \
                 \"tls\" to accept clients without certificates"
                    .into(),
            ),
            TransportMode::Tls if paths[2].1 => self.error(
                "transport.tls.client_ca_path",
                "`transport.tls.client_ca_path` is set but transport.mode = \"tls\" does not \
                 verify client certificates"
                    .into(),
                "set transport.mode = \"mtls\" to require client certificates, or remove \
                 client_ca_path"
                    .into(),
            ),
            TransportMode::Http => {
                let set: Vec<&str> = paths
                    .iter()
                    .filter(|(_, set)| *set)
                    .map(|(key, _)| *key)
                    .collect();
                if let Some(first) = set.first() {
                    self.error(
                        first,
                        format!(
                            "{} {} set but transport.mode = \"http\" serves plain HTTP",
                            set.join(" and "),
                            if set.len() == 1 { "is" } else { "are" }
                        ),
                        "set transport.mode = \"tls\" (or \"mtls\") to serve TLS, or remove the \
                         TLS paths"
                            .into(),
                    );
                }
            }
            _ => {}
        }
        if tls.min_version > tls.max_version {
            self.error(
                "transport.tls.min_version",
                format!(
                    "`transport.tls.min_version` = \"{}\" is newer than `max_version` = \"{}\"",
                    tls.min_version, tls.max_version
                ),
                "make min_version older than or equal to max_version (1.2 or 1.3)".into(),
            );
        }
        let versions = &transport.http.versions;
        if versions.is_empty() {
            self.error(
                "transport.http.versions",
                "`transport.http.versions` is empty".into(),
                "list at least one of http1, http2".into(),
            );
        }
        if versions.contains(&HttpVersion::Http2) && !mode.is_tls() {
            self.error(
                "transport.http.versions",
                "`transport.http.versions` includes http2, which needs TLS, but transport.mode = \
                 \"http\""
                    .into(),
                "use versions = [\"http1\"], or transport.mode = \"tls\" or \"mtls\"".into(),
            );
        }
        let alpn = &tls.alpn_protocols;
        if !alpn.is_empty() && !mode.is_tls() {
            self.error(
                "transport.tls.alpn_protocols",
                "`transport.tls.alpn_protocols` is set but transport.mode = \"http\" has no TLS"
                    .into(),
                "remove alpn_protocols, or use transport.mode = \"tls\" or \"mtls\"".into(),
            );
        } else {
            for (protocol, version) in [
                (AlpnProtocol::H2, HttpVersion::Http2),
                (AlpnProtocol::Http11, HttpVersion::Http1),
            ] {
                if alpn.contains(&protocol) && !versions.contains(&version) {
                    self.error(
                        "transport.tls.alpn_protocols",
                        format!(
                            "`transport.tls.alpn_protocols` offers \"{protocol}\" but \
                             transport.http.versions does not include {version}"
                        ),
                        format!(
                            "add {version} to transport.http.versions, or leave alpn_protocols \
                             empty to derive it from the versions"
                        ),
                    );
                }
            }
        }
    }

    fn subscriptions(&mut self) {
        let subs = &self.config.subscriptions;
        if subs.min_lease_ttl_ms == 0 || subs.min_lease_ttl_ms > subs.max_lease_ttl_ms {
            self.error(
                "subscriptions.min_lease_ttl_ms",
                format!(
                    "`subscriptions.min_lease_ttl_ms` = {} must be at least 1 and at most \
                     subscriptions.max_lease_ttl_ms ({})",
                    subs.min_lease_ttl_ms, subs.max_lease_ttl_ms
                ),
                "e.g. min_lease_ttl_ms = 1000 and max_lease_ttl_ms = 600000".into(),
            );
        } else if !(subs.min_lease_ttl_ms..=subs.max_lease_ttl_ms)
            .contains(&subs.default_lease_ttl_ms)
        {
            self.error(
                "subscriptions.default_lease_ttl_ms",
                format!(
                    "`subscriptions.default_lease_ttl_ms` = {} is outside min_lease_ttl_ms..=\
                     max_lease_ttl_ms ({}..={})",
                    subs.default_lease_ttl_ms, subs.min_lease_ttl_ms, subs.max_lease_ttl_ms
                ),
                "pick a default between the two bounds, e.g. 30000".into(),
            );
        }
        if subs.retry_initial_ms == 0 || subs.retry_initial_ms > subs.retry_max_ms {
            self.error(
                "subscriptions.retry_initial_ms",
                format!(
                    "`subscriptions.retry_initial_ms` = {} must be at least 1 and at most \
                     subscriptions.retry_max_ms ({})",
                    subs.retry_initial_ms, subs.retry_max_ms
                ),
                "e.g. retry_initial_ms = 1000 and retry_max_ms = 60000".into(),
            );
        }
        for (key, value) in [
            (
                "subscriptions.delivery_timeout_ms",
                subs.delivery_timeout_ms,
            ),
            (
                "subscriptions.max_queued_deliveries",
                subs.max_queued_deliveries as u64,
            ),
            (
                "subscriptions.max_concurrent_deliveries",
                subs.max_concurrent_deliveries as u64,
            ),
            (
                "subscriptions.max_subscriptions",
                subs.max_subscriptions as u64,
            ),
        ] {
            if value == 0 {
                self.error(
                    key,
                    format!("`{key}` = 0 must be at least 1"),
                    format!("set {key} to a positive number ({})", env_var(key)),
                );
            }
        }
        if subs.enabled
            && (subs.allow_loopback_http || subs.allow_private_targets)
            && self.loaded.profile().is_production()
        {
            self.warn(
                "subscriptions.allow_private_targets",
                "webhook targets on loopback or private addresses are allowed in a production \
                 profile; a subscriber could make the server call internal services"
                    .into(),
                "set subscriptions.allow_loopback_http and allow_private_targets to false \
                 unless the receivers really live there"
                    .into(),
            );
        }
    }

    fn proxy(&mut self) {
        let proxy = &self.config.proxy;
        if proxy.enabled && proxy.trusted_proxies.is_empty() {
            self.error(
                "proxy.enabled",
                "`proxy.enabled` = true needs proxy.trusted_proxies, which is empty".into(),
                "list the proxies' IPs or CIDRs, e.g. DS_PROXY__TRUSTED_PROXIES=10.0.0.0/8,\
                 192.168.1.5"
                    .into(),
            );
        }
        let bad: Vec<&str> = proxy
            .trusted_proxies
            .iter()
            .map(String::as_str)
            .filter(|entry| !is_ip_or_cidr(entry))
            .collect();
        if !bad.is_empty() {
            self.error(
                "proxy.trusted_proxies",
                format!(
                    "`proxy.trusted_proxies` has entries that are not IPs or CIDRs: {}",
                    bad.join(", ")
                ),
                "write addresses as 10.0.0.5, 10.0.0.0/8 or fd00::/8".into(),
            );
        }
        if !proxy.enabled
            && (!proxy.trusted_proxies.is_empty()
                || proxy.forwarded_headers != ForwardedHeaders::None)
        {
            self.warn(
                "proxy.enabled",
                "proxy.trusted_proxies / proxy.forwarded_headers are set but proxy.enabled = \
                 false, so they are ignored"
                    .into(),
                "set proxy.enabled = true to trust the proxies".into(),
            );
        }
        let identity = &proxy.identity;
        if identity.mode == IdentityMode::Header {
            if !proxy.enabled {
                self.error(
                    "proxy.identity.mode",
                    "`proxy.identity.mode` = \"header\" needs proxy.enabled = true (the header is \
                     only believed from trusted proxies)"
                        .into(),
                    "set proxy.enabled = true and proxy.trusted_proxies, or use \
                     proxy.identity.mode = \"none\""
                        .into(),
                );
            }
            let transport = self.config.transport.mode;
            if identity.require_tls && !transport.is_tls() {
                self.error(
                    "proxy.identity.require_tls",
                    "`proxy.identity.mode` = \"header\" with require_tls = true is never honoured: \
                     transport.mode = \"http\" has no TLS connections"
                        .into(),
                    "serve TLS (transport.mode = \"mtls\" authenticates the proxy by its \
                     certificate), or set proxy.identity.require_tls = false if the network path \
                     from the proxy is trusted"
                        .into(),
                );
            } else if transport != TransportMode::Mtls {
                self.warn(
                    "proxy.identity.mode",
                    format!(
                        "`proxy.identity.mode` = \"header\" with transport.mode = \"{transport}\": \
                         the proxy is recognised by its address only"
                    ),
                    "use transport.mode = \"mtls\" so the proxy also proves itself with a \
                     client certificate"
                        .into(),
                );
            }
        }
        if http::HeaderName::from_bytes(identity.header_name.as_bytes()).is_err() {
            self.error(
                "proxy.identity.header_name",
                format!(
                    "`proxy.identity.header_name` = {:?} is not a valid HTTP header name",
                    identity.header_name
                ),
                "use a header name made of letters, digits and `-`, e.g. x-client-identity".into(),
            );
        }
    }

    fn observability(&mut self) {
        let observability = &self.config.observability;
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&observability.rust_log) {
            self.error(
                "observability.rust_log",
                format!(
                    "`observability.rust_log` = {:?} is not a valid log filter: {error}",
                    observability.rust_log
                ),
                "use tracing filter directives such as `info` or \
                 `warn,durable_streams_server=debug` (RUST_LOG overrides this key)"
                    .into(),
            );
        }
        let metrics = &observability.metrics;
        if !metrics.path.starts_with('/') || metrics.path.contains(['{', '}', '*', '?', '#']) {
            self.error(
                "observability.metrics.path",
                format!(
                    "`observability.metrics.path` = {:?} is not a plain absolute path",
                    metrics.path
                ),
                "use a path such as /metrics".into(),
            );
        } else if ["/healthz", "/readyz"].contains(&metrics.path.trim_end_matches('/')) {
            self.error(
                "observability.metrics.path",
                format!(
                    "`observability.metrics.path` = {:?} is the path of a health probe",
                    metrics.path
                ),
                "use a path such as /metrics".into(),
            );
        } else {
            let base = self
                .config
                .http
                .stream_base_path
                .trim()
                .trim_end_matches('/');
            if metrics.path == base || metrics.path.starts_with(&format!("{base}/")) {
                self.error(
                    "observability.metrics.path",
                    format!(
                        "`observability.metrics.path` = {:?} is inside `http.stream_base_path` \
                         = {:?}, where it would hide a stream",
                        metrics.path, self.config.http.stream_base_path
                    ),
                    "use a path outside the stream base path, such as /metrics".into(),
                );
            }
        }
        if let Some(address) = &metrics.bind_address {
            if !is_host_port(address) {
                self.error(
                    "observability.metrics.bind_address",
                    format!("`observability.metrics.bind_address` = {address:?} is not host:port"),
                    "use host:port such as 0.0.0.0:9464, or leave it unset to serve metrics on \
                     the main listener"
                        .into(),
                );
            } else if *address == self.config.server.bind_address && !address.ends_with(":0") {
                self.error(
                    "observability.metrics.bind_address",
                    format!(
                        "`observability.metrics.bind_address` = {address:?} is the main listener's \
                         address"
                    ),
                    "choose another port, or leave it unset to serve metrics on the main listener"
                        .into(),
                );
            }
        }
        let otlp = &observability.otlp;
        if !(0.0..=1.0).contains(&otlp.sampling_ratio) {
            self.error(
                "observability.otlp.sampling_ratio",
                format!(
                    "`observability.otlp.sampling_ratio` = {} is outside 0.0 to 1.0",
                    otlp.sampling_ratio
                ),
                "use a fraction between 0.0 (no traces) and 1.0 (every trace)".into(),
            );
        }
        if otlp.enabled && !is_http_url(&otlp.endpoint) {
            self.error(
                "observability.otlp.endpoint",
                format!(
                    "`observability.otlp.endpoint` = {:?} is not an http:// or https:// URL",
                    otlp.endpoint
                ),
                "use the collector's URL, e.g. http://otel-collector:4317".into(),
            );
        }
        if otlp.service_name.trim().is_empty() {
            self.error(
                "observability.otlp.service_name",
                "`observability.otlp.service_name` is empty".into(),
                "set a service name, e.g. durable-streams-server".into(),
            );
        }
        let bad: Vec<&str> = otlp
            .resource_attributes
            .iter()
            .map(String::as_str)
            .filter(|item| {
                item.split_once('=')
                    .is_none_or(|(name, _)| name.trim().is_empty())
            })
            .collect();
        if !bad.is_empty() {
            self.error(
                "observability.otlp.resource_attributes",
                format!(
                    "`observability.otlp.resource_attributes` has items that are not key=value: {}",
                    bad.join(", ")
                ),
                "write each attribute as key=value, e.g. deployment.environment=prod".into(),
            );
        }
    }
}
