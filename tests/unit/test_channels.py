"""Client channels over several replicas: the target an address becomes, and the
service config (round_robin, health checking, retries) every such channel carries."""

from __future__ import annotations

import json

import pytest

from rlhf_cli.stack import Stack, policy_replica_ports
from shared.grpc.channels import SERVICE_CONFIG, channel_options, channel_target


def test_a_list_of_replicas_becomes_one_ipv4_target():
    assert channel_target("127.0.0.1:50051,127.0.0.1:50061") == "ipv4:127.0.0.1:50051,127.0.0.1:50061"
    assert channel_target(" localhost:7, 127.0.0.1:7 ") == "ipv4:127.0.0.1:7", "resolved, duplicates dropped"


def test_one_address_or_a_target_uri_is_passed_through():
    assert channel_target("policy:50051") == "policy:50051"
    assert channel_target("dns:///policy-headless:50051") == "dns:///policy-headless:50051"
    assert channel_target("ipv4:10.0.0.1:1,10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"


@pytest.mark.parametrize(
    ("address", "message"),
    [("", "empty"), ("127.0.0.1:1,127.0.0.1", "is not host:port"), ("127.0.0.1:1,:2", "is not host:port")],
)
def test_bad_addresses_are_refused_with_what_is_wrong(address, message):
    with pytest.raises(ValueError, match=message):
        channel_target(address)


def test_channels_ask_for_round_robin_health_checks_and_retries():
    options = dict(channel_options([("grpc.max_send_message_length", 1024)]))
    assert options["grpc.max_send_message_length"] == 1024
    config = json.loads(options["grpc.service_config"])
    assert config == SERVICE_CONFIG
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_policy_replicas_get_consecutive_ports_and_one_client_address(tmp_path):
    assert [policy_replica_ports(i) for i in range(3)] == [(50051, 9101), (50061, 9111), (50062, 9112)]
    stack = Stack(model_store=tmp_path, log_dir=tmp_path, services=["policy"], port_offset=5, policy_replicas=3)
    procs = stack._processes_of("policy")
    assert [(p.name, p.port, p.module) for p in procs] == [
        ("policy", 50056, "policy"),
        ("policy-2", 50066, "policy"),
        ("policy-3", 50067, "policy"),
    ]
    stack.processes = {p.name: p for p in procs}
    assert stack.address("policy") == "127.0.0.1:50056,127.0.0.1:50066,127.0.0.1:50067"
