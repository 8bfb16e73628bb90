//! The project's own HTTP API tests: each spawns the server on a real
//! socket (in-process, or the real binary for shutdown) and talks to it as
//! a client would. One module per area of the protocol.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod append;
mod cors;
mod create;
mod fork;
mod limits;
mod live;
mod producer;
mod proxy;
mod read;
mod shutdown;
mod subscriptions;
mod tls;
mod ttl;
