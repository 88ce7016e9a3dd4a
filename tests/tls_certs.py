"""A throwaway PKI for the TLS tests, made with `cryptography`: a CA, a server
certificate and a client certificate it signs, and a second, unrelated CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA every service and client trusts
    server_cert: Path  # for localhost / 127.0.0.1
    server_key: Path
    named_server_cert: Path  # only for the DNS name NAMED_SERVER
    named_server_key: Path
    client_cert: Path  # signed by ca
    client_key: Path
    rogue_ca: Path  # an unrelated CA
    rogue_client_cert: Path  # signed by rogue_ca
    rogue_client_key: Path


NAMED_SERVER = "reward.rlhf.svc.cluster.local"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca(name: str, out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, _name(name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_cert(cert, out / f"{name}.pem")
    return key, cert


def _leaf(
    name: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], sans: list, usage, out: Path
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(name, ca[1].subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(ca[0], hashes.SHA256())
    return _write_cert(cert, out / f"{name}.crt"), _write_key(key, out / f"{name}.key")


def make_pki(out: Path) -> Pki:
    """Write every file under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca = _ca("rlhf-test-ca", out)
    rogue = _ca("rogue-ca", out)
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _leaf("server", ca, local, ExtendedKeyUsageOID.SERVER_AUTH, out)
    named = _leaf("named-server", ca, [x509.DNSName(NAMED_SERVER)], ExtendedKeyUsageOID.SERVER_AUTH, out)
    client = _leaf("client", ca, [], ExtendedKeyUsageOID.CLIENT_AUTH, out)
    rogue_client = _leaf("rogue-client", rogue, [], ExtendedKeyUsageOID.CLIENT_AUTH, out)
    return Pki(
        ca=out / "rlhf-test-ca.pem",
        server_cert=server[0],
        server_key=server[1],
        named_server_cert=named[0],
        named_server_key=named[1],
        client_cert=client[0],
        client_key=client[1],
        rogue_ca=out / "rogue-ca.pem",
        rogue_client_cert=rogue_client[0],
        rogue_client_key=rogue_client[1],
    )
