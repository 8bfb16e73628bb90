//! Handlers of the stream routes: create, append/close, delete, metadata and
//! catch-up reads. Live reads continue in [`super::live`].

use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;

use super::AppState;
use super::append::{AppendAnswer, AppendFields};
use super::deferred;
use super::live;
use super::names::*;
use super::plain::PlainFields;
use super::problem::ApiError;
use super::query::{self, LiveMode};
use crate::client::{ForwardedHost, Scheme};
use crate::engine::{Access, AppendRequest, CreateRequest, ForkRequest, ReadResult, StreamEntry};
use crate::metrics::event::{ReadBytesSent, ReadMode, ReadServed};
use crate::protocol::header::{self as wire, ContentType};
use crate::protocol::json;
use crate::protocol::name;
use crate::protocol::offset::{Offset, ReadFrom, parse_read_from};

/// Catch-up reads of immutable data may be cached (spec §8.1).
pub(super) const CACHEABLE: &str = "public, max-age=60, stale-while-revalidate=300";

/// The stream routes, one handler per method: axum boxes each handler's
/// future at that handler's own size, so a long-poll waiting for data does
/// not carry the room an append or a create needs.
pub(super) fn routes() -> MethodRouter<AppState> {
    get(get_stream)
        .head(head_stream)
        .put(put_stream)
        .post(post_stream)
        .delete(delete_stream)
        .fallback(other_method)
}

async fn get_stream(State(state): State<AppState>, request: Request) -> Response {
    match stream_path(&state, &request) {
        Ok(path) => answer(read(&state, &path, request).await),
        Err(error) => error.into_response(),
    }
}

async fn head_stream(State(state): State<AppState>, request: Request) -> Response {
    match stream_path(&state, &request) {
        Ok(path) => answer(head(&state, &path).await),
        Err(error) => error.into_response(),
    }
}

async fn put_stream(State(state): State<AppState>, request: Request) -> Response {
    match stream_path(&state, &request) {
        Ok(path) => answer(create(&state, path, request).await),
        Err(error) => error.into_response(),
    }
}

async fn post_stream(State(state): State<AppState>, request: Request) -> Response {
    post_stream_with(&state, request, None, None).await
}

/// `POST` as [`post_stream`] answers it; with `fields`, a successful
/// append's header fields go there instead of into the response's map
/// (the caller writes them first into the head: no map for them); with
/// `plain`, the request's fields are there and not in its map.
pub(super) fn post_stream_with<'a>(
    state: &'a AppState,
    request: Request,
    plain: Option<&'a PlainFields>,
    fields: Option<&'a mut Option<AppendAnswer>>,
) -> impl Future<Output = Response> + Send + 'a {
    // Mapped, not awaited in another async fn: that would hold the
    // request once more and move the append's future whole into its own.
    append(state, request, plain).map(move |result| match result {
        Ok((status, answer)) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = status;
            match fields {
                Some(fields) => *fields = Some(answer),
                None => answer.insert_into(response.headers_mut()),
            }
            response
        }
        Err(error) => error.into_response(),
    })
}

async fn delete_stream(State(state): State<AppState>, request: Request) -> Response {
    match stream_path(&state, &request) {
        Ok(path) => answer(delete(&state, &path).await),
        Err(error) => error.into_response(),
    }
}

/// Any other method: a bad name is still named first, else `405`.
async fn other_method(State(state): State<AppState>, request: Request) -> Response {
    match stream_path(&state, &request) {
        // RFC 9110 §15.5.6: a 405 must list the allowed methods.
        Ok(_) => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "method not allowed",
        )
        .with_header(header::ALLOW, super::ALLOW_METHODS)
        .into_response(),
        Err(error) => error.into_response(),
    }
}

fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The stream's identity (its path) after validating the name part.
/// Owned: a long-poll may hold it for minutes, and the URI it comes from
/// keeps the request head's buffer alive.
fn stream_path(state: &AppState, request: &Request) -> Result<String, ApiError> {
    stream_uri(state, request).map(|path| String::from(&*path))
}

/// A stream's identity: the path of a request's URI, kept without a copy
/// (a URI shares the request head's bytes).
struct StreamPath(Uri);

impl std::ops::Deref for StreamPath {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.path()
    }
}

/// [`stream_path`] as the request's URI.
fn stream_uri(state: &AppState, request: &Request) -> Result<StreamPath, ApiError> {
    let path = request.uri().path();
    let name = path
        .strip_prefix(state.settings.base_path.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or("");
    if name == "__ds" || name.starts_with("__ds/") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such control API (subscriptions are not enabled on this server)",
        ));
    }
    name::validate(name, state.settings.name_limits)?;
    // Identity is the full path the client used, including any prefix the
    // router is nested under, so it agrees with `Location` and with the
    // paths clients send in `Stream-Forked-From`.
    let full = request
        .extensions()
        .get::<OriginalUri>()
        .map_or(request.uri(), |original| &original.0);
    Ok(StreamPath(full.clone()))
}

/// A JSON body (by its `Content-Type`) must not nest too deep.
fn check_json_depth(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    check_json_depth_of(
        state,
        ContentType::from_header(raw(headers, &header::CONTENT_TYPE)).as_ref(),
        body,
    )
}

/// [`check_json_depth`] with the content type already parsed.
fn check_json_depth_of(
    state: &AppState,
    content_type: Option<&ContentType>,
    body: &[u8],
) -> Result<(), ApiError> {
    if content_type.is_some_and(ContentType::is_json) {
        state.settings.input_limits.check_json_depth(body)?;
    }
    Ok(())
}

fn raw<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    headers.get(name).map(HeaderValue::as_bytes)
}

/// Reads a body up to the configured limit without buffering past it.
async fn read_body(state: &AppState, request: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let declared = declared_length(raw(request.headers(), &header::CONTENT_LENGTH));
    let (parts, body) = request.into_parts();
    let bytes = read_body_of(state, declared, body).await?;
    Ok((parts.headers, bytes))
}

/// The length a `Content-Length` value declares, if it is a number.
fn declared_length(value: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

/// Reads `body`, whose `Content-Length` said `declared`, within the body
/// limit.
async fn read_body_of(
    state: &AppState,
    declared: Option<u64>,
    mut body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.settings.max_body_bytes;
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    // By hand rather than `Limited` + `collect`: an append's body is one
    // frame, handed on as it is, without the collector's queue and copy.
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::bad_request("BODY_READ_FAILED", "the request body could not be read")
        })?;
        // Trailers carry no payload.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(too_large(limit));
        }
        if first.is_empty() && more.is_none() {
            first = data;
        } else {
            more.get_or_insert_with(|| {
                let mut joined = BytesMut::with_capacity(total);
                joined.extend_from_slice(&first);
                joined
            })
            .extend_from_slice(&data);
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}

/// A whole `body` read already, within the body limit.
fn within_limit(state: &AppState, body: Bytes) -> Result<Bytes, ApiError> {
    let limit = state.settings.max_body_bytes;
    if body.len() > limit {
        return Err(too_large(limit));
    }
    Ok(body)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("request body exceeds {limit} bytes"),
    )
}

/// Where the client reaches a stream, for `Location` (and the absolute
/// URLs of the subscription APIs).
pub(crate) struct PublicOrigin {
    scheme: Scheme,
    /// From a trusted proxy; else the request's `Host`, else (HTTP/2) its
    /// `:authority`.
    host: Option<String>,
    original: Option<OriginalUri>,
}

