"""Proves that verify.py fails when the bundle is broken.

    python selftest.py --repo DIR --tools DIR [--server-bin PATH]

Copies the deployment files of the repository into a scratch directory,
breaks one thing at a time (a template, a values file, an alert rule, a
rule test, a dashboard, the runbook, a rendered manifest, the Dockerfile),
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

COPIED = ["helm", "deploy", "config", "scripts/verify-deploy", "Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock", "build.rs", "src"]


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
        for n, case in enumerate(CASES):
            root = scratch / f"case-{n}"
            copy(root)
            case.break_it(root)
            result = run(root, case.checks)
            output = result.stdout + result.stderr
            failed_check = f"FAIL {case.checks}:" in output
            if result.returncode != 0 and failed_check and case.expect in output:
                passed += 1
                print(f"ok   {case.name}: {case.checks} fails", flush=True)
            else:
                failed += 1
                print(f"FAIL {case.name}: expected {case.checks} to fail mentioning {case.expect!r}; exit {result.returncode}", flush=True)
                print("     " + output.strip().replace("\n", "\n     "), flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"verify-deploy self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
