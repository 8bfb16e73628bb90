#!/usr/bin/env bash
# Side-by-side performance comparison of Durable Streams servers, in one run
# on one machine (ratios count, absolute numbers on shared machines do not).
#
#   scripts/compare.sh [--quick | --smoke] [--only "label label ..."] [--out DIR]
#                      [--electric-src DIR] [--profile PROFILE] [--appends-only | --fanout-only]
#
# Servers (label: what it is; "peer" = our server it is compared against):
#   ours-memory            this crate, storage.mode=memory
#   ours-hyper-memory      the same with transport.http.engine=hyper (HTTP/1.1 by hyper)  peer ours-memory
#   ours-tls-memory        ours-memory over TLS (idle-connection workloads only)
#   ours-tls-hyper-memory  the same with engine=hyper (idle-connection workloads only)   peer ours-tls-memory
#   ours-file-durable      this crate, storage.mode=file-durable (fdatasync per group commit)
#   ours-acid              this crate, storage.mode=acid (redb, immediate durability)
#   node-memory            npm @durable-streams/server (Node reference, in-memory)   peer ours-memory
#   ds030-memory           crate durable-streams-server 0.3.0, memory                peer ours-memory
#   ds030-file-durable     crate durable-streams-server 0.3.0, file-durable          peer ours-file-durable
#   ds030-acid             crate durable-streams-server 0.3.0, acid                  peer ours-acid
#   electric-memory        crate durable-streams 0.1.5, --durability memory          peer ours-memory
#   electric-wal           crate durable-streams 0.1.5, --durability wal (fsync)     peer ours-file-durable
#   electric-src-memory    Electric's current server built from --electric-src DIR  peer ours-memory
#   electric-src-wal       the same, --durability wal                                peer ours-file-durable
# --electric-src DIR: a checkout of electric-sql/electric (or its
# packages/durable-streams-rust); built with `cargo build --release --locked`
# into .cache/compare/electric-src-target. Without it the electric-src-*
# labels are skipped.
#
# Every server gets a fresh data directory, its own port, a 1 s long-poll
# timeout and limits large enough for the workloads; each is stopped by its
# own PID before the next starts. Each server runs, on fresh starts:
#   - rss-streams (memory per stream and per stored message);
#   - the idle-connection workloads: N SSE readers, then (restarted) N
#     long-polls, waiting on one stream, with a 300 s long-poll timeout; RSS
#     growth per connection (N = 10,000; the shell's open-file limit is
#     raised for it, the servers inherit it);
#   - the request workloads: appends, catch-up reads, delivery latency;
#   - SSE fan-out: one stream with 10,000 subscribers and one writer at 50
#     appends/s, then 100 streams x 100 subscribers with one writer per stream
#     at 50 appends/s each: delivery p50/p99/max and RSS.
#
# Competitors are installed on first use into .cache/compare/ (git-ignored):
# `cargo install --locked` of each crate into its own --root (both name their
# binary durable-streams-server) and `npm install` of the Node server.
#
# Output: DIR/results.jsonl (one JSON object per server and workload),
# DIR/table.md (the table printed at the end), DIR/<label>.log (server logs).
# --profile PROFILE: the cargo profile this server is built with (default
# dist, as it ships; release when a fat-LTO build takes too long).
# --quick shortens every workload (about a third of the time); --smoke runs
# only ours-memory with tiny workloads, to keep the load tool working in CI.
# --appends-only runs only the append workloads (1 stream x 32 connections,
# 100 streams x 100 connections), to compare the storage commit paths.
# --fanout-only runs only the two SSE fan-out workloads.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

MODE=full
ONLY=""
OUT=""
ELECTRIC_SRC=""
PROFILE=""
APPENDS_ONLY=""
FANOUT_ONLY=""
while (($# > 0)); do
  case "$1" in
    --quick) MODE=quick ;;
    --smoke) MODE=smoke ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --electric-src) ELECTRIC_SRC="$2"; shift ;;
    --profile) PROFILE="$2"; shift ;;
    --appends-only) APPENDS_ONLY=1 ;;
    --fanout-only) FANOUT_ONLY=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0 ;;
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
# 10,000 idle connections need as many descriptors in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# IDLE: connections per idle workload; FAN_*: subscribers of the one-stream
# fan-out, streams x subscribers of the many-stream one, seconds of appends.
case "$MODE" in
  full) SECS=5; READ_MB=64; MSGS=200; SUBS=100; RSS_MSGS=100000; IDLE=10000
    FAN_ONE=10000; FAN_STREAMS=100; FAN_EACH=100; FAN_SECS=10 ;;
  quick) SECS=2; READ_MB=16; MSGS=60; SUBS=100; RSS_MSGS=50000; IDLE=2000
    FAN_ONE=2000; FAN_STREAMS=20; FAN_EACH=100; FAN_SECS=5 ;;
  smoke) SECS=1; READ_MB=1; MSGS=5; SUBS=3; RSS_MSGS=200; IDLE=5
    FAN_ONE=3; FAN_STREAMS=2; FAN_EACH=2; FAN_SECS=1; ONLY="${ONLY:-ours-memory}" ;;
