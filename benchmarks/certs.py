"""Certificates made for one run: a CA, and a server certificate it signs for one host name.

Both keys are ECDSA P-256 (what Let's Encrypt and most sites now issue); the server's file
holds the leaf, as ``kproxy deploy --tls-certificate-path`` and Caddy's ``tls`` take it. The
load generators skip verification (wrk always does) or trust ``ca_path``.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The name the servers are reached by: it resolves to 127.0.0.1 without touching /etc/hosts,
#: so wrk (which sends its URL's host as SNI) can use it.
HOST: Final = "localhost"


@attrs.frozen
class Certificates:
    host: str
    ca_path: Path
    certificate_path: Path
    private_key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make(directory: Path, host: str = HOST) -> Certificates:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (unencrypted PKCS#8) in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("kproxy benchmark CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    found = Certificates(
        host=host,
        ca_path=directory / "ca.pem",
        certificate_path=directory / "server.pem",
        private_key_path=directory / "server.key",
    )
    found.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    found.certificate_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    found.private_key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    found.private_key_path.chmod(0o600)
    return found
