//! Syntax of single values: `host:port` addresses, IPs and CIDRs, browser
//! origins, collector URLs. The rules across keys use them.

use std::net::{IpAddr, SocketAddr};

/// Whether `value` is an absolute `http://` or `https://` URL with a host,
/// as an OTLP collector endpoint must be.
pub(crate) fn is_http_url(value: &str) -> bool {
    value.trim().parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.authority().is_some_and(|a| !a.host().is_empty())
    })
}

/// `host:port` with a numeric port; IPv6 hosts in brackets.
pub(crate) fn is_host_port(address: &str) -> bool {
    if address.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && !host.contains([':', '/', '[', ']'])
        && !host.chars().any(char::is_whitespace)
}

/// An IP address, or a CIDR range of one.
pub(super) fn is_ip_or_cidr(entry: &str) -> bool {
    let entry = entry.trim();
    match entry.split_once('/') {
        None => entry.parse::<IpAddr>().is_ok(),
        Some((ip, prefix)) => match (ip.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(bits)) => bits <= 32,
            (Ok(IpAddr::V6(_)), Ok(bits)) => bits <= 128,
            _ => false,
        },
    }
}

/// A browser origin: `scheme://host[:port]`, nothing after it.
pub(super) fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#'])
        && http::HeaderValue::from_str(origin).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        for good in ["0.0.0.0:4437", "[::]:80", "localhost:1", "ds.internal:4437"] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in ["4437", ":4437", "host:", "host:99999", "a b:1", "::1:80"] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn ips_and_cidrs() {
        for good in ["10.0.0.1", "10.0.0.0/8", "fd00::/8", "::1", "0.0.0.0/0"] {
            assert!(is_ip_or_cidr(good), "{good}");
        }
        for bad in ["10.0.0.0/33", "fd00::/129", "example.com", "10.0.0/8", ""] {
            assert!(!is_ip_or_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        assert!(is_origin("https://app.example.com"));
        assert!(is_origin("http://localhost:3000"));
        assert!(!is_origin("https://app.example.com/"));
        assert!(!is_origin("app.example.com"));
    }
}
