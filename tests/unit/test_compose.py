"""docker/compose.yaml and the images: valid against the compose specification
(check-jsonschema's vendored schema, offline), the loop closed on Apache Kafka,
started in order by health and completion."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
import yaml

from shared import env
from shared.kafka import events
from tests.deploy_checks import ROOT, by_kind, render, tool

COMPOSE = ROOT / "docker" / "compose.yaml"
LOOP = ("reward", "policy", "feedback", "trainer")


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def check_compose_schema(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification(tmp_path):
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["trainer"]["depends_on"]["reward"]["condition"] = "service_ready"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert check_compose_schema(tmp_path / "compose.yaml").returncode != 0, "the schema check must be able to fail"


def test_the_whole_loop_runs_on_apache_kafka_in_kraft_mode():
    svc = services()
    assert set(LOOP) | {"kafka", "topics", "bootstrap", "prometheus", "grafana"} <= set(svc)
    kafka = svc["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    local = by_kind(render("overlays/local"), "StatefulSet")["kafka"]["spec"]["template"]["spec"]["containers"][0]
    assert local["image"] == kafka["image"], "one Apache Kafka version for compose and the local overlay"
    for name in LOOP:
        assert svc[name]["command"] == ["python", "-m", f"services.{name}"]
        assert svc[name]["environment"][env.KAFKA] == "kafka:9092"
        assert svc[name]["environment"][env.HOST] == "0.0.0.0"  # services bind loopback unless told otherwise


def test_topics_are_created_with_the_codes_partition_counts():
    script = services()["topics"]["command"][0]
    created = dict(re.findall(r"(rlhf\.[\w.-]+):(\d+)", script))
    assert {name: int(n) for name, n in created.items()} == events.TOPIC_PARTITIONS
    assert services()["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_services_start_in_order_by_health_and_completion_not_crash_loops():
    svc = services()

    def waits_for(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in svc[name].get("depends_on", {}).items()}

    assert waits_for("topics") == {"kafka": "service_healthy"}
    for name in ("reward", "policy", "trainer"):
        assert waits_for(name)["bootstrap"] == "service_completed_successfully", name
    for name in LOOP:
        assert waits_for(name)["topics"] == "service_completed_successfully", name
    assert waits_for("policy")["reward"] == "service_healthy"
    assert waits_for("feedback")["policy"] == "service_healthy"
    assert {dep for dep, c in waits_for("trainer").items() if c == "service_healthy"} == {
        "reward",
        "policy",
        "feedback",
    }
    for name in LOOP:
        assert svc[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "shared.grpc.healthcheck"], name
    assert svc["bootstrap"]["healthcheck"] == {"disable": True}
    assert svc["bootstrap"]["command"][:2] == ["rlhf", "bootstrap"]


def test_the_trainer_keeps_its_ledger_on_a_volume():
    trainer = services()["trainer"]
    state_dir = trainer["environment"][env.TRAINER_STATE_DIR]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in trainer["volumes"]}
    assert volumes[state_dir] in yaml.safe_load(COMPOSE.read_text())["volumes"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_have_a_healthcheck_and_every_package(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    healthcheck = re.search(r"^HEALTHCHECK .* CMD (.+)$", text, re.M)
    assert healthcheck and healthcheck.group(1) == '["python", "-m", "shared.grpc.healthcheck"]'
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert {p.rstrip("*") for p in packages} <= copied, (
        "pip install . needs every package (rlhf bootstrap imports demo)"
    )
    assert re.search(r"^FROM python:3\.11", text, re.M), "a base that ships Python 3.11"
    assert "USER 10001" in text


def test_the_gpu_image_has_cuda_torch_and_onnxruntime_gpu():
    text = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert "pip uninstall -y onnxruntime" in text and "onnxruntime-gpu[cuda,cudnn]==" in text
    assert "torch.version.cuda" in text, "the build fails if torch is not a CUDA build"


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**", "everything is excluded first"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        for line in re.findall(r"^COPY (?!--from)(.+)$", (ROOT / "docker" / dockerfile).read_text(), re.M):
            copied.update(line.split()[:-1])
    assert copied <= allowed, f"COPY needs {sorted(copied - allowed)} in .dockerignore's allow list"
