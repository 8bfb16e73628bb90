//! Test support shared by the test binaries.

pub mod metrics_probe;
pub mod pki;
pub mod postgres;
pub mod tls_client;
