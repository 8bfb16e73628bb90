//! The fuzz targets' bodies, shared with the corpus regression test.

pub mod targets;
