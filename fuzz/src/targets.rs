//! The bodies of the fuzz targets: each takes arbitrary bytes, feeds them
//! to one parser of the server, and panics when an invariant breaks (a
//! parse that does not round-trip, a containment that is not sound). The
//! same functions run every corpus file as a regression test on stable
//! (`tests/fuzz_corpora.rs`), so a crash found once stays fixed.

use std::sync::OnceLock;

use durable_streams_server::auth::{AccessControl, AuthSettings, KeySet, bearer_token};
use durable_streams_server::config::{AccessOp, AuthConfig, AuthMode, Config, GrantConfig};
use durable_streams_server::protocol::glob::PathGlob;
use durable_streams_server::protocol::name::{self, NameLimits};
use durable_streams_server::protocol::offset::{self, ReadFrom};
use durable_streams_server::protocol::{header, json};
use durable_streams_server::subscriptions::model::{PutBody, Rules};
use futures_util::FutureExt as _;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, as the corpus directories are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("offsets", offsets),
    ("headers", headers),
    ("json_bodies", json_bodies),
    ("stream_names", stream_names),
    ("grants", grants),
    ("config", config),
    ("tokens", tokens),
];

/// `offset` values: whatever parses as a position prints back to itself.
pub fn offsets(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ReadFrom::At(position)) = offset::parse_read_from(text) {
        let minted = position.encode();
        assert_eq!(
            offset::parse_concrete(minted.as_str()),
            Ok(ReadFrom::At(position)),
            "{text:?} minted as {:?}",
            minted.as_str()
        );
    }
}

/// Protocol headers; the three producer headers are the input's first
/// three lines.
pub fn headers(data: &[u8]) {
    let _ = header::text("Stream-TTL", data);
    let _ = header::ttl(data);
    let _ = header::sub_offset(data);
    let _ = header::is_true(data);
    let _ = header::ContentType::from_header(Some(data));
    if let Ok(at) = header::expires_at(data) {
        let echoed = header::format_instant(at);
        assert_eq!(
            header::expires_at(echoed.as_bytes()).ok(),
            Some(at),
            "{echoed}"
        );
    }
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let _ = header::producer(lines.next(), lines.next(), lines.next());
}

/// JSON-mode bodies and subscription control bodies: a flattened body is
/// stored messages that read back as a JSON array of the same length.
pub fn json_bodies(data: &[u8]) {
    for allow_empty in [false, true] {
        if let Ok(flat) = json::flatten(data, allow_empty) {
            let wrapped = json::wrap_array([flat.bytes.as_slice()], flat.bytes.len());
            let items: Vec<serde_json::Value> =
                serde_json::from_slice(&wrapped).expect("stored messages read back as an array");
            assert_eq!(items.len(), flat.messages);
            assert_eq!(json::message_count(&flat.bytes), flat.messages);
        }
    }
    if let Ok(body) = serde_json::from_slice::<PutBody>(data) {
        let _ = body.normalise(Rules {
            default_lease_ttl_ms: 30_000,
            min_lease_ttl_ms: 1_000,
            max_lease_ttl_ms: 600_000,
            name_limits: LIMITS,
        });
    }
}

const LIMITS: NameLimits = NameLimits {
    max_bytes: 1024,
    max_segments: 8,
};

/// Stream names: every name the protocol accepts is a path grants can be
/// checked on (and one `/**` grant allows).
pub fn stream_names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if name::validate(text, LIMITS).is_ok() {
        let path = format!("/v1/stream/{text}");
        assert_eq!(
            read_everything().check(AccessOp::Read, &path),
            Ok(()),
            "{path:?}"
        );
    }
}

fn read_everything() -> &'static durable_streams_server::auth::Principal {
    static PRINCIPAL: OnceLock<durable_streams_server::auth::Principal> = OnceLock::new();
    PRINCIPAL.get_or_init(|| {
        let config = AuthConfig {
            mode: AuthMode::Token,
            anonymous: vec![GrantConfig {
                paths: vec!["/**".into()],
                ops: vec![AccessOp::Read],
            }],
            ..AuthConfig::default()
        };
        let settings = AuthSettings::parse(&config).expect("valid settings");
        let access = AccessControl::load(settings).expect("no files to read");
        access
            .authenticate(None, None, 0)
            .now_or_never()
            .expect("anonymous needs no waiting")
            .expect("anonymous")
    })
}

/// Grants as JSON, and globs: the input's lines are an outer glob, an
/// inner glob and a path. When the outer contains the inner and the inner
/// matches the path, the outer must match it too.
pub fn grants(data: &[u8]) {
    if let Ok(grants) = serde_json::from_slice::<Vec<GrantConfig>>(data) {
        let _ = durable_streams_server::auth::Grant::from_configs(&grants);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (Some(outer), Some(inner), Some(path)) = (lines.next(), lines.next(), lines.next()) else {
        return;
    };
    let (Ok(outer), Ok(inner)) = (PathGlob::parse(outer), PathGlob::parse(inner)) else {
        return;
    };
    if outer.contains(&inner) && inner.matches(path) {
        assert!(
            outer.matches(path),
            "{outer} contains {inner}, which matches {path:?}"
        );
    }
}

/// Configuration text: what parses renders (as `print-config` does) to
/// text that parses back to the same settings; the access-control files'
/// parsers never panic.
pub fn config(data: &[u8]) {
    let _ = KeySet::parse(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = durable_streams_server::auth::ApiKeys::parse(text);
    let Ok(config) = toml::from_str::<Config>(text) else {
        return;
    };
    let _ = AuthSettings::parse(&config.auth);
    let rendered = durable_streams_server::config::render::render_config(&config, &[], None);
    let again: Config = toml::from_str(&rendered).expect("print-config output parses");
    // NaN never equals itself; everything else must survive.
    if !config.observability.otlp.sampling_ratio.is_nan() {
        assert_eq!(again, config, "{rendered}");
    }
}

/// Bearer credentials: an `Authorization` header value, then the token,
/// against a fixed Ed25519 JWKS.
pub fn tokens(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(text) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let _ = bearer_token(&headers, Some(text), Some("access_token"));
    let token = text.strip_prefix("Bearer ").unwrap_or(text);
    // No key can be forged by a fuzzer: nothing passes but a real token.
    if let Some(name) = token_principal(token) {
        assert_eq!(name, "fuzz-seed", "{token}");
    }
}

/// The principal a token authenticates as against the fixed JWKS, if any.
pub fn token_principal(token: &str) -> Option<String> {
    token_checker()
        .authenticate(Some(token), None, 1_800_000_000)
        .now_or_never()
        .expect("a JWKS file needs no waiting")
        .ok()
        .map(|principal| principal.name().to_owned())
}

fn token_checker() -> &'static AccessControl {
    static ACCESS: OnceLock<AccessControl> = OnceLock::new();
    ACCESS.get_or_init(|| {
        // The public half of the seed corpus's signing key.
        let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"fuzz","x":"6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw"}]}"#;
        let path = std::env::temp_dir().join(format!("ds-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks).expect("write the JWKS");
        let config = AuthConfig {
            mode: AuthMode::Token,
            jwks_path: Some(path),
            ..AuthConfig::default()
        };
        let settings = AuthSettings::parse(&config).expect("valid settings");
        AccessControl::load(settings).expect("the JWKS loads")
    })
}
