"""TLS settings for gRPC servers and clients, read from PEM files.

A server with ``--tls-cert``/``--tls-key`` serves TLS only; with
``--tls-client-ca`` too it requires every client to present a certificate
that CA signed (mutual TLS). A client with ``--tls-ca`` verifies the server's
certificate against that CA (``system``: the system's trust store) and, with
``--tls-client-cert``/``--tls-client-key``, presents its own. Files are read
when the server or channel is built: a rotated certificate is picked up by
the next restart (Kubernetes: roll the Deployment after cert-manager renews).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared import env

if TYPE_CHECKING:  # grpc is imported where credentials are made: the rlhf CLI's --help stays fast
    import grpc

    from shared.service_config import ServiceConfig

SYSTEM_ROOTS = "system"


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; a missing or non-PEM file is an error naming ``what`` (the flag)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path} ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what}: {path} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key, and the CA its clients' certificates must carry (mutual TLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_file)

    def credentials(self) -> grpc.ServerCredentials:
        import grpc

        pair = (read_pem(self.key_file, "--tls-key"), read_pem(self.cert_file, "--tls-cert"))
        client_ca = read_pem(self.client_ca_file, "--tls-client-ca") if self.client_ca_file else None
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=self.mutual)


@dataclass(frozen=True)
class ClientTLS:
    """How a client verifies servers (``ca_file``; ``system`` = the trust store) and who it is (mutual TLS)."""

    ca_file: str = SYSTEM_ROOTS
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""  # the name in the server's certificate, when it is not the host dialled

    def credentials(self) -> grpc.ChannelCredentials:
        import grpc

        roots = None if self.ca_file == SYSTEM_ROOTS else read_pem(self.ca_file, "--tls-ca")
        key = read_pem(self.key_file, "--tls-client-key") if self.key_file else None
        chain = read_pem(self.cert_file, "--tls-client-cert") if self.cert_file else None
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def server_tls(config: ServiceConfig) -> ServerTLS | None:
    """The server side of ``config``; None = plaintext."""
    if not config.tls_cert:
        return None
    return ServerTLS(config.tls_cert, config.tls_key, config.tls_client_ca)


def client_tls(config: ServiceConfig) -> ClientTLS | None:
    """The client side of ``config`` (e.g. the trainer calling the reward service); None = plaintext."""
    return _client(config.tls_ca, config.tls_client_cert, config.tls_client_key, config.tls_server_name)


def client_tls_from_env(environ: Mapping[str, str]) -> ClientTLS | None:
    """The client side from RLHF_TLS_* variables (the rlhf CLI, the simulator, `rlhf up`'s health checks)."""
    return _client(
        environ.get(env.TLS_CA, ""),
        environ.get(env.TLS_CLIENT_CERT, ""),
        environ.get(env.TLS_CLIENT_KEY, ""),
        environ.get(env.TLS_SERVER_NAME, ""),
    )


def _client(ca: str, cert: str, key: str, server_name: str) -> ClientTLS | None:
    if not ca:
        return None
    return ClientTLS(ca_file=ca, cert_file=cert, key_file=key, server_name=server_name)


def add_client_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-client-cert, --tls-client-key, --tls-server-name for a command that calls services."""
    for flag, var, text in (
        ("--tls-ca", env.TLS_CA, "CA (PEM) of the services' certificates, or 'system'; turns TLS on"),
        ("--tls-client-cert", env.TLS_CLIENT_CERT, "certificate (PEM) to present where mutual TLS is required"),
        ("--tls-client-key", env.TLS_CLIENT_KEY, "private key (PEM) of --tls-client-cert"),
        ("--tls-server-name", env.TLS_SERVER_NAME, "name in the servers' certificates, if not the host dialled"),
    ):
        parser.add_argument(flag, default=os.environ.get(var, ""), help=f"{text} [env {var}]")


def client_tls_from_args(args: argparse.Namespace) -> ClientTLS | None:
    """The ClientTLS of flags added by :func:`add_client_tls_flags`; None = plaintext."""
    return _client(args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name)
