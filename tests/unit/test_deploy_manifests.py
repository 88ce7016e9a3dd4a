"""The Kubernetes manifests: every overlay rendered by kustomize and validated
strictly against the Kubernetes and CRD schemas, then read as an operator would."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import env
from shared.config import ConfigError, load_config
from shared.kafka import events
from shared.models.store import CURRENT
from shared.service_config import ServiceConfig
from tests.deploy_checks import (
    OVERLAYS,
    ROOT,
    by_kind,
    config_data,
    container,
    deployments,
    pod_templates,
    render,
    serving_pods,
    stage_tls_files,
    trainer_ranks,
    validate,
)

SERVICES = ("policy", "reward", "feedback", "trainer")
# What each service does on Kafka (DESIGN.md's topic table): its KafkaUser must allow exactly this.
KAFKA_NEEDS = {
    "policy": {("topic", events.GENERATIONS_TOPIC, "Write"), ("topic", events.MODEL_UPDATES_TOPIC, "Read")},
    "reward": {("topic", events.MODEL_UPDATES_TOPIC, "Read")},
    "feedback": {("topic", events.FEEDBACK_TOPIC, "Write")},
    "trainer": {
        ("topic", events.GENERATIONS_TOPIC, "Read"),
        ("topic", events.FEEDBACK_TOPIC, "Read"),
        ("group", "rlhf-trainer", "Read"),
        ("topic", events.MODEL_UPDATES_TOPIC, "Write"),
        ("topic", events.DEADLETTER_TOPIC, "Write"),
    },
}
# The model kinds each workload needs in the store before it starts.
NEEDS_MODELS = {"policy": ["policy"], "reward": ["reward"], "trainer": ["policy", "reward"], "feedback": []}


@pytest.mark.parametrize("path", [f"overlays/{o}" for o in OVERLAYS] + ["observability"])
def test_every_object_is_valid_against_its_schema(path):
    docs = render(path)
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError, LookupError) as exc:
            pytest.fail(f"k8s/{path}: {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_the_validation_refuses_an_unknown_field_and_a_wrong_type():
    """The check above could pass by accident if validation were lenient: it is not."""
    docs = render("overlays/production")
    bad_pod = copy.deepcopy(by_kind(docs, "Deployment")["policy"])
    bad_pod["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "Always"
    bad_topic = copy.deepcopy(by_kind(docs, "KafkaTopic")[events.FEEDBACK_TOPIC])
    bad_topic["spec"]["partitions"] = "twelve"
    bad_user = copy.deepcopy(by_kind(docs, "KafkaUser")["rlhf-trainer"])
    bad_user["spec"]["authorization"]["acls"][0]["operation"] = "Read"  # v1beta2's field, gone in v1
    bad_job = copy.deepcopy(by_kind(docs, "PyTorchJob")["trainer"])
    bad_job["spec"]["pytorchReplicaSpecs"]["Worker"]["replica"] = 2  # for "replicas"
    bad_rank = copy.deepcopy(by_kind(docs, "PyTorchJob")["trainer"])
    bad_rank["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["ports"][0]["port"] = 1
    for bad in (bad_pod, bad_topic, bad_user, bad_job, bad_rank):
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate(bad)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_names_resolve_and_only_the_policy_runs_the_gpu_image(overlay):
    for name, pod in pod_templates(render(f"overlays/{overlay}")).items():
        spec = pod["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            image = c["image"]
            registry_path, _, tag = image.rpartition(":")
            assert "/" in registry_path and tag, f"{overlay} {name}: image {image!r} does not resolve"
            gpu = tag.endswith("-gpu")
            assert gpu == (overlay == "production" and name == "Deployment/policy"), f"{overlay} {name}: {image}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(overlay):
    docs = render(f"overlays/{overlay}")
    namespace = by_kind(docs, "Namespace")["rlhf"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, pod in pod_templates(docs).items():
        spec = pod["spec"]
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        ours = "rlhf-loop" in spec["containers"][0]["image"]
        if ours:
            assert spec.get("serviceAccountName") == "rlhf-loop", name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            security = c.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            assert not security.get("privileged"), f"{name}/{c['name']}"
            if ours:
                assert security.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
        if ours:  # the writable scratch space the read-only root needs
            tmp = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], name
    account = by_kind(docs, "ServiceAccount")["rlhf-loop"]
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_grpc_health_on_the_grpc_port(overlay):
    """On the gRPC port, or on the plaintext health port where the gRPC port speaks TLS
    (native probes cannot); tests/unit/test_deploy_tls.py checks that one in detail."""
    pods = serving_pods(overlay)
    for name, pod in pods.items():
        c = container(pod)
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        env_values = {e["name"]: e.get("value") for e in c["env"]}
        assert env_values["RLHF_PORT"] == str(grpc_port), name
        probe_port = int(env_values[env.HEALTH_PORT]) if env.TLS_CERT in env_values else grpc_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == probe_port, name
    assert set(pods) == set(SERVICES)


def test_shutdown_fits_in_the_termination_grace_period():
    config = config_data("production")
    serving = float(config["RLHF_DRAIN_DELAY_S"]) + float(config["RLHF_GRACE_PERIOD_S"])
    # TrainerServer.stop after the gRPC server: joins the training thread (30 s),
    # flushes (10 s) and closes (5 s) its producer.
    trainer_after_serving = 30 + 10 + 5
    pods = serving_pods("production")
    for name, pod in pods.items():
        needed = serving + (trainer_after_serving if name == "trainer" else 0)
        assert needed < pod["spec"]["terminationGracePeriodSeconds"], name
    # A worker waits for rank 0's `stop`, sent once rank 0 has stopped training: it must not be killed first.
    master_grace = pods["trainer"]["spec"]["terminationGracePeriodSeconds"]
    assert trainer_ranks()["Worker"]["spec"]["terminationGracePeriodSeconds"] >= master_grace


def test_trainer_state_lives_on_its_persistent_volume():
    for overlay in OVERLAYS:
        spec = serving_pods(overlay)["trainer"]["spec"]
        state_dir = next(e["value"] for e in spec["containers"][0]["env"] if e["name"] == env.TRAINER_STATE_DIR)
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == state_dir)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert claim in by_kind(render(f"overlays/{overlay}"), "PersistentVolumeClaim")
    # One writer of the ledger: never two trainers at once.
    assert deployments("local")["trainer"]["spec"]["strategy"]["type"] == "Recreate"
    job = by_kind(render("overlays/production"), "PyTorchJob")["trainer"]
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    worker = trainer_ranks()["Worker"]["spec"]
    assert not any(
        "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] == claim for v in worker["volumes"]
    ), "the state claim is ReadWriteOnce and the master's alone"


def test_services_wait_for_the_bootstrap_jobs_models():
    """Ordering without crash loops: the init container waits for the store's CURRENT pointers."""
    docs = render("overlays/production")
    assert "rlhf-bootstrap" in by_kind(docs, "Job")
    pods = list(serving_pods("production").items())
    pods.append(("trainer", trainer_ranks()["Worker"]))
    for name, pod in pods:
        inits = pod["spec"].get("initContainers", [])
        script = " ".join(" ".join(c["command"]) for c in inits)
        for kind in NEEDS_MODELS[name]:
            assert f"/models/{kind}/{CURRENT}" in script, f"{name} does not wait for {kind}"
        assert bool(inits) == bool(NEEDS_MODELS[name]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_never_block_a_drain(overlay):
    docs = render(f"overlays/{overlay}")
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"]["minReplicaCount"]
        for s in by_kind(docs, "ScaledObject").values()
    }
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        replicas = scaled.get(name, by_kind(docs, "Deployment")[name]["spec"].get("replicas", 1))
        spec = pdb["spec"]
        allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
        assert allowed >= 1, f"{overlay}: PodDisruptionBudget {name} blocks evictions with {replicas} replica(s)"


