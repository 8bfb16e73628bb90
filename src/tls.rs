//! TLS termination: the PEM material ([`TlsSettings`], [`TlsFiles`]), its
//! validation and the rustls server configuration built from it
//! (`material`), the handshake with its metrics ([`Acceptor`]), and hot
//! reload of the material without dropping connections (`reload`).
//!
//! # Layout
//! - this file: the settings, PEM file reading, [`TlsError`].
//! - `material`: parsing and checking the certificate, key and client CA;
//!   building the `rustls` [`ServerConfig`](rustls::ServerConfig).
//! - `acceptor`: [`Acceptor`], the handle new connections take their
//!   configuration from, and the handshake.
//! - `reload`: the validated swap, triggered by `crate::watch`.
//!
//! # Metrics
//! Recorded through the `metrics` facade (a no-op until a recorder is
//! installed; names in [`crate::metrics::name`]): `durable_streams_tls_handshakes_total`,
//! `durable_streams_tls_handshake_failures_total{reason}`,
//! `durable_streams_tls_reloads_total{outcome="success"|"failure"}` and
//! `durable_streams_tls_certificate_not_after_timestamp_seconds`.

mod acceptor;
mod material;
mod reload;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use acceptor::{Acceptor, HandshakeError};
pub use material::CertificateInfo;
pub use reload::{ReloadOutcome, ReloadStats, ReloadTiming};

use crate::config::{AlpnProtocol, HttpVersion, TlsVersion, TransportConfig, TransportMode};

/// Larger files are refused: no certificate bundle is this big, and a path
/// such as `/dev/zero` must not hang the start.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The kind of PEM block a file must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    /// `CERTIFICATE` blocks (server chain, client CA bundle).
    Certificate,
    /// A `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block.
    PrivateKey,
}

impl PemKind {
    fn describe(self) -> &'static str {
        match self {
            PemKind::Certificate => "a PEM certificate (-----BEGIN CERTIFICATE-----)",
            PemKind::PrivateKey => "a PEM private key (-----BEGIN PRIVATE KEY-----)",
        }
    }

    fn accepts(self, label: &str) -> bool {
        match self {
            PemKind::Certificate => label == "CERTIFICATE",
            PemKind::PrivateKey => {
                matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY")
            }
        }
    }
}

/// A PEM file read from disk.
#[derive(Clone, Debug)]
pub struct PemFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub pem: Vec<u8>,
}

