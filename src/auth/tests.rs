//! Access control end to end below HTTP: real keys generated here (Ed25519
//! and P-256 with ring, RSA 2048 with the `openssl` command), real signed
//! tokens, real files rewritten under a running reloader, and a real HTTP
//! server on loopback serving a JWKS.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

use super::api_key::sha256_hex;
use super::*;
use crate::auth::config::{AccessOp, AuthConfig, AuthMode, GrantConfig, IdentityConfig};

const NOW: u64 = 1_800_000_000;

/// A private key that signs tokens, with its JWK.
enum Signer {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

struct TestKey {
    kid: String,
    signer: Signer,
}

impl TestKey {
    fn ed25519(kid: &str) -> Self {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("random");
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("pkcs8");
        Self {
            kid: kid.into(),
            signer: Signer::Ed25519(pair),
        }
    }

    fn p256(kid: &str) -> Self {
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
    fn rsa(kid: &str) -> Self {
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

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ed25519(_) => "EdDSA",
            Signer::P256(_) => "ES256",
            Signer::Rsa(_) => "RS256",
        }
    }

    fn jwk(&self) -> serde_json::Value {
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

    fn sign_raw(&self, input: &[u8]) -> Vec<u8> {
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
    fn token(&self, claims: &serde_json::Value) -> String {
        self.token_with_header(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    fn token_with_header(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = signing_input(header, claims);
        let signature = self.sign_raw(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Claims valid at [`NOW`], reading `/v1/stream/a/**`.
fn claims() -> serde_json::Value {
    json!({
        "sub": "alice",
        "iss": "https://idp.test",
        "aud": "streams",
        "exp": NOW + 600,
        "nbf": NOW - 10,
        "ds": [{"paths": ["/v1/stream/a/**"], "ops": ["read"]}],
    })
}

fn with(mut claims: serde_json::Value, changes: serde_json::Value) -> serde_json::Value {
    for (name, value) in changes.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn auth_config(dir: &Path) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Token,
        jwks_path: Some(dir.join("jwks.json")),
        issuer: Some("https://idp.test".into()),
        audience: Some("streams".into()),
        ..AuthConfig::default()
    }
}

fn access(config: &AuthConfig) -> AccessControl {
    let settings = AuthSettings::from_config(config)
        .expect("valid settings")
        .expect("token mode");
    AccessControl::load(settings).expect("files load")
}

/// Writes `text` to `path` the way a careful deployer does: a temporary
/// file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

async fn principal(access: &AccessControl, token: &str) -> Result<Principal, Rejection> {
    access.authenticate(Some(token), None, NOW).await
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = [
        TestKey::ed25519("ed"),
        TestKey::p256("ec"),
        TestKey::rsa("rsa"),
    ];
    replace(
        &dir.path().join("jwks.json"),
        &jwks(&keys.iter().collect::<Vec<_>>()),
    );
    let access = access(&auth_config(dir.path()));
    for key in &keys {
        let who = principal(&access, &key.token(&claims()))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.alg()));
        assert_eq!(who.name(), "alice");
        assert_eq!(who.kind(), PrincipalKind::Token);
        assert_eq!(who.expires_at(), Some(NOW + 600));
        assert_eq!(who.check(AccessOp::Read, "/v1/stream/a/x"), Ok(()));
        assert_eq!(
            who.check(AccessOp::Append, "/v1/stream/a/x"),
            Err(Denial::NotGranted)
        );
        assert_eq!(
            who.check(AccessOp::Read, "/v1/stream/b/x"),
            Err(Denial::NotGranted)
        );
    }
}

#[tokio::test]
async fn time_issuer_and_audience_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::ed25519("ed");
    replace(&dir.path().join("jwks.json"), &jwks(&[&key]));
    let access = access(&auth_config(dir.path()));
    let cases = [
        (json!({"exp": NOW - 31}), Rejection::Expired),
        (json!({"exp": null}), Rejection::MissingExpiry),
        (json!({"nbf": NOW + 31}), Rejection::NotYetValid),
        (json!({"iss": "https://evil.test"}), Rejection::WrongIssuer),
        (json!({"iss": null}), Rejection::WrongIssuer),
        (json!({"aud": "other"}), Rejection::WrongAudience),
        (
            json!({"aud": ["other", "also-other"]}),
            Rejection::WrongAudience,
        ),
        (
            json!({"ds": [{"paths": ["/a"], "ops": ["fly"]}]}),
            Rejection::BadGrants,
        ),
    ];
    for (changes, expected) in cases {
        let token = key.token(&with(claims(), changes.clone()));
        assert_eq!(
            principal(&access, &token)
                .await
                .map(|p| p.name().to_owned()),
            Err(expected),
            "{changes}"
        );
    }
    // Within the leeway both ways.
    let token = key.token(&with(claims(), json!({"exp": NOW - 29, "nbf": NOW + 29})));
    assert!(principal(&access, &token).await.is_ok());
    // A list audience that names us.
    let token = key.token(&with(claims(), json!({"aud": ["x", "streams"]})));
    assert!(principal(&access, &token).await.is_ok());
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ed = TestKey::ed25519("ed");
    let rsa = TestKey::rsa("rsa");
    replace(&dir.path().join("jwks.json"), &jwks(&[&ed, &rsa]));
    let access = access(&auth_config(dir.path()));
    let refused = |token: String, expected: Rejection| {
        let access = access.clone();
        async move {
            assert_eq!(
                principal(&access, &token)
                    .await
                    .map(|p| p.name().to_owned()),
                Err(expected),
                "{token}"
            );
        }
    };

    // A key the server does not know, under a known and an unknown kid.
    let stranger = TestKey::ed25519("ed");
    refused(stranger.token(&claims()), Rejection::BadSignature).await;
    let stranger = TestKey::ed25519("who");
    refused(stranger.token(&claims()), Rejection::UnknownKey).await;

    // A changed payload under a genuine signature.
    let genuine = ed.token(&claims());
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let widened = URL_SAFE_NO_PAD.encode(
        with(
            claims(),
            json!({"ds": [{"paths": ["/**"], "ops": ["delete"]}]}),
        )
        .to_string(),
    );
    parts[1] = &widened;
    refused(parts.join("."), Rejection::BadSignature).await;

    // `alg` confusion: RS256 named on the Ed25519 key, signed by the RSA key.
    let header = json!({"alg": "RS256", "kid": "ed"});
    refused(
        rsa.token_with_header(&header, &claims()),
        Rejection::AlgorithmMismatch,
    )
    .await;
    let header = json!({"alg": "EdDSA", "kid": "rsa"});
    refused(
        ed.token_with_header(&header, &claims()),
        Rejection::AlgorithmMismatch,
    )
    .await;

    // `none`, with and without a signature part.
    let input = signing_input(&json!({"alg": "none", "kid": "ed"}), &claims());
    refused(format!("{input}.AAAA"), Rejection::UnsupportedAlgorithm).await;
    refused(format!("{input}."), Rejection::MalformedToken).await;

    // HS256 keyed with the public key material, the classic confusion.
    let public_forms: Vec<Vec<u8>> = vec![
        URL_SAFE_NO_PAD
            .decode(ed.jwk()["x"].as_str().expect("x"))
            .expect("x"),
        ed.jwk().to_string().into_bytes(),
        jwks(&[&ed]).into_bytes(),
    ];
    for secret in public_forms {
        let input = signing_input(&json!({"alg": "HS256", "kid": "ed"}), &claims());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        refused(
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())),
            Rejection::UnsupportedAlgorithm,
        )
        .await;
    }

    // Other algorithms and shapes.
    for alg in ["HS512", "PS256", "ES384", "RS512", "edDSA", ""] {
        let header = json!({"alg": alg, "kid": "ed"});
        refused(
            ed.token_with_header(&header, &claims()),
            Rejection::UnsupportedAlgorithm,
        )
        .await;
    }
    let header = json!({"alg": "EdDSA", "kid": "ed", "crit": ["exp"]});
    refused(
        ed.token_with_header(&header, &claims()),
        Rejection::MalformedToken,
    )
    .await;
    let header = json!({"alg": "EdDSA", "kid": "ed", "typ": "dpop+jwt"});
    refused(
        ed.token_with_header(&header, &claims()),
        Rejection::MalformedToken,
    )
    .await;
    // An embedded key is never used: the configured Ed25519 key is.
    let header = json!({"alg": "EdDSA", "jwk": stranger.jwk()});
    refused(
        stranger.token_with_header(&header, &claims()),
        Rejection::BadSignature,
    )
    .await;
    // No kid: tried only against the one key of its algorithm.
    let header = json!({"alg": "EdDSA"});
    assert!(
        principal(&access, &ed.token_with_header(&header, &claims()))
            .await
            .is_ok()
    );
    refused(format!("{genuine}.x"), Rejection::MalformedToken).await;
    refused("a.b.c".into(), Rejection::MalformedToken).await;
    refused(
        format!("{}.e30.AAAA", "A".repeat(20_000)),
        Rejection::MalformedToken,
    )
    .await;
    // Not a JWT, and no API keys configured.
    refused("dsk_live_key".into(), Rejection::MalformedToken).await;
}

#[tokio::test]
async fn grants_come_from_the_configured_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::p256("ec");
    replace(&dir.path().join("jwks.json"), &jwks(&[&key]));
    let mut config = auth_config(dir.path());
    config.claim = "https://streams.example/grants".into();
    let access = access(&config);
    let token = key.token(&with(
        claims(),
        json!({
            "https://streams.example/grants": [
                {"paths": ["/v1/stream/tenant-b/*"], "ops": ["append", "create"]},
                {"paths": ["/v1/stream/tenant-b/**"], "ops": ["subscribe"]},
            ],
        }),
    ));
    let who = principal(&access, &token).await.expect("valid");
    assert_eq!(who.check(AccessOp::Append, "/v1/stream/tenant-b/x"), Ok(()));
    assert_eq!(who.check(AccessOp::Create, "/v1/stream/tenant-b/x"), Ok(()));
    assert_eq!(
        who.check(AccessOp::Read, "/v1/stream/a/x"),
        Err(Denial::NotGranted),
        "the `ds` claim is not read"
    );
    assert_eq!(who.check_pattern("/v1/stream/tenant-b/**"), Ok(()));
    assert_eq!(who.check_pattern("/v1/stream/**"), Err(Denial::NotGranted));
    // Without the claim: authenticated, allowed nothing.
    let token = key.token(&with(
        claims(),
        json!({"https://streams.example/grants": null}),
    ));
    let who = principal(&access, &token).await.expect("valid");
    assert_eq!(
        who.check(AccessOp::Read, "/v1/stream/a/x"),
        Err(Denial::NotGranted)
    );
}

fn api_keys_file(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, key, path)| {
            format!(
                "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\ngrants = [{{ paths = [\"{path}\"], \
                 ops = [\"create\", \"append\"] }}]\n",
                sha256_hex(key)
            )
        })
        .collect()
}

