//! Startup in named phases, and the diagnosis when one fails.
//!
//! `load_config → validate_config → init_telemetry → open_storage → load_tls
//! → bind_listener → serve → drain`. Each phase is logged when entered (the
//! two before telemetry once it is up). A failure becomes a
//! [`StartupError`]: one line on standard error,
//! `startup failed in <phase>: <cause>; hint: <fix>`, the same as a
//! structured `startup failed` log event, and the phase's exit code, so a
//! crash loop tells its phase by exit code alone.
//!
//! # Exit codes
//!
//! | code | phase / meaning |
//! |-----:|-----------------|
//! | 0 | clean exit: drained after SIGTERM/SIGINT, or `check-config` passed |
//! | 2 | bad command line (unknown flag, missing value) |
//! | 3 | `load_config`: unreadable or missing file, TOML syntax error, unknown key, bad value, unknown profile |
//! | 4 | `validate_config`: a rule across keys (TLS without cert, mTLS without CA, `*` CORS in prod, …) |
//! | 5 | `init_telemetry`: the log subscriber, the metrics recorder or the OTLP exporter could not be set up |
//! | 6 | `open_storage`: data directory not creatable or writable, backend failed to open |
//! | 7 | `load_tls`: certificate, key or CA file unreadable, not PEM of the right kind, not parseable, expired, or key and certificate do not match; the webhook signing key (`subscriptions.signing_key_path`) unreadable or not Ed25519 PKCS#8 |
//! | 8 | `bind_listener`: address in use, not permitted, or not on this host (main or metrics listener) |
//! | 9 | `serve`: the accept loop failed |
//! | 10 | `drain`: the server failed while draining |
//! | 11 | `transfer`: `export` or `import` failed (bad input, conflict, write error) |
//!
//! `/readyz` answers `200` only once storage is open and the listener is
//! bound (from the start of `serve`), and `503` again as soon as `drain`
//! begins.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{
    self, Config, ConfigError, ConfigProblem, LoadOptions, LoadedConfig, ObservabilityConfig,
    StorageMode,
};
use crate::http::build_router_with_ready;
use crate::metrics;
use crate::server::{self, DrainTiming, ServeOptions, termination_signal};
use crate::shutdown::ShutdownToken;
use crate::storage::{InMemoryStorage, Storage};
use crate::telemetry::{self, Telemetry};
use crate::tls::{self, Acceptor, ReloadTiming, TlsSettings};

