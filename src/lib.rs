//! A server for the Durable Streams protocol: append-only byte and JSON
//! streams over plain HTTP, read from any offset, followed live by long-poll
//! or Server-Sent Events.
//!
//! # Embedding
//! ```no_run
//! use std::sync::Arc;
//! use durable_streams_server::{Config, InMemoryStorage, build_router};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::default();
//! let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
//! let app = axum::Router::new().nest("/streams", build_router(storage, &config));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`cli`]: the command line (`serve`, `check-config`, `print-config`, `export`, `import`).
//! - [`startup`]: the startup phases, their diagnostics and exit codes, and
//!   [`App`], the composition root that builds every part of a server.
//! - [`router`]: [`build_router`] and [`build_router_with_ready`] for embedders.
//! - [`config`]: the settings tree, its layered loading, profiles and validation.
//! - `telemetry`: the log subscriber (text or JSON) and OTLP trace export.
//! - [`metrics`]: the metric names, the Prometheus recorder and `/metrics`.
//! - [`tls`]: TLS termination: PEM material, validation, handshakes, hot reload.
//! - [`proxy`]: trust in reverse proxies, identity handoff, the per-request client context.
//! - [`client`]: what a request's extensions say about its client (address, scheme, identity).
//! - [`auth`]: access control: tokens, API keys and identities mapped to grants on paths.
//! - [`protocol`]: pure protocol logic (offsets, headers, producers, JSON, SSE, cursors).
//! - [`engine`]: the stream rules over any backend, and the live-read signals.
//! - [`storage`]: the [`Storage`] trait and its backends.
//! - `http`: the routes, the handlers, live reads, health and CORS.
//! - [`subscriptions`]: the reserved `__ds` webhook and pull-wake APIs (public: the
//!   configuration model, its errors and patterns, for fuzzing and access control).
//! - [`server`]: serving a bound listener (plain or TLS) and draining on shutdown.
//! - [`shutdown`]: [`ShutdownToken`] and [`Readiness`].
//! - `transfer`: export and import of streams (backup, migration).
//! - `watch`: when to reload files (directory events, polling, SIGHUP).
//! - `clock`: the wall clock in the units the server stores and sends.

#[macro_use]
mod keyword;

pub mod auth;
pub mod cli;
pub mod client;
mod clock;
pub mod config;
pub mod engine;
mod http;
pub mod metrics;
pub mod protocol;
pub mod proxy;
mod redact;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod subscriptions;
mod telemetry;
pub mod tls;
mod transfer;
mod watch;

pub use config::{
    Config, ConfigError, ConfigLoadOptions, DEFAULT_STREAM_BASE_PATH, DeploymentProfile,
    LoadOptions, StorageMode,
};
pub use startup::{App, Phase, StartupError};

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const BUILD_COMMIT: &str = env!("DS_BUILD_COMMIT");

/// The version shown by `--version` and logged at start: the crate version
/// and the git commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DS_BUILD_COMMIT"),
    ")"
);
pub use client::ClientIdentity;
pub use engine::{Engine, EngineLimits};
pub use router::{build_router, build_router_with_ready};
pub use shutdown::{Readiness, ShutdownToken};
pub use storage::{AcidStorage, FileStorage, InMemoryStorage, Storage};

/// The README's Rust blocks, compiled as doc tests: the "Moving from 0.3.0"
/// section stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
