"""Proves that verify.py fails when the bundle is broken.

    python selftest.py --repo DIR --tools DIR [--server-bin PATH]

Copies the deployment files of the repository into a scratch directory,
breaks one thing at a time (a template, a values file, an alert rule, a
rule test, a dashboard, the runbook, a rendered manifest, the Dockerfile,
the release workflow),
runs the checks that must notice, and asserts that they fail, and that the
unbroken copy passes them. Prints one line per case and
"verify-deploy self-test: N passed, M failed".
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

COPIED = ["helm", "deploy", "config", "scripts/verify-deploy", "Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock", "build.rs", "src", ".github"]


@dataclass
class Case:
    name: str
    checks: str
    # The failing check's name and a piece of its message.
    expect: str
    break_it: Callable[[Path], None]


def edit(rel: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"self-test is stale: {old!r} is not in {rel}")
        path.write_text(text.replace(old, new, count))

    return apply


def regex(rel: str, pattern: str, new: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        text, n = re.subn(pattern, new, path.read_text(), count=1)
        if n == 0:
            raise SystemExit(f"self-test is stale: /{pattern}/ does not match {rel}")
        path.write_text(text)

    return apply


CHART = "helm/durable-streams"
RULES = "deploy/prometheus/durable-streams.rules.yaml"
DASHBOARD = "deploy/grafana/durable-streams-overview.json"
CACHE_CONF = "deploy/nginx/durable-streams-cache.conf"

CASES = [
    Case("template that does not render", "render", "render",
         edit(f"{CHART}/templates/service.yaml", "spec:\n  type: {{ .Values.service.type }}", "spec:\n  type: {{ .Values.service.typo.type }}")),
    Case("template with a misspelt Kubernetes field", "kubernetes-schemas", "containerPort",
         edit(f"{CHART}/templates/_pod.tpl", "containerPort: {{ .Values.ports.api }}", "containerPorts: {{ .Values.ports.api }}")),
    Case("readiness probe on the wrong path", "pod-policy", "readinessProbe must probe /readyz",
         edit(f"{CHART}/templates/_pod.tpl", "path: /readyz", "path: /ready")),
    Case("TLS Secret mounted with subPath", "pod-policy", "subPath",
         edit(f"{CHART}/templates/_pod.tpl", "mountPath: {{ include \"durable-streams.tlsDir\" . }}\n", "mountPath: {{ include \"durable-streams.tlsDir\" . }}\n          subPath: tls.crt\n")),
    Case("root filesystem left writable", "pod-policy", "readOnlyRootFilesystem",
         edit(f"{CHART}/values.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")),
    Case("ServiceMonitor with a misspelt field", "crd-and-dashboard-schemas", "scrapeTimout",
         edit(f"{CHART}/templates/servicemonitor.yaml", "scrapeTimeout: {{", "scrapeTimout: {{")),
    Case("server config key the server does not know", "server-config", "exit 3",
         edit(f"{CHART}/templates/_helpers.tpl", '"storage" (dict "mode" .Values.storage.mode)', '"storage" (dict "mode" .Values.storage.mode "sync" true)')),
    Case("typo in a profile values file", "render", "prod",
         edit(f"{CHART}/values-prod.yaml", "persistence:\n  size: 20Gi", "persistence:\n  sise: 20Gi")),
    Case("undocumented value", "values-docs", "priorityClassName has no",
         edit(f"{CHART}/values.yaml", "# -- Priority class of the pods.\n", "")),
    Case("alert rule with a PromQL syntax error", "rules", "promtool check rules",
         edit(RULES, "> 0.25\n", "> > 0.25\n")),
    Case("alert threshold changed under its test", "rules", "promtool test rules",
         edit(RULES, ") < 0.15", ") < 0.05")),
    Case("alert without runbook section", "rules", "RUNBOOK",
         edit("deploy/RUNBOOK.md", "## DurableStreamsSlowCommits", "## Slow commits")),
    Case("alert on a metric the server does not export", "metric-contract", "durable_streams_storage_commit_seconds_bucket",
         edit(RULES, "durable_streams_storage_commit_duration_seconds_bucket", "durable_streams_storage_commit_seconds_bucket")),
    Case("dashboard query that does not parse", "dashboards", "parse",
         edit(DASHBOARD, "sum by (route, method) (rate(", "sum by (route, method) (rate((")),
    Case("dashboard with a misspelt panel option", "crd-and-dashboard-schemas", "tabel",
         edit(DASHBOARD, '"displayMode": "table"', '"displayMode": "tabel"')),
    Case("dashboard that is not JSON", "dashboards", "not JSON",
         regex(DASHBOARD, r"\n\}\s*$", "\n")),
    Case("hand-edited plain manifest", "generated-files", "deploy/kubernetes/prod-tls/durable-streams.yaml",
         edit("deploy/kubernetes/prod-tls/durable-streams.yaml", "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 10")),
    Case("chart copy of the rules out of date", "generated-files", "files/prometheus",
         edit(RULES, "for: 10m\n", "for: 11m\n")),
    Case("YAML that yamllint rejects", "yamllint", "trailing spaces",
         edit(f"{CHART}/values-prod.yaml", "profile: prod\n", "profile: prod   \n")),
    Case("Dockerfile build stage without the compiled-in profiles", "dockerfile", "does not COPY config",
         edit("Dockerfile", "COPY config ./config\n", "")),
    Case("Dockerfile that hadolint rejects", "dockerfile", "DL",
         edit("Dockerfile", "WORKDIR /build\n", "WORKDIR /build\nRUN cd /build && apt-get update && apt-get install -y curl\n")),
    # Monitoring as kube-prometheus-stack reads it.
    Case("ServiceMonitor rendered where the API is not served", "monitoring", "the cluster does not serve its API",
         edit(f"{CHART}/templates/servicemonitor.yaml", '{{- if include "durable-streams.serviceMonitorRendered" . -}}', "{{- if .Values.metrics.serviceMonitor.enabled -}}")),
    Case("ServiceMonitor without the labels its Prometheus selects", "monitoring", "lacks label release=kube-prometheus-stack",
         edit(f"{CHART}/templates/servicemonitor.yaml", "    {{- with .Values.metrics.serviceMonitor.labels }}\n    {{- toYaml . | nindent 4 }}\n    {{- end }}\n", "")),
    Case("ServiceMonitor that also selects the headless Service", "monitoring", "each pod must be scraped once",
         edit(f"{CHART}/templates/servicemonitor.yaml", "    matchExpressions:\n      - key: durable-streams/headless\n        operator: DoesNotExist\n", "")),
    Case("ServiceMonitor pinned to the release namespace", "monitoring", "namespaceSelector",
         edit(f"{CHART}/templates/servicemonitor.yaml", "  endpoints:", "  namespaceSelector:\n    matchNames:\n      - {{ .Release.Namespace }}\n  endpoints:")),
    Case("NOTES silent about a skipped ServiceMonitor", "monitoring", "NOTES must warn",
         edit(f"{CHART}/templates/NOTES.txt", "this cluster serves no monitoring.coreos.com/v1 ServiceMonitor", "no ServiceMonitor API")),
    Case("dashboards keep their fixed uids", "monitoring", "must derive from",
         edit(f"{CHART}/templates/dashboards.yaml", '(printf "\\"uid\\": %q" $new)', '(printf "\\"uid\\": %q" $old)')),
    # Upgrades.
    Case("checksum over the whole ConfigMap", "upgrade", "commonLabels change alters checksum/config",
         edit(f"{CHART}/templates/_pod.tpl", 'printf "%s\\n" (include "durable-streams.serverToml" .)', 'include (print $.Template.BasePath "/configmap.yaml") .')),
    Case("runbook without the stuck-rollout steps", "upgrade", "A rollout is stuck",
         edit("deploy/RUNBOOK.md", "## A rollout is stuck", "## Stuck rollouts")),
    # Two releases in one namespace; helper pods.
    Case("TLS Secret not scoped to the release", "names", "both use Secret durable-streams-tls",
         edit(f"{CHART}/templates/_helpers.tpl", '{{- default (printf "%s-tls" (include "durable-streams.fullname" .)) .Values.tls.secretName }}', '{{- default "durable-streams-tls" .Values.tls.secretName }}')),
    Case("backup pods carry the server's labels", "names", "which is not a server pod",
         edit(f"{CHART}/templates/_helpers.tpl", 'app.kubernetes.io/name: {{ printf "%s-%s" (include "durable-streams.name" .ctx) .component | trunc 63 | trimSuffix "-" }}', 'app.kubernetes.io/name: {{ include "durable-streams.name" .ctx }}')),
    # Egress per feature.
    Case("webhooks on without an egress rule", "egress", "must be allowed",
         edit(f"{CHART}/templates/networkpolicy.yaml", "{{- if .Values.subscriptions.enabled }}", "{{- if false }}")),
    Case("webhook egress open to private ranges", "egress", "must be refused",
         edit(f"{CHART}/templates/networkpolicy.yaml", '(not (get $subscriptions "allow_private_targets"))', "false")),
    Case("OTLP endpoint without an egress rule", "egress", "OTLP",
         edit(f"{CHART}/templates/networkpolicy.yaml", "{{- if $otlp.enabled }}", "{{- if false }}")),
    # Ways in.
    Case("ingress-nginx buffering live reads", "ingress", "must not buffer",
         edit(f"{CHART}/templates/ingress.yaml", '"nginx.ingress.kubernetes.io/proxy-buffering" "off"', '"nginx.ingress.kubernetes.io/proxy-buffering" "on"')),
    Case("HTTPRoute timeout below the long-poll timeout", "ingress", "timeouts.request must exceed",
         edit(f"{CHART}/templates/httproute.yaml", '(printf "%ss" $timeout)', '"15s"')),
    Case("HTTPRoute with a misspelt field", "crd-and-dashboard-schemas", "backendRequests",
         edit(f"{CHART}/templates/httproute.yaml", "        backendRequest: {{", "        backendRequests: {{")),
    # What runs against the real server.
    Case("helm test without its client certificate", "helm-test", "prod-mtls: the helm test script failed",
         edit(f"{CHART}/templates/tests/stream-round-trip.yaml", "              --cert {{ $certs }}/client/tls.crt --key {{ $certs }}/client/tls.key \\\n", "")),
    Case("NOTES curl to a name only the cluster resolves", "notes", "prod: `curl",
         edit(f"{CHART}/templates/NOTES.txt", '(ternary $host "localhost" (ne .Values.tls.mode "http"))', "$host")),
    Case("backup Job not beside its pod", "backup", "must be required on the node",
         edit(f"{CHART}/templates/backup.yaml", "statefulset.kubernetes.io/pod-name: {{ $pod }}", "statefulset.kubernetes.io/pod-name: {{ $fullname }}")),
    Case("backup Job writing into the data volume", "backup", "read-only",
         edit(f"{CHART}/templates/backup.yaml", "                claimName: {{ include \"durable-streams.dataClaimName\" (dict \"ctx\" $ \"ordinal\" $ordinal) }}\n                readOnly: true\n",
              "                claimName: {{ include \"durable-streams.dataClaimName\" (dict \"ctx\" $ \"ordinal\" $ordinal) }}\n")),
    Case("backup Job keeping every export", "backup", "backup.keep=2",
         edit(f"{CHART}/templates/backup.yaml", 'while [ "$#" -gt {{ $.Values.backup.keep }} ]; do', 'while [ "$#" -gt 1000 ]; do')),
    Case("backup export of another store", "backup", "restored",
         edit(f"{CHART}/templates/backup.yaml", "export --config {{ include \"durable-streams.configDir\" $ }}/server.toml", "export --config {{ include \"durable-streams.configDir\" $ }}/server.toml --stream /v1/stream/orders")),
    Case("runbook restore that does not import", "backup", "restore failed",
         edit("deploy/RUNBOOK.md", "durable-streams-server import --config", "durable-streams-server import --konfig")),
    # OpenShift.
    Case("OpenShift switch that keeps the fixed UID", "pod-policy", "runAsUser must be left to the SCC",
         edit(f"{CHART}/templates/_helpers.tpl", 'omit $context "runAsUser" "runAsGroup" "fsGroup"', 'omit $context "runAsGroup" "fsGroup"')),
    # PostgreSQL mode: interchangeable pods over one database.
    Case("PodDisruptionBudget that lets a majority go", "pod-policy", "a majority must stay",
         edit(f"{CHART}/templates/poddisruptionbudget.yaml", 'minAvailable: {{ add (div (include "durable-streams.replicas" . | int) 2) 1 }}', "minAvailable: 1")),
    Case("rolling update that stops a pod first", "pod-policy", "maxUnavailable 0",
         edit(f"{CHART}/templates/deployment.yaml", "maxUnavailable: 0", "maxUnavailable: 1")),
    Case("HA profile without spreading over nodes", "pod-policy", "no topologySpreadConstraint over kubernetes.io/hostname",
         edit(f"{CHART}/values-prod-ha.yaml", "topologyKey: kubernetes.io/hostname", "topologyKey: kubernetes.io/os")),
    Case("database URL not from its Secret", "pod-policy", "must come from secretKeyRef durable-streams-postgres/url",
         regex(f"{CHART}/templates/_pod.tpl", r"(# The URL holds the password.*\n\s+- name: DS_STORAGE__POSTGRES__URL\n)\s+valueFrom:\n.*\n.*\n.*\n",
               "\\1          value: postgres://streams@db:5432/streams\n")),
    Case("postgres mode on a StatefulSet with claims", "pod-policy", "must run a Deployment",
         edit(f"{CHART}/templates/_helpers.tpl", '{{- if include "durable-streams.durable" . }}StatefulSet{{ else }}Deployment{{ end }}',
              '{{- if or (include "durable-streams.durable" .) (eq .Values.storage.mode "postgres") }}StatefulSet{{ else }}Deployment{{ end }}')),
    Case("CloudNativePG Cluster without synchronous replication", "pod-policy", "must replicate synchronously",
         edit(f"{CHART}/templates/cnpg-cluster.yaml", "      number: {{ $cnpg.synchronous.number }}\n", "")),
    Case("CloudNativePG Cluster with a misspelt field", "crd-and-dashboard-schemas", "podAntiAfinityType: unknown field",
         edit(f"{CHART}/templates/cnpg-cluster.yaml", "podAntiAffinityType: {{", "podAntiAfinityType: {{")),
    Case("PostgreSQL egress that misses the CloudNativePG pods", "egress", "PostgreSQL egress must reach",
         edit(f"{CHART}/templates/networkpolicy.yaml", "cnpg.io/cluster: {{", "cnpg.io/instanceName: {{")),
    Case("runbook without the PostgreSQL backups", "upgrade", "ScheduledBackup",
         edit("deploy/RUNBOOK.md", "`ScheduledBackup`; with a managed", "scheduled backup; with a managed")),
    # The caching tier.
    Case("chart's nginx config drifted from deploy/nginx", "generated-files", "files/nginx/durable-streams-cache.conf",
         edit(f"{CHART}/files/nginx/durable-streams-cache.conf", "proxy_cache_use_stale updating;", "proxy_cache_use_stale error;")),
    Case("cache lock released before the long-poll ends", "cache", "proxy_cache_lock_age must exceed the long-poll timeout (90 s)",
         edit(f"{CHART}/templates/_helpers.tpl", '(printf "proxy_cache_lock_age %ds;" (add $longPoll 10))', '(printf "proxy_cache_lock_age %ds;" 40)')),
    Case("cache answering requests with an Authorization header", "cache", "proxy_cache_bypass must include $ds_credentials_header",
         edit(CACHE_CONF, "proxy_cache_bypass $ds_credentials_header ", "proxy_cache_bypass ")),
    Case("cache buffering SSE", "cache", "location @sse must turn proxy_buffering and proxy_cache off",
         edit(CACHE_CONF, "            proxy_buffering off;\n", "")),
    Case("cache config the chart changes beyond its chart: lines", "cache", "is not a chart: line",
         edit(f"{CHART}/templates/_helpers.tpl", "{{- $out = append $out $line }}", '{{- $out = append $out (replace "keepalive 64;" "keepalive 8;" $line) }}')),
    Case("cache config nginx rejects", "cache", "nginx -t: ",
         edit(f"{CHART}/files/nginx/durable-streams-cache.conf", "server_tokens off;", "server_tokens of;")),
    Case("Ingress past the cache", "ingress", "is not durable-streams-cache port http",
         edit(f"{CHART}/templates/ingress.yaml", "{{- if $.Values.cache.enabled }}", "{{- if false }}")),
    # Release.
    Case("chart appVersion not the crate version", "release", "appVersion",
         edit(f"{CHART}/Chart.yaml", 'appVersion: "0.1.0"', 'appVersion: "0.2.0"')),
    Case("release workflow that actionlint rejects", "release", "runer",
         edit(".github/workflows/release.yml", "runs-on: ${{ matrix.runner }}", "runs-on: ${{ matrix.runer }}")),
    Case("release workflow without arm64", "release", "builds for arm64",
         edit(".github/workflows/release.yml", "          - platform: linux/arm64\n            runner: ubuntu-24.04-arm\n", "")),
    Case("image without a CA bundle", "dockerfile", "CA bundle",
         edit("Dockerfile", "COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n", "")),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--tools", type=Path, required=True)
    parser.add_argument("--server-bin", type=Path)
    args = parser.parse_args()
    repo = args.repo.resolve()
    verify = repo / "scripts/verify-deploy/verify.py"
    server_bin = args.server_bin or repo / "target/release/durable-streams-server"

    def run(root: Path, checks: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(verify), "--repo", str(root), "--tools", str(args.tools), "--checks", checks, "--server-bin", str(server_bin)],
            capture_output=True, text=True,
        )

    def copy(dest: Path) -> None:
        for rel in COPIED:
            source = repo / rel
            if source.is_dir():
                shutil.copytree(source, dest / rel, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / rel)

    passed = failed = 0
    scratch = Path(tempfile.mkdtemp(prefix="verify-deploy-selftest-"))
    try:
        # The unbroken copy passes every check the cases use.
        clean = scratch / "clean"
        copy(clean)
        all_checks = ",".join(sorted({c.checks for c in CASES}))
        result = run(clean, all_checks)
        if result.returncode == 0:
            passed += 1
            print("ok   the unbroken copy passes", flush=True)
        else:
            failed += 1
            print("FAIL the unbroken copy fails, so the cases below prove nothing:", flush=True)
            print(result.stdout + result.stderr, flush=True)
        def attempt(numbered: tuple[int, Case]) -> tuple[Case, subprocess.CompletedProcess]:
            n, case = numbered
            root = scratch / f"case-{n}"
            copy(root)
            case.break_it(root)
            try:
                return case, run(root, case.checks)
            finally:
                shutil.rmtree(root, ignore_errors=True)

        # Cases are independent copies on their own ports: run two at a time.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for case, result in pool.map(attempt, enumerate(CASES)):
                output = result.stdout + result.stderr
                failed_check = f"FAIL {case.checks}:" in output
                if result.returncode != 0 and failed_check and case.expect in output:
                    passed += 1
                    print(f"ok   {case.name}: {case.checks} fails", flush=True)
                else:
                    failed += 1
                    print(f"FAIL {case.name}: expected {case.checks} to fail mentioning {case.expect!r}; exit {result.returncode}", flush=True)
                    print("     " + output.strip().replace("\n", "\n     "), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"verify-deploy self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
