//! Export and import of streams, for backup and migration between backends.
//!
//! # Format
//! JSON Lines, one object per line, written and read as a stream so memory
//! stays flat whatever the store's size:
//!
//! ```text
//! {"header":{"format":"durable-streams-export","version":1,...}}
//! {"stream":{"path":"/v1/stream/a","content_type":"text/plain","base":"…","tail":"…",...}}
//! {"record":"<base64 of one stored record>"}
//! {"end":{"records":2,"bytes":11,"crc32c":123}}
//! ...
//! {"summary":{"streams":1}}
//! ```
//!
//! Everything a client depends on is kept: offsets (records keep their
//! boundaries and positions, so readers resume where they were), content
//! type, closed state and closing producer, TTL and expiry, producer state,
//! `Stream-Seq`, soft deletion and fork lineage (sources are written before
//! their forks, and a filtered export pulls in the sources of the forks it
//! includes).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError};
use crate::protocol::offset::{Offset, ReadFrom, parse_concrete};
use crate::protocol::producer::ProducerState;
use crate::storage::{ClosedBy, ForkLink, RecoveredStream, StreamSpec};

/// The `format` value of the header line.
pub const FORMAT: &str = "durable-streams-export";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest piece of a stream read from storage at once during export.
const EXPORT_READ_BYTES: usize = 1 << 20;

/// What can go wrong in a transfer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Reading or writing the export file failed.
    #[error("cannot read or write the export: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not valid for this format.
    #[error("line {line}: {reason}")]
    Format {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A stream exists in the target and the conflict policy is `fail`.
    #[error("stream {0} already exists in the target (use --on-conflict skip or replace)")]
    Conflict(String),
    /// The engine or storage refused an operation.
    #[error("stream {path}: {source}")]
    Engine {
        /// The stream.
        path: String,
        /// The failure.
        #[source]
        source: EngineError,
    },
}

/// What `import` does with a stream that already exists in the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Keep the existing stream, skip the imported one.
    Skip,
    /// Stop with an error.
    #[default]
    Fail,
    /// Validate the imported stream completely, then replace the existing one.
    Replace,
}

impl std::str::FromStr for OnConflict {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            "replace" => Ok(Self::Replace),
            other => Err(format!(
                "unknown conflict policy {other:?}: expected skip, fail or replace"
            )),
        }
    }
}

/// Which streams to transfer: all, or those matching any pattern (an exact
/// path, or a prefix ending in `*`).
#[derive(Clone, Debug, Default)]
pub struct StreamFilter {
    patterns: Vec<String>,
}

impl StreamFilter {
    /// A filter from `--stream` values; empty means every stream.
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
    }

    /// Whether `path` is selected.
    pub fn matches(&self, path: &str) -> bool {
        self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == pattern,
                })
    }
}

/// Reports progress: a live line on a terminal, plain lines otherwise.
pub trait Progress {
    /// A stream was transferred.
    fn stream_done(&mut self, path: &str, bytes: u64);
}

/// Progress to standard error.
#[derive(Debug)]
pub struct StderrProgress {
    terminal: bool,
    streams: u64,
    bytes: u64,
}

impl Default for StderrProgress {
    fn default() -> Self {
        use std::io::IsTerminal;
        Self {
            terminal: std::io::stderr().is_terminal(),
            streams: 0,
            bytes: 0,
        }
    }
}

impl Progress for StderrProgress {
    fn stream_done(&mut self, path: &str, bytes: u64) {
        self.streams += 1;
        self.bytes += bytes;
        if self.terminal {
            eprint!(
                "\r\x1b[2K{} streams, {} bytes — {path}",
                self.streams, self.bytes
            );
        } else {
            eprintln!("transferred {path} ({bytes} bytes)");
        }
    }
}

