"""The production overlay's trainer: a Kubeflow PyTorchJob (rank 0 = Master = the whole
trainer service, Workers = more ranks) in place of the base Deployment, checked as the
operator, the kubelet and the NetworkPolicies will read it."""

from __future__ import annotations

import pytest

from services.trainer.config import TrainerConfig
from shared import env
from shared.config import ConfigError, load_config
from tests.deploy_checks import (
    by_kind,
    config_data,
    container,
    deployments,
    network_allows,
    render,
    selects,
    serving_pods,
    stage_tls_files,
    trainer_ranks,
)


def test_production_runs_the_trainer_as_a_pytorchjob():
    docs = render("overlays/production")
    assert "trainer" not in by_kind(docs, "Deployment"), "the PyTorchJob replaces the base Deployment"
    assert not by_kind(render("overlays/local"), "PyTorchJob"), "the local overlay keeps the plain Deployment"
    job = by_kind(docs, "PyTorchJob")["trainer"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    # A service: every rank comes back after any exit (rank 0 exits 0 on SIGTERM, workers on its `stop`).
    assert {spec["restartPolicy"] for spec in replicas.values()} == {"Always"}
    assert "backoffLimit" not in job["spec"].get("runPolicy", {}), "a Deployment never gives up either"
    base = container(deployments("local")["trainer"]["spec"]["template"])
    for rtype, pod in trainer_ranks().items():
        c = container(pod)
        assert c["name"] == "pytorch", f"{rtype}: the operator sets RANK, WORLD_SIZE, MASTER_* in `pytorch` only"
        assert (c["image"], c.get("command"), c["args"]) == (base["image"], base.get("command"), base["args"]), rtype
    # The trainer Service reaches rank 0 only, the one that serves.
    selector = by_kind(docs, "Service")["trainer"]["spec"]["selector"]
    ranks = trainer_ranks()
    assert selects({"matchLabels": selector}, ranks["Master"]["metadata"]["labels"])
    assert not selects({"matchLabels": selector}, ranks["Worker"]["metadata"]["labels"])


def test_every_rank_finds_rank_zero_before_it_is_ready():
    """The operator's own master Service lists ready pods only, and rank 0 is ready only after
    every rank has joined: the ranks meet through a Service that lists it before."""
    rendezvous = by_kind(render("overlays/production"), "Service")["trainer-rendezvous"]["spec"]
    ranks = trainer_ranks()
    assert rendezvous["clusterIP"] == "None" and rendezvous["publishNotReadyAddresses"] is True
    assert selects({"matchLabels": rendezvous["selector"]}, ranks["Master"]["metadata"]["labels"])
    assert not selects({"matchLabels": rendezvous["selector"]}, ranks["Worker"]["metadata"]["labels"])
    master_port = next(p for p in container(ranks["Master"])["ports"] if p["name"] == "pytorchjob-port")
    assert [p["port"] for p in rendezvous["ports"]] == [master_port["containerPort"]]
    for rtype, pod in ranks.items():
        values = {e["name"]: e.get("value") for e in container(pod)["env"]}
        assert values[env.TRAINER_DIST_MASTER_ADDR] == "trainer-rendezvous", rtype


def test_the_master_is_the_base_trainer_pod():
    """Rank 0 is the whole trainer service: everything the base Deployment's pod has, it has
    (plus the Kafka identity kafka-clients.yaml gives the other services, the rendezvous, and TLS
    as tls-patches.yaml gives the others: probes on the health port, test_deploy_tls.py)."""
    base = by_kind(render("base"), "Deployment")["trainer"]["spec"]["template"]["spec"]
    master = trainer_ranks()["Master"]["spec"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "terminationGracePeriodSeconds"):
        assert master[key] == base[key], key
    assert master["securityContext"] == base["securityContext"]
    strip_image = [{k: v for k, v in c.items() if k != "image"} for c in base["initContainers"]]
    assert [{k: v for k, v in c.items() if k != "image"} for c in master["initContainers"]] == strip_image
    assert all(v in master["volumes"] for v in base["volumes"])
    b, m = base["containers"][0], master["containers"][0]
    for key in ("args", "envFrom", "securityContext", "resources"):
        assert m[key] == b[key], key
    for key in ("startupProbe", "readinessProbe", "livenessProbe"):  # the port: the TLS overlay's health port
        assert {**m[key], "grpc": None} == {**b[key], "grpc": None}, key
    for key in ("ports", "env", "volumeMounts"):
        missing = [item for item in b[key] if item not in m[key]]
        assert not missing, f"{key}: {missing}"


def test_trainer_workers_start_without_kafka_credentials(monkeypatch, tmp_path):
    """Workers never touch Kafka (services/trainer/parallel/worker.py): no SCRAM user, no CA,
    no broker access; the settings they get must still load with the trainer's config loader."""
    pod = trainer_ranks()["Worker"]["spec"]
    c = pod["containers"][0]
    assert not [e for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})], "a Kafka password in a worker"
    kafka_ca = config_data("production")[env.KAFKA_SSL_CAFILE]
    assert not any(kafka_ca.startswith(m["mountPath"] + "/") for m in c["volumeMounts"]), "the Kafka CA in a worker"
    store = next(m for m in c["volumeMounts"] if m["mountPath"] == config_data("production")[env.MODEL_STORE])
    assert store["readOnly"] is True, "workers read the model store, rank 0 alone writes it"
    variables = dict(config_data("production"))
    variables.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
    for var in (env.KAFKA_SESSION_TIMEOUT_MS, env.KAFKA_HEARTBEAT_INTERVAL_MS):
        monkeypatch.delenv(var, raising=False)
    for var, value in stage_tls_files(trainer_ranks()["Worker"], variables, tmp_path).items():
        monkeypatch.setenv(var, value)  # the TLS files: stand-ins, the loader checks that they exist
    try:
        config = load_config(TrainerConfig, [])
    except ConfigError as exc:
        pytest.fail(f"a trainer worker would refuse to start: {exc}")
    assert config.kafka_sasl_mechanism == "" and config.dist_backend == "gloo"
    assert config.reward_addr == config_data("production")[env.REWARD_ADDR]


def test_network_policies_let_the_trainer_ranks_meet_and_nothing_else():
    docs = render("overlays/production")
    policies = list(by_kind(docs, "NetworkPolicy").values())
    pods = serving_pods("production")
    master, worker = pods["trainer"], trainer_ranks()["Worker"]
    rendezvous = next(p["containerPort"] for p in container(master)["ports"] if p["name"] == "pytorchjob-port")
    kafka = {"metadata": {"labels": {"app.kubernetes.io/name": "kafka"}}, "spec": {"containers": []}}
    gloo_port = 41234  # gloo's pairwise connections: ports the kernel picks, on every rank
    assert network_allows(policies, worker, master, rendezvous)
    for a, b in ((worker, master), (master, worker), (worker, worker)):
        assert network_allows(policies, a, b, gloo_port)
    # Both kinds of rank score rollouts on the reward service; only rank 0 talks to Kafka.
    for rank in (master, worker):
        assert network_allows(policies, rank, pods["reward"], 50052)
    assert network_allows(policies, master, kafka, 9093)
    assert not network_allows(policies, worker, kafka, 9093)
    # The ranks' opening is theirs alone.
    for other in ("policy", "reward", "feedback"):
        assert not network_allows(policies, pods[other], master, rendezvous), other
        assert not network_allows(policies, pods[other], worker, gloo_port), other
    # The evaluation is not lenient: the default deny holds where nothing opens a path.
    assert not network_allows(policies, pods["policy"], pods["feedback"], 9103)
