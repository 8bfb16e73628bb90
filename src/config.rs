//! The settings tree, and its loading from layered sources.
//!
//! Sources, later ones winning: built-in defaults → built-in profile
//! defaults → `config/default.toml` → `config/<profile>.toml` →
//! `config/local.toml` → `--config <path>` → `DS_*` environment variables
//! (`__` separates levels, so `DS_SERVER__BIND_ADDRESS` sets
//! `server.bind_address`; lists are comma lists) → `RUST_LOG` (for
//! `observability.rust_log` only). [`load`] does the layering and reports
//! every unknown key and bad value at once; [`LoadedConfig::validate`] checks
//! the rules that span several keys.
//!
//! `config/default.toml` at the repository root lists every key with its
//! default and a comment; a unit test keeps it equal to [`Config::default`].
//!
//! # Layout
//! - this file: the settings tree and its defaults.
//! - [`profile`]: the built-in deployment profiles.
//! - `source`: the layers (files with line numbers, environment variables).
//! - `load`: layering, unknown-key and bad-value detection.
//! - `validate`: the cross-field rules; `syntax`: the syntax of single values;
//!   `suggest`: the known key closest to an unknown one.
//! - the `[storage]` and `[auth]` sections are declared by their layers
//!   (`storage::config`, `auth::config`) and re-exported here.
//! - [`render`]: the effective configuration as TOML, with sources and redaction.
//! - `problem`: [`ConfigProblem`] and [`ConfigError`].

mod load;
mod problem;
pub mod profile;
pub mod render;
mod source;
mod suggest;
mod syntax;
mod validate;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{
    ConfigDir, ConfigLoadOptions, ENV_PREFIX, LoadOptions, LoadedConfig, env_var, load,
};
pub use problem::{ConfigError, ConfigProblem};
pub use profile::DeploymentProfile;
pub(crate) use syntax::is_http_url;
pub use validate::Validation;

pub use crate::auth::config::{
    AccessOp, AuthConfig, AuthMode, GrantConfig, IdentityConfig, IdentitySourceFilter,
};
pub use crate::storage::config::{
    AcidConfig, PostgresConfig, RetentionConfig, RetentionLimits, RetentionRule, StorageConfig,
    StorageMode,
};

