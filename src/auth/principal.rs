//! Who a request acts as, with what grants, and the authorization check:
//! `(principal, op, path) → Ok | Denial`.

use std::fmt;
use std::sync::Arc;

use crate::auth::config::AccessOp;
use crate::client::IdentitySource;

use super::error::Denial;
use super::grant::{self, Grant};

/// How a principal was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// No credentials: the `auth.anonymous` grants.
    Anonymous,
    /// A bearer JWT.
    Token,
    /// An API key.
    ApiKey,
    /// A client identity of `[[auth.identities]]`.
    Identity(IdentitySource),
}

impl PrincipalKind {
    /// `anonymous`, `token`, `api-key`, `certificate` or `proxy-header`,
    /// as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Token => "token",
            Self::ApiKey => "api-key",
            Self::Identity(source) => source.as_str(),
        }
    }
}

/// An authenticated (or anonymous) caller and what it may do.
#[derive(Clone, Debug)]
pub struct Principal {
    name: Arc<str>,
    kind: PrincipalKind,
    grants: Arc<[Grant]>,
    expires_at: Option<u64>,
}

impl Principal {
    pub(crate) fn new(
        name: Arc<str>,
        kind: PrincipalKind,
        grants: Arc<[Grant]>,
        expires_at: Option<u64>,
    ) -> Self {
        Self {
            name,
            kind,
            grants,
            expires_at,
        }
    }

