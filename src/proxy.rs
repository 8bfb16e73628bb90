//! Trust in reverse proxies, and the middleware that tells each request who
//! its client is.
//!
//! [`ProxyPolicy`] decides, from the TCP peer, the TLS session and the
//! `proxy.*` settings, what the request's [`ClientAddr`], [`Scheme`],
//! [`ForwardedHost`] and [`ClientIdentity`] are:
//!
//! - forwarding headers (`X-Forwarded-For`/`-Proto`/`-Host`, RFC 7239
//!   `Forwarded`) are believed only from peers in `proxy.trusted_proxies`,
//!   and only the kind `proxy.forwarded_headers` names. From anyone else
//!   they are removed before the handlers see them, with a rate-limited
//!   warning, so a client cannot spoof its address or scheme;
//! - the identity header (`proxy.identity.mode = "header"`) is believed only
//!   from a trusted peer, and only over TLS when `require_tls`; otherwise it
//!   is removed;
//! - without a believed identity header, a verified client certificate
//!   (`mtls`) is the identity.
//!
//! [`client_context`] applies the policy to every request and stores the
//! result as request extensions; the request middleware
//! (`http::access`) puts them on the request's span and its one log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::client::{ClientAddr, ClientIdentity, ForwardedHost, Scheme, TlsSession};
use crate::config::{ForwardedHeaders, IdentityMode, ProxyConfig};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Every forwarding header, honoured or not.
static FORWARDING_HEADERS: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
];
/// The `x-forwarded` kind.
static X_FORWARDED: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];
/// The `forwarded` kind.
static FORWARDED: [HeaderName; 1] = [header::FORWARDED];

/// Longest identity header value believed.
const MAX_IDENTITY_BYTES: usize = 1024;

/// Least time between two warnings of the same kind.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// An IP network, `addr/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.5`, `10.0.0.0/8`, `fd00::/8`. An IPv4-mapped IPv6
    /// network (`::ffff:10.0.0.0/104`) becomes its IPv4 form, so it matches
    /// IPv4 peers however the socket reports them.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Some(Self {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                }),
                _ => Some(Self { addr, prefix }),
            },
            IpAddr::V4(_) => Some(Self { addr, prefix }),
        }
    }

    /// Whether `ip` (IPv4-mapped IPv6 counted as IPv4) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Logs at most once per [`WARN_INTERVAL`], counting what it held back.
#[derive(Debug, Default)]
struct RateLimited {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimited {
    /// `Some(held back since the last one)` when a warning may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match *last {
            Some(at) if now.duration_since(at) < WARN_INTERVAL => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[derive(Debug)]
struct IdentityHeader {
    name: HeaderName,
    require_tls: bool,
}

/// The `proxy.*` settings, compiled.
#[derive(Debug)]
pub struct ProxyPolicy {
    enabled: bool,
    forwarded: ForwardedHeaders,
    trusted: Vec<IpNet>,
    identity: Option<IdentityHeader>,
    forwarded_warning: RateLimited,
    identity_warning: RateLimited,
}

/// What the policy concluded about one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The client's address (`None` without a socket, e.g. in `oneshot` tests).
    pub addr: Option<IpAddr>,
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The scheme the client used.
    pub scheme: Scheme,
    /// The host a trusted proxy says the client asked for.
    pub host: Option<String>,
    /// Who the client is.
    pub identity: Option<ClientIdentity>,
}

impl Default for ProxyPolicy {
    /// Trusts no proxy: the socket's peer is the client.
    fn default() -> Self {
        Self::from_config(&ProxyConfig::default())
    }
}

impl ProxyPolicy {
    /// The identity header's name, with `proxy.identity.mode = "header"`.
    pub(crate) fn identity_header(&self) -> Option<&HeaderName> {
        self.identity.as_ref().map(|identity| &identity.name)
    }

