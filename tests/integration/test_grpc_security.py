"""TLS, mutual TLS and token roles on a real GrpcServer (port 0, loopback), with
small servicers of the real TrainerService and RewardService contracts and
certificates made in the test (tests/tls_certs.py)."""

from __future__ import annotations

import hashlib
import json
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from rlhf_cli.main import main as rlhf_main
from rlhf_cli.stack import health_status
from services.trainer.reward_client import RewardClient
from shared import env
from shared.config import log_config
from shared.grpc.auth import current_principal
from shared.grpc.channels import open_channel
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.grpc.tls import ClientTLS, client_tls_from_env
from shared.logs import JsonFormatter
from shared.proto.rlhf.v1 import (
    common_pb2,
    events_pb2,
    reward_pb2,
    reward_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from shared.service_config import ServiceConfig
from tests.tls_certs import NAMED_SERVER, Pki, make_pki

APP_TOKEN = "app-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-fedcba9876543210"
SUBJECT_TOKEN = "subject-token-55aa55aa55aa55aa"
TRAINER = "rlhf.v1.TrainerService"
REWARD = "rlhf.v1.RewardService"


class RecordingTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Answers every control; GetStatus's pause_reason tells who the caller was."""

    def GetStatus(self, request, context):
        principal = current_principal()
        who = f"{principal.role.value}:{principal.subject}" if principal else "anonymous"
        return trainer_pb2.TrainerStatus(pause_reason=who)

    def Promote(self, request, context):
        return events_pb2.ModelUpdateEvent(event_id="e1", kind=request.kind, version=request.version)

    def Rollback(self, request, context):
        return events_pb2.ModelUpdateEvent(event_id="e2", kind=request.kind, version=request.to_version or "v1")

    def Pause(self, request, context):
        return trainer_pb2.TrainerStatus(pause_reason=request.reason)

    def Resume(self, request, context):
        return trainer_pb2.TrainerStatus()


class LengthReward(reward_pb2_grpc.RewardServiceServicer):
    def ScoreBatch(self, request, context):
        return reward_pb2.ScoreBatchResponse(scores=[len(i.response) for i in request.items], model_version="v7")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def serve(**settings) -> tuple[GrpcServer, int]:
    server = build(**settings)
    port = server.start()
    server.set_serving(True)
    return server, port


def build(**settings) -> GrpcServer:
    config = ServiceConfig(port=0, metrics_port=-1, grace_period_s=0, **settings)
    return GrpcServer(
        config,
        "security-test",
        [
            ServiceBinding(trainer_pb2_grpc.add_TrainerServiceServicer_to_server, RecordingTrainer(), TRAINER),
            ServiceBinding(reward_pb2_grpc.add_RewardServiceServicer_to_server, LengthReward(), REWARD),
        ],
    )


@pytest.fixture()
def running():
    servers: list[GrpcServer] = []

    def start(**settings) -> int:
        server, port = serve(**settings)
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(0)


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def status_over(channel, metadata=(), timeout=10):
    return trainer_pb2_grpc.TrainerServiceStub(channel).GetStatus(
        trainer_pb2.GetStatusRequest(), metadata=metadata, timeout=timeout
    )


def refused_code(channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        status_over(channel, timeout=5)
    return info.value.code()


# --- TLS --------------------------------------------------------------------------------


def test_tls_server_serves_clients_that_trust_its_ca_including_health_and_reflection(pki, running):
    port = running(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with open_channel(f"127.0.0.1:{port}", ClientTLS(ca_file=str(pki.ca))) as channel:
        assert status_over(channel).pause_reason == "anonymous"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert TRAINER in ProtoReflectionDescriptorDatabase(channel).get_services()
    with open_channel(f"localhost:{port}", ClientTLS(ca_file=str(pki.ca))) as channel:
        assert status_over(channel).pause_reason == "anonymous"
    # `rlhf up` checks its services' health with the RLHF_TLS_* settings they were started with.
    assert health_status(f"127.0.0.1:{port}", tls=client_tls_from_env({env.TLS_CA: str(pki.ca)})) == "SERVING"
    assert health_status(f"127.0.0.1:{port}") == "UNREACHABLE"


def test_plaintext_health_port_serves_only_health_for_probes_that_cannot_speak_tls(pki):
    server = build(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), auth_token=APP_TOKEN, health_port=0)
    server.start()
    try:
        assert server.health_port and server.health_port != server.port
        with open_channel(f"127.0.0.1:{server.health_port}", balanced=False) as channel:  # sees NOT_SERVING
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=TRAINER)
            assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            server.set_serving(True)
            assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                status_over(channel, bearer(APP_TOKEN), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, "nothing but health on the plaintext port"
    finally:
        server.stop(0)


def test_tls_server_refuses_plaintext_and_clients_of_another_ca(pki, running):
    port = running(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with open_channel(f"127.0.0.1:{port}") as channel:
        assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE
    with open_channel(f"127.0.0.1:{port}", ClientTLS(ca_file=str(pki.rogue_ca))) as channel:
        assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_server_name_override_verifies_a_certificate_for_another_name(pki, running):
    port = running(tls_cert=str(pki.named_server_cert), tls_key=str(pki.named_server_key))
    with open_channel(f"127.0.0.1:{port}", ClientTLS(ca_file=str(pki.ca))) as channel:
        assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE, "127.0.0.1 is not in the certificate"
    tls = ClientTLS(ca_file=str(pki.ca), server_name=NAMED_SERVER)
    with open_channel(f"127.0.0.1:{port}", tls) as channel:
        assert status_over(channel).pause_reason == "anonymous"


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(pki, running):
    port = running(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    address = f"127.0.0.1:{port}"
    with open_channel(address, ClientTLS(ca_file=str(pki.ca))) as channel:
        assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE, "no client certificate"
    rogue = ClientTLS(ca_file=str(pki.ca), cert_file=str(pki.rogue_client_cert), key_file=str(pki.rogue_client_key))
    with open_channel(address, rogue) as channel:
        assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE, "a certificate of another CA"
    mine = ClientTLS(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    with open_channel(address, mine) as channel:
        assert status_over(channel).pause_reason == "anonymous"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_trainers_reward_client_scores_over_mutual_tls_with_an_application_token(pki, running):
    port = running(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        auth_token=APP_TOKEN,
        operator_token=OPERATOR_TOKEN,
    )
    tls = ClientTLS(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    client = RewardClient(f"127.0.0.1:{port}", token=APP_TOKEN, tls=tls, attempts=1, timeout_s=10)
    try:
        assert client(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
        assert client.last_version == "v7"
    finally:
        client.close()


# --- token roles -------------------------------------------------------------------------


def test_roles_application_calls_serving_operator_calls_the_controls(running):
    port = running(auth_token=APP_TOKEN, operator_token=OPERATOR_TOKEN)
    with open_channel(f"127.0.0.1:{port}") as channel:
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
        promote = trainer_pb2.PromoteRequest(kind=common_pb2.MODEL_KIND_POLICY, version="v2")
        controls = [
            (trainer.Promote, promote),
            (trainer.Rollback, trainer_pb2.RollbackRequest(kind=common_pb2.MODEL_KIND_POLICY)),
            (trainer.Pause, trainer_pb2.PauseRequest(reason="x")),
            (trainer.Resume, trainer_pb2.ResumeRequest()),
        ]
        for call, request in controls:
            with pytest.raises(grpc.RpcError) as info:
                call(request, metadata=bearer(APP_TOKEN), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "needs an operator token" in info.value.details() and "application role" in info.value.details()
            assert call(request, metadata=bearer(OPERATOR_TOKEN), timeout=5) is not None
        assert status_over(channel, bearer(APP_TOKEN)).pause_reason == "application:"
        assert status_over(channel, bearer(OPERATOR_TOKEN)).pause_reason == "operator:"
        score = reward_pb2_grpc.RewardServiceStub(channel).ScoreBatch(
            reward_pb2.ScoreBatchRequest(items=[reward_pb2.ScoreRequest(prompt="p", response="abc")]),
            metadata=bearer(APP_TOKEN),
            timeout=5,
        )
        assert list(score.scores) == [3.0]
        for metadata, detail in [((), "missing bearer token"), (bearer("nope"), "invalid bearer token")]:
            with pytest.raises(grpc.RpcError) as info:
                trainer.Promote(promote, metadata=metadata, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and detail in info.value.details()
        # A token sent without the Bearer scheme is not a token.
        with pytest.raises(grpc.RpcError) as info:
            trainer.Promote(promote, metadata=(("authorization", OPERATOR_TOKEN),), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_file_gives_roles_and_subjects(tmp_path, running):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                hashlib.sha256(SUBJECT_TOKEN.encode()).hexdigest(): {"role": "application", "subject": "app-42"},
                hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest(): {"role": "operator", "subject": "alice"},
            }
        )
    )
    port = running(tokens_file=str(tokens))
    with open_channel(f"127.0.0.1:{port}") as channel:
        assert status_over(channel, bearer(SUBJECT_TOKEN)).pause_reason == "application:app-42"
        assert status_over(channel, bearer(OPERATOR_TOKEN)).pause_reason == "operator:alice"
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            trainer.Pause(trainer_pb2.PauseRequest(), metadata=bearer(SUBJECT_TOKEN), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert trainer.Pause(trainer_pb2.PauseRequest(reason="r"), metadata=bearer(OPERATOR_TOKEN)).pause_reason == "r"


def test_rlhf_cli_promotes_over_tls_with_an_operator_token_only(pki, running, capsys, monkeypatch):
    port = running(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), auth_token=APP_TOKEN, operator_token=OPERATOR_TOKEN
    )
    common = ["--trainer", f"127.0.0.1:{port}", "--tls-ca", str(pki.ca), "--json"]
    assert rlhf_main(["promote", "policy", "v5", *common, "--token", OPERATOR_TOKEN]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v5"
    assert rlhf_main(["rollback", "policy", *common, "--token", APP_TOKEN]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().out
    assert rlhf_main(["status", *common, "--token", APP_TOKEN]) == 0
    assert rlhf_main(["status", "--trainer", f"127.0.0.1:{port}", "--token", APP_TOKEN, "--json"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().out, "plaintext to a TLS server fails with a clear status"


# --- secrets stay out of the logs ----------------------------------------------------------


def test_no_token_value_ever_appears_in_the_logs(tmp_path, running, caplog):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({hashlib.sha256(SUBJECT_TOKEN.encode()).hexdigest(): {"role": "application"}}))
    settings = dict(auth_token=APP_TOKEN, operator_token=OPERATOR_TOKEN, tokens_file=str(tokens))
    secrets = [APP_TOKEN, OPERATOR_TOKEN, SUBJECT_TOKEN, "wrong-token-1234567890"]
    with caplog.at_level(logging.DEBUG):
        log_config(ServiceConfig(**settings), logging.getLogger("security-test"))
        port = running(**settings)
        with open_channel(f"127.0.0.1:{port}") as channel:
            trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
            for token in secrets:
                for call, request in [
                    (trainer.GetStatus, trainer_pb2.GetStatusRequest()),
                    (trainer.Resume, trainer_pb2.ResumeRequest()),
                ]:
                    try:
                        call(request, metadata=bearer(token), timeout=5)
                    except grpc.RpcError:
                        pass
    formatter = JsonFormatter("security-test")
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"config"' in line for line in lines) and any("gRPC server listening" in line for line in lines)
    for secret in secrets:
        assert not [line for line in lines if secret in line], f"a log line holds {secret}"
