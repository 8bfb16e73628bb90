//! The startup phases, their exit codes, and [`StartupError`]: the one
//! line that names the failing phase, the cause and the fix.

use std::fmt;

use crate::config::{ConfigError, ConfigProblem};

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
    /// up to 10 for `drain` (see the [`startup`](crate::startup) module docs).
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
}
