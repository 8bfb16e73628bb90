"""How Kubernetes and its operators read rendered objects, for verify.py:
label selectors, which Services a ServiceMonitor scrapes and which pods
they reach, which addresses a NetworkPolicy lets a pod connect to, and the
names a release's objects take. Pure functions over parsed YAML documents.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

CHART_NAME = "durable-streams"


def fullname(release: str) -> str:
    """The chart's fullname helper: the release name when it contains the chart name."""
    return release if CHART_NAME in release else f"{release}-{CHART_NAME}"[:63].rstrip("-")


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels;
    an empty or missing selector matches everything, as in Kubernetes."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(docs: Iterable[dict]) -> list[tuple[str, dict]]:
    """(owner, pod metadata+spec) of every pod the documents create: workloads,
    CronJobs' job templates, bare Pods (helm test)."""
    out = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("StatefulSet", "Deployment"):
            out.append((f"{kind}/{name}", doc["spec"]["template"]))
        elif kind == "CronJob":
            out.append((f"{kind}/{name}", doc["spec"]["jobTemplate"]["spec"]["template"]))
        elif kind == "Pod":
            out.append((f"{kind}/{name}", doc))
    return out


def is_server(doc: dict) -> bool:
    """Whether an object belongs to the server (not to the cache or a helper)."""
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "server"


def server_workloads(docs: Iterable[dict]) -> list[dict]:
    """The StatefulSet or Deployment of the server."""
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment") and is_server(d)]


def server_owners(docs: Iterable[dict]) -> set[str]:
    """pod_templates owners that are server pods."""
    return {f"{d['kind']}/{d['metadata']['name']}" for d in server_workloads(docs)}


def disruptions_allowed(budget: dict, replicas: int) -> int:
    """How many of replicas pods a PodDisruptionBudget spec lets go at once
    (percentages rounded as the disruption controller does: minAvailable
    up, maxUnavailable up)."""
    def count(value: Any, round_up: bool) -> int:
        if isinstance(value, str) and value.endswith("%"):
            share = replicas * int(value[:-1]) / 100
            return int(-(-share // 1)) if round_up else int(share)
        return int(value)

    if budget.get("minAvailable") is not None:
        return max(0, replicas - count(budget["minAvailable"], True))
    return min(replicas, count(budget.get("maxUnavailable", 1), True))


def env_secret_ref(container: dict, name: str) -> tuple[str, str] | None:
    """(Secret, key) an environment variable reads, directly or as the one
    $(VAR) its value expands; None when it reads no Secret."""
    env = {e["name"]: e for e in container.get("env") or []}
    entry = env.get(name) or {}
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    if not ref:
        names = [n for n in env if f"$({n})" in (entry.get("value") or "")]
        ref = (env[names[0]].get("valueFrom") or {}).get("secretKeyRef") if len(names) == 1 else None
    return (ref["name"], ref["key"]) if ref else None


def scrape_targets(docs: list[dict]) -> dict[str, list[str]]:
    """As the Prometheus Operator resolves each ServiceMonitor endpoint: the
    Services in the monitor's namespace (no namespaceSelector) matching its
    selector with a port of the endpoint's name, then the pods behind them.
    Returns pod owner -> the Services each is scraped through."""
    targets: dict[str, list[str]] = {}
    services = [d for d in docs if d["kind"] == "Service"]
    pods = pod_templates(docs)
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        namespace = monitor["metadata"].get("namespace")
        names = (monitor["spec"].get("namespaceSelector") or {}).get("matchNames") or [namespace]
        for endpoint in monitor["spec"].get("endpoints") or []:
            for service in services:
                if service["metadata"].get("namespace") not in names:
                    continue
                if not selector_matches(monitor["spec"].get("selector"), service["metadata"].get("labels") or {}):
                    continue
                if endpoint.get("port") not in {p.get("name") for p in service["spec"].get("ports") or []}:
                    continue
                for owner, pod in pods:
                    if all((pod["metadata"].get("labels") or {}).get(k) == v for k, v in (service["spec"].get("selector") or {}).items()):
                        targets.setdefault(owner, []).append(service["metadata"]["name"])
    return targets


def egress_allows(policy: dict, address: str, port: int, protocol: str = "TCP", named_ports: dict | None = None) -> bool:
    """Whether a NetworkPolicy lets its pods connect to address:port. A pod
    under no Egress policy may connect anywhere."""
    if "Egress" not in (policy["spec"].get("policyTypes") or []):
        return True
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"].get("egress") or []:
        ports = rule.get("ports")
        if ports:
            allowed = False
            for p in ports:
                want = p.get("port")
                if isinstance(want, str):
                    want = (named_ports or {}).get(want)
                if p.get("protocol", "TCP") != protocol:
                    continue
                if want is None or (want <= port <= p.get("endPort", want)):
                    allowed = True
            if not allowed:
                continue
        peers = rule.get("to")
        if not peers:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if not block:
                continue  # pod/namespace selectors never match an outside address
            network = ipaddress.ip_network(block["cidr"], strict=False)
            if ip.version != network.version or ip not in network:
                continue
            if any(ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [] if ipaddress.ip_network(e, strict=False).version == ip.version):
                continue
            return True
    return False


def object_keys(docs: Iterable[dict]) -> list[tuple[str, str]]:
    """(kind, namespace/name) of every object; what must not collide."""
    return [(d["kind"], f"{d['metadata'].get('namespace', '')}/{d['metadata']['name']}") for d in docs]


def secrets_used(docs: Iterable[dict]) -> dict[str, str]:
    """Secret name -> who uses or writes it: pod volumes, Certificates,
    Ingress TLS."""
    out: dict[str, str] = {}
    for owner, pod in pod_templates(docs):
        for volume in pod["spec"].get("volumes") or []:
            if "secret" in volume:
                out.setdefault(volume["secret"]["secretName"], f"{owner} volume {volume['name']}")
    for doc in docs:
        if doc["kind"] == "Certificate":
            out.setdefault(doc["spec"]["secretName"], f"Certificate/{doc['metadata']['name']}")
    return out


def claims_used(docs: Iterable[dict]) -> dict[str, str]:
    """PersistentVolumeClaim name -> who mounts it (StatefulSet claims expanded per ordinal)."""
    out: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "StatefulSet":
            for template in doc["spec"].get("volumeClaimTemplates") or []:
                for ordinal in range(doc["spec"].get("replicas", 1)):
                    out[f"{template['metadata']['name']}-{doc['metadata']['name']}-{ordinal}"] = f"StatefulSet/{doc['metadata']['name']}"
        if doc["kind"] == "PersistentVolumeClaim":
            out[doc["metadata"]["name"]] = f"PersistentVolumeClaim/{doc['metadata']['name']}"
    return out


def nested(data: Any, *keys: str, default: Any = None) -> Any:
    """data[k1][k2]... or default when a level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data
