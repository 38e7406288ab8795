"""A test PKI for a deployment: a CA, the SuperLink's TLS certificate, one key pair per node.

Flower's SuperLink serves TLS with a CA-signed server certificate; SuperNodes trust the CA
(`--root-certificates`) and prove who they are with an EC private key whose public half was
registered with `flwr supernode register` (OpenSSH format, a NIST curve). Good for a loopback
or lab deployment; a production fleet should use its own CA and keep the CA key offline.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365
CURVE = ec.SECP384R1()  # the curve of Flower's examples; any NIST curve is accepted


@dataclass(frozen=True)
class NodeKeys:
    private_key: Path  # OpenSSH private key: the SuperNode's --auth-supernode-private-key
    public_key: Path  # OpenSSH public key: what `flwr supernode register` takes


@dataclass(frozen=True)
class TestPki:
    ca_cert: (
        Path  # SuperLink --ssl-ca-certfile; SuperNode --root-certificates; CLI root-certificates
    )
    server_cert: Path  # SuperLink --ssl-certfile
    server_key: Path  # SuperLink --ssl-keyfile
    nodes: tuple[NodeKeys, ...]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _certificate(subject, issuer, public_key, signing_key, ca: bool, hosts: list[str]):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def node_key_pair(folder: Path, name: str) -> NodeKeys:
    """An EC key pair for one SuperNode, both halves in OpenSSH format."""
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return NodeKeys(
        _write(folder / name, private, private=True), _write(folder / f"{name}.pub", public)
    )


def make_test_pki(folder: Path, node_names: list[str], hosts: list[str]) -> TestPki:
    """Write a CA, a server certificate valid for `hosts` (IPs or DNS names the SuperNodes and
    the CLI dial), and one key pair per node name into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(CURVE)
    ca_name = _name("fedspine test CA")
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, True, [])
    server_key = ec.generate_private_key(CURVE)
    server = _certificate(_name(hosts[0]), ca_name, server_key.public_key(), ca_key, False, hosts)
    pem = serialization.Encoding.PEM
    return TestPki(
        ca_cert=_write(folder / "ca.crt", ca.public_bytes(pem)),
        server_cert=_write(folder / "server.pem", server.public_bytes(pem)),
        server_key=_write(folder / "server.key", _pem_key(server_key), private=True),
        nodes=tuple(node_key_pair(folder, name) for name in node_names),
    )
