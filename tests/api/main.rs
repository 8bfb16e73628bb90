//! The project's own HTTP API tests: each spawns the server on a real
//! socket (in-process, or the real binary for shutdown) and talks to it as
//! a client would. One module per area of the protocol.

mod helpers;

mod append;
mod cors;
mod create;
mod fork;
mod limits;
mod live;
mod producer;
mod read;
mod shutdown;
mod ttl;