/// The files a TLS listener needs.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate chain.
    pub cert: PemFile,
    /// Server private key.
    pub key: PemFile,
    /// Client CA bundle (`mtls` only).
    pub client_ca: Option<PemFile>,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A required path is not configured.
    #[error("`{key}` is not set but transport.mode = \"{mode}\" needs it")]
    NotConfigured {
        /// The dotted key.
        key: &'static str,
        /// The transport mode.
        mode: TransportMode,
    },
    /// The file cannot be read.
    #[error("`{key}` = {path:?} cannot be read: {reason}")]
    Unreadable {
        /// The dotted key.
        key: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// The file holds no PEM block of the expected kind.
    #[error("`{key}` = {path:?} does not hold {}{found}", kind.describe())]
    WrongContent {
        /// The dotted key.
        key: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What was expected.
        kind: PemKind,
        /// What was found instead, as ` (found: …)`, or empty.
        found: String,
    },
    /// A PEM block of the right kind does not parse.
    #[error("`{key}` = {path:?} {what} that does not parse: {reason}")]
    Unparsable {
        /// The dotted key.
        key: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What does not parse (`holds a certificate`, `holds certificate 2`).
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The private key is of a kind the TLS library cannot sign with.
    #[error("`transport.tls.key_path` = {path:?} holds a key that cannot be used: {reason}")]
    UnsupportedKey {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key in `transport.tls.key_path` = {key_path:?} does not match the \
         certificate in `transport.tls.cert_path` = {cert_path:?}"
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// A certificate of the chain is past its notAfter time.
    #[error("`transport.tls.cert_path` = {path:?}: {which} expired at {not_after}")]
    Expired {
        /// The configured path.
        path: PathBuf,
        /// `the certificate` or `chain certificate N`.
        which: String,
        /// Its notAfter time (RFC 3339).
        not_after: String,
    },
    /// The client CA bundle holds no usable CA.
    #[error("`transport.tls.client_ca_path` = {path:?} cannot verify clients: {reason}")]
    ClientCa {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS library refused the settings.
    #[error("the TLS configuration cannot be built: {0}")]
    Config(String),
}

impl TlsError {
    /// What the operator can do about it.
    pub fn hint(&self) -> String {
        match self {
            TlsError::NotConfigured { key, .. } => {
                format!("set {} to a PEM file", crate::config::env_var(key))
            }
            TlsError::Unreadable { key, .. } => format!(
                "check that the file exists and the server's user may read it, or point {} \
                 elsewhere",
                crate::config::env_var(key)
            ),
            TlsError::WrongContent { key, kind, .. } => match kind {
                PemKind::PrivateKey => format!(
                    "point {} at an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    crate::config::env_var(key)
                ),
                PemKind::Certificate => format!(
                    "point {} at a PEM certificate file",
                    crate::config::env_var(key)
                ),
            },
            TlsError::Unparsable { key, .. } => format!(
                "the file is damaged or not X.509/PKCS#8: regenerate it, or point {} at a good \
                 one",
                crate::config::env_var(key)
            ),
            TlsError::UnsupportedKey { .. } => {
                "use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key".into()
            }
            TlsError::KeyMismatch { .. } => {
                "install the key that belongs to this certificate (in a Kubernetes TLS secret, \
                 tls.key next to tls.crt), or the certificate issued for this key"
                    .into()
            }
            TlsError::Expired { .. } => {
                "renew the certificate (the server reloads it without a restart)".into()
            }
            TlsError::ClientCa { .. } => {
                "point DS_TRANSPORT__TLS__CLIENT_CA_PATH at a PEM bundle of the CA certificates \
                 that sign client certificates"
                    .into()
            }
            TlsError::Config(_) => {
                "check transport.tls.min_version, max_version and alpn_protocols".into()
            }
        }
    }
}

/// What a TLS listener is configured with: `transport.tls` resolved for
/// `tls` or `mtls` mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `tls` or `mtls`.
    pub mode: TransportMode,
    /// `transport.tls.cert_path`.
    pub cert_path: PathBuf,
    /// `transport.tls.key_path`.
    pub key_path: PathBuf,
    /// `transport.tls.client_ca_path` (`mtls` only).
    pub client_ca_path: Option<PathBuf>,
    /// Oldest TLS version accepted.
    pub min_version: TlsVersion,
    /// Newest TLS version accepted.
    pub max_version: TlsVersion,
    /// ALPN identifiers offered, in preference order.
    pub alpn: Vec<AlpnProtocol>,
    /// HTTP versions served.
    pub http_versions: Vec<HttpVersion>,
}

impl TlsSettings {
    /// The settings `transport` describes; `None` in `http` mode.
    ///
    /// # Errors
    /// When a path the mode needs is not set.
    pub fn from_config(transport: &TransportConfig) -> Result<Option<Self>, TlsError> {
        let mode = transport.mode;
        if !mode.is_tls() {
            return Ok(None);
        }
        let tls = &transport.tls;
        let required = |key: &'static str, path: Option<&Path>| {
            path.filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .ok_or(TlsError::NotConfigured { key, mode })
        };
        let cert_path = required("transport.tls.cert_path", tls.cert_path.as_deref())?;
        let key_path = required("transport.tls.key_path", tls.key_path.as_deref())?;
        let client_ca_path = match mode {
            TransportMode::Mtls => Some(required(
                "transport.tls.client_ca_path",
                tls.client_ca_path.as_deref(),
            )?),
            _ => None,
        };
        let http_versions = transport.http.versions.clone();
        let alpn = if tls.alpn_protocols.is_empty() {
            // h2 first: clients that speak it get multiplexing.
            let mut derived = Vec::new();
            if http_versions.contains(&HttpVersion::Http2) {
                derived.push(AlpnProtocol::H2);
            }
            if http_versions.contains(&HttpVersion::Http1) {
                derived.push(AlpnProtocol::Http11);
            }
            derived
        } else {
            tls.alpn_protocols.clone()
        };
        Ok(Some(Self {
            mode,
            cert_path,
            key_path,
            client_ca_path,
            min_version: tls.min_version,
            max_version: tls.max_version,
            alpn,
            http_versions,
        }))
    }

    /// Reads the certificate, key and client CA, checking that each holds
    /// PEM blocks of the right kind.
    ///
    /// # Errors
    /// The first file that is unreadable or without a PEM block of the right
    /// kind.
    pub fn read_files(&self) -> Result<TlsFiles, TlsError> {
        let cert = read_pem(
            "transport.tls.cert_path",
            &self.cert_path,
            PemKind::Certificate,
        )?;
        let key = read_pem(
            "transport.tls.key_path",
            &self.key_path,
            PemKind::PrivateKey,
        )?;
        let client_ca = match &self.client_ca_path {
            Some(path) => Some(read_pem(
                "transport.tls.client_ca_path",
                path,
                PemKind::Certificate,
            )?),
            None => None,
        };
        Ok(TlsFiles {
            cert,
            key,
            client_ca,
        })
    }

    /// The directories holding the material. Reloads watch these rather
    /// than the files: Kubernetes updates a mounted secret by swapping a
    /// `..data` symlink inside the directory, which a watch on the old file
    /// never sees.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let files = [Some(&self.cert_path), Some(&self.key_path)]
            .into_iter()
            .chain([self.client_ca_path.as_ref()]);
        crate::watch::parent_dirs(files.flatten().map(PathBuf::as_path))
    }
}

fn read_pem(key: &'static str, path: &Path, kind: PemKind) -> Result<PemFile, TlsError> {
    let unreadable = |reason: String| TlsError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| unreadable(e.to_string()))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(unreadable("it is larger than 1 MiB".into()));
    }
    let labels = pem_labels(&pem);
    if labels.iter().any(|label| kind.accepts(label)) {
        return Ok(PemFile {
            path: path.to_path_buf(),
            pem,
        });
    }
    let found = if labels.is_empty() {
        " (found no PEM block)".to_owned()
    } else {
        format!(" (found: {})", labels.join(", "))
    };
    Err(TlsError::WrongContent {
        key,
        path: path.to_path_buf(),
        kind,
        found,
    })
}

/// Labels of the complete PEM blocks in `pem`, in order.
fn pem_labels(pem: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(pem);
    let mut labels = Vec::new();
    let mut open: Option<&str> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            open = Some(label);
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            if open == Some(label) {
                labels.push(label.to_owned());
            }
            open = None;
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_complete_blocks_only() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
                    -----BEGIN EC PRIVATE KEY-----\nAAAA\n";
        assert_eq!(pem_labels(pem), vec!["CERTIFICATE".to_owned()]);
    }

    #[test]
    fn kinds_accept_their_labels() {
        assert!(PemKind::PrivateKey.accepts("PRIVATE KEY"));
        assert!(PemKind::PrivateKey.accepts("RSA PRIVATE KEY"));
        assert!(!PemKind::PrivateKey.accepts("ENCRYPTED PRIVATE KEY"));
        assert!(!PemKind::Certificate.accepts("PRIVATE KEY"));
    }
}