def test_grpc_calls_spread_over_every_replica():
    docs = render("overlays/production")
    services = by_kind(docs, "Service")
    config = config_data("production")
    for name in ("policy", "reward", "feedback"):
        assert services[name]["spec"]["clusterIP"] == "None", f"{name}: headless, so DNS lists every replica"
        assert config[f"RLHF_{name.upper()}_ADDR"].startswith("dns:///"), name
    assert float(config[env.MAX_CONNECTION_AGE_S]) > 0, "without it, clients never see replicas added later"


def test_policy_scales_on_queue_depth_and_keda_owns_its_replica_count():
    docs = render("overlays/production")
    assert not by_kind(docs, "HorizontalPodAutoscaler"), "KEDA makes the HPA; a CPU one would fight it"
    scaled = by_kind(docs, "ScaledObject")["policy"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "policy"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "rlhf_num_requests_waiting" in trigger["metadata"]["query"]
    assert "replicas" not in by_kind(docs, "Deployment")["policy"]["spec"]


def test_no_token_is_committed():
    for path in ("base", "overlays/production"):
        assert not by_kind(render(path), "Secret"), f"k8s/{path} must not ship a Secret"
    (local,) = by_kind(render("overlays/local"), "Secret").values()
    assert local["data"]["RLHF_AUTH_TOKEN"] == "", "the local overlay's generated token is empty: auth off"
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert "kubectl -n rlhf create secret generic rlhf-auth" in deploy


def test_network_policies_deny_by_default_and_cover_every_pod():
    docs = render("overlays/production")
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["rlhf-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    selector = deny["podSelector"]["matchLabels"]
    for name, pod in pod_templates(docs).items():
        if "rlhf-loop" in pod["spec"]["containers"][0]["image"]:
            assert selector.items() <= pod["metadata"]["labels"].items(), f"{name} escapes the default deny"
    reward_in = policies["rlhf-trainer-to-reward"]["spec"]["ingress"]
    assert reward_in[0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "trainer"}}}]
    kafka = by_kind(docs, "Kafka")["rlhf"]["spec"]["kafka"]["listeners"][0]
    assert kafka["networkPolicyPeers"] == [{"podSelector": {"matchLabels": selector}}]


