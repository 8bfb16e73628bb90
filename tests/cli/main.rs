//! The real binary, spawned as a child process in a temporary working
//! directory with an empty environment: startup failures (exit code and the
//! one-line diagnosis), the subcommands, and a clean serve-and-drain.

mod auth;
mod backup;
mod commands;
#[path = "../common/mod.rs"]
mod common;
mod failures;
mod helpers;
mod postgres;
mod recovery;
mod serve;
mod tls;
mod transfer;