impl Drop for StderrProgress {
    fn drop(&mut self) {
        if self.terminal && self.streams > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
/// No progress output.
#[derive(Debug, Default)]
pub struct Quiet;

#[cfg(test)]
impl Progress for Quiet {
    fn stream_done(&mut self, _: &str, _: u64) {}
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header(Header),
    Stream(Box<StreamHeader>),
    Record(String),
    End(StreamEnd),
    Summary(Summary),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    #[serde(default)]
    server_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ForkHeader {
    source_path: String,
    offset: String,
    sub_offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProducerLine {
    id: String,
    epoch: u64,
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StreamHeader {
    path: String,
    content_type: String,
    ttl_secs: Option<u64>,
    expires_at_ms: Option<i64>,
    created_at_ms: i64,
    base: String,
    /// Where the exported data starts, when retention trimmed the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    tail: String,
    fork: Option<ForkHeader>,
    closed: bool,
    closed_by: Option<ClosedBy>,
    stream_seq: Option<String>,
    soft_deleted: bool,
    producers: Vec<ProducerLine>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StreamEnd {
    records: u64,
    bytes: u64,
    crc32c: u32,
}

impl StreamEnd {
    fn add(&mut self, record: &[u8]) {
        self.records += 1;
        self.bytes += record.len() as u64;
        self.crc32c = crc32c::crc32c_append(self.crc32c, record);
    }
}

/// Totals of a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Streams written or imported.
    pub streams: u64,
}

fn write_line(out: &mut dyn Write, line: &Line) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn header_of(stream: &RecoveredStream) -> StreamHeader {
    let spec = &stream.spec;
    StreamHeader {
        path: spec.path.clone(),
        content_type: spec.content_type.clone(),
        ttl_secs: spec.ttl_secs,
        expires_at_ms: spec.expires_at_ms,
        created_at_ms: spec.created_at_ms,
        base: Offset(spec.base).to_string(),
        head: (stream.head > spec.base).then(|| Offset(stream.head).to_string()),
        tail: Offset(stream.tail).to_string(),
        fork: spec.fork.as_ref().map(|link| ForkHeader {
            source_path: link.source_path.clone(),
            offset: Offset(link.offset).to_string(),
            sub_offset: link.sub_offset,
        }),
        closed: stream.closed.is_some(),
        closed_by: stream.closed.clone().flatten(),
        stream_seq: stream.stream_seq.clone(),
        soft_deleted: stream.soft_deleted,
        producers: stream
            .producers
            .iter()
            .map(|(id, state)| ProducerLine {
                id: id.clone(),
                epoch: state.epoch,
                seq: state.last_seq,
            })
            .collect(),
    }
}

/// Writes the selected streams of `engine` to `out`.
///
/// # Errors
/// When writing fails or storage cannot be read.
pub async fn export(
    engine: &Engine,
    filter: &StreamFilter,
    out: &mut dyn Write,
    progress: &mut dyn Progress,
) -> Result<Summary, TransferError> {
    let streams = engine.snapshot_streams();
    // Include the sources of selected forks: their data lives there.
    let mut selected: std::collections::HashSet<String> = streams
        .iter()
        .filter(|s| filter.matches(&s.spec.path))
        .map(|s| s.spec.path.clone())
        .collect();
    for stream in streams.iter().rev() {
        if selected.contains(&stream.spec.path)
            && let Some(link) = &stream.spec.fork
        {
            selected.insert(link.source_path.clone());
        }
    }
    write_line(
        out,
        &Line::Header(Header {
            format: FORMAT.into(),
            version: VERSION,
            server_version: env!("CARGO_PKG_VERSION").into(),
        }),
    )?;
    let mut summary = Summary::default();
    for stream in streams.iter().filter(|s| selected.contains(&s.spec.path)) {
        write_line(out, &Line::Stream(Box::new(header_of(stream))))?;
        let mut end = StreamEnd::default();
        let mut position = stream.head.max(stream.spec.base);
        while position < stream.tail {
            let chunk = engine
                .read_own(stream.spec.id, position, stream.tail, EXPORT_READ_BYTES)
                .await
                .map_err(|source| TransferError::Engine {
                    path: stream.spec.path.clone(),
                    source,
                })?;
            if chunk.end <= position {
                break;
            }
            for record in &chunk.records {
                end.add(record);
                let encoded = base64::engine::general_purpose::STANDARD.encode(record);
                write_line(out, &Line::Record(encoded))?;
            }
            position = chunk.end;
        }
        let bytes = end.bytes;
        write_line(out, &Line::End(end))?;
        summary.streams += 1;
        progress.stream_done(&stream.spec.path, bytes);
    }
    write_line(out, &Line::Summary(summary))?;
    out.flush()?;
    Ok(summary)
}

/// Reads lines, counting them for error messages.
struct Lines<'a> {
    input: &'a mut dyn BufRead,
    number: u64,
    buf: String,
}

/// One item inside a stream section.
enum Item {
    Record(Bytes),
    End(StreamEnd),
}

impl Lines<'_> {
    fn next(&mut self) -> Result<Option<Line>, TransferError> {
        loop {
            self.buf.clear();
            if self.input.read_line(&mut self.buf)? == 0 {
                return Ok(None);
            }
            self.number += 1;
            if self.buf.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&self.buf)
                .map(Some)
                .map_err(|e| TransferError::Format {
                    line: self.number,
                    reason: e.to_string(),
                });
        }
    }

    fn error(&self, reason: impl Into<String>) -> TransferError {
        TransferError::Format {
            line: self.number,
            reason: reason.into(),
        }
    }

    fn item(&mut self) -> Result<Item, TransferError> {
        match self.next()? {
            Some(Line::Record(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map(|raw| Item::Record(Bytes::from(raw)))
                .map_err(|e| self.error(format!("record is not valid base64: {e}"))),
            Some(Line::End(end)) => Ok(Item::End(end)),
            Some(_) => Err(self.error("expected a record or the end of the stream")),
            None => Err(self.error("the export ends inside a stream")),
        }
    }

    /// Reads a stream's records up to its end line, checking the totals.
    async fn records<F, Fut>(
        &mut self,
        stream: &RecoveredStream,
        mut sink: F,
    ) -> Result<(), TransferError>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<(), TransferError>>,
    {
        let mut computed = StreamEnd::default();
        loop {
            match self.item()? {
                Item::Record(record) => {
                    computed.add(&record);
                    sink(record).await?;
                }
                Item::End(declared) => {
                    if declared != computed {
                        return Err(self.error(format!(
                            "stream {} does not match its end line (records, bytes or checksum differ)",
                            stream.spec.path
                        )));
                    }
                    if stream.head + computed.bytes != stream.tail {
                        return Err(self.error(format!(
                            "stream {}: records end at {} but the declared tail is {}",
                            stream.spec.path,
                            stream.head + computed.bytes,
                            stream.tail
                        )));
                    }
                    return Ok(());
                }
            }
        }
    }
}

fn position(raw: &str, field: &str) -> Result<u64, String> {
    match parse_concrete(raw) {
        Ok(ReadFrom::At(offset)) => Ok(offset.position()),
        _ => Err(format!("{field} {raw:?} is not an offset")),
    }
}

fn to_recovered(header: &StreamHeader) -> Result<RecoveredStream, String> {
    if !header.path.starts_with('/') {
        return Err(format!("stream path {:?} must start with /", header.path));
    }
    let fork = match &header.fork {
        Some(fork) => Some(ForkLink {
            source: 0,
            source_path: fork.source_path.clone(),
            offset: position(&fork.offset, "fork offset")?,
            sub_offset: fork.sub_offset,
        }),
        None => None,
    };
    let base = position(&header.base, "base")?;
    let head = match &header.head {
        Some(head) => position(head, "head")?,
        None => base,
    };
    let tail = position(&header.tail, "tail")?;
    if head < base {
        return Err("head lies before base".into());
    }
    if tail < head {
        return Err("tail lies before head".into());
    }
    Ok(RecoveredStream {
        spec: StreamSpec {
            id: 0,
            path: header.path.clone(),
            content_type: header.content_type.clone(),
            ttl_secs: header.ttl_secs,
            expires_at_ms: header.expires_at_ms,
            created_at_ms: header.created_at_ms,
            fork,
            base,
        },
        head,
        tail,
        closed: header.closed.then(|| header.closed_by.clone()),
        producers: header
            .producers
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    ProducerState {
                        epoch: p.epoch,
                        last_seq: p.seq,
                    },
                )
            })
            .collect(),
        stream_seq: header.stream_seq.clone(),
        soft_deleted: header.soft_deleted,
    })
}

/// Records of one stream parked on disk while it is validated (for
/// `replace`), so memory stays flat.
struct Spool {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl Spool {
    fn create() -> Result<Self, TransferError> {
        let path = std::env::temp_dir().join(format!(
            "ds-import-{}-{}.spool",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        Ok(Self { path, file })
    }

    fn push(&mut self, record: &[u8]) -> Result<(), TransferError> {
        self.file.write_all(&(record.len() as u64).to_le_bytes())?;
        self.file.write_all(record)?;
        Ok(())
    }

    fn reader(&mut self) -> Result<std::io::BufReader<std::fs::File>, TransferError> {
        self.file.flush()?;
        Ok(std::io::BufReader::new(std::fs::File::open(&self.path)?))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Imports the streams of an export into `engine`.
///
/// # Errors
/// On malformed input, a conflict under [`OnConflict::Fail`], a missing
/// fork source, or a storage failure. Streams imported before the error stay.
pub async fn import(
    engine: &Engine,
    input: &mut dyn BufRead,
    filter: &StreamFilter,
    on_conflict: OnConflict,
    progress: &mut dyn Progress,
) -> Result<Summary, TransferError> {
    let mut lines = Lines {
        input,
        number: 0,
        buf: String::new(),
    };
    match lines.next()? {
        Some(Line::Header(header)) if header.format == FORMAT && header.version == VERSION => {}
        Some(Line::Header(header)) => {
            return Err(lines.error(format!(
                "unsupported export {} version {} (this build reads {FORMAT} version {VERSION})",
                header.format, header.version
            )));
        }
        _ => return Err(lines.error("not a durable-streams export: the header line is missing")),
    }
    let mut summary = Summary::default();
    loop {
        let header = match lines.next()? {
            Some(Line::Stream(header)) => header,
            Some(Line::Summary(_)) => return Ok(summary),
            Some(_) => return Err(lines.error("expected a stream or the summary")),
            None => return Err(lines.error("the export is truncated: no summary line")),
        };
        let stream = to_recovered(&header).map_err(|reason| lines.error(reason))?;
        let path = stream.spec.path.clone();
        let exists = engine.contains(&path);
        let engine_error = |source| TransferError::Engine {
            path: path.clone(),
            source,
        };
        if !filter.matches(&path) || (exists && on_conflict == OnConflict::Skip) {
            lines.records(&stream, |_| async { Ok(()) }).await?;
            continue;
        }
        if exists && on_conflict == OnConflict::Fail {
            return Err(TransferError::Conflict(path));
        }
        if exists {
            // Replace: validate everything first, touch the target after.
            let mut spool = Spool::create()?;
            let spool_ref = std::cell::RefCell::new(&mut spool);
            lines
                .records(&stream, |record| {
                    std::future::ready(spool_ref.borrow_mut().push(&record))
                })
                .await?;
            engine
                .remove_for_import(&path)
                .await
                .map_err(engine_error)?;
            let mut import = engine
                .begin_import(stream.clone())
                .await
                .map_err(engine_error)?;
            let mut reader = spool.reader()?;
            let mut len = [0u8; 8];
            while std::io::Read::read_exact(&mut reader, &mut len).is_ok() {
                let mut record = vec![0u8; usize::try_from(u64::from_le_bytes(len)).unwrap_or(0)];
                std::io::Read::read_exact(&mut reader, &mut record)?;
                import
                    .append(Bytes::from(record))
                    .await
                    .map_err(engine_error)?;
            }
            import.finish().await.map_err(engine_error)?;
        } else {
            let import = engine
                .begin_import(stream.clone())
                .await
                .map_err(engine_error)?;
            let cell = tokio::sync::Mutex::new(import);
            let copied = lines
                .records(&stream, |record| {
                    let cell = &cell;
                    let path = &path;
                    async move {
                        cell.lock().await.append(record).await.map_err(|source| {
                            TransferError::Engine {
                                path: path.clone(),
                                source,
                            }
                        })
                    }
                })
                .await;
            let import = cell.into_inner();
            if let Err(error) = copied {
                let _ = import.abort().await;
                return Err(error);
            }
            import.finish().await.map_err(engine_error)?;
        }
        summary.streams += 1;
        progress.stream_done(&path, stream.tail - stream.head);
    }
}

#[cfg(test)]
mod tests;
