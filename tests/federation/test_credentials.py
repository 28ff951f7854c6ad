"""TLS certificates and SuperNode keys for the local deployment."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from citymesh.federation.credentials import make_node_key, make_tls_files


def test_tls_files_certificate_for_localhost(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("127.0.0.1") in names.value.get_values_for_type(
        x509.IPAddress
    )
    assert "localhost" in names.value.get_values_for_type(x509.DNSName)
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is True


def test_tls_files_private_mode(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    for path in (files.ca_certificate, files.certificate, files.private_key):
        assert path.stat().st_mode & 0o777 == 0o600, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def test_node_key_openssh_p384(tmp_path: Path) -> None:
    key = make_node_key(tmp_path, "supernode-EWR")
    private = load_ssh_private_key(key.private_key.read_bytes(), None)
    public = load_ssh_public_key(key.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert key.private_key.stat().st_mode & 0o777 == 0o600


def test_node_keys_differ_per_city(tmp_path: Path) -> None:
    first = make_node_key(tmp_path, "supernode-EWR")
    second = make_node_key(tmp_path, "supernode-JFK")
    assert first.public_key.read_bytes() != second.public_key.read_bytes()
