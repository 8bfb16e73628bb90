//! JSON Web Key Sets (RFC 7517): the public keys that sign bearer tokens.
//!
//! Only signature keys of the three accepted algorithms are kept: Ed25519
//! (`OKP`, RFC 8037) for `EdDSA`, P-256 (`EC`) for `ES256`, and RSA of 2048
//! to 8192 bits for `RS256`. A key's type fixes its algorithm; a key that
//! names another `alg`, is meant for encryption, or carries private
//! parameters is left out, with the reason in the set's notes. A set
//! without a usable key, or with one `kid` twice, is refused as a whole.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::file::Material;

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: u64 = 1 << 20;
/// Most keys in one set.
pub const MAX_KEYS: usize = 64;

/// A signature algorithm accepted in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519.
    EdDsa,
    /// ECDSA over P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl Algorithm {
    /// The JOSE name; every other name (`none`, `HS256`, `PS256`, …) is refused.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "EdDSA" => Some(Self::EdDsa),
            "ES256" => Some(Self::Es256),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }
}

/// A public key that verifies token signatures with one algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    kid: Option<String>,
    material: KeyMaterial,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyMaterial {
    /// The 32-byte public key.
    Ed25519(Vec<u8>),
    /// The uncompressed point, `04 || x || y`.
    P256(Vec<u8>),
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl VerifyingKey {
    /// The key id, if the set gives one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self.material {
            KeyMaterial::Ed25519(_) => Algorithm::EdDsa,
            KeyMaterial::P256(_) => Algorithm::Es256,
            KeyMaterial::Rsa { .. } => Algorithm::Rs256,
        }
    }

    /// Whether `signature` signs `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{
            ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
            UnparsedPublicKey,
        };
        match &self.material {
            KeyMaterial::Ed25519(key) => UnparsedPublicKey::new(&ED25519, key)
                .verify(message, signature)
                .is_ok(),
            KeyMaterial::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
            KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
        }
    }
}

/// A parsed key set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    /// Keys left out, and why (`kid`, or the key's position).
    notes: Vec<String>,
}

impl KeySet {
    /// Parses a JWKS document.
    ///
    /// # Errors
    /// A message naming the problem when the document is not a JWKS, has
    /// too many keys, repeats a `kid`, or has no usable key.
    pub fn parse(document: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|error| format!("not a JWKS document ({{\"keys\": [...]}}): {error}"))?;
        if document.keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        let mut set = KeySet::default();
        for (index, value) in document.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    set.notes.push(format!("key #{index} left out: {error}"));
                    continue;
                }
            };
            let label = jwk
                .kid
                .as_ref()
                .map_or_else(|| format!("key #{index}"), |kid| format!("key {kid:?}"));
            match jwk.into_key() {
                Ok(key) => {
                    if key.kid.is_some() && set.keys.iter().any(|known| known.kid == key.kid) {
                        return Err(format!("{label} appears twice"));
                    }
                    set.keys.push(key);
                }
                Err(why) => set.notes.push(format!("{label} left out: {why}")),
            }
        }
        if set.keys.is_empty() {
            let notes = if set.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", set.notes.join("; "))
            };
            return Err(format!("no usable signature key{notes}"));
        }
        Ok(set)
    }

    /// The keys.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// What was left out, for the reload log.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether a key has this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// The key ids, for the reload log.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(VerifyingKey::kid).collect()
    }
}

impl Material for KeySet {
    const WHAT: &'static str = "JWKS";

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        KeySet::parse(bytes)
    }

    fn summary(&self) -> String {
        format!("{} keys, ids: {}", self.keys.len(), self.kids().join(", "))
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

/// The members of a JWK this server reads.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    d: Option<serde_json::Value>,
}

impl Jwk {
    fn into_key(self) -> Result<VerifyingKey, String> {
        if self.d.is_some() {
            return Err("it holds a private key (`d`); publish public keys only".into());
        }
        if let Some(usage) = &self.usage
            && usage != "sig"
        {
            return Err(format!("\"use\" is {usage:?}, not \"sig\""));
        }
        if let Some(ops) = &self.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
        let field = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
            let text = value.as_deref().ok_or_else(|| format!("no \"{name}\""))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| format!("\"{name}\" is not base64url without padding"))
        };
        let material = match (self.kty.as_str(), self.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => {
                let x = field("x", &self.x)?;
                if x.len() != 32 {
                    return Err("an Ed25519 \"x\" is 32 bytes".into());
                }
                KeyMaterial::Ed25519(x)
            }
            ("EC", Some("P-256")) => {
                let (x, y) = (field("x", &self.x)?, field("y", &self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 \"x\" and \"y\" are 32 bytes each".into());
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::P256(point)
            }
            ("RSA", _) => {
                let (n, e) = (field("n", &self.n)?, field("e", &self.e)?);
                let bits = significant_bits(&n);
                if !(2048..=8192).contains(&bits) {
                    return Err(format!(
                        "an RSA modulus of {bits} bits (2048 to 8192 accepted)"
                    ));
                }
                KeyMaterial::Rsa { n, e }
            }
            (kty, crv) => {
                return Err(format!(
                    "key type {kty:?}{} is not accepted (OKP Ed25519, EC P-256, RSA)",
                    crv.map(|c| format!(" with curve {c:?}"))
                        .unwrap_or_default()
                ));
            }
        };
        let key = VerifyingKey {
            kid: self.kid,
            material,
        };
        if let Some(alg) = &self.alg
            && alg != key.algorithm().as_str()
        {
            return Err(format!(
                "\"alg\" is {alg:?}; this key only verifies {}",
                key.algorithm().as_str()
            ));
        }
        Ok(key)
    }
}