#[tokio::test]
async fn api_keys_identities_and_anonymous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_path = dir.path().join("keys.toml");
    replace(
        &keys_path,
        &api_keys_file(&[("ingest", "dsk_ingest_0123456789", "/v1/stream/t/**")]),
    );
    let config = AuthConfig {
        mode: AuthMode::Token,
        api_keys_path: Some(keys_path.clone()),
        anonymous: vec![GrantConfig {
            paths: vec!["/v1/stream/public/**".into()],
            ops: vec![AccessOp::Read],
        }],
        identities: vec![IdentityConfig {
            name: Some("writer.internal".into()),
            grants: vec![GrantConfig {
                paths: vec!["/v1/stream/w/**".into()],
                ops: vec![AccessOp::Delete],
            }],
            ..IdentityConfig::default()
        }],
        ..AuthConfig::default()
    };
    let access = access(&config);

    let ingest = principal(&access, "dsk_ingest_0123456789")
        .await
        .expect("known key");
    assert_eq!(
        (ingest.name(), ingest.kind()),
        ("ingest", PrincipalKind::ApiKey)
    );
    assert_eq!(ingest.check(AccessOp::Append, "/v1/stream/t/x"), Ok(()));
    assert_eq!(
        ingest.check(AccessOp::Read, "/v1/stream/t/x"),
        Err(Denial::NotGranted)
    );
    for wrong in [
        "dsk_ingest_012345678",
        "dsk_ingest_0123456789x",
        &sha256_hex("dsk_ingest_0123456789"),
        "a.b.c",
    ] {
        assert_eq!(
            principal(&access, wrong).await.map(|p| p.name().to_owned()),
            Err(Rejection::UnknownApiKey),
            "{wrong}"
        );
    }

    // A listed identity, an unlisted one, none.
    let certificate = ClientIdentity::from_certificate(Some("writer.internal".into()), Vec::new())
        .expect("named");
    let writer = access
        .authenticate(None, Some(&certificate), NOW)
        .await
        .expect("identity");
    assert_eq!(
        writer.kind(),
        PrincipalKind::Identity(crate::client::IdentitySource::Certificate)
    );
    assert_eq!(writer.check(AccessOp::Delete, "/v1/stream/w/x"), Ok(()));
    let stranger = ClientIdentity::from_proxy_header("somebody".into());
    for identity in [Some(&stranger), None] {
        let anonymous = access
            .authenticate(None, identity, NOW)
            .await
            .expect("anonymous");
        assert!(anonymous.is_anonymous());
        assert_eq!(
            anonymous.check(AccessOp::Read, "/v1/stream/public/x"),
            Ok(())
        );
        assert_eq!(
            anonymous.check(AccessOp::Read, "/v1/stream/w/x"),
            Err(Denial::CredentialsRequired)
        );
    }
    // A bad token is refused, not downgraded to the identity or anonymous.
    assert_eq!(
        access
            .authenticate(Some("nope"), Some(&certificate), NOW)
            .await
            .map(|p| p.name().to_owned()),
        Err(Rejection::UnknownApiKey)
    );

    // Adding a key: picked up by a reload.
    replace(
        &keys_path,
        &api_keys_file(&[
            ("ingest", "dsk_ingest_0123456789", "/v1/stream/t/**"),
            ("second", "dsk_second", "/v1/stream/s/**"),
        ]),
    );
    access.reload_files(false).expect("valid file");
    assert_eq!(
        principal(&access, "dsk_second")
            .await
            .map(|p| p.name().to_owned()),
        Ok("second".to_owned())
    );
    // A broken file keeps the last good keys.
    replace(&keys_path, "[[keys]]\nname = \"x\"\nsha256 = \"short\"\n");
    assert!(matches!(
        access.reload_files(false),
        Err(AuthFileError::Invalid { .. })
    ));
    assert!(principal(&access, "dsk_second").await.is_ok());
}

mod reload;
