//! Grants: operations allowed on the paths matching path globs.
//!
//! A grant's paths are absolute globs (`/v1/stream/tenant-a/**`). They are
//! compared with the request path exactly as the client sent it, which is
//! also the stream's identity: `tenant%2Da` is another stream than
//! `tenant-a`, and `tenant-a/**` does not match it. So a grant matches the
//! streams whose identity lies under it, never an alias. Grants are written
//! plainly or percent-encoded; characters a URI path cannot hold as such
//! (non-ASCII, spaces, …) are encoded, and escapes written with uppercase
//! hex, the form browsers and the official clients send.
//!
//! Request paths with an empty, `.` or `..` segment (encoded or not) match
//! nothing: the stream-name rules refuse them anyway, and a grant must not
//! depend on how a path would be resolved.

use std::fmt::Write as _;

use crate::auth::config::{AccessOp, GrantConfig};
use crate::protocol::glob::PathGlob;

use super::error::GrantError;

/// Longest grant path, in bytes (after encoding).
pub const MAX_GRANT_PATH_BYTES: usize = 1024;
/// Most segments in a grant path.
pub const MAX_GRANT_PATH_SEGMENTS: usize = 64;

/// A set of operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpSet(u8);

impl OpSet {
    fn bit(op: AccessOp) -> u8 {
        match op {
            AccessOp::Read => 1,
            AccessOp::Append => 2,
            AccessOp::Create => 4,
            AccessOp::Delete => 8,
            AccessOp::Subscribe => 16,
        }
    }

    fn of(ops: &[AccessOp]) -> Self {
        Self(ops.iter().fold(0, |bits, op| bits | Self::bit(*op)))
    }

    fn contains(self, op: AccessOp) -> bool {
        self.0 & Self::bit(op) != 0
    }
}

/// A parsed grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The globs, without their leading `/`.
    globs: Vec<PathGlob>,
    ops: OpSet,
}

impl Grant {
    /// Parses a grant as configured (or as found in an API-key file or a
    /// token's claim).
    ///
    /// # Errors
    /// [`GrantError`] for no paths, no operations, or a path that is not an
    /// absolute glob.
    pub fn from_config(config: &GrantConfig) -> Result<Self, GrantError> {
        if config.paths.is_empty() {
            return Err(GrantError::NoPaths);
        }
        if config.ops.is_empty() {
            return Err(GrantError::NoOps);
        }
        let globs = config
            .paths
            .iter()
            .map(|path| parse_path_glob(path))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            globs,
            ops: OpSet::of(&config.ops),
        })
    }

    /// Parses a list of grants.
    ///
    /// # Errors
    /// The first grant's [`GrantError`].
    pub fn from_configs(configs: &[GrantConfig]) -> Result<Vec<Self>, GrantError> {
        configs.iter().map(Self::from_config).collect()
    }

    /// Whether the grant allows `op` on `path` (absolute, checked by
    /// [`is_normalised_path`]).
    pub(crate) fn allows(&self, op: AccessOp, path: &str) -> bool {
        let Some(relative) = path.strip_prefix('/') else {
            return false;
        };
        self.ops.contains(op) && self.globs.iter().any(|glob| glob.matches(relative))
    }

    /// Whether the grant allows `op` on every path `pattern` (relative
    /// glob of an absolute path) matches.
    pub(crate) fn covers(&self, op: AccessOp, pattern: &PathGlob) -> bool {
        self.ops.contains(op) && self.globs.iter().any(|glob| glob.contains(pattern))
    }
}

