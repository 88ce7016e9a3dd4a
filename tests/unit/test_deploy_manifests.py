"""The Kubernetes and Compose files parse and agree with the services' contract."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_documents() -> list[dict]:
    kustomization = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(load_all(ROOT / "k8s/base" / resource))
    return docs


def test_every_overlay_resource_exists_and_parses():
    for kustomization in ROOT.glob("k8s/**/kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for resource in spec.get("resources", []):
            target = kustomization.parent / resource
            assert target.exists(), f"{kustomization}: {resource} is missing"
            if target.is_file():
                assert load_all(target)
        for patch in spec.get("patches", []):
            if "path" in patch:
                assert (kustomization.parent / patch["path"]).is_file()


def test_probes_use_grpc_health_on_the_grpc_port():
    deployments = [d for d in base_documents() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"policy", "reward", "feedback", "trainer"}
    for dep in deployments:
        container = dep["spec"]["template"]["spec"]["containers"][0]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RLHF_PORT"] == str(grpc_port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port


def test_shutdown_fits_in_the_termination_grace_period():
    config = next(d for d in base_documents() if d["kind"] == "ConfigMap")["data"]
    needed = float(config["RLHF_DRAIN_DELAY_S"]) + float(config["RLHF_GRACE_PERIOD_S"])
    for dep in (d for d in base_documents() if d["kind"] == "Deployment"):
        assert needed < dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], dep["metadata"]["name"]


def test_env_vars_in_manifests_are_ones_the_code_reads():
    from shared import env

    known = {v for k, v in vars(env).items() if k.isupper()}
    config = next(d for d in base_documents() if d["kind"] == "ConfigMap")["data"]
    assert set(config) <= known, set(config) - known
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for var in svc.get("environment") or {}:
            if var.startswith("RLHF_"):
                assert var in known, f"compose {name}: {var}"
