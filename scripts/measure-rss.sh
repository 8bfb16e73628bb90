#!/usr/bin/env bash
# Measures the server's resident memory (VmRSS from /proc/<pid>/status) in
# memory storage mode:
#   1. idle, right after start-up;
#   2. after 100,000 appends of 64 bytes to one stream (examples/append_load.rs,
#      a few keep-alive connections);
#   3. around a 50 MiB POST against the default 10 MiB body limit, sent once
#      with Content-Length and once chunked: both must be answered 413, and RSS
#      must not grow by anything near 50 MiB.
# Prints one "name: value" line per number. Exits non-zero if a check fails:
# the appends add more than APPEND_BUDGET_KIB (default 30 MB) over idle, a big
# POST is not answered 413, or it grows RSS by 40 MiB or more.
#
# Knobs: APPENDS (100000), RECORD_BYTES (64), CONNECTIONS (4),
#        BIG_POST_BYTES (52428800), APPEND_BUDGET_KIB (29297 = 30 MB).
# Linux only (reads /proc).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

APPENDS="${APPENDS:-100000}"
RECORD_BYTES="${RECORD_BYTES:-64}"
CONNECTIONS="${CONNECTIONS:-4}"
BIG_POST_BYTES="${BIG_POST_BYTES:-52428800}"
APPEND_BUDGET_KIB="${APPEND_BUDGET_KIB:-29297}"
BIG_POST_LIMIT_KIB=$((40 * 1024))

# Incremental: a no-op when both are up to date.
cargo build --release --quiet --bin durable-streams-server --example append_load
SERVER=target/release/durable-streams-server
LOAD=target/release/examples/append_load

PORT="$("$LOAD" free-port)"
BASE="http://127.0.0.1:${PORT}"
DS_SERVER__BIND_ADDRESS="127.0.0.1:${PORT}" DS_STORAGE__MODE=memory RUST_LOG=warn \
  "$SERVER" &
PID=$!
cleanup() {
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/${PID}/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/${PID}/status"; }

"$LOAD" wait-ready "$BASE"
sleep 0.5
failed=0

idle=$(rss_kib)
echo "idle_rss_kib: ${idle}"

"$LOAD" append "${BASE}/v1/stream/rss-appends" "$APPENDS" "$RECORD_BYTES" "$CONNECTIONS"
sleep 0.5
after_appends=$(rss_kib)
growth=$((after_appends - idle))
echo "rss_after_appends_kib: ${after_appends}"
echo "append_growth_kib: ${growth}"
echo "append_payload_kib: $((APPENDS * RECORD_BYTES / 1024))"
echo "append_growth_bytes_per_record: $((growth * 1024 / APPENDS))"
if ((growth > APPEND_BUDGET_KIB)); then
  echo "FAIL: ${APPENDS} appends grew RSS by ${growth} KiB (budget ${APPEND_BUDGET_KIB} KiB)" >&2
  failed=1
fi

for framing in content-length chunked; do
  before=$(rss_kib)
  arg=""
  [[ "$framing" == chunked ]] && arg=chunked
  status=$("$LOAD" big-post "${BASE}/v1/stream/rss-appends" "$BIG_POST_BYTES" $arg)
  sleep 0.5
  after=$(rss_kib)
  echo "big_post_${framing//-/_}_status: ${status}"
  echo "big_post_${framing//-/_}_rss_growth_kib: $((after - before))"
  if [[ "$status" != 413 ]]; then
    echo "FAIL: ${BIG_POST_BYTES}-byte POST (${framing}) answered ${status}, expected 413" >&2
    failed=1
  fi
  if ((after - before >= BIG_POST_LIMIT_KIB)); then
    echo "FAIL: ${BIG_POST_BYTES}-byte POST (${framing}) grew RSS by $((after - before)) KiB" >&2
    failed=1
  fi
done
echo "peak_rss_kib: $(hwm_kib)"
exit "$failed"
