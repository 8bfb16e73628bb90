//! The `durable-streams-server` binary: load config, start logging, open
//! storage, bind, serve until SIGTERM/SIGINT, drain.

use std::process::ExitCode;
use std::time::Duration;

use durable_streams_server::server::{DrainTiming, serve, termination_signal};
use durable_streams_server::{Config, ShutdownToken, build_router_with_ready};
use tracing_subscriber::EnvFilter;

/// Exit codes per startup phase, so a crash loop tells its phase.
mod exit {
    pub const CONFIG: u8 = 2;
    pub const STORAGE: u8 = 4;
    pub const BIND: u8 = 6;
    pub const SERVE: u8 = 7;
}

fn fail(phase: &str, cause: impl std::fmt::Display, hint: &str, code: u8) -> ExitCode {
    eprintln!("startup failed in {phase}: {cause}; hint: {hint}");
    tracing::error!(phase, %cause, hint, "startup failed");
    ExitCode::from(code)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            return fail(
                "load_config",
                error,
                "check the DS_* environment variables",
                exit::CONFIG,
            );
        }
    };
    let filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| config.observability.rust_log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();

    tracing::info!(phase = "open_storage", mode = ?config.storage.mode, "opening storage");
    let storage = match durable_streams_server::storage::open(&config) {
        Ok(storage) => storage,
        Err(error) => {
            return fail(
                "open_storage",
                error,
                "check storage.mode and storage.data_dir (DS_STORAGE__MODE, DS_STORAGE__DATA_DIR)",
                exit::STORAGE,
            );
        }
    };

    let shutdown = ShutdownToken::new();
    let (router, readiness) = build_router_with_ready(storage, &config, shutdown.clone());
    tracing::info!(phase = "bind_listener", address = %config.server.bind_address, "binding");
    let listener = match tokio::net::TcpListener::bind(&config.server.bind_address).await {
        Ok(listener) => listener,
        Err(error) => {
            return fail(
                "bind_listener",
                format!("cannot listen on {}: {error}", config.server.bind_address),
                "choose a free address with DS_SERVER__BIND_ADDRESS",
                exit::BIND,
            );
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(phase = "serve", address = %local, "listening");
    let timing = DrainTiming {
        delay: Duration::from_secs(config.server.shutdown_delay_secs),
        timeout: Duration::from_secs(config.server.drain_timeout_secs),
    };
    match serve(
        listener,
        router,
        readiness,
        shutdown,
        termination_signal(),
        timing,
    )
    .await
    {
        Ok(()) => {
            tracing::info!(phase = "drain", "stopped");
            ExitCode::SUCCESS
        }
        Err(error) => fail("serve", error, "see the log above", exit::SERVE),
    }
}
