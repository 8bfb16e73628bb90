//! The create rules: a `PUT`'s settings with a fork's inheritance, the
//! comparison with an existing stream (spec §4.1 idempotent create), and
//! where a fork may branch off.

use bytes::Bytes;
use time::OffsetDateTime;

use crate::clock;
use crate::engine::error::EngineError;
use crate::engine::request::CreateRequest;
use crate::protocol::header::ContentType;
use crate::protocol::json;
use crate::protocol::offset::ReadFrom;
use crate::storage::{ForkLink, StreamSpec};

/// What the create rules need to know of a fork's source.
#[derive(Clone, Copy, Debug)]
pub struct SourceFacts<'a> {
    /// Its content type.
    pub content_type: &'a ContentType,
    /// Its sliding TTL.
    pub ttl_secs: Option<u64>,
    /// Its absolute expiry.
    pub expires_at: Option<OffsetDateTime>,
}

/// The settings a `PUT` asks for once defaults and a fork's inheritance
/// apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSettings {
    /// The content type: as given, the source's, or binary.
    pub content_type: ContentType,
    /// The sliding TTL.
    pub ttl_secs: Option<u64>,
    /// The absolute expiry.
    pub expires_at: Option<OffsetDateTime>,
}

impl CreateSettings {
    /// The expiry in Unix milliseconds, as stored.
    pub fn expires_at_ms(&self) -> Option<i64> {
        self.expires_at.map(clock::to_unix_ms)
    }
}

/// Resolves a `PUT`'s settings: a fork inherits its source's content type,
/// and its expiry unless it sets one of its own.
///
/// # Errors
/// [`EngineError::ContentTypeMismatch`] when a fork names a content type
/// other than its source's.
pub fn create_settings(
    request: &CreateRequest,
    source: Option<SourceFacts<'_>>,
) -> Result<CreateSettings, EngineError> {
    let content_type = match (&request.content_type, &source) {
        (Some(requested), Some(source)) if !requested.matches(source.content_type) => {
            return Err(EngineError::ContentTypeMismatch);
        }
        (Some(requested), _) => requested.clone(),
        (None, Some(source)) => source.content_type.clone(),
        (None, None) => ContentType::default_binary(),
    };
    let (ttl_secs, expires_at) = match (&source, request.ttl_secs, request.expires_at) {
        (Some(source), None, None) => (source.ttl_secs, source.expires_at),
        (_, ttl, at) => (ttl, at),
    };
    Ok(CreateSettings {
        content_type,
        ttl_secs,
        expires_at,
    })
}

/// The initial data a `PUT` stores: a JSON body flattened into its messages
/// (an empty array allowed), any other body as sent.
///
/// # Errors
/// A JSON body that is not acceptable.
pub fn initial_payload(content_type: &ContentType, body: &Bytes) -> Result<Bytes, EngineError> {
    if content_type.is_json() && !body.is_empty() {
        Ok(Bytes::from(json::flatten(body, true)?.bytes))
    } else {
        Ok(Bytes::copy_from_slice(body))
    }
}

/// Checks the data a new stream starts with against the size limit.
///
/// # Errors
/// [`EngineError::StreamTooLarge`].
pub fn check_initial_size(len: usize, max_stream_bytes: u64) -> Result<(), EngineError> {
    if len as u64 > max_stream_bytes {
        return Err(EngineError::StreamTooLarge {
            limit: max_stream_bytes,
        });
    }
    Ok(())
}

/// A fork a `PUT` asks for, resolved against its source.
#[derive(Clone, Copy, Debug)]
pub struct ForkIntent<'a> {
    /// The link it would store.
    pub link: &'a ForkLink,
    /// Whether `Stream-Fork-Offset` was given (else the offset is the
    /// source's tail, which moves and so is not compared).
    pub offset_requested: bool,
}

