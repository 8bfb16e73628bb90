//! TLS material. For now this checks that the configured PEM files exist,
//! are readable and hold a PEM block of the right kind, so a bad path fails
//! at startup with the key and file named; the rustls listener (certificate
//! parsing, key/certificate matching, hot reload) replaces it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::TransportConfig;
use crate::config::TransportMode;

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
        }
    }
}

/// Reads and checks the PEM files that `transport` names; `None` in `http`
/// mode.
///
/// # Errors
/// The first file that is missing from the configuration, unreadable, or
/// without a PEM block of the right kind.
pub fn load_pem_files(transport: &TransportConfig) -> Result<Option<TlsFiles>, TlsError> {
    let mode = transport.mode;
    if !mode.is_tls() {
        return Ok(None);
    }
    let tls = &transport.tls;
    let cert = read_pem(
        "transport.tls.cert_path",
        tls.cert_path.as_deref(),
        PemKind::Certificate,
        mode,
    )?;
    let key = read_pem(
        "transport.tls.key_path",
        tls.key_path.as_deref(),
        PemKind::PrivateKey,
        mode,
    )?;
    let client_ca = match mode {
        TransportMode::Mtls => Some(read_pem(
            "transport.tls.client_ca_path",
            tls.client_ca_path.as_deref(),
            PemKind::Certificate,
            mode,
        )?),
        _ => None,
    };
    Ok(Some(TlsFiles {
        cert,
        key,
        client_ca,
    }))
}

fn read_pem(
    key: &'static str,
    path: Option<&Path>,
    kind: PemKind,
    mode: TransportMode,
) -> Result<PemFile, TlsError> {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Err(TlsError::NotConfigured { key, mode });
    };
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
