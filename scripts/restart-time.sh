#!/usr/bin/env bash
# Time from start to `/readyz` 200 for a storage mode, empty and with data
# stored: after a clean stop (SIGTERM) and after `kill -9`.
#
#   scripts/restart-time.sh [--bin PATH] [--mode acid] [--gib 2] [--streams 16]
#
# Fills the store with 1 MiB appends spread over --streams streams, then
# restarts it three times each way and prints the times in milliseconds.
set -euo pipefail

BIN="target/release/durable-streams-server"
MODE=acid
GIB=2
STREAMS=16
while (($# > 0)); do
  case "$1" in
    --bin) BIN="$2"; shift ;;
    --mode) MODE="$2"; shift ;;
    --gib) GIB="$2"; shift ;;
    --streams) STREAMS="$2"; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
PID=""
cleanup() {
  [[ -n "$PID" ]] && kill -KILL "$PID" 2>/dev/null || true
  [[ -n "${KEEP_LOG:-}" ]] && cp "$WORK/server.log" "$KEEP_LOG"
  rm -rf "$WORK"
}
trap cleanup EXIT

ELAPSED=0
start() { # sets PID and ELAPSED (milliseconds to /readyz 200)
  local begin now
  begin="$(date +%s%N)"
  env DS_SERVER__BIND_ADDRESS="127.0.0.1:$PORT" DS_STORAGE__MODE="$MODE" \
    DS_STORAGE__DATA_DIR="$WORK/store" DS_LIMITS__MAX_STREAM_BYTES=$((64 << 30)) \
    DS_LIMITS__MAX_MEMORY_BYTES=$((8 << 30)) "$BIN" >>"$WORK/server.log" 2>&1 &
  PID=$!
  until curl -sf -o /dev/null "$URL/readyz"; do
    kill -0 "$PID" 2>/dev/null || { echo "server exited; log:" >&2; tail -n 20 "$WORK/server.log" >&2; exit 1; }
    sleep 0.02
  done
  now="$(date +%s%N)"
  ELAPSED=$(((now - begin) / 1000000))
}

stop() { # stop SIGNAL
  kill "-$1" "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

TIMES=""
times() { # times SIGNAL: sets TIMES, of three restarts after a stop by SIGNAL
  local out=()
  for _ in 1 2 3; do
    stop "$1"
    start
    out+=("$ELAPSED")
  done
  TIMES="${out[*]}"
}

report() { # report WHAT: restart times after SIGTERM and after kill -9
  local term
  times TERM
  term="$TIMES"
  times KILL
  echo "$1: after SIGTERM $term ms; after kill -9 $TIMES ms"
}

start
report empty
head -c $((1 << 20)) /dev/urandom >"$WORK/mib"
for s in $(seq 1 "$STREAMS"); do
  curl -sf -o /dev/null -X PUT -H 'content-type: application/octet-stream' "$URL/v1/stream/r$s"
done
total=$((GIB * 1024))
for i in $(seq 1 "$total"); do
  curl -sf -o /dev/null -X POST -H 'content-type: application/octet-stream' \
    --data-binary @"$WORK/mib" "$URL/v1/stream/r$(((i % STREAMS) + 1))"
done
echo "stored: $(du -sh "$WORK/store" | cut -f1) in $STREAMS streams"
report "$GIB GiB"
