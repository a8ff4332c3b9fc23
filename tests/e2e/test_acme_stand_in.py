"""What pebble 2.4 cannot show, against a scripted CA over real HTTPS (``tests/acme_stand_in``):
the client waits as ``Retry-After`` says while an authorization or an order is in progress, and
reads the CA's renewal window (RFC 9773) with when to ask again."""

from __future__ import annotations

import time

import trio

from kproxy.core.acme_challenges import ChallengeTokens
from kproxy.core.acme_jws import new_account_key
from kproxy.core.acme_renewal import RenewalWindow, is_due
from kproxy.runtime.acme_client import AcmeClient
from kproxy.runtime.acme_http import HttpsClient
from tests.acme_stand_in import StandInCA


async def _client(nursery: trio.Nursery, ca: StandInCA) -> AcmeClient:
    directory_url = await nursery.start(ca.serve)
    http = HttpsClient(ssl_context=ca.client_context())
    return AcmeClient(directory_url, new_account_key(), ChallengeTokens(), http=http)


def _gap_after_first(ca: StandInCA, path: str) -> float:
    """Seconds between the first two requests for ``path`` after the challenge was accepted
    (authorizations) or the order finalized (orders)."""
    marker = "/chall/1" if path.startswith("/authz") else "/finalize/1"
    start = next(i for i, (_, _, p) in enumerate(ca.requests) if p == marker)
    times = [t for t, _, p in ca.requests[start:] if p == path]
    return times[1] - times[0]


async def test_polling_waits_as_retry_after_says(nursery: trio.Nursery) -> None:
    ca = StandInCA(retry_after="1")
    client = await _client(nursery, ca)
    with trio.fail_after(20):
        cert = await client.obtain(["stand-in.example"])
    assert cert.names == ("stand-in.example",)
    # The authorization answered "pending, Retry-After: 1", and so did the order after
    # finalize: each next poll came a second later (without the header: 0.25 s).
    assert _gap_after_first(ca, "/authz/1") >= 1.0
    assert _gap_after_first(ca, "/order/1") >= 1.0


async def test_without_retry_after_polling_starts_fast(nursery: trio.Nursery) -> None:
    ca = StandInCA(retry_after="")  # an empty header is malformed: the default wait
    client = await _client(nursery, ca)
    with trio.fail_after(20):
        await client.obtain(["stand-in.example"])
    assert _gap_after_first(ca, "/authz/1") < 0.9


async def test_renewal_information(nursery: trio.Nursery) -> None:
    ca = StandInCA(retry_after="0")
    client = await _client(nursery, ca)
    with trio.fail_after(20):
        cert = await client.obtain(["stand-in.example"])
        before = time.time()
        answer = await client.renewal_info(cert)
    assert answer is not None
    window, poll_at = answer
    assert window == RenewalWindow(1803859200.0, 1803945600.0)
    assert before + 21600 <= poll_at <= time.time() + 21600  # the CA's Retry-After
    assert any(p == f"/renewal-info/{cert.ari_id}" for _, _, p in ca.requests)
    # The window is in 2027 and the certificate new: not due before it, due inside it.
    assert not is_due(cert, window.start - 1, window, 0.0)
    assert is_due(cert, window.start, window, 0.0)
