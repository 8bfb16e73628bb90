//! Webhook signing with Ed25519: the key (from a PKCS#8 PEM file, or
//! generated), its key id, the JWKS published at `__ds/jwks.json`, and the
//! `Webhook-Signature` header (`t=<unix seconds>,kid=<kid>,ed25519=<sig>`,
//! the signature over `"<t>.<raw body>"`, base64url without padding).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Why a signing key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningKeyError {
    /// The file could not be read.
    #[error("cannot read the key file")]
    Read(#[source] std::io::Error),
    /// The file holds no `PRIVATE KEY` PEM block.
    #[error("no PEM \"PRIVATE KEY\" block found")]
    NotPem,
    /// The PEM block is not base64.
    #[error("the PEM block is not valid base64")]
    BadBase64,
    /// The document is not an Ed25519 PKCS#8 private key.
    #[error("not an Ed25519 private key in PKCS#8: {0}")]
    Invalid(String),
    /// The system random source failed.
    #[error("cannot generate a key: the system random source failed")]
    Random,
}

/// An Ed25519 key that signs webhooks, with its key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
    ///
    /// # Errors
    /// When the file is unreadable or holds no Ed25519 PKCS#8 key.
    pub fn from_pem_file(path: &Path) -> Result<Self, SigningKeyError> {
        let text = std::fs::read_to_string(path).map_err(SigningKeyError::Read)?;
        Self::from_pem(&text)
    }

    /// Parses a PKCS#8 PEM private key.
    ///
    /// # Errors
    /// When the text holds no Ed25519 PKCS#8 key.
    pub fn from_pem(text: &str) -> Result<Self, SigningKeyError> {
        let begin = "-----BEGIN PRIVATE KEY-----";
        let end = "-----END PRIVATE KEY-----";
        let start = text.find(begin).ok_or(SigningKeyError::NotPem)? + begin.len();
        let stop = text[start..].find(end).ok_or(SigningKeyError::NotPem)? + start;
        let body: String = text[start..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|_| SigningKeyError::BadBase64)?;
        Self::from_pkcs8(&der)
    }

    /// Parses a PKCS#8 (v1 or v2) DER document.
    ///
    /// # Errors
    /// When it is not an Ed25519 private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SigningKeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SigningKeyError::Invalid(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = format!("ds_{}", &URL_SAFE_NO_PAD.encode(digest.as_ref())[..16]);
        Ok(Self { pair, kid })
    }

    /// Generates a new key; returns it with its PKCS#8 document (to keep).
    ///
    /// # Errors
    /// When the system random source fails.
    pub fn generate() -> Result<(Self, Vec<u8>), SigningKeyError> {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SigningKeyError::Random)?;
        let key = Self::from_pkcs8(der.as_ref())?;
        Ok((key, der.as_ref().to_vec()))
    }

    /// The key id (`ds_` and 16 characters of the public key's SHA-256).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The JWKS document listing this key (RFC 8037 OKP key).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(self.public_key()),
                "kid": self.kid,
                "use": "sig",
                "alg": "EdDSA",
            }]
        })
    }

    /// The `Webhook-Signature` value for `body` sent at `unix_secs`.
    pub fn signature_header(&self, unix_secs: u64, body: &[u8]) -> String {
        let mut message = Vec::with_capacity(body.len() + 24);
        message.extend_from_slice(unix_secs.to_string().as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        let signature = self.pair.sign(&message);
        format!(
            "t={unix_secs},kid={},ed25519={}",
            self.kid,
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

#[cfg(test)]
/// Checks a `Webhook-Signature` value against a JWKS document, as a
/// receiver does: the key named by `kid`, the signature over `"<t>.<body>"`.
/// Returns the signing time when it verifies.
pub fn verify_signature(header: &str, body: &[u8], jwks: &serde_json::Value) -> Option<u64> {
    let mut t = None;
    let mut kid = None;
    let mut sig = None;
    for part in header.split(',') {
        let (name, value) = part.split_once('=')?;
        match name {
            "t" => t = value.parse::<u64>().ok(),
            "kid" => kid = Some(value),
            "ed25519" => sig = URL_SAFE_NO_PAD.decode(value).ok(),
            _ => {}
        }
    }
    let (t, kid, sig) = (t?, kid?, sig?);
    let key = jwks
        .get("keys")?
        .as_array()?
        .iter()
        .find(|k| k.get("kid").and_then(|v| v.as_str()) == Some(kid))?;
    if key.get("kty")?.as_str()? != "OKP" || key.get("crv")?.as_str()? != "Ed25519" {
        return None;
    }
    let x = URL_SAFE_NO_PAD.decode(key.get("x")?.as_str()?).ok()?;
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
        .verify(&message, &sig)
        .ok()
        .map(|()| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_against_the_published_jwks() {
        let (key, der) = SigningKey::generate().expect("generate");
        assert!(key.kid().starts_with("ds_"));
        let header = key.signature_header(1_700_000_000, b"{\"a\":1}");
        let jwks = key.jwks();
        assert_eq!(
            verify_signature(&header, b"{\"a\":1}", &jwks),
            Some(1_700_000_000)
        );
        assert_eq!(verify_signature(&header, b"{\"a\":2}", &jwks), None);
        // The same key reloaded has the same kid.
        let again = SigningKey::from_pkcs8(&der).expect("reload");
        assert_eq!(again.kid(), key.kid());
        // Another key does not verify it.
        let (other, _) = SigningKey::generate().expect("generate");
        let forged = other
            .signature_header(1_700_000_000, b"{\"a\":1}")
            .replace(other.kid(), key.kid());
        assert_eq!(verify_signature(&forged, b"{\"a\":1}", &jwks), None);
    }

    #[test]
    fn pem_keys_load() {
        let (key, der) = SigningKey::generate().expect("generate");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(&der)
        );
        assert_eq!(SigningKey::from_pem(&pem).expect("pem").kid(), key.kid());
        assert!(matches!(
            SigningKey::from_pem("nothing here"),
            Err(SigningKeyError::NotPem)
        ));
        assert!(
            SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }

    #[test]
    fn openssl_v1_pkcs8_loads() {
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1, no public key).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n\
                   -----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pem(pem).expect("v1 key");
        assert_eq!(key.public_key().len(), 32);
    }
}