/// Where the protocol routes are mounted unless `http.stream_base_path` says otherwise.
pub const DEFAULT_STREAM_BASE_PATH: &str = "/v1/stream";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener and lifecycle.
    pub server: ServerConfig,
    /// Size limits.
    pub limits: LimitsConfig,
    /// HTTP surface.
    pub http: HttpConfig,
    /// Storage backend.
    pub storage: StorageConfig,
    /// Transport settings.
    pub transport: TransportConfig,
    /// Trust in reverse proxies in front of the server.
    pub proxy: ProxyConfig,
    /// The reserved `__ds` subscription APIs (webhook and pull-wake).
    pub subscriptions: SubscriptionsConfig,
    /// Access control: who may do what on which streams.
    pub auth: AuthConfig,
    /// Logging, metrics and tracing.
    pub observability: ObservabilityConfig,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` to listen on.
    pub bind_address: String,
    /// Seconds between SIGTERM and the listener closing, while `/readyz`
    /// already answers `503` (lets load balancers stop routing to us).
    pub shutdown_delay_secs: u64,
    /// Upper bound, in seconds, on the whole shutdown.
    pub drain_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0:4437".into(),
            shutdown_delay_secs: 1,
            drain_timeout_secs: 25,
        }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body; larger ones get `413` without being buffered.
    pub max_request_body_bytes: u64,
    /// Total payload bytes the in-memory backend may hold.
    pub max_memory_bytes: u64,
    /// Payload bytes one stream may hold.
    pub max_stream_bytes: u64,
    /// Longest stream name, in bytes.
    pub max_stream_name_bytes: usize,
    /// Most `/`-separated segments in a stream name.
    pub max_stream_name_segments: usize,
    /// Most payload bytes one read response carries.
    pub max_read_bytes: usize,
    /// Total bytes of a request's header names and values; more get `431`.
    pub max_header_bytes: usize,
    /// Longest query string, in bytes; longer ones get `414`.
    pub max_query_bytes: usize,
    /// Longest client-chosen identifier (`Producer-Id`, a subscription's
    /// worker name), in bytes; longer ones get `400`.
    pub max_identifier_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body (appends to
    /// JSON streams, `__ds` control bodies); deeper ones get `400`.
    pub max_json_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 10 << 20,
            max_memory_bytes: 256 << 20,
            max_stream_bytes: 1 << 30,
            max_stream_name_bytes: 1024,
            max_stream_name_segments: 8,
            max_read_bytes: 4 << 20,
            max_header_bytes: 16 << 10,
            max_query_bytes: 4 << 10,
            max_identifier_bytes: 256,
            max_json_depth: 64,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `*` or a comma-separated list of allowed origins.
    pub cors_origins: String,
    /// Acknowledges `*` in production profiles.
    pub allow_wildcard_cors: bool,
    /// Mount path of the protocol routes.
    pub stream_base_path: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: "*".into(),
            allow_wildcard_cors: false,
            stream_base_path: DEFAULT_STREAM_BASE_PATH.into(),
        }
    }
}

keyword_enum! {
    /// How clients reach the server (`transport.mode`).
    pub enum TransportMode {
        /// Plain HTTP; TLS, if any, ends in front of the server.
        #[default]
        Http = "http",
        /// TLS terminated by the server.
        Tls = "tls",
        /// TLS with client certificates verified against `transport.tls.client_ca_path`.
        Mtls = "mtls",
    }
}

impl TransportMode {
    /// Whether the server terminates TLS itself.
    pub fn is_tls(self) -> bool {
        !matches!(self, TransportMode::Http)
    }
}

keyword_enum! {
    /// An HTTP protocol version the listener speaks (`transport.http.versions`).
    pub enum HttpVersion {
        /// HTTP/1.1.
        #[default]
        Http1 = "http1",
        /// HTTP/2, negotiated by ALPN; needs TLS.
        Http2 = "http2",
    }
}

keyword_enum! {
    /// What serves HTTP/1.1 on the main listener (`transport.http.engine`).
    pub enum Http1Engine {
        /// The server's own HTTP/1.1 connection layer: no buffers held by
        /// idle and streaming connections.
        #[default]
        Lean = "lean",
        /// hyper's HTTP/1.1, as embedders get from `axum::serve`.
        Hyper = "hyper",
    }
}

keyword_enum! {
    /// A TLS protocol version (`transport.tls.min_version`, `max_version`).
    pub enum TlsVersion {
        /// TLS 1.2.
        #[default]
        V1_2 = "1.2",
        /// TLS 1.3.
        V1_3 = "1.3",
    }
}

keyword_enum! {
    /// An ALPN protocol identifier (`transport.tls.alpn_protocols`).
    pub enum AlpnProtocol {
        /// HTTP/1.1.
        #[default]
        Http11 = "http/1.1",
        /// HTTP/2.
        H2 = "h2",
    }
}

/// `[transport]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// `http`, `tls` or `mtls`.
    pub mode: TransportMode,
    /// HTTP protocol versions.
    pub http: TransportHttpConfig,
    /// Certificates and TLS parameters (`tls` and `mtls` modes).
    pub tls: TlsConfig,
    /// Live-read connection behaviour.
    pub connection: ConnectionConfig,
}

/// `[transport.http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportHttpConfig {
    /// Versions the listener speaks; `http2` needs TLS.
    pub versions: Vec<HttpVersion>,
    /// What serves HTTP/1.1 (HTTP/2 is always hyper's).
    pub engine: Http1Engine,
}

impl Default for TransportHttpConfig {
    fn default() -> Self {
        Self {
            versions: vec![HttpVersion::Http1],
            engine: Http1Engine::Lean,
        }
    }
}

