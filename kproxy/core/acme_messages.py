"""ACME's resources (RFC 8555 §7.1): the directory, orders, authorizations and challenges,
parsed from the CA's JSON into frozen values, and the payloads the client sends.

Parsing is strict about what the client needs (a missing ``finalize`` URL is an error) and
ignores the rest, so a CA's extensions pass through harmlessly.
"""

from __future__ import annotations

import base64
import email.utils
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from kproxy.core.acme_problem import AcmeError, AcmeProblem, problem_from_json

HTTP_01: Final = "http-01"
JOSE_CONTENT_TYPE: Final = "application/jose+json"
PEM_CHAIN_CONTENT_TYPE: Final = "application/pem-certificate-chain"

# Order and authorization states (RFC 8555 §7.1.6): these end the polling.
PENDING: Final = "pending"
READY: Final = "ready"
PROCESSING: Final = "processing"
VALID: Final = "valid"
INVALID: Final = "invalid"


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise AcmeError(f"the CA's {what} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AcmeError(f"the CA's {what} is not a JSON object")
    return document


def _url(document: Mapping[str, Any], key: str, what: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise AcmeError(f"the CA's {what} has no {key} URL")
    return value


def _error(document: Mapping[str, Any]) -> AcmeProblem | None:
    error = document.get("error")
    return None if error is None else problem_from_json(error)


@attrs.frozen
class Directory:
    """The CA's directory (§7.1.1): where each resource lives."""

    new_nonce: str
    new_account: str
    new_order: str
    renewal_info: str | None = None  # RFC 9773 (ARI), when the CA offers it
    terms_of_service: str | None = None


def parse_directory(body: bytes) -> Directory:
    document = _object(body, "directory")
    renewal_info = document.get("renewalInfo")
    meta = document.get("meta")
    terms = meta.get("termsOfService") if isinstance(meta, dict) else None
    return Directory(
        new_nonce=_url(document, "newNonce", "directory"),
        new_account=_url(document, "newAccount", "directory"),
        new_order=_url(document, "newOrder", "directory"),
        renewal_info=renewal_info if isinstance(renewal_info, str) else None,
        terms_of_service=terms if isinstance(terms, str) else None,
    )


@attrs.frozen
class Challenge:
    type: str
    url: str
    status: str
    token: str
    error: AcmeProblem | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Authorization:
    """One identifier's authorization (§7.1.4) and the ways it can be proven."""

    url: str
    status: str
    name: str
    challenges: tuple[Challenge, ...]

    def challenge(self, type: str = HTTP_01) -> Challenge | None:
        return next((c for c in self.challenges if c.type == type), None)

    def failure(self) -> AcmeProblem:
        """Why it is invalid: the failed challenge's problem, or a generic one."""
        for challenge in self.challenges:
            if challenge.error is not None:
                return challenge.error
        return AcmeProblem(
            "urn:ietf:params:acme:error:unauthorized",
            f"authorization for {self.name} is {self.status}",
        )


def parse_authorization(body: bytes, url: str) -> Authorization:
    document = _object(body, "authorization")
    identifier = document.get("identifier")
    name = identifier.get("value") if isinstance(identifier, dict) else None
    if not isinstance(name, str):
        raise AcmeError("the CA's authorization has no identifier")
    challenges = []
    for item in document.get("challenges") or ():
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            challenges.append(
                Challenge(
                    type=item["type"],
                    url=_url(item, "url", "challenge"),
                    status=str(item.get("status", "")),
                    token=str(item.get("token", "")),
                    error=_error(item),
                )
            )
    return Authorization(url, str(document.get("status", "")), name, tuple(challenges))


@attrs.frozen
class Order:
    """An order (§7.1.3): its state, the authorizations to satisfy, where to finalize, and
    where the certificate is once it is valid."""

    url: str
    status: str
    names: tuple[str, ...]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: AcmeProblem | None = attrs.field(default=None, eq=False)


def parse_order(body: bytes, url: str) -> Order:
    document = _object(body, "order")
    names = tuple(
        str(i.get("value")) for i in document.get("identifiers") or () if isinstance(i, dict)
    )
    authorizations = document.get("authorizations", [])
    if not isinstance(authorizations, list) or not all(isinstance(a, str) for a in authorizations):
        raise AcmeError("the CA's order has malformed authorizations")
    certificate = document.get("certificate")
    return Order(
        url=url,
        status=str(document.get("status", "")),
        names=names,
        authorizations=tuple(authorizations),
        finalize=_url(document, "finalize", "order"),
        certificate=certificate if isinstance(certificate, str) else None,
        error=_error(document),
    )


def new_account_payload(contact: Sequence[str] = ()) -> dict[str, Any]:
    """newAccount (§7.3): agree to the terms; an existing key gets its existing account back."""
    payload: dict[str, Any] = {"termsOfServiceAgreed": True}
    if contact:
        payload["contact"] = [c if ":" in c else f"mailto:{c}" for c in contact]
    return payload


def new_order_payload(names: Sequence[str], replaces: str | None = None) -> dict[str, Any]:
    """newOrder (§7.4) for DNS names; ``replaces`` names the certificate this one renews by
    its ARI id (RFC 9773 §5), when the CA offers ARI."""
    payload: dict[str, Any] = {"identifiers": [{"type": "dns", "value": n} for n in names]}
    if replaces is not None:
        payload["replaces"] = replaces
    return payload


def finalize_payload(csr_der: bytes) -> dict[str, Any]:
    """finalize (§7.4): the CSR, DER in base64url."""
    return {"csr": _b64url(csr_der)}


def challenge_ready_payload() -> dict[str, Any]:
    """The POST that tells the CA a challenge is ready to be validated (§7.5.1): ``{}``."""
    return {}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def retry_after(value: str | None, *, now: float, default: float, limit: float) -> float:
    """Seconds to wait before polling again, from a Retry-After header (§8.2; RFC 9110
    §10.2.3: delay-seconds or an HTTP-date), clamped to [0, limit].

    Args:
        value: the header's value, or None when absent.
        now: the wall-clock time (POSIX seconds), for an HTTP-date.
        default: the wait when the header is absent or malformed.
        limit: the longest wait the caller accepts.
    """
    seconds = default
    if value is not None:
        value = value.strip()
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None and when.tzinfo is not None:
                seconds = when.timestamp() - now
    return min(max(seconds, 0.0), limit)
