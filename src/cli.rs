//! The command line: `serve` (the default), `check-config` and
//! `print-config`, with the options that choose the configuration.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigDir, LoadOptions};
use crate::startup::{self, Phase, StartupError};

const ABOUT: &str = "A server for the Durable Streams protocol";

const AFTER_HELP: &str = "\
Configuration layers, later ones winning:
  built-in defaults, built-in profile defaults, <config-dir>/default.toml,
  <config-dir>/<profile>.toml, <config-dir>/local.toml, --config <FILE>,
  DS_* environment variables, RUST_LOG (for observability.rust_log).
Environment variables name keys with `__` between levels:
  transport.tls.cert_path <-> DS_TRANSPORT__TLS__CERT_PATH; lists are comma lists.
Profiles: default, dev, prod, prod-tls, prod-mtls, or any <config-dir>/<name>.toml.

Exit codes: 0 ok, 2 bad command line, 3 load_config, 4 validate_config,
  5 init_telemetry, 6 open_storage, 7 load_tls, 8 bind_listener, 9 serve, 10 drain.
A failed start prints one line: startup failed in <phase>: <cause>; hint: <fix>";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "durable-streams-server",
    version = crate::VERSION,
    about = ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Which configuration to load.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Options that choose the configuration; accepted before or after the
/// subcommand.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The deployment profile (`--profile`, `DS_PROFILE`).
    #[arg(
        help = "Deployment profile: default, dev, prod, prod-tls, prod-mtls, or a custom \
                <config-dir>/<NAME>.toml",
        long,
        short = 'p',
        global = true,
        env = "DS_PROFILE",
        value_name = "NAME",
        default_value = "default"
    )]
    pub profile: String,
    /// An extra TOML file (`--config`).
    #[arg(
        help = "Extra TOML file applied after <config-dir>/local.toml; it must exist",
        long,
        short = 'c',
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// The configuration directory (`--config-dir`, `DS_CONFIG_DIR`).
    #[arg(
        help = "Directory with default.toml, <profile>.toml and local.toml \
                [default: ./config, used if present]",
        long,
        global = true,
        env = "DS_CONFIG_DIR",
        value_name = "DIR"
    )]
    pub config_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// The loading options these arguments describe.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            profile: self.profile.clone(),
            config_dir: self
                .config_dir
                .clone()
                .map_or(ConfigDir::Default, ConfigDir::Path),
            config_file: self.config.clone(),
        }
    }
}

/// The subcommands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the server (the default)
    Serve,
    /// Validate the configuration and the TLS files, then exit (0, or the failing phase's code)
    CheckConfig,
    /// Print the effective configuration as TOML (secrets redacted)
    PrintConfig {
        /// Annotate each value with the layer that set it (file and line, or environment variable)
        #[arg(long)]
        sources: bool,
    },
}

/// Runs the command and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let options = cli.config.load_options();
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => startup::serve(&options).await,
        Command::CheckConfig => check_config(&options),
        Command::PrintConfig { sources } => print_config(&options, sources),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn check_config(options: &LoadOptions) -> Result<(), StartupError> {
    let checked = startup::check(options)?;
    let mut stderr = std::io::stderr().lock();
    for warning in &checked.warnings {
        let _ = writeln!(stderr, "warning: {warning}; hint: {}", warning.hint);
    }
    let _ = writeln!(
        std::io::stdout().lock(),
        "configuration ok: profile {}; layers: {}",
        checked.loaded.profile(),
        checked.loaded.layers().join(", ")
    );
    Ok(())
}

fn print_config(options: &LoadOptions, sources: bool) -> Result<(), StartupError> {
    let loaded = config::load(options);
    let validation = loaded.validate();
    if !loaded.problems().is_empty() {
        let mut problems = loaded.problems().to_vec();
        problems.extend(validation.errors);
        return Err(StartupError::config(Phase::LoadConfig, problems));
    }
    // Printed even when invalid, since that is when one wants to see it.
    let _ = std::io::stdout()
        .lock()
        .write_all(config::render::render(&loaded, sources).as_bytes());
    if validation.errors.is_empty() {
        Ok(())
    } else {
        Err(StartupError::config(
            Phase::ValidateConfig,
            validation.errors,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "ds",
            "print-config",
            "--sources",
            "--profile",
            "dev",
            "--config-dir",
            "etc",
        ])
        .expect("valid");
        assert_eq!(cli.command, Some(Command::PrintConfig { sources: true }));
        let options = cli.config.load_options();
        assert_eq!(options.profile, "dev");
        assert_eq!(options.config_dir, ConfigDir::Path("etc".into()));
        let cli = Cli::try_parse_from(["ds", "-c", "x.toml"]).expect("valid");
        assert_eq!(cli.command, None);
        assert_eq!(cli.config.config, Some(PathBuf::from("x.toml")));
    }
}
