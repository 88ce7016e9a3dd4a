"""TLS in the production overlay: every gRPC server speaks (mutual) TLS with a
cert-manager certificate that names the hosts its clients dial, every client
trusts the same CA, and the probes ask the plaintext health port."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from services.feedback.config import FeedbackConfig
from services.policy.config import PolicyConfig
from services.reward.config import RewardConfig
from services.trainer.config import TrainerConfig
from shared import env
from shared.config import ConfigError, load_config
from shared.grpc.tls import client_tls, server_tls
from tests.deploy_checks import (
    TLS_FILE_VARS,
    by_kind,
    config_data,
    container,
    render,
    secret_of_file,
    serving_pods,
    stage_tls_files,
    trainer_ranks,
)

SERVICES = ("policy", "reward", "feedback", "trainer")
# Where each service's clients find it (rlhf-common), by the service.
ADDRESS_VARS = {
    "policy": env.POLICY_ADDR,
    "reward": env.REWARD_ADDR,
    "feedback": env.FEEDBACK_ADDR,
    "trainer": env.TRAINER_ADDR,
}
ISSUER = {"name": "rlhf-ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
CONFIGS = {"policy": PolicyConfig, "reward": RewardConfig, "feedback": FeedbackConfig, "trainer": TrainerConfig}


def _values(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def _dialled_host(address: str) -> str:
    """The host a gRPC client checks the certificate against: dns:///policy:50051 -> policy."""
    target = urlsplit(address).path.lstrip("/") if "://" in address else address
    return target.rpartition(":")[0]


def _certificate_of_secret(secret: str) -> dict:
    certificates = [c for c in by_kind(render("overlays/production"), "Certificate").values()]
    match = [c for c in certificates if c["spec"]["secretName"] == secret]
    assert len(match) == 1, f"{len(match)} Certificates write the Secret {secret}"
    return match[0]


@pytest.mark.parametrize("name", SERVICES)
def test_every_grpc_server_serves_mutual_tls_from_its_certificate(name):
    pod = serving_pods("production")[name]
    values = _values(container(pod))
    assert set(TLS_FILE_VARS) <= set(values), f"{name}: {sorted(set(TLS_FILE_VARS) - set(values))} unset"
    secrets = {secret_of_file(pod, values[var]) for var in TLS_FILE_VARS}
    assert secrets == {f"rlhf-{name}-tls"}, f"{name}: TLS files from {secrets}"
    # The server's certificate and the one it presents as a client are one; its CA verifies both ways.
    assert values[env.TLS_CERT] == values[env.TLS_CLIENT_CERT] and values[env.TLS_KEY] == values[env.TLS_CLIENT_KEY]
    assert values[env.TLS_CA] == values[env.TLS_CLIENT_CA]
    assert values[env.TLS_CA].endswith("/ca.crt") and values[env.TLS_CERT].endswith("/tls.crt")
    assert values[env.TLS_KEY].endswith("/tls.key")


@pytest.mark.parametrize("name", SERVICES)
def test_probes_ask_the_plaintext_health_port(name):
    """Native gRPC probes cannot speak TLS: they ask the health-only port, which the pod declares."""
    c = container(serving_pods("production")[name])
    health_port = int(_values(c)[env.HEALTH_PORT])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == health_port and health_port != ports["grpc"]
    for probe in PROBES:
        assert c[probe] == {**c[probe], "grpc": {"port": health_port}}, f"{name}: {probe}"


@pytest.mark.parametrize("name", SERVICES)
def test_each_certificate_names_the_host_its_clients_dial(name):
    pod = serving_pods("production")[name]
    cert = _certificate_of_secret(secret_of_file(pod, _values(container(pod))[env.TLS_CERT]))
    spec = cert["spec"]
    host = _dialled_host(config_data("production")[ADDRESS_VARS[name]])
    namespace = cert["metadata"]["namespace"]
    assert host == name
    assert {host, f"{host}.{namespace}.svc", f"{host}.{namespace}.svc.cluster.local"} <= set(spec["dnsNames"])
    assert {"server auth", "client auth"} <= set(spec["usages"]), "a pod is a server and, for mutual TLS, a client"
    assert spec["issuerRef"] == ISSUER
    assert "isCA" not in spec and not any(n.startswith("trainer-rendezvous") for n in spec["dnsNames"])


def test_only_the_grpc_services_get_certificates():
    """One per gRPC service; none for the torch.distributed rendezvous or anything else."""
    certificates = by_kind(render("overlays/production"), "Certificate")
    assert {c["spec"]["secretName"] for c in certificates.values()} == {f"rlhf-{s}-tls" for s in SERVICES}


def test_trainer_workers_call_the_reward_service_with_the_trainers_certificate(monkeypatch, tmp_path):
    """Workers score rollouts on the reward service, which requires client certificates; they serve nothing."""
    worker = trainer_ranks()["Worker"]
    values = _values(container(worker))
    assert {secret_of_file(worker, values[v]) for v in (env.TLS_CA, env.TLS_CLIENT_CERT, env.TLS_CLIENT_KEY)} == {
        "rlhf-trainer-tls"
    }
    assert env.TLS_CERT not in values and env.HEALTH_PORT not in values
    variables = {**config_data("production"), **values}
    for var in (env.KAFKA_SESSION_TIMEOUT_MS, env.KAFKA_HEARTBEAT_INTERVAL_MS):
        monkeypatch.delenv(var, raising=False)
    for var, value in stage_tls_files(worker, variables, tmp_path).items():
        monkeypatch.setenv(var, value)
    config = load_config(TrainerConfig, [])
    tls = client_tls(config)
    assert tls is not None and tls.cert_file and tls.key_file and server_tls(config) is None


@pytest.mark.parametrize("name", SERVICES)
def test_the_production_tls_settings_load_and_turn_tls_on(name, monkeypatch, tmp_path):
    """The real config loader accepts a production pod's TLS settings (with stand-in files: the
    Secrets exist only in a cluster) and makes a mutual-TLS server and a TLS client of them."""
    pod = serving_pods("production")[name]
    values = _values(container(pod))
    for var in (env.KAFKA_SESSION_TIMEOUT_MS, env.KAFKA_HEARTBEAT_INTERVAL_MS):
        monkeypatch.delenv(var, raising=False)
    values[env.KAFKA_SASL_PASSWORD] = "password-from-strimzi"  # a secretKeyRef: Strimzi writes it
    for var, value in stage_tls_files(pod, {**config_data("production"), **values}, tmp_path).items():
        monkeypatch.setenv(var, value)
    try:
        config = load_config(CONFIGS[name], [])
    except ConfigError as exc:
        pytest.fail(f"{name} would refuse to start: {exc}")
    server, client = server_tls(config), client_tls(config)
    assert server is not None and server.mutual and client is not None and client.cert_file
    assert config.health_port == int(values[env.HEALTH_PORT])


def test_the_bootstrap_job_needs_no_certificate():
    """It only writes the model store (no gRPC call): it must not get the services' TLS settings,
    which would point at files it does not mount."""
    job = by_kind(render("overlays/production"), "Job")["rlhf-bootstrap"]["spec"]["template"]
    c = container(job)
    names = {e["name"] for e in c.get("env", [])} | set(config_data("production"))
    assert not names & {*TLS_FILE_VARS, env.HEALTH_PORT}
