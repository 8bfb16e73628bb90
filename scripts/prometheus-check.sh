#!/usr/bin/env bash
# The server as a real Prometheus sees it:
#   1. installs Debian's `prometheus` package (prometheus + promtool) when
#      missing and running as root; jq and curl likewise;
#   2. starts the release binary on loopback (storage file-durable, metrics
#      on a separate listener), and Prometheus with a generated config
#      scraping it every second;
#   3. sends some traffic, then asserts through Prometheus's HTTP API that
#      up == 1 and that durable_streams_http_requests_total and the storage
#      commit histogram have samples;
#   4. runs `promtool check metrics` on a scrape (must print nothing);
#   5. checks that every metric of scripts/verify-deploy/metrics-contract.txt
#      (what the dashboards and alerts may use) is in the scrape with its
#      type, and that the scrape has no durable_streams_* family the contract
#      lacks. Families of features this run leaves off (TLS: tests/api/tls.rs;
#      webhook and subscription: tests/api/subscriptions.rs; access control:
#      tests/cli/auth.rs) and the series
#      Prometheus/kubelet add are skipped.
# Stops what it started, by PID, on any exit. Exits non-zero on failure.
#
# SERVER_BIN overrides the binary (default target/release/durable-streams-server,
# built if missing).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

fail() {
  echo "prometheus-check: FAILED: $*" >&2
  exit 1
}

# ------------------------------------------------------------------ tools ---
need=()
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]} > 0)); then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
  else
    fail "missing ${need[*]} and not root: install them first (Debian: apt-get install ${need[*]})"
  fi
fi
command -v prometheus >/dev/null 2>&1 || fail "the prometheus package installed no prometheus binary"
command -v promtool >/dev/null 2>&1 || fail "the prometheus package installed no promtool binary"
echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"

SERVER_BIN="${SERVER_BIN:-target/release/durable-streams-server}"
if [[ ! -x "$SERVER_BIN" ]]; then
  cargo build --release --locked
fi

# ------------------------------------------------------------ processes ---
WORK="$(mktemp -d)"
SERVER_PID=""
PROM_PID=""
cleanup() {
  local status=$?
  for pid in "$PROM_PID" "$SERVER_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "$PROM_PID" "$SERVER_PID"; do
    if [[ -n "$pid" ]]; then
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if ((status != 0)); then
    echo "---- server log (tail) ----" >&2
    tail -n 40 "$WORK/server.log" >&2 2>/dev/null || true
    echo "---- prometheus log (tail) ----" >&2
    tail -n 40 "$WORK/prometheus.log" >&2 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

# The server picks its own ports (port 0) and logs them: no port races.
DS_SERVER__BIND_ADDRESS=127.0.0.1:0 \
  DS_OBSERVABILITY__METRICS__BIND_ADDRESS=127.0.0.1:0 \
  DS_OBSERVABILITY__LOG_FORMAT=json \
  DS_STORAGE__MODE=file-durable \
  DS_STORAGE__DATA_DIR="$WORK/data" \
  DS_SERVER__SHUTDOWN_DELAY_SECS=0 \
  "$SERVER_BIN" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

running() { # pid: alive and not a zombie
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != "Z" ]]
}
logged_address() { # message: the address of the first JSON log line with it
  jq -R -r --arg m "$1" 'fromjson? | select(.message == $m) | .address' "$WORK/server.log" 2>/dev/null |
    head -n 1 || true
}
API="" METRICS=""
for _ in $(seq 1 300); do
  running "$SERVER_PID" || fail "the server exited at start"
  API="$(logged_address listening)"
  METRICS="$(logged_address "metrics listening")"
  if [[ -n "$API" && -n "$METRICS" ]]; then break; fi
  sleep 0.1
done
[[ -n "$API" && -n "$METRICS" ]] || fail "the server did not report its listeners"
echo "server: api on $API, metrics on $METRICS (pid $SERVER_PID)"

cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: durable-streams
    metrics_path: /metrics
    static_configs:
      - targets: ['$METRICS']
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null || fail "promtool rejects the generated config"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PROM=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  if port_in_use "$port"; then continue; fi
  prometheus \
    --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$port" \
    --log.level=warn >"$WORK/prometheus.log" 2>&1 &
  PROM_PID=$!
  # Up to a minute: Prometheus starts slowly on a loaded machine.
  for _ in $(seq 1 300); do
    running "$PROM_PID" || break
    if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
      PROM="127.0.0.1:$port"
      break 2
    fi
    sleep 0.2
  done
  kill -TERM "$PROM_PID" 2>/dev/null || true
  wait "$PROM_PID" 2>/dev/null || true
  PROM_PID=""
done
[[ -n "$PROM" ]] || fail "Prometheus did not become ready"
echo "prometheus: on $PROM (pid $PROM_PID)"

# ---------------------------------------------------------------- traffic ---
stream="http://$API/v1/stream/prometheus-check"
code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'content-type: text/plain' "$stream")"
[[ "$code" == "201" ]] || fail "PUT answered $code"
for i in $(seq 1 50); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: text/plain' --data "event $i" "$stream")"
  [[ "$code" == "204" ]] || fail "POST $i answered $code"
done
curl -fsS "$stream" >/dev/null || fail "GET of the stream failed"
curl -s -o /dev/null "http://$API/no/such/route"

# ---------------------------------------------------------------- queries ---
query() { # expr -> first sample value, or empty
  curl -fsS "http://$PROM/api/v1/query" --data-urlencode "query=$1" |
    jq -r 'select(.status == "success") | .data.result[0].value[1] // empty'
}
expect() { # description expr jq-condition-on-value
  local value=""
  for _ in $(seq 1 60); do
    value="$(query "$2" || true)"
    if [[ -n "$value" ]] && jq -en --argjson v "$value" "$3" >/dev/null 2>&1; then
      echo "ok: $1 ($2 = $value)"
      return 0
    fi
    sleep 0.5
  done
  fail "$1: $2 = '${value}', expected $3"
}
expect "the target is up" 'up{job="durable-streams"}' '$v == 1'
expect "requests are counted" \
  'sum(durable_streams_http_requests_total{job="durable-streams",route="/v1/stream/{*name}"})' '$v >= 52'
expect "appends are counted" 'durable_streams_appends_total{job="durable-streams"}' '$v >= 50'
expect "the commit histogram has samples" \
  'sum(durable_streams_storage_commit_duration_seconds_count{job="durable-streams",backend="file-durable"})' '$v >= 1'
expect "the commit histogram has buckets" \
  'count(durable_streams_storage_commit_duration_seconds_bucket{job="durable-streams",backend="file-durable"})' '$v >= 19'
expect "build info is exposed" 'durable_streams_build_info{job="durable-streams"}' '$v == 1'

# ------------------------------------------------------------------- lint ---
curl -fsS "http://$METRICS/metrics" >"$WORK/scrape.txt" || fail "scraping $METRICS failed"
if ! lint="$(promtool check metrics <"$WORK/scrape.txt" 2>&1)" || [[ -n "$lint" ]]; then
  echo "$lint" >&2
  fail "promtool check metrics is not clean"
fi
echo "ok: promtool check metrics is clean ($(grep -c '^# TYPE' "$WORK/scrape.txt") metric families)"

# --------------------------------------------------------------- contract ---
CONTRACT=scripts/verify-deploy/metrics-contract.txt
grep '^# TYPE durable_streams_' "$WORK/scrape.txt" | awk '{print $3, $4}' | sort >"$WORK/exported.txt"
grep -v '^#' "$CONTRACT" | awk 'NF && $1 ~ /^durable_streams_/ && $1 !~ /^durable_streams_(tls|webhook|subscription|auth)_/ {print $1, $2}' \
  | sort >"$WORK/contract.txt"
missing="$(comm -13 "$WORK/exported.txt" "$WORK/contract.txt")"
extra="$(comm -23 "$WORK/exported.txt" "$WORK/contract.txt")"
[[ -z "$missing" ]] || fail "in $CONTRACT but not exported (or of another type): $missing"
[[ -z "$extra" ]] || fail "exported but not in $CONTRACT (add it there): $extra"
echo "ok: the scrape matches $CONTRACT ($(wc -l <"$WORK/contract.txt") families)"

echo "prometheus-check: passed"
