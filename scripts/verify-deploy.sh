#!/usr/bin/env bash
# Verifies the deployment bundle with real tools:
#   - Helm's engine (PyPI helm-python-sdk, Helm 4) renders and lints the chart
#     with its defaults, each profile's values file and more value sets, and
#     refuses the bad ones (values.schema.json, the chart's own guards);
#   - every rendered resource and every manifest in deploy/kubernetes
#     validates with `kubernetes-validate --strict` (warnings fail);
#     ServiceMonitor, PrometheusRule and Certificate against their CRD
#     schemas and field names (npm @kubernetes-models/*);
#   - what the pods promise: /healthz and /readyz probes on a port without
#     client certificates, TLS Secrets mounted as directories, non-root,
#     read-only root filesystem, drain shorter than the grace period;
#   - the server's own `check-config` accepts every rendered server.toml;
#   - the caching tier: the chart's nginx.conf is deploy/nginx's with only
#     its chart: lines set, right for the server's timeouts and credentials,
#     and `nginx -t` accepts it; CloudNativePG Clusters against the
#     operator's CRD schemas (scripts/verify-deploy/crds);
#   - yamllint; promtool check rules and test rules; every dashboard query
#     parses (promtool) and every dashboard type-checks against
#     @grafana/schema; rules and dashboards use only exported metrics;
#   - as kube-prometheus-stack, cert-manager and ingress-nginx read them:
#     monitoring objects only where their API is served (or forced), with
#     their labels, each pod scraped once; two releases in one namespace
#     share nothing; egress follows the features turned on; Ingress and
#     HTTPRoute timeouts above the long-poll and SSE intervals; only a
#     server.toml change rolls the pods;
#   - against the release binary: the helm test script and the NOTES curl
#     examples (plain, TLS, mTLS), the backup CronJob's script beside a live
#     server and the runbook's restore into a fresh store, byte for byte;
#   - actionlint on the release workflow; appVersion is the crate version;
#   - runbook links; hadolint on the Dockerfile; deploy/kubernetes and the
#     chart's copies of rules and dashboards match their sources;
#   - where podman runs, an image built from the local binary answers
#     /healthz and /readyz (skipped, not failed, where it cannot).
#
# Usage:
#   scripts/verify-deploy.sh              all checks
#   scripts/verify-deploy.sh --self-test  break copies of the bundle one way at a time; each must fail
#   scripts/verify-deploy.sh --update     re-render deploy/kubernetes, the chart's copies and values table
#   scripts/verify-deploy.sh --checks rules,dashboards
#
# Tools are installed into .cache/verify-deploy (git-ignored) from
# scripts/verify-deploy/requirements.txt and package-lock.json, and reused
# while those files are unchanged; promtool (Debian `prometheus`), nginx
# (`nginx-light`) and podman with apt-get when run as root.
# VERIFY_DEPLOY_IMAGE=0 skips the image check and the podman install.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
TOOLS="$REPO_ROOT/.cache/verify-deploy"
HERE="$REPO_ROOT/scripts/verify-deploy"
mode=verify
extra=()
while (($# > 0)); do
  case "$1" in
    --self-test) mode=self-test ;;
    --update) mode=update ;;
    --checks) extra+=(--checks "$2"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "verify-deploy: $*"; }
is_root() { [[ "$(id -u)" == "0" ]]; }

apt_install() {
  is_root && command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ------------------------------------------------------------ python tools ---
venv="$TOOLS/venv"
want="$(stamp_of "$HERE/requirements.txt")"
if [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]]; then
  log "installing Python tools into $venv"
  rm -rf "$venv"
  mkdir -p "$TOOLS"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv || { echo "ERROR: python3 -m venv does not work and python3-venv cannot be installed" >&2; exit 1; }
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$want" > "$venv/.stamp"
fi

# --------------------------------------------------------------- npm tools ---
node_dir="$TOOLS/node"
want="$(stamp_of "$HERE/package.json" "$HERE/package-lock.json")"
if [[ "$(cat "$node_dir/.stamp" 2>/dev/null)" != "$want" ]]; then
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm || { echo "ERROR: npm is required" >&2; exit 1; }
  log "installing npm tools into $node_dir"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$node_dir/.stamp"
fi

# ------------------------------------------------------ system tools, binary ---
# Packages that ship a service: policy-rc.d keeps the package from starting
# it where an init system would; only their tools are used.
apt_install_without_service() {
  local placed=0 status=0
  if is_root && [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && placed=1
  fi
  apt_install "$@" || status=$?
  ((placed)) && rm -f /usr/sbin/policy-rc.d
  return "$status"
}
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus)"
  apt_install_without_service prometheus || { echo "ERROR: promtool is required: apt-get install prometheus" >&2; exit 1; }
fi
# nginx -t checks the caching tier's config as the chart renders it.
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  log "installing nginx (Debian package nginx-light)"
  apt_install_without_service nginx-light || { echo "ERROR: nginx is required: apt-get install nginx-light" >&2; exit 1; }
fi
command -v openssl >/dev/null 2>&1 || apt_install openssl || { echo "ERROR: openssl is required" >&2; exit 1; }
if [[ "${VERIFY_DEPLOY_IMAGE:-auto}" != "0" && "$mode" == verify ]] && ! command -v podman >/dev/null 2>&1; then
  log "installing podman for the image check (skipped if this fails)"
  apt_install podman runc fuse-overlayfs uidmap || log "podman is not installable here; the image check will be skipped"
fi

server_bin="$REPO_ROOT/target/release/durable-streams-server"
if [[ "$mode" != update && ! -x "$server_bin" ]]; then
  log "building $server_bin"
  cargo build --release --locked
fi

log "helm $("$venv/bin/python" -c 'import helm_python as h; print(h.helm_sdk_version())'), $("$venv/bin/yamllint" --version), $("$venv/bin/kubernetes-validate" --version | head -n1 | sed 's/^/kubernetes-validate /'), $(promtool --version 2>&1 | head -n1), $("$venv/bin/hadolint" --version), node $(node --version)"

case "$mode" in
  verify) exec "$venv/bin/python" "$HERE/verify.py" --repo "$REPO_ROOT" --tools "$TOOLS" --server-bin "$server_bin" "${extra[@]}" ;;
  update) exec "$venv/bin/python" "$HERE/verify.py" --repo "$REPO_ROOT" --tools "$TOOLS" --update ;;
  self-test) exec "$venv/bin/python" "$HERE/selftest.py" --repo "$REPO_ROOT" --tools "$TOOLS" --server-bin "$server_bin" ;;
esac
