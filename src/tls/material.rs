//! Parsing and checking the PEM material, and building the `rustls`
//! server configuration from it. Nothing here touches the disk: the files
//! arrive as bytes ([`TlsFiles`]), so startup, reloads and tests share one
//! path.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{PemFile, TlsError, TlsFiles, TlsSettings};
use crate::client::ClientIdentity;
use crate::config::{TlsVersion, TransportMode};

/// What the serving certificate says about itself, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject distinguished name.
    pub subject: String,
    /// The serial number, as colon-separated hex bytes.
    pub serial: String,
    /// notBefore, in Unix seconds.
    pub not_before: i64,
    /// notAfter, in Unix seconds.
    pub not_after: i64,
    /// The DNS subject alternative names.
    pub dns_names: Vec<String>,
}

impl CertificateInfo {
    /// notAfter as RFC 3339.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

fn rfc3339(unix: i64) -> String {
    crate::clock::rfc3339_secs(unix).unwrap_or_else(|| format!("@{unix}"))
}

/// A validated configuration, ready to take handshakes.
pub(crate) struct Material {
    pub config: Arc<ServerConfig>,
    pub certificate: CertificateInfo,
}

/// The crypto provider: `ring`, which builds without a C toolchain for
/// assembly beyond `cc` and keeps the build lean.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks `files` against each other and builds the server configuration:
/// the chain parses and no certificate in it is expired at `now` (Unix
/// seconds), the key is usable and belongs to the leaf certificate, the
/// client CA bundle (mTLS) parses into at least one trust anchor.
///
/// # Errors
/// The first check that fails.
pub(crate) fn build(
    settings: &TlsSettings,
    files: &TlsFiles,
    now: i64,
) -> Result<Material, TlsError> {
    let chain = certificates("transport.tls.cert_path", &files.cert)?;
    let certificate = check_chain(&files.cert, &chain, now)?;
    let key =
        PrivateKeyDer::from_pem_slice(&files.key.pem).map_err(|error| TlsError::Unparsable {
            key: "transport.tls.key_path",
            path: files.key.path.clone(),
            what: "holds a private key".into(),
            reason: error.to_string(),
        })?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::UnsupportedKey {
            path: files.key.path.clone(),
            reason: error.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `ring` keys always expose their public half; `Unknown` cannot
        // happen with it, and would not prove a mismatch anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert_path: files.cert.path.clone(),
                key_path: files.key.path.clone(),
            });
        }
        Err(error) => {
            return Err(TlsError::Unparsable {
                key: "transport.tls.cert_path",
                path: files.cert.path.clone(),
                what: "holds a certificate".into(),
                reason: error.to_string(),
            });
        }
    }

    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&protocol_versions(
            settings.min_version,
            settings.max_version,
        ))
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = match (&settings.mode, &files.client_ca) {
        (TransportMode::Mtls, Some(ca)) => {
            builder.with_client_cert_verifier(client_verifier(ca, provider)?)
        }
        (TransportMode::Mtls, None) => {
            return Err(TlsError::NotConfigured {
                key: "transport.tls.client_ca_path",
                mode: TransportMode::Mtls,
            });
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|protocol| protocol.as_str().as_bytes().to_vec())
        .collect();
    Ok(Material {
        config: Arc::new(config),
        certificate,
    })
}

/// The versions between `min` and `max`, both included.
fn protocol_versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static SupportedProtocolVersion> {
    [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect()
}

fn certificates(
    key: &'static str,
    file: &PemFile,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&file.pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Unparsable {
            key,
            path: file.path.clone(),
            what: "holds a PEM block".into(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Unparsable {
            key,
            path: file.path.clone(),
            what: "holds a certificate block".into(),
            reason: "no certificate could be decoded".into(),
        });
    }
    Ok(chain)
}

fn parse<'a>(
    key: &'static str,
    file: &PemFile,
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, TlsError> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, certificate)| certificate)
        .map_err(|error| TlsError::Unparsable {
            key,
            path: file.path.clone(),
            what: if index == 0 {
                "holds a certificate".into()
            } else {
                format!("holds certificate {} of its bundle", index + 1)
            },
            reason: error.to_string(),
        })
}