/// A startup phase, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Reading and layering the configuration sources.
    LoadConfig,
    /// Checking the rules that span several keys.
    ValidateConfig,
    /// Installing the log subscriber.
    InitTelemetry,
    /// Opening (or creating) the storage backend.
    OpenStorage,
    /// Reading the certificate, key and client CA.
    LoadTls,
    /// Binding the listening socket.
    BindListener,
    /// Serving requests.
    Serve,
    /// Draining after a shutdown signal.
    Drain,
    /// Copying streams in `export` or `import` (not a serving phase).
    Transfer,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 8] = [
        Phase::LoadConfig,
        Phase::ValidateConfig,
        Phase::InitTelemetry,
        Phase::OpenStorage,
        Phase::LoadTls,
        Phase::BindListener,
        Phase::Serve,
        Phase::Drain,
    ];

    /// The phase's name in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::LoadConfig => "load_config",
            Phase::ValidateConfig => "validate_config",
            Phase::InitTelemetry => "init_telemetry",
            Phase::OpenStorage => "open_storage",
            Phase::LoadTls => "load_tls",
            Phase::BindListener => "bind_listener",
            Phase::Serve => "serve",
            Phase::Drain => "drain",
            Phase::Transfer => "transfer",
        }
    }

    /// The process exit code when this phase fails: 3 for `load_config`
    /// up to 10 for `drain` (see the [module docs](self)).
    pub fn exit_code(self) -> u8 {
        match self {
            Phase::LoadConfig => 3,
            Phase::ValidateConfig => 4,
            Phase::InitTelemetry => 5,
            Phase::OpenStorage => 6,
            Phase::LoadTls => 7,
            Phase::BindListener => 8,
            Phase::Serve => 9,
            Phase::Drain => 10,
            Phase::Transfer => 11,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed phase: what went wrong and what the operator can do.
///
/// `Display` is the one line printed on standard error:
/// `startup failed in <phase>: <cause>; hint: <fix>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("startup failed in {phase}: {cause}; hint: {hint}")]
pub struct StartupError {
    /// The phase that failed.
    pub phase: Phase,
    /// What went wrong, naming the key, value, file or address concerned.
    pub cause: String,
    /// How to fix it.
    pub hint: String,
}

impl StartupError {
    /// A failure of `phase`.
    pub fn new(phase: Phase, cause: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            phase,
            cause: one_line(&cause.into()),
            hint: one_line(&hint.into()),
        }
    }

    /// A configuration failure listing every problem.
    pub fn config(phase: Phase, problems: Vec<ConfigProblem>) -> Self {
        let error = ConfigError::new(problems);
        Self::new(phase, error.cause(), error.hint())
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        self.phase.exit_code()
    }
}

/// Newlines would break the one-line promise (an OS message, a path).
fn one_line(text: &str) -> String {
    if text.contains(['\n', '\r']) {
        text.split(['\n', '\r'])
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        text.to_owned()
    }
}

/// Phases entered before telemetry exists are logged once it does.
#[derive(Default)]
struct Progress {
    telemetry_ready: bool,
    pending: Vec<Phase>,
    observability: Option<ObservabilityConfig>,
    /// Flushed when the server stops, whether it ran or failed.
    telemetry: Option<Telemetry>,
}

impl Progress {
    fn enter(&mut self, phase: Phase) {
        if self.telemetry_ready {
            log_entered(phase);
        } else {
            self.pending.push(phase);
        }
    }

    fn telemetry_ready(&mut self) {
        self.telemetry_ready = true;
        for phase in std::mem::take(&mut self.pending) {
            log_entered(phase);
        }
    }
}

fn log_entered(phase: Phase) {
    tracing::info!(phase = phase.as_str(), "entering phase");
}

/// Runs the server through every phase until a shutdown signal has been
/// handled. On failure the structured `startup failed` event is logged
/// (installing a fallback subscriber when telemetry was not up yet); the
/// caller prints the error line and exits with [`StartupError::exit_code`].
///
/// # Errors
/// The first phase that fails.
pub async fn serve(options: &LoadOptions) -> Result<(), StartupError> {
    let mut progress = Progress::default();
    let result = run(options, &mut progress).await;
    if let Err(error) = &result {
        if !progress.telemetry_ready {
            // Logs only: a configuration that failed is no basis for export.
            let mut observability = progress.observability.take().unwrap_or_default();
            observability.otlp.enabled = false;
            let installed = telemetry::init(&observability)
                .or_else(|_| telemetry::init(&ObservabilityConfig::default()));
            if let Ok(telemetry) = installed {
                progress.telemetry = Some(telemetry);
                progress.telemetry_ready();
            }
        }
        tracing::error!(
            phase = error.phase.as_str(),
            exit_code = error.exit_code(),
            cause = %error.cause,
            hint = %error.hint,
            "startup failed"
        );
    }
    if let Some(telemetry) = progress.telemetry.take() {
        // Exports the spans still queued; blocking, bounded by seconds.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    result
}

async fn run(options: &LoadOptions, progress: &mut Progress) -> Result<(), StartupError> {
    progress.enter(Phase::LoadConfig);
    let loaded = config::load(options);
    progress.observability = Some(loaded.config().observability.clone());
    let validation = loaded.validate();
    if !loaded.problems().is_empty() {
        // Report the rule violations too, so one run shows everything.
        let mut problems = loaded.problems().to_vec();
        problems.extend(validation.errors);
        return Err(StartupError::config(Phase::LoadConfig, problems));
    }
    progress.enter(Phase::ValidateConfig);
    if !validation.errors.is_empty() {
        return Err(StartupError::config(
            Phase::ValidateConfig,
            validation.errors,
        ));
    }
    let config = loaded.config();

    progress.enter(Phase::InitTelemetry);
    let telemetry = telemetry::init(&config.observability).map_err(|error| {
        StartupError::new(Phase::InitTelemetry, error.to_string(), error.hint())
    })?;
    let exports_traces = telemetry.exports_traces();
    progress.telemetry = Some(telemetry);
    progress.telemetry_ready();
    let metrics = if config.observability.metrics.enabled {
        Some(metrics::install().map_err(|error| {
            StartupError::new(Phase::InitTelemetry, error.to_string(), error.hint())
        })?)
    } else {
        None
    };
    tracing::info!(
        version = crate::VERSION,
        profile = %loaded.profile(),
        layers = %loaded.layers().join(", "),
        metrics = metrics.is_some(),
        otlp = exports_traces,
        "configuration loaded"
    );
    for warning in &validation.warnings {
        tracing::warn!(
            phase = Phase::ValidateConfig.as_str(),
            key = warning.key.as_deref().unwrap_or_default(),
            source = warning.source.as_deref().unwrap_or_default(),
            hint = %warning.hint,
            "{}",
            warning.message
        );
    }

    progress.enter(Phase::OpenStorage);
    let storage = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_storage(&config))
            .await
            .map_err(|error| {
                StartupError::new(
                    Phase::OpenStorage,
                    format!("opening storage panicked or was cancelled: {error}"),
                    "see the log above; this is a bug worth reporting",
                )
            })??
    };
    tracing::info!(backend = storage.backend_name(), "storage open");

    progress.enter(Phase::LoadTls);
    let tls = load_tls(config)?;
    check_signing_key(config)?;
    if let Some(acceptor) = &tls {
        let certificate = acceptor.certificate();
        tracing::info!(
            mode = %config.transport.mode,
            subject = %certificate.subject,
            serial = %certificate.serial,
            not_after = %certificate.not_after_rfc3339(),
            "TLS material loaded"
        );
    }

    progress.enter(Phase::BindListener);
    let listener = bind_listener(&config.server.bind_address).await?;
    let address = listener
        .local_addr()
        .map_or_else(|_| config.server.bind_address.clone(), |a| a.to_string());
    let metrics_listener = match (metrics, &config.observability.metrics.bind_address) {
        (Some(handle), Some(metrics_address)) => Some((
            handle,
            bind(
                metrics_address,
                "observability.metrics.bind_address",
                "DS_OBSERVABILITY__METRICS__BIND_ADDRESS",
            )
            .await?,
        )),
        _ => None,
    };

    let shutdown = ShutdownToken::new();
    let (router, readiness) = build_router_with_ready(storage, config, shutdown.clone());
    progress.enter(Phase::Serve);
    tracing::info!(
        phase = Phase::Serve.as_str(),
        %address,
        transport = %config.transport.mode,
        "listening"
    );
    let metrics_server = metrics_listener.map(|(handle, listener)| {
        let metrics_address = listener
            .local_addr()
            .map_or_else(|_| String::new(), |a| a.to_string());
        let path = &config.observability.metrics.path;
        tracing::info!(phase = Phase::Serve.as_str(), address = %metrics_address, %path, "metrics listening");
        serve_metrics(listener, metrics::router(handle, path, readiness.clone()))
    });
    let draining = Arc::new(AtomicBool::new(false));
    let signal = {
        let draining = Arc::clone(&draining);
        async move {
            termination_signal().await;
            draining.store(true, Ordering::Release);
            log_entered(Phase::Drain);
        }
    };
    let timing = DrainTiming {
        delay: Duration::from_secs(config.server.shutdown_delay_secs),
        timeout: Duration::from_secs(config.server.drain_timeout_secs),
    };
    let options = ServeOptions {
        engine: config.transport.http.engine,
        ..ServeOptions::new(timing)
    };
    let served = match tls {
        None => server::serve(listener, router, readiness, shutdown, signal, options).await,
        Some(acceptor) => {
            // Installs the SIGHUP handler before the server reports ready.
            let _reloader = acceptor.spawn_reloader(ReloadTiming::default(), shutdown.clone());
            server::serve_tls(
                listener, acceptor, router, readiness, shutdown, signal, options,
            )
            .await
        }
    };
    if let Some(metrics_server) = metrics_server {
        metrics_server.stop().await;
    }
    served.map_err(|error| {
        let phase = if draining.load(Ordering::Acquire) {
            Phase::Drain
        } else {
            Phase::Serve
        };
        StartupError::new(
            phase,
            format!("the server stopped: {error}"),
            "see the log above; restarting the process is safe",
        )
    })?;
    tracing::info!(phase = Phase::Drain.as_str(), "stopped");
    Ok(())
}

