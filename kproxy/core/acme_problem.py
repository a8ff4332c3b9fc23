"""ACME's errors: problem documents (RFC 8555 §6.7, RFC 7807) and the client's own failures.

A CA explains every refusal in a problem document: a ``type`` URN such as
``urn:ietf:params:acme:error:badNonce``, a human ``detail``, sometimes ``subproblems`` per
identifier. :class:`AcmeProblem` carries them, so a failure is logged with the CA's own words.
"""

from __future__ import annotations

import json
from typing import Any, Final

from kproxy.errors import KProxyError

ERROR_PREFIX: Final = "urn:ietf:params:acme:error:"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class AcmeError(KProxyError):
    """A certificate could not be obtained: the CA refused, was unreachable, or answered
    something that is not ACME."""


class AcmeTimeout(AcmeError):
    """An ACME step did not finish within its deadline."""


class AcmeProblem(AcmeError):
    """The CA answered with a problem document.

    Attributes:
        type: the problem's type URN (``urn:ietf:params:acme:error:...``).
        detail: the CA's explanation.
        status: the HTTP status it came with (0 for a problem inside an object: a challenge's
            or an order's ``error``).
        subproblems: ``(identifier, type, detail)`` per name the CA singled out.
    """

    def __init__(
        self,
        type: str,
        detail: str,
        status: int = 0,
        subproblems: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self.type = type
        self.detail = detail
        self.status = status
        self.subproblems = subproblems
        parts = [f"{type}: {detail}" if detail else type]
        parts.extend(f"{name}: {t}: {d}" for name, t, d in subproblems)
        super().__init__("; ".join(parts))

    @property
    def short_type(self) -> str:
        """The type without the ACME prefix ("badNonce"), or the whole type if it has none."""
        return self.type.removeprefix(ERROR_PREFIX)

    @property
    def is_bad_nonce(self) -> bool:
        return self.type == ERROR_PREFIX + "badNonce"


def problem_from_json(document: Any, status: int = 0) -> AcmeProblem:
    """An :class:`AcmeProblem` from a decoded problem document (a JSON object)."""
    if not isinstance(document, dict):
        return AcmeProblem("about:blank", f"malformed problem document: {document!r}", status)
    subproblems = []
    for sub in document.get("subproblems") or ():
        if isinstance(sub, dict):
            identifier = sub.get("identifier")
            name = identifier.get("value", "") if isinstance(identifier, dict) else ""
            subproblems.append((str(name), str(sub.get("type", "")), str(sub.get("detail", ""))))
    return AcmeProblem(
        str(document.get("type") or "about:blank"),
        str(document.get("detail") or ""),
        status,
        tuple(subproblems),
    )


def problem_from_response(status: int, body: bytes) -> AcmeProblem:
    """The problem an error response (status >= 400) carries; a body that is not a problem
    document still yields one, naming the status and the start of the body."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and "type" in document:
        return problem_from_json(document, status)
    text = body[:200].decode("utf-8", "replace")
    return AcmeProblem("about:blank", f"HTTP {status}: {text}".strip(), status)
