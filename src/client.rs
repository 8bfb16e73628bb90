//! What the server knows about the client of a request: where it connects
//! from, over which scheme, who it is. The server and the proxy-trust
//! middleware ([`crate::proxy`]) put these into request extensions, so
//! handlers and embedders' layers can read them with
//! `Extension<ClientIdentity>` and friends.

use std::fmt;
use std::net::IpAddr;

/// The client's address: the TCP peer, or, behind a trusted proxy, the
/// address its forwarding headers name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The scheme the client used to reach us (directly, or at a trusted proxy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `host[:port]` the client asked for, as a trusted proxy reported it
/// (`X-Forwarded-Host`, or `host=` in `Forwarded`). Absent means the
/// request's own `Host` (or HTTP/2 `:authority`) is the one to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedHost(pub String);

/// Where a [`ClientIdentity`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A client certificate verified during the TLS handshake (`mtls`).
    Certificate,
    /// The identity header of a trusted proxy (`proxy.identity.mode = "header"`).
    ProxyHeader,
}

impl IdentitySource {
    /// `certificate` or `proxy-header`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Certificate => "certificate",
            IdentitySource::ProxyHeader => "proxy-header",
        }
    }
}

/// Who the client is, once verified: the subject of its certificate, or
/// the identity a trusted proxy handed over. The basis for authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Where the identity comes from.
    pub source: IdentitySource,
    /// The principal: the certificate's subject common name, else its first
    /// subject alternative name; or the proxy header's value.
    pub name: String,
    /// The certificate subject's common name, if any.
    pub common_name: Option<String>,
    /// The certificate's subject alternative names as `DNS:…`, `URI:…`,
    /// `email:…` or `IP:…`.
    pub subject_alt_names: Vec<String>,
}

impl ClientIdentity {
    /// An identity read from a verified client certificate; `None` when the
    /// certificate names nobody (no common name and no alternative names).
    pub fn from_certificate(
        common_name: Option<String>,
        subject_alt_names: Vec<String>,
    ) -> Option<Self> {
        let name = common_name
            .clone()
            .or_else(|| subject_alt_names.first().cloned())?;
        Some(Self {
            source: IdentitySource::Certificate,
            name,
            common_name,
            subject_alt_names,
        })
    }

    /// An identity handed over by a trusted proxy.
    pub fn from_proxy_header(value: String) -> Self {
        Self {
            source: IdentitySource::ProxyHeader,
            name: value,
            common_name: None,
            subject_alt_names: Vec::new(),
        }
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The TLS session a request arrived on. Present on every request of a
/// TLS listener; absent on plain HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSession {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The ALPN protocol agreed on (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// The identity of the verified client certificate (`mtls`).
    pub peer: Option<ClientIdentity>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_identity_prefers_the_common_name() {
        let id = ClientIdentity::from_certificate(Some("alice".into()), vec!["DNS:a".into()])
            .expect("named");
        assert_eq!(id.name, "alice");
        let id =
            ClientIdentity::from_certificate(None, vec!["URI:spiffe://x/y".into()]).expect("named");
        assert_eq!(id.to_string(), "URI:spiffe://x/y");
        assert_eq!(ClientIdentity::from_certificate(None, Vec::new()), None);
    }
}
