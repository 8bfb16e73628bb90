#!/usr/bin/env bash
# Runs the official Durable Streams conformance suite
# (@durable-streams/server-conformance-tests, through vitest) against this
# server, once per storage mode.
#
# Usage: tests/conformance/run.sh
#
# Environment knobs (all optional):
#   CONFORMANCE_SERVER_BIN                      server binary (default: <repo>/target/release/durable-streams-server;
#                               built with `cargo build --release --locked` when missing)
#   CONFORMANCE_MODES        space-separated storage modes (default: the five backends, three replicas and
#                               access control: "memory file-fast file-durable acid postgres postgres-replicas
#                               memory+auth"); a mode ending in "+auth" runs that storage
#                               mode with auth.mode = "token" (an API-key file with no keys) and an anonymous
#                               grant of every operation on every path, so access control sits in the path
#                               of every request;
#                               the file and acid modes get DS_STORAGE__DATA_DIR=<fresh temp dir>; postgres gets a
#                               throw-away PostgreSQL cluster (scripts/pg-test-cluster.sh: initdb + pg_ctl on a free
#                               port, as an unprivileged user when run as root) and DS_STORAGE__POSTGRES__URL;
#                               postgres-replicas runs three servers on one such cluster behind nginx balancing
#                               round robin (every request may land on another replica; needs nginx)
#   CONFORMANCE_MIN_PASSED   least number of passed tests per mode (default: 332)
#   CONFORMANCE_TIMEOUT_SECS wall-clock limit for one mode's vitest run (default: 1200)
#   CONFORMANCE_HEALTH_PATH              path probed until the server is up (default: /healthz)
#   CONFORMANCE_HEALTH_STATUS            HTTP status that counts as up (default: 200; "any" accepts
#                               any HTTP answer, for servers without a health endpoint)
#   CONFORMANCE_HEALTH_TIMEOUT_SECS      how long to wait for the server to come up (default: 30)
#   CONFORMANCE_VITEST_ARGS  extra arguments for `vitest run`, split on spaces
#                               (e.g. "-t Caching" to run a subset while debugging)
#   SUBSCRIPTIONS=1             also run the opt-in subscription tests; the server then runs with
#                               subscriptions.enabled and subscriptions.allow_loopback_http (the suite's
#                               webhook receivers listen on 127.0.0.1), and CONFORMANCE_MIN_PASSED
#                               defaults to 338
#
# Output: the vitest console report per mode, one line per mode
#   conformance[<mode>]: N passed, M failed, K skipped
# and, as the very last line, the totals over all modes:
#   conformance: N passed, M failed
# Exits non-zero if any mode fails. JSON reports and server logs go to
# tests/conformance/results/.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
RESULTS_DIR="$SCRIPT_DIR/results"

MODES="${CONFORMANCE_MODES:-memory file-fast file-durable acid postgres postgres-replicas memory+auth}"
if [[ "${SUBSCRIPTIONS:-}" == "1" ]]; then
  MIN_PASSED="${CONFORMANCE_MIN_PASSED:-338}"
else
  MIN_PASSED="${CONFORMANCE_MIN_PASSED:-332}"
fi
VITEST_TIMEOUT_SECS="${CONFORMANCE_TIMEOUT_SECS:-1200}"
HEALTH_PATH="${CONFORMANCE_HEALTH_PATH:-/healthz}"
HEALTH_STATUS="${CONFORMANCE_HEALTH_STATUS:-200}"
HEALTH_TIMEOUT_SECS="${CONFORMANCE_HEALTH_TIMEOUT_SECS:-30}"
LONG_POLL_TIMEOUT_MS=1000
read -r -a EXTRA_VITEST_ARGS <<<"${CONFORMANCE_VITEST_ARGS:-}"
# No ANSI colours in logs when the output is not a terminal (CI).
[[ -t 1 ]] || export NO_COLOR=1

