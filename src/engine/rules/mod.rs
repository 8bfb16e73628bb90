//! The protocol's write rules as pure, synchronous functions: what an
//! append does to a stream (spec §5.7 producers, `Stream-Seq`, closing,
//! content type, size limit), what a duplicate confirms, and when a `PUT`
//! matches an existing stream (spec §4.1) or a fork position is usable.
//!
//! They read a stream's writer state through [`WriterView`], so any
//! implementation of the stream operations applies exactly the same rules:
//! the in-memory ledger here (committed plus pending writes), or a row
//! locked inside a database transaction. Nothing here locks, awaits or
//! touches storage.
//!
//! # Layout
//! - `append`: what an append writes or confirms.
//! - `create`: idempotent create, a fork's settings and position.

mod append;
mod create;

pub use append::{
    AppendPlan, Confirmation, Confirms, StreamFacts, append_payload, check_append_request,
    confirmation, plan_append,
};
pub use create::{
    CreateSettings, ForkIntent, SourceFacts, check_initial_size, check_message_boundary,
    check_same_create, create_settings, fork_cut, fork_offset, initial_payload,
};

use crate::protocol::producer::ProducerState;
use crate::storage::ClosedBy;

/// Read-only access to a stream's writer state: its tail, closed marker,
/// producer states and `Stream-Seq` watermark.
pub trait WriterView {
    /// Where the next append starts.
    fn tail(&self) -> u64;
    /// `Some` once closed; the inner value names the closing producer.
    fn closed(&self) -> Option<&Option<ClosedBy>>;
    /// The state of producer `id`, if it ever wrote.
    fn producer(&self, id: &str) -> Option<ProducerState>;
    /// The last accepted `Stream-Seq`.
    fn stream_seq(&self) -> Option<&str>;
}
