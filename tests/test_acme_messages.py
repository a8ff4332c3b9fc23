"""ACME's resources and problem documents (RFC 8555 §6.7, §7.1), parsed from the CA's JSON."""

from __future__ import annotations

import json

import pytest

from kproxy.core.acme_messages import (
    Directory,
    finalize_payload,
    new_account_payload,
    new_order_payload,
    parse_authorization,
    parse_directory,
    parse_order,
    retry_after,
)
from kproxy.core.acme_problem import AcmeError, AcmeProblem, problem_from_response

PEBBLE_DIRECTORY = {
    "keyChange": "https://127.0.0.1:14000/rollover-account-key",
    "meta": {"externalAccountRequired": False, "termsOfService": "data:text/plain,Do%20what"},
    "newAccount": "https://127.0.0.1:14000/sign-me-up",
    "newNonce": "https://127.0.0.1:14000/nonce-plz",
    "newOrder": "https://127.0.0.1:14000/order-plz",
    "revokeCert": "https://127.0.0.1:14000/revoke-cert",
}


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def test_directory_without_renewal_info() -> None:
    assert parse_directory(_json(PEBBLE_DIRECTORY)) == Directory(
        new_nonce="https://127.0.0.1:14000/nonce-plz",
        new_account="https://127.0.0.1:14000/sign-me-up",
        new_order="https://127.0.0.1:14000/order-plz",
        renewal_info=None,
        terms_of_service="data:text/plain,Do%20what",
    )


def test_directory_with_renewal_info() -> None:
    directory = {**PEBBLE_DIRECTORY, "renewalInfo": "https://ca/draft-ietf-acme-ari-03/renewalInfo"}
    assert parse_directory(_json(directory)).renewal_info == (
        "https://ca/draft-ietf-acme-ari-03/renewalInfo"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", "directory is not JSON"),
        (b"[]", "not a JSON object"),
        (_json({**PEBBLE_DIRECTORY, "newOrder": None}), "no newOrder URL"),
        (_json({k: v for k, v in PEBBLE_DIRECTORY.items() if k != "newNonce"}), "no newNonce"),
    ],
)
def test_bad_directory(body: bytes, message: str) -> None:
    with pytest.raises(AcmeError, match=message):
        parse_directory(body)


def test_order() -> None:
    body = {
        "status": "pending",
        "expires": "2026-12-12T00:00:00Z",
        "identifiers": [
            {"type": "dns", "value": "a.example"},
            {"type": "dns", "value": "b.example"},
        ],
        "authorizations": ["https://ca/authz/1", "https://ca/authz/2"],
        "finalize": "https://ca/finalize/9",
    }
    order = parse_order(_json(body), "https://ca/order/9")
    assert order.url == "https://ca/order/9"
    assert order.status == "pending"
    assert order.names == ("a.example", "b.example")
    assert order.authorizations == ("https://ca/authz/1", "https://ca/authz/2")
    assert order.finalize == "https://ca/finalize/9"
    assert order.certificate is None
    assert order.error is None
    valid = parse_order(_json({**body, "status": "valid", "certificate": "https://ca/cert/9"}), "u")
    assert valid.certificate == "https://ca/cert/9"


def test_invalid_order_carries_its_problem() -> None:
    body = {
        "status": "invalid",
        "authorizations": [],
        "finalize": "https://ca/finalize/9",
        "error": {"type": "urn:ietf:params:acme:error:badCSR", "detail": "key too small"},
    }
    error = parse_order(_json(body), "u").error
    assert error is not None
    assert (error.type, error.detail, error.short_type) == (
        "urn:ietf:params:acme:error:badCSR",
        "key too small",
        "badCSR",
    )


def test_authorization_with_a_failed_http01_challenge() -> None:
    body = {
        "status": "invalid",
        "identifier": {"type": "dns", "value": "typo.example"},
        "challenges": [
            {
                "type": "http-01",
                "url": "https://ca/chall/1",
                "status": "invalid",
                "token": "tok",
                "error": {
                    "type": "urn:ietf:params:acme:error:connection",
                    "detail": "connection refused",
                    "status": 400,
                },
            },
            {"type": "dns-01", "url": "https://ca/chall/2", "status": "pending", "token": "t2"},
        ],
    }
    authz = parse_authorization(_json(body), "https://ca/authz/1")
    assert authz.name == "typo.example"
    challenge = authz.challenge()
    assert challenge is not None
    assert (challenge.url, challenge.token) == ("https://ca/chall/1", "tok")
    assert authz.challenge("tls-alpn-01") is None
    failure = authz.failure()
    assert str(failure) == "urn:ietf:params:acme:error:connection: connection refused"


def test_authorization_without_identifier() -> None:
    with pytest.raises(AcmeError, match="no identifier"):
        parse_authorization(_json({"status": "pending", "challenges": []}), "u")


def test_problem_document_with_subproblems() -> None:
    body = {
        "type": "urn:ietf:params:acme:error:rejectedIdentifier",
        "detail": "Error creating new order",
        "subproblems": [
            {
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "name is blocked",
                "identifier": {"type": "dns", "value": "blocked.example"},
            }
        ],
    }
    problem = problem_from_response(400, _json(body))
    assert problem.status == 400
    assert problem.short_type == "rejectedIdentifier"
    assert not problem.is_bad_nonce
    assert problem.subproblems == (
        ("blocked.example", "urn:ietf:params:acme:error:rejectedIdentifier", "name is blocked"),
    )
    assert "blocked.example: urn:ietf:params:acme:error:rejectedIdentifier: name is blocked" in str(
        problem
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            b'{"type": "urn:ietf:params:acme:error:badNonce",'
            b' "detail": "JWS has an invalid nonce"}',
            "urn:ietf:params:acme:error:badNonce: JWS has an invalid nonce",
        ),
        (502, b"<html>Bad Gateway</html>", "about:blank: HTTP 502: <html>Bad Gateway</html>"),
        (500, b"", "about:blank: HTTP 500:"),
    ],
)
def test_problem_from_any_error_response(status: int, body: bytes, expected: str) -> None:
    problem = problem_from_response(status, body)
    assert isinstance(problem, AcmeProblem)
    assert str(problem) == expected
    assert problem.is_bad_nonce == (b"badNonce" in body)


def test_payloads() -> None:
    assert new_account_payload() == {"termsOfServiceAgreed": True}
    assert new_account_payload(["ops@example.com", "mailto:x@example.com"])["contact"] == [
        "mailto:ops@example.com",
        "mailto:x@example.com",
    ]
    assert new_order_payload(["a.example"]) == {
        "identifiers": [{"type": "dns", "value": "a.example"}]
    }
    assert new_order_payload(["a.example"], replaces="aYhb.AIdl")["replaces"] == "aYhb.AIdl"
    assert finalize_payload(b"\xfb\xff\x00") == {"csr": "-_8A"}  # base64url, no padding


NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 2.0),  # absent: the default
        ("3", 3.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("120", 60.0),  # clamped to the limit
        ("Tue, 14 Nov 2023 22:13:25 GMT", 5.0),  # an HTTP-date
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past: at once
        ("soon", 2.0),  # malformed: the default
        ("-5", 2.0),
    ],
)
def test_retry_after(header: str | None, expected: float) -> None:
    assert retry_after(header, now=NOW, default=2.0, limit=60.0) == expected