log() { printf '[conformance] %s\n' "$*" >&2; }
die() { printf '[conformance] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup ---
SERVER_PID=""
REPLICAS_URL=""
# The other replicas and nginx of the postgres-replicas mode.
EXTRA_PIDS=()
TEMP_DIRS=()

stop_extras() {
  local pid
  for pid in "${EXTRA_PIDS[@]+"${EXTRA_PIDS[@]}"}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  EXTRA_PIDS=()
}

stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      kill "$SERVER_PID" 2>/dev/null || true
      local i
      for ((i = 0; i < 100; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$SERVER_PID" 2>/dev/null; then
        log "server (pid $SERVER_PID) did not stop on SIGTERM within 10 s; sending SIGKILL"
        kill -9 "$SERVER_PID" 2>/dev/null || true
      fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}

PG_CLUSTER_DIR=""

cleanup() {
  stop_server
  stop_extras
  if [[ -n "$PG_CLUSTER_DIR" ]]; then
    "$REPO_ROOT/scripts/pg-test-cluster.sh" stop "$PG_CLUSTER_DIR" || true
  fi
  local d
  for d in "${TEMP_DIRS[@]+"${TEMP_DIRS[@]}"}"; do
    rm -rf -- "$d"
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ tools ---
as_root() { [[ "$(id -u)" == "0" ]]; }

missing_pkgs=()
command -v node >/dev/null 2>&1 || missing_pkgs+=(nodejs)
{ command -v npm >/dev/null 2>&1 && command -v npx >/dev/null 2>&1; } || missing_pkgs+=(npm)
command -v curl >/dev/null 2>&1 || missing_pkgs+=(curl)
if ((${#missing_pkgs[@]} > 0)); then
  if as_root && command -v apt-get >/dev/null 2>&1; then
    log "installing missing tools: ${missing_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing_pkgs[@]}"
  fi
fi
for tool in node npm curl; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "'$tool' is required but not installed (and could not be installed: need root and apt-get)"
done

# vitest 4 / vite 8 need Node.js >= 20.19.
node_version="$(node -p 'process.versions.node')"
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number)
  process.exit(maj > 20 || (maj === 20 && min >= 19) ? 0 : 1)
' || die "Node.js >= 20.19 is required by vitest 4 (found $node_version)"
log "node $node_version, npm $(npm --version)"

# ------------------------------------------------------- npm dependencies ---
lock_hash="$(sha256sum "$SCRIPT_DIR/package-lock.json" | cut -d' ' -f1)"
stamp="$SCRIPT_DIR/node_modules/.ds-conformance-lock.sha256"
if [[ ! -x "$SCRIPT_DIR/node_modules/.bin/vitest" || ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  log "installing npm dependencies (npm ci)"
  (cd "$SCRIPT_DIR" && npm ci --no-audit --no-fund)
  printf '%s\n' "$lock_hash" >"$stamp"
else
  log "npm dependencies up to date"
fi

# ---------------------------------------------------------- server binary ---
CONFORMANCE_SERVER_BIN="${CONFORMANCE_SERVER_BIN:-$REPO_ROOT/target/release/durable-streams-server}"
[[ "$CONFORMANCE_SERVER_BIN" == /* ]] || CONFORMANCE_SERVER_BIN="$PWD/$CONFORMANCE_SERVER_BIN"
if [[ ! -x "$CONFORMANCE_SERVER_BIN" ]]; then
  log "server binary $CONFORMANCE_SERVER_BIN not found; building it (cargo build --release --locked)"
  (cd "$REPO_ROOT" && cargo build --release --locked)
fi
[[ -x "$CONFORMANCE_SERVER_BIN" ]] || die "server binary $CONFORMANCE_SERVER_BIN does not exist or is not executable"
log "server binary: $CONFORMANCE_SERVER_BIN"

# ---------------------------------------------------------------- helpers ---
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  # Fallback: probe random high ports until one refuses connections.
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "could not find a free TCP port"
}

print_log_tail() {
  local file="$1"
  log "---- last 60 lines of server log ($file) ----"
  tail -n 60 "$file" >&2 || true
  log "---- end of server log ----"
}

# wait_for_server PORT LOGFILE -> 0 when up, 1 otherwise
wait_for_server() {
  local port="$1" logfile="$2" deadline code
  deadline=$((SECONDS + HEALTH_TIMEOUT_SECS))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      local status=0
      wait "$SERVER_PID" 2>/dev/null || status=$?
      SERVER_PID=""
      log "server exited during startup (exit status $status)"
      print_log_tail "$logfile"
      return 1
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port$HEALTH_PATH" || true)"
    if [[ -n "$code" && "$code" != "000" ]]; then
      if [[ "$HEALTH_STATUS" == "any" || "$code" == "$HEALTH_STATUS" ]]; then
        return 0
      fi
    fi
    sleep 0.2
  done
  log "server did not answer $HEALTH_STATUS on GET $HEALTH_PATH within ${HEALTH_TIMEOUT_SECS}s (last status: ${code:-none})"
  print_log_tail "$logfile"
  return 1
}

# start_replicas LOGFILE ENV... -> sets REPLICAS_URL to the URL of nginx balancing round robin over three
# servers started with ENV (their logs: LOGFILE.1 .. LOGFILE.3); the first server is SERVER_PID,
# the others and nginx go to EXTRA_PIDS.
start_replicas() {
  local logfile="$1"
  shift
  local nginx_bin
  nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
  [[ -x "$nginx_bin" ]] || { log "nginx is not installed (apt-get install nginx-light)"; return 1; }
  local -a ports=()
  local i replica_port
  for i in 1 2 3; do
    replica_port="$(free_port)"
    env "DS_SERVER__BIND_ADDRESS=127.0.0.1:$replica_port" "$@" \
      "$CONFORMANCE_SERVER_BIN" >"$logfile.$i" 2>&1 &
    if ((i == 1)); then SERVER_PID=$!; else EXTRA_PIDS+=("$!"); fi
    ports+=("$replica_port")
    log "started replica $i (pid $!) on port $replica_port, log: $logfile.$i"
  done
  for i in 0 1 2; do
    wait_for_server "${ports[$i]}" "$logfile.$((i + 1))" || return 1
  done
  local prefix nginx_port
  prefix="$(mktemp -d -t ds-conformance-nginx-XXXXXX)"
  chmod 755 "$prefix"
  TEMP_DIRS+=("$prefix")
  nginx_port="$(free_port)"
  cat >"$prefix/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log stderr warn;
pid $prefix/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $prefix/body;
  proxy_temp_path $prefix/proxy;
  fastcgi_temp_path $prefix/fastcgi;
  uwsgi_temp_path $prefix/uwsgi;
  scgi_temp_path $prefix/scgi;
  upstream replicas {
    server 127.0.0.1:${ports[0]};
    server 127.0.0.1:${ports[1]};
    server 127.0.0.1:${ports[2]};
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    client_max_body_size 0;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      proxy_next_upstream off;
    }
  }
}
NGINX
  "$nginx_bin" -p "$prefix/" -c "$prefix/nginx.conf" >"$logfile.nginx" 2>&1 &
  EXTRA_PIDS+=("$!")
  local deadline=$((SECONDS + HEALTH_TIMEOUT_SECS))
  until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$nginx_port$HEALTH_PATH"; do
    ((SECONDS < deadline)) || { log "nginx did not start"; tail -n 20 "$logfile.nginx" >&2; return 1; }
    sleep 0.2
  done
  REPLICAS_URL="http://127.0.0.1:$nginx_port"
}

# report_counts FILE -> "passed failed skipped failed_suites success"
report_counts() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))
    const n = (k) => Number(r[k] ?? 0)
    console.log([n("numPassedTests"), n("numFailedTests"),
                 n("numPendingTests") + n("numTodoTests"),
                 n("numFailedTestSuites"), r.success === true ? 1 : 0].join(" "))
  ' "$1"
}

# ------------------------------------------------------------------- main ---
mkdir -p "$RESULTS_DIR"
TOTAL_PASSED=0
TOTAL_FAILED=0
SUMMARY_LINES=()
FAILED_MODES=()

run_mode() {
  local mode="$1"
  local logfile="$RESULTS_DIR/server-$mode.log"
  local report="$RESULTS_DIR/$mode.json"
  local port data_dir="" vitest_status=0
  rm -f -- "$report"

  port="$(free_port)"
  local storage="${mode%+auth}"
  [[ "$storage" == "postgres-replicas" ]] && storage=postgres
  local -a server_args=()
  if [[ "$mode" == *+auth ]]; then
    local auth_dir
    auth_dir="$(mktemp -d -t ds-conformance-auth-XXXXXX)"
    TEMP_DIRS+=("$auth_dir")
    printf 'keys = []\n' >"$auth_dir/api-keys.toml"
    cat >"$auth_dir/auth.toml" <<TOML
[auth]
mode = "token"
api_keys_path = "$auth_dir/api-keys.toml"
anonymous = [{ paths = ["/**"], ops = ["read", "append", "create", "delete", "subscribe"] }]
TOML
    server_args+=(--config "$auth_dir/auth.toml")
  fi
  local -a server_env=(
    "DS_STORAGE__MODE=$storage"
    "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS=$((LONG_POLL_TIMEOUT_MS / 1000))"
    "RUST_LOG=${RUST_LOG:-warn}"
  )
  if [[ "${SUBSCRIPTIONS:-}" == "1" ]]; then
    server_env+=(
      "DS_SUBSCRIPTIONS__ENABLED=true"
      "DS_SUBSCRIPTIONS__ALLOW_LOOPBACK_HTTP=true"
    )
  fi
  if [[ "$storage" == "postgres" ]]; then
    local pg_parent pg_url
    pg_parent="$(mktemp -d -t ds-conformance-pg-XXXXXX)"
    chmod 711 "$pg_parent"
    TEMP_DIRS+=("$pg_parent")
    PG_CLUSTER_DIR="$pg_parent/cluster"
    if ! pg_url="$(PG_TEST_WATCH_PID=$$ "$REPO_ROOT/scripts/pg-test-cluster.sh" start "$PG_CLUSTER_DIR" | tail -n 1)"; then
      SUMMARY_LINES+=("conformance[$mode]: 0 passed, 0 failed, 0 skipped (PostgreSQL did not start)")
      echo "${SUMMARY_LINES[-1]}"
      FAILED_MODES+=("$mode")
      return 0
    fi
    log "PostgreSQL test cluster: $pg_url"
    server_env+=("DS_STORAGE__POSTGRES__URL=$pg_url?sslmode=disable")
  elif [[ "$storage" != "memory" ]]; then
    data_dir="$(mktemp -d -t ds-conformance-XXXXXX)"
    TEMP_DIRS+=("$data_dir")
    server_env+=("DS_STORAGE__DATA_DIR=$data_dir")
  fi

  echo
  echo "==== conformance: storage mode '$mode' (127.0.0.1:$port) ===="
  local url="http://127.0.0.1:$port"
  if [[ "$mode" == "postgres-replicas" ]]; then
    if start_replicas "$logfile" "${server_env[@]}"; then
      url="$REPLICAS_URL"
    else
      stop_server
      stop_extras
      SUMMARY_LINES+=("conformance[$mode]: 0 passed, 0 failed, 0 skipped (replicas did not start)")
      echo "${SUMMARY_LINES[-1]}"
      FAILED_MODES+=("$mode")
      return 0
    fi
  else
    env "DS_SERVER__BIND_ADDRESS=127.0.0.1:$port" "${server_env[@]}" \
      "$CONFORMANCE_SERVER_BIN" "${server_args[@]+"${server_args[@]}"}" >"$logfile" 2>&1 &
    SERVER_PID=$!
    log "started server pid $SERVER_PID, log: $logfile"
    if ! wait_for_server "$port" "$logfile"; then
      stop_server
      SUMMARY_LINES+=("conformance[$mode]: 0 passed, 0 failed, 0 skipped (server did not start)")
      echo "${SUMMARY_LINES[-1]}"
      FAILED_MODES+=("$mode")
      return 0
    fi
  fi
  log "server is up at $url"

  (
    cd "$SCRIPT_DIR"
    CONFORMANCE_TEST_URL="$url" \
      LONG_POLL_TIMEOUT_MS="$LONG_POLL_TIMEOUT_MS" \
      timeout --signal=TERM --kill-after=15 "$VITEST_TIMEOUT_SECS" \
      ./node_modules/.bin/vitest run \
      --reporter=default --reporter=json --outputFile.json="$report" \
      "${EXTRA_VITEST_ARGS[@]+"${EXTRA_VITEST_ARGS[@]}"}"
  ) || vitest_status=$?

  local server_alive=1 pid
  for pid in "$SERVER_PID" "${EXTRA_PIDS[@]+"${EXTRA_PIDS[@]}"}"; do
    kill -0 "$pid" 2>/dev/null || server_alive=0
  done
  stop_server
  stop_extras

  local passed=0 failed=0 skipped=0 failed_suites=0 success=0 reason=""
  local counts
  if [[ -s "$report" ]]; then
    if counts="$(report_counts "$report")"; then
      read -r passed failed skipped failed_suites success <<<"$counts"
    else
      reason="could not read the JSON report $report"
    fi
  else
    reason="no JSON report written"
  fi
  if [[ -z "$reason" ]]; then
    if ((vitest_status == 124 || vitest_status == 137)); then
      reason="vitest timed out after ${VITEST_TIMEOUT_SECS}s"
    elif ((failed > 0)); then
      reason="$failed test(s) failed"
    elif ((failed_suites > 0)); then
      reason="$failed_suites test suite(s) failed"
    elif ((passed < MIN_PASSED)); then
      reason="only $passed passed, at least $MIN_PASSED required (CONFORMANCE_MIN_PASSED)"
    elif ((vitest_status != 0)); then
      reason="vitest exited with status $vitest_status"
    fi
  fi
  if ((!server_alive)); then
    reason="${reason:+$reason; }server process died during the run"
  fi

  TOTAL_PASSED=$((TOTAL_PASSED + passed))
  TOTAL_FAILED=$((TOTAL_FAILED + failed))
  local line="conformance[$mode]: $passed passed, $failed failed, $skipped skipped"
  if [[ -n "$reason" ]]; then
    FAILED_MODES+=("$mode")
    print_log_tail "$logfile"
    line="$line (FAIL: $reason)"
  fi
  SUMMARY_LINES+=("$line")
  echo "$line"
}

read -r -a MODE_LIST <<<"$MODES"
((${#MODE_LIST[@]} > 0)) || die "CONFORMANCE_MODES is empty"
for mode in "${MODE_LIST[@]}"; do
  [[ "$mode" =~ ^[A-Za-z0-9_-]+(\+auth)?$ ]] || die "invalid storage mode name: '$mode'"
  run_mode "$mode"
done

echo
echo "==== conformance summary ===="
for line in "${SUMMARY_LINES[@]}"; do
  echo "$line"
done
if ((${#FAILED_MODES[@]} > 0)); then
  echo "conformance FAILED for mode(s): ${FAILED_MODES[*]}"
fi
echo "conformance: $TOTAL_PASSED passed, $TOTAL_FAILED failed"
((${#FAILED_MODES[@]} == 0))
