#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for tests: initdb + pg_ctl on a free
# loopback port, in a directory of its own, as an unprivileged user.
#
# Usage:
#   scripts/pg-test-cluster.sh start DIR   initialise (when DIR has no cluster yet) and start;
#                                          prints the connection URL as the last line of stdout
#   scripts/pg-test-cluster.sh stop DIR    stop it (fast shutdown); DIR is kept
#   scripts/pg-test-cluster.sh restart DIR start a stopped cluster again on the same port
#
# Environment:
#   PG_TEST_WATCH_PID   when set at `start`, a watcher stops the cluster and removes DIR once
#                       that process has exited (so a test binary that dies leaves nothing behind)
#   PG_TEST_SERVER_OPTS extra `-c name=value` settings for the server (e.g. ssl=on ...)
#   PG_TEST_USER        the OS user running the server when this script runs as root
#                       (default: the `postgres` user of Debian's package, else one created
#                       with useradd: ds-pgtest)
#
# initdb refuses to run as root, so as root the cluster runs as PG_TEST_USER; DIR is made
# theirs (its parent directories must be searchable by that user). The binaries are taken from PATH, else from /usr/lib/postgresql/<newest>/bin.
# The database superuser is `ds`, trusted on 127.0.0.1 only (tests, never production).
set -euo pipefail

die() { printf 'pg-test-cluster: %s\n' "$*" >&2; exit 1; }

command="${1:-}"
dir="${2:-}"
[[ -n "$command" && -n "$dir" ]] || die "usage: $0 start|stop|restart DIR"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
data="$dir/data"

bin_dir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return
  fi
  local newest
  newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [[ -n "$newest" && -x "$newest/pg_ctl" ]] ||
    die "PostgreSQL binaries not found (install Debian's postgresql package)"
  echo "$newest"
}
BIN="$(bin_dir)"

run_user=""
if [[ "$(id -u)" == "0" ]]; then
  run_user="${PG_TEST_USER:-}"
  if [[ -z "$run_user" ]]; then
    if id postgres >/dev/null 2>&1; then
      run_user=postgres
    else
      run_user=ds-pgtest
      id "$run_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$run_user"
    fi
  fi
  chown "$run_user" "$dir"
  chmod 700 "$dir"
  runuser -u "$run_user" -- test -w "$dir" ||
    die "user $run_user cannot reach $dir: make its parent directories searchable (chmod o+x)"
fi

# as_user CMD... runs CMD as the cluster's user.
as_user() {
  if [[ -n "$run_user" ]]; then
    runuser -u "$run_user" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free TCP port found"
}

start_server() {
  local port="$1"
  # shellcheck disable=SC2086 # PG_TEST_SERVER_OPTS is a list of -c options.
  as_user "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=on \
        -c max_connections=200 ${PG_TEST_SERVER_OPTS:-}" start >/dev/null
}

case "$command" in
  start)
    if [[ ! -f "$data/PG_VERSION" ]]; then
      as_user "$BIN/initdb" -D "$data" -U ds --auth=trust --no-sync --encoding=UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    started=""
    for _ in 1 2 3 4 5; do
      port="$(free_port)"
      if start_server "$port"; then
        started="$port"
        break
      fi
    done
    [[ -n "$started" ]] || { tail -n 30 "$dir/server.log" >&2 || true; die "the server did not start"; }
    echo "$started" >"$dir/port"
    if [[ -n "${PG_TEST_WATCH_PID:-}" ]]; then
      watched="$PG_TEST_WATCH_PID"
      # Detached from this script's stdout, so callers reading it see EOF.
      nohup bash -c '
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        if [[ -n "$4" ]]; then runuser -u "$4" -- "$2/pg_ctl" -D "$3/data" -m immediate stop
        else "$2/pg_ctl" -D "$3/data" -m immediate stop; fi
        rm -rf -- "$3"
      ' pg-test-watch "$watched" "$BIN" "$dir" "$run_user" >/dev/null 2>&1 &
    fi
    echo "postgres://ds@127.0.0.1:$started/postgres"
    ;;
  restart)
    [[ -f "$dir/port" ]] || die "no cluster was started in $dir"
    start_server "$(cat "$dir/port")" || die "the server did not start again"
    echo "postgres://ds@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
  stop)
    [[ -f "$data/PG_VERSION" ]] || exit 0
    as_user "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  *)
    die "unknown command $command (start, stop or restart)"
    ;;
esac
