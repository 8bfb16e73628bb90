//! Test support shared by the test binaries.

pub mod jwt;
pub mod metrics_probe;
pub mod pki;
pub mod postgres;
pub mod replica;
pub mod tls_client;
