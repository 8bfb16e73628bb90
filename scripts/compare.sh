#!/usr/bin/env bash
# Side-by-side performance comparison of Durable Streams servers, in one run
# on one machine (ratios count, absolute numbers on shared machines do not).
#
#   scripts/compare.sh [--quick | --smoke] [--only "label label ..."] [--out DIR]
#
# Servers (label: what it is; "peer" = our server it is compared against):
#   ours-memory         this crate, storage.mode=memory
#   ours-file-durable   this crate, storage.mode=file-durable (fdatasync per group commit)
#   ours-acid           this crate, storage.mode=acid (redb, immediate durability)
#   node-memory         npm @durable-streams/server (Node reference, in-memory)   peer ours-memory
#   ds030-memory        crate durable-streams-server 0.3.0, memory                peer ours-memory
#   ds030-file-durable  crate durable-streams-server 0.3.0, file-durable          peer ours-file-durable
#   ds030-acid          crate durable-streams-server 0.3.0, acid                  peer ours-acid
#   electric-memory     crate durable-streams 0.1.5, --durability memory          peer ours-memory
#   electric-wal        crate durable-streams 0.1.5, --durability wal (fsync)     peer ours-file-durable
# Every server gets a fresh data directory, its own port, a 1 s long-poll
# timeout and limits large enough for the workloads; each is stopped by its
# own PID before the next starts.
#
# Competitors are installed on first use into .cache/compare/ (git-ignored):
# `cargo install --locked` of each crate into its own --root (both name their
# binary durable-streams-server) and `npm install` of the Node server.
#
# Output: DIR/results.jsonl (one JSON object per server and workload),
# DIR/table.md (the table printed at the end), DIR/<label>.log (server logs).
# --quick shortens every workload (about a third of the time); --smoke runs
# only ours-memory with tiny workloads, to keep the load tool working in CI.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

MODE=full
ONLY=""
OUT=""
while (($# > 0)); do
  case "$1" in
    --quick) MODE=quick ;;
    --smoke) MODE=smoke ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

CACHE="$REPO_ROOT/.cache/compare"
OUT="${OUT:-$CACHE/run-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$CACHE" "$OUT"
OUT="$(cd "$OUT" && pwd)"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

case "$MODE" in
  full) SECS=5; READ_MB=64; MSGS=200; SUBS=100; RSS_MSGS=100000; SSE_CONNS=1000 ;;
  quick) SECS=2; READ_MB=16; MSGS=60; SUBS=100; RSS_MSGS=50000; SSE_CONNS=500 ;;
  smoke) SECS=1; READ_MB=1; MSGS=5; SUBS=3; RSS_MSGS=200; SSE_CONNS=5; ONLY="${ONLY:-ours-memory}" ;;
esac

# ------------------------------------------------------------------ build ---
echo "== building this server and the load tool (release)"
cargo build --release --locked --quiet --bin durable-streams-server
OURS="$REPO_ROOT/target/release/durable-streams-server"
LOAD="$(cargo bench --locked --bench load --no-run --message-format=json 2>/dev/null |
  grep '"name":"load"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
[[ -x "$LOAD" ]] || { echo "could not build the load tool" >&2; exit 1; }

# -------------------------------------------------------------- installs ---
wanted() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }
wants_prefix() {
  local label
  for label in $ALL; do [[ "$label" == "$1"* ]] && wanted "$label" && return 0; done
  return 1
}
ALL="ours-memory ours-file-durable ours-acid node-memory ds030-memory ds030-file-durable ds030-acid electric-memory electric-wal"

DS030="$CACHE/ds030/bin/durable-streams-server"
ELECTRIC="$CACHE/electric/bin/durable-streams-server"
NODE_DIR="$CACHE/node"
if wants_prefix ds030 && [[ ! -x "$DS030" ]]; then
  echo "== installing durable-streams-server 0.3.0"
  cargo install --locked --quiet --version 0.3.0 durable-streams-server --root "$CACHE/ds030"
fi
if wants_prefix electric && [[ ! -x "$ELECTRIC" ]]; then
  echo "== installing durable-streams 0.1.5"
  cargo install --locked --quiet --version 0.1.5 durable-streams --root "$CACHE/electric"
fi
if wants_prefix node && [[ ! -d "$NODE_DIR/node_modules/@durable-streams/server" ]]; then
  echo "== installing @durable-streams/server 0.3.7"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } &&
    npm install --no-audit --no-fund --silent @durable-streams/server@0.3.7)
