//! Static API keys for services: a TOML file (`auth.api_keys_path`) that
//! stores only the SHA-256 of each key, with a name and grants.
//!
//! ```toml
//! [[keys]]
//! name = "ingest-writer"   # shown in logs as the principal
//! sha256 = "4f1c…"         # hex of SHA-256 over the key's bytes: printf %s "$KEY" | sha256sum
//! grants = [{ paths = ["/v1/stream/tenant-a/**"], ops = ["create", "append"] }]
//! ```
//!
//! A presented key is hashed and compared with every stored hash in
//! constant time, so neither the key nor its hash leaks through timing.

use std::sync::Arc;

use serde::Deserialize;

use crate::auth::config::GrantConfig;

use super::file::Material;
use super::grant::Grant;

/// Longest key name, in bytes.
const MAX_NAME_BYTES: usize = 128;

/// One API key: its name, the SHA-256 of the key, and its grants.
#[derive(Clone, Debug)]
pub struct ApiKey {
    name: String,
    digest: [u8; 32],
    grants: Arc<[Grant]>,
}

impl ApiKey {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the key may do.
    pub(crate) fn grants(&self) -> &Arc<[Grant]> {
        &self.grants
    }
}

/// The API keys of one file.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    #[serde(default)]
    grants: Vec<GrantConfig>,
}

impl ApiKeys {
    /// Parses the TOML file format.
    ///
    /// # Errors
    /// What is wrong, naming the entry (never a hash).
    pub fn parse(text: &str) -> Result<Self, String> {
        // The error's own text quotes the offending line, which may hold a
        // hash: name the line only.
        let file: FileFormat = toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            format!(
                "not an API keys file{}: {}",
                line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                error.message()
            )
        })?;
        let mut keys: Vec<ApiKey> = Vec::with_capacity(file.keys.len());
        for (index, entry) in file.keys.into_iter().enumerate() {
            let label = format!("key #{} ({:?})", index + 1, entry.name);
            if entry.name.trim().is_empty()
                || entry.name.len() > MAX_NAME_BYTES
                || entry.name.chars().any(char::is_control)
            {
                return Err(format!(
                    "{label}: the name must be 1 to {MAX_NAME_BYTES} bytes without control characters"
                ));
            }
            let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                format!("{label}: sha256 must be 64 hex digits (the SHA-256 of the key)")
            })?;
            let grants =
                Grant::from_configs(&entry.grants).map_err(|error| format!("{label}: {error}"))?;
            if keys.iter().any(|key| key.name == entry.name) {
                return Err(format!("{label}: the name is used twice"));
            }
            if keys.iter().any(|key| key.digest == digest) {
                return Err(format!("{label}: the same key is listed twice"));
            }
            keys.push(ApiKey {
                name: entry.name,
                digest,
                grants: grants.into(),
            });
        }
        Ok(Self { keys })
    }

    /// The entry whose hash is the SHA-256 of `presented`, if any. Every
    /// stored hash is compared, each in constant time.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let digest = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        let digest: &[u8] = digest.as_ref();
        let mut found = None;
        for key in &self.keys {
            if same_digest(&key.digest, digest) {
                found = Some(key);
            }
        }
        found
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Material for ApiKeys {
    const WHAT: &'static str = "API keys";

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
        ApiKeys::parse(text)
    }

    fn summary(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(ApiKey::name).collect();
        format!("{} API keys: {}", self.keys.len(), names.join(", "))
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

/// Compares without an early exit, so the time taken does not depend on
/// where the first difference is.
fn same_digest(stored: &[u8; 32], presented: &[u8]) -> bool {
    if presented.len() != stored.len() {
        return false;
    }
    let difference = stored
        .iter()
        .zip(presented)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

/// The `sha256` value of `key` in the file.
#[cfg(test)]
pub(crate) fn sha256_hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::AccessOp;

    fn file(entries: &[(&str, &str)]) -> String {
        entries
            .iter()
            .map(|(name, key)| {
                format!(
                    "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\ngrants = [{{ paths = \
                     [\"/v1/stream/{name}/**\"], ops = [\"append\"] }}]\n",
                    sha256_hex(key)
                )
            })
            .collect()
    }

    #[test]
    fn hits_and_misses() {
        let keys = ApiKeys::parse(&file(&[("writer", "dsk_secret_1"), ("reader", "dsk_2")]))
            .expect("valid");
        assert_eq!(keys.len(), 2);
        let hit = keys.find("dsk_secret_1").expect("known key");
        assert_eq!(hit.name(), "writer");
        assert!(hit.grants()[0].allows(AccessOp::Append, "/v1/stream/writer/x"));
        assert_eq!(keys.find("dsk_2").map(ApiKey::name), Some("reader"));
        for miss in [
            "",
            "dsk_secret_",
            "dsk_secret_1 ",
            "DSK_SECRET_1",
            &sha256_hex("dsk_2"),
        ] {
            assert!(keys.find(miss).is_none(), "{miss:?}");
        }
    }

    #[test]
    fn uppercase_hex_and_empty_files_are_fine() {
        let text = file(&[("a", "k")]).replace(&sha256_hex("k"), &sha256_hex("k").to_uppercase());
        assert!(ApiKeys::parse(&text).expect("valid").find("k").is_some());
        assert!(ApiKeys::parse("").expect("empty").is_empty());
    }

    #[test]
    fn bad_files_name_the_entry_and_never_a_hash() {
        let short = "[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n";
        let error = ApiKeys::parse(short).expect_err("short hash");
        assert!(
            error.contains("key #1 (\"a\")") && error.contains("64 hex"),
            "{error}"
        );
        let twice = file(&[("a", "k"), ("b", "k")]);
        let error = ApiKeys::parse(&twice).expect_err("same key");
        assert!(
            error.contains("key #2") && !error.contains(&sha256_hex("k")),
            "{error}"
        );
        assert!(ApiKeys::parse(&file(&[("a", "k"), ("a", "j")])).is_err());
        let bad_grant = format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{}\"\ngrants = [{{ paths = [\"relative\"], ops = [\"read\"] }}]\n",
            sha256_hex("k")
        );
        assert!(
            ApiKeys::parse(&bad_grant)
                .expect_err("bad grant")
                .contains("start with `/`")
        );
        let unknown = format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{}\"\nkey = \"k\"\n",
            sha256_hex("k")
        );
        let error = ApiKeys::parse(&unknown).expect_err("plain keys are refused");
        assert!(
            error.contains("line 4") && !error.contains(&sha256_hex("k")),
            "{error}"
        );
        // A syntax error next to a hash does not quote it either.
        let broken = format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{}\" x\n",
            sha256_hex("k")
        );
        let error = ApiKeys::parse(&broken).expect_err("syntax");
        assert!(
            error.contains("line 3") && !error.contains(&sha256_hex("k")),
            "{error}"
        );
        assert!(ApiKeys::parse("[[keys]]\nname = \"\"\nsha256 = \"\"\n").is_err());
    }

    #[test]
    fn digests_compare_whole() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(same_digest(&a, &b));
        b[31] ^= 1;
        assert!(!same_digest(&a, &b));
        assert!(!same_digest(&a, &a[..31]));
    }
}