    /// The name for logs: a token's `sub`, an API key's or an identity's
    /// name, or `anonymous`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it was authenticated.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// Whether the request carried no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.kind == PrincipalKind::Anonymous
    }

    /// When the credentials stop being valid (a token's `exp`, Unix
    /// seconds; leeway not included): a live read ends then.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// Whether the principal may do `op` on the stream at `path` (the
    /// absolute request path as sent, which is the stream's identity).
    ///
    /// # Errors
    /// [`Denial::InvalidPath`] for a path that is not normalised (an
    /// empty, `.` or `..` segment);
    /// [`Denial::CredentialsRequired`] when an anonymous request is not
    /// allowed, [`Denial::NotGranted`] when an authenticated one is not.
    pub fn check(&self, op: AccessOp, path: &str) -> Result<(), Denial> {
        if !grant::is_normalised_path(path) {
            return Err(Denial::InvalidPath);
        }
        if self.grants.iter().any(|grant| grant.allows(op, path)) {
            Ok(())
        } else {
            Err(self.refusal())
        }
    }

    /// Whether the principal may subscribe to every stream the absolute
    /// pattern matches (a subscription's pattern under its root, e.g.
    /// `/v1/stream/` + `tenant-a/**`): one `subscribe` grant must contain
    /// the whole pattern. Explicitly listed streams go through
    /// [`check`](Self::check) with [`AccessOp::Subscribe`].
    ///
    /// # Errors
    /// As [`check`](Self::check); [`Denial::InvalidPath`] for a pattern
    /// that is not an absolute glob.
    pub fn check_pattern(&self, pattern: &str) -> Result<(), Denial> {
        let Some(glob) = grant::parse_absolute_pattern(pattern) else {
            return Err(Denial::InvalidPath);
        };
        if self
            .grants
            .iter()
            .any(|grant| grant.covers(AccessOp::Subscribe, &glob))
        {
            Ok(())
        } else {
            Err(self.refusal())
        }
    }

    fn refusal(&self) -> Denial {
        if self.is_anonymous() {
            Denial::CredentialsRequired
        } else {
            Denial::NotGranted
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::GrantConfig;

    fn principal(kind: PrincipalKind, grants: &[(&str, &[AccessOp])]) -> Principal {
        let grants: Vec<Grant> = grants
            .iter()
            .map(|(path, ops)| {
                Grant::from_config(&GrantConfig {
                    paths: vec![(*path).to_owned()],
                    ops: ops.to_vec(),
                })
                .expect("valid")
            })
            .collect();
        Principal::new("p".into(), kind, grants.into(), None)
    }

    #[test]
    fn every_op_allowed_and_denied() {
        let ops = [
            AccessOp::Read,
            AccessOp::Append,
            AccessOp::Create,
            AccessOp::Delete,
            AccessOp::Subscribe,
        ];
        for op in ops {
            let p = principal(PrincipalKind::Token, &[("/v1/stream/a/**", &[op])]);
            assert_eq!(p.check(op, "/v1/stream/a/x"), Ok(()), "{op}");
            assert_eq!(
                p.check(op, "/v1/stream/b/x"),
                Err(Denial::NotGranted),
                "{op}"
            );
            for other in ops.iter().filter(|other| **other != op) {
                assert_eq!(
                    p.check(*other, "/v1/stream/a/x"),
                    Err(Denial::NotGranted),
                    "{op} grants {other}"
                );
            }
        }
    }

    #[test]
    fn grants_add_up() {
        let p = principal(
            PrincipalKind::ApiKey,
            &[
                ("/v1/stream/a/**", &[AccessOp::Read]),
                ("/v1/stream/b/*", &[AccessOp::Append]),
            ],
        );
        assert_eq!(p.check(AccessOp::Read, "/v1/stream/a/x"), Ok(()));
        assert_eq!(p.check(AccessOp::Append, "/v1/stream/b/x"), Ok(()));
        assert_eq!(
            p.check(AccessOp::Append, "/v1/stream/a/x"),
            Err(Denial::NotGranted)
        );
    }

    #[test]
    fn anonymous_refusals_ask_for_credentials() {
        let p = principal(
            PrincipalKind::Anonymous,
            &[("/v1/stream/public/**", &[AccessOp::Read])],
        );
        assert_eq!(p.check(AccessOp::Read, "/v1/stream/public/x"), Ok(()));
        assert_eq!(
            p.check(AccessOp::Append, "/v1/stream/public/x"),
            Err(Denial::CredentialsRequired)
        );
        assert_eq!(
            p.check_pattern("/v1/stream/public/**"),
            Err(Denial::CredentialsRequired)
        );
    }

    #[test]
    fn dot_segments_and_odd_paths_are_never_granted() {
        let p = principal(PrincipalKind::Token, &[("/**", &[AccessOp::Read])]);
        assert_eq!(p.check(AccessOp::Read, "/v1/stream/a"), Ok(()));
        for path in [
            "/v1/stream/public/../secret",
            "/v1/stream/public/%2e%2e/secret",
            "/v1/stream/public/./x",
            "/v1/stream/public//x",
            "/v1/stream/public/",
            "v1/stream/public",
        ] {
            assert_eq!(
                p.check(AccessOp::Read, path),
                Err(Denial::InvalidPath),
                "{path}"
            );
        }
    }

    #[test]
    fn subscription_patterns_must_lie_within_one_grant() {
        let p = principal(
            PrincipalKind::Token,
            &[
                ("/v1/stream/a/**", &[AccessOp::Subscribe]),
                ("/v1/stream/b/*", &[AccessOp::Subscribe]),
                ("/v1/stream/c/**", &[AccessOp::Read]),
            ],
        );
        assert_eq!(p.check_pattern("/v1/stream/a/**"), Ok(()));
        assert_eq!(p.check_pattern("/v1/stream/a/x/*"), Ok(()));
        assert_eq!(p.check_pattern("/v1/stream/b/user-*"), Ok(()));
        assert_eq!(p.check_pattern("/v1/stream/b/x"), Ok(()));
        assert_eq!(p.check_pattern("/v1/stream/b/**"), Err(Denial::NotGranted));
        assert_eq!(p.check_pattern("/v1/stream/*/x"), Err(Denial::NotGranted));
        assert_eq!(p.check_pattern("/v1/stream/**"), Err(Denial::NotGranted));
        assert_eq!(
            p.check_pattern("/v1/stream/c/**"),
            Err(Denial::NotGranted),
            "read is not subscribe"
        );
        assert_eq!(
            p.check_pattern("/v1/stream/a/../b/**"),
            Err(Denial::InvalidPath)
        );
        assert_eq!(p.check_pattern("/v1/stream//x"), Err(Denial::InvalidPath));
    }
}