/// Parses an absolute path glob into the glob of its relative part,
/// encoding what a URI path cannot hold as such.
pub(crate) fn parse_path_glob(raw: &str) -> Result<PathGlob, GrantError> {
    let bad = |why: &str| GrantError::BadPath {
        path: raw.to_owned(),
        why: why.to_owned(),
    };
    let Some(relative) = raw.strip_prefix('/') else {
        return Err(bad("must start with `/`"));
    };
    if raw.contains(['?', '#']) {
        return Err(bad("must not hold a query (`?`) or fragment (`#`)"));
    }
    let encoded =
        encode_path(relative).ok_or_else(|| bad("has a `%` not followed by two hex digits"))?;
    if encoded.len() > MAX_GRANT_PATH_BYTES {
        return Err(bad(&format!("is longer than {MAX_GRANT_PATH_BYTES} bytes")));
    }
    if encoded.split('/').any(is_dot_segment) {
        return Err(bad("has a `.` or `..` segment"));
    }
    let glob = PathGlob::parse(&encoded).map_err(|error| {
        if relative.ends_with('/') {
            bad("ends with `/`: write `/**` to grant everything below a path")
        } else {
            bad(&error.to_string())
        }
    })?;
    if glob.segment_count() > MAX_GRANT_PATH_SEGMENTS {
        return Err(bad(&format!(
            "has more than {MAX_GRANT_PATH_SEGMENTS} segments"
        )));
    }
    Ok(glob)
}

/// Parses an absolute path glob such as a subscription pattern under its
/// root (`/v1/stream/` + `events/**`), without encoding anything: it is
/// matched against paths as they are. `None` when it is not a valid glob
/// or names a `.` or `..` segment.
pub(crate) fn parse_absolute_pattern(raw: &str) -> Option<PathGlob> {
    let relative = raw.strip_prefix('/')?;
    if relative.split('/').any(is_dot_segment) {
        return None;
    }
    PathGlob::parse(relative).ok()
}

/// Whether `path` is absolute and free of empty, `.` and `..` segments
/// (also percent-encoded). Any other character is part of a stream's
/// name (a `?` or `#` can only arrive in one from a JSON body), which no
/// grant path names literally.
pub(crate) fn is_normalised_path(path: &str) -> bool {
    let Some(relative) = path.strip_prefix('/') else {
        return false;
    };
    !relative.is_empty()
        && relative
            .split('/')
            .all(|segment| !segment.is_empty() && !is_dot_segment(segment))
}

