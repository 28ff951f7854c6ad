"""TLS certificates and SuperNode keys for a local Flower deployment.

``make_tls_files`` creates a private certificate authority and a server
certificate it signs for the SuperLink (and the SuperNodes' Runtime APIs), valid
for 127.0.0.1 and localhost. ``make_node_key`` creates a SuperNode's
authentication key pair: an ECDSA P-384 key in OpenSSH format, the format
``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
register`` read in Flower 1.42. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from citymesh.errors import InvalidInput

CERTIFICATE_DAYS = 30
PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a certificate authority and one server certificate."""

    ca_certificate: Path
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair in OpenSSH format."""

    private_key: Path
    public_key: Path


def make_tls_files(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1",)
) -> TlsFiles:
    """Create a CA and a server certificate for ``hosts`` in ``directory``.

    ``hosts`` are IP addresses or DNS names, all written as subject alternative
    names, and "localhost" is always added. Existing files are overwritten. The
    CA's private key is not written, so no further certificate can be signed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid_until = now + datetime.timedelta(days=CERTIFICATE_DAYS)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citymesh local CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(valid_until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citymesh superlink")])
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(valid_until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(_alternative_names(hosts)), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    files = TlsFiles(
        ca_certificate=directory / "ca.pem",
        certificate=directory / "server.pem",
        private_key=directory / "server.key",
    )
    _write_private(
        files.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM)
    )
    _write_private(
        files.certificate, server_certificate.public_bytes(serialization.Encoding.PEM)
    )
    _write_private(files.private_key, _pem_private_key(server_key))
    return files


def make_node_key(directory: Path, name: str) -> NodeKey:
    """Create the key pair ``name`` and ``name.pub`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    files = NodeKey(directory / name, directory / f"{name}.pub")
    _write_private(files.private_key, private_bytes)
    _write_private(files.public_key, public_bytes + b"\n")
    return files


def _alternative_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in hosts:
        if not host:
            raise InvalidInput("an empty host name cannot go into a certificate")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host != "localhost":
                names.append(x509.DNSName(host))
    return names


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, also when the file exists."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(path, PRIVATE_MODE)