/// Compares a `PUT` with the stream that exists at its path (spec §4.1
/// idempotent create): settings, fork and closed state must match.
///
/// # Errors
/// [`EngineError::ConfigMismatch`] naming what differs.
pub fn check_same_create(
    existing: &StreamSpec,
    existing_closed: bool,
    settings: &CreateSettings,
    fork: Option<ForkIntent<'_>>,
    closed: bool,
) -> Result<(), EngineError> {
    if !settings
        .content_type
        .matches(&ContentType::new(&existing.content_type))
    {
        return Err(EngineError::ConfigMismatch("content type differs"));
    }
    if settings.ttl_secs != existing.ttl_secs {
        return Err(EngineError::ConfigMismatch("Stream-TTL differs"));
    }
    if settings.expires_at_ms() != existing.expires_at_ms {
        return Err(EngineError::ConfigMismatch("Stream-Expires-At differs"));
    }
    match (fork, &existing.fork) {
        (None, _) => {}
        (Some(_), None) => return Err(EngineError::ConfigMismatch("the stream is not a fork")),
        (Some(requested), Some(link)) => {
            if requested.link.source != link.source
                || (requested.offset_requested && requested.link.offset != link.offset)
                || requested.link.sub_offset != link.sub_offset
            {
                return Err(EngineError::ConfigMismatch("fork source or offset differs"));
            }
        }
    }
    if closed != existing_closed {
        return Err(EngineError::ConfigMismatch("closed state differs"));
    }
    Ok(())
}

/// The position a fork branches off at, given the source's committed tail.
///
/// # Errors
/// [`EngineError::InvalidForkPosition`] for an offset beyond the tail.
pub fn fork_offset(requested: Option<ReadFrom>, tail: u64) -> Result<u64, EngineError> {
    match requested {
        None | Some(ReadFrom::Now) => Ok(tail),
        Some(ReadFrom::Start) => Ok(0),
        Some(ReadFrom::At(offset)) if offset.position() <= tail => Ok(offset.position()),
        Some(_) => Err(EngineError::InvalidForkPosition(
            "fork offset is beyond the source's tail",
        )),
    }
}

/// Checks that a JSON fork offset falls between messages.
///
/// # Errors
/// [`EngineError::InvalidForkPosition`] when the source's data there
/// starts inside a message.
pub fn check_message_boundary(starts_mid_record: bool) -> Result<(), EngineError> {
    if starts_mid_record {
        return Err(EngineError::InvalidForkPosition(
            "fork offset is inside a JSON message",
        ));
    }
    Ok(())
}

