//! Startup in named phases, and the diagnosis when one fails.
//!
//! `load_config → validate_config → init_telemetry → load_tls →
//! bind_listener → open_storage → serve → drain`. The listeners bind before
//! the store opens: while it recovers, `/healthz` answers `200`, `/readyz`
//! `503` (`recovering`) and stream requests `503` with `Retry-After`
//! (see `recovery`). Each phase is logged when entered (the
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
//! begins. A termination signal while the store recovers ends the process
//! with code 0 without waiting for the recovery (as safe as a crash).

mod app;
#[cfg(test)]
mod fault_tests;
mod listen;
mod phase;
mod recovery;
mod settings;
mod storage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use app::{App, load_access_control};
pub use listen::bind_listener;
pub use phase::{Phase, StartupError};
pub use storage::{open_storage, prepare_data_dir};

use crate::config::{
    self, Config, ConfigLoadOptions, ConfigProblem, LoadedConfig, ObservabilityConfig, Validation,
};
use crate::metrics;
use crate::server::termination_signal;
use crate::shutdown::Readiness;
use crate::telemetry::{self, Telemetry};
use crate::tls::{self, Acceptor, ReloadTiming, TlsSettings};
use listen::{bind, serve_metrics, serve_router};
use recovery::Opened;

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
pub async fn serve(options: &ConfigLoadOptions) -> Result<(), StartupError> {
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

async fn run(options: &ConfigLoadOptions, progress: &mut Progress) -> Result<(), StartupError> {
    progress.enter(Phase::LoadConfig);
    let loaded = config::load(options);
    progress.observability = Some(loaded.config().observability.clone());
    let validation = parsed(&loaded)?;
    progress.enter(Phase::ValidateConfig);
    let warnings = valid(validation)?;
    let config = loaded.config();

    progress.enter(Phase::InitTelemetry);
    let telemetry = telemetry::init(&config.observability).map_err(|error| {
        StartupError::new(Phase::InitTelemetry, error.to_string(), error.hint())
    })?;
    let exports_traces = telemetry.exports_traces();
    progress.telemetry = Some(telemetry);
    progress.telemetry_ready();
    let recorder = if config.observability.metrics.enabled {
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
        metrics = recorder.is_some(),
        otlp = exports_traces,
        "configuration loaded"
    );
    for warning in &warnings {
        tracing::warn!(
            phase = Phase::ValidateConfig.as_str(),
            key = warning.key.as_deref().unwrap_or_default(),
            source = warning.source.as_deref().unwrap_or_default(),
            hint = %warning.hint,
            "{}",
            warning.message
        );
    }

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
    let metrics_listener = match (recorder, &config.observability.metrics.bind_address) {
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
    // Served on the main listener unless it has one of its own.
    let scrape = recorder.filter(|_| metrics_listener.is_none());
    tracing::info!(
        phase = Phase::BindListener.as_str(),
        %address,
        transport = %config.transport.mode,
        "listening"
    );
    // One flag for every probe, from the first one on: not ready while
    // the store recovers, ready once the application serves.
    let readiness = Readiness::recovering();
    let metrics_server = metrics_listener.map(|(handle, listener)| {
        let metrics_address = listener
            .local_addr()
            .map_or_else(|_| String::new(), |a| a.to_string());
        let path = &config.observability.metrics.path;
        tracing::info!(phase = Phase::BindListener.as_str(), address = %metrics_address, %path, "metrics listening");
        serve_metrics(
            listener,
            crate::http::metrics_listener(handle, path, readiness.clone()),
        )
    });
    let draining = Arc::new(AtomicBool::new(false));
    let mut signal = Box::pin({
        let draining = Arc::clone(&draining);
        async move {
            termination_signal().await;
            draining.store(true, Ordering::Release);
            log_entered(Phase::Drain);
        }
    });

    progress.enter(Phase::OpenStorage);
    let opened = recovery::open_behind(
        config,
        listener,
        tls.as_ref(),
        &readiness,
        scrape,
        signal.as_mut(),
    )
    .await;
    let (app, listener) = match opened {
        Ok(Opened::Ready(app, listener)) => (app, listener),
        stopped_or_failed => {
            if let Some(metrics_server) = metrics_server {
                metrics_server.stop().await;
            }
            return stopped_or_failed.map(|_| ());
        }
    };

    let (router, shutdown) = (app.router(), app.shutdown_token().clone());
    progress.enter(Phase::Serve);
    let serve_options = settings::serve_options(config).with_shortcut(app.append_shortcut());
    // Installs the SIGHUP handler before the server reports ready.
    let _reloader = tls
        .as_ref()
        .map(|acceptor| acceptor.spawn_reloader(ReloadTiming::default(), shutdown.clone()));
    let served = serve_router(
        listener,
        tls,
        router,
        readiness,
        shutdown,
        signal,
        serve_options,
    )
    .await;
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
pub fn check(options: &ConfigLoadOptions) -> Result<Checked, StartupError> {
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
    options: &ConfigLoadOptions,
) -> Result<(LoadedConfig, Validation), StartupError> {
    let loaded = config::load(options);
    let validation = parsed(&loaded)?;
    Ok((loaded, validation))
}

/// Runs `load_config` and `validate_config` only (for commands that do not
/// serve, such as `export` and `import`).
///
/// # Errors
/// The first phase that fails.
pub fn load_valid(options: &ConfigLoadOptions) -> Result<Checked, StartupError> {
    let (loaded, validation) = load_parsed(options)?;
    let warnings = valid(validation)?;
    Ok(Checked { loaded, warnings })
}

/// The verdict of `load_config` on what was loaded.
fn parsed(loaded: &LoadedConfig) -> Result<Validation, StartupError> {
    loaded
        .check()
        .map_err(|problems| StartupError::config(Phase::LoadConfig, problems))
}

/// The verdict of `validate_config`: the warnings, unless a rule is broken.
fn valid(validation: Validation) -> Result<Vec<ConfigProblem>, StartupError> {
    if validation.errors.is_empty() {
        Ok(validation.warnings)
    } else {
        Err(StartupError::config(
            Phase::ValidateConfig,
            validation.errors,
        ))
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