/// What `check-config` found acceptable.
#[derive(Debug)]
pub struct Checked {
    /// The loaded configuration.
    pub loaded: LoadedConfig,
    /// Allowed but suspicious settings.
    pub warnings: Vec<ConfigProblem>,
}

/// Runs the phases that have no side effects: `load_config`,
/// `validate_config`, and the checks of `load_tls` (files readable, chain
/// parses, key matches, not expired, client CA usable).
///
/// # Errors
/// The first phase that fails.
pub fn check(options: &LoadOptions) -> Result<Checked, StartupError> {
    let checked = load_valid(options)?;
    load_tls(checked.loaded.config())?;
    Ok(checked)
}

/// The `load_config` phase: fails when a layer could not be read or parsed
/// (reporting the validation errors found meanwhile too, all at once);
/// otherwise the configuration and what validating it found.
///
/// # Errors
/// The `load_config` problems.
pub fn load_parsed(
    options: &LoadOptions,
) -> Result<(LoadedConfig, config::Validation), StartupError> {
    let loaded = config::load(options);
    let validation = loaded.validate();
    if !loaded.problems().is_empty() {
        let mut problems = loaded.problems().to_vec();
        problems.extend(validation.errors);
        return Err(StartupError::config(Phase::LoadConfig, problems));
    }
    Ok((loaded, validation))
}