/// How many bytes of `record` (the source's next append after the fork
/// offset) a fork copies for `Stream-Fork-Sub-Offset`: that many bytes, or
/// that many JSON messages.
///
/// # Errors
/// [`EngineError::InvalidForkPosition`] when no data follows, the offset is
/// inside a JSON message, or the sub-offset exceeds the record.
pub fn fork_cut(
    record: &[u8],
    starts_mid_record: bool,
    json: bool,
    sub_offset: u64,
) -> Result<usize, EngineError> {
    if record.is_empty() {
        return Err(EngineError::InvalidForkPosition(
            "no data follows the fork offset",
        ));
    }
    if json {
        check_message_boundary(starts_mid_record)?;
        json::message_prefix_len(record, sub_offset).ok_or(EngineError::InvalidForkPosition(
            "sub-offset exceeds the messages of the next append",
        ))
    } else {
        usize::try_from(sub_offset)
            .ok()
            .filter(|&n| n <= record.len())
            .ok_or(EngineError::InvalidForkPosition(
                "sub-offset exceeds the bytes of the next append",
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::offset::Offset;

    #[test]
    fn forks_inherit_content_type_and_expiry_unless_they_set_their_own() {
        let json = ContentType::new("application/json");
        let at = OffsetDateTime::from_unix_timestamp(2_000_000_000).expect("instant");
        let source = SourceFacts {
            content_type: &json,
            ttl_secs: None,
            expires_at: Some(at),
        };
        let mut request = CreateRequest {
            path: "/f".into(),
            content_type: None,
            ttl_secs: None,
            expires_at: None,
            closed: false,
            fork: None,
            body: Bytes::new(),
        };
        let inherited = create_settings(&request, Some(source)).expect("valid");
        assert!(inherited.content_type.is_json());
        assert_eq!(inherited.expires_at, Some(at));
        request.ttl_secs = Some(5);
        let own = create_settings(&request, Some(source)).expect("valid");
        assert_eq!((own.ttl_secs, own.expires_at), (Some(5), None));
        request.content_type = Some(ContentType::new("text/plain"));
        assert!(matches!(
            create_settings(&request, Some(source)),
            Err(EngineError::ContentTypeMismatch)
        ));
        let plain = create_settings(&request, None).expect("valid");
        assert_eq!(plain.content_type.raw, "text/plain");
        request.content_type = None;
        assert_eq!(
            create_settings(&request, None).expect("valid").content_type,
            ContentType::default_binary()
        );
    }

    #[test]
    fn an_idempotent_create_compares_every_setting() {
        let spec = StreamSpec {
            id: 1,
            path: "/s".into(),
            content_type: "text/plain; charset=utf-8".into(),
            ttl_secs: Some(10),
            expires_at_ms: None,
            created_at_ms: 0,
            fork: Some(ForkLink {
                source: 9,
                source_path: "/src".into(),
                offset: 4,
                sub_offset: 0,
            }),
            base: 4,
        };
        let settings = CreateSettings {
            content_type: ContentType::new("text/plain"),
            ttl_secs: Some(10),
            expires_at: None,
        };
        assert!(check_same_create(&spec, false, &settings, None, false).is_ok());
        let moved = ForkLink {
            offset: 7,
            ..spec.fork.clone().expect("fork")
        };
        let unpinned = ForkIntent {
            link: &moved,
            offset_requested: false,
        };
        assert!(check_same_create(&spec, false, &settings, Some(unpinned), false).is_ok());
        let pinned = ForkIntent {
            link: &moved,
            offset_requested: true,
        };
        let mismatches = [
            check_same_create(&spec, false, &settings, Some(pinned), false),
            check_same_create(&spec, true, &settings, None, false),
            check_same_create(
                &spec,
                false,
                &CreateSettings {
                    ttl_secs: None,
                    ..settings.clone()
                },
                None,
                false,
            ),
            check_same_create(
                &spec,
                false,
                &CreateSettings {
                    content_type: ContentType::new("application/json"),
                    ..settings.clone()
                },
                None,
                false,
            ),
        ];
        for mismatch in mismatches {
            assert!(matches!(mismatch, Err(EngineError::ConfigMismatch(_))));
        }
    }

    #[test]
    fn fork_positions_must_lie_within_the_source() {
        assert_eq!(fork_offset(None, 9).expect("tail"), 9);
        assert_eq!(fork_offset(Some(ReadFrom::Start), 9).expect("start"), 0);
        assert_eq!(
            fork_offset(Some(ReadFrom::At(Offset(9))), 9).expect("at"),
            9
        );
        assert!(fork_offset(Some(ReadFrom::At(Offset(10))), 9).is_err());
        assert!(fork_offset(Some(ReadFrom::Beyond), 9).is_err());
        assert_eq!(fork_cut(b"abcdef", true, false, 4).expect("bytes"), 4);
        assert!(fork_cut(b"abc", false, false, 4).is_err());
        assert!(fork_cut(b"", false, false, 1).is_err());
        assert_eq!(fork_cut(b"1,[2],3,", false, true, 2).expect("messages"), 6);
        assert!(fork_cut(b"1,2,", true, true, 1).is_err());
        assert!(fork_cut(b"1,2,", false, true, 3).is_err());
        assert!(check_message_boundary(true).is_err());
        assert!(check_message_boundary(false).is_ok());
        check_initial_size(3, 3).expect("fits");
        assert!(check_initial_size(4, 3).is_err());
    }
}