    /// Compiles `config`. Entries of `trusted_proxies` that do not parse
    /// are skipped (validation has refused them already).
    pub fn from_config(config: &ProxyConfig) -> Self {
        let identity = (config.identity.mode == IdentityMode::Header)
            .then(|| HeaderName::from_bytes(config.identity.header_name.as_bytes()).ok())
            .flatten()
            .map(|name| IdentityHeader {
                name,
                require_tls: config.identity.require_tls,
            });
        Self {
            enabled: config.enabled,
            forwarded: config.forwarded_headers,
            trusted: config
                .trusted_proxies
                .iter()
                .filter_map(|entry| IpNet::parse(entry))
                .collect(),
            identity,
            forwarded_warning: RateLimited::default(),
            identity_warning: RateLimited::default(),
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.enabled && self.trusted.iter().any(|net| net.contains(ip))
    }

    /// Decides the request's client, removing from `headers` the forwarding
    /// and identity headers that are not believed.
    pub fn resolve(
        &self,
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        tls: Option<&TlsSession>,
    ) -> Resolved {
        let peer = peer.map(|ip| ip.to_canonical());
        let trusted = peer.is_some_and(|ip| self.is_trusted(ip));
        let mut resolved = Resolved {
            addr: peer,
            peer,
            scheme: if tls.is_some() {
                Scheme::Https
            } else {
                Scheme::Http
            },
            host: None,
            identity: tls.and_then(|session| session.peer.clone()),
        };

        let honoured: &[HeaderName] = match (trusted, self.forwarded) {
            (true, ForwardedHeaders::XForwarded) => {
                self.apply_x_forwarded(headers, &mut resolved);
                &X_FORWARDED
            }
            (true, ForwardedHeaders::Forwarded) => {
                self.apply_forwarded(headers, &mut resolved);
                &FORWARDED
            }
            _ => &[],
        };
        let mut stripped = Vec::new();
        // One pass over the few headers a request has is cheaper than a
        // hashed removal per forwarding header, and most requests have none.
        let any_forwarding = headers.keys().any(|name| FORWARDING_HEADERS.contains(name));
        for name in FORWARDING_HEADERS.iter().filter(|_| any_forwarding) {
            if !honoured.contains(name) && headers.remove(name).is_some() {
                stripped.push(name.as_str());
            }
        }
        if !trusted
            && !stripped.is_empty()
            && let Some(held_back) = self.forwarded_warning.allow()
        {
            tracing::warn!(
                peer = ?peer,
                headers = %stripped.join(", "),
                held_back,
                "forwarding headers from a peer that is not a trusted proxy were removed; \
                 list the proxy in proxy.trusted_proxies if it is one"
            );
        }

        if let Some(identity) = &self.identity
            && headers.contains_key(&identity.name)
        {
            let believed = trusted && (!identity.require_tls || tls.is_some());
            let value = headers
                .get(&identity.name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty() && value.len() <= MAX_IDENTITY_BYTES)
                .map(str::to_owned);
            match value {
                Some(value) if believed => {
                    resolved.identity = Some(ClientIdentity::from_proxy_header(value));
                }
                _ => {
                    headers.remove(&identity.name);
                    if let Some(held_back) = self.identity_warning.allow() {
                        let why = if !trusted {
                            "the peer is not a trusted proxy"
                        } else if believed {
                            "the value is empty, too long or not visible ASCII"
                        } else {
                            "the connection is not TLS and proxy.identity.require_tls is set"
                        };
                        tracing::warn!(
                            peer = ?peer,
                            header = %identity.name,
                            held_back,
                            "identity header removed: {why}"
                        );
                    }
                }
            }
        }
        resolved
    }

    fn apply_x_forwarded(&self, headers: &HeaderMap, resolved: &mut Resolved) {
        let hops: Vec<&str> = list_values(headers, &X_FORWARDED_FOR).collect();
        if let Some(client) = self.client_of(hops.iter().map(|hop| node_ip(hop))) {
            resolved.addr = Some(client.1);
        }
        // The proxy nearest the client set these; a chain of trusted proxies
        // passes them on, so the first value is the client's.
        if let Some(scheme) = list_values(headers, &X_FORWARDED_PROTO)
            .next()
            .and_then(parse_scheme)
        {
            resolved.scheme = scheme;
        }
        if let Some(host) = list_values(headers, &X_FORWARDED_HOST)
            .next()
            .filter(|host| is_host(host))
        {
            resolved.host = Some(host.to_owned());
        }
    }

    fn apply_forwarded(&self, headers: &HeaderMap, resolved: &mut Resolved) {
        let elements: Vec<Vec<(String, String)>> = headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| split_quoted(value, ','))
            .map(|element| {
                split_quoted(&element, ';')
                    .into_iter()
                    .filter_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        Some((key.trim().to_ascii_lowercase(), unquote(value.trim())))
                    })
                    .collect()
            })
            .collect();
        if elements.is_empty() {
            return;
        }
        let field = |element: &[(String, String)], key: &str| {
            element
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let chosen = self.client_of(
            elements
                .iter()
                .map(|element| field(element, "for").as_deref().and_then(node_ip)),
        );
        if let Some((_, client)) = chosen {
            resolved.addr = Some(client);
        }
        // RFC 7239 §4: each element describes the request one proxy
        // received, so the client's element holds its proto and host.
        let index = chosen.map_or(elements.len() - 1, |(index, _)| index);
        let element = &elements[index];
        if let Some(scheme) = field(element, "proto").as_deref().and_then(parse_scheme) {
            resolved.scheme = scheme;
        }
        if let Some(host) = field(element, "host").filter(|host| is_host(host)) {
            resolved.host = Some(host);
        }
    }