/// Runs `load_config` and `validate_config` only (for commands that do not
/// serve, such as `export` and `import`).
///
/// # Errors
/// The first phase that fails.
pub fn load_valid(options: &LoadOptions) -> Result<Checked, StartupError> {
    let (loaded, validation) = load_parsed(options)?;
    if !validation.errors.is_empty() {
        return Err(StartupError::config(
            Phase::ValidateConfig,
            validation.errors,
        ));
    }
    Ok(Checked {
        loaded,
        warnings: validation.warnings,
    })
}

/// The `open_storage` phase: the backend `storage.mode` names.
///
/// Memory opens at once. The durable modes get their `storage.data_dir`
/// created and checked for writes, then their backend opens it: takes the
/// directory lock, replays and verifies what is stored.
///
/// # Errors
/// When the data directory cannot be created or written, is locked by
/// another process, or holds corrupt data.
pub fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StartupError> {
    match config.storage.mode {
        StorageMode::Memory => Ok(Arc::new(InMemoryStorage::new(
            config.limits.max_memory_bytes,
        ))),
        StorageMode::FileFast | StorageMode::FileDurable | StorageMode::Acid => {
            prepare_data_dir(config)?;
            crate::storage::open(config).map_err(|error| {
                let hint = match &error {
                    crate::storage::StorageError::Locked { .. } => {
                        "stop the other server using this directory, or give this one its own storage.data_dir"
                    }
                    crate::storage::StorageError::Corrupt(_) => {
                        "restore the directory from a backup, or discard the damaged part as the message says"
                    }
                    _ => "check that storage.data_dir is a writable local directory with free space",
                };
                StartupError::new(Phase::OpenStorage, error_chain(&error), hint)
            })
        }
    }
}

