//! [`Acceptor`]: the handle every new connection takes its TLS
//! configuration from, and the handshake itself.
//!
//! The current configuration sits behind a `RwLock<Arc<ServerConfig>>`:
//! a handshake clones the `Arc` (the lock is held for that clone only) and
//! keeps it for the connection's life, so a reload swapping in a new `Arc`
//! affects new handshakes only and never disturbs open connections.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::material::{self, CertificateInfo, Material};
use super::{TlsError, TlsSettings};
use crate::client::TlsSession;
use crate::config::HttpVersion;
use crate::metrics::event::{TlsCertificateServed, TlsHandshakeCompleted, TlsHandshakeFailed};

/// How long a client may take to complete the handshake. Slow or silent
/// clients must not hold a connection slot forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the TLS material, hands each new connection the current
/// configuration, and takes reloads (see [`Acceptor::reload`]). Cheap to
/// clone; clones share the configuration.
#[derive(Clone)]
pub struct Acceptor {
    pub(super) shared: Arc<Shared>,
    handshake_timeout: Duration,
}

pub(super) struct Shared {
    pub settings: TlsSettings,
    pub current: RwLock<Current>,
    /// Serialises reloads; holds what the last attempt saw.
    pub reload: Mutex<ReloadState>,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
}

pub(super) struct Current {
    pub config: Arc<ServerConfig>,
    pub certificate: CertificateInfo,
}

#[derive(Default)]
pub(super) struct ReloadState {
    /// Fingerprint of the files (or of the error) the last attempt saw, so
    /// unchanged files are not reloaded, and a bad file is reported once
    /// rather than at every poll.
    pub last_seen: Option<u64>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("settings", &self.shared.settings)
            .field("certificate", &self.certificate())
            .finish_non_exhaustive()
    }
}

/// The time now, in Unix seconds.
pub(super) fn unix_now() -> i64 {
    i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX)
}

impl Acceptor {
    /// Reads and validates the material `settings` names.
    ///
    /// # Errors
    /// When a file is unreadable, does not parse, the key does not match
    /// the certificate, a certificate is expired, or the client CA bundle
    /// holds no usable CA.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let files = settings.read_files()?;
        let Material {
            config,
            certificate,
        } = material::build(&settings, &files, unix_now())?;
        TlsCertificateServed {
            not_after: certificate.not_after,
            reloaded: false,
        }
        .emit();
        let fingerprint = super::reload::fingerprint(&files);
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                current: RwLock::new(Current {
                    config,
                    certificate,
                }),
                reload: Mutex::new(ReloadState {
                    last_seen: Some(fingerprint),
                }),
                successes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// The same acceptor with another handshake timeout.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &TlsSettings {
        &self.shared.settings
    }

    /// The HTTP versions to serve on its connections.
    pub fn http_versions(&self) -> &[HttpVersion] {
        &self.shared.settings.http_versions
    }

    /// The certificate new handshakes present.
    pub fn certificate(&self) -> CertificateInfo {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .certificate
            .clone()
    }

    /// The configuration new handshakes use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .config,
        )
    }

    /// Swaps in a new configuration for new handshakes.
    pub(super) fn install(&self, material: Material) {
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = Current {
            config: material.config,
            certificate: material.certificate,
        };
    }

    /// Runs the server side of the handshake on `stream`, bounded by the
    /// handshake timeout, with the configuration current at its start.
    /// Counts the outcome in the handshake metrics.
    ///
    /// # Errors
    /// When the handshake fails or times out.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, TlsSession), HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        let result =
            match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => Err(HandshakeError::from_io(error)),
                Err(_) => Err(HandshakeError::Timeout),
            };
        match result {
            Ok(stream) => {
                TlsHandshakeCompleted.emit();
                let session = session(&stream);
                Ok((stream, session))
            }
            Err(error) => {
                TlsHandshakeFailed {
                    reason: error.reason(),
                }
                .emit();
                Err(error)
            }
        }
    }
}

fn session(stream: &TlsStream<TcpStream>) -> TlsSession {
    let (_, connection) = stream.get_ref();
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    };
    TlsSession {
        version,
        alpn: connection
            .alpn_protocol()
            .map(|alpn| String::from_utf8_lossy(alpn).into_owned()),
        peer: connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(material::peer_identity),
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The client did not finish within the handshake timeout.
    #[error("the TLS handshake timed out")]
    Timeout,
    /// The TLS protocol failed (no certificate, bad certificate, no common
    /// version, an alert from the client, …).
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    /// The connection failed underneath (reset, closed early).
    #[error("connection failed during the TLS handshake: {0}")]
    Io(std::io::Error),
}

impl HandshakeError {
    fn from_io(error: std::io::Error) -> Self {
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(tls) => HandshakeError::Tls(tls),
            None => HandshakeError::Io(error),
        }
    }

    /// The `reason` label of `durable_streams_tls_handshake_failures_total`:
    /// one of a fixed, small set.
    pub fn reason(&self) -> &'static str {
        use rustls::Error as E;
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Io(_) => "io",
            HandshakeError::Tls(error) => match error {
                E::NoCertificatesPresented => "no_client_certificate",
                E::InvalidCertificate(_) => "bad_client_certificate",
                E::AlertReceived(_) => "peer_alert",
                E::PeerIncompatible(_) | E::NoApplicationProtocol => "incompatible",
                _ => "protocol",
            },
        }
    }
}
