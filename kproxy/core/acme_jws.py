"""ACME's signed requests (RFC 8555 §6.2): a flattened JWS over the payload, whose protected
header carries the algorithm, the nonce, the URL and the account's key (``jwk``, for newAccount
only) or its URL (``kid``, afterwards). Keys and signatures come from josepy.

Account keys are ECDSA P-256 (ES256), as Let's Encrypt's clients use: small and fast.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import b64, jwa, jws
from josepy.json_util import field
from josepy.jwk import JWK, JWKEC

from kproxy.core.acme_problem import AcmeError


class _Header(jws.Header):
    # josepy's Header knows only the registered JOSE names; ACME adds "nonce" and "url" (RFC 8555
    # §6.4, §6.5). The nonce stays the server's base64url text, passed through unchanged.
    nonce: str | None = field("nonce", omitempty=True)
    url: str | None = field("url", omitempty=True)


class _Signature(jws.Signature):
    __slots__ = jws.Signature._orig_slots
    header_cls = _Header
    header: _Header = field("header", omitempty=True, default=_Header(), decoder=_Header.from_json)


class _JWS(jws.JWS):
    __slots__ = jws.JWS._orig_slots
    signature_cls = _Signature


def new_account_key() -> JWK:
    """A fresh ECDSA P-256 account key."""
    return JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def account_key_pem(key: JWK) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (the cache stores it with mode 0600)."""
    return bytes(
        key.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def load_account_key(pem: bytes) -> JWK:
    """An account key from ``account_key_pem``'s output.

    Raises:
        AcmeError: not a PEM EC private key.
    """
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AcmeError(f"account key is not a PEM private key: {exc}") from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise AcmeError("account key is not an EC private key")
    return JWKEC(key=private)


def thumbprint(key: JWK) -> str:
    """The key's RFC 7638 thumbprint (SHA-256), base64url without padding."""
    return b64.b64encode(key.thumbprint()).decode("ascii")


def key_authorization(token: str, key: JWK) -> str:
    """What an HTTP-01 challenge's URL must answer (RFC 8555 §8.1): token "." thumbprint."""
    return f"{token}.{thumbprint(key)}"


def sign_request(
    payload: Mapping[str, Any] | None,
    *,
    key: JWK,
    url: str,
    nonce: str,
    kid: str | None,
) -> bytes:
    """The body of one ACME POST (``application/jose+json``).

    Args:
        payload: the JSON object to send, or None for a POST-as-GET (empty payload, §6.3).
        key: the account key that signs.
        url: the request's URL (it must equal the one POSTed to).
        nonce: a fresh nonce from the server.
        kid: the account URL; None only for newAccount, which carries the public key instead.

    Returns:
        The flattened JWS JSON serialization, UTF-8.
    """
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    header: dict[str, Any] = {"nonce": nonce, "url": url}
    if kid is not None:
        header["kid"] = kid
    signed = _JWS.sign(
        body,
        key=key,
        alg=jwa.ES256,
        include_jwk=kid is None,
        protect=frozenset({"alg", "nonce", "url", "kid" if kid is not None else "jwk"}),
        **header,
    )
    return str(signed.json_dumps()).encode("utf-8")
