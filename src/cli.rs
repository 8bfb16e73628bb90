//! The command line: `serve` (the default), `check-config` and
//! `print-config`, with the options that choose the configuration.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigDir, ConfigLoadOptions, StorageMode};
use crate::engine::{Engine, EngineLimits};
use crate::startup::{self, Phase, StartupError};
use crate::storage::{AcidStorage, FileStorage, Storage};
use crate::transfer::{self, OnConflict, StderrProgress, StreamFilter};

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
  5 init_telemetry, 6 open_storage, 7 load_tls, 8 bind_listener, 9 serve, 10 drain,
  11 transfer (export/import).
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
    pub fn load_options(&self) -> ConfigLoadOptions {
        ConfigLoadOptions {
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
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
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
    /// Write streams of the configured durable store as a JSON Lines export (works beside a running server)
    Export {
        /// Write to this file instead of standard output
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only this stream path, or paths starting with a prefix ending in `*`; repeatable
        #[arg(long = "stream", value_name = "PATH")]
        streams: Vec<String>,
    },
    /// Load an export into the configured durable store (the server must be stopped)
    Import {
        /// The export file, or `-` for standard input
        #[arg(value_name = "FILE")]
        input: PathBuf,
        /// Only this stream path, or paths starting with a prefix ending in `*`; repeatable
        #[arg(long = "stream", value_name = "PATH")]
        streams: Vec<String>,
        /// What to do with a stream that already exists: skip, fail, or replace (validated first)
        #[arg(long, value_name = "POLICY", default_value = "fail", value_parser = parse_on_conflict)]
        on_conflict: OnConflict,
    },
}

fn parse_on_conflict(value: &str) -> Result<OnConflict, String> {
    value.parse()
}

/// Runs the command and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let options = cli.config.load_options();
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => startup::serve(&options).await,
        Command::CheckConfig => check_config(&options),
        Command::PrintConfig { sources } => print_config(&options, sources),
        Command::Export { output, streams } => export(&options, output, streams).await,
        Command::Import {
            input,
            streams,
            on_conflict,
        } => import(&options, &input, streams, on_conflict).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// The configured durable store's directory; memory mode has nothing to transfer.
fn durable_dir(config: &config::Config) -> Result<PathBuf, StartupError> {
    let hint =
        "select the store with --profile/--config or DS_STORAGE__MODE and DS_STORAGE__DATA_DIR";
    if config.storage.mode == StorageMode::Memory {
        return Err(StartupError::new(
            Phase::OpenStorage,
            "storage.mode is memory, which keeps nothing on disk to export or import into",
            hint,
        ));
    }
    config
        .storage
        .data_dir
        .clone()
        .ok_or_else(|| StartupError::new(Phase::OpenStorage, "storage.data_dir is not set", hint))
}

fn storage_failure(error: crate::storage::StorageError) -> StartupError {
    let hint = match &error {
        crate::storage::StorageError::Locked { .. } => {
            "stop the server using this directory before importing"
        }
        _ => "check storage.mode and storage.data_dir (or storage.postgres.url)",
    };
    StartupError::new(Phase::OpenStorage, error.to_string(), hint)
}

fn transfer_failure(error: transfer::TransferError) -> StartupError {
    let hint = match &error {
        transfer::TransferError::Conflict(_) => "choose --on-conflict skip or replace",
        transfer::TransferError::Format { .. } => {
            "the export file is damaged or not an export; streams before it were imported"
        }
        _ => "streams before the failing one were transferred; fix the cause and run again",
    };
    StartupError::new(Phase::Transfer, error.to_string(), hint)
}

async fn export(
    options: &ConfigLoadOptions,
    output: Option<PathBuf>,
    streams: Vec<String>,
) -> Result<(), StartupError> {
    let config = startup::load_valid(options)?.loaded.into_config();
    // Read-only: no lock, so a running server keeps serving (a live backup);
    // for postgres simply another connection.
    let storage: std::sync::Arc<dyn Storage> = match config.storage.mode {
        StorageMode::Postgres => std::sync::Arc::new(
            crate::storage::open_postgres(
                &config.storage.postgres,
                config.storage.chunk_bytes,
                true,
            )
            .map_err(storage_failure)?,
        ),
        StorageMode::Acid => std::sync::Arc::new(
            AcidStorage::open_read_only(&durable_dir(&config)?).map_err(storage_failure)?,
        ),
        _ => std::sync::Arc::new(
            FileStorage::open_read_only(&durable_dir(&config)?).map_err(storage_failure)?,
        ),
    };
    let engine = Engine::new(storage, EngineLimits::from_config(&config));
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                StartupError::new(
                    Phase::Transfer,
                    format!("cannot create {}: {e}", path.display()),
                    "choose a writable path",
                )
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = StderrProgress::default();
    let summary = transfer::export(
        &engine,
        &StreamFilter::new(streams),
        &mut out,
        &mut progress,
    )
    .await
    .map_err(transfer_failure)?;
    drop(progress);
    eprintln!("exported {} streams", summary.streams);
    Ok(())
}

async fn import(
    options: &ConfigLoadOptions,
    input: &std::path::Path,
    streams: Vec<String>,
    on_conflict: OnConflict,
) -> Result<(), StartupError> {
    let config = startup::load_valid(options)?.loaded.into_config();
    if config.storage.mode != StorageMode::Postgres {
        durable_dir(&config)?;
    }
    let storage = startup::open_storage(&config)?;
    let engine = Engine::new(storage, EngineLimits::from_config(&config));
    let mut reader: Box<dyn std::io::BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin().lock()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).map_err(|e| {
                StartupError::new(
                    Phase::Transfer,
                    format!("cannot open {}: {e}", input.display()),
                    "give an export file",
                )
            })?,
        ))
    };
    let mut progress = StderrProgress::default();
    let summary = transfer::import(
        &engine,
        &mut reader,
        &StreamFilter::new(streams),
        on_conflict,
        &mut progress,
    )
    .await
    .map_err(transfer_failure)?;
    drop(progress);
    eprintln!("imported {} streams", summary.streams);
    Ok(())
}

fn check_config(options: &ConfigLoadOptions) -> Result<(), StartupError> {
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

fn print_config(options: &ConfigLoadOptions, sources: bool) -> Result<(), StartupError> {
    let (loaded, validation) = startup::load_parsed(options)?;
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
