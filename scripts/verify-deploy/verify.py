"""Checks of the deployment bundle: Helm chart, plain manifests, alert rules,
dashboards, runbook and Dockerfile. Run through scripts/verify-deploy.sh,
which installs the tools first.

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
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

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
PROFILES = ["prod", "prod-tls", "prod-mtls"]
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
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
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
    values: dict[str, Any] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    docs: list[tuple[str, dict]] = field(default_factory=list)


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
                    scenario.manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
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
        missing = {"ServiceMonitor", "PrometheusRule", "Certificate"} - kinds
        if missing:
            raise CheckFailed([f"no rendered {', '.join(sorted(missing))} to check: a toggle or scenario is broken"])
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
        return output.splitlines()[-1].removeprefix("ok: ")

    def check_pod_policy(self) -> str:
        """What the issue promises about the pods, read off every rendered workload."""
        problems = []
        checked = 0
        for scenario in self.good_scenarios():
            try:
                self._check_workload(scenario)
                checked += 1
            except CheckFailed as failed:
                problems += [f"{scenario.name}: {p}" for p in failed.problems]
        if problems:
            raise CheckFailed(problems)
        return f"{checked} workloads: probes, non-root, read-only root, TLS directory mounts, drain timing, config wiring"

    def _check_workload(self, scenario: Scenario) -> None:
        p: list[str] = []
        v = scenario.values
        docs = [doc for _, doc in scenario.docs]
        by_kind: dict[str, list[dict]] = {}
        for doc in docs:
            by_kind.setdefault(doc["kind"], []).append(doc)
        durable = v["storage"]["mode"] != "memory"
        workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
        if len(workloads) != 1:
            raise CheckFailed([f"expected one workload, got {[w['kind'] for w in workloads]}"])
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
        psc = pod.get("securityContext", {})
        csc = container.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and csc.get("runAsNonRoot")):
            p.append("pod and container must set runAsNonRoot: true")
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
            want_secret = v["tls"]["secretName"] or f"{RELEASE}-tls"
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
        # Pods roll when the configuration changes.
        annotations = spec["template"]["metadata"].get("annotations", {})
        cm_text = next(t for name, t in scenario.manifests.items() if name.endswith("/configmap.yaml"))
        if annotations.get("checksum/config") != hashlib.sha256(cm_text.encode()).hexdigest():
            p.append("checksum/config must be the sha256 of the rendered ConfigMap")
        # Services route to named container ports.
        for svc in by_kind.get("Service", []):
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
        labels = spec["template"]["metadata"]["labels"]
        for constraint in pod.get("topologySpreadConstraints", []):
            selector = constraint.get("labelSelector", {}).get("matchLabels", {})
            if not selector or any(labels.get(k) != val for k, val in selector.items()):
                p.append("topologySpreadConstraints must select the pod's own labels")
        if v["metrics"]["serviceMonitor"]["enabled"]:
            sm = by_kind.get("ServiceMonitor", [{}])[0]
            endpoint = (sm.get("spec", {}).get("endpoints") or [{}])[0]
            if endpoint.get("port") != ("metrics" if separate else "api") or endpoint.get("path") != v["metrics"]["path"]:
                p.append(f"ServiceMonitor endpoint {endpoint} does not scrape the metrics endpoint")
            if sm.get("spec", {}).get("jobLabel") != "app.kubernetes.io/part-of":
                p.append("ServiceMonitor must set the job label the alert rules expect")
        if v["metrics"]["prometheusRule"]["enabled"]:
            rule = by_kind.get("PrometheusRule", [{}])[0]
            expected = self.load_yaml(RULES)["groups"]
            base = v["metrics"]["prometheusRule"]["runbookBaseUrl"]
            if base:
                for group in expected:
                    for r in group["rules"]:
                        if "runbook_url" in r.get("annotations", {}):
                            r["annotations"]["runbook_url"] = base.rstrip("/") + "/" + r["annotations"]["runbook_url"]
            if rule.get("spec", {}).get("groups") != expected:
                p.append(f"the PrometheusRule's groups differ from {RULES}")
        if v["metrics"]["dashboards"]["enabled"]:
            cm = next((c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"].endswith("-dashboards")), None)
            want = {f.name: f.read_text() for f in self.path(GRAFANA).glob("*.json")}
            got = (cm or {}).get("data", {})
            if {k: json.loads(t) for k, t in got.items()} != {k: json.loads(t) for k, t in want.items()}:
                p.append(f"the dashboards ConfigMap differs from {GRAFANA}")
            if not all((cm or {}).get("metadata", {}).get("labels", {}).get(k) == val for k, val in v["metrics"]["dashboards"]["labels"].items()):
                p.append("the dashboards ConfigMap lacks the sidecar label")
        if p:
            raise CheckFailed(p)

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
            result = self.run([str(binary), "check-config", "--config", str(path)], env=env, cwd=self.work)
            count += 1
            if result.returncode != 0:
                problems.append(f"{scenario.name}: exit {result.returncode}: {(result.stderr or result.stdout).strip()}")
        if problems:
            raise CheckFailed(problems)
        return f"check-config accepts the {count} rendered configurations"

    def make_certs(self) -> Path:
        out = self.work / "certs"
        if (out / "server.crt").exists():
            return out
        out.mkdir(parents=True, exist_ok=True)
        # rustls/webpki accept only X.509 v3 leaf certificates: give the
        # signed certificate extensions (older openssl makes v1 without).
        (out / "server.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=DNS:durable-streams,DNS:localhost\n"
        )
        steps = [
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=verify-deploy CA"],
            ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=durable-streams"],
            ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
        ]
        for step in steps:
            result = self.run(step, cwd=out)
            if result.returncode != 0:
                raise CheckFailed([f"{' '.join(step[:2])}: {result.stderr.strip()}"])
        return out

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
            "subscriptions.enabled", "subscriptions.signing_key_path",
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
        readme = self.path(CHART / "README.md").read_text()
        rows, _ = values_table(self.path(CHART / "values.yaml").read_text())
        expected[CHART / "README.md"] = replace_between(readme, "<!-- values:start -->", "<!-- values:end -->", "\n" + rows + "\n")
        generated_dirs = [MANIFESTS, CHART / "files/grafana", CHART / "files/prometheus"]
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
        ):
            if needle not in (final if needle.startswith(("USER", "ENTRYPOINT", "EXPOSE")) else text):
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
            for included in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', source.read_text()):
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
    groups: dict[str, list[dict]] = {"durable-streams.yaml": [], "monitoring.yaml": [], "certificate.yaml": []}
    order = ["ServiceAccount", "ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget", "NetworkPolicy"]
    for template, doc in scenario.docs:
        doc = json.loads(json.dumps(doc).replace('"app.kubernetes.io/managed-by": "Helm"', '"app.kubernetes.io/managed-by": "kubectl"'))
        if doc["apiVersion"].startswith("monitoring.coreos.com/") or doc["metadata"]["name"].endswith("-dashboards"):
            groups["monitoring.yaml"].append(doc)
        elif doc["apiVersion"].startswith("cert-manager.io/"):
            groups["certificate.yaml"].append(doc)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    (root / "tmp").mkdir()
    # The same runtime contract as the Dockerfile's final stage.
    (context / "Containerfile").write_text(
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "USER 10001:10001\n"
        "WORKDIR /var/lib/durable-streams\n"
        "ENV DS_CONFIG_DIR=/etc/durable-streams/config\n"
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
    port = free_port()
    metrics_port = free_port()
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
    verifier = Verifier(args.repo, args.tools, args.update, args.server_bin)
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
