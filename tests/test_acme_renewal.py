"""When a certificate renews (30 days before expiry, a third of a short lifetime, or RFC 9773's
suggested window) and how a failing name backs off."""

from __future__ import annotations

import json

import pytest

from kproxy.core.acme_certificate import IssuedCertificate
from kproxy.core.acme_problem import AcmeError
from kproxy.core.acme_renewal import (
    DAY,
    Backoff,
    RenewalWindow,
    after_failure,
    default_renewal_time,
    is_due,
    may_attempt,
    next_renewal_info_poll,
    parse_renewal_info,
    renewal_time,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _cert(lifetime: float, not_before: float = T0) -> IssuedCertificate:
    return IssuedCertificate(
        chain_pem=b"",
        key_pem=b"",
        names=("a.example",),
        not_before=not_before,
        not_after=not_before + lifetime,
        ari_id="aYhb.AIdl",
    )


@pytest.mark.parametrize(
    ("lifetime", "renews_at"),
    [
        (90 * DAY, T0 + 60 * DAY),  # Let's Encrypt: 30 days before expiry
        (365 * DAY, T0 + 335 * DAY),
        (60 * DAY, T0 + 40 * DAY),  # a third left is 20 days: sooner than 30 before expiry
        (6 * DAY, T0 + 4 * DAY),  # short-lived: not always due
        (30.0, T0 + 20.0),  # pebble's short test certificates
    ],
)
def test_default_renewal_time(lifetime: float, renews_at: float) -> None:
    cert = _cert(lifetime)
    assert default_renewal_time(cert) == pytest.approx(renews_at)
    assert renewal_time(cert) == pytest.approx(renews_at)
    assert not is_due(cert, renews_at - 1)
    assert is_due(cert, renews_at)


WINDOW = RenewalWindow(T0 + 50 * DAY, T0 + 52 * DAY)


@pytest.mark.parametrize(
    ("window", "fraction", "now", "due"),
    [
        (None, 0.0, T0 + 59 * DAY, False),  # no ARI: 30 days before expiry
        (None, 0.0, T0 + 60 * DAY, True),
        (WINDOW, 0.0, T0 + 50 * DAY, True),  # the window's start
        (WINDOW, 0.5, T0 + 50 * DAY, False),  # its middle, not yet
        (WINDOW, 0.5, T0 + 51 * DAY, True),
        (WINDOW, 0.999, T0 + 51.99 * DAY, False),
        (WINDOW, 0.999, T0 + 52 * DAY, True),
        (WINDOW, 0.0, T0 + 49 * DAY, False),  # before the window, even past half-life
        # The CA moved the window into the past (a revocation coming): renew at once.
        (RenewalWindow(T0 - 2 * DAY, T0 - DAY), 0.7, T0 + 1, True),
        # A window past expiry still renews by expiry.
        (RenewalWindow(T0 + 100 * DAY, T0 + 101 * DAY), 0.0, T0 + 90 * DAY, True),
        (WINDOW, 7.0, T0 + 52 * DAY, True),  # a fraction out of range is clamped
    ],
)
def test_renewal_with_renewal_information(
    window: RenewalWindow | None, fraction: float, now: float, due: bool
) -> None:
    assert is_due(_cert(90 * DAY), now, window, fraction) == due


def test_parse_renewal_info() -> None:
    body = {
        "suggestedWindow": {
            "start": "2027-03-01T00:00:00Z",
            "end": "2027-03-03T12:00:00.123456789Z",
        },
        "explanationURL": "https://ca.example/why",
    }
    window = parse_renewal_info(json.dumps(body).encode())
    assert window.start == 1803859200.0
    assert window.end == pytest.approx(1803859200.0 + 2.5 * DAY + 0.123456)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'{"suggestedWindow": {"start": "2027-03-01T00:00:00Z"}}',
        b'{"suggestedWindow": {"start": "2027-03-01T00:00:00", "end": "2027-03-02T00:00:00"}}',
        b'{"suggestedWindow": {"start": "2027-03-02T00:00:00Z", "end": "2027-03-01T00:00:00Z"}}',
        b'{"suggestedWindow": {"start": 5, "end": 6}}',
    ],
)
def test_malformed_renewal_info(body: bytes) -> None:
    with pytest.raises(AcmeError, match="malformed renewalInfo"):
        parse_renewal_info(body)


@pytest.mark.parametrize(
    ("header", "wait"),
    [(None, 6 * 3600.0), ("21600", 21600.0), ("5", 60.0), ("999999", DAY)],
)
def test_next_renewal_info_poll(header: str | None, wait: float) -> None:
    assert next_renewal_info_poll(header, T0) == T0 + wait


def test_backoff_doubles_up_to_six_hours() -> None:
    state: Backoff | None = None
    waits = []
    now = 1000.0
    for _ in range(12):
        assert may_attempt(state, now)
        state = after_failure(state, now, "urn:ietf:params:acme:error:unauthorized: 404")
        waits.append(state.next_attempt - now)
        assert not may_attempt(state, now)
        assert not state.allows(state.next_attempt - 0.001)
        now = state.next_attempt
    assert waits == [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600, 21600]
    assert state is not None
    assert state.failures == 12
    assert state.last_error.endswith("404")
    assert may_attempt(None, 0.0)  # a success drops the state: no backoff


def test_backoff_survives_many_failures() -> None:
    state = Backoff(failures=10_000, next_attempt=0.0)
    assert after_failure(state, 5.0).next_attempt == 5.0 + 6 * 3600