impl PublicOrigin {
    /// What a request's parts say about its public scheme and host.
    pub(crate) fn of(extensions: &Extensions, headers: &HeaderMap, uri: &Uri) -> Self {
        let host = extensions
            .get::<ForwardedHost>()
            .map(|host| host.0.clone())
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|host| host.to_str().ok())
                    .map(str::to_owned)
            })
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
        Self {
            scheme: extensions.get::<Scheme>().copied().unwrap_or_default(),
            host,
            original: extensions.get::<OriginalUri>().cloned(),
        }
    }

    /// `scheme://host`, when the host is known.
    pub(crate) fn origin(&self) -> Option<String> {
        let host = self.host.as_deref()?;
        Some(format!("{}://{host}", self.scheme))
    }

    fn location(&self, path: &str) -> Option<HeaderValue> {
        let host = self.host.as_deref()?;
        let full_path = self.original.as_ref().map_or(path, |uri| uri.0.path());
        HeaderValue::from_str(&format!("{}://{host}{full_path}", self.scheme)).ok()
    }
}

pub(super) fn offset_value(position: u64) -> HeaderValue {
    HeaderValue::from_bytes(Offset(position).encode().as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn content_type_value(entry: &StreamEntry) -> HeaderValue {
    HeaderValue::from_str(&entry.content_type().raw)
        .unwrap_or_else(|_| HeaderValue::from_static(wire::DEFAULT_CONTENT_TYPE))
}

pub(super) const TRUE: HeaderValue = HeaderValue::from_static("true");

async fn create(state: &AppState, path: String, request: Request) -> Result<Response, ApiError> {
    let origin = PublicOrigin::of(request.extensions(), request.headers(), request.uri());
    let (headers, body) = read_body(state, request).await?;
    check_json_depth(state, &headers, &body)?;
    let ttl_secs = raw(&headers, &STREAM_TTL).map(wire::ttl).transpose()?;
    let expires_at = raw(&headers, &STREAM_EXPIRES_AT)
        .map(wire::expires_at)
        .transpose()?;
    if ttl_secs.is_some() && expires_at.is_some() {
        return Err(ApiError::bad_request(
            "INVALID_HEADER",
            "Stream-TTL and Stream-Expires-At are mutually exclusive",
        ));
    }
    let sub_offset = raw(&headers, &STREAM_FORK_SUB_OFFSET)
        .map(wire::sub_offset)
        .transpose()?;
    let fork = match raw(&headers, &STREAM_FORKED_FROM) {
        Some(source) => {
            let source_path = wire::text("Stream-Forked-From", source)?.trim().to_owned();
            if source_path.is_empty() {
                return Err(ApiError::bad_request(
                    "INVALID_HEADER",
                    "Stream-Forked-From must not be empty",
                ));
            }
            let offset = match raw(&headers, &STREAM_FORK_OFFSET) {
                Some(value) => Some(
                    match parse_read_from(wire::text("Stream-Fork-Offset", value)?)? {
                        ReadFrom::Beyond => {
                            return Err(ApiError::bad_request(
                                "INVALID_FORK_OFFSET",
                                "fork offset is beyond the source",
                            ));
                        }
                        other => other,
                    },
                ),
                None => None,
            };
            Some(ForkRequest {
                source_path,
                offset,
                sub_offset: sub_offset.unwrap_or(0),
            })
        }
        None if sub_offset.is_some() || headers.contains_key(STREAM_FORK_OFFSET) => {
            return Err(ApiError::bad_request(
                "INVALID_HEADER",
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From",
            ));
        }
        None => None,
    };
    let created = state
        .engine
        .create(CreateRequest {
            path: path.clone(),
            content_type: ContentType::from_header(raw(&headers, &header::CONTENT_TYPE)),
            ttl_secs,
            expires_at,
            closed: raw(&headers, &STREAM_CLOSED).is_some_and(wire::is_true),
            fork,
            body,
        })
        .await?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = if created.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, content_type_value(&created.entry));
    out.insert(STREAM_NEXT_OFFSET, offset_value(created.tail));
    if created.closed {
        out.insert(STREAM_CLOSED, TRUE);
    }
    if created.new
        && let Some(location) = origin.location(&path)
    {
        out.insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn append(
    state: &AppState,
    request: Request,
    plain: Option<&PlainFields>,
) -> Result<(StatusCode, AppendAnswer), ApiError> {
    // What the head says, owned, in a block of its own: a borrowed request
    // (or its parts) would be kept across the awaits below, in every
    // append's future, until the end of its scope.
    let (path, head, body) = {
        let request = request;
        // An append holds its path only until it is stored: no copy.
        let path = stream_uri(state, &request)?;
        let (parts, body) = request.into_parts();
        (path, AppendHead::of(state, &parts.headers, plain)?, body)
    };
    let body = match plain.and_then(PlainFields::body) {
        Some(whole) => within_limit(state, whole.clone())?,
        None => read_body_of(state, head.declared, body).await?,
    };
    check_json_depth_of(state, head.content_type.as_ref(), &body)?;
    let stream_seq = head.stream_seq?;
    let has_body = !body.is_empty();
    let outcome = state
        .engine
        .append(
            &path,
            AppendRequest {
                content_type: head.content_type,
                body,
                close: head.close,
                producer: head.producer,
                stream_seq,
            },
        )
        .await?;
    let status = if outcome.wrote && has_body && outcome.producer.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    Ok((
        status,
        AppendAnswer {
            tail: outcome.tail,
            closed: outcome.closed,
            producer: outcome
                .producer
                .map(|producer| (producer.epoch, producer.last_seq)),
        },
    ))
}

/// What an append's fields say, read in one pass before its body.
struct AppendHead {
    producer: Option<wire::ProducerHeaders>,
    declared: Option<u64>,
    content_type: Option<ContentType>,
    /// Its error is answered after the body's (as it always was).
    stream_seq: Result<Option<String>, wire::HeaderError>,
    close: bool,
}

impl AppendHead {
    /// The fields of `plain`, else of `headers`.
    fn of(
        state: &AppState,
        headers: &HeaderMap,
        plain: Option<&PlainFields>,
    ) -> Result<Self, ApiError> {
        let fields = match plain {
            Some(plain) => plain.append_fields(),
            None => AppendFields::of(headers),
        };
        let producer = wire::producer(
            fields.producer_id,
            fields.producer_epoch,
            fields.producer_seq,
        )?;
        if let Some(producer) = &producer {
            (state.settings.input_limits).check_identifier("Producer-Id", &producer.id)?;
        }
        Ok(Self {
            producer,
            declared: declared_length(fields.content_length),
            content_type: ContentType::from_header(fields.content_type),
            stream_seq: fields
                .stream_seq
                .map(|v| wire::text("Stream-Seq", v).map(str::to_owned))
                .transpose(),
            close: fields.stream_closed.is_some_and(wire::is_true),
        })
    }
}

async fn delete(state: &AppState, path: &str) -> Result<Response, ApiError> {
    state.engine.delete(path).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn head(state: &AppState, path: &str) -> Result<Response, ApiError> {
    let entry = state.engine.lookup_fresh(path, Access::Peek).await?;
    let snapshot = entry.snapshot();
    let mut response = Response::new(Body::empty());
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, content_type_value(&entry));
    out.insert(STREAM_NEXT_OFFSET, offset_value(snapshot.tail));
    let first = entry.first_position();
    if first > 0 {
        out.insert(STREAM_START_OFFSET, offset_value(first));
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if snapshot.closed {
        out.insert(STREAM_CLOSED, TRUE);
    }
    if let Some(ttl) = entry.ttl_secs() {
        out.insert(STREAM_TTL, HeaderValue::from(ttl));
    }
    if let Some(at) = entry.expires_at()
        && let Ok(value) = HeaderValue::from_str(&wire::format_instant(at))
    {
        out.insert(STREAM_EXPIRES_AT, value);
    }
    Ok(response)
}

async fn read(state: &AppState, path: &str, request: Request) -> Result<Response, ApiError> {
    let query = query::parse(request.uri().query())?;
    let entry = state.engine.lookup_fresh(path, Access::Touch).await?;
    match query.live {
        LiveMode::CatchUp => {
            catch_up(
                state,
                &entry,
                query.offset.unwrap_or(ReadFrom::Start),
                request.headers(),
            )
            .await
        }
        LiveMode::LongPoll => {
            // A live read may wait for minutes: its request head (headers,
            // extensions, the bytes they point into) must not wait with it.
            let later = deferred::takes_later(request.extensions());
            drop(request);
            live::long_poll(
                state,
                entry,
                query.offset.unwrap_or(ReadFrom::Now),
                query.cursor,
                later,
            )
            .await
        }
        LiveMode::Sse => {
            drop(request);
            live::sse(
                state,
                entry,
                query.offset.unwrap_or(ReadFrom::Now),
                query.cursor,
            )
            .await
        }
    }
}

async fn catch_up(
    state: &AppState,
    entry: &std::sync::Arc<StreamEntry>,
    from: ReadFrom,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    ReadServed {
        mode: ReadMode::CatchUp,
    }
    .emit();
    let result = state.engine.read(entry, from).await?;
    if from == ReadFrom::Now {
        // `offset=now` is a position probe, never cached and without ETag.
        let mut response = read_response(
            entry,
            &ReadResult {
                records: Vec::new(),
                ..result
            },
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let etag = etag(entry, &result);
    if request_headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|candidate| {
            candidate
                .as_bytes()
                .split(|&b| b == b',')
                .any(|tag| tag.trim_ascii() == etag.as_bytes())
        })
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, etag);
        return Ok(response);
    }
    let mut response = served_read(entry, &result, ReadMode::CatchUp, etag);
    let out = response.headers_mut();
    let cache = if result.is_empty() {
        "no-cache"
    } else {
        CACHEABLE
    };
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}

/// The ETag of a read: stream instance, range, and closure (spec §8.2), so
/// a cached response can never hide the end of a stream.
pub(super) fn etag(entry: &StreamEntry, result: &ReadResult) -> HeaderValue {
    let closed = if result.closed { ":c" } else { "" };
    HeaderValue::from_str(&format!(
        "\"{}:{}:{}{closed}\"",
        entry.id(),
        result.start,
        result.next
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// The `200` of a read that is served, with its ETag; counts the bytes sent.
pub(super) fn served_read(
    entry: &StreamEntry,
    result: &ReadResult,
    mode: ReadMode,
    etag: HeaderValue,
) -> Response {
    ReadBytesSent {
        mode,
        bytes: result.len(),
    }
    .emit();
    let mut response = read_response(entry, result);
    response.headers_mut().insert(header::ETAG, etag);
    response
}

/// A `200` carrying the records of a read with the protocol's headers.
pub(super) fn read_response(entry: &StreamEntry, result: &ReadResult) -> Response {
    let body = if entry.content_type().is_json() {
        Bytes::from(json::wrap_array(
            result.records.iter().map(|r| r.as_ref()),
            result.len(),
        ))
    } else {
        concat(&result.records)
    };
    let mut response = Response::new(Body::from(body));
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, content_type_value(entry));
    out.insert(STREAM_NEXT_OFFSET, offset_value(result.next));
    if result.up_to_date {
        out.insert(STREAM_UP_TO_DATE, TRUE);
    }
    if result.closed {
        out.insert(STREAM_CLOSED, TRUE);
    }
    response
}

/// Joins records; a single record is handed out without copying.
fn concat(records: &[Bytes]) -> Bytes {
    match records {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut out = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for record in many {
                out.extend_from_slice(record);
            }
            out.freeze()
        }
    }
}

pub(super) use offset_value as offset_header;