/// `.` or `..`, also with `%2E`/`%2e` escapes.
fn is_dot_segment(segment: &str) -> bool {
    if segment.len() > 6 {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(segment).collect::<Vec<u8>>();
    decoded == b"." || decoded == b".."
}

/// The URI-path form of a grant path: characters a path may hold as they
/// are (RFC 3986 `pchar`, and `/`) are kept, escapes get uppercase hex, and
/// everything else is percent-encoded as UTF-8. `None` for a stray `%`.
fn encode_path(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push('%');
            out.push(char::from(hex[0].to_ascii_uppercase()));
            out.push(char::from(hex[1].to_ascii_uppercase()));
            i += 3;
            continue;
        }
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(paths: &[&str], ops: &[AccessOp]) -> Grant {
        Grant::from_config(&GrantConfig {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            ops: ops.to_vec(),
        })
        .expect("valid grant")
    }

    fn refused(path: &str) -> String {
        match parse_path_glob(path) {
            Err(GrantError::BadPath { why, .. }) => why,
            other => panic!("{path:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn ops_are_separate() {
        let g = grant(&["/v1/stream/t/**"], &[AccessOp::Read, AccessOp::Append]);
        assert!(g.allows(AccessOp::Read, "/v1/stream/t/a"));
        assert!(g.allows(AccessOp::Append, "/v1/stream/t/a"));
        assert!(!g.allows(AccessOp::Create, "/v1/stream/t/a"));
        assert!(!g.allows(AccessOp::Delete, "/v1/stream/t/a"));
        assert!(!g.allows(AccessOp::Subscribe, "/v1/stream/t/a"));
    }

    #[test]
    fn paths_are_matched_as_sent() {
        let g = grant(&["/v1/stream/tenant-a/**"], &[AccessOp::Read]);
        assert!(g.allows(AccessOp::Read, "/v1/stream/tenant-a/x"));
        assert!(g.allows(AccessOp::Read, "/v1/stream/tenant-a/x/y/z"));
        assert!(!g.allows(AccessOp::Read, "/v1/stream/tenant-ab/x"));
        assert!(!g.allows(AccessOp::Read, "/v1/stream/tenant%2Da/x"));
        assert!(!g.allows(AccessOp::Read, "v1/stream/tenant-a/x"));
        // `**` also matches the prefix itself, a stream named `tenant-a`.
        assert!(g.allows(AccessOp::Read, "/v1/stream/tenant-a"));
        let one = grant(&["/v1/stream/tenant-a/*"], &[AccessOp::Read]);
        assert!(one.allows(AccessOp::Read, "/v1/stream/tenant-a/x"));
        assert!(!one.allows(AccessOp::Read, "/v1/stream/tenant-a/x/y"));
        assert!(!one.allows(AccessOp::Read, "/v1/stream/tenant-a"));
        // An encoded `/` stays inside its segment.
        assert!(one.allows(AccessOp::Read, "/v1/stream/tenant-a/x%2Fy"));
    }

    #[test]
    fn grant_paths_are_encoded_like_request_paths() {
        let g = grant(
            &["/v1/stream/café/*", "/v1/stream/a b/*"],
            &[AccessOp::Read],
        );
        assert!(g.allows(AccessOp::Read, "/v1/stream/caf%C3%A9/x"));
        assert!(g.allows(AccessOp::Read, "/v1/stream/a%20b/x"));
        let g = grant(&["/v1/stream/caf%c3%a9/*"], &[AccessOp::Read]);
        assert!(g.allows(AccessOp::Read, "/v1/stream/caf%C3%A9/x"));
        assert!(!g.allows(AccessOp::Read, "/v1/stream/café/x"));
    }

    #[test]
    fn bad_grant_paths_are_refused() {
        assert!(refused("v1/stream/**").contains("start with `/`"));
        assert!(refused("/v1/stream/").contains("write `/**`"));
        assert!(refused("/v1//stream").contains("empty segment"));
        assert!(refused("/v1/stream/a**").contains("whole segment"));
        assert!(refused("/v1/stream/../x").contains("`..`"));
        assert!(refused("/v1/stream/%2e%2E/x").contains("`..`"));
        assert!(refused("/v1/stream/./x").contains("`.`"));
        assert!(refused("/v1/stream/x?a=1").contains("query"));
        assert!(refused("/v1/stream/%zz").contains("hex"));
        assert!(refused(&format!("/{}", "a/".repeat(70) + "a")).contains("segments"));
        assert!(refused(&format!("/{}", "a".repeat(2000))).contains("longer"));
        assert_eq!(
            Grant::from_config(&GrantConfig {
                paths: vec![],
                ops: vec![AccessOp::Read]
            }),
            Err(GrantError::NoPaths)
        );
        assert_eq!(
            Grant::from_config(&GrantConfig {
                paths: vec!["/x".into()],
                ops: vec![]
            }),
            Err(GrantError::NoOps)
        );
    }

    #[test]
    fn normalised_paths() {
        for good in [
            "/v1/stream/a",
            "/v1/stream/a.b/..c/%2e%2e%2e",
            "/x",
            "/v1/stream/t#x?y",
        ] {
            assert!(is_normalised_path(good), "{good}");
        }
        for bad in [
            "",
            "/",
            "v1/stream/a",
            "/v1/stream/a/",
            "/v1//stream/a",
            "/v1/stream/../a",
            "/v1/stream/./a",
            "/v1/stream/%2E%2e/a",
            "/v1/stream/%2e",
        ] {
            assert!(!is_normalised_path(bad), "{bad}");
        }
    }

    #[test]
    fn patterns_are_covered_by_wider_grants_only() {
        let g = grant(&["/v1/stream/t/**"], &[AccessOp::Subscribe]);
        let covered = |pattern: &str| {
            parse_absolute_pattern(pattern).is_some_and(|p| g.covers(AccessOp::Subscribe, &p))
        };
        assert!(covered("/v1/stream/t/**"));
        assert!(covered("/v1/stream/t/*/x"));
        assert!(covered("/v1/stream/t/user-*"));
        assert!(!covered("/v1/stream/**"));
        assert!(!covered("/v1/stream/*/x"));
        assert!(!covered("/v1/stream/t/../u/**"));
        assert!(!covered("v1/stream/t/x"));
        assert!(!g.covers(
            AccessOp::Read,
            &parse_absolute_pattern("/v1/stream/t/x").expect("valid")
        ));
    }
}