esac

# ------------------------------------------------------------------ build ---
# Ours as it ships (the dist profile: fat LTO, as Electric builds its
# release); the smoke run takes the release build CI has already made.
if [[ -z "$PROFILE" ]]; then
  PROFILE=dist
  [[ "$MODE" == smoke ]] && PROFILE=release
fi
echo "== building this server ($PROFILE profile) and the load tool"
cargo build --profile "$PROFILE" --locked --quiet --bin durable-streams-server
OURS="$REPO_ROOT/target/$PROFILE/durable-streams-server"
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
ALL="ours-memory ours-hyper-memory ours-tls-memory ours-tls-hyper-memory ours-file-durable ours-acid
  node-memory ds030-memory ds030-file-durable ds030-acid electric-memory electric-wal"
[[ -n "$ELECTRIC_SRC" ]] && ALL="$ALL electric-src-memory electric-src-wal"

DS030="$CACHE/ds030/bin/durable-streams-server"
ELECTRIC="$CACHE/electric/bin/durable-streams-server"
ELECTRIC_SRC_BIN="$CACHE/electric-src-target/release/durable-streams-server"
NODE_DIR="$CACHE/node"
if wants_prefix ds030 && [[ ! -x "$DS030" ]]; then
  echo "== installing durable-streams-server 0.3.0"
  cargo install --locked --quiet --version 0.3.0 durable-streams-server --root "$CACHE/ds030"
fi
if wants_prefix electric && [[ ! -x "$ELECTRIC" ]]; then
  echo "== installing durable-streams 0.1.5"
  cargo install --locked --quiet --version 0.1.5 durable-streams --root "$CACHE/electric"
fi
if [[ -n "$ELECTRIC_SRC" ]] && wants_prefix electric-src; then
  package="$ELECTRIC_SRC"
  [[ -f "$package/packages/durable-streams-rust/Cargo.toml" ]] && package="$package/packages/durable-streams-rust"
  [[ -f "$package/Cargo.toml" ]] || { echo "--electric-src $ELECTRIC_SRC: no Cargo.toml there nor in packages/durable-streams-rust" >&2; exit 2; }
  echo "== building Electric's current server from $package"
  (cd "$package" && cargo build --release --locked --quiet --target-dir "$CACHE/electric-src-target")
  echo "   commit: $(git -C "$package" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")"
fi
# TLS for the ours-tls-* labels: a throwaway CA and a certificate for 127.0.0.1.
TLS_DIR="$CACHE/tls"
if wants_prefix ours-tls && [[ ! -f "$TLS_DIR/tls.crt" ]]; then
  mkdir -p "$TLS_DIR"
  (cd "$TLS_DIR" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -days 3650 -subj "/CN=compare CA" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
      -subj "/CN=127.0.0.1" 2>/dev/null &&
    printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" >ext.cnf &&
    openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 3650 \
      -extfile ext.cnf 2>/dev/null &&
    openssl pkcs8 -topk8 -nocrypt -in leaf.key -out tls.key)
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

