//! A stream's spec as the file store keeps it, in memory and in
//! checkpoints: a compact binary form, about a third of its JSON (the
//! JSON's field names were most of a plain stream's bytes, and every stream
//! keeps its spec in memory for the next checkpoint).
//!
//! Checkpoints written before this form hold the spec as JSON; [`decode`]
//! reads both (JSON starts with `{`, the compact form with [`COMPACT`]).

use super::super::{ForkLink, StreamSpec};
use super::reader::Reader;

/// First byte of the compact form.
const COMPACT: u8 = 1;

/// Content types stored as one byte (their index + 1; 0 means the value
/// follows as a string).
const COMMON_TYPES: [&str; 4] = [
    "application/octet-stream",
    "application/json",
    "text/plain",
    "application/x-ndjson",
];

const HAS_TTL: u8 = 1;
const HAS_EXPIRY: u8 = 2;
const HAS_FORK: u8 = 4;

/// `spec` in the compact form.
pub fn encode(spec: &StreamSpec) -> Box<[u8]> {
    let mut out = Vec::with_capacity(24 + spec.path.len());
    out.push(COMPACT);
    put_varint(&mut out, spec.id);
    put_str(&mut out, &spec.path);
    match COMMON_TYPES.iter().position(|t| *t == spec.content_type) {
        Some(index) => out.push(index as u8 + 1),
        None => {
            out.push(0);
            put_str(&mut out, &spec.content_type);
        }
    }
    let flags = if spec.ttl_secs.is_some() { HAS_TTL } else { 0 }
        | if spec.expires_at_ms.is_some() {
            HAS_EXPIRY
        } else {
            0
        }
        | if spec.fork.is_some() { HAS_FORK } else { 0 };
    out.push(flags);
    put_varint(&mut out, zigzag(spec.created_at_ms));
    put_varint(&mut out, spec.base);
    if let Some(ttl) = spec.ttl_secs {
        put_varint(&mut out, ttl);
    }
    if let Some(at) = spec.expires_at_ms {
        put_varint(&mut out, zigzag(at));
    }
    if let Some(fork) = &spec.fork {
        put_varint(&mut out, fork.source);
        put_str(&mut out, &fork.source_path);
        put_varint(&mut out, fork.offset);
        put_varint(&mut out, fork.sub_offset);
    }
    out.into_boxed_slice()
}

/// `bytes` in the compact form: JSON from an older checkpoint converted,
/// anything else kept as it is (recovery reports what is wrong with it).
pub fn compacted(bytes: Box<[u8]>) -> Box<[u8]> {
    if bytes.first() == Some(&COMPACT) {
        return bytes;
    }
    match decode(&bytes) {
        Ok(spec) => encode(&spec),
        Err(_) => bytes,
    }
}

/// The spec in `bytes`, compact or JSON.
///
/// # Errors
/// A description of what is wrong with `bytes`.
pub fn decode(bytes: &[u8]) -> Result<StreamSpec, String> {
    if bytes.first() != Some(&COMPACT) {
        return serde_json::from_slice(bytes).map_err(|e| e.to_string());
    }
    let mut r = Reader::new(&bytes[1..]);
    decode_compact(&mut r).ok_or_else(|| "truncated or malformed compact spec".to_owned())
}

fn decode_compact(r: &mut Reader<'_>) -> Option<StreamSpec> {
    let id = r.varint()?;
    let path = r.varint_string()?;
    let content_type = match r.u8()? {
        0 => r.varint_string()?,
        code => (*COMMON_TYPES.get(usize::from(code) - 1)?).to_owned(),
    };
    let flags = r.u8()?;
    let created_at_ms = unzigzag(r.varint()?);
    let base = r.varint()?;
    let ttl_secs = if flags & HAS_TTL != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let expires_at_ms = if flags & HAS_EXPIRY != 0 {
        Some(unzigzag(r.varint()?))
    } else {
        None
    };
    let fork = if flags & HAS_FORK != 0 {
        Some(ForkLink {
            source: r.varint()?,
            source_path: r.varint_string()?,
            offset: r.varint()?,
            sub_offset: r.varint()?,
        })
    } else {
        None
    };
    r.at_end().then_some(StreamSpec {
        id,
        path,
        content_type,
        ttl_secs,
        expires_at_ms,
        created_at_ms,
        fork,
        base,
    })
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> StreamSpec {
        StreamSpec {
            id: 300,
            path: "/v1/stream/orders".into(),
            content_type: "application/octet-stream".into(),
            ttl_secs: None,
            expires_at_ms: None,
            created_at_ms: 1_765_000_000_000,
            fork: None,
            base: 0,
        }
    }

    #[test]
    fn specs_round_trip_and_the_plain_one_is_a_third_of_its_json() {
        let forked = StreamSpec {
            id: u64::MAX,
            content_type: "text/csv; charset=utf-8".into(),
            ttl_secs: Some(3600),
            expires_at_ms: Some(-5),
            created_at_ms: -1,
            fork: Some(ForkLink {
                source: 7,
                source_path: "/v1/stream/é".into(),
                offset: 1 << 40,
                sub_offset: 3,
            }),
            base: 1 << 40,
            ..plain()
        };
        for spec in [plain(), forked] {
            assert_eq!(decode(&encode(&spec)), Ok(spec));
        }
        let json = serde_json::to_vec(&plain()).expect("serializes");
        assert!(encode(&plain()).len() * 3 <= json.len(), "{json:?}");
    }

    #[test]
    fn json_written_by_earlier_versions_is_read() {
        let json = serde_json::to_vec(&plain()).expect("serializes");
        assert_eq!(decode(&json), Ok(plain()));
        let converted = compacted(json.into());
        assert_eq!(converted, encode(&plain()));
        assert_eq!(&*compacted(b"{".to_vec().into()), b"{");
    }

    #[test]
    fn damaged_specs_are_errors() {
        let bytes = encode(&plain());
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut bad_type = bytes.to_vec();
        let at = 1 + 2 + 1 + plain().path.len();
        bad_type[at] = 9;
        assert!(decode(&bad_type).is_err());
        assert!(decode(b"{").is_err());
    }
}
