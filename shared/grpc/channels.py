"""One way to open a gRPC channel: plaintext, TLS or mutual TLS, spread over every replica.

Every client the project has (the trainer's reward client, the rlhf CLI,
`rlhf up`'s health checks, the demo's simulator and monitor, the HTTP front
door) opens its channels here, so turning TLS on is a setting, never a code
change. The TLS settings themselves are :class:`shared.grpc.tls.ClientTLS`.

Channels spread calls over every replica of a service, with gRPC's own
client-side load balancing (no proxy in between).

An address is one ``host:port`` (resolved by gRPC's DNS resolver: a name with
several addresses, such as a Kubernetes headless Service, reaches them all),
a comma-separated list ``host1:port1,host2:port2`` (``rlhf up
--policy-replicas N`` hands clients one like it), or any gRPC target URI
(``dns:///policy:50051``, ``ipv4:10.0.0.1:50051,10.0.0.2:50051``). The
channel's service config asks for:

- ``round_robin``: each call goes to the next ready replica;
- health checking (``grpc.health.v1.Health/Watch``): a replica that reports
  NOT_SERVING (loading its model, draining on SIGTERM) gets no new calls;
- a retry policy for UNAVAILABLE: a call that failed because its replica went
  away (or was shutting down) is tried again, on the next replica, up to
  ``MAX_ATTEMPTS`` times. Only calls in flight when a replica dies can fail.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import Any

import grpc

from shared.grpc.tls import ClientTLS

__all__ = ["ClientTLS", "channel_options", "channel_target", "open_channel"]


MAX_ATTEMPTS = 3
_URI_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": [{}],  # every method of every service
            "retryPolicy": {
                "maxAttempts": MAX_ATTEMPTS,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_target(address: str) -> str:
    """The gRPC target for ``address`` (see the module doc); ValueError names what is wrong."""
    parts = [part.strip() for part in address.split(",") if part.strip()]
    if not parts:
        raise ValueError("the address is empty; give host:port, or host1:port1,host2:port2 for several replicas")
    if len(parts) == 1 or address.startswith(_URI_SCHEMES):
        return address.strip()
    resolved: list[str] = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{part!r} in {address!r} is not host:port")
        resolved.extend(f"{ip}:{port}" for ip in _ipv4_addresses(host, part))
    return "ipv4:" + ",".join(dict.fromkeys(resolved))


def _ipv4_addresses(host: str, part: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {part!r} to an IPv4 address ({exc}); a list of replicas needs them") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def channel_options(options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """``options`` plus the round_robin / health-checking / retry service config."""
    return [*options, ("grpc.service_config", json.dumps(SERVICE_CONFIG))]


def open_channel(
    address: str, tls: ClientTLS | None = None, options: Sequence[tuple[str, Any]] = (), *, balanced: bool = True
) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` is given, else plaintext; balanced over
    every replica behind it (``balanced=False``: one plain connection, e.g. for a health
    probe that must see a NOT_SERVING answer rather than have it routed around)."""
    target, opts = (channel_target(address), channel_options(options)) if balanced else (address, list(options))
    if tls is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, tls.credentials(), options=[*opts, *tls.channel_options()])
