"""The ACME manager against real pebble: lazy issuance, one shared order, the cache at start
without the CA, backoff of a failing name, background renewal of a short-lived certificate."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kproxy.core.acme_challenges import ChallengeTokens
from kproxy.core.acme_problem import AcmeProblem
from kproxy.core.acme_renewal import renewal_time
from kproxy.runtime.acme_cache import CertificateCache
from kproxy.runtime.acme_client import AcmeClient
from kproxy.runtime.acme_http import HttpsClient
from kproxy.runtime.acme_manager import AcmeBackoff, AcmeManager
from kproxy.runtime.log import Logger
from tests.e2e.test_acme_pebble import RecordingHttps
from tests.pebble import ChallengeServer, Pebble, requires_pebble, run_pebble

pytestmark = requires_pebble

GUARD = 30  # seconds


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with run_pebble(tmp_path_factory.mktemp("pebble")) as running:
        yield running


async def _manager(
    nursery: trio.Nursery, pebble: Pebble, cache_root: Path, served: ChallengeTokens | None = None
) -> tuple[AcmeManager, RecordingHttps, io.StringIO]:
    """A running manager; the challenge server answers from ``served`` (the client's own
    registry unless given)."""
    cache = CertificateCache(cache_root, pebble.directory_url)
    tokens = ChallengeTokens()
    await nursery.start(
        ChallengeServer(tokens if served is None else served).serve, pebble.http_port
    )
    http = RecordingHttps(ssl_context=pebble.ssl_context)
    client = AcmeClient(pebble.directory_url, await cache.account_key(), tokens, http=http)
    log = io.StringIO()
    manager = AcmeManager(client, cache, logger=Logger(out=log))
    await nursery.start(manager.serve)
    return manager, http, log


def _new_orders(http: RecordingHttps) -> int:
    # Accepted ones only: pebble answers a share of requests with badNonce, and the client
    # sends that newOrder again (one order, two POSTs).
    return sum(
        1
        for m, url, status, _ in http.seen
        if m == "POST" and url.endswith("/order-plz") and status < 400
    )


async def test_lazy_issuance_is_cached_and_shared(
    pebble: Pebble, nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager, http, log = await _manager(nursery, pebble, tmp_path)
    assert manager.cached("lazy.example.com") is None  # nothing is ordered before it is asked
    assert _new_orders(http) == 0
    results = []

    async def ask() -> None:
        results.append(await manager.certificate("lazy.example.com"))

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as askers:
            for _ in range(3):
                askers.start_soon(ask)
    assert len(results) == 3
    assert results[0] is results[1] is results[2]  # one order, shared
    assert _new_orders(http) == 1
    assert await manager.certificate("LAZY.example.com") is results[0]  # at hand: no order
    assert _new_orders(http) == 1
    assert manager.cache.read("lazy.example.com") == results[0]
    assert json.loads(log.getvalue().splitlines()[-1])["msg"] == "ACME certificate obtained"


async def test_a_failing_name_backs_off(
    pebble: Pebble, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The HTTP port answers from another registry: validation fails with the CA's 404 problem.
    manager, http, log = await _manager(nursery, pebble, tmp_path, served=ChallengeTokens())
    with trio.fail_after(GUARD), pytest.raises(AcmeProblem, match="unauthorized"):
        await manager.certificate("typo.example.com")
    line = json.loads(log.getvalue().splitlines()[-1])
    assert line["msg"] == "ACME order failed"
    assert line["host"] == "typo.example.com"
    assert "urn:ietf:params:acme:error:unauthorized" in line["error"]
    assert (line["failures"], line["retry_in"]) == (1, 60)
    # Asked again at once: the last failure, without asking the CA.
    with pytest.raises(AcmeBackoff, match=r"1 failed order\(s\), next attempt in \d+ s"):
        await manager.certificate("typo.example.com")
    assert _new_orders(http) == 1


async def test_a_restart_serves_from_the_cache_without_the_ca(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with run_pebble(tmp_path / "pebble") as pebble:
        manager, _, _ = await _manager(nursery, pebble, tmp_path / "certs")
        with trio.fail_after(GUARD):
            cert = await manager.certificate("restart.example.com")
    # Pebble is gone: a new process on the same cache, with the same directory URL.
    cache = CertificateCache(tmp_path / "certs", pebble.directory_url)
    client = AcmeClient(
        pebble.directory_url,
        await cache.account_key(),
        ChallengeTokens(),
        http=HttpsClient(ssl_context=pebble.ssl_context),
    )
    log = io.StringIO()
    restarted = AcmeManager(client, cache, logger=Logger(out=log))
    with trio.fail_after(GUARD):
        await nursery.start(restarted.serve)
        assert await restarted.certificate("restart.example.com") == cert
        assert await restarted.renew_due() == []  # a renewal check cannot reach the CA
    assert "ACME renewalInfo unavailable" in log.getvalue()


async def test_a_short_lived_certificate_falls_due_and_renews(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # 15 s: due 10 s after issuance, far enough for "not due yet" on a loaded machine.
    with run_pebble(tmp_path / "pebble", validity=15) as pebble:
        manager, http, _ = await _manager(nursery, pebble, tmp_path / "certs")
        with trio.fail_after(GUARD):
            cert = await manager.certificate("renew.example.com")
            assert await manager.renew_due() == []  # not due yet
            await trio.sleep(max(renewal_time(cert) - time.time(), 0))
            assert manager.cached("renew.example.com") is cert  # due, still served meanwhile
            assert await manager.renew_due() == ["renew.example.com"]
    renewed = manager.cached("renew.example.com")
    assert renewed is not None
    assert renewed.not_after > cert.not_after
    assert manager.cache.read("renew.example.com") == renewed
    assert _new_orders(http) == 2