/// Bits of a big-endian unsigned number, without leading zeros.
fn significant_bits(number: &[u8]) -> usize {
    let skip = number.iter().take_while(|byte| **byte == 0).count();
    match number.get(skip) {
        None => 0,
        Some(first) => (number.len() - skip) * 8 - first.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn parse(keys: serde_json::Value) -> Result<KeySet, String> {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn types_fix_algorithms() {
        let set = parse(serde_json::json!([
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "kid": "ed"},
            {"kty": "EC", "crv": "P-256", "x": b64(&[2; 32]), "y": b64(&[3; 32]), "kid": "ec", "alg": "ES256"},
            {"kty": "RSA", "n": b64(&[0xff; 256]), "e": b64(&[1, 0, 1]), "kid": "rsa", "use": "sig"},
        ]))
        .expect("valid");
        let algs: Vec<Algorithm> = set.keys().iter().map(VerifyingKey::algorithm).collect();
        assert_eq!(algs, [Algorithm::EdDsa, Algorithm::Es256, Algorithm::Rs256]);
        assert_eq!(set.kids(), ["ed", "ec", "rsa"]);
        assert!(set.notes().is_empty());
    }

    #[test]
    fn unusable_keys_are_left_out_with_a_note() {
        let set = parse(serde_json::json!([
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "kid": "good"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed448", "x": b64(&[1; 57]), "kid": "ed448"},
            {"kty": "EC", "crv": "P-384", "x": b64(&[2; 48]), "y": b64(&[3; 48]), "kid": "p384"},
            {"kty": "RSA", "n": b64(&[0xff; 128]), "e": b64(&[1, 0, 1]), "kid": "rsa1024"},
            {"kty": "RSA", "n": b64(&[0xff; 256]), "e": b64(&[1, 0, 1]), "kid": "pss", "alg": "PS256"},
            {"kty": "RSA", "n": b64(&[0xff; 256]), "e": b64(&[1, 0, 1]), "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "d": b64(&[1; 32]), "kid": "private"},
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64!", "kid": "garbled"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31]), "kid": "short"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "key_ops": ["encrypt"], "kid": "ops"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "alg": "RS256", "kid": "confused"},
            {"crv": "Ed25519"},
        ]))
        .expect("one key is usable");
        assert_eq!(set.kids(), ["good"]);
        assert_eq!(set.notes().len(), 12, "{:?}", set.notes());
        let notes = set.notes().join("\n");
        for expected in [
            "\"hmac\" left out: key type \"oct\"",
            "\"rsa1024\" left out: an RSA modulus of 1024 bits",
            "\"pss\" left out: \"alg\" is \"PS256\"",
            "\"private\" left out: it holds a private key",
            "\"confused\" left out: \"alg\" is \"RS256\"",
            "key #12 left out",
        ] {
            assert!(notes.contains(expected), "{expected}\n{notes}");
        }
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(b"{\"keys\": {}}").is_err());
        assert!(
            parse(serde_json::json!([]))
                .expect_err("empty")
                .contains("no usable")
        );
        assert!(
            parse(serde_json::json!([{"kty": "oct", "k": "AA"}]))
                .expect_err("no signature key")
                .contains("oct")
        );
        let twice = serde_json::json!([
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "kid": "k"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[2; 32]), "kid": "k"},
        ]);
        assert!(parse(twice).expect_err("duplicate").contains("twice"));
        let many: Vec<serde_json::Value> = (0..=MAX_KEYS)
            .map(|i| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "kid": i.to_string()}))
            .collect();
        assert!(parse(many.into()).is_err());
    }

    #[test]
    fn bits() {
        assert_eq!(significant_bits(&[0, 0, 1]), 1);
        assert_eq!(significant_bits(&[0x80, 0]), 16);
        assert_eq!(significant_bits(&[]), 0);
    }
}
