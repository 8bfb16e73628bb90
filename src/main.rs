//! The `durable-streams-server` binary: runs the startup phases and exits
//! with the failing phase's code.

use std::process::ExitCode;

use durable_streams_server::{LoadOptions, startup};

#[tokio::main]
async fn main() -> ExitCode {
    match startup::serve(&LoadOptions::default()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}
