"""Security settings and their parts without a server: TLS and token settings,
the token registry and its roles, and feedback identity binding."""

from __future__ import annotations

import hashlib
import json

import pytest

from services.feedback.gateway import bind_user_id
from shared import env
from shared.config import ConfigError, config_summary, load_config
from shared.errors import PermissionDenied
from shared.grpc import auth
from shared.grpc.auth import APPLICATION_METHODS, Principal, Role, TokenFileError, TokenRegistry, read_tokens_file
from shared.grpc.tls import ClientTLS, client_tls, client_tls_from_env, read_pem, server_tls
from shared.proto.rlhf.v1 import events_pb2, feedback_pb2, policy_pb2, reward_pb2, trainer_pb2
from shared.service_config import ServiceConfig


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture()
def pem(tmp_path):
    path = tmp_path / "x.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return str(path)


# --- where services listen -------------------------------------------------------------


def test_services_listen_on_loopback_unless_told_otherwise(monkeypatch):
    for var in (env.HOST, env.METRICS_HOST):
        monkeypatch.delenv(var, raising=False)
    config = load_config(ServiceConfig, [])
    assert config.host == "127.0.0.1" and config.metrics_bind_host == "127.0.0.1"
    monkeypatch.setenv(env.HOST, "0.0.0.0")
    assert load_config(ServiceConfig, []).metrics_bind_host == "0.0.0.0", "metrics follow --host"
    assert load_config(ServiceConfig, ["--metrics-host", "127.0.0.1"]).metrics_bind_host == "127.0.0.1"


# --- TLS settings --------------------------------------------------------------------------


def test_tls_settings_name_the_flag_at_fault(pem, tmp_path):
    cases = [
        (dict(tls_cert=pem), "--tls-key: --tls-cert and --tls-key go together"),
        (dict(tls_client_ca=pem), "--tls-client-ca: mutual TLS needs --tls-cert/--tls-key"),
        (dict(tls_ca=pem, tls_client_cert=pem), "--tls-client-key: --tls-client-cert and --tls-client-key go together"),
        (dict(tls_client_cert=pem, tls_client_key=pem), "--tls-ca: a client certificate needs --tls-ca"),
        (dict(tls_cert=pem, tls_key=str(tmp_path / "missing.key")), "--tls-key: no such file: .*missing.key"),
        (dict(tls_ca=str(tmp_path / "nope.pem")), "--tls-ca: no such file"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            ServiceConfig(**settings)
    assert ServiceConfig(tls_ca="system").tls_ca == "system", "'system' names the trust store, not a file"


def test_tls_sides_come_from_the_settings(pem, monkeypatch):
    config = ServiceConfig(tls_cert=pem, tls_key=pem, tls_client_ca=pem, tls_ca=pem, tls_server_name="reward")
    assert server_tls(config).mutual and server_tls(ServiceConfig(tls_cert=pem, tls_key=pem)).mutual is False
    assert server_tls(ServiceConfig()) is None and client_tls(ServiceConfig()) is None
    assert client_tls(config) == ClientTLS(ca_file=pem, server_name="reward")
    assert client_tls(config).channel_options() == [("grpc.ssl_target_name_override", "reward")]
    assert client_tls_from_env({}) is None
    assert client_tls_from_env({env.TLS_CA: "system"}) == ClientTLS()


def test_a_file_that_is_not_pem_is_named(tmp_path):
    path = tmp_path / "cert.der"
    path.write_bytes(b"\x30\x82")
    with pytest.raises(ValueError, match="--tls-cert: .*cert.der is not a PEM file"):
        read_pem(str(path), "--tls-cert")


# --- tokens and roles ----------------------------------------------------------------------


def test_token_settings_are_checked_and_masked(tmp_path):
    with pytest.raises(ConfigError, match="--operator-token: must differ from --auth-token"):
        ServiceConfig(auth_token="same", operator_token="same")
    summary = config_summary(ServiceConfig(auth_token="app-secret", operator_token="op-secret"))
    assert summary["operator_token"] == "***" and "op-secret" not in repr(summary)
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps({sha("t"): {"role": "admin"}}))
    with pytest.raises(ConfigError, match="--tokens-file: .*tokens.json: entry .*role must be one of"):
        ServiceConfig(tokens_file=str(bad))


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot read it as JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"abc": {"role": "operator"}}), "64 hex digits"),
        (json.dumps({sha("t"): "operator"}), "the value must be an object"),
        (json.dumps({sha("t"): {"role": "operator", "name": "x"}}), r"unknown fields \['name'\]"),
        (json.dumps({sha("t"): {"role": "operator", "subject": 7}}), "subject must be a string"),
    ],
)
def test_tokens_file_errors_name_the_entry_and_the_fix(tmp_path, content, message):
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(TokenFileError, match=message):
        read_tokens_file(path)


