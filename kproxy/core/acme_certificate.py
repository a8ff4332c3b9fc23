"""An issued certificate as kproxy keeps it: the chain, its private key, and what the renewal
decision needs from the leaf (validity, ARI id). Also the certificate key and the CSR sent to
finalize an order (RFC 8555 §7.4).

Certificate keys are ECDSA P-256, a fresh one per order: a renewal never reuses the old key.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from kproxy.core.acme_problem import AcmeError

PEM_CERT_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"


@attrs.frozen
class IssuedCertificate:
    """A certificate chain and its key, both PEM, with the leaf's facts.

    Attributes:
        chain_pem: the leaf first, then the intermediates, as the CA sent them.
        key_pem: the leaf's private key (PKCS#8).
        names: the leaf's DNS names (subjectAltName).
        not_before: start of validity, POSIX seconds.
        not_after: end of validity, POSIX seconds.
        ari_id: the certificate's ACME Renewal Information id (RFC 9773 §4.1), "" when the
            leaf has no Authority Key Identifier.
    """

    chain_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)
    names: tuple[str, ...]
    not_before: float
    not_after: float
    ari_id: str

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before

    def combined_pem(self) -> bytes:
        """Key, then chain, in one PEM: what the cache stores, and what
        ``ssl.SSLContext.load_cert_chain(path)`` loads from one file (as autocert caches)."""
        return self.key_pem.rstrip(b"\n") + b"\n" + self.chain_pem


def new_certificate_key() -> bytes:
    """A fresh ECDSA P-256 private key, PKCS#8 PEM."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _private_key(key_pem: bytes) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AcmeError(f"not a PEM private key: {exc}") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise AcmeError(f"unsupported certificate key type: {type(key).__name__}")
    return key


def make_csr(names: Sequence[str], key_pem: bytes) -> bytes:
    """A DER CSR for ``names`` (all in subjectAltName; the first also as the common name)."""
    if not names:
        raise AcmeError("a certificate needs at least one name")
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    key = _private_key(key_pem)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.DER)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ari_id(leaf: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial's DER integer bytes)."""
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    if aki.key_identifier is None:
        return ""
    serial = leaf.serial_number
    # The DER INTEGER's content octets: big-endian, two's complement, so a leading 0x00 when
    # the top bit is set (the RFC's example serial 0x87654321 → "AIdlQyE").
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_bytes)}"


def parse_issued(chain_pem: bytes, key_pem: bytes) -> IssuedCertificate:
    """Check a downloaded (or cached) chain against its key and read the leaf.

    Raises:
        AcmeError: no certificate, not PEM, or the key does not match the leaf.
    """
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise AcmeError(f"the certificate chain is not PEM: {exc}") from exc
    leaf = chain[0]
    key = _private_key(key_pem)
    if leaf.public_key() != key.public_key():
        raise AcmeError("the certificate does not match its private key")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return IssuedCertificate(
        chain_pem=chain_pem,
        key_pem=key_pem,
        names=names,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        ari_id=ari_id(leaf),
    )


def parse_combined(pem: bytes) -> IssuedCertificate:
    """The inverse of :meth:`IssuedCertificate.combined_pem`."""
    start = pem.find(PEM_CERT_BEGIN)
    if start <= 0:
        raise AcmeError("expected a private key followed by a certificate chain")
    return parse_issued(pem[start:], pem[:start])
