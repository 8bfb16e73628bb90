//! Bearer JWT verification (RFC 7519 over compact JWS, RFC 7515), with
//! `ring` doing the cryptography.
//!
//! The order is fixed so that nothing in an unverified token steers the
//! check: the header's `alg` must be EdDSA, ES256 or RS256 (so `none` and
//! HMAC, where a public key would become a shared secret, never get near a
//! key); the key is chosen by `kid` from the configured set only (`jwk`,
//! `jku` and `x5u` header members are ignored; a token without `kid` needs
//! the set to hold exactly one key of its algorithm) and must have exactly
//! that algorithm; the signature is verified; only then is the payload read:
//! `exp` (required) and `nbf` with the leeway, `iss` and `aud` when
//! configured, and the grants claim.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::auth::config::GrantConfig;

use super::error::Rejection;
use super::grant::Grant;
use super::jwk::{Algorithm, KeySet};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a token must satisfy besides its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRules {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required member of `aud`. Unset, tokens that carry an `aud` are
    /// refused (RFC 7519 §4.1.3: the server cannot tell it is meant).
    pub audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The claim holding the grants.
    pub claim: String,
}

/// A verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`, if any.
    pub subject: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// The grants the token carries (none when it has no grants claim).
    pub grants: Vec<Grant>,
}

/// Whether `token` has the shape of a compact JWS (three base64url parts),
/// as opposed to an opaque API key.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let shaped = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    shaped(parts.next()) && shaped(parts.next()) && shaped(parts.next()) && parts.next().is_none()
}

/// The protected header members this server reads.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The `kid` of a token's header, if it is well-formed enough to tell.
pub fn key_id(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header.kid
}

/// Verifies `token` against `keys` and `rules` at `now` (Unix seconds).
///
/// # Errors
/// The first [`Rejection`] found, in the order the module docs give.
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &TokenRules,
    now: u64,
) -> Result<VerifiedToken, Rejection> {
    if token.len() > MAX_TOKEN_BYTES || !looks_like_jwt(token) {
        return Err(Rejection::MalformedToken);
    }
    let mut parts = token.splitn(3, '.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::MalformedToken);
    };
    let header: Header = decode_json(header_b64)?;
    let algorithm = Algorithm::from_name(&header.alg).ok_or(Rejection::UnsupportedAlgorithm)?;
    // RFC 7515 §4.1.11: extensions we do not understand must be refused.
    if header.crit.is_some() {
        return Err(Rejection::MalformedToken);
    }
    if let Some(typ) = &header.typ {
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ != "jwt" && typ != "at+jwt" {
            return Err(Rejection::MalformedToken);
        }
    }
    let named: Vec<_> = keys
        .keys()
        .iter()
        .filter(|key| header.kid.is_none() || key.kid() == header.kid.as_deref())
        .collect();
    if named.is_empty() {
        return Err(Rejection::UnknownKey);
    }
    let candidates: Vec<_> = named
        .into_iter()
        .filter(|key| key.algorithm() == algorithm)
        .collect();
    match (candidates.len(), &header.kid) {
        (0, Some(_)) => return Err(Rejection::AlgorithmMismatch),
        (0, None) => return Err(Rejection::UnknownKey),
        // Without a `kid`, only an unambiguous key is tried: one signature
        // check per token, whatever the set holds.
        (2.., None) => return Err(Rejection::UnknownKey),
        _ => {}
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| Rejection::MalformedToken)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    if !candidates
        .iter()
        .any(|key| key.verify(signing_input.as_bytes(), &signature))
    {
        return Err(Rejection::BadSignature);
    }
    let claims: serde_json::Map<String, serde_json::Value> = decode_json(payload_b64)?;
    check_claims(&claims, rules, now)
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::MalformedToken)?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::MalformedToken)
}

/// A NumericDate (RFC 7519 §2) as whole seconds; fractions are dropped.
fn numeric_date(value: &serde_json::Value) -> Result<u64, Rejection> {
    match value.as_f64() {
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            // Saturates for absurdly large values, which then simply never expire.
            Ok(seconds as u64)
        }
        _ => Err(Rejection::MalformedToken),
    }
}