def test_registry_maps_each_token_to_its_role_and_subject(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({sha("user-tok"): {"role": "application", "subject": "u7"}}))
    registry = TokenRegistry.from_config(ServiceConfig(auth_token="app", operator_token="op", tokens_file=str(path)))
    assert registry.authenticate("Bearer app") == Principal(Role.APPLICATION)
    assert registry.authenticate("Bearer op") == Principal(Role.OPERATOR)
    assert registry.authenticate("Bearer user-tok") == Principal(Role.APPLICATION, "u7")
    for header in ("", "Bearer ", "Bearer nope", "app", "bearer app"):
        assert registry.authenticate(header) is None, header
    assert not TokenRegistry.from_config(ServiceConfig()), "no tokens: auth is off"
    assert TokenRegistry([(bytes.fromhex(sha("")), Principal(Role.OPERATOR))]).authenticate("Bearer ") is None


def test_every_configured_token_is_compared_whatever_matches(monkeypatch):
    registry = TokenRegistry(
        [(auth.token_digest("a"), Principal(Role.OPERATOR))]
        + [(auth.token_digest(f"t{i}"), Principal(Role.APPLICATION)) for i in range(5)]
    )
    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    for header in ("Bearer a", "Bearer t4", "Bearer unknown"):
        compared.clear()
        registry.authenticate(header)
        assert len(compared) == 6, f"{header}: compared {len(compared)} of 6 digests"


def test_roles_cover_every_rpc_and_only_operators_control_the_trainer():
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (policy_pb2, reward_pb2, feedback_pb2, trainer_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert APPLICATION_METHODS <= methods, f"not RPCs: {sorted(APPLICATION_METHODS - methods)}"
    operator_only = methods - APPLICATION_METHODS
    assert operator_only == {f"/rlhf.v1.TrainerService/{m}" for m in ("Promote", "Rollback", "Pause", "Resume")}
    app, operator = Principal(Role.APPLICATION), Principal(Role.OPERATOR)
    assert all(operator.may_call(m) for m in methods)
    assert not any(app.may_call(m) for m in operator_only)
    assert not app.may_call("/rlhf.v1.TrainerService/SomethingNew"), "an RPC not listed is operator-only"


# --- feedback identity -------------------------------------------------------------------------


def test_a_token_subject_is_stamped_on_feedback_and_cannot_be_impersonated():
    empty = events_pb2.FeedbackEvent()
    bind_user_id(empty, "u7", "feedback.user_id")
    assert empty.user_id == "u7"
    own = events_pb2.FeedbackEvent(user_id="u7")
    bind_user_id(own, "u7", "feedback.user_id")
    assert own.user_id == "u7"
    with pytest.raises(PermissionDenied, match=r"^feedback\[2\]\.user_id: is 'u8' but the caller's token speaks"):
        bind_user_id(events_pb2.FeedbackEvent(user_id="u8"), "u7", "feedback[2].user_id")
    relayed = events_pb2.FeedbackEvent(user_id="end-user-3")
    bind_user_id(relayed, "", "feedback.user_id")
    assert relayed.user_id == "end-user-3", "a token without a subject relays for its own users"
