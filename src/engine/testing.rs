//! Helpers of the engine's unit tests: an engine on the memory backend and
//! requests in their plainest form.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    Access, AppendRequest, Appended, CreateRequest, Created, Engine, EngineLimits, ForkRequest,
    StreamEntry,
};
use crate::protocol::header::{ContentType, ProducerHeaders};
use crate::storage::{InMemoryStorage, Mutation, Storage};

/// An engine over a fresh memory backend.
pub fn engine() -> Engine {
    engine_with(EngineLimits::default())
}

/// An engine over a fresh memory backend with `limits`.
pub fn engine_with(limits: EngineLimits) -> Engine {
    Engine::new(Arc::new(InMemoryStorage::default()), limits)
}

/// A `PUT` of an empty `text/plain` stream at `path`.
pub fn plain(path: &str) -> CreateRequest {
    CreateRequest {
        path: path.into(),
        content_type: Some(ContentType::new("text/plain")),
        ttl_secs: None,
        expires_at: None,
        closed: false,
        fork: None,
        body: Bytes::new(),
    }
}

/// A `PUT` forking `source` at its tail.
pub fn fork(path: &str, source: &str) -> CreateRequest {
    CreateRequest {
        content_type: None,
        fork: Some(ForkRequest {
            source_path: source.into(),
            offset: None,
            sub_offset: 0,
        }),
        ..plain(path)
    }
}

/// An append of `body` by producer `p`.
pub fn produced(body: &'static [u8], epoch: u64, seq: u64) -> AppendRequest {
    AppendRequest {
        content_type: Some(ContentType::new("text/plain")),
        body: Bytes::from_static(body),
        close: false,
        producer: Some(ProducerHeaders {
            id: "p".into(),
            epoch,
            seq,
        }),
        stream_seq: None,
    }
}

/// Creates a stream, which must be new.
pub async fn create(engine: &Engine, request: CreateRequest) -> Created {
    let created = engine.create(request).await.expect("created");
    assert!(created.new);
    created
}

/// Appends `body` as plain text, which must succeed.
pub async fn append(engine: &Engine, path: &str, body: &'static [u8]) -> Appended {
    let request = AppendRequest {
        producer: None,
        ..produced(body, 0, 0)
    };
    engine.append(path, request).await.expect("appended")
}

/// Retention keeping at most `max_bytes` of each stream under `prefix`.
pub fn keep_bytes(prefix: &str, max_bytes: u64) -> crate::storage::config::RetentionConfig {
    use crate::storage::config::{RetentionConfig, RetentionRule};
    RetentionConfig {
        rules: vec![RetentionRule {
            prefix: prefix.into(),
            max_age_secs: 0,
            max_bytes,
        }],
        ..RetentionConfig::default()
    }
}

/// An engine over `storage` (whose chunks are `block.len()` bytes) with a
/// plain stream at `path` of three one-record chunks of `block`, the first
/// two of which the store has trimmed without the engine hearing of it: the
/// gap between a trim's commit and retention's acknowledgement.
pub async fn trimmed_unheard(
    storage: Arc<dyn Storage>,
    path: &str,
    block: &'static [u8],
) -> (Engine, Arc<StreamEntry>) {
    let engine = Engine::new(storage.clone(), EngineLimits::default());
    create(&engine, plain(path)).await;
    for _ in 0..3 {
        append(&engine, path, block).await;
    }
    let entry = engine.lookup(path, Access::Peek).expect("live");
    storage
        .submit(Mutation::Trim {
            id: entry.id(),
            before: 2 * block.len() as u64,
        })
        .await
        .expect("trim");
    assert_eq!(entry.first_position(), 0, "not heard of yet");
    (engine, entry)
}