def test_strimzi_kafka_topics_users_and_acls():
    docs = render("overlays/production")
    assert all(d["apiVersion"] == "kafka.strimzi.io/v1" for d in docs if "strimzi" in d["apiVersion"])
    topics = by_kind(docs, "KafkaTopic")
    assert set(topics) == set(events.TOPIC_PARTITIONS)
    assert topics[events.MODEL_UPDATES_TOPIC]["spec"]["partitions"] == 1, "model updates must stay ordered"
    (listener,) = by_kind(docs, "Kafka")["rlhf"]["spec"]["kafka"]["listeners"]
    assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
    users = by_kind(docs, "KafkaUser")
    for name in SERVICES:
        user = users[f"rlhf-{name}"]["spec"]
        assert user["authentication"]["type"] == "scram-sha-512"
        granted = {
            (acl["resource"]["type"], acl["resource"]["name"], op)
            for acl in user["authorization"]["acls"]
            for op in acl["operations"]
            if op != "Describe"
        }
        assert granted == KAFKA_NEEDS[name], name
    config = config_data("production")
    assert config[env.KAFKA].endswith(f":{listener['port']}")


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_starts_with_the_production_kafka_settings(name, monkeypatch, tmp_path):
    """The settings a production pod gets, read by the real config loader: it must accept them,
    and the consumer settings must be ones Apache Kafka accepts. The TLS files, which only a
    cluster's Secrets hold, are stand-ins under tmp_path (the loader checks that they exist)."""
    docs = render("overlays/production")
    pod = serving_pods("production")[name]["spec"]
    c = pod["containers"][0]
    variables = dict(config_data("production"))
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:  # written by Strimzi's User Operator for the KafkaUser of that name
            assert ref["name"] in by_kind(docs, "KafkaUser") and ref["key"] == "password"
            variables[e["name"]] = "password-from-strimzi"
        elif "value" in e:
            variables[e["name"]] = e["value"]
    assert variables[env.KAFKA_SASL_USERNAME] == f"rlhf-{name}"
    ca_mount = next(m for m in c["volumeMounts"] if variables[env.KAFKA_SSL_CAFILE].startswith(m["mountPath"]))
    ca_volume = next(v for v in pod["volumes"] if v["name"] == ca_mount["name"])
    assert ca_volume["secret"]["secretName"] == "rlhf-cluster-ca-cert"  # Strimzi's <cluster>-cluster-ca-cert
    for var in (env.KAFKA_SESSION_TIMEOUT_MS, env.KAFKA_HEARTBEAT_INTERVAL_MS):
        monkeypatch.delenv(var, raising=False)  # tests/conftest.py sets the embedded broker's
    for var, value in stage_tls_files(serving_pods("production")[name], variables, tmp_path).items():
        monkeypatch.setenv(var, value)
    try:
        config = load_config(ServiceConfig, [])
    except ConfigError as exc:
        pytest.fail(f"{name} would refuse to start: {exc}")
    options = config.kafka_consumer_options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert 6_000 <= options["session_timeout_ms"] <= 1_800_000
    # Services bind loopback unless told otherwise; in a pod the Service and Prometheus must reach them.
    assert config.host == "0.0.0.0" and config.metrics_bind_host == "0.0.0.0"


def test_env_vars_in_manifests_are_ones_the_code_reads():
    known = {v for k, v in vars(env).items() if k.isupper()}
    for overlay in OVERLAYS:
        names = set(config_data(overlay))
        for pod in pod_templates(render(f"overlays/{overlay}")).values():
            for c in pod["spec"]["containers"]:
                names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("RLHF_")}
        assert names <= known, f"{overlay}: {sorted(names - known)}"
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for var in svc.get("environment") or {}:
            if var.startswith("RLHF_"):
                assert var in known, f"compose {name}: {var}"
