//! The process-wide `tracing` subscriber: text or JSON lines on standard
//! output, filtered by `observability.rust_log` (which `RUST_LOG` overrides
//! while the configuration is loaded). Standard error is left to the
//! one-line startup diagnosis.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, ObservabilityConfig};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `observability.rust_log` is not a valid filter.
    #[error("`observability.rust_log` = {filter:?} is not a valid log filter: {reason}")]
    Filter {
        /// The filter given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global subscriber was installed already.
    #[error("a log subscriber is already installed: {0}")]
    Install(String),
}

impl TelemetryError {
    /// What the operator can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            TelemetryError::Filter { .. } => {
                "use tracing filter directives such as `info` or `warn,durable_streams_server=debug`"
            }
            TelemetryError::Install(_) => {
                "install telemetry once per process; embedders that bring their own subscriber \
                 skip this call"
            }
        }
    }
}

/// Installs the global subscriber described by `config`.
///
/// # Errors
/// When the filter does not parse or a subscriber is installed already.
pub fn init(config: &ObservabilityConfig) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&config.rust_log).map_err(|error| TelemetryError::Filter {
        filter: config.rust_log.clone(),
        reason: error.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let installed = match config.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|error| TelemetryError::Install(error.to_string()))
}
