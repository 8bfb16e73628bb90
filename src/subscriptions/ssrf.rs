//! SSRF protection for webhook targets: which URLs a subscription may name
//! and which addresses a delivery may connect to.
//!
//! Rules: `https` only, except `http` to a loopback host when
//! `subscriptions.allow_loopback_http` is set; no credentials in the URL;
//! targets in private, link-local, shared (CGNAT) and loopback ranges only
//! when `subscriptions.allow_private_targets` (or, for loopback,
//! `allow_loopback_http`) allows them; unspecified, multicast, broadcast,
//! documentation and reserved addresses never. Host names are checked again
//! when they are resolved for each delivery ([`GuardedResolver`]), so a
//! name that later points inside the network is refused too (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

use super::error::SubscriptionError;

/// What kind of network an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// The public internet.
    Public,
    /// This host.
    Loopback,
    /// Private, link-local, shared or otherwise internal ranges.
    Private,
    /// Never a valid target (unspecified, multicast, broadcast, reserved,
    /// documentation).
    Forbidden,
}

/// Classifies an address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
    {
        AddressClass::Forbidden
    } else if ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || (a, b, c) == (192, 0, 0)
    {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
    {
        AddressClass::Forbidden
    } else if (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]
    {
        // Unique-local, link-local, site-local, NAT64 and IPv4-compatible
        // addresses reach internal networks.
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

/// The target rules from the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct TargetPolicy {
    /// `subscriptions.allow_loopback_http`.
    pub allow_loopback_http: bool,
    /// `subscriptions.allow_private_targets`.
    pub allow_private_targets: bool,
}

impl TargetPolicy {
    /// Whether a delivery may connect to `ip`.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            AddressClass::Public => true,
            AddressClass::Loopback => self.allow_loopback_http || self.allow_private_targets,
            AddressClass::Private => self.allow_private_targets,
            AddressClass::Forbidden => false,
        }
    }

    /// Checks a webhook URL a subscription names.
    ///
    /// # Errors
    /// [`SubscriptionError::WebhookUrlRejected`] with the reason.
    pub fn check_url(&self, raw: &str) -> Result<Url, SubscriptionError> {
        let reject = |why: &str| SubscriptionError::WebhookUrlRejected(why.to_owned());
        let url = Url::parse(raw).map_err(|_| reject("not an absolute URL"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(reject("credentials in the URL are not allowed"));
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    if !(self.allow_loopback_http || self.allow_private_targets) {
                        return Err(reject("loopback targets are not allowed"));
                    }
                    true
                } else {
                    false
                }
            }
            None => return Err(reject("the URL has no host")),
        };
        match url.scheme() {
            "https" => Ok(url),
            "http" if loopback && self.allow_loopback_http => Ok(url),
            "http" => Err(reject("webhook URLs must use https")),
            _ => Err(reject("webhook URLs must use https")),
        }
    }

    /// Checks an address in a URL; returns whether it is loopback.
    fn check_ip(&self, ip: IpAddr) -> Result<bool, SubscriptionError> {
        if self.address_allowed(ip) {
            Ok(classify(ip) == AddressClass::Loopback)
        } else {
            Err(SubscriptionError::WebhookUrlRejected(format!(
                "{ip} is a {} address",
                match classify(ip) {
                    AddressClass::Loopback => "loopback",
                    AddressClass::Private => "private-range",
                    _ => "reserved",
                }
            )))
        }
    }
}

/// A DNS resolver for the webhook client that drops addresses the policy
/// refuses, and fails when none is left.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    /// The rules.
    pub policy: TargetPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| policy.address_allowed(addr.ip()))
                .collect();
            if found.is_empty() {
                let refused = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to no address webhooks may reach"),
                );
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_loopback_http: false,
        allow_private_targets: false,
    };
    const DEV: TargetPolicy = TargetPolicy {
        allow_loopback_http: true,
        allow_private_targets: false,
    };

    fn rejected(policy: TargetPolicy, url: &str) -> bool {
        matches!(
            policy.check_url(url),
            Err(SubscriptionError::WebhookUrlRejected(_))
        )
    }

    #[test]
    fn https_public_targets_are_fine() {
        assert!(STRICT.check_url("https://hooks.example.com/x").is_ok());
        assert!(STRICT.check_url("https://93.184.216.34/x").is_ok());
    }

    #[test]
    fn plain_http_is_refused_except_loopback_in_dev() {
        assert!(rejected(STRICT, "http://hooks.example.com/x"));
        assert!(rejected(STRICT, "http://127.0.0.1:8080/x"));
        assert!(rejected(DEV, "http://hooks.example.com/x"));
        assert!(rejected(DEV, "http://10.0.0.1/hook"));
        assert!(DEV.check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(DEV.check_url("http://[::1]:8080/x").is_ok());
        assert!(DEV.check_url("http://localhost:8080/x").is_ok());
        assert!(rejected(STRICT, "ftp://example.com/x"));
        assert!(rejected(STRICT, "not a url"));
        assert!(rejected(STRICT, "https://user:pw@example.com/x"));
    }

    #[test]
    fn private_ranges_are_refused_unless_allowed() {
        for url in [
            "https://10.0.0.1/x",
            "https://172.16.5.4/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://127.0.0.1/x",
            "https://localhost/x",
        ] {
            assert!(rejected(STRICT, url), "{url}");
        }
        let open = TargetPolicy {
            allow_loopback_http: false,
            allow_private_targets: true,
        };
        assert!(open.check_url("https://10.0.0.1/x").is_ok());
        assert!(rejected(open, "http://10.0.0.1/x"));
    }

    #[test]
    fn reserved_addresses_are_always_refused() {
        let open = TargetPolicy {
            allow_loopback_http: true,
            allow_private_targets: true,
        };
        for url in [
            "https://0.0.0.0/x",
            "https://255.255.255.255/x",
            "https://224.0.0.1/x",
            "https://192.0.2.1/x",
            "https://[::]/x",
            "https://[ff02::1]/x",
        ] {
            assert!(rejected(open, url), "{url}");
        }
    }
}