fi

# --------------------------------------------------------------- servers ---
PID=""
stop_server() {
  if [[ -n "$PID" ]]; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap stop_server EXIT

# start_server LABEL: starts it on a free port with a fresh data directory;
# sets PID, URL and BASE.
start_server() {
  local label="$1" port data
  port="$("$LOAD" free-port)"
  data="$OUT/data-$label"
  rm -rf "$data" && mkdir -p "$data"
  URL="http://127.0.0.1:$port"
  BASE="/v1/stream"
  local log="$OUT/$label.log"
  # Ours and 0.3.0 read config/*.toml from the working directory: start
  # them in the empty data directory so built-in defaults apply.
  local ds_env=(
    "DS_SERVER__BIND_ADDRESS=127.0.0.1:$port"
    "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS=1"
    "DS_LIMITS__MAX_MEMORY_BYTES=4294967296"
    "DS_LIMITS__MAX_STREAM_BYTES=4294967296"
    "RUST_LOG=warn"
  )
  case "$label" in
    ours-* | ds030-*)
      local bin="$OURS" mode="${label#*-}"
      [[ "$label" == ds030-* ]] && bin="$DS030"
      if [[ "$mode" == memory ]]; then
        (cd "$data" && exec env "${ds_env[@]}" DS_STORAGE__MODE=memory "$bin") >"$log" 2>&1 &
      else
        (cd "$data" && exec env "${ds_env[@]}" DS_STORAGE__MODE="$mode" \
          DS_STORAGE__DATA_DIR="$data/store" "$bin") >"$log" 2>&1 &
      fi
      ;;
    node-memory)
      (cd "$data" && exec node "$REPO_ROOT/scripts/compare/node-server.mjs" "$NODE_DIR" "$port" 1000) >"$log" 2>&1 &
      ;;
    electric-*)
      BASE="/"
      (cd "$data" && exec "$ELECTRIC" --host 127.0.0.1 --port "$port" --data-dir "$data/store" \
        --long-poll-timeout-ms 1000 --durability "${label#electric-}") >"$log" 2>&1 &
      ;;
  esac
  PID=$!
  "$LOAD" wait-ready --url "$URL" --seconds 60
}

peer_of() {
  case "$1" in
    ours-*) echo "$1" ;;
    *-memory) echo ours-memory ;;
    ds030-file-durable | electric-wal) echo ours-file-durable ;;
    ds030-acid) echo ours-acid ;;
  esac
}

run() { # run LABEL COMMAND [options...]
  local label="$1" command="$2"
  shift 2
  "$LOAD" "$command" --url "$URL" --base "$BASE" --label "$label" --peer "$(peer_of "$label")" \
    --out "$RESULTS" "$@" | head -n 1
}

for label in $ALL; do
  wanted "$label" || continue
  echo
  echo "== $label"
  # Memory first, on a fresh server: what is measured is what the workload added.
  start_server "$label"
  # (Per-message memory matters for the memory mode; durable ones get fewer.)
  msgs="$RSS_MSGS"
  [[ "$label" == *memory ]] || msgs=$((RSS_MSGS / 10))
  run "$label" rss-streams --pid "$PID" --streams 100 --messages "$msgs" --size 64
  run "$label" rss-sse --pid "$PID" --connections "$SSE_CONNS"
  stop_server
  start_server "$label"
  run "$label" append --streams 1 --connections 32 --seconds "$SECS" --size 64
  run "$label" append --streams 100 --connections 100 --seconds "$SECS" --size 64
  if [[ "$label" == *memory ]]; then
    run "$label" append --streams 1 --connections 32 --seconds "$SECS" --size 64 --json
    run "$label" append --streams 1 --connections 32 --seconds "$SECS" --size 64 --producer
    run "$label" read --megabytes "$READ_MB" --size 4096 --seconds "$SECS"
    run "$label" latency --mode long-poll --subscribers "$SUBS" --messages "$MSGS"
  fi
  run "$label" latency --mode sse --subscribers "$SUBS" --messages "$MSGS"
  stop_server
done

echo
{
  echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r)"
  echo "mode: $MODE"
  echo
  "$LOAD" report "$RESULTS"
} | tee "$OUT/table.md"
echo
echo "results: $RESULTS"