fn check_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    rules: &TokenRules,
    now: u64,
) -> Result<VerifiedToken, Rejection> {
    let expires_at = numeric_date(claims.get("exp").ok_or(Rejection::MissingExpiry)?)?;
    if now >= expires_at.saturating_add(rules.leeway_secs) {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let not_before = numeric_date(nbf)?;
        if now.saturating_add(rules.leeway_secs) < not_before {
            return Err(Rejection::NotYetValid);
        }
    }
    if let Some(issuer) = &rules.issuer
        && claims.get("iss").and_then(serde_json::Value::as_str) != Some(issuer.as_str())
    {
        return Err(Rejection::WrongIssuer);
    }
    match (claims.get("aud"), &rules.audience) {
        (None, None) => {}
        (None, Some(_)) | (Some(_), None) => return Err(Rejection::WrongAudience),
        (Some(aud), Some(wanted)) => {
            let named = match aud {
                serde_json::Value::String(one) => one == wanted,
                serde_json::Value::Array(many) => {
                    many.iter().any(|one| one.as_str() == Some(wanted.as_str()))
                }
                _ => false,
            };
            if !named {
                return Err(Rejection::WrongAudience);
            }
        }
    }
    let subject = match claims.get("sub") {
        None => None,
        Some(serde_json::Value::String(sub)) => Some(sub.clone()),
        Some(_) => return Err(Rejection::MalformedToken),
    };
    let grants = match claims.get(&rules.claim) {
        None => Vec::new(),
        Some(value) => {
            let configs: Vec<GrantConfig> =
                serde_json::from_value(value.clone()).map_err(|_| Rejection::BadGrants)?;
            Grant::from_configs(&configs).map_err(|_| Rejection::BadGrants)?
        }
    };
    Ok(VerifiedToken {
        subject,
        expires_at,
        grants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shapes() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("eyJ-_.x_Y.Z-9"));
        for not in [
            "",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.c=",
            "a.b.c ",
            "dsk_live_123",
        ] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }

    fn rules() -> TokenRules {
        TokenRules {
            issuer: Some("https://idp".into()),
            audience: Some("ds".into()),
            leeway_secs: 30,
            claim: "ds".into(),
        }
    }

    fn claims(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().expect("object").clone()
    }

    #[test]
    fn time_claims_with_leeway() {
        let base = serde_json::json!({"iss": "https://idp", "aud": "ds"});
        let with = |extra: serde_json::Value| {
            let mut c = claims(base.clone());
            c.extend(claims(extra));
            c
        };
        let now = 1_000_000;
        assert!(check_claims(&with(serde_json::json!({"exp": now + 1})), &rules(), now).is_ok());
        assert!(check_claims(&with(serde_json::json!({"exp": now - 29})), &rules(), now).is_ok());
        assert_eq!(
            check_claims(&with(serde_json::json!({"exp": now - 30})), &rules(), now),
            Err(Rejection::Expired)
        );
        assert_eq!(
            check_claims(&with(serde_json::json!({})), &rules(), now),
            Err(Rejection::MissingExpiry)
        );
        assert_eq!(
            check_claims(&with(serde_json::json!({"exp": "soon"})), &rules(), now),
            Err(Rejection::MalformedToken)
        );
        assert!(
            check_claims(
                &with(serde_json::json!({"exp": now + 60, "nbf": now + 30})),
                &rules(),
                now
            )
            .is_ok()
        );
        assert_eq!(
            check_claims(
                &with(serde_json::json!({"exp": now + 60, "nbf": now + 31})),
                &rules(),
                now
            ),
            Err(Rejection::NotYetValid)
        );
        assert!(
            check_claims(
                &with(serde_json::json!({"exp": (now + 1) as f64 + 0.5})),
                &rules(),
                now
            )
            .is_ok()
        );
    }

    #[test]
    fn issuer_and_audience() {
        let now = 10;
        let check = |value: serde_json::Value, rules: &TokenRules| {
            check_claims(&claims(value), rules, now).map(|_| ())
        };
        let exp = now + 100;
        assert_eq!(
            check(
                serde_json::json!({"exp": exp, "iss": "https://idp", "aud": ["x", "ds"]}),
                &rules()
            ),
            Ok(())
        );
        assert_eq!(
            check(
                serde_json::json!({"exp": exp, "iss": "https://other", "aud": "ds"}),
                &rules()
            ),
            Err(Rejection::WrongIssuer)
        );
        assert_eq!(
            check(serde_json::json!({"exp": exp, "aud": "ds"}), &rules()),
            Err(Rejection::WrongIssuer)
        );
        assert_eq!(
            check(
                serde_json::json!({"exp": exp, "iss": "https://idp", "aud": "other"}),
                &rules()
            ),
            Err(Rejection::WrongAudience)
        );
        assert_eq!(
            check(
                serde_json::json!({"exp": exp, "iss": "https://idp"}),
                &rules()
            ),
            Err(Rejection::WrongAudience)
        );
        let open = TokenRules {
            issuer: None,
            audience: None,
            ..rules()
        };
        assert_eq!(check(serde_json::json!({"exp": exp}), &open), Ok(()));
        assert_eq!(
            check(serde_json::json!({"exp": exp, "aud": "ds"}), &open),
            Err(Rejection::WrongAudience),
            "an audience the server cannot check"
        );
    }

    #[test]
    fn grants_claim() {
        let open = TokenRules {
            issuer: None,
            audience: None,
            leeway_secs: 0,
            claim: "https://example.com/ds".into(),
        };
        let verified = check_claims(
            &claims(serde_json::json!({
                "exp": 100, "sub": "alice",
                "https://example.com/ds": [{"paths": ["/v1/stream/a/**"], "ops": ["read"]}],
                "ds": "ignored: another claim name"
            })),
            &open,
            1,
        )
        .expect("valid");
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        assert_eq!(verified.grants.len(), 1);
        for bad in [
            serde_json::json!({"paths": ["/a"], "ops": ["read"]}),
            serde_json::json!([{"paths": ["/a"], "ops": ["fly"]}]),
            serde_json::json!([{"paths": ["a"], "ops": ["read"]}]),
            serde_json::json!([{"paths": ["/a"], "ops": ["read"], "extra": 1}]),
            serde_json::json!([{"paths": [], "ops": ["read"]}]),
        ] {
            let mut c = claims(serde_json::json!({"exp": 100}));
            c.insert("https://example.com/ds".into(), bad.clone());
            assert_eq!(
                check_claims(&c, &open, 1).map(|_| ()),
                Err(Rejection::BadGrants),
                "{bad}"
            );
        }
    }
}
