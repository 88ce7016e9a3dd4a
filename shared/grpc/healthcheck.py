"""Ask a gRPC server whether it is SERVING (grpc.health.v1): the containers' health check.

    python -m shared.grpc.healthcheck [ADDRESS]     # default 127.0.0.1:$RLHF_PORT

Over TLS when RLHF_TLS_CA is set (as for every client). Exits 0 when the
server answers SERVING, 1 otherwise (NOT_SERVING while the
model loads or after SIGTERM, or nothing listening). Docker's HEALTHCHECK and
the compose file's health conditions run it; Kubernetes uses its native gRPC
probes, which ask the same service.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import env
from shared.grpc.channels import open_channel
from shared.grpc.tls import ClientTLS, client_tls_from_env


def health_status(address: str, timeout_s: float = 1.0, tls: ClientTLS | None = None) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE for the server at ``address`` (over TLS when ``tls``)."""
    try:
        with open_channel(address, tls, balanced=False) as channel:  # must see NOT_SERVING itself
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    address = args[0] if args else f"127.0.0.1:{os.environ.get(env.PORT, '50050')}"
    status = health_status(address, timeout_s=3.0, tls=client_tls_from_env(os.environ))
    print(f"{address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
