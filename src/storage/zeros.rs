//! Zeros written ahead of a log's frames. A log file whose blocks were only
//! reserved (`fallocate`) or never written (a sparse file) leaves the file
//! system a block to allocate or convert whenever a write first reaches it,
//! which the following `fdatasync` must then commit as metadata. Written
//! with zeros ahead, in large steps, those blocks cost that once per step
//! instead of on every sync; a scan already reads zeros as the clean end of
//! a log.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Writes zeros over bytes `from..to` of `file`.
///
/// # Errors
/// When a write fails.
pub(crate) fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}
