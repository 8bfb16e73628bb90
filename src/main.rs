//! The `durable-streams-server` binary: parses the command line and hands
//! over to [`durable_streams_server::cli`], which runs the startup phases.

use std::process::ExitCode;

use clap::Parser;
use durable_streams_server::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    cli::run(Cli::parse()).await
}
