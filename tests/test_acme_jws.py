"""ACME's JWS request bodies (RFC 8555 §6.2), checked by parsing them back with josepy."""

from __future__ import annotations

import json

import pytest
from josepy import b64
from josepy.jwk import JWK
from josepy.jws import JWS

from kproxy.core.acme_jws import (
    account_key_pem,
    key_authorization,
    load_account_key,
    new_account_key,
    sign_request,
    thumbprint,
)
from kproxy.core.acme_problem import AcmeError

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJ"
    "ECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2"
    "QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6"
    "WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _protected(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert set(document) == {"protected", "payload", "signature"}  # flattened (§6.2)
    header = json.loads(b64.b64decode(document["protected"]))
    assert isinstance(header, dict)
    return header


def test_thumbprint_and_key_authorization_match_rfc_7638() -> None:
    key = JWK.from_json(RFC7638_KEY)
    assert isinstance(key, JWK)
    assert thumbprint(key) == RFC7638_THUMBPRINT
    assert key_authorization("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", key) == (
        f"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.{RFC7638_THUMBPRINT}"
    )


def test_new_account_request_carries_the_public_key() -> None:
    key = new_account_key()
    body = sign_request(
        {"termsOfServiceAgreed": True}, key=key, url="https://ca/new-acct", nonce="n1", kid=None
    )
    header = _protected(body)
    assert header["alg"] == "ES256"
    assert header["nonce"] == "n1"
    assert header["url"] == "https://ca/new-acct"
    assert "kid" not in header
    jwk = header["jwk"]
    assert isinstance(jwk, dict)
    assert JWK.from_json(jwk) == key.public_key()
    jws = JWS.json_loads(body)
    assert jws.verify(key.public_key())
    assert json.loads(jws.payload) == {"termsOfServiceAgreed": True}


def test_later_requests_carry_the_account_url_and_post_as_get_is_empty() -> None:
    key = new_account_key()
    body = sign_request(None, key=key, url="https://ca/order/1", nonce="n2", kid="https://ca/a/7")
    header = _protected(body)
    assert header == {
        "alg": "ES256",
        "kid": "https://ca/a/7",
        "nonce": "n2",
        "url": "https://ca/order/1",
    }
    assert json.loads(body)["payload"] == ""  # POST-as-GET (§6.3)
    jws = JWS.json_loads(body)
    assert jws.payload == b""
    assert jws.verify(key.public_key())


def test_account_key_round_trips_through_pem() -> None:
    key = new_account_key()
    pem = account_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert thumbprint(load_account_key(pem)) == thumbprint(key)


@pytest.mark.parametrize("pem", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_a_bad_account_key_is_an_acme_error(pem: bytes) -> None:
    with pytest.raises(AcmeError, match="account key"):
        load_account_key(pem)
