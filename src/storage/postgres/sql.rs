//! The writer's statements: set-based (`unnest` arrays), so a batch of any
//! size is one statement per kind.

pub const TXID_SQL: &str = "SELECT txid_current()";
pub const CREATE_SQL: &str = "
INSERT INTO streams (id, path, content_type, ttl_secs, expires_at_ms, created_at_ms, base,
                     fork_source, fork_source_path, fork_offset, fork_sub_offset, tail, closed,
                     last_access_ms)
SELECT r.*, $14::int8
  FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
              $8::int8[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::bool[]) AS r
ON CONFLICT (id) DO NOTHING
RETURNING id";
pub const UPDATE_SQL: &str = "
UPDATE streams AS s SET
    tail = b.new_tail,
    closed = s.closed OR b.close,
    closed_by_producer = CASE WHEN b.close AND NOT s.closed THEN b.by_producer ELSE s.closed_by_producer END,
    closed_by_epoch = CASE WHEN b.close AND NOT s.closed THEN b.by_epoch ELSE s.closed_by_epoch END,
    closed_by_seq = CASE WHEN b.close AND NOT s.closed THEN b.by_seq ELSE s.closed_by_seq END,
    stream_seq = coalesce(b.stream_seq, s.stream_seq),
    last_access_ms = $9::int8
  FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::bool[], $5::text[], $6::int8[], $7::int8[],
              $8::text[])
       AS b(id, start_pos, new_tail, close, by_producer, by_epoch, by_seq, stream_seq)
 WHERE s.id = b.id AND s.tail = b.start_pos
RETURNING s.id";
pub const RECORDS_SQL: &str = "
INSERT INTO records (stream_id, start_pos, end_pos, data)
SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::bytea[])";
pub const PRODUCERS_SQL: &str = "
INSERT INTO producers (stream_id, producer_id, epoch, last_seq)
SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[])
ON CONFLICT (stream_id, producer_id)
DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq";
pub const SOFT_DELETE_SQL: &str =
    "UPDATE streams SET status = 'soft_deleted' WHERE id = ANY($1::int8[])";
/// Removes streams, except those that forks (perhaps made through another
/// server) not removed by the same statement still read through, directly
/// or through a kept stream: those are soft-deleted instead.
pub const REMOVE_SQL: &str = "
WITH RECURSIVE read_through(id) AS (
        SELECT s.id FROM streams s
         WHERE s.id = ANY($1::int8[])
           AND EXISTS (SELECT 1 FROM streams f
                        WHERE f.fork_source = s.id AND f.id <> ALL($1::int8[]))
        UNION
        SELECT f.fork_source FROM streams f JOIN read_through r ON f.id = r.id
         WHERE f.fork_source = ANY($1::int8[])),
     doomed AS (
        SELECT id FROM streams
         WHERE id = ANY($1::int8[]) AND id NOT IN (SELECT id FROM read_through)),
     kept AS (
        UPDATE streams SET status = 'soft_deleted'
         WHERE id = ANY($1::int8[]) AND id NOT IN (SELECT id FROM doomed)),
     streams_gone AS (DELETE FROM streams WHERE id IN (SELECT id FROM doomed)),
     producers_gone AS (DELETE FROM producers WHERE stream_id IN (SELECT id FROM doomed))
DELETE FROM records WHERE stream_id IN (SELECT id FROM doomed)";
pub const TAILS_SQL: &str = "SELECT id, tail FROM streams WHERE id = ANY($1::int8[])";
pub const STATUS_SQL: &str = "SELECT txid_status($1)";