# start_server LABEL [LONG_POLL_MS]: starts it on a free port with a fresh
# data directory (long-polls wait LONG_POLL_MS, default 1000); sets PID, URL,
# BASE and TLS_ARGS.
start_server() {
  local label="$1" long_poll_ms="${2:-1000}" port data
  port="$("$LOAD" free-port)"
  data="$OUT/data-$label"
  rm -rf "$data" && mkdir -p "$data"
  URL="http://127.0.0.1:$port"
  BASE="/v1/stream"
  TLS_ARGS=()
  local log="$OUT/$label.log"
  # Ours and 0.3.0 read config/*.toml from the working directory: start
  # them in the empty data directory so built-in defaults apply.
  local ds_env=(
    "DS_SERVER__BIND_ADDRESS=127.0.0.1:$port"
    "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS=$((long_poll_ms / 1000))"
    "DS_LIMITS__MAX_MEMORY_BYTES=4294967296"
    "DS_LIMITS__MAX_STREAM_BYTES=4294967296"
    "RUST_LOG=warn"
  )
  case "$label" in
    ours-hyper-*) ds_env+=("DS_TRANSPORT__HTTP__ENGINE=hyper") ;;
    ours-tls-hyper-*) ds_env+=("DS_TRANSPORT__HTTP__ENGINE=hyper") ;;
  esac
  case "$label" in
    ours-tls-*)
      ds_env+=("DS_TRANSPORT__MODE=tls" "DS_TRANSPORT__TLS__CERT_PATH=$TLS_DIR/tls.crt"
        "DS_TRANSPORT__TLS__KEY_PATH=$TLS_DIR/tls.key")
      TLS_ARGS=(--ca "$TLS_DIR/ca.crt")
      ;;
  esac
  case "$label" in
    ours-* | ds030-*)
      local bin="$OURS" mode="${label##*-}"
      [[ "$label" == ds030-* ]] && bin="$DS030"
      [[ "$label" == *-file-durable ]] && mode=file-durable
      if [[ "$mode" == memory ]]; then
        (cd "$data" && exec env "${ds_env[@]}" DS_STORAGE__MODE=memory "$bin") >"$log" 2>&1 &
      else
        (cd "$data" && exec env "${ds_env[@]}" DS_STORAGE__MODE="$mode" \
          DS_STORAGE__DATA_DIR="$data/store" "$bin") >"$log" 2>&1 &
      fi
      ;;
    node-memory)
      (cd "$data" && exec node "$REPO_ROOT/scripts/compare/node-server.mjs" "$NODE_DIR" "$port" "$long_poll_ms") >"$log" 2>&1 &
      ;;
    electric-*)
      BASE="/"
      local bin="$ELECTRIC"
      [[ "$label" == electric-src-* ]] && bin="$ELECTRIC_SRC_BIN"
      (cd "$data" && exec "$bin" --host 127.0.0.1 --port "$port" --data-dir "$data/store" \
        --long-poll-timeout-ms "$long_poll_ms" --durability "${label##*-}") >"$log" 2>&1 &
      ;;
  esac
  PID=$!
  # wait-ready only needs an answer; over TLS the plain probe gets a reset,
  # so wait for the port with a TLS-aware request instead.
  if [[ "$label" == ours-tls-* ]]; then
    local deadline=$((SECONDS + 60))
    until curl -s -o /dev/null --cacert "$TLS_DIR/ca.crt" "https://127.0.0.1:$port/healthz"; do
      ((SECONDS < deadline)) || { echo "$label did not start" >&2; exit 1; }
      sleep 0.2
    done
    URL="https://127.0.0.1:$port"
  else
    "$LOAD" wait-ready --url "$URL" --seconds 60
  fi
  # Ours binds before recovery ends (/readyz 503 meanwhile): wait for it,
  # so the first request does not meet a store still opening.
  if [[ "$label" == ours-* ]]; then
    local ready_deadline=$((SECONDS + 60))
    until curl -sf -o /dev/null ${TLS_ARGS[@]:+--cacert "$TLS_DIR/ca.crt"} "$URL/readyz"; do
      ((SECONDS < ready_deadline)) || { echo "$label did not become ready" >&2; exit 1; }
      sleep 0.1
    done
  fi
}

peer_of() {
  case "$1" in
    ours-hyper-memory) echo ours-memory ;;
    ours-tls-hyper-memory) echo ours-tls-memory ;;
    ours-*) echo "$1" ;;
    *-memory) echo ours-memory ;;
    ds030-file-durable | electric-wal | electric-src-wal) echo ours-file-durable ;;
    ds030-acid) echo ours-acid ;;
  esac
}

run() { # run LABEL COMMAND [options...]
  local label="$1" command="$2"
  shift 2
  "$LOAD" "$command" --url "$URL" --base "$BASE" --label "$label" --peer "$(peer_of "$label")" \
    --out "$RESULTS" "${TLS_ARGS[@]}" "$@" | head -n 1
}

# SSE fan-out at scale, each shape on a fresh server.
run_fanout() { # run_fanout LABEL
  start_server "$1"
  run "$1" fanout --pid "$PID" --streams 1 --subscribers "$FAN_ONE" --rate 50 --seconds "$FAN_SECS"
  stop_server
  start_server "$1"
  run "$1" fanout --pid "$PID" --streams "$FAN_STREAMS" --subscribers "$FAN_EACH" --rate 50 \
    --seconds "$FAN_SECS"
  stop_server
}

for label in $ALL; do
  wanted "$label" || continue
  echo
  echo "== $label"
  if [[ -n "$APPENDS_ONLY" ]]; then
    start_server "$label"
    run "$label" append --streams 1 --connections 32 --seconds "$SECS" --size 64
    run "$label" append --streams 100 --connections 100 --seconds "$SECS" --size 64
    stop_server
    continue
  fi
  if [[ -n "$FANOUT_ONLY" ]]; then
    [[ "$label" == ours-tls-* ]] || run_fanout "$label"
    continue
  fi
  # Idle connections: each kind on a fresh server, long-polls that outlast
  # the measurement.
  start_server "$label" 300000
  run "$label" rss-sse --pid "$PID" --connections "$IDLE"
  stop_server
  start_server "$label" 300000
  run "$label" rss-long-poll --pid "$PID" --connections "$IDLE"
  stop_server
  # TLS servers are measured for what TLS adds per connection only.
  [[ "$label" == ours-tls-* ]] && continue
  # Memory first, on a fresh server: what is measured is what the workload added.
  start_server "$label"
  # (Per-message memory matters for the memory mode; durable ones get fewer.)
  msgs="$RSS_MSGS"
  [[ "$label" == *memory ]] || msgs=$((RSS_MSGS / 10))
  run "$label" rss-streams --pid "$PID" --streams 100 --messages "$msgs" --size 64
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
  run_fanout "$label"
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