/// Every certificate of the chain parses and none is expired; returns what
/// the leaf says about itself.
fn check_chain(
    file: &PemFile,
    chain: &[CertificateDer<'static>],
    now: i64,
) -> Result<CertificateInfo, TlsError> {
    let mut leaf = None;
    for (index, der) in chain.iter().enumerate() {
        let certificate = parse("transport.tls.cert_path", file, index, der)?;
        let not_after = certificate.validity().not_after.timestamp();
        if not_after < now {
            return Err(TlsError::Expired {
                path: file.path.clone(),
                which: if index == 0 {
                    "the certificate".into()
                } else {
                    format!("chain certificate {}", index + 1)
                },
                not_after: rfc3339(not_after),
            });
        }
        if index == 0 {
            let (_, dns_names) = names(&certificate);
            leaf = Some(CertificateInfo {
                subject: certificate.subject().to_string(),
                serial: certificate.raw_serial_as_string(),
                not_before: certificate.validity().not_before.timestamp(),
                not_after,
                dns_names: dns_names
                    .iter()
                    .filter_map(|name| name.strip_prefix("DNS:"))
                    .map(str::to_owned)
                    .collect(),
            });
        }
    }
    // `certificates` never returns an empty chain; say so if it ever does.
    leaf.ok_or_else(|| TlsError::Unparsable {
        key: "transport.tls.cert_path",
        path: file.path.clone(),
        what: "holds a certificate block".into(),
        reason: "no certificate could be decoded".into(),
    })
}

fn client_verifier(
    ca: &PemFile,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, der) in certificates("transport.tls.client_ca_path", ca)?
        .into_iter()
        .enumerate()
    {
        parse("transport.tls.client_ca_path", ca, index, &der)?;
        roots.add(der).map_err(|error| TlsError::ClientCa {
            path: ca.path.clone(),
            reason: format!("certificate {} is not a usable CA: {error}", index + 1),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| TlsError::ClientCa {
            path: ca.path.clone(),
            reason: error.to_string(),
        })
}

/// The subject common name and the subject alternative names
/// (`DNS:…`, `URI:…`, `email:…`, `IP:…`) of a certificate.
fn names(certificate: &X509Certificate<'_>) -> (Option<String>, Vec<String>) {
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut alt_names = Vec::new();
    if let Ok(Some(extension)) = certificate.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns) => alt_names.push(format!("DNS:{dns}")),
                GeneralName::URI(uri) => alt_names.push(format!("URI:{uri}")),
                GeneralName::RFC822Name(email) => alt_names.push(format!("email:{email}")),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        alt_names.push(format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
    }
    (common_name, alt_names)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The identity a verified client certificate names.
pub(crate) fn peer_identity(der: &CertificateDer<'_>) -> Option<ClientIdentity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let (common_name, alt_names) = names(&certificate);
    ClientIdentity::from_certificate(common_name, alt_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_between_min_and_max() {
        assert_eq!(
            protocol_versions(TlsVersion::V1_2, TlsVersion::V1_3).len(),
            2
        );
        let only13 = protocol_versions(TlsVersion::V1_3, TlsVersion::V1_3);
        assert_eq!(only13.len(), 1);
        assert_eq!(only13[0].version, rustls::ProtocolVersion::TLSv1_3);
        let only12 = protocol_versions(TlsVersion::V1_2, TlsVersion::V1_2);
        assert_eq!(only12[0].version, rustls::ProtocolVersion::TLSv1_2);
    }

    #[test]
    fn ip_alt_names() {
        assert_eq!(
            ip_from_bytes(&[10, 0, 0, 1]).map(|ip| ip.to_string()),
            Some("10.0.0.1".into())
        );
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }
}
