"""One way to open a gRPC channel: plaintext, TLS or mutual TLS.

Every client the project has (the trainer's reward client, the rlhf CLI,
`rlhf up`'s health checks, the demo's simulator and monitor) opens its
channels here, so turning TLS on is a setting, never a code change. The TLS
settings themselves are :class:`shared.tls.ClientTLS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from shared.tls import ClientTLS

__all__ = ["ClientTLS", "open_channel"]


def open_channel(address: str, tls: ClientTLS | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` is given, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=[*options, *tls.channel_options()])
