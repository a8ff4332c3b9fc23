"""Certificate keys, CSRs, issued chains and their ARI ids (RFC 9773 §4.1)."""

from __future__ import annotations

import datetime
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kproxy.core.acme_certificate import (
    ari_id,
    make_csr,
    new_certificate_key,
    parse_combined,
    parse_issued,
)
from kproxy.core.acme_problem import AcmeError

# RFC 9773 §4.1's example: this Authority Key Identifier and serial give this id.
RFC_AKI = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")


def _leaf(serial: int, aki: bytes | None = RFC_AKI) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=90))
    )
    if aki is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(aki, None, None), False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (0x87654321, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"),  # the RFC's own example
        (0x7F, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.fw"),  # top bit clear: no leading zero
        (0x80, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIA"),
        (1, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AQ"),
    ],
)
def test_ari_id(serial: int, expected: str) -> None:
    assert ari_id(_leaf(serial)) == expected


def test_ari_id_without_authority_key_identifier() -> None:
    assert ari_id(_leaf(5, aki=None)) == ""


def test_csr_names_every_name_and_is_signed_by_the_key() -> None:
    key_pem = new_certificate_key()
    csr = x509.load_der_x509_csr(make_csr(["a.example", "b.example"], key_pem))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.example"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]
    key = serialization.load_pem_private_key(key_pem, None)
    assert csr.public_key() == key.public_key()


def test_csr_needs_a_name() -> None:
    with pytest.raises(AcmeError, match="at least one name"):
        make_csr([], new_certificate_key())


def _issued(ca: trustme.CA, *names: str) -> tuple[bytes, bytes]:
    cert = ca.issue_cert(*names)
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes()


def test_parse_issued_reads_the_leaf() -> None:
    chain, key = _issued(trustme.CA(key_type=trustme.KeyType.ECDSA), "a.example", "b.example")
    issued = parse_issued(chain, key)
    leaf = x509.load_pem_x509_certificate(chain)
    assert issued.names == ("a.example", "b.example")
    assert issued.not_after == leaf.not_valid_after_utc.timestamp()
    assert issued.not_before == leaf.not_valid_before_utc.timestamp()
    assert issued.lifetime == issued.not_after - issued.not_before
    assert issued.ari_id == ari_id(leaf) != ""


def test_parse_issued_refuses_a_key_of_another_certificate() -> None:
    chain, _ = _issued(trustme.CA(key_type=trustme.KeyType.ECDSA), "a.example")
    with pytest.raises(AcmeError, match="does not match"):
        parse_issued(chain, new_certificate_key())


@pytest.mark.parametrize("chain", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_parse_issued_refuses_what_is_not_pem(chain: bytes) -> None:
    with pytest.raises(AcmeError, match="not PEM"):
        parse_issued(chain, new_certificate_key())


def test_combined_pem_round_trips_and_loads_into_an_ssl_context(tmp_path: object) -> None:
    chain, key = _issued(trustme.CA(key_type=trustme.KeyType.ECDSA), "a.example")
    issued = parse_issued(chain, key)
    combined = issued.combined_pem()
    assert parse_combined(combined) == issued
    # One file holds the key and the chain: what ssl.SSLContext.load_cert_chain takes.
    path = f"{tmp_path}/a.example.pem"
    with open(path, "wb") as f:
        f.write(combined)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(path)


@pytest.mark.parametrize("pem", [b"", b"-----BEGIN CERTIFICATE-----\n", b"key only"])
def test_parse_combined_needs_a_key_then_a_chain(pem: bytes) -> None:
    with pytest.raises(AcmeError):
        parse_combined(pem)
