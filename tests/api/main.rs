//! The project's own HTTP API tests: each spawns the server on a real
//! socket (in-process, or the real binary for what is process-wide:
//! shutdown, metrics, tracing) and talks to it as a client would. One
//! module per area.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod append;
mod auth;
mod cors;
mod create;
mod fork;
mod http1;
mod limits;
mod live;
mod metrics;
mod otlp;
mod producer;
mod proxy;
mod read;
mod retention;
mod shutdown;
mod smuggling;
mod subscriptions;
mod tls;
mod ttl;