    /// Walks the hops from the nearest (rightmost) back: the first one
    /// that is not a trusted proxy is the client; if all are, the farthest.
    /// A hop that is not an IP (`unknown`, an obfuscated name, junk) ends
    /// the walk. Returns the hop's index and address.
    fn client_of(
        &self,
        hops: impl DoubleEndedIterator<Item = Option<IpAddr>> + ExactSizeIterator,
    ) -> Option<(usize, IpAddr)> {
        let mut client = None;
        for (index, hop) in hops.enumerate().rev() {
            let Some(ip) = hop else { break };
            client = Some((index, ip));
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// The comma-separated items of every occurrence of `name`, trimmed.
fn list_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`, as an address (IPv4-mapped
/// IPv6 as IPv4).
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    let ip = if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else if let Ok(socket) = node.parse::<SocketAddr>() {
        socket.ip()
    } else if let Some(inner) = node
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        inner.parse::<IpAddr>().ok()?
    } else {
        return None;
    };
    Some(ip.to_canonical())
}

fn parse_scheme(text: &str) -> Option<Scheme> {
    match text.trim().to_ascii_lowercase().as_str() {
        "https" => Some(Scheme::Https),
        "http" => Some(Scheme::Http),
        _ => None,
    }
}

/// A plausible `host[:port]`: it goes into `Location`, so nothing that could
/// change the URL's structure.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
}

/// Splits on `separator` outside double quotes.
fn split_quoted(text: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|part| part.trim().to_owned())
        .filter(|part| !part.is_empty())
        .collect()
}

/// A token or a quoted-string, unquoted.
fn unquote(value: &str) -> String {
    match value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if !escaped && c == '\\' {
                    escaped = true;
                } else {
                    out.push(c);
                    escaped = false;
                }
            }
            out
        }
        None => value.to_owned(),
    }
}

/// Adds [`client_context`] for `proxy` to `router`: every request gets its
/// [`ClientAddr`], [`Scheme`], [`ForwardedHost`] and [`ClientIdentity`]
/// extensions before any other layer sees it.
pub fn with_client_context(router: Router, proxy: &ProxyConfig) -> Router {
    router.layer(middleware::from_fn_with_state(
        Arc::new(ProxyPolicy::from_config(proxy)),
        client_context,
    ))
}

/// The middleware: resolves the client (see [`ProxyPolicy::resolve`]) and
/// stores it in the request's extensions.
pub async fn client_context(
    State(policy): State<Arc<ProxyPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    next.run(attach_client_context(&policy, request)).await
}

/// What [`client_context`] does before the inner service: the server's own
/// router runs it inside its single request middleware instead, which saves
/// a middleware layer (a service clone and a boxed future) per request.
pub(crate) fn attach_client_context(policy: &ProxyPolicy, request: Request) -> Request {
    attach(policy, request, Readers::Anyone)
}

/// [`attach_client_context`] for a request only the server's own handlers
/// read (appends taking the router's shortcut), which carries no
/// extensions: the connection's `peer` and `tls` session come as
/// arguments. Those handlers take a missing [`Scheme`] for plain HTTP and
/// a missing [`ClientAddr`] for the TCP peer, so those two are left out
/// when they would say just that: each extension is an allocation.
pub(crate) fn attach_client_context_for_own_handlers(
    policy: &ProxyPolicy,
    request: &mut Request,
    peer: SocketAddr,
    tls: Option<&TlsSession>,
) {
    let ip = peer.ip();
    // No fields (a plain head's are elsewhere, none of them a forwarding
    // or identity header) and no TLS: nothing could say other than the
    // defaults, which such a request carries as no extensions at all.
    if tls.is_none() && request.headers().is_empty() && ip.to_canonical() == ip {
        return;
    }
    let peer = Some(ip);
    let resolved = policy.resolve(request.headers_mut(), peer, tls);
    insert(
        request.extensions_mut(),
        resolved,
        peer,
        Readers::OwnHandlers,
    );
}

/// Who reads a request's client extensions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readers {
    /// Any layer or handler, an embedder's too: every extension is set.
    Anyone,
    /// Only the server's own code, which knows the defaults.
    OwnHandlers,
}

fn attach(policy: &ProxyPolicy, request: Request, readers: Readers) -> Request {
    // Split so the headers can be edited while the TLS session is borrowed.
    let (mut parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let tls = parts.extensions.get::<TlsSession>();
    let resolved = policy.resolve(&mut parts.headers, peer, tls);
    insert(&mut parts.extensions, resolved, peer, readers);
    Request::from_parts(parts, body)
}

/// Stores what `resolved` says of a request from `peer` in its extensions.
fn insert(
    extensions: &mut axum::http::Extensions,
    resolved: Resolved,
    peer: Option<IpAddr>,
    readers: Readers,
) {
    let everything = readers == Readers::Anyone;
    if everything || resolved.scheme != Scheme::default() {
        extensions.insert(resolved.scheme);
    }
    if let Some(addr) = resolved.addr
        && (everything || Some(addr) != peer)
    {
        extensions.insert(ClientAddr(addr));
    }
    if let Some(host) = resolved.host {
        extensions.insert(ForwardedHost(host));
    }
    if let Some(identity) = resolved.identity {
        extensions.insert(identity);
    }
}

#[cfg(test)]
mod tests;
