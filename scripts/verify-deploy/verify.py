"""Checks of the deployment bundle: Helm chart, plain manifests, alert rules,
dashboards, runbook, Dockerfile and release workflow. Run through
scripts/verify-deploy.sh, which installs the tools first. cluster.py reads
rendered objects as Kubernetes and its operators do; live.py runs what the
chart renders against the server binary.

    python verify.py --repo DIR --tools DIR [--checks a,b] [--update]

Each check prints PASS, FAIL (with one line per problem) or SKIP (with the
reason); the last line is "verify-deploy: N passed, M failed". Exits 1 when
any check fails. --update rewrites the generated files (deploy/kubernetes,
the chart's copies of the rules and dashboards, the chart README's values
table) instead of failing on their drift.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster  # noqa: E402  (beside this file)
import live  # noqa: E402

CHART = Path("helm/durable-streams")
RULES = Path("deploy/prometheus/durable-streams.rules.yaml")
RULE_TESTS = Path("deploy/prometheus/durable-streams.rules.test.yaml")
GRAFANA = Path("deploy/grafana")
RUNBOOK = Path("deploy/RUNBOOK.md")
MANIFESTS = Path("deploy/kubernetes")
TOOLING = Path("scripts/verify-deploy")
RELEASE = "durable-streams"
NAMESPACE = "durable-streams"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.29.0", "1.37.0"]
PROFILES = ["prod", "prod-tls", "prod-mtls", "prod-ha"]
# Alerts the deployment issue asks for.
REQUIRED_ALERTS = {
    "DurableStreamsHigh5xxRatio",
    "DurableStreamsSlowCommits",
    "DurableStreamsStorageErrors",
    "DurableStreamsCertificateExpiring",
    "DurableStreamsCertificateReloadFailing",
    "DurableStreamsNotReady",
    "DurableStreamsDiskAlmostFull",
}
# Metrics the dashboards must show between them (RED per route, live
# readers, bytes, commit latency and batch size, TLS reloads and expiry,
# process resources).
REQUIRED_DASHBOARD_METRICS = {
    "durable_streams_http_requests_total",
    "durable_streams_http_request_duration_seconds",
    "durable_streams_live_readers",
    "durable_streams_appended_bytes_total",
    "durable_streams_read_bytes_total",
    "durable_streams_storage_commit_duration_seconds",
    "durable_streams_storage_commit_batch_size",
    "durable_streams_tls_reloads_total",
    "durable_streams_tls_certificate_not_after_timestamp_seconds",
    "durable_streams_process_cpu_seconds_total",
    "durable_streams_process_resident_memory_bytes",
}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/", "gateway.networking.k8s.io/", "postgresql.cnpg.io/")
# CloudNativePG's Cluster CRD schema (descriptions removed) of the oldest
# operator release the chart supports and of the newest, from
# scripts/verify-deploy/crds (see the README there).
CNPG_CRDS = ["postgresql.cnpg.io_clusters-v1.25.0.json", "postgresql.cnpg.io_clusters-v1.30.0.json"]
CNPG_APIS = ["postgresql.cnpg.io/v1", "postgresql.cnpg.io/v1/Cluster"]
# The caching tier's nginx config and the chart's copy of it.
CACHE_CONF = Path("deploy/nginx/durable-streams-cache.conf")
CHART_CACHE_CONF = CHART / "files/nginx/durable-streams-cache.conf"
# The storage modes that keep data on the pod's volume (StatefulSet).
VOLUME_MODES = ("file-fast", "file-durable", "acid")
# What a cluster with kube-prometheus-stack serves; scenarios render with
# these unless they say otherwise (Capabilities.APIVersions).
MONITORING_APIS = [
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
]
# A public and a private address, for reading egress rules.
PUBLIC_IP = "203.0.113.10"
PRIVATE_IP = "10.1.2.3"
# Where the server refuses webhooks unless subscriptions.allow_private_targets.
WEBHOOK_REFUSED_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
                          "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"]
GENERATED_HEADER = (
    "# Rendered from helm/durable-streams with {values} by\n"
    "# `scripts/verify-deploy.sh --update`. Do not edit: change the chart or\n"
    "# its values file and render again (CI fails when this file drifts).\n"
)


# ------------------------------------------------------------ framework ---
class CheckFailed(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Skip(Exception):
    pass


@dataclass
class Scenario:
    """One set of values the chart is rendered with."""

    name: str
    values_files: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    # For scenarios that must be refused: a piece of the expected error.
    refused_with: str | None = None
    # The APIs the cluster serves beyond the built-in ones.
    api_versions: list[str] = field(default_factory=lambda: list(MONITORING_APIS))
    release: str = RELEASE
    values: dict[str, Any] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    docs: list[tuple[str, dict]] = field(default_factory=list)


def render_chart(chart: Any, values: dict, release: str, api_versions: list[str]) -> dict[str, str]:
    """`helm template` with --api-versions: helm-python-sdk's render takes
    the capabilities in its options, which Chart.render does not expose."""
    from helm_python import _native  # noqa: PLC0415

    options = {"name": release, "namespace": NAMESPACE, "is_install": True, "api_versions": api_versions}
    return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options)))


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


SCENARIOS = [
    Scenario("default", []),
    Scenario("prod", ["values-prod.yaml"]),
    Scenario("prod-tls", ["values-prod-tls.yaml"]),
    Scenario("prod-mtls", ["values-prod-mtls.yaml"]),
    Scenario("memory", [], {"storage": {"mode": "memory"}, "profile": "default", "metrics": {"separatePort": False}}),
    Scenario("acid-emptydir", [], {"storage": {"mode": "acid"}, "persistence": {"enabled": False}}),
    Scenario(
        "tls-cert-manager-api-probes",
        ["values-prod-tls.yaml"],
        {
            "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}},
            "metrics": {"separatePort": False, "prometheusRule": {"runbookBaseUrl": "https://git.example.invalid/org/durable-streams-server/blob/main"}},
        },
    ),
    Scenario(
        "mtls-separate-client-ca",
        ["values-prod-mtls.yaml"],
        {
            "tls": {"clientCA": {"secretName": "client-ca", "key": "bundle.pem"}, "certManager": {"enabled": False}},
            "config": {"proxy": {"enabled": True, "forwarded_headers": "forwarded", "trusted_proxies": ["10.0.10.15/32"], "identity": {"mode": "header"}},
                       "observability": {"otlp": {"enabled": True, "sampling_ratio": 1}}},
            "networkPolicy": {"extraEgress": [{"ports": [{"port": 4317, "protocol": "TCP"}]}]},
        },
    ),
    Scenario(
        "subscriptions-with-signing-key",
        ["values-prod.yaml"],
        {
            "subscriptions": {"enabled": True, "signingKeySecret": "webhook-signing-key"},
            "config": {"subscriptions": {"retry_max_ms": 30000, "max_subscriptions": 100}},
        },
    ),
    # Monitoring on a cluster without the Prometheus Operator, then forced;
    # labels for a kube-prometheus-stack Prometheus.
    Scenario("prod-without-monitoring-apis", ["values-prod.yaml"], api_versions=[]),
    Scenario("prod-monitoring-forced", ["values-prod.yaml"],
             {"metrics": {"serviceMonitor": {"force": True}, "prometheusRule": {"force": True}}}, api_versions=[]),
    Scenario("prod-kube-prometheus-stack", ["values-prod.yaml"],
             {"metrics": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}, "annotations": {"team": "streams"}},
                          "prometheusRule": {"labels": {"release": "kube-prometheus-stack"}}}}),
    Scenario("api-port-scrape", [], {"metrics": {"separatePort": False, "serviceMonitor": {"enabled": True}}}),
    # A second release in the same namespace as prod-tls-cert-manager.
    Scenario("prod-tls-cert-manager", ["values-prod-tls.yaml"],
             {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}, "backup": {"enabled": True}}),
    Scenario("prod-tls-cert-manager-second-release", ["values-prod-tls.yaml"],
             {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}, "backup": {"enabled": True}},
             release="streams-b"),
    Scenario("prod-mtls-second-release", ["values-prod-mtls.yaml"], release="streams-b"),
    Scenario("openshift", ["values-prod-mtls.yaml"], {"openshift": {"enabled": True}, "backup": {"enabled": True}}),
    # Egress follows the features turned on.
    Scenario("egress-webhooks", ["values-prod.yaml"], {"subscriptions": {"enabled": True}}),
    Scenario("egress-webhooks-private", ["values-prod.yaml"],
             {"subscriptions": {"enabled": True}, "config": {"subscriptions": {"allow_private_targets": True}},
              "networkPolicy": {"egress": {"webhooks": {"cidrs": ["10.0.0.0/8"], "ports": [443, 8443]}}}}),
    Scenario("egress-otlp", ["values-prod.yaml"],
             {"config": {"observability": {"otlp": {"enabled": True, "endpoint": "http://otel-collector.monitoring:4317"}}}}),
    Scenario("egress-otlp-ip-peers", ["values-prod.yaml"],
             {"config": {"observability": {"otlp": {"enabled": True, "endpoint": "https://192.0.2.7:4318", "protocol": "http/protobuf"}}}}),
    Scenario("egress-jwks", ["values-prod.yaml"], {"config": {"auth": {"jwks_url": "https://login.example.com/.well-known/jwks.json"}}}),
    # Ways in from outside the cluster.
    Scenario("ingress-nginx", ["values-prod.yaml"],
             {"ingress": {"enabled": True, "className": "nginx", "hosts": ["streams.example.com"],
                          "tls": [{"secretName": "streams-example-com", "hosts": ["streams.example.com"]}]},
              "config": {"transport": {"connection": {"long_poll_timeout_secs": 90}}}}),
    Scenario("ingress-nginx-tls-backend", ["values-prod-tls.yaml"], {"ingress": {"enabled": True, "className": "nginx", "hosts": ["streams.example.com"]}}),
    Scenario("httproute", ["values-prod.yaml"],
             {"httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                            "hostnames": ["streams.example.com"]},
              "config": {"transport": {"connection": {"sse_reconnect_interval_secs": 120}}}}),
    # Backups.
    Scenario("backup-two-replicas", ["values-prod.yaml"],
             {"replicaCount": 2, "allowMultipleReplicas": True,
              "backup": {"enabled": True, "keep": 2, "schedule": "0 */6 * * *", "timeZone": "Etc/UTC"}}),
    Scenario("backup-acid-existing-claim", [], {"storage": {"mode": "acid"}, "backup": {"enabled": True, "persistence": {"existingClaims": ["nfs-backups"]}}}),
    # Interchangeable pods over PostgreSQL, with and without a CloudNativePG
    # Cluster and the caching tier.
    Scenario("prod-ha", ["values-prod-ha.yaml"]),
    Scenario("prod-ha-cnpg", ["values-prod-ha.yaml"], {"cnpg": {"enabled": True}}, api_versions=MONITORING_APIS + CNPG_APIS),
    Scenario("prod-ha-cache", ["values-prod-ha.yaml"],
             {"cache": {"enabled": True}, "ingress": {"enabled": True, "className": "nginx", "hosts": ["streams.example.com"]}}),
    Scenario("prod-ha-cnpg-cache", ["values-prod-ha.yaml"],
             {"cnpg": {"enabled": True, "name": "streams-db", "synchronous": {"method": "first", "number": 2}, "instances": 5,
                       "parameters": {"max_connections": 200}},
              "cache": {"enabled": True, "port": 8081, "maxSize": "512m"},
              "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}]},
              "networkPolicy": {"apiFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]},
              "config": {"transport": {"connection": {"long_poll_timeout_secs": 90}},
                         "auth": {"query_param": "token"},
                         "proxy": {"enabled": True, "forwarded_headers": "x-forwarded", "trusted_proxies": ["10.0.0.0/8"],
                                   "identity": {"mode": "header", "header_name": "X-Forwarded-User", "require_tls": False}}}},
             api_versions=MONITORING_APIS + CNPG_APIS),
    Scenario("prod-ha-five-replicas", ["values-prod-ha.yaml"],
             {"replicaCount": 5, "postgres": {"existingSecret": "streams-db", "existingSecretKey": "dsn", "caSecret": "streams-db-ca"},
              "networkPolicy": {"egress": {"postgres": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "port": 6432}}}}),
    Scenario("prod-ha-cnpg-forced", ["values-prod-ha.yaml"], {"cnpg": {"enabled": True, "force": True}}, api_versions=[], release="streams-b"),
    Scenario("prod-cache", ["values-prod.yaml"], {"cache": {"enabled": True}}),
    # Refused: the schema or the chart must stop these.
    Scenario("typo-top-level", [], {"replicas": 2}, refused_with="replicas"),
    Scenario("typo-config-key", [], {"config": {"server": {"drain_timeout_sec": 10}}}, refused_with="drain_timeout_sec"),
    Scenario("chart-owned-config-key", [], {"config": {"server": {"bind_address": "0.0.0.0:1"}}}, refused_with="bind_address"),
    Scenario("bad-storage-mode", [], {"storage": {"mode": "disk"}}, refused_with="storage/mode"),
    Scenario("grace-not-above-drain", [], {"terminationGracePeriodSeconds": 20}, refused_with="terminationGracePeriodSeconds"),
    Scenario("mtls-probes-on-api", ["values-prod-mtls.yaml"], {"metrics": {"separatePort": False}}, refused_with="separatePort"),
    Scenario("two-replicas", [], {"replicaCount": 2}, refused_with="allowMultipleReplicas"),
    Scenario("profile-tls-without-tls", [], {"profile": "prod-tls"}, refused_with="profile=prod-tls"),
    Scenario("cert-manager-without-issuer", ["values-prod-tls.yaml"], {"tls": {"certManager": {"enabled": True}}}, refused_with="issuerRef"),
    Scenario("cnpg-without-postgres", [], {"cnpg": {"enabled": True, "force": True}}, refused_with="needs storage.mode=postgres"),
    Scenario("cnpg-without-operator", ["values-prod-ha.yaml"], {"cnpg": {"enabled": True}}, refused_with="serves no postgresql.cnpg.io/v1 Cluster"),
    Scenario("cnpg-sync-all-instances", ["values-prod-ha.yaml"], {"cnpg": {"enabled": True, "instances": 2, "synchronous": {"number": 2}}},
             refused_with="must be below cnpg.instances", api_versions=MONITORING_APIS + CNPG_APIS),
    Scenario("cache-with-tls", ["values-prod-tls.yaml"], {"cache": {"enabled": True}}, refused_with="cache.enabled=true needs tls.mode=http"),
    Scenario("backup-postgres", ["values-prod-ha.yaml"], {"backup": {"enabled": True}}, refused_with="use the database's own backups"),
    Scenario("backup-memory", [], {"storage": {"mode": "memory"}, "backup": {"enabled": True}}, refused_with="use the database's own backups"),
    Scenario("backup-emptydir", [], {"persistence": {"enabled": False}, "backup": {"enabled": True}}, refused_with="cannot reach an emptyDir"),
    Scenario("httproute-without-gateway", [], {"httpRoute": {"enabled": True}}, refused_with="parentRefs"),
]
# Scenario pairs installed side by side in one namespace.
NEIGHBOURS = [
    ("prod-tls-cert-manager", "prod-tls-cert-manager-second-release"),
    ("prod-ha-cnpg", "prod-ha-cnpg-forced"),
    ("prod-mtls", "prod-mtls-second-release"),
]


class Verifier:
    def __init__(self, repo: Path, tools: Path, update: bool, server_bin: Path | None):
        self.repo = repo.resolve()
        self.tools = tools.resolve()
        self.update = update
        self.server_bin = server_bin
        self.work = Path(tempfile.mkdtemp(prefix="verify-deploy-"))
        self.results: list[tuple[str, str]] = []
        self._rendered = False

    # -------------------------------------------------------------- utils
    def path(self, rel: Path | str) -> Path:
        return self.repo / rel

    def tool(self, name: str) -> str:
        found = self.tools / "venv" / "bin" / name
        if found.exists():
            return str(found)
        which = shutil.which(name)
        if not which:
            raise CheckFailed([f"tool {name} is not installed"])
        return which

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, **kwargs)

    def load_yaml(self, rel: Path | str) -> Any:
        return yaml.safe_load(self.path(rel).read_text())

    # ------------------------------------------------------------ render
    def render_all(self) -> None:
        if self._rendered:
            return
        import helm_python as helm  # noqa: PLC0415  (installed by the script)

        base = self.load_yaml(CHART / "values.yaml")
        with helm.Chart.load(str(self.path(CHART))) as chart:
            for scenario in SCENARIOS:
                values: dict[str, Any] = {}
                for name in scenario.values_files:
                    values = deep_merge(values, self.load_yaml(CHART / name) or {})
                values = deep_merge(values, scenario.overrides)
                scenario.values = deep_merge(base, values)
                scenario.docs = []
                try:
                    chart.validate_schema(values)
                    scenario.manifests = render_chart(chart, values, scenario.release, scenario.api_versions)
                except helm.HelmError as error:  # type: ignore[attr-defined]
                    scenario.manifests = {"__error__": str(error)}
                    continue
                for template, text in sorted(scenario.manifests.items()):
                    if not template.endswith((".yaml", ".yml")):
                        continue
                    for doc in yaml.safe_load_all(text):
                        if doc:
                            scenario.docs.append((template, doc))
        self._rendered = True

    def good_scenarios(self) -> list[Scenario]:
        self.render_all()
        return [s for s in SCENARIOS if s.refused_with is None]

    # ------------------------------------------------------------ checks
    def each_scenario(self, check: Callable[[Scenario], Any]) -> list[Any]:
        """Runs check on every good scenario; fails with all their problems, each named by its scenario."""
        results, problems = [], []
        for scenario in self.good_scenarios():
            try:
                results.append(check(scenario))
            except CheckFailed as failed:
                problems += [f"{scenario.name}: {p}" for p in failed.problems]
        if problems:
            raise CheckFailed(problems)
        return results

    def check_render(self) -> str:
        """Every scenario renders; every refused one is refused for its reason."""
        self.render_all()
        problems = []
        for scenario in SCENARIOS:
            error = scenario.manifests.get("__error__")
            if scenario.refused_with is None:
                if error:
                    problems.append(f"{scenario.name}: does not render: {error}")
                elif not scenario.docs:
                    problems.append(f"{scenario.name}: renders no resources")
            elif not error:
                problems.append(f"{scenario.name}: rendered, but must be refused ({scenario.refused_with})")
            elif scenario.refused_with not in error:
                problems.append(f"{scenario.name}: refused for another reason: {error}")
        if problems:
            raise CheckFailed(problems)
        good = len(self.good_scenarios())
        return f"{good} value sets render, {len(SCENARIOS) - good} bad ones are refused"

    def check_chart_lint(self) -> str:
        """Helm's own linter, strict, with the defaults and each profile."""
        import helm_python as helm  # noqa: PLC0415

        problems = []
        runs = [("values.yaml", None)] + [(f"values-{p}.yaml", self.load_yaml(CHART / f"values-{p}.yaml")) for p in PROFILES]
        for label, values in runs:
            report = helm.lint(str(self.path(CHART)), values, strict=True, namespace=NAMESPACE)
            for message in report.get("messages") or []:
                if message.get("severity", 0) >= 2:
                    problems.append(f"{label}: {message.get('path')}: {message.get('error')}")
            for error in report.get("errors") or []:
                problems.append(f"{label}: {error}")
        if problems:
            raise CheckFailed(problems)
        return f"helm lint --strict clean for {len(runs)} value sets (Helm {helm.helm_sdk_version()})"

    def check_yamllint(self) -> str:
        """yamllint (strict) on every YAML source and on the rendered chart."""
        config = str(self.path(TOOLING / "yamllint.yaml"))
        sources = sorted(
            {str(p) for p in self.path("deploy").rglob("*.y*ml")}
            | {str(self.path(CHART / "Chart.yaml"))}
            | {str(p) for p in self.path(CHART).glob("values*.yaml")}
            | {str(p) for p in self.path(CHART / "files").rglob("*.y*ml")}
        )
        problems = []
        result = self.run([self.tool("yamllint"), "--strict", "-f", "parsable", "-c", config, *sources])
        if result.returncode != 0:
            problems += [line.replace(str(self.repo) + "/", "") for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        rendered = 0
        for scenario in self.good_scenarios():
            for template, text in scenario.manifests.items():
                if not template.endswith(".yaml") or not text.strip():
                    continue
                rendered += 1
                out = self.work / "yamllint" / scenario.name / template
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text)
        result = self.run([self.tool("yamllint"), "--strict", "-f", "parsable", "-c", config, str(self.work / "yamllint")])
        if result.returncode != 0:
            problems += [line.replace(str(self.work / "yamllint") + "/", "rendered ") for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        if problems:
            raise CheckFailed(problems)
        return f"{len(sources)} YAML files and {rendered} rendered templates are clean"

    def check_kubernetes_schemas(self) -> str:
        """kubernetes-validate --strict on every built-in resource, failing on warnings."""
        problems = []
        files = []
        for scenario in self.good_scenarios():
            docs = [doc for _, doc in scenario.docs if not doc["apiVersion"].startswith(CRD_GROUPS)]
            path = self.work / "kubernetes-validate" / f"chart-{scenario.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            files.append(path)
        for path in sorted(self.path(MANIFESTS).rglob("*.yaml")):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            if path.name == "kustomization.yaml":
                continue
            builtin = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
            if builtin:
                out = self.work / "kubernetes-validate" / ("deploy-" + str(path.relative_to(self.path(MANIFESTS))).replace("/", "-"))
                out.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
                files.append(out)
        args = [self.tool("kubernetes-validate"), "--strict"]
        for version in KUBE_VERSIONS:
            args += ["-k", version]
        result = self.run(args + [str(f) for f in files])
        count = 0
        for line in (result.stdout + result.stderr).splitlines():
            if line.startswith("INFO"):
                count += 1
            elif line.strip():
                problems.append(line.replace(str(self.work / "kubernetes-validate") + "/", ""))
        if result.returncode != 0 and not problems:
            problems.append(f"kubernetes-validate exited {result.returncode}")
        if problems:
            raise CheckFailed(problems)
        return f"{count} resource validations passed (Kubernetes {', '.join(KUBE_VERSIONS)}, strict)"

    def check_custom_resources_and_dashboards(self) -> str:
        """CRD schemas and field names (npm models), dashboards against @grafana/schema."""
        crds = []
        for scenario in self.good_scenarios():
            for template, doc in scenario.docs:
                if doc["apiVersion"].startswith(CRD_GROUPS):
                    crds.append({"source": f"{scenario.name}:{template}", "doc": doc})
        for path in sorted(self.path(MANIFESTS).rglob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("apiVersion", "").startswith(CRD_GROUPS):
                    crds.append({"source": str(path.relative_to(self.repo)), "doc": doc})
        dashboards = []
        for path in sorted(self.path(GRAFANA).glob("*.json")):
            dashboards.append({"source": str(path.relative_to(self.repo)), "doc": json.loads(path.read_text())})
        kinds = {c["doc"]["kind"] for c in crds}
        missing = {"ServiceMonitor", "PrometheusRule", "Certificate", "HTTPRoute", "Cluster"} - kinds
        if missing:
            raise CheckFailed([f"no rendered {', '.join(sorted(missing))} to check: a toggle or scenario is broken"])
        # CloudNativePG has no npm models: its CRD schemas, read here.
        clusters = [c for c in crds if c["doc"]["apiVersion"].startswith("postgresql.cnpg.io/")]
        crds = [c for c in crds if c not in clusters]
        problems = []
        for name in CNPG_CRDS:
            schema = json.loads(self.path(TOOLING / "crds" / name).read_text())
            for item in clusters:
                problems += [f"{item['source']}: {name}: {problem}" for problem in crd_problems(item["doc"], schema)]
        if problems:
            raise CheckFailed(problems)
        node_dir = self.tools / "node"
        input_path = self.work / "schemas-input.json"
        input_path.write_text(json.dumps({"crds": crds, "dashboards": dashboards}))
        script = self.path(TOOLING / "check-schemas.mjs")
        # The script resolves its packages from its own location.
        shutil.copy(script, node_dir / "check-schemas.mjs")
        result = self.run(["node", str(node_dir / "check-schemas.mjs"), str(node_dir / "work"), str(input_path)])
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise CheckFailed([line.removeprefix("FAIL ") for line in output.splitlines() if line.strip()] or [f"exit {result.returncode}"])
        return output.splitlines()[-1].removeprefix("ok: ") + f"; {len(clusters)} CloudNativePG Clusters match {len(CNPG_CRDS)} CRD versions"

    def check_pod_policy(self) -> str:
        """What the issue promises about the pods, read off every rendered workload."""
        checked = len(self.each_scenario(self._check_workload))
        return f"{checked} workloads: probes, non-root, read-only root, TLS directory mounts, drain timing, config wiring"

    def _check_workload(self, scenario: Scenario) -> None:
        p: list[str] = []
        v = scenario.values
        docs = [doc for _, doc in scenario.docs]
        by_kind: dict[str, list[dict]] = {}
        for doc in docs:
            by_kind.setdefault(doc["kind"], []).append(doc)
        durable = v["storage"]["mode"] in VOLUME_MODES
        workloads = cluster.server_workloads(docs)
        if len(workloads) != 1:
            raise CheckFailed([f"expected one server workload, got {[w['kind'] for w in workloads]}"])
        workload = workloads[0]
        expected_kind = "StatefulSet" if durable else "Deployment"
        if workload["kind"] != expected_kind:
            p.append(f"storage.mode={v['storage']['mode']} must run a {expected_kind}, not a {workload['kind']}")
        spec = workload["spec"]
        if durable and v["persistence"]["enabled"] and not spec.get("volumeClaimTemplates"):
            p.append("durable storage with persistence needs volumeClaimTemplates")
        pod = spec["template"]["spec"]
        containers = pod["containers"]
        container = containers[0]
        # Every pod the chart makes (server, backup Jobs, helm test) is
        # locked down alike; on OpenShift without fixed IDs.
        for owner, template in cluster.pod_templates(docs):
            p += [f"{owner}: {problem}" for problem in security_problems(template["spec"], v["openshift"]["enabled"])]
        # The server configuration as the pod will read it.
        cms = [cm for cm in by_kind.get("ConfigMap", []) if "server.toml" in cm.get("data", {})]
        if len(cms) != 1:
            raise CheckFailed(p + ["expected one ConfigMap with server.toml"])
        config = tomllib.loads(cms[0]["data"]["server.toml"])
        args = container.get("args", [])
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        volumes = {vol["name"]: vol for vol in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        config_arg = args[args.index("--config") + 1] if "--config" in args[:-1] else ""
        config_mount = mounts.get(str(Path(config_arg).parent), {})
        if "configMap" not in volumes.get(config_mount.get("name", ""), {}):
            p.append(f"args {args} must pass --config from the mounted ConfigMap")
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if env.get("DS_PROFILE") != v["profile"]:
            p.append(f"DS_PROFILE must be {v['profile']}")
        for m in container.get("volumeMounts", []):
            if "subPath" in m or "subPathExpr" in m:
                p.append(f"volumeMount {m['name']} uses subPath: Kubernetes never updates those (no hot reload)")
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        bind = config["server"]["bind_address"]
        if int(bind.rsplit(":", 1)[1]) != ports.get("api"):
            p.append(f"server.bind_address {bind} does not match container port api={ports.get('api')}")
        metrics_bind = config.get("observability", {}).get("metrics", {}).get("bind_address")
        separate = v["metrics"]["separatePort"]
        if separate:
            if not metrics_bind or int(metrics_bind.rsplit(":", 1)[1]) != ports.get("metrics"):
                p.append(f"observability.metrics.bind_address {metrics_bind} does not match container port metrics={ports.get('metrics')}")
        elif metrics_bind:
            p.append("observability.metrics.bind_address set without the metrics container port")
        tls_mode = config.get("transport", {}).get("mode", "http")
        if tls_mode != v["tls"]["mode"]:
            p.append(f"transport.mode {tls_mode} != tls.mode {v['tls']['mode']}")
        # Probes: /healthz for startup and liveness, /readyz for readiness,
        # on a port that answers without a client certificate.
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (container.get(probe) or {}).get("httpGet")
            if not get:
                p.append(f"{probe} must be an httpGet probe")
                continue
            if get.get("path") != path:
                p.append(f"{probe} must probe {path}, not {get.get('path')}")
            port = get.get("port")
            if port not in ports:
                p.append(f"{probe} port {port} is not a container port")
            if port == "metrics":
                if get.get("scheme", "HTTP") != "HTTP":
                    p.append(f"{probe} on the plain metrics port must use HTTP")
            else:
                want = "HTTPS" if tls_mode != "http" else "HTTP"
                if get.get("scheme", "HTTP") != want:
                    p.append(f"{probe} on the API port must use {want} in transport.mode={tls_mode}")
                if tls_mode == "mtls":
                    p.append(f"{probe} on the API port cannot pass mTLS (kubelet has no client certificate)")
        # Storage: the data directory is the mounted volume.
        data_dir = config.get("storage", {}).get("data_dir")
        if durable:
            mount = mounts.get(data_dir or "")
            if not mount:
                p.append(f"storage.data_dir {data_dir} is not a volume mount")
            elif mount["name"] not in claims and mount["name"] not in volumes:
                p.append(f"data volume {mount['name']} is neither a claim template nor a volume")
            elif mount.get("readOnly"):
                p.append("the data volume must be writable")
        # TLS files: each path's directory is a read-only Secret volume.
        tls = config.get("transport", {}).get("tls", {})
        wanted_keys = {"http": set(), "tls": {"cert_path", "key_path"}, "mtls": {"cert_path", "key_path", "client_ca_path"}}[tls_mode]
        present = {k for k in ("cert_path", "key_path", "client_ca_path") if k in tls}
        if present != wanted_keys:
            p.append(f"transport.tls paths {sorted(present)} do not fit transport.mode={tls_mode}")
        for key in sorted(present):
            directory = str(Path(tls[key]).parent)
            mount = mounts.get(directory)
            if not mount:
                p.append(f"transport.tls.{key} {tls[key]}: its directory {directory} is not mounted as a directory")
                continue
            volume = volumes.get(mount["name"], {})
            if "secret" not in volume:
                p.append(f"transport.tls.{key}: {directory} must come from a Secret")
            if not mount.get("readOnly"):
                p.append(f"the TLS mount {directory} must be read-only")
        if tls_mode != "http":
            secret_names = {vol["secret"]["secretName"] for vol in volumes.values() if "secret" in vol}
            want_secret = v["tls"]["secretName"] or f"{cluster.fullname(scenario.release)}-tls"
            if want_secret not in secret_names:
                p.append(f"the TLS Secret {want_secret} is not mounted")
            if v["tls"]["certManager"]["enabled"]:
                certs = by_kind.get("Certificate", [])
                if not certs or certs[0]["spec"]["secretName"] != want_secret:
                    p.append("the cert-manager Certificate must write the mounted Secret")
        # Drain: the kubelet waits longer than the server drains.
        drain = config["server"].get("drain_timeout_secs", 25)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            p.append(f"terminationGracePeriodSeconds {grace} must exceed server.drain_timeout_secs {drain}")
        # Pods roll when the configuration changes, and only then.
        annotations = spec["template"]["metadata"].get("annotations", {})
        if annotations.get("checksum/config") != hashlib.sha256(cms[0]["data"]["server.toml"].encode()).hexdigest():
            p.append("checksum/config must be the sha256 of the ConfigMap's server.toml (and of nothing else)")
        # The server's Services route to named container ports.
        for svc in by_kind.get("Service", []):
            if not cluster.selector_matches({"matchLabels": svc["spec"].get("selector") or {}}, spec["template"]["metadata"]["labels"]):
                continue
            for port in svc["spec"]["ports"]:
                if port["targetPort"] not in ports:
                    p.append(f"Service {svc['metadata']['name']} targets unknown port {port['targetPort']}")
        headless = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"]
        if not headless:
            p.append("a headless Service is required")
        elif workload["kind"] == "StatefulSet" and spec.get("serviceName") != headless[0]["metadata"]["name"]:
            p.append("the StatefulSet's serviceName must be the headless Service")
        for kind in ("ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"):
            if not by_kind.get(kind):
                p.append(f"a {kind} is expected with the default toggles")
        for owner, template in cluster.pod_templates(docs):
            labels = template["metadata"]["labels"]
            for constraint in template["spec"].get("topologySpreadConstraints", []):
                selector = constraint.get("labelSelector", {}).get("matchLabels", {})
                if not selector or any(labels.get(k) != val for k, val in selector.items()):
                    p.append(f"{owner}: topologySpreadConstraints must select the pod's own labels")
        if v["storage"]["mode"] == "postgres":
            p += self._shared_workload_problems(scenario, workload, by_kind)
        if p:
            raise CheckFailed(p)

    def _shared_workload_problems(self, scenario: Scenario, workload: dict, by_kind: dict[str, list[dict]]) -> list[str]:
        """storage.mode=postgres: interchangeable pods that survive rollouts
        and drains, reading the database URL from a Secret."""
        p: list[str] = []
        v = scenario.values
        spec = workload["spec"]
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        replicas = spec.get("replicas", 1)
        if replicas != (v["replicaCount"] if v["replicaCount"] is not None else 3):
            p.append(f"replicas {replicas}: expected replicaCount or 3 by default")
        rolling = cluster.nested(spec, "strategy", "rollingUpdate", default={}) or {}
        if cluster.nested(spec, "strategy", "type") != "RollingUpdate" or rolling.get("maxUnavailable") != 0:
            p.append(f"rolling updates must keep every pod until its successor is ready (maxUnavailable 0), got {spec.get('strategy')}")
        # Voluntary disruptions leave a majority running.
        budgets = [b for b in by_kind.get("PodDisruptionBudget", []) if cluster.selector_matches(b["spec"]["selector"], spec["template"]["metadata"]["labels"])]
        if len(budgets) != 1:
            p.append(f"expected one PodDisruptionBudget for the server pods, got {len(budgets)}")
        for budget in budgets:
            down = cluster.disruptions_allowed(budget["spec"], replicas)
            if down > (replicas - 1) // 2:
                p.append(f"the PodDisruptionBudget lets {down} of {replicas} pods go: a majority must stay")
        keys = {c["topologyKey"] for c in pod.get("topologySpreadConstraints") or []}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
            if key not in keys:
                p.append(f"no topologySpreadConstraint over {key}")
        # No volume: the database holds everything; backups are its own.
        if spec.get("volumeClaimTemplates") or by_kind.get("PersistentVolumeClaim") or by_kind.get("CronJob"):
            p.append("postgres mode keeps no volume: no claim, no claim template, no backup CronJob")
        for volume in pod.get("volumes") or []:
            if "persistentVolumeClaim" in volume:
                p.append(f"volume {volume['name']} is a claim: postgres mode keeps nothing on the pod")
        if "data_dir" in tomllib.loads(next(cm for cm in by_kind["ConfigMap"] if "server.toml" in cm.get("data", {}))["data"]["server.toml"]).get("storage", {}):
            p.append("postgres mode sets no storage.data_dir")
        # The URL (with its password) from a Secret, never the ConfigMap.
        want = (f"{cluster_name(scenario)}-app", "uri") if v["cnpg"]["enabled"] else \
            (v["postgres"]["existingSecret"] or f"{cluster.fullname(scenario.release)}-postgres", v["postgres"]["existingSecretKey"])
        ref = cluster.env_secret_ref(container, "DS_STORAGE__POSTGRES__URL")
        if ref != want:
            p.append(f"DS_STORAGE__POSTGRES__URL must come from secretKeyRef {want[0]}/{want[1]}, got {ref}")
        ca_secret = f"{cluster_name(scenario)}-ca" if v["cnpg"]["enabled"] else v["postgres"]["caSecret"]
        if ca_secret:
            mounted = {vol["secret"]["secretName"]: vol for vol in pod.get("volumes") or [] if "secret" in vol}
            items = [i["key"] for i in (mounted.get(ca_secret, {}).get("secret", {}).get("items") or [])]
            if items != (["ca.crt"] if v["cnpg"]["enabled"] else [v["postgres"]["caSecretKey"]]):
                p.append(f"the database CA Secret {ca_secret} must be mounted with its CA certificate only, got items {items}")
        if v["cnpg"]["enabled"]:
            value = next((e.get("value", "") for e in container.get("env", []) if e["name"] == "DS_STORAGE__POSTGRES__URL"), "")
            if "sslmode=verify-full" not in value or "sslrootcert=/etc/durable-streams/postgres-ca/ca.crt" not in value:
                p.append("with cnpg the URL must verify the server against the cluster's CA (sslmode=verify-full, sslrootcert)")
            databases = [d for d in by_kind.get("Cluster", []) if d["metadata"]["name"] == cluster_name(scenario)]
            if len(databases) != 1:
                p.append(f"expected the CloudNativePG Cluster {cluster_name(scenario)}")
            for database in databases:
                dspec = database["spec"]
                sync = cluster.nested(dspec, "postgresql", "synchronous", default={}) or {}
                if dspec.get("instances") != v["cnpg"]["instances"] or dspec.get("instances", 0) < 3:
                    p.append(f"the Cluster must run cnpg.instances ({v['cnpg']['instances']}) instances, at least 3")
                if sync.get("method") not in ("any", "first") or not 1 <= sync.get("number", 0) < dspec.get("instances", 0):
                    p.append(f"the Cluster must replicate synchronously to at least one standby, got {sync}")
                if cluster.nested(dspec, "bootstrap", "initdb", "owner") != v["cnpg"]["owner"]:
                    p.append("the Cluster's bootstrap owner must be cnpg.owner, the user of its -app Secret")
        return p

    def check_monitoring(self) -> str:
        """ServiceMonitor, PrometheusRule and dashboards as kube-prometheus-stack and Grafana read them."""
        scraped = sum(self.each_scenario(self._check_monitoring))
        return (f"{scraped} pods scraped exactly once; objects only where the API is served or forced, "
                "with their labels; NOTES warns when skipped; rules and release-scoped dashboards match their sources")

    def _check_monitoring(self, scenario: Scenario) -> int:
        p: list[str] = []
        v = scenario.values
        docs = [doc for _, doc in scenario.docs]
        notes = next((text for name, text in scenario.manifests.items() if name.endswith("NOTES.txt")), "")
        scraped = 0
        for key, kind in (("serviceMonitor", "ServiceMonitor"), ("prometheusRule", "PrometheusRule")):
            values = v["metrics"][key]
            served = f"monitoring.coreos.com/v1/{kind}" in scenario.api_versions
            rendered = [d for d in docs if d["kind"] == kind]
            want = values["enabled"] and (served or values["force"])
            if want and len(rendered) != 1:
                p.append(f"metrics.{key}.enabled{' (forced)' if not served else ''}: expected one {kind}, got {len(rendered)}")
            if not want and rendered:
                p.append(f"a {kind} is rendered although {'the cluster does not serve its API' if values['enabled'] else 'it is disabled'}")
            if values["enabled"] and not want and f"serves no monitoring.coreos.com/v1 {kind}" not in notes:
                p.append(f"NOTES must warn that no {kind} was created (API not served)")
            for doc in rendered:
                labels = doc["metadata"].get("labels") or {}
                for label, value in values["labels"].items():
                    if labels.get(label) != value:
                        p.append(f"{kind} lacks label {label}={value} from metrics.{key}.labels")
                for name, value in values["annotations"].items():
                    if (doc["metadata"].get("annotations") or {}).get(name) != value:
                        p.append(f"{kind} lacks annotation {name} from metrics.{key}.annotations")
            if rendered and "release" not in values["labels"] and "selects `release: <its release>`" not in notes:
                p.append(f"NOTES must tell how a kube-prometheus-stack Prometheus selects the {kind}")
        for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
            spec = monitor["spec"]
            if spec.get("namespaceSelector"):
                p.append("the ServiceMonitor must not pin a namespaceSelector (a kustomize namespace: would leave it behind)")
            endpoint = (spec.get("endpoints") or [{}])[0]
            if endpoint.get("port") != ("metrics" if v["metrics"]["separatePort"] else "api") or endpoint.get("path") != v["metrics"]["path"]:
                p.append(f"ServiceMonitor endpoint {endpoint} does not scrape the metrics endpoint")
            if spec.get("jobLabel") != "app.kubernetes.io/part-of":
                p.append("ServiceMonitor must set the job label the alert rules expect")
            targets = cluster.scrape_targets(docs)
            for owner, _ in cluster.pod_templates(docs):
                through = targets.get(owner, [])
                server = owner in cluster.server_owners(docs)
                if server and len(through) != 1:
                    p.append(f"{owner}: each pod must be scraped once, but it is scraped through {through or 'no Service'}")
                if not server and through:
                    p.append(f"{owner}: not a server pod, but scraped through {through}")
                scraped += server
        for rule in (d for d in docs if d["kind"] == "PrometheusRule"):
            expected = self.load_yaml(RULES)["groups"]
            base = v["metrics"]["prometheusRule"]["runbookBaseUrl"]
            for group in expected:
                for r in group["rules"]:
                    if base and "runbook_url" in r.get("annotations", {}):
                        r["annotations"]["runbook_url"] = base.rstrip("/") + "/" + r["annotations"]["runbook_url"]
                    if "alert" in r and v["metrics"]["prometheusRule"]["additionalAlertLabels"]:
                        r["labels"] = {**v["metrics"]["prometheusRule"]["additionalAlertLabels"], **r.get("labels", {})}
            if rule["spec"].get("groups") != expected:
                p.append(f"the PrometheusRule's groups differ from {RULES}")
        if v["metrics"]["dashboards"]["enabled"]:
            cm = next((c for c in docs if c["kind"] == "ConfigMap" and c["metadata"]["name"].endswith("-dashboards")), None)
            got = {k: json.loads(text) for k, text in ((cm or {}).get("data") or {}).items()}
            for source in sorted(self.path(GRAFANA).glob("*.json")):
                want = json.loads(source.read_text())
                dashboard = got.get(source.name)
                if dashboard is None:
                    p.append(f"the dashboards ConfigMap lacks {source.name}")
                    continue
                uid, title = dashboard.get("uid", ""), dashboard.get("title", "")
                if uid == want["uid"] or not uid.startswith(want["uid"][:20]) or len(uid) > 40:
                    p.append(f"{source.name}: uid {uid!r} must derive from {want['uid']!r} and the release (at most 40 characters)")
                if scenario.release not in title:
                    p.append(f"{source.name}: title {title!r} must name the release")
                links = {link.get("url") for link in dashboard.get("links") or []}
                for link in links:
                    if link and link.startswith("/d/") and link[3:] not in {d.get("uid") for d in got.values()}:
                        p.append(f"{source.name}: link {link} points at no dashboard of this release")
                rest = {k: val for k, val in dashboard.items() if k not in ("uid", "title", "links")}
                if rest != {k: val for k, val in want.items() if k not in ("uid", "title", "links")}:
                    p.append(f"{source.name}: the dashboards ConfigMap differs from {GRAFANA}")
            if not all((cm or {}).get("metadata", {}).get("labels", {}).get(k) == val for k, val in v["metrics"]["dashboards"]["labels"].items()):
                p.append("the dashboards ConfigMap lacks the sidecar label")
        if p:
            raise CheckFailed(p)
        return scraped

    def check_names(self) -> str:
        """Two releases in one namespace: no object, Secret, claim or dashboard is shared; helper pods are selected by nothing of the server."""
        problems = []
        self.render_all()
        by_name = {s.name: s for s in SCENARIOS}
        for first, second in NEIGHBOURS:
            a, b = by_name[first], by_name[second]
            if "__error__" in a.manifests or "__error__" in b.manifests:
                problems.append(f"{first} + {second}: does not render")
                continue
            docs_a, docs_b = [d for _, d in a.docs], [d for _, d in b.docs]
            for key in sorted(set(cluster.object_keys(docs_a)) & set(cluster.object_keys(docs_b))):
                problems.append(f"{first} + {second}: both create {key[0]} {key[1]}")
            for label, used in (("Secret", cluster.secrets_used), ("PersistentVolumeClaim", cluster.claims_used)):
                shared = set(used(docs_a)) & set(used(docs_b))
                for name in sorted(shared):
                    problems.append(f"{first} + {second}: both use {label} {name} ({used(docs_a)[name]}; {used(docs_b)[name]})")
            uids = [json.loads(text).get("uid") for docs in (docs_a, docs_b) for d in docs
                    if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards") for text in d["data"].values()]
            if len(uids) != len(set(uids)):
                problems.append(f"{first} + {second}: dashboard uids collide: {sorted(uids)}")
        for scenario in self.good_scenarios():
            docs = [d for _, d in scenario.docs]
            pods = cluster.pod_templates(docs)
            for doc in (d for d in docs if cluster.is_server(d)):
                selector = None
                if doc["kind"] == "Service":
                    selector = {"matchLabels": doc["spec"].get("selector") or {}}
                elif doc["kind"] in ("PodDisruptionBudget",):
                    selector = doc["spec"]["selector"]
                elif doc["kind"] == "NetworkPolicy":
                    selector = doc["spec"]["podSelector"]
                if selector is None:
                    continue
                for owner, pod in pods:
                    if owner not in cluster.server_owners(docs) and cluster.selector_matches(selector, pod["metadata"].get("labels") or {}):
                        problems.append(f"{scenario.name}: {doc['kind']} {doc['metadata']['name']} selects {owner}, which is not a server pod")
        if problems:
            raise CheckFailed(problems)
        return f"{len(NEIGHBOURS)} pairs of releases share no object, Secret, claim or dashboard uid; no server selector reaches a helper pod"

    def check_egress(self) -> str:
        """The NetworkPolicy lets the server reach what its turned-on features need, and nothing else."""
        problems = []
        count = 0
        for scenario in self.good_scenarios():
            v = scenario.values
            policy = next((d for _, d in scenario.docs if d["kind"] == "NetworkPolicy" and cluster.is_server(d)), None)
            if not policy or not v["networkPolicy"]["restrictEgress"]:
                continue
            count += 1
            config = v.get("config") or {}
            # What each feature turned on may reach: (what, port, address or None for any).
            permits: list[tuple[str, int, Any]] = [("DNS", 53, None)]
            webhooks = v["networkPolicy"]["egress"]["webhooks"]
            private_ok = bool(cluster.nested(config, "subscriptions", "allow_private_targets"))
            if v["subscriptions"]["enabled"]:
                for port in webhooks["ports"]:
                    for cidr in webhooks["cidrs"]:
                        permits.append(("webhooks", port, (cidr, private_ok)))
            probes = {(PUBLIC_IP, 443), (PRIVATE_IP, 443), (PUBLIC_IP, 4317), (PUBLIC_IP, 5432), ("10.96.0.10", 53)}
            probes |= {(ip, port) for port in webhooks["ports"] for ip in (PUBLIC_IP, PRIVATE_IP)}
            otlp = cluster.nested(config, "observability", "otlp", default={}) or {}
            for what, url, on in (("OTLP", otlp.get("endpoint", "http://localhost:4317"), otlp.get("enabled")),
                                  ("JWKS", cluster.nested(config, "auth", "jwks_url"), True)):
                if not url or not on:
                    continue
                parsed = urllib.parse.urlsplit(url)
                port = parsed.port or (443 if parsed.scheme == "https" else 80)
                host = parsed.hostname or ""
                if host in ("localhost", "127.0.0.1", "::1"):
                    continue
                ip = host if re.fullmatch(r"[0-9.]+", host) else None
                permits.append((what, port, ip))
                probes |= {(ip or PUBLIC_IP, port), (PRIVATE_IP, port)}
            if v["storage"]["mode"] == "postgres":
                postgres = v["networkPolicy"]["egress"]["postgres"]
                peers = postgres["to"] or ([{"podSelector": {"matchLabels": {"cnpg.io/cluster": cluster_name(scenario)}}}] if v["cnpg"]["enabled"] else [])
                ips = [peer["ipBlock"]["cidr"].split("/")[0] for peer in peers if "ipBlock" in peer]
                for ip in ips or ([] if peers else [None]):
                    permits.append(("PostgreSQL", postgres["port"], ip))
                probes |= {(PUBLIC_IP, postgres["port"]), (PRIVATE_IP, postgres["port"])} | {(ip, postgres["port"]) for ip in ips}
                # Pod peers (the CloudNativePG instances) match no address:
                # the rule must name them.
                for peer in (p for p in peers if "ipBlock" not in p):
                    if not any(peer in (rule.get("to") or []) and {"port": postgres["port"], "protocol": "TCP"} in (rule.get("ports") or [])
                               for rule in policy["spec"].get("egress") or []):
                        problems.append(f"{scenario.name}: PostgreSQL egress must reach {peer} on port {postgres['port']}")
            extra = {"spec": {"policyTypes": ["Egress"], "egress": v["networkPolicy"]["extraEgress"]}}
            wanted = []
            for address, port in sorted(probes):
                allowed = [what for what, p_port, target in permits if p_port == port and permitted(target, address)]
                if v["networkPolicy"]["extraEgress"] and cluster.egress_allows(extra, address, port):
                    allowed.append("extraEgress")
                wanted.append((address, port, bool(allowed), f"{'/'.join(allowed) or 'nothing turned on'}"))
            for address, port, allowed, what in wanted:
                if cluster.egress_allows(policy, address, port) != allowed:
                    problems.append(f"{scenario.name}: {what} ({address}:{port}) must be {'allowed' if allowed else 'refused'}")
        if problems:
            raise CheckFailed(problems)
        return f"{count} NetworkPolicies allow DNS, webhooks, OTLP, JWKS and PostgreSQL exactly when turned on"

    def check_ingress(self) -> str:
        """Ingress and HTTPRoute keep SSE and long-poll working: no buffering, timeouts above the long-poll and SSE intervals."""
        problems = []
        seen = 0
        for scenario in self.good_scenarios():
            v = scenario.values
            docs = [d for _, d in scenario.docs]
            connection = cluster.nested(v, "config", "transport", "connection", default={}) or {}
            long_poll = connection.get("long_poll_timeout_secs", 30)
            sse = connection.get("sse_reconnect_interval_secs", 60) or 3600
            needed = max(long_poll, sse)
            service = next((d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"), None)
            if service is None:
                continue  # check_render reports it
            if v["cache"]["enabled"]:
                # Readers go through the caching tier.
                service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == f"{cluster.fullname(scenario.release)}-cache")
            ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            api_port = "http" if v["cache"]["enabled"] else "api"
            for ingress in (d for d in docs if d["kind"] == "Ingress"):
                seen += 1
                a = ingress["metadata"].get("annotations") or {}
                if v["ingress"]["nginx"]:
                    if a.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
                        problems.append(f"{scenario.name}: ingress-nginx must not buffer responses (SSE, long-poll)")
                    for key in ("proxy-read-timeout", "proxy-send-timeout"):
                        if int(a.get(f"nginx.ingress.kubernetes.io/{key}", 60)) <= needed:
                            problems.append(f"{scenario.name}: ingress-nginx {key} must exceed {needed} s (long-poll {long_poll} s, SSE {sse} s)")
                    https = v["tls"]["mode"] != "http"
                    if (a.get("nginx.ingress.kubernetes.io/backend-protocol") == "HTTPS") != https:
                        problems.append(f"{scenario.name}: ingress-nginx backend-protocol must be {'HTTPS' if https else 'HTTP'} for tls.mode={v['tls']['mode']}")
                for rule in ingress["spec"]["rules"]:
                    for path in rule["http"]["paths"]:
                        backend = path["backend"]["service"]
                        if backend["name"] != service["metadata"]["name"] or backend["port"].get("name") != api_port:
                            problems.append(f"{scenario.name}: Ingress backend {backend} is not {service['metadata']['name']} port {api_port}")
            for route in (d for d in docs if d["kind"] == "HTTPRoute"):
                seen += 1
                for rule in route["spec"]["rules"]:
                    timeouts = rule.get("timeouts") or {}
                    for key in ("request", "backendRequest"):
                        if go_duration_secs(timeouts.get(key, "15s")) <= needed:
                            problems.append(f"{scenario.name}: HTTPRoute timeouts.{key} must exceed {needed} s")
                    for ref in rule["backendRefs"]:
                        if ref["name"] != service["metadata"]["name"] or ref["port"] != ports[api_port]:
                            problems.append(f"{scenario.name}: HTTPRoute backend {ref} is not {service['metadata']['name']} port {api_port}")
        if not seen:
            problems.append("no scenario renders an Ingress or HTTPRoute")
        if problems:
            raise CheckFailed(problems)
        return f"{seen} Ingress/HTTPRoute objects: unbuffered, timeouts above the long-poll and SSE intervals, backend on the API port or the cache"

    def check_cache(self) -> str:
        """The caching tier: the chart serves deploy/nginx's config with only its chart: lines set, right for the server's timeouts and credentials; nginx -t accepts it."""
        deploy = self.path(CACHE_CONF).read_text()
        problems = [f"{CACHE_CONF}: {p}" for p in cache_conf_problems(deploy, {})]
        seen = []
        for scenario in self.good_scenarios():
            docs = [d for _, d in scenario.docs]
            name = f"{cluster.fullname(scenario.release)}-cache"
            objects = [d for d in docs if d["metadata"]["name"] == name]
            if not scenario.values["cache"]["enabled"]:
                if objects:
                    problems.append(f"{scenario.name}: cache objects rendered with cache.enabled=false")
                continue
            seen.append(scenario.name)
            try:
                problems += [f"{scenario.name}: {p}" for p in self._cache_problems(scenario, deploy)]
            except (KeyError, StopIteration, ValueError) as error:
                problems.append(f"{scenario.name}: the cache objects are incomplete: {error!r}")
        if not seen:
            problems.append("no scenario renders the cache")
        if problems:
            raise CheckFailed(problems)
        return f"{len(seen)} caching tiers: nginx.conf as in {CACHE_CONF} with its chart: lines set, accepted by nginx -t, wired to the server's Service"

    def _cache_problems(self, scenario: Scenario, deploy: str) -> list[str]:
        p: list[str] = []
        v = scenario.values
        docs = [d for _, d in scenario.docs]
        name = f"{cluster.fullname(scenario.release)}-cache"
        by_kind = {d["kind"]: d for d in docs if d["metadata"]["name"] == name}
        conf = by_kind["ConfigMap"]["data"]["nginx.conf"]
        rendered, source = conf.splitlines(), deploy.splitlines()
        if len(rendered) != len(source):
            p.append(f"nginx.conf has {len(rendered)} lines, {CACHE_CONF} {len(source)}")
        for number, (got, want) in enumerate(zip(rendered, source), 1):
            if got != want and "# chart:" not in want:
                p.append(f"nginx.conf line {number} differs from {CACHE_CONF} and is not a chart: line: {got!r}")
        server = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == cluster.fullname(scenario.release))
        api = next(port["port"] for port in server["spec"]["ports"] if port["name"] == "api")
        p += cache_conf_problems(conf, {
            "upstream": f"{server['metadata']['name']}.{NAMESPACE}.svc:{api}",
            "listen": v["cache"]["port"],
            "max_size": v["cache"]["maxSize"],
            "connection": cluster.nested(v, "config", "transport", "connection", default={}) or {},
            "query_param": cluster.nested(v, "config", "auth", "query_param") or "access_token",
            "identity_header": cluster.nested(v, "config", "proxy", "identity", "header_name") or "x-client-identity",
        })
        deployment, service = by_kind["Deployment"], by_kind["Service"]
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        command = container.get("command", []) + container.get("args", [])
        mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts") or []}
        volumes = {vol["name"]: vol for vol in pod["spec"].get("volumes") or []}
        conf_path = Path(command[command.index("-c") + 1])
        prefix = command[command.index("-p") + 1].rstrip("/")
        config_volume = volumes.get(mounts.get(str(conf_path.parent), {}).get("name", ""), {})
        if cluster.nested(config_volume, "configMap", "name") != name or conf_path.name != "nginx.conf":
            p.append(f"nginx -c {conf_path} is not the ConfigMap's nginx.conf")
        if "emptyDir" not in volumes.get(mounts.get(prefix, {}).get("name", ""), {}) or mounts.get(prefix, {}).get("readOnly"):
            p.append(f"the nginx prefix {prefix} (cache, temporary files, pid) must be a writable emptyDir")
        if pod["metadata"].get("annotations", {}).get("checksum/config") != hashlib.sha256(conf.encode()).hexdigest():
            p.append("the cache pods' checksum/config must be the sha256 of nginx.conf, so they roll when it changes")
        port = {c["name"]: c["containerPort"] for c in container.get("ports") or []}.get("http")
        if port != v["cache"]["port"] or service["spec"]["ports"][0].get("targetPort") != "http":
            p.append(f"the cache Service must reach nginx's listen port {v['cache']['port']} (container port {port})")
        if not cluster.selector_matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"]):
            p.append("the cache Service does not select the cache pods")
        policy = by_kind.get("NetworkPolicy")
        if v["networkPolicy"]["enabled"]:
            server_labels = cluster.server_workloads(docs)[0]["spec"]["template"]["metadata"]["labels"]
            to_server = [rule for rule in (policy or {}).get("spec", {}).get("egress") or []
                         if any(cluster.selector_matches(peer.get("podSelector"), server_labels) for peer in rule.get("to") or [] if "podSelector" in peer)
                         and {"port": v["ports"]["api"], "protocol": "TCP"} in (rule.get("ports") or [])]
            if not to_server:
                p.append("the cache's NetworkPolicy must let it reach the server pods' API port")
            server_policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == cluster.fullname(scenario.release))
            api_rule = server_policy["spec"]["ingress"][0]
            if api_rule.get("from") and not any(cluster.selector_matches(peer.get("podSelector"), pod["metadata"]["labels"])
                                                for peer in api_rule["from"] if "podSelector" in peer):
                p.append("the server's NetworkPolicy must admit the cache pods to the API port")
        p += self._nginx_accepts(scenario, conf)
        return p

    def _nginx_accepts(self, scenario: Scenario, conf: str) -> list[str]:
        """`nginx -t` on a rendered nginx.conf, its upstream host (a
        Service name only the cluster resolves) replaced by loopback."""
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if not nginx:
            return ["nginx is not installed (scripts/verify-deploy.sh installs nginx-light as root)"]
        prefix = self.work / "nginx" / scenario.name
        prefix.mkdir(parents=True, exist_ok=True)
        prefix.chmod(0o755)
        local = re.sub(r"(?m)^(\s*server )\S+:(\d+);", r"\g<1>127.0.0.1:\2;", conf)
        (prefix / "nginx.conf").write_text(local)
        result = self.run([nginx, "-t", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")])
        if result.returncode != 0:
            return [f"nginx -t: {line}" for line in result.stderr.splitlines() if "[emerg]" in line or "failed" in line] or [f"nginx -t exited {result.returncode}"]
        return []

    def check_upgrade(self) -> str:
        """Only a change of server.toml rolls the pods: labels and the chart version do not."""
        import helm_python as helm  # noqa: PLC0415

        def checksum(values: dict, chart_dir: Path) -> str:
            with helm.Chart.load(str(chart_dir)) as chart:
                manifests = render_chart(chart, values, RELEASE, MONITORING_APIS)
            for name, text in manifests.items():
                for doc in (yaml.safe_load_all(text) if name.endswith(".yaml") else []):
                    if doc and doc.get("kind") in ("StatefulSet", "Deployment") and cluster.is_server(doc):
                        return doc["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            raise CheckFailed(["no workload rendered"])

        bumped = self.work / "chart-bumped"
        shutil.copytree(self.path(CHART), bumped)
        chart_yaml = bumped / "Chart.yaml"
        chart_yaml.write_text(re.sub(r"(?m)^version: .*$", "version: 99.0.0", chart_yaml.read_text()))
        base = checksum({}, self.path(CHART))
        problems = []
        if checksum({"commonLabels": {"team": "streams"}}, self.path(CHART)) != base:
            problems.append("a commonLabels change alters checksum/config, which restarts the pods")
        if checksum({}, bumped) != base:
            problems.append("a chart version bump alters checksum/config, which restarts the pods")
        if checksum({"config": {"limits": {"max_read_bytes": 1048576}}}, self.path(CHART)) == base:
            problems.append("a server.toml change does not alter checksum/config, so the pods would not roll")
        runbook = self.path(RUNBOOK).read_text()
        for section, needles in RUNBOOK_UPGRADE_SECTIONS.items():
            if f"## {section}" not in runbook:
                problems.append(f"{RUNBOOK} lacks the section '{section}'")
                continue
            body = runbook.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
            for needle in needles:
                if needle not in body:
                    problems.append(f"{RUNBOOK} '{section}' does not mention {needle}")
        if problems:
            raise CheckFailed(problems)
        return ("checksum/config ignores labels and the chart version, follows server.toml; "
                "the runbook covers stuck rollouts, immutable fields and the PostgreSQL mode's backups")

    # ------------------------------------------------------ live checks
    def secret_dirs(self, scenario: Scenario, pki: Path) -> dict[str, Path]:
        """A local directory per Secret the scenario's pods mount, holding the
        keys they read: the server's, a client certificate, a client CA."""
        v = scenario.values
        files = {"tls.crt": pki / "server.crt", "tls.key": pki / "server.key", "ca.crt": pki / "ca.crt"}
        client = {"tls.crt": pki / "client.crt", "tls.key": pki / "client.key", "ca.crt": pki / "ca.crt"}
        out: dict[str, Path] = {}
        for name, owner in cluster.secrets_used([d for _, d in scenario.docs]).items():
            directory = self.work / "secrets" / scenario.name / name
            directory.mkdir(parents=True, exist_ok=True)
            if name in (v["tests"]["clientCertSecret"], f"{cluster.fullname(scenario.release)}-test-client"):
                chosen = client
            elif name == v["tls"]["clientCA"]["secretName"]:
                chosen = {v["tls"]["clientCA"]["key"]: pki / "ca.crt"}
            else:
                chosen = files
            for key, source in chosen.items():
                shutil.copy(source, directory / key)
            out[name] = directory
        return out

    def pod_mounts(self, pod: dict, container: dict, secrets: dict[str, Path], extra: dict[str, Path]) -> dict[str, Path]:
        """mountPath -> local directory for a container's Secret mounts, plus extra."""
        volumes = {vol["name"]: vol for vol in pod["spec"].get("volumes") or []}
        mounts = dict(extra)
        for mount in container.get("volumeMounts") or []:
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret:
                mounts[mount["mountPath"]] = secrets[secret["secretName"]]
        return mounts

    def live_server(self, scenario: Scenario, secrets: dict[str, Path], data_dir: Path | None, tag: str) -> live.LiveServer:
        """The scenario's server.toml served by the binary, with the pod's mounts mapped."""
        docs = [d for _, d in scenario.docs]
        workload = cluster.server_workloads(docs)[0]
        pod = workload["spec"]["template"]
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "server.toml" in d.get("data", {}))
        extra = {}
        data_path = tomllib.loads(cm["data"]["server.toml"]).get("storage", {}).get("data_dir")
        if data_dir is not None and data_path:
            extra[data_path] = data_dir
        mounts = self.pod_mounts(pod, pod["spec"]["containers"][0], secrets, extra)
        binary = self.server_bin or self.path("target/release/durable-streams-server")
        return live.LiveServer(binary, self.repo, self.work / "live" / scenario.name / tag,
                               live.map_paths(cm["data"]["server.toml"], mounts), scenario.values["profile"])

    def check_helm_test(self) -> str:
        """The helm test pod's script, as rendered, against the real server in plain, TLS and mTLS."""
        problems = []
        ran = []
        pki = self.make_certs()
        for scenario in self.good_scenarios():
            v = scenario.values
            pod = next((d for _, d in scenario.docs if d["kind"] == "Pod" and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"), None)
            if v["tests"]["enabled"] and pod is None:
                notes = next((t for n, t in scenario.manifests.items() if n.endswith("NOTES.txt")), "")
                if v["tls"]["mode"] != "http" and "helm test: not rendered" in notes:
                    continue
                problems.append(f"{scenario.name}: tests.enabled but no helm test pod (and NOTES does not say why)")
                continue
            if pod is None or scenario.name not in LIVE_TEST_SCENARIOS:
                continue
            secrets = self.secret_dirs(scenario, pki)
            container = pod["spec"]["containers"][0]
            script = container["command"][-1]
            try:
                with self.live_server(scenario, secrets, self.work / "live" / scenario.name / "test-data", "test") as server:
                    env = {**os.environ, "HOSTNAME": f"{cluster.fullname(scenario.release)}-test",
                           "PATH": f"{live.curl_shim(self.work / 'shim' / scenario.name, server.port)}:{os.environ['PATH']}"}
                    result = live.run_script(live.map_paths(script, self.pod_mounts(pod, container, secrets, {})), self.work, env, timeout=60)
                    if result.returncode != 0:
                        problems.append(f"{scenario.name}: the helm test script failed ({result.returncode}): {(result.stdout + result.stderr).strip()[-800:]}")
                    else:
                        ran.append(f"{scenario.name} ({v['tls']['mode']})")
            except RuntimeError as error:
                problems.append(f"{scenario.name}: {error}")
        missing = set(LIVE_TEST_SCENARIOS) - {r.split(" ")[0] for r in ran}
        if missing and not problems:
            problems.append(f"the helm test did not run for {sorted(missing)}")
        if problems:
            raise CheckFailed(problems)
        return f"the rendered helm test created, appended, read back and deleted a stream: {', '.join(ran)}"

    def check_notes(self) -> str:
        """The NOTES examples, run as printed (the port-forward's port aside) against the real server."""
        problems = []
        ran = []
        pki = self.make_certs()
        for name in LIVE_TEST_SCENARIOS:
            scenario = next(s for s in SCENARIOS if s.name == name)
            self.render_all()
            notes = next((t for n, t in scenario.manifests.items() if n.endswith("NOTES.txt")), "")
            forward = re.search(r"port-forward svc/\S+ (\d+):(\d+)", notes)
            commands = [line.strip() for line in notes.splitlines() if line.strip().startswith("curl ")]
            if not forward or len(commands) < 4:
                problems.append(f"{name}: NOTES must show a port-forward and curl commands that create, append, read and delete")
                continue
            secrets = self.secret_dirs(scenario, pki)
            cwd = self.work / "notes" / name
            cwd.mkdir(parents=True, exist_ok=True)
            # What the printed `kubectl get secret ... > file` lines write.
            for file, source in (("ca.crt", "ca.crt"), ("client.crt", "client.crt"), ("client.key", "client.key")):
                shutil.copy(pki / source, cwd / file)
            local = f"localhost:{forward.group(1)}"
            try:
                with self.live_server(scenario, secrets, cwd / "data", "notes") as server:
                    outputs = []
                    for command in commands:
                        result = live.run_script(command.replace(local, f"localhost:{server.port}"), cwd, dict(os.environ), timeout=30)
                        outputs.append(result.stdout)
                        if result.returncode != 0:
                            problems.append(f"{name}: `{command}` failed ({result.returncode}): {result.stderr.strip()[-400:]}")
                            break
                    else:
                        if "hello" not in outputs[2]:
                            problems.append(f"{name}: the printed read did not return what the printed append wrote: {outputs[2]!r}")
                        ran.append(name)
            except RuntimeError as error:
                problems.append(f"{name}: {error}")
        if problems:
            raise CheckFailed(problems)
        return f"the NOTES curl examples work as printed for {', '.join(ran)}"

    def check_backup(self) -> str:
        """Backup CronJobs reach each pod's volume; their script, run against a live server, makes an export the runbook's restore brings back byte for byte."""
        problems = []
        live_runs = []
        for scenario in self.good_scenarios():
            v = scenario.values
            if not v["backup"]["enabled"]:
                if any(d["kind"] == "CronJob" for _, d in scenario.docs):
                    problems.append(f"{scenario.name}: a CronJob is rendered with backup.enabled=false")
                continue
            try:
                self._check_backup_objects(scenario)
                if scenario.name in LIVE_BACKUP_SCENARIOS:
                    live_runs.append(self._run_backup_and_restore(scenario))
            except CheckFailed as failed:
                problems += [f"{scenario.name}: {p}" for p in failed.problems]
            except RuntimeError as error:
                problems.append(f"{scenario.name}: {error}")
        if not problems and len(live_runs) != len(LIVE_BACKUP_SCENARIOS):
            problems.append(f"backup and restore ran for {len(live_runs)} of {sorted(LIVE_BACKUP_SCENARIOS)}")
        if problems:
            raise CheckFailed(problems)
        return "CronJobs mount each pod's claim read-only beside it; " + "; ".join(live_runs)

    def _check_backup_objects(self, scenario: Scenario) -> None:
        p: list[str] = []
        v = scenario.values
        docs = [d for _, d in scenario.docs]
        sts = next((d for d in docs if d["kind"] == "StatefulSet"), None)
        if sts is None:
            raise CheckFailed(["backup.enabled needs the StatefulSet"])
        cronjobs = sorted((d for d in docs if d["kind"] == "CronJob"), key=lambda d: d["metadata"]["name"])
        if len(cronjobs) != sts["spec"]["replicas"]:
            p.append(f"expected one CronJob per pod ({sts['spec']['replicas']}), got {len(cronjobs)}")
        config = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap" and "server.toml" in d.get("data", {}))["data"]["server.toml"])
        claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
        server_pod = sts["spec"]["template"]["spec"]
        for ordinal, job in enumerate(cronjobs):
            name = job["metadata"]["name"]
            if len(name) > 52:
                p.append(f"CronJob {name}: longer than 52 characters (Jobs get a suffix)")
            if job["spec"].get("concurrencyPolicy") != "Forbid":
                p.append(f"CronJob {name}: concurrencyPolicy must be Forbid (two exports would race for the same files)")
            pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            terms = cluster.nested(pod, "affinity", "podAffinity", "requiredDuringSchedulingIgnoredDuringExecution", default=[]) or []
            pod_name = f"{sts['metadata']['name']}-{ordinal}"
            if not any(t.get("topologyKey") == "kubernetes.io/hostname"
                       and cluster.nested(t, "labelSelector", "matchLabels", "statefulset.kubernetes.io/pod-name") == pod_name for t in terms):
                p.append(f"CronJob {name}: must be required on the node of {pod_name} (a ReadWriteOnce volume mounts on one node)")
            for key in ("tolerations", "nodeSelector"):
                if pod.get(key) != server_pod.get(key):
                    p.append(f"CronJob {name}: {key} must match the server's, to land on its node")
            volumes = {vol["name"]: vol for vol in pod.get("volumes") or []}
            mounts = {m["mountPath"]: m for m in pod["containers"][0].get("volumeMounts") or []}
            data = mounts.get(config["storage"]["data_dir"])
            data_volume = volumes.get((data or {}).get("name", ""), {})
            want_claim = f"{sts['spec']['volumeClaimTemplates'][0]['metadata']['name']}-{pod_name}"
            if cluster.nested(data_volume, "persistentVolumeClaim", "claimName") != want_claim:
                p.append(f"CronJob {name}: must mount claim {want_claim} at storage.data_dir")
            elif not (data.get("readOnly") and data_volume["persistentVolumeClaim"].get("readOnly")):
                p.append(f"CronJob {name}: the data claim must be mounted read-only")
            backup_claims = [vol["persistentVolumeClaim"]["claimName"] for vol in volumes.values()
                             if "persistentVolumeClaim" in vol and vol["persistentVolumeClaim"]["claimName"] != want_claim]
            existing = v["backup"]["persistence"]["existingClaims"]
            want_backup = existing[ordinal] if existing else None
            if len(backup_claims) != 1 or (want_backup and backup_claims[0] != want_backup) or (not want_backup and backup_claims[0] not in claims):
                p.append(f"CronJob {name}: must write to its own backup claim, got {backup_claims}")
            elif not want_backup and (claims[backup_claims[0]]["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
                p.append(f"backup claim {backup_claims[0]} must be kept on uninstall (helm.sh/resource-policy: keep)")
        if p:
            raise CheckFailed(p)

    def _run_backup_and_restore(self, scenario: Scenario) -> str:
        """Streams written to a live server; the rendered CronJob script run
        beside it; the runbook's restore Job into a fresh store; compared."""
        docs = [d for _, d in scenario.docs]
        job = sorted((d for d in docs if d["kind"] == "CronJob"), key=lambda d: d["metadata"]["name"])[0]
        pod = job["spec"]["jobTemplate"]["spec"]["template"]
        container = pod["spec"]["containers"][0]
        base = self.work / "backup" / scenario.name
        data, backups, restored = base / "data", base / "backups", base / "restored"
        for d in (data, backups, restored):
            d.mkdir(parents=True, exist_ok=True)
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "server.toml" in d.get("data", {}))
        config_dir = base / "config"
        config_dir.mkdir(exist_ok=True)
        mounts_for = {}
        for mount in container["volumeMounts"]:
            volume = next(vol for vol in pod["spec"]["volumes"] if vol["name"] == mount["name"])
            if "configMap" in volume:
                mounts_for[mount["mountPath"]] = config_dir
            elif mount.get("readOnly"):
                mounts_for[mount["mountPath"]] = data
            else:
                mounts_for[mount["mountPath"]] = backups
        (config_dir / "server.toml").write_text(live.map_paths(cm["data"]["server.toml"], mounts_for))
        name = re.search(r"^name=(\S+)$", container["command"][-1], re.M)
        keep = scenario.values["backup"]["keep"]
        # Older exports, some of which the run must remove.
        old = [backups / f"{name.group(1) if name else 'x'}-2000010{day}T000000Z.jsonl" for day in range(1, keep + 2)]
        for path in old:
            path.write_text("old\n")
        binary = self.server_bin or self.path("target/release/durable-streams-server")
        env = {**live.server_env(self.repo, scenario.values["profile"]), "PATH": f"{binary.parent}:{os.environ['PATH']}"}
        script = live.map_paths(container["command"][-1], mounts_for)
        bodies = {}
        with self.live_server(scenario, {}, data, "backup") as server:
            base_url = f"http://127.0.0.1:{server.port}/v1/stream"
            for stream, content_type, chunks in BACKUP_STREAMS:
                http(f"{base_url}/{stream}", "PUT", b"", content_type)
                for chunk in chunks:
                    http(f"{base_url}/{stream}", "POST", chunk, content_type)
            http(f"{base_url}/closed", "POST", b"", "text/plain", {"Stream-Closed": "true"})
            # The server itself may still be writing (the acid backend moves
            # its acknowledgement log into redb shortly after the last
            # append): compare from the moment it has gone quiet.
            before = settled_tree_state(data)
            result = live.run_script(script, base, env)
            if tree_state(data) != before:
                raise CheckFailed(["the backup changed the data directory, which the Job mounts read-only"])
            for stream, _, _ in BACKUP_STREAMS:
                bodies[stream] = http(f"{base_url}/{stream}?offset=-1", "GET")
        if result.returncode != 0:
            raise CheckFailed([f"the CronJob script failed ({result.returncode}): {(result.stdout + result.stderr).strip()[-800:]}"])
        made = sorted(p for p in backups.glob("*.jsonl") if p not in old)
        left = sorted(backups.glob("*.jsonl"))
        if len(made) != 1:
            raise CheckFailed([f"the CronJob script must write one export, wrote {[p.name for p in made]}"])
        if len(left) != keep or made[0] not in left:
            raise CheckFailed([f"backup.keep={keep}: {[p.name for p in left]} are left"])
        if list(backups.glob(".*partial")):
            raise CheckFailed(["a partial export was left behind"])
        # The runbook's restore Job, run with its mounts into a fresh store.
        restore = runbook_restore_job(self.path(RUNBOOK).read_text(), made[0].name)
        restore_container = restore["spec"]["template"]["spec"]["containers"][0]
        restore_config = base / "restore-config"
        restore_config.mkdir(exist_ok=True)
        restore_mounts = {m["mountPath"]: {"config": restore_config, "data": restored, "backup": backups}[m["name"]]
                          for m in restore_container["volumeMounts"]}
        (restore_config / "server.toml").write_text(live.map_paths(cm["data"]["server.toml"], restore_mounts))
        result = live.run_script(live.map_paths(restore_container["command"][-1], restore_mounts), base, env)
        if result.returncode != 0:
            raise CheckFailed([f"the runbook's restore failed ({result.returncode}): {(result.stdout + result.stderr).strip()[-800:]}"])
        again = live.run_script(f"durable-streams-server export --config {restore_config / 'server.toml'}", base, env)
        if again.returncode != 0 or again.stdout.encode() != made[0].read_bytes():
            raise CheckFailed(["an export of the restored store differs from the backup it was restored from"])
        with self.live_server(scenario, {}, restored, "restored") as server:
            for stream, _, _ in BACKUP_STREAMS:
                try:
                    body = http(f"http://127.0.0.1:{server.port}/v1/stream/{stream}?offset=-1", "GET")
                except urllib.error.HTTPError as error:
                    body = f"HTTP {error.code}".encode()
                if body != bodies[stream]:
                    raise CheckFailed([f"stream {stream} reads differently from the restored store: {body[:80]!r}"])
        return f"{scenario.values['storage']['mode']}: {made[0].stat().st_size} bytes exported beside the live server, restored byte for byte, {keep} kept"

    def check_release(self) -> str:
        """The release workflow lints clean and builds, signs and publishes what the chart expects."""
        problems = []
        cargo = tomllib.loads(self.path("Cargo.toml").read_text())["package"]["version"]
        chart = self.load_yaml(CHART / "Chart.yaml")
        if str(chart.get("appVersion")) != cargo:
            problems.append(f"Chart.yaml appVersion {chart.get('appVersion')!r} differs from the crate version {cargo!r} (Cargo.toml)")
        workflow = self.path(RELEASE_WORKFLOW)
        if not workflow.exists():
            raise CheckFailed(problems + [f"{RELEASE_WORKFLOW} is missing"])
        env = {**os.environ, "PATH": f"{self.tools / 'venv' / 'bin'}:{os.environ['PATH']}"}
        result = self.run([self.tool("actionlint"), "-no-color", str(workflow)], env=env)
        if result.returncode != 0:
            problems += [line.replace(str(self.repo) + "/", "") for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        text = workflow.read_text()
        for needle, why in RELEASE_WORKFLOW_NEEDS:
            if needle not in text:
                problems.append(f"{RELEASE_WORKFLOW}: {why} ({needle!r} not found)")
        if problems:
            raise CheckFailed(problems)
        return f"actionlint clean; multi-arch, signed, SBOM and provenance, digests in the notes; appVersion {cargo} = crate version"

    def check_server_accepts_config(self) -> str:
        """The server's own `check-config` accepts every rendered server.toml."""
        binary = self.server_bin or self.path("target/release/durable-streams-server")
        if not binary.exists():
            raise CheckFailed([f"{binary} is missing: run cargo build --release --locked first"])
        certs = self.make_certs()
        problems = []
        count = 0
        for scenario in self.good_scenarios():
            cm = next(doc for _, doc in scenario.docs if doc["kind"] == "ConfigMap" and "server.toml" in doc.get("data", {}))
            path = self.work / "server-config" / scenario.name / "server.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cm["data"]["server.toml"])
            env = {k: val for k, val in os.environ.items() if not k.startswith("DS_") and k != "RUST_LOG"}
            env["DS_CONFIG_DIR"] = str(self.path("config"))
            env["DS_PROFILE"] = scenario.values["profile"]
            tls = tomllib.loads(path.read_text()).get("transport", {}).get("tls", {})
            # The certificate files live in a Secret in the pod; here the
            # environment layer points the same keys at test files.
            for key, file in (("cert_path", "server.crt"), ("key_path", "server.key"), ("client_ca_path", "ca.crt")):
                if key in tls:
                    env[f"DS_TRANSPORT__TLS__{key.upper()}"] = str(certs / file)
            if scenario.values["storage"]["mode"] == "postgres":
                # The URL the pod reads from its Secret, with the CA file
                # of a test PKI where the pod mounts the database's CA.
                container = cluster.server_workloads([d for _, d in scenario.docs])[0]["spec"]["template"]["spec"]["containers"][0]
                url = next((e.get("value") for e in container.get("env", []) if e["name"] == "DS_STORAGE__POSTGRES__URL"), None)
                app_uri = "postgresql://streams:secret@db.example.invalid:5432/streams"
                env["DS_STORAGE__POSTGRES__URL"] = (url or app_uri).replace("$(CNPG_APP_URI)", app_uri).replace(
                    "/etc/durable-streams/postgres-ca/ca.crt", str(certs / "ca.crt"))
            result = self.run([str(binary), "check-config", "--config", str(path)], env=env, cwd=self.work)
            count += 1
            if result.returncode != 0:
                problems.append(f"{scenario.name}: exit {result.returncode}: {(result.stderr or result.stdout).strip()}")
        if problems:
            raise CheckFailed(problems)
        return f"check-config accepts the {count} rendered configurations"

    def make_certs(self) -> Path:
        """The test PKI: a CA, a server certificate for every Service name the
        scenarios render, and a client certificate."""
        names = ["localhost", "durable-streams"]
        for release in sorted({s.release for s in SCENARIOS}):
            base = cluster.fullname(release)
            names += [base, f"{base}.{NAMESPACE}", f"{base}.{NAMESPACE}.svc", f"{base}.{NAMESPACE}.svc.cluster.local"]
        try:
            return live.make_pki(self.work / "certs", names)
        except RuntimeError as error:
            raise CheckFailed([str(error)]) from None

    def check_values_documented(self) -> str:
        """values.yaml is documented helm-docs style; the schema knows every config key."""
        problems = []
        rows, undocumented = values_table(self.path(CHART / "values.yaml").read_text())
        problems += [f"values.yaml: {key} has no '# --' description (nor has a parent)" for key in undocumented]
        # The schema's config keys plus the chart-owned keys are exactly the
        # keys of config/default.toml (commented-out ones included).
        schema = json.loads(self.path(CHART / "values.schema.json").read_text())
        schema_keys = set(schema_leaf_keys(schema["properties"]["config"]))
        owned = {
            "server.bind_address", "storage.mode", "storage.data_dir", "transport.mode",
            "transport.tls.cert_path", "transport.tls.key_path", "transport.tls.client_ca_path",
            "observability.metrics.enabled", "observability.metrics.path", "observability.metrics.bind_address",
            "subscriptions.enabled", "subscriptions.signing_key_path", "storage.postgres.url",
        }
        toml_keys = default_toml_keys(self.path("config/default.toml").read_text())
        for key in sorted(toml_keys - schema_keys - owned):
            problems.append(f"config/default.toml key {key} is missing from values.schema.json (config)")
        for key in sorted(schema_keys - toml_keys):
            problems.append(f"values.schema.json config key {key} is not a server key (config/default.toml)")
        for key in sorted(schema_keys & owned):
            problems.append(f"values.schema.json lets `config` set {key}, which the chart owns")
        if problems:
            raise CheckFailed(problems)
        return f"{rows.count(chr(10) + '| `')} documented values; schema covers all {len(toml_keys - owned)} operator-settable server keys"

    def check_generated_files(self) -> str:
        """deploy/kubernetes, the chart's rule/dashboard copies and its values table match their sources."""
        if self.update:
            # The chart's copies first: the plain manifests embed them.
            for src in sorted(self.path(GRAFANA).glob("*.json")):
                (self.path(CHART / "files/grafana")).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, self.path(CHART / "files/grafana" / src.name))
            (self.path(CHART / "files/prometheus")).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.path(RULES), self.path(CHART / "files/prometheus" / RULES.name))
            self.path(CHART_CACHE_CONF).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.path(CACHE_CONF), self.path(CHART_CACHE_CONF))
            self._rendered = False
        expected: dict[Path, str] = {}
        for profile in PROFILES:
            scenario = next(s for s in SCENARIOS if s.name == profile)
            self.render_all()
            if "__error__" in scenario.manifests:
                raise CheckFailed([f"{profile}: does not render: {scenario.manifests['__error__']}"])
            expected.update(plain_manifests(profile, scenario))
        for src in sorted(self.path(GRAFANA).glob("*.json")):
            expected[CHART / "files/grafana" / src.name] = src.read_text()
        expected[CHART / "files/prometheus" / RULES.name] = self.path(RULES).read_text()
        expected[CHART_CACHE_CONF] = self.path(CACHE_CONF).read_text()
        readme = self.path(CHART / "README.md").read_text()
        rows, _ = values_table(self.path(CHART / "values.yaml").read_text())
        expected[CHART / "README.md"] = replace_between(readme, "<!-- values:start -->", "<!-- values:end -->", "\n" + rows + "\n")
        generated_dirs = [MANIFESTS, CHART / "files/grafana", CHART / "files/prometheus", CHART_CACHE_CONF.parent]
        existing = {p.relative_to(self.repo) for d in generated_dirs if self.path(d).exists() for p in self.path(d).rglob("*") if p.is_file()}
        stale = sorted(existing - set(expected))
        drifted = sorted(str(rel) for rel, text in expected.items() if not self.path(rel).exists() or self.path(rel).read_text() != text)
        if self.update:
            for rel, text in expected.items():
                self.path(rel).parent.mkdir(parents=True, exist_ok=True)
                self.path(rel).write_text(text)
            for rel in stale:
                self.path(rel).unlink()
            return f"updated {len(drifted)} and removed {len(stale)} generated files"
        problems = [f"{rel} differs from what the chart renders: run scripts/verify-deploy.sh --update" for rel in drifted]
        problems += [f"{rel} is not generated any more: run scripts/verify-deploy.sh --update" for rel in stale]
        if problems:
            raise CheckFailed(problems)
        return f"{len(expected)} generated files are up to date"

    def check_rules(self) -> str:
        """promtool check and test the rules; names, labels, annotations, runbook links."""
        problems = []
        promtool = self.tool("promtool")
        result = self.run([promtool, "check", "rules", str(self.path(RULES))])
        if result.returncode != 0:
            problems.append("promtool check rules: " + (result.stdout + result.stderr).strip().replace("\n", " | "))
        result = self.run([promtool, "test", "rules", str(self.path(RULE_TESTS))], cwd=self.path(RULE_TESTS).parent)
        if result.returncode != 0:
            problems.append("promtool test rules: " + (result.stdout + result.stderr).strip().replace("\n", " | ")[:3000])
        rules = self.load_yaml(RULES)
        tests_text = self.path(RULE_TESTS).read_text()
        anchors = markdown_anchors(self.path(RUNBOOK).read_text())
        alerts = set()
        for group in rules.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert")
                if not name:
                    continue
                alerts.add(name)
                if not re.fullmatch(r"DurableStreams[A-Z][A-Za-z0-9]+", name):
                    problems.append(f"{name}: alert names are DurableStreams<Symptom>")
                if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                    problems.append(f"{name}: severity must be warning or critical")
                annotations = rule.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    if not annotations.get(key):
                        problems.append(f"{name}: annotation {key} is missing")
                url = annotations.get("runbook_url", "")
                match = re.fullmatch(r"deploy/RUNBOOK\.md#([a-z0-9-]+)", url)
                if not match:
                    problems.append(f"{name}: runbook_url {url!r} must be deploy/RUNBOOK.md#<section>")
                elif match.group(1) not in anchors:
                    problems.append(f"{name}: runbook_url points at #{match.group(1)}, which {RUNBOOK} lacks")
                if f"alertname: {name}\n" not in tests_text:
                    problems.append(f"{name}: no promtool test in {RULE_TESTS}")
        for name in sorted(REQUIRED_ALERTS - alerts):
            problems.append(f"{name}: required alert is missing")
        if problems:
            raise CheckFailed(problems)
        return f"{len(alerts)} alerts pass promtool check and test; names, severities, annotations and runbook links are right"

    def dashboard_queries(self) -> list[tuple[str, str, str]]:
        out = []
        for path in sorted(self.path(GRAFANA).glob("*.json")):
            try:
                dashboard = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # check_dashboards reports it
            panels = [p for top in dashboard.get("panels", []) for p in [top, *top.get("panels", [])]]
            for panel in panels:
                for target in panel.get("targets", []) or []:
                    out.append((path.name, panel.get("title", ""), target.get("expr", "")))
            for variable in dashboard.get("templating", {}).get("list", []):
                query = variable.get("query")
                if variable.get("type") == "query":
                    text = query.get("query") if isinstance(query, dict) else query
                    inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", text or "")
                    out.append((path.name, f"variable {variable.get('name')}", inner.group(1) if inner else text or ""))
        return out

    def check_dashboards(self) -> str:
        """Dashboards: valid JSON, layout and ids, every PromQL expression parses."""
        problems = []
        uids = set()
        for path in sorted(self.path(GRAFANA).glob("*.json")):
            try:
                dashboard = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                problems.append(f"{path.name}: not JSON: {error}")
                continue
            uid = dashboard.get("uid")
            if not uid or uid in uids:
                problems.append(f"{path.name}: needs a unique uid")
            uids.add(uid)
            ids = set()
            cells: dict[tuple[int, int], str] = {}
            panels = [p for top in dashboard.get("panels", []) for p in [top, *top.get("panels", [])]]
            for panel in panels:
                title = panel.get("title", "?")
                if panel.get("id") in ids:
                    problems.append(f"{path.name}: panel id {panel.get('id')} is used twice")
                ids.add(panel.get("id"))
                pos = panel.get("gridPos", {})
                if pos.get("x", 0) + pos.get("w", 0) > 24:
                    problems.append(f"{path.name}: panel {title!r} is wider than the grid")
                for dx in range(pos.get("w", 0)):
                    for dy in range(pos.get("h", 0)):
                        cell = (pos.get("x", 0) + dx, pos.get("y", 0) + dy)
                        if cell in cells:
                            problems.append(f"{path.name}: panel {title!r} overlaps {cells[cell]!r}")
                            break
                        cells[cell] = title
                    else:
                        continue
                    break
                if panel.get("type") == "row":
                    continue
                if (panel.get("datasource") or {}).get("uid") != "${datasource}":
                    problems.append(f"{path.name}: panel {title!r} must use the $datasource variable")
                targets = panel.get("targets") or []
                if not targets:
                    problems.append(f"{path.name}: panel {title!r} has no query")
                for target in targets:
                    unknown = set(target) - {"datasource", "refId", "expr", "legendFormat", "range", "instant", "editorMode", "interval", "format", "hide", "exemplar", "intervalFactor"}
                    if unknown:
                        problems.append(f"{path.name}: panel {title!r}: unknown Prometheus query fields {sorted(unknown)}")
                    if not target.get("expr") or not target.get("refId"):
                        problems.append(f"{path.name}: panel {title!r}: a query needs expr and refId")
        # PromQL: every expression goes into a rule file for promtool, with
        # Grafana's variables replaced by values of the same kind.
        groups = []
        for n, (name, title, expr) in enumerate(self.dashboard_queries()):
            groups.append({"name": f"{name} / {title} / {n}", "rules": [{"record": f"dashboard_check:expr_{n}", "expr": grafana_to_promql(expr)}]})
        rule_file = self.work / "dashboard-queries.rules.yaml"
        rule_file.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        result = self.run([self.tool("promtool"), "check", "rules", str(rule_file)])
        if result.returncode != 0:
            problems += [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip() and "Checking" not in line and "FAILED" not in line]
        used = set()
        for _, _, expr in self.dashboard_queries():
            used |= metric_names(expr)
        for metric in sorted(REQUIRED_DASHBOARD_METRICS - {base_metric(m) for m in used}):
            problems.append(f"no dashboard shows {metric}")
        if problems:
            raise CheckFailed(problems)
        return f"{len(uids)} dashboards, {len(groups)} PromQL expressions parse"

    def check_metric_contract(self) -> str:
        """Rules and dashboards use only exported metric names and labels."""
        contract: dict[str, tuple[str, set[str]]] = {}
        for line in self.path(TOOLING / "metrics-contract.txt").read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            contract[parts[0]] = (parts[1], set(parts[2].split(",")) if len(parts) > 2 else set())
        exprs = [(f"{RULES.name} {r.get('alert') or r.get('record')}", r["expr"]) for g in self.load_yaml(RULES)["groups"] for r in g["rules"]]
        exprs += [(f"{name} {title!r}", grafana_to_promql(expr)) for name, title, expr in self.dashboard_queries()]
        problems = []
        for where, expr in exprs:
            allowed = set(TARGET_LABELS)
            for metric in metric_names(expr):
                base = base_metric(metric, contract)
                if base not in contract:
                    problems.append(f"{where}: {metric} is not an exported metric")
                    continue
                kind, labels = contract[base]
                if metric != base and kind != "histogram":
                    problems.append(f"{where}: {metric}: {base} is a {kind}, not a histogram")
                allowed |= labels | ({"le"} if metric.endswith("_bucket") else set())
            for metric, labels in selector_labels(expr):
                base = base_metric(metric, contract)
                if base in contract:
                    ok = contract[base][1] | TARGET_LABELS | ({"le"} if metric.endswith("_bucket") else set())
                    for label in sorted(labels - ok):
                        problems.append(f"{where}: {metric} has no label {label}")
            for label in sorted(grouping_labels(expr) - allowed):
                problems.append(f"{where}: groups by {label}, which none of its metrics has")
        if problems:
            raise CheckFailed(problems)
        return f"{len(exprs)} expressions use only the {len(contract)} contract metrics and their labels"

    def check_dockerfile(self) -> str:
        """hadolint, and the image promises the chart relies on."""
        problems = []
        result = self.run([self.tool("hadolint"), "--failure-threshold", "style", str(self.path("Dockerfile"))])
        if result.returncode != 0:
            problems += [line.replace(str(self.repo) + "/", "") for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        text = self.path("Dockerfile").read_text()
        final = text[text.rfind("\nFROM "):]
        for needle, why in (
            ("--locked", "the build stage uses --locked"),
            ("USER 10001:10001", "the runtime runs as the fixed UID/GID 10001 the chart uses"),
            ("COPY config/ /etc/durable-streams/config/", "the image ships config/"),
            ("DS_CONFIG_DIR=/etc/durable-streams/config", "DS_CONFIG_DIR points at the shipped config"),
            ('ENTRYPOINT ["/usr/local/bin/durable-streams-server"]', "exec-form ENTRYPOINT"),
            ("EXPOSE 4437 9464", "the API and metrics ports are exposed"),
            ("org.opencontainers.image.", "OCI labels"),
            ("COPY --from=builder /etc/ssl/certs/ca-certificates.crt", "the runtime carries a CA bundle for outbound https (webhooks, JWKS, OTLP)"),
            ("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_FILE names the CA bundle"),
            ("chown 10001:0 /var/lib/durable-streams", "the data directory belongs to group 0 (OpenShift's arbitrary UIDs)"),
            ("chmod 0770 /var/lib/durable-streams", "the data directory is group-writable (OpenShift)"),
            ("FROM debian:", "the runtime base has /bin/sh, which the chart's backup Jobs run"),
        ):
            if needle not in (final if needle.startswith(("USER", "ENTRYPOINT", "EXPOSE", "COPY --from", "FROM")) else text):
                problems.append(f"Dockerfile: {why} ({needle!r} not found)")
        problems += self.builder_stage_problems(text)
        # The environment beats --config: a DS_* key baked into the image
        # would override what the chart renders into the ConfigMap.
        for key in sorted(set(re.findall(r"\b(DS_[A-Z0-9_]+)=", final)) - {"DS_CONFIG_DIR", "DS_BUILD_COMMIT"}):
            problems.append(f"Dockerfile: the runtime image sets {key}, which would override the chart's --config file")
        if problems:
            raise CheckFailed(problems)
        return "hadolint clean; non-root, config/, ports, ENTRYPOINT, labels, no DS_* overrides"

    def builder_stage_problems(self, text: str) -> list[str]:
        """What the build stage needs but would not have: the files the crate
        includes at compile time, the build script, stubs for explicitly
        declared targets, and each of them let through by .dockerignore."""
        problems = []
        builder = text[: text.rfind("\nFROM ")]
        copied = set()
        for match in re.finditer(r"^COPY\s+(?!--from)(.+?)\s+\S+\s*$", builder, re.M):
            copied |= {part.rstrip("/") for part in match.group(1).split() if not part.startswith("--")}
        ignore = self.path(".dockerignore").read_text().splitlines()
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        needed = {"Cargo.toml", "Cargo.lock", "src"}
        if self.path("build.rs").exists():
            needed.add("build.rs")
        for source in self.path("src").rglob("*.rs"):
            code = source.read_text()
            for found in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', code):
                # An include on an item compiled only for tests or doc tests
                # (`#[cfg(doctest)]` just above) is not read by the image build.
                above = code[: found.start()].splitlines()[-3:]
                if any(re.match(r"\s*#\[cfg\((?:test|doctest)\)\]", line) for line in above):
                    continue
                included = found.group(1)
                target = (source.parent / included).resolve().relative_to(self.repo)
                needed.add(target.parts[0])
        for path in sorted(needed):
            if path not in copied:
                problems.append(f"Dockerfile: the build stage does not COPY {path}, which the build reads")
            if ignore[:1] and "*" in ignore and path not in allowed:
                problems.append(f".dockerignore keeps {path} out of the build context")
        manifest = tomllib.loads(self.path("Cargo.toml").read_text())
        for kind, folder in (("bench", "benches"), ("example", "examples"), ("test", "tests")):
            for target in manifest.get(kind, []):
                stub = target.get("path", f"{folder}/{target['name']}.rs")
                if stub not in builder and folder not in copied:
                    problems.append(f"Dockerfile: Cargo.toml declares [[{kind}]] {target['name']}; the build stage needs {stub} (a stub will do)")
        return problems

    def check_container_image(self) -> str:
        """Builds an image from the local binary and probes /healthz and /readyz in it."""
        if os.environ.get("VERIFY_DEPLOY_IMAGE", "auto") == "0":
            raise Skip("VERIFY_DEPLOY_IMAGE=0")
        podman = shutil.which("podman")
        if not podman:
            raise Skip("podman is not installed (scripts/verify-deploy.sh installs it as root with apt-get)")
        binary = self.server_bin or self.path("target/release/durable-streams-server")
        if not binary.exists():
            raise Skip(f"{binary} is missing")
        probe = self.run([podman, "info"])
        if probe.returncode != 0:
            raise Skip(f"podman cannot run here: {probe.stderr.strip().splitlines()[-1:]}")
        image = container_image_from_binary(self, podman, binary)
        try:
            return run_image_probes(self, podman, image)
        finally:
            removed = self.run([podman, "rmi", "-f", image])
            if removed.returncode != 0:
                time.sleep(1)
                self.run([podman, "rmi", "-f", image])


# ------------------------------------------------------- operator checks ---
RELEASE_WORKFLOW = Path(".github/workflows/release.yml")
RELEASE_WORKFLOW_NEEDS = [
    ("platform: linux/amd64", "builds for amd64"),
    ("platform: linux/arm64", "builds for arm64"),
    ("docker/build-push-action", "builds with buildx"),
    ("provenance: mode=max", "attaches build provenance"),
    ("sbom: true", "attaches an SBOM"),
    ("cosign sign --yes", "signs the image keyless with cosign"),
    ("id-token: write", "gets the OIDC token keyless signing needs"),
    ("imagetools create", "publishes one multi-arch index"),
    ("Chart.yaml", "checks the tag against the crate and chart versions"),
    (".image.repository = strenv(IMAGE)", "packages the chart with the published image repository"),
    ("image.digest", "packages the chart with the image digest"),
    ("--notes-file", "writes the digests into the release notes"),
]
# Scenarios whose helm test and NOTES examples run against the real server.
LIVE_TEST_SCENARIOS = ["prod", "prod-tls-cert-manager", "prod-mtls"]
# Scenarios whose backup CronJob runs against the real server.
LIVE_BACKUP_SCENARIOS = {"backup-two-replicas", "backup-acid-existing-claim"}
# Streams written before a backup: (name, content type, appends).
BACKUP_STREAMS = [
    ("orders", "application/json", [b'{"id":1}', b'[{"id":2},{"id":3}]']),
    ("log/2025", "text/plain", [b"first line\n", bytes(range(256)).hex().encode(), b"\xe2\x9c\x93 done\n"]),
    ("closed", "text/plain", [b"the end"]),
]
# Runbook sections an upgrade can need, and what each must say.
RUNBOOK_UPGRADE_SECTIONS = {
    "A rollout is stuck": ["OrderedReady", "kubectl -n $NS delete pod", "helm upgrade"],
    "Changing immutable StatefulSet fields": ["storageClassName", "persistence.size", "podManagementPolicy", "--cascade=orphan"],
    "PostgreSQL mode": ["ScheduledBackup", "durable-streams-server export", "max_connections", "rollout restart"],
}


def security_problems(pod: dict, openshift: bool) -> list[str]:
    """What every pod of the chart must promise about privileges."""
    p = []
    psc = pod.get("securityContext", {})
    for container in pod.get("containers", []):
        csc = container.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and csc.get("runAsNonRoot")):
            p.append("pod and container must set runAsNonRoot: true")
        if openshift:
            for key in ("runAsUser", "runAsGroup", "fsGroup"):
                if key in psc or key in csc:
                    p.append(f"openshift.enabled: {key} must be left to the SCC")
        else:
            if psc.get("runAsUser", 0) == 0 or csc.get("runAsUser", 0) == 0:
                p.append("runAsUser must be a non-zero UID")
            if not psc.get("fsGroup"):
                p.append("fsGroup must be set so the data volume is writable")
        if csc.get("readOnlyRootFilesystem") is not True:
            p.append("readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            p.append("allowPrivilegeEscalation must be false")
        if "ALL" not in (csc.get("capabilities", {}).get("drop") or []):
            p.append("capabilities must drop ALL")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.append("pod seccompProfile must be RuntimeDefault")
    return sorted(set(p))


def permitted(target: Any, address: str) -> bool:
    """Whether a feature's egress target covers address: None is anywhere,
    a string one IP, (cidr, private_ok) a webhook range less the private
    ranges the server refuses unless private_ok."""
    if target is None:
        return True
    if isinstance(target, str):
        return target == address
    cidr, private_ok = target
    ip = ipaddress.ip_address(address)
    network = ipaddress.ip_network(cidr)
    refused = any(ip in ipaddress.ip_network(r) for r in WEBHOOK_REFUSED_RANGES if ipaddress.ip_network(r).version == ip.version)
    return ip.version == network.version and ip in network and (private_ok or not refused)


def nginx_directives(conf: str) -> list[tuple[str, list[str], list[str]]]:
    """(name, arguments, enclosing blocks) of every directive of an nginx
    config, comments removed; enough of nginx's grammar for this file."""
    text = re.sub(r"#[^\n]*", "", conf)
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[{};]|[^\s{};]+', text)
    out: list[tuple[str, list[str], list[str]]] = []
    stack: list[str] = []
    words: list[str] = []
    for token in tokens:
        if token == ";":
            if words:
                out.append((words[0], words[1:], list(stack)))
            words = []
        elif token == "{":
            stack.append(" ".join(words))
            words = []
        elif token == "}":
            stack.pop()
        else:
            words.append(token.strip('"'))
    return out


def cache_conf_problems(conf: str, want: dict[str, Any]) -> list[str]:
    """What the caching tier's nginx.conf must say (deploy/nginx/README.md
    gives the reasons). want: the values the chart sets; empty for the
    deploy/ file, whose defaults fit the server's."""
    p: list[str] = []
    directives = nginx_directives(conf)

    def values(name: str, block: str | None = None) -> list[list[str]]:
        return [args for n, args, blocks in directives if n == name and (block is None or block in blocks)]

    def one(name: str, block: str | None = None) -> list[str]:
        found = values(name, block)
        if len(found) != 1:
            p.append(f"expected one {name}{f' in {block}' if block else ''}, found {len(found)}")
            return [""]
        return found[0]

    def seconds(text: str) -> int:
        match = re.fullmatch(r"(\d+)(s|m)?", text)
        return int(match.group(1)) * (60 if match.group(2) == "m" else 1) if match else 0

    connection = want.get("connection", {})
    long_poll = connection.get("long_poll_timeout_secs", 30)
    live = max(long_poll, connection.get("sse_reconnect_interval_secs", 60) or 3600)
    if "upstream" in want and one("server", "upstream durable_streams") != [want["upstream"]]:
        p.append(f"the upstream must be the server's Service {want['upstream']}")
    if not values("keepalive", "upstream durable_streams"):
        p.append("the upstream needs idle keep-alive connections (keepalive)")
    if "listen" in want and one("listen") != [str(want["listen"])]:
        p.append(f"nginx must listen on cache.port {want['listen']}")
    cache_path = " ".join(one("proxy_cache_path"))
    if "max_size" in want and f"max_size={want['max_size']}" not in cache_path:
        p.append(f"proxy_cache_path must use max_size={want['max_size']}")
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        if seconds(one(name)[0]) <= live:
            p.append(f"{name} must exceed the long-poll timeout and SSE reconnect interval ({live} s)")
    if one("proxy_cache_lock") != ["on"]:
        p.append("proxy_cache_lock must be on: identical requests wait for one answer")
    for name in ("proxy_cache_lock_age", "proxy_cache_lock_timeout"):
        if seconds(one(name)[0]) <= long_poll:
            p.append(f"{name} must exceed the long-poll timeout ({long_poll} s), or a second request leaves while the first waits")
    if "$request_uri" not in " ".join(one("proxy_cache_key")):
        p.append("proxy_cache_key must include $request_uri (offset, live mode and cursor)")
    if one("proxy_cache_methods") != ["GET"] or one("proxy_cache_convert_head") != ["off"]:
        p.append("only GET may be cached, and HEAD must stay HEAD")
    if values("proxy_cache_valid") or any(arg.lower() in ("cache-control", "expires") for args in values("proxy_ignore_headers") for arg in args):
        p.append("the server's Cache-Control alone decides: no proxy_cache_valid, no proxy_ignore_headers Cache-Control/Expires")
    if "updating" not in one("proxy_cache_use_stale"):
        p.append("proxy_cache_use_stale must include updating")
    maps: dict[str, str] = {}
    for _, _, blocks in directives:
        if blocks and blocks[-1].startswith("map "):
            source, variable = blocks[-1].split()[1:3]
            maps[variable] = source
    credentials = {
        "$ds_credentials_header": "$http_authorization",
        "$ds_credentials_query": f"$arg_{want.get('query_param', 'access_token')}",
        "$ds_identity_header": "$http_" + want.get("identity_header", "x-client-identity").lower().replace("-", "_"),
        "$ds_not_get": "$request_method",
    }
    for variable, source in credentials.items():
        if maps.get(variable) != source:
            p.append(f"{variable} must be mapped from {source}, got {maps.get(variable)}")
        for name in ("proxy_cache_bypass", "proxy_no_cache"):
            if variable not in one(name):
                p.append(f"{name} must include {variable} ({source}): such requests are never answered from nor stored in the cache")
    if one("proxy_http_version") != ["1.1"] or ["Connection", ""] not in values("proxy_set_header"):
        p.append("HTTP/1.1 with an empty Connection header keeps upstream connections alive")
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"):
        if not any(args and args[0] == header for args in values("proxy_set_header")):
            p.append(f"{header} must be forwarded (the server's proxy.* trust reads it)")
    sse = [args for n, args, blocks in directives if blocks and blocks[-1] == "location @sse" and n in ("proxy_buffering", "proxy_cache")]
    if ["off"] not in sse or len(sse) != 2 or any(args != ["off"] for args in sse):
        p.append("location @sse must turn proxy_buffering and proxy_cache off")
    if maps.get("$ds_sse") is None:
        p.append("$ds_sse must be mapped from live=sse and Accept: text/event-stream")
    return p


def cluster_name(scenario: Scenario) -> str:
    """The CloudNativePG Cluster's name: cnpg.name, else "<fullname>-db"."""
    return scenario.values["cnpg"]["name"] or f"{cluster.fullname(scenario.release)[:47].rstrip('-')}-db"


def crd_problems(doc: dict, schema: dict) -> list[str]:
    """A custom resource against its CRD's openAPIV3Schema: types, enums,
    required fields and patterns (JSON Schema), and unknown fields, which
    the API server rejects under strict field validation (kubectl's
    default) and prunes otherwise. CEL rules are not evaluated."""
    import jsonschema  # noqa: PLC0415  (installed by the script)

    problems = [f"{'/'.join(str(x) for x in error.absolute_path) or '(root)'}: {error.message}"
                for error in jsonschema.Draft7Validator(schema).iter_errors(doc)]

    def unknown(value: Any, node: dict, at: str) -> None:
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties")
        if isinstance(value, dict):
            # Free-form objects (metadata, preserve-unknown-fields) accept anything.
            if node.get("x-kubernetes-preserve-unknown-fields") or not (properties or isinstance(extra, dict)):
                return
            for key, sub in value.items():
                if key in properties:
                    unknown(sub, properties[key], f"{at}/{key}")
                elif isinstance(extra, dict):
                    unknown(sub, extra, f"{at}/{key}")
                else:
                    problems.append(f"{at}/{key}: unknown field")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for n, item in enumerate(value):
                unknown(item, node["items"], f"{at}/{n}")

    unknown(doc, schema, "")
    return problems


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(f.relative_to(root)): (f.stat().st_size, f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()}


def settled_tree_state(root: Path, quiet: float = 0.5, limit: float = 15.0) -> dict[str, tuple[int, int]]:
    """tree_state(root) once it has not changed for `quiet` seconds (or after `limit`)."""
    state, since = tree_state(root), time.monotonic()
    deadline = since + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = tree_state(root)
        if now != state:
            state, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return state


def go_duration_secs(text: str) -> float:
    """Seconds of a Gateway API duration such as 1h30m or 90s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", text))


def runbook_restore_job(runbook: str, backup_file: str) -> dict:
    """The restore Job of the runbook (the YAML block after its marker), for one export file."""
    match = re.search(r"<!-- restore-job -->\s*```yaml\n(.*?)```", runbook, re.S)
    if not match:
        raise CheckFailed([f"{RUNBOOK} has no restore Job (a yaml block after <!-- restore-job -->)"])
    return yaml.safe_load(match.group(1).replace("<export-file>", backup_file).replace("<release>", RELEASE).replace("<ordinal>", "0"))


def http(url: str, method: str, body: bytes = b"", content_type: str | None = None, headers: dict | None = None) -> bytes:
    request = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


# -------------------------------------------------------------- helpers ---
def grafana_to_promql(expr: str) -> str:
    """Replaces Grafana's variables by values of the same syntactic kind."""
    replacements = {
        "$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
        "${__rate_interval}": "5m", "${__interval}": "1m", "${__range}": "1h",
    }
    for key, value in replacements.items():
        expr = expr.replace(key, value)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", ".*", expr)


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "histogram_quantile", "time",
    "vector", "scalar", "abs", "ceil", "floor", "round", "clamp_min", "clamp_max", "clamp", "absent", "absent_over_time",
    "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "label_replace", "label_join", "sort", "sort_desc", "timestamp", "changes", "resets", "label_values", "inf", "nan",
}


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    text = strip_strings(re.sub(r"\{[^}]*\}", "{}", expr))
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:])(?!\s*\()", text):
        name = match.group(1)
        if name.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d.*", name):
            names.add(name)
    return names


def base_metric(name: str, contract: dict | None = None) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if contract is None or base in contract:
                return base
    return name


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    out = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        body = strip_strings(match.group(2))
        out.append((match.group(1), set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", strip_strings(expr)):
        labels |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    return labels


def markdown_anchors(text: str) -> set[str]:
    anchors = set()
    for line in text.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def schema_leaf_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            keys += schema_leaf_keys(sub, path + ".")
        else:
            keys.append(path)
    return keys


def default_toml_keys(text: str) -> set[str]:
    """Every key of config/default.toml, the commented-out ones included."""
    keys = set()
    section = ""
    for line in text.splitlines():
        header = re.match(r"^\[([a-z0-9_.]+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^#?\s?([a-z0-9_]+)\s*=", line)
        if key and section:
            keys.add(f"{section}.{key.group(1)}")
    return keys


def replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise CheckFailed([f"markers {start} … {end} are missing"])
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + body + end + tail


def values_table(text: str) -> tuple[str, list[str]]:
    """A helm-docs style table from `# --` comments, and undocumented keys."""
    data = yaml.safe_load(text)
    rows = []
    undocumented = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment: list[str] = []
    default_override = None
    collecting = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            collecting = True
            default_override = None
            continue
        if stripped.startswith("# @default --"):
            default_override = stripped[len("# @default --"):].strip()
            continue
        if stripped.startswith("#") and collecting:
            comment.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$", line)
        if not match or stripped.startswith("-"):
            if not stripped.startswith("#"):
                collecting = False
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k, _ in stack] + [match.group(2)])
        parent_documented = any(doc for _, _, doc in stack)
        documented = bool(comment)
        value: Any = data
        for part in key.split("."):
            value = value[part] if isinstance(value, dict) else None
        if documented:
            kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(type(value), "string")
            shown = default_override if default_override else f"`{json.dumps(value)}`"
            description = " ".join(comment).replace("|", "\\|")
            rows.append(f"| `{key}` | {kind} | {shown} | {description} |")
        elif not parent_documented and not (isinstance(value, dict) and value):
            undocumented.append(key)
        stack.append((indent, match.group(2), documented))
        comment = []
        collecting = False
        default_override = None
    table = "| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n" + "\n".join(rows)
    return table, undocumented


class BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (server.toml, dashboards) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


BlockDumper.add_representer(str, _str_representer)


def plain_manifests(profile: str, scenario: Scenario) -> dict[Path, str]:
    """deploy/kubernetes/<profile>/: built-in kinds, monitoring, certificate, kustomization."""
    groups: dict[str, list[dict]] = {"durable-streams.yaml": [], "monitoring.yaml": [], "certificate.yaml": [], "database.yaml": []}
    order = ["ServiceAccount", "ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget", "NetworkPolicy"]
    for template, doc in scenario.docs:
        # helm test and what only it uses have no place without Helm.
        if "helm.sh/hook" in (doc["metadata"].get("annotations") or {}) or doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "test":
            continue
        doc = json.loads(json.dumps(doc).replace('"app.kubernetes.io/managed-by": "Helm"', '"app.kubernetes.io/managed-by": "kubectl"'))
        if doc["apiVersion"].startswith("monitoring.coreos.com/") or doc["metadata"]["name"].endswith("-dashboards"):
            groups["monitoring.yaml"].append(doc)
        elif doc["apiVersion"].startswith("cert-manager.io/"):
            groups["certificate.yaml"].append(doc)
        elif doc["apiVersion"].startswith("postgresql.cnpg.io/"):
            groups["database.yaml"].append(doc)
        else:
            groups["durable-streams.yaml"].append(doc)
    groups["durable-streams.yaml"].sort(key=lambda d: (order.index(d["kind"]) if d["kind"] in order else 99, d["metadata"]["name"]))
    out: dict[Path, str] = {}
    header = GENERATED_HEADER.format(values=f"values-{profile}.yaml")
    resources = []
    for name, docs in groups.items():
        if not docs:
            continue
        resources.append(name)
        body = "---\n".join(yaml.dump(d, Dumper=BlockDumper, sort_keys=False, width=120) for d in docs)
        out[MANIFESTS / profile / name] = header + "---\n" + body
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }
    out[MANIFESTS / profile / "kustomization.yaml"] = (
        header.replace("Rendered from", "Lists the manifests rendered from")
        + "# Apply with `kubectl apply -k deploy/kubernetes/" + profile + "`, or use this\n"
        + "# directory as the base of your own overlay (image, namespace, patches);\n"
        + "# see README.md, \"Deploy on Kubernetes\".\n"
        + yaml.safe_dump(kustomization, sort_keys=False)
    )
    return out


def container_image_from_binary(verifier: Verifier, podman: str, binary: Path) -> str:
    """A scratch image with the binary, its shared libraries, config/ and a passwd entry."""
    context = verifier.work / "image-context"
    root = context / "rootfs"
    shutil.rmtree(context, ignore_errors=True)
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(binary, root / "usr/local/bin/durable-streams-server")
    ldd = verifier.run(["ldd", str(binary)])
    for lib in re.findall(r"(/\S+)\s+\(0x", ldd.stdout):
        target = root / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), target)
    shutil.copytree(verifier.path("config"), root / "etc/durable-streams/config")
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/sbin/nologin\ndurable-streams:x:10001:10001::/nonexistent:/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\ndurable-streams:x:10001:\n")
    (root / "var/lib/durable-streams").mkdir(parents=True)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        (root / "etc/ssl/certs").mkdir(parents=True)
        shutil.copy2(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    (root / "tmp").mkdir()
    # The same runtime contract as the Dockerfile's final stage.
    (context / "Containerfile").write_text(
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "USER 10001:10001\n"
        "WORKDIR /var/lib/durable-streams\n"
        "ENV DS_CONFIG_DIR=/etc/durable-streams/config\n"
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n"
        "EXPOSE 4437 9464\n"
        'ENTRYPOINT ["/usr/local/bin/durable-streams-server"]\n'
        'CMD ["serve"]\n'
    )
    tag = f"localhost/durable-streams-server:verify-{os.getpid()}"
    result = verifier.run([podman, "build", "--network=none", "-t", tag, "-f", str(context / "Containerfile"), str(context)])
    if result.returncode != 0:
        raise CheckFailed([f"podman build: {(result.stderr or result.stdout).strip()[-1500:]}"])
    return tag


def run_image_probes(verifier: Verifier, podman: str, image: str) -> str:
    """Runs the image read-only as in the chart and asks /healthz and /readyz
    on the API port and, as the chart's kubelet probes do, on the separate
    plain metrics/probe port, which also serves /metrics."""
    port = live.free_port()
    metrics_port = live.free_port()
    name = f"verify-deploy-{os.getpid()}"
    # Sandboxes often refuse to raise rlimits or to use crun's cgroup
    # setup; modest rlimits and runc (when installed) work in more places.
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    args = [
        podman, "run", "-d", "--rm", "--name", name, *runtime, "--network=host",
        "--ulimit=nofile=4096:4096", "--ulimit=nproc=4096:4096", "--read-only", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", "--user=10001:10001", "--tmpfs=/var/lib/durable-streams:rw,U",
        "-e", f"DS_SERVER__BIND_ADDRESS=127.0.0.1:{port}", "-e", "DS_PROFILE=prod",
        "-e", f"DS_OBSERVABILITY__METRICS__BIND_ADDRESS=127.0.0.1:{metrics_port}",
        image,
    ]
    result = verifier.run(args)
    if result.returncode != 0:
        raise CheckFailed([f"podman run: {(result.stderr or result.stdout).strip()}"])
    try:
        answers = {}
        deadline = time.monotonic() + 30
        probes = [(port, "/healthz"), (port, "/readyz"), (metrics_port, "/healthz"), (metrics_port, "/readyz"), (metrics_port, "/metrics")]
        for probe_port, path in probes:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}{path}", timeout=2) as response:
                        answers[(probe_port, path)] = response.status
                        break
                except Exception as error:  # noqa: BLE001
                    if time.monotonic() > deadline:
                        logs = verifier.run([podman, "logs", name])
                        raise CheckFailed([f"{path} on port {probe_port} did not answer 200 from the container: {error}", *(logs.stdout + logs.stderr).strip().splitlines()[-5:]]) from None
                    time.sleep(0.3)
        inspect = verifier.run([podman, "inspect", "--format", "{{.Config.User}}", image])
        shown = ", ".join(f"{'api' if p == port else 'probe port'} {path} {status}" for (p, path), status in answers.items())
        return f"image from the local binary (scratch, read-only root, UID {inspect.stdout.strip()}, prod profile): {shown}"
    finally:
        verifier.run([podman, "stop", "-t", "10", name])
        verifier.run([podman, "rm", "-f", "--ignore", name])


CHECKS: dict[str, Callable[[Verifier], str]] = {
    "render": Verifier.check_render,
    "chart-lint": Verifier.check_chart_lint,
    "values-docs": Verifier.check_values_documented,
    "yamllint": Verifier.check_yamllint,
    "kubernetes-schemas": Verifier.check_kubernetes_schemas,
    "crd-and-dashboard-schemas": Verifier.check_custom_resources_and_dashboards,
    "pod-policy": Verifier.check_pod_policy,
    "server-config": Verifier.check_server_accepts_config,
    "generated-files": Verifier.check_generated_files,
    "rules": Verifier.check_rules,
    "dashboards": Verifier.check_dashboards,
    "metric-contract": Verifier.check_metric_contract,
    "monitoring": Verifier.check_monitoring,
    "names": Verifier.check_names,
    "egress": Verifier.check_egress,
    "cache": Verifier.check_cache,
    "ingress": Verifier.check_ingress,
    "upgrade": Verifier.check_upgrade,
    "helm-test": Verifier.check_helm_test,
    "notes": Verifier.check_notes,
    "backup": Verifier.check_backup,
    "release": Verifier.check_release,
    "dockerfile": Verifier.check_dockerfile,
    "container-image": Verifier.check_container_image,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--tools", type=Path, required=True, help="the tool cache (venv/, node/)")
    parser.add_argument("--checks", default="", help="comma list of checks (default: all)")
    parser.add_argument("--update", action="store_true", help="rewrite generated files")
    parser.add_argument("--server-bin", type=Path)
    args = parser.parse_args()
    names = [n for n in args.checks.split(",") if n] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    if args.update:
        names = ["generated-files"]
    verifier = Verifier(args.repo, args.tools, args.update, args.server_bin.resolve() if args.server_bin else None)
    passed = failed = skipped = 0
    try:
        for name in names:
            started = time.monotonic()
            try:
                summary = CHECKS[name](verifier)
                passed += 1
                print(f"PASS {name}: {summary} ({time.monotonic() - started:.1f}s)", flush=True)
            except Skip as skip:
                skipped += 1
                print(f"SKIP {name}: {skip}", flush=True)
            except CheckFailed as failure:
                failed += 1
                print(f"FAIL {name}:", flush=True)
                for problem in failure.problems:
                    print(f"  - {problem}", flush=True)
            except Exception as error:  # noqa: BLE001  (a broken input must fail its check, not the run)
                failed += 1
                print(f"FAIL {name}:", flush=True)
                print(f"  - {type(error).__name__}: {error}", flush=True)
    finally:
        shutil.rmtree(verifier.work, ignore_errors=True)
    print(f"verify-deploy: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
