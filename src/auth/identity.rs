//! `[[auth.identities]]`: client identities (a verified certificate, a
//! trusted proxy's identity header) mapped to grants. The first entry that
//! names the identity wins.

use std::sync::Arc;

use crate::auth::config::{IdentityConfig, IdentitySourceFilter};
use crate::client::{ClientIdentity, IdentitySource};

use super::error::{AuthSetupError, GrantError};
use super::grant::Grant;

/// How an entry recognises an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Selector {
    /// [`ClientIdentity::name`].
    Name(String),
    /// One of the certificate's subject alternative names.
    San(String),
}

#[derive(Clone, Debug)]
struct Entry {
    source: IdentitySourceFilter,
    selector: Selector,
    grants: Arc<[Grant]>,
}

/// The parsed `[[auth.identities]]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdentityMap {
    entries: Vec<Entry>,
}

impl IdentityMap {
    /// Parses the entries.
    ///
    /// # Errors
    /// The first entry without exactly one of `name` and `san`, named twice,
    /// or with a bad grant.
    pub(crate) fn from_config(entries: &[IdentityConfig]) -> Result<Self, AuthSetupError> {
        let mut map = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            let key = format!("auth.identities[{index}]");
            let bad = |why: &str| AuthSetupError::Identity {
                key: key.clone(),
                why: why.to_owned(),
            };
            let selector = match (non_empty(&entry.name), non_empty(&entry.san)) {
                (Some(name), None) => Selector::Name(name.to_owned()),
                (None, Some(san)) => Selector::San(san.to_owned()),
                _ => return Err(bad("give exactly one of `name` and `san`")),
            };
            if map
                .entries
                .iter()
                .any(|known| known.selector == selector && known.source == entry.source)
            {
                return Err(bad("this identity is already listed"));
            }
            let grants = Grant::from_configs(&entry.grants).map_err(|source: GrantError| {
                AuthSetupError::Grant {
                    key: format!("{key}.grants"),
                    source,
                }
            })?;
            map.entries.push(Entry {
                source: entry.source,
                selector,
                grants: grants.into(),
            });
        }
        Ok(map)
    }

    /// The grants of the first entry naming `identity`.
    pub(crate) fn grants_of(&self, identity: &ClientIdentity) -> Option<&Arc<[Grant]>> {
        self.entries
            .iter()
            .find(|entry| {
                let source_fits = match entry.source {
                    IdentitySourceFilter::Any => true,
                    IdentitySourceFilter::Certificate => {
                        identity.source == IdentitySource::Certificate
                    }
                    IdentitySourceFilter::ProxyHeader => {
                        identity.source == IdentitySource::ProxyHeader
                    }
                };
                source_fits
                    && match &entry.selector {
                        Selector::Name(name) => *name == identity.name,
                        Selector::San(san) => identity.subject_alt_names.contains(san),
                    }
            })
            .map(|entry| &entry.grants)
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::{AccessOp, GrantConfig};

    fn entry(
        source: IdentitySourceFilter,
        name: Option<&str>,
        san: Option<&str>,
    ) -> IdentityConfig {
        IdentityConfig {
            source,
            name: name.map(str::to_owned),
            san: san.map(str::to_owned),
            grants: vec![GrantConfig {
                paths: vec![format!("/v1/stream/{}/**", name.unwrap_or("by-san"))],
                ops: vec![AccessOp::Append],
            }],
        }
    }

    fn certificate(cn: &str, sans: &[&str]) -> ClientIdentity {
        ClientIdentity::from_certificate(
            Some(cn.to_owned()),
            sans.iter().map(|s| (*s).to_owned()).collect(),
        )
        .expect("named")
    }

    #[test]
    fn names_sans_and_sources() {
        let map = IdentityMap::from_config(&[
            entry(IdentitySourceFilter::Certificate, Some("writer"), None),
            entry(
                IdentitySourceFilter::Any,
                None,
                Some("URI:spiffe://c/ns/a/sa/reader"),
            ),
            entry(IdentitySourceFilter::ProxyHeader, Some("alice"), None),
        ])
        .expect("valid");
        let writer = map.grants_of(&certificate("writer", &[])).expect("mapped");
        assert!(writer[0].allows(AccessOp::Append, "/v1/stream/writer/x"));
        assert!(
            map.grants_of(&certificate("other", &["URI:spiffe://c/ns/a/sa/reader"]))
                .is_some()
        );
        assert!(
            map.grants_of(&certificate("alice", &[])).is_none(),
            "header only"
        );
        assert!(
            map.grants_of(&ClientIdentity::from_proxy_header("alice".into()))
                .is_some()
        );
        assert!(
            map.grants_of(&ClientIdentity::from_proxy_header("writer".into()))
                .is_none(),
            "certificate only"
        );
        assert!(map.grants_of(&certificate("nobody", &["DNS:x"])).is_none());
    }

    #[test]
    fn entries_name_one_identity_once() {
        for bad in [
            vec![entry(IdentitySourceFilter::Any, None, None)],
            vec![entry(IdentitySourceFilter::Any, Some("a"), Some("DNS:a"))],
            vec![entry(IdentitySourceFilter::Any, Some(" "), None)],
            vec![
                entry(IdentitySourceFilter::Any, Some("a"), None),
                entry(IdentitySourceFilter::Any, Some("a"), None),
            ],
        ] {
            assert!(
                matches!(
                    IdentityMap::from_config(&bad),
                    Err(AuthSetupError::Identity { .. })
                ),
                "{bad:?}"
            );
        }
        let mut bad_grant = entry(IdentitySourceFilter::Any, Some("a"), None);
        bad_grant.grants[0].paths = vec!["nope".into()];
        assert!(matches!(
            IdentityMap::from_config(&[bad_grant]),
            Err(AuthSetupError::Grant { key, .. }) if key == "auth.identities[0].grants"
        ));
    }
}
