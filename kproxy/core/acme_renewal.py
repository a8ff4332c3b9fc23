"""When to renew a certificate, and when to try again after a failure.

- Renewal starts 30 days before expiry (Let's Encrypt's advice for its 90-day certificates),
  or, for a certificate whose whole lifetime is short, once a third of it is left (otherwise a
  6-day certificate would always be due).
- When the CA offers ACME Renewal Information (RFC 9773), its suggested window wins: the
  client renews at a point chosen uniformly at random inside it (§4.2), so that a CA's many
  clients spread out, and immediately once that point has passed. The caller draws the random
  ``fraction`` in [0, 1) once per certificate and passes it in (values in, decisions out).
- A failing name backs off exponentially, so a typo in ``--host`` never hammers the CA.

All times are POSIX seconds (wall clock: certificate validity is wall-clock time).
"""

from __future__ import annotations

import datetime
import json
from typing import Final

import attrs

from kproxy.core.acme_certificate import IssuedCertificate
from kproxy.core.acme_messages import retry_after
from kproxy.core.acme_problem import AcmeError

DAY: Final = 86400.0  # seconds
RENEW_BEFORE_EXPIRY: Final = 30 * DAY
SHORT_LIFETIME_SHARE: Final = 1 / 3  # of the lifetime left when a short certificate renews

ARI_POLL_DEFAULT: Final = 6 * 3600.0  # seconds, when renewalInfo has no Retry-After
ARI_POLL_MIN: Final = 60.0
ARI_POLL_MAX: Final = DAY

BACKOFF_FIRST: Final = 60.0  # seconds after the first failure
BACKOFF_MAX: Final = 6 * 3600.0  # the longest wait between attempts


@attrs.frozen
class RenewalWindow:
    """A span of time, POSIX seconds: RFC 9773's ``suggestedWindow``."""

    start: float
    end: float


def parse_renewal_info(body: bytes) -> RenewalWindow:
    """The suggested window of a renewalInfo response (RFC 9773 §4.2).

    Raises:
        AcmeError: not JSON, no window, or an end before its start.
    """
    try:
        window = json.loads(body)["suggestedWindow"]
        start = _rfc3339(window["start"])
        end = _rfc3339(window["end"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AcmeError(f"malformed renewalInfo: {exc}") from exc
    if end < start:
        raise AcmeError("malformed renewalInfo: the window ends before it starts")
    return RenewalWindow(start, end)


def _rfc3339(value: object) -> float:
    if not isinstance(value, str):
        raise TypeError(f"not a timestamp: {value!r}")
    # fromisoformat takes "Z" and offsets since 3.11; trim sub-microsecond digits first.
    text = value.strip()
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return parsed.timestamp()


def default_renewal_time(cert: IssuedCertificate) -> float:
    """30 days before expiry, or when a third of a short lifetime is left."""
    return cert.not_after - min(RENEW_BEFORE_EXPIRY, cert.lifetime * SHORT_LIFETIME_SHARE)


def renewal_time(
    cert: IssuedCertificate, window: RenewalWindow | None = None, fraction: float = 0.0
) -> float:
    """When ``cert`` should be renewed.

    Args:
        cert: the certificate in use.
        window: the CA's suggested window (RFC 9773), or None when the CA offers no ARI or it
            could not be fetched.
        fraction: where in the window, in [0, 1): drawn at random once per certificate.
    """
    if window is None:
        return default_renewal_time(cert)
    return window.start + min(max(fraction, 0.0), 1.0) * (window.end - window.start)


def is_due(
    cert: IssuedCertificate,
    now: float,
    window: RenewalWindow | None = None,
    fraction: float = 0.0,
) -> bool:
    """Whether ``cert`` should be renewed at ``now`` (an expired one always is)."""
    return now >= min(renewal_time(cert, window, fraction), cert.not_after)


def next_renewal_info_poll(retry_after_header: str | None, now: float) -> float:
    """When to ask for renewalInfo again: the CA's Retry-After (RFC 9773 §4.3), kept between a
    minute and a day, six hours without one."""
    wait = retry_after(retry_after_header, now=now, default=ARI_POLL_DEFAULT, limit=ARI_POLL_MAX)
    return now + max(wait, ARI_POLL_MIN)


@attrs.frozen
class Backoff:
    """A name's run of failed attempts.

    Attributes:
        failures: how many in a row.
        next_attempt: the earliest time for the next one (clock of the caller's choosing).
        last_error: the last failure's message (the CA's problem, typically), for the log.
    """

    failures: int
    next_attempt: float
    last_error: str = ""

    def allows(self, now: float) -> bool:
        return now >= self.next_attempt


def after_failure(previous: Backoff | None, now: float, error: str = "") -> Backoff:
    """The state after another failure at ``now``: waits of 1, 2, 4, … minutes, up to 6 h.
    A success simply drops the state (None: no backoff)."""
    failures = 1 if previous is None else previous.failures + 1
    wait = min(BACKOFF_FIRST * 2 ** min(failures - 1, 30), BACKOFF_MAX)
    return Backoff(failures, now + wait, error)


def may_attempt(state: Backoff | None, now: float) -> bool:
    return state is None or state.allows(now)
