#!/usr/bin/env bash
# The project's single test command:
#   1. cargo build --release --locked
#   2. cargo test --release --locked   (shares the release build's dependencies)
#      then cargo doc --no-deps with warnings denied (the embedding API's documentation)
#   3. a tiny smoke run of the load tool against this server (scripts/compare.sh --smoke)
#   4. the deployment bundle: scripts/verify-deploy.sh (Helm chart, manifests, alert
#      rules, dashboards, Dockerfile; installs its own tools) and its --self-test,
#      which breaks copies of the bundle and expects each break to be caught
#   5. a real Prometheus scraping the release binary, and promtool's lint of
#      the scrape (scripts/prometheus-check.sh)
#   6. a real browser (Debian chromium, puppeteer-core) on another origin reading a
#      token-protected stream with fetch and EventSource (scripts/browser-test)
#   7. the official Durable Streams conformance suite against the release binary
#      (tests/conformance/run.sh; storage modes from CONFORMANCE_MODES, default all five backends,
#      three postgres replicas behind nginx, and access control),
#      including the opt-in subscription tests (SUBSCRIPTIONS=1: 338 tests per mode; set
#      SUBSCRIPTIONS=0 to run the 332 core tests only)
# Installs missing tools (Node.js, npm, curl, openssl, PostgreSQL, chromium, nginx, prometheus, jq) with apt-get when run as root.
# Exits non-zero if any step fails. On success the last line printed is
#   conformance: N passed, M failed
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

section() {
  echo
  echo "================================================================"
  echo "== $*"
  echo "================================================================"
}

# ------------------------------------------------------------------ tools ---
section "tools"
command -v cargo >/dev/null 2>&1 || { echo "ERROR: cargo is required but not installed" >&2; exit 1; }
missing_pkgs=()
command -v node >/dev/null 2>&1 || missing_pkgs+=(nodejs)
{ command -v npm >/dev/null 2>&1 && command -v npx >/dev/null 2>&1; } || missing_pkgs+=(npm)
command -v curl >/dev/null 2>&1 || missing_pkgs+=(curl)
# The access-control unit tests make RSA keys with it (ring cannot).
command -v openssl >/dev/null 2>&1 || missing_pkgs+=(openssl)
# PostgreSQL for the postgres backend's tests (they start their own clusters).
{ command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; } ||
  missing_pkgs+=(postgresql)
# A real browser for the cross-origin access-control test (scripts/browser-test).
[[ -x /usr/bin/chromium ]] || missing_pkgs+=(chromium)
if ((${#missing_pkgs[@]} > 0)); then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing missing tools: ${missing_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing_pkgs[@]}"
  else
    echo "ERROR: missing tools (${missing_pkgs[*]}) and not root: install them first" >&2
    exit 1
  fi
fi
# nginx for the caching tier's tests (tests/cache_tier.rs starts its own);
# policy-rc.d keeps the package from starting a server on port 80.
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing missing tools: nginx-light"
    export DEBIAN_FRONTEND=noninteractive
    placed_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && placed_policy=1
    fi
    nginx_status=0
    apt-get install -y --no-install-recommends nginx-light ||
      { apt-get update && apt-get install -y --no-install-recommends nginx-light; } || nginx_status=$?
    ((placed_policy)) && rm -f /usr/sbin/policy-rc.d
    ((nginx_status == 0)) || { echo "ERROR: could not install nginx-light" >&2; exit 1; }
  else
    echo "ERROR: nginx is missing and not root: apt-get install nginx-light first" >&2
    exit 1
  fi
fi
echo "cargo: $(cargo --version)"
echo "node:  $(node --version), npm: $(npm --version)"
echo "curl:  $(curl --version | head -n 1)"
echo "postgres: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || command -v pg_ctl)"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
echo "nginx: $("$nginx_bin" -v 2>&1)"

# ------------------------------------------------------------------ build ---
section "cargo build --release --locked"
cargo build --release --locked

# ------------------------------------------------------------ unit tests ---
failed_steps=()
section "cargo test --release --locked"
cargo test --release --locked || failed_steps+=("cargo test")

# ----------------------------------------------------------- API docs ---
section "cargo doc --no-deps (the embedding API's documentation, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --locked || failed_steps+=("cargo doc")

# ------------------------------------------------------------- load tool ---
section "load tool smoke run (scripts/compare.sh --smoke)"
scripts/compare.sh --smoke --out target/compare-smoke || failed_steps+=("load tool smoke")

# ---------------------------------------------------------- deploy bundle ---
section "deploy bundle (scripts/verify-deploy.sh)"
scripts/verify-deploy.sh || failed_steps+=("verify-deploy")
section "deploy bundle self-test (scripts/verify-deploy.sh --self-test)"
scripts/verify-deploy.sh --self-test || failed_steps+=("verify-deploy self-test")

# ------------------------------------------------------------- prometheus ---
section "Prometheus scrape and promtool (scripts/prometheus-check.sh)"
SERVER_BIN=target/release/durable-streams-server scripts/prometheus-check.sh || failed_steps+=("prometheus")

# ---------------------------------------------------------------- browser ---
section "a real browser on another origin (scripts/browser-test)"
(cd scripts/browser-test && npm ci --no-audit --no-fund &&
  node browser-test.mjs "$REPO_ROOT/target/release/durable-streams-server") ||
  failed_steps+=("browser")

# ------------------------------------------------------------ conformance ---
section "conformance suite (tests/conformance/run.sh)"
SUBSCRIPTIONS="${SUBSCRIPTIONS:-1}" CONFORMANCE_SERVER_BIN=target/release/durable-streams-server \
  tests/conformance/run.sh || failed_steps+=("conformance")

if ((${#failed_steps[@]} > 0)); then
  echo "test-all FAILED: ${failed_steps[*]}" >&2
  exit 1
fi
