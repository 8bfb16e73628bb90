//! The rules of `[auth]`.

use super::Checker;
use super::is_set;
use crate::config::{AuthMode, IdentityMode, TransportMode};

impl Checker<'_> {
    pub(super) fn auth(&mut self) {
        let auth = &self.config.auth;
        let token = auth.mode == AuthMode::Token;
        let jwks_url_set = auth
            .jwks_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty());
        let jwks = is_set(&auth.jwks_path) || jwks_url_set;
        if is_set(&auth.jwks_path) && jwks_url_set {
            self.error(
                "auth.jwks_url",
                "`auth.jwks_path` and `auth.jwks_url` are both set".into(),
                "keep one source of token-signing keys: the file or the URL".into(),
            );
        }
        if let Some(url) = auth.jwks_url.as_deref().filter(|_| jwks_url_set)
            && let Err(why) = crate::auth::check_jwks_url(url)
        {
            self.error(
                "auth.jwks_url",
                format!("`auth.jwks_url`: {why}"),
                "use the identity provider's https:// JWKS URL (http:// only on loopback)".into(),
            );
        }
        let has_source = jwks || is_set(&auth.api_keys_path) || !auth.identities.is_empty();
        if token && !has_source {
            self.error(
                "auth.mode",
                "`auth.mode` = \"token\" needs a source of credentials, and none is set".into(),
                "set auth.jwks_path or auth.jwks_url (bearer JWTs), auth.api_keys_path (API \
                 keys) or [[auth.identities]] (client identities); or use auth.mode = \"none\""
                    .into(),
            );
        }
        // Grants and identities, parsed the way access control will.
        match crate::auth::AuthSettings::parse(auth) {
            Ok(_) | Err(crate::auth::AuthSetupError::JwksUrl(_)) => {}
            Err(error) => {
                let key = match &error {
                    crate::auth::AuthSetupError::Grant { key, .. }
                    | crate::auth::AuthSetupError::Identity { key, .. } => {
                        key.split('[').next().unwrap_or(key).to_owned()
                    }
                    _ => "auth".to_owned(),
                };
                self.error(&key, error.to_string(), error.hint().into());
            }
        }
        if auth.claim.trim().is_empty() {
            self.error(
                "auth.claim",
                "`auth.claim` is empty".into(),
                "name the JWT claim that holds the grants, e.g. ds".into(),
            );
        }
        if let Some(param) = &auth.query_param
            && (param.is_empty()
                || !param
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)))
        {
            self.error(
                "auth.query_param",
                format!("`auth.query_param` = {param:?} is not a plain query parameter name"),
                "use letters, digits, `-`, `_`, `.` or `~`, e.g. access_token; or leave it unset \
                 to accept tokens in the Authorization header only"
                    .into(),
            );
        }
        if auth.leeway_secs > 300 {
            self.warn(
                "auth.leeway_secs",
                format!(
                    "`auth.leeway_secs` = {} accepts tokens more than five minutes past their \
                     expiry",
                    auth.leeway_secs
                ),
                "keep the leeway to the clock skew you expect, e.g. 30".into(),
            );
        }
        let identity_sources = self.config.transport.mode == TransportMode::Mtls
            || self.config.proxy.identity.mode == IdentityMode::Header;
        if token && !auth.identities.is_empty() && !identity_sources {
            self.warn(
                "auth.identities",
                "`[[auth.identities]]` is set but no request carries an identity: transport.mode \
                 is not \"mtls\" and proxy.identity.mode is not \"header\""
                    .into(),
                "use transport.mode = \"mtls\" or a trusted proxy's identity header, or remove \
                 the identities"
                    .into(),
            );
        }
        if token && !jwks && (auth.issuer.is_some() || auth.audience.is_some()) {
            self.warn(
                "auth.issuer",
                "`auth.issuer` or `auth.audience` is set, but no JWKS is, so no JWT is accepted"
                    .into(),
                "set auth.jwks_path or auth.jwks_url".into(),
            );
        }
        let token_only = [
            ("auth.jwks_path", is_set(&auth.jwks_path)),
            ("auth.jwks_url", jwks_url_set),
            ("auth.api_keys_path", is_set(&auth.api_keys_path)),
            ("auth.query_param", auth.query_param.is_some()),
            ("auth.anonymous", !auth.anonymous.is_empty()),
            ("auth.identities", !auth.identities.is_empty()),
        ];
        if !token && let Some((key, _)) = token_only.iter().find(|(_, set)| *set) {
            self.warn(
                key,
                format!("`{key}` is set but auth.mode = \"none\" checks no credentials"),
                "set auth.mode = \"token\" (DS_AUTH__MODE=token) to enforce access control".into(),
            );
        }
    }
}
