//! Chunks and retention on PostgreSQL.
//!
//! A stream's chunks are not stored: they are the groups of its records
//! whose start lies in the same `chunk_bytes`-aligned window of stream
//! positions, so they are contiguous, never split a record, hold about
//! `chunk_bytes` each and stay the same whatever is trimmed before them.
//! A record's write time is `records.written_ms`, set by the database at
//! commit (rows stored before schema version 2 have none and count as
//! written when the store was opened). [`trim`] deletes whole chunks and
//! moves `streams.head`; a read that finds no record where it starts asks
//! for that head ([`trimmed_head`]) only then, so reads that succeed pay
//! nothing for retention.

use deadpool_postgres::Pool;

use super::{get, query, unsigned};
use crate::storage::{ChunkInfo, StorageError, StreamId};

const CHUNKS_SQL: &str = "
SELECT min(start_pos), max(end_pos), max(written_ms) FROM records
 WHERE stream_id = $1
 GROUP BY start_pos / $2
 ORDER BY min(start_pos)";

/// The retained chunks of stream `id`, oldest first (none for an unknown
/// stream); `opened_ms` stands in for rows stored without a write time.
pub async fn chunks(
    pool: &Pool,
    id: StreamId,
    chunk_bytes: u64,
    opened_ms: i64,
) -> Result<Vec<ChunkInfo>, StorageError> {
    let id = i64::try_from(id).unwrap_or(i64::MAX);
    let window = i64::try_from(chunk_bytes.max(1)).unwrap_or(i64::MAX);
    let rows = query(pool, "listing chunks", CHUNKS_SQL, &[&id, &window]).await?;
    rows.iter()
        .map(|row| {
            Ok(ChunkInfo {
                start: unsigned(get(row, 0)?, "chunk start")?,
                end: unsigned(get(row, 1)?, "chunk end")?,
                last_write_ms: get::<Option<i64>>(row, 2)?.unwrap_or(opened_ms),
            })
        })
        .collect()
}

/// Where the kept data starts after dropping the chunks that end at or
/// before `before`: the first kept chunk's start, or the last chunk's end
/// when none is kept; `None` when nothing is dropped.
fn cut(chunks: &[ChunkInfo], before: u64) -> Option<u64> {
    let first = chunks.first()?;
    if first.end > before {
        return None;
    }
    chunks
        .iter()
        .find(|c| c.end > before)
        .or(chunks.last())
        .map(|c| if c.end > before { c.start } else { c.end })
}

/// Drops stream `id`'s chunks that end at or before `before` and records
/// the new head, in one transaction. Appends may commit meanwhile: they
/// only add records after the cut, which stays where it was computed.
pub async fn trim(
    pool: &Pool,
    id: StreamId,
    before: u64,
    chunk_bytes: u64,
) -> Result<(), StorageError> {
    let listed = chunks(pool, id, chunk_bytes, 0).await?;
    let (Ok(id), Ok(before_i)) = (i64::try_from(id), i64::try_from(before)) else {
        return Ok(());
    };
    let mut client = pool
        .get()
        .await
        .map_err(|e| super::pool_error("trimming a stream", e))?;
    let failed = |e: tokio_postgres::Error| super::storage_error("trimming a stream", &e);
    let transaction = client.transaction().await.map_err(failed)?;
    // Past the tail, everything goes and the stream continues at
    // `before`; an append racing this one fails its tail check.
    let moved = transaction
        .execute(
            "UPDATE streams SET tail = $2, head = $2 WHERE id = $1 AND tail < $2",
            &[&id, &before_i],
        )
        .await
        .map_err(failed)?;
    if moved > 0 {
        transaction
            .execute("DELETE FROM records WHERE stream_id = $1", &[&id])
            .await
            .map_err(failed)?;
        return transaction.commit().await.map_err(failed);
    }
    let Some(cut) = cut(&listed, before).and_then(|cut| i64::try_from(cut).ok()) else {
        return Ok(());
    };
    transaction
        .execute(
            "DELETE FROM records WHERE stream_id = $1 AND end_pos <= $2",
            &[&id, &cut],
        )
        .await
        .map_err(failed)?;
    transaction
        .execute(
            "UPDATE streams SET head = $2 WHERE id = $1 AND coalesce(head, base) < $2",
            &[&id, &cut],
        )
        .await
        .map_err(failed)?;
    transaction.commit().await.map_err(failed)
}

/// The head of stream `id` when retention moved it past `from`.
pub async fn trimmed_head(
    pool: &Pool,
    id: StreamId,
    from: u64,
) -> Result<Option<u64>, StorageError> {
    let id = i64::try_from(id).unwrap_or(i64::MAX);
    let rows = query(
        pool,
        "reading the stream head",
        "SELECT head FROM streams WHERE id = $1",
        &[&id],
    )
    .await?;
    let head = match rows.first() {
        Some(row) => get::<Option<i64>>(row, 0)?,
        None => None,
    };
    Ok(head
        .map(|h| unsigned(h, "head"))
        .transpose()?
        .filter(|&h| h > from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, end: u64) -> ChunkInfo {
        ChunkInfo {
            start,
            end,
            last_write_ms: 0,
        }
    }

    #[test]
    fn cuts_at_whole_chunks() {
        let chunks = [chunk(0, 10), chunk(10, 20), chunk(20, 25)];
        assert_eq!(cut(&chunks, 5), None);
        assert_eq!(cut(&chunks, 10), Some(10));
        assert_eq!(cut(&chunks, 19), Some(10));
        assert_eq!(cut(&chunks, 20), Some(20));
        assert_eq!(cut(&chunks, 25), Some(25));
        assert_eq!(cut(&chunks, 99), Some(25));
        assert_eq!(cut(&[], 99), None);
    }
}