use crate::telemetry::error_chain;

/// Creates `storage.data_dir` if needed and proves it writable by creating,
/// syncing and removing a probe file.
///
/// # Errors
/// When it is unset, not a directory, cannot be created, or cannot be
/// written.
pub fn prepare_data_dir(config: &Config) -> Result<PathBuf, StartupError> {
    let mode = config.storage.mode;
    let Some(dir) = config
        .storage
        .data_dir
        .as_ref()
        .filter(|dir| !dir.as_os_str().is_empty())
    else {
        return Err(StartupError::new(
            Phase::OpenStorage,
            format!("storage.mode = \"{mode}\" needs storage.data_dir, which is not set"),
            "set DS_STORAGE__DATA_DIR (or data_dir under [storage]) to a writable directory",
        ));
    };
    let fail = |what: &str, error: &std::io::Error| {
        StartupError::new(
            Phase::OpenStorage,
            format!(
                "storage.data_dir {:?} {what}: {error}",
                dir.display().to_string()
            ),
            data_dir_hint(error.kind()),
        )
    };
    if dir.exists() && !dir.is_dir() {
        return Err(StartupError::new(
            Phase::OpenStorage,
            format!(
                "storage.data_dir {:?} is a file, not a directory",
                dir.display().to_string()
            ),
            "point storage.data_dir (DS_STORAGE__DATA_DIR) at a directory",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|error| fail("cannot be created", &error))?;
    let probe = dir.join(format!(".ds-write-probe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| {
            file.write_all(b"probe")?;
            file.sync_all()
        });
    let _ = std::fs::remove_file(&probe);
    written.map_err(|error| fail("is not writable", &error))?;
    Ok(dir.clone())
}

fn data_dir_hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::PermissionDenied => {
            "give the server's user write access to it (in Kubernetes: a writable volume, and \
             fsGroup), or point DS_STORAGE__DATA_DIR at a writable directory"
        }
        ErrorKind::ReadOnlyFilesystem => {
            "mount a writable volume there, or point DS_STORAGE__DATA_DIR at one"
        }
        ErrorKind::NotADirectory => {
            "a part of the path is a file: point DS_STORAGE__DATA_DIR at a directory path"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "free space on that filesystem, or use a larger volume"
        }
        _ => "point storage.data_dir (DS_STORAGE__DATA_DIR) at a writable directory",
    }
}

/// The `load_tls` phase: reads and validates the certificate, key and
/// client CA named by `transport.tls` (nothing in `http` mode), and builds
/// the TLS configuration.
///
/// # Errors
/// When a file is not configured, unreadable, holds no PEM block of the
/// right kind or one that does not parse, a certificate is expired, the
/// key does not belong to the certificate, or the client CA bundle is not
/// usable.
pub fn load_tls(config: &Config) -> Result<Option<Acceptor>, StartupError> {
    let fail =
        |error: tls::TlsError| StartupError::new(Phase::LoadTls, error.to_string(), error.hint());
    match TlsSettings::from_config(&config.transport).map_err(fail)? {
        Some(settings) => Acceptor::load(settings).map(Some).map_err(fail),
        None => Ok(None),
    }
}

/// Part of the `load_tls` phase (key material): with subscriptions enabled,
/// the webhook signing key named by `subscriptions.signing_key_path` must
/// be an Ed25519 PKCS#8 PEM key.
///
/// # Errors
/// When the file is unreadable or holds no such key.
pub fn check_signing_key(config: &Config) -> Result<(), StartupError> {
    let subs = &config.subscriptions;
    let Some(path) = subs
        .signing_key_path
        .as_ref()
        .filter(|p| subs.enabled && !p.as_os_str().is_empty())
    else {
        return Ok(());
    };
    crate::subscriptions::signing::SigningKey::from_pem_file(path)
        .map(|_| ())
        .map_err(|error| {
            StartupError::new(
                Phase::LoadTls,
                format!(
                    "webhook signing key {} (subscriptions.signing_key_path): {error}",
                    path.display()
                ),
                "mount an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`), \
                 or unset subscriptions.signing_key_path to have one generated",
            )
        })
}