/// `[transport.tls]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain.
    pub cert_path: Option<PathBuf>,
    /// PEM file with the server's private key.
    pub key_path: Option<PathBuf>,
    /// PEM bundle of the CAs that sign client certificates (`mtls` only).
    pub client_ca_path: Option<PathBuf>,
    /// Oldest TLS version accepted.
    pub min_version: TlsVersion,
    /// Newest TLS version accepted.
    pub max_version: TlsVersion,
    /// ALPN identifiers offered, in preference order; empty derives them
    /// from `transport.http.versions` (`h2` first).
    pub alpn_protocols: Vec<AlpnProtocol>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_path: None,
            key_path: None,
            client_ca_path: None,
            min_version: TlsVersion::V1_2,
            max_version: TlsVersion::V1_3,
            alpn_protocols: Vec::new(),
        }
    }
}

/// `[transport.connection]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// How long a long-poll waits for data before answering `204`.
    pub long_poll_timeout_secs: u64,
    /// SSE connections end after this many seconds so CDNs can collapse
    /// them; 0 keeps them open.
    pub sse_reconnect_interval_secs: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            long_poll_timeout_secs: 30,
            sse_reconnect_interval_secs: 60,
        }
    }
}

keyword_enum! {
    /// Which forwarding headers a trusted proxy may set (`proxy.forwarded_headers`).
    pub enum ForwardedHeaders {
        /// None: the peer address is the client.
        #[default]
        None = "none",
        /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
        XForwarded = "x-forwarded",
        /// RFC 7239 `Forwarded`.
        Forwarded = "forwarded",
    }
}

keyword_enum! {
    /// Where a request's client identity comes from (`proxy.identity.mode`).
    pub enum IdentityMode {
        /// No identity handoff.
        #[default]
        None = "none",
        /// A header set by a trusted proxy.
        Header = "header",
    }
}

/// `[proxy]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Whether to trust proxies at all.
    pub enabled: bool,
    /// Forwarding headers honoured from trusted proxies.
    pub forwarded_headers: ForwardedHeaders,
    /// IPs and CIDRs of the trusted proxies.
    pub trusted_proxies: Vec<String>,
    /// Identity handoff from a trusted proxy.
    pub identity: ProxyIdentityConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            forwarded_headers: ForwardedHeaders::None,
            trusted_proxies: Vec::new(),
            identity: ProxyIdentityConfig::default(),
        }
    }
}

/// `[proxy.identity]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyIdentityConfig {
    /// `none` or `header`.
    pub mode: IdentityMode,
    /// The header carrying the identity (`header` mode).
    pub header_name: String,
    /// Honour the header only on connections that arrived over TLS.
    pub require_tls: bool,
}

impl Default for ProxyIdentityConfig {
    fn default() -> Self {
        Self {
            mode: IdentityMode::None,
            header_name: "x-client-identity".into(),
            require_tls: true,
        }
    }
}

