//! Signing keys and JWTs made at test time, for the access-control tests
//! of the crate (`src/auth/tests.rs`) and of the HTTP API (`tests/api`):
//! Ed25519 and P-256 keys generated with ring, RSA 2048 with the `openssl`
//! command; tokens signed with them; their JWKS.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

/// A private key that signs tokens, with its JWK.
pub enum Signer {
    /// EdDSA.
    Ed25519(Ed25519KeyPair),
    /// ES256.
    P256(EcdsaKeyPair),
    /// RS256.
    Rsa(RsaKeyPair),
}

/// A signing key and the `kid` its tokens name.
pub struct TestKey {
    /// The key id in tokens and in the JWKS.
    pub kid: String,
    /// The private key.
    pub signer: Signer,
}

impl TestKey {
    /// A new Ed25519 key.
    pub fn ed25519(kid: &str) -> Self {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("random");
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("pkcs8");
        Self {
            kid: kid.into(),
            signer: Signer::Ed25519(pair),
        }
    }

    /// A new P-256 key.
    pub fn p256(kid: &str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("random");
        let pair = EcdsaKeyPair::from_pkcs8(alg, der.as_ref(), &rng).expect("pkcs8");
        Self {
            kid: kid.into(),
            signer: Signer::P256(pair),
        }
    }

    /// RSA 2048 from `openssl genpkey` (ring cannot generate RSA keys),
    /// made once per test run.
    pub fn rsa(kid: &str) -> Self {
        static DER: OnceLock<Vec<u8>> = OnceLock::new();
        let der = DER.get_or_init(|| {
            let output = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-outform",
                    "DER",
                ])
                .output()
                .expect("the openssl command (Debian package openssl) runs");
            assert!(output.status.success(), "openssl genpkey failed");
            output.stdout
        });
        Self {
            kid: kid.into(),
            // DER output is PKCS#1 in OpenSSL 3, PKCS#8 elsewhere.
            signer: Signer::Rsa(
                RsaKeyPair::from_der(der)
                    .or_else(|_| RsaKeyPair::from_pkcs8(der))
                    .expect("an RSA private key"),
            ),
        }
    }

    /// The JWS `alg` of its tokens.
    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ed25519(_) => "EdDSA",
            Signer::P256(_) => "ES256",
            Signer::Rsa(_) => "RS256",
        }
    }

    /// Its public JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match &self.signer {
            Signer::Ed25519(pair) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "alg": "EdDSA", "use": "sig",
                "x": b64(pair.public_key().as_ref()),
            }),
            Signer::P256(pair) => {
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "kid": self.kid,
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
            Signer::Rsa(pair) => {
                let public: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                json!({
                    "kty": "RSA", "kid": self.kid, "alg": "RS256",
                    "n": b64(&public.n), "e": b64(&public.e),
                })
            }
        }
    }

    /// Signs `input` (a JWS signing input).
    pub fn sign_raw(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ed25519(pair) => pair.sign(input).as_ref().to_vec(),
            Signer::P256(pair) => pair.sign(&rng, input).expect("sign").as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut signature)
                    .expect("sign");
                signature
            }
        }
    }

    /// A token with this key's `alg` and `kid`.
    pub fn token(&self, claims: &serde_json::Value) -> String {
        self.token_with_header(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A token with any header, signed with this key.
    pub fn token_with_header(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        let input = signing_input(header, claims);
        let signature = self.sign_raw(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// `base64url(header).base64url(claims)`.
pub fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A JWKS of the public keys.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}