/// The `bind_listener` phase.
///
/// # Errors
/// When the address is in use, not permitted, or not on this host.
pub async fn bind_listener(address: &str) -> Result<TcpListener, StartupError> {
    bind(address, "server.bind_address", "DS_SERVER__BIND_ADDRESS").await
}

/// Binds `address`, set by configuration `key` (environment `var`).
async fn bind(address: &str, key: &str, var: &str) -> Result<TcpListener, StartupError> {
    use std::io::ErrorKind;
    TcpListener::bind(address).await.map_err(|error| {
        let (cause, hint) = match error.kind() {
            ErrorKind::AddrInUse => (
                format!("cannot listen on {address}: the address is already in use"),
                format!(
                    "stop the process that listens there, or choose a free port with {key} ({var})"
                ),
            ),
            ErrorKind::PermissionDenied => (
                format!("cannot listen on {address}: permission denied"),
                "ports below 1024 need privileges: use a higher port such as 4437, or grant \
                 CAP_NET_BIND_SERVICE"
                    .to_owned(),
            ),
            ErrorKind::AddrNotAvailable => (
                format!("cannot listen on {address}: the address is not on this host"),
                format!(
                    "use 0.0.0.0 (all interfaces) or one of this host's addresses in {key} ({var})"
                ),
            ),
            _ => (
                format!("cannot listen on {address}: {error}"),
                format!("check {key} ({var}): host:port of this machine"),
            ),
        };
        StartupError::new(Phase::BindListener, cause, hint)
    })
}

/// The separate metrics listener, stopped after the main server.
struct MetricsServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn serve_metrics(listener: TcpListener, router: axum::Router) -> MetricsServer {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    MetricsServer { stop, task }
}

impl MetricsServer {
    /// Stops accepting scrapes; a scrape in progress gets a second to finish.
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the metrics listener failed"),
            Ok(Err(_)) => {}
            Err(_) => task.abort(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_ordered() {
        let codes: Vec<u8> = Phase::ALL.iter().map(|p| p.exit_code()).collect();
        assert_eq!(codes, (3..=10).collect::<Vec<u8>>());
    }

    #[test]
    fn the_error_is_one_line() {
        let error = StartupError::new(Phase::Serve, "a\nb\r\nc", "fix\nit");
        assert_eq!(
            error.to_string(),
            "startup failed in serve: a b c; hint: fix it"
        );
    }

    #[test]
    fn memory_storage_opens() {
        let storage = open_storage(&Config::default()).expect("memory opens");
        assert_eq!(storage.backend_name(), "memory");
    }

    #[tokio::test]
    async fn durable_modes_create_the_data_dir_and_lock_it() {
        for mode in [
            StorageMode::FileFast,
            StorageMode::FileDurable,
            StorageMode::Acid,
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut config = Config::default();
            config.storage.mode = mode;
            config.storage.data_dir = Some(dir.path().join("a/b"));
            let storage = open_storage(&config).expect("opens");
            assert!(dir.path().join("a/b/LOCK").is_file(), "{mode}");
            let error = open_storage(&config).err().expect("locked");
            assert_eq!(error.phase, Phase::OpenStorage);
            assert!(error.cause.contains("is locked by pid"), "{error}");
            drop(storage);
        }
    }

    #[test]
    fn a_data_dir_below_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let mut config = Config::default();
        config.storage.mode = StorageMode::Acid;
        config.storage.data_dir = Some(file.join("data"));
        let error = prepare_data_dir(&config).expect_err("not creatable");
        assert!(error.cause.contains("cannot be created"), "{error}");
        config.storage.data_dir = Some(file);
        let error = prepare_data_dir(&config).expect_err("a file");
        assert!(error.cause.contains("not a directory"), "{error}");
    }
}