/// `[subscriptions]`: the reserved `__ds` consumer subscription APIs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// Serve `{base}/__ds/…` (subscriptions, callbacks, leases, JWKS).
    pub enabled: bool,
    /// PEM file with the Ed25519 private key (PKCS#8) that signs webhooks.
    /// Unset: a key is generated once and kept in the store's metadata.
    pub signing_key_path: Option<PathBuf>,
    /// Allow `http://` webhook targets on loopback hosts (development, tests).
    pub allow_loopback_http: bool,
    /// Allow webhook targets in private, link-local and shared address
    /// ranges (and loopback over https).
    pub allow_private_targets: bool,
    /// Lease length when a subscription names none.
    pub default_lease_ttl_ms: u64,
    /// Shortest lease a subscription may ask for.
    pub min_lease_ttl_ms: u64,
    /// Longest lease a subscription may ask for.
    pub max_lease_ttl_ms: u64,
    /// First retry delay of a failed webhook delivery (doubles each time).
    pub retry_initial_ms: u64,
    /// Longest retry delay of a failed webhook delivery.
    pub retry_max_ms: u64,
    /// Time limit of one webhook request.
    pub delivery_timeout_ms: u64,
    /// Most webhook deliveries waiting to be sent; beyond it, wakes wait
    /// for the next scan instead of growing memory.
    pub max_queued_deliveries: usize,
    /// Most webhook requests in flight at once.
    pub max_concurrent_deliveries: usize,
    /// Most subscriptions the server keeps.
    pub max_subscriptions: usize,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            signing_key_path: None,
            allow_loopback_http: false,
            allow_private_targets: false,
            default_lease_ttl_ms: 30_000,
            min_lease_ttl_ms: 1_000,
            max_lease_ttl_ms: 600_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            delivery_timeout_ms: 10_000,
            max_queued_deliveries: 1024,
            max_concurrent_deliveries: 16,
            max_subscriptions: 4096,
        }
    }
}

keyword_enum! {
    /// Log line format (`observability.log_format`).
    pub enum LogFormat {
        /// Human-readable lines.
        #[default]
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
}

keyword_enum! {
    /// OTLP transport (`observability.otlp.protocol`).
    pub enum OtlpProtocol {
        /// gRPC.
        #[default]
        Grpc = "grpc",
        /// HTTP with protobuf bodies.
        HttpProtobuf = "http/protobuf",
    }
}

/// `[observability]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `tracing` filter directives; `RUST_LOG` overrides it.
    pub rust_log: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// OpenTelemetry trace export.
    pub otlp: OtlpConfig,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            rust_log: "info".into(),
            log_format: LogFormat::Text,
            metrics: MetricsConfig::default(),
            otlp: OtlpConfig::default(),
        }
    }
}

/// `[observability.metrics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether to expose Prometheus metrics.
    pub enabled: bool,
    /// Path of the metrics endpoint.
    pub path: String,
    /// A separate `host:port` for the metrics endpoint; unset serves it on
    /// the main listener.
    pub bind_address: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".into(),
            bind_address: None,
        }
    }
}

/// `[observability.otlp]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Whether to export traces; disabled means no exporter work at all.
    pub enabled: bool,
    /// Collector URL.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Fraction of traces sampled, 0.0 to 1.0.
    pub sampling_ratio: f64,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Extra resource attributes as `key=value` items.
    pub resource_attributes: Vec<String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://localhost:4317".into(),
            protocol: OtlpProtocol::Grpc,
            sampling_ratio: 1.0,
            service_name: "durable-streams-server".into(),
            resource_attributes: Vec::new(),
        }
    }
}

impl Config {
    /// Built-in defaults overridden by `DS_*` environment variables and
    /// `RUST_LOG`; no profile, no files. Strict: unknown keys, bad values and
    /// broken cross-field rules are all errors.
    ///
    /// # Errors
    /// Every problem found, together.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(&ConfigLoadOptions {
            config_dir: ConfigDir::None,
            ..ConfigLoadOptions::default()
        })
    }

    /// Loads and validates the configuration the way the server does; the
    /// name 0.3.0 gave [`Config::load`].
    ///
    /// # Errors
    /// Every problem found (unknown keys, bad values, broken rules), together.
    pub fn from_sources(options: &ConfigLoadOptions) -> Result<Self, ConfigError> {
        Self::load(options)
    }

    /// Loads and validates the configuration the way the server does.
    ///
    /// # Errors
    /// Every problem found (unknown keys, bad values, broken rules), together.
    pub fn load(options: &ConfigLoadOptions) -> Result<Self, ConfigError> {
        let loaded = load(options);
        match loaded.check() {
            Ok(validation) if validation.errors.is_empty() => Ok(loaded.into_config()),
            Ok(validation) => Err(ConfigError::new(validation.errors)),
            Err(problems) => Err(ConfigError::new(problems)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests;
