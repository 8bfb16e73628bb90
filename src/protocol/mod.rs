//! Pure protocol logic, free of I/O: offsets, header parsing, producer rules,
//! JSON mode, SSE framing, cursors, stream names and path globs. Everything here is
//! unit- and property-tested in place.

pub mod cursor;
pub mod glob;
pub mod header;
pub mod json;
pub mod name;
pub mod offset;
pub mod producer;
pub mod sse;
