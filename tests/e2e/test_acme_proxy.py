"""Automatic certificates through the proxy, against real pebble: ``--tls`` without files, the
certificate ordered at the first handshake with HTTP-01 answered on the proxy's own HTTP port,
shared and reused; on-demand allow and deny; the cache across a restart without the CA, and
scoped by directory URL; wildcards and ``--workers N`` refused."""

from __future__ import annotations

import json
import os
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from kproxy import DeployError, DeploymentOptions, Proxy, RunOptions, ServiceOptions
from kproxy.core.acme_renewal import renewal_time
from kproxy.runtime.acme_cache import directory_scope
from kproxy.runtime.acme_certificates import AcmeCertificates
from kproxy.runtime.log import Logger
from tests.helpers import (
    LogCapture,
    Received,
    Upstream,
    clean_env,
    control,
    request,
    send_reply,
    start_proxy_process,
    start_upstream,
    wait_until,
)
from tests.pebble import Pebble, requires_pebble, run_pebble
from tests.tls_helpers import HttpsClient

pytestmark = requires_pebble

GUARD = 30  # seconds per test
OBTAINED = "ACME certificate obtained"


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with run_pebble(tmp_path_factory.mktemp("pebble")) as running:
        yield running


@pytest.fixture(autouse=True)
def _trust_pebble(pebble: Pebble, monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy's ACME client trusts the system store plus SSL_CERT_FILE: pebble's CA here.
    monkeypatch.setenv("SSL_CERT_FILE", pebble.ca_path)


async def acme_proxy(
    nursery: trio.Nursery, pebble: Pebble, state_dir: Path | None, *, directory: str = ""
) -> tuple[Proxy, LogCapture]:
    """A proxy whose HTTP port is where pebble's validator connects."""
    logs = LogCapture()
    options = RunOptions(
        socket_path="",
        state_dir=str(state_dir) if state_dir is not None else "",
        bind="127.0.0.1",
        http_port=pebble.http_port,
        https_port=0,
        acme_directory=directory or pebble.directory_url,
    )
    proxy: Proxy = await nursery.start(Proxy(options, Logger(out=logs)).serve)  # type: ignore[arg-type]
    return proxy, logs


async def open_https(port: int, name: str, root: bytes) -> HttpsClient:
    """A TLS connection asking for ``name``, trusting pebble's issuing root only."""
    context = ssl.create_default_context(cadata=root.decode())
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=name)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return HttpsClient(stream)


async def get(port: int, name: str, root: bytes) -> tuple[bytes, bytes]:
    """One HTTPS request for ``name``; returns the body and the certificate presented."""
    client = await open_https(port, name, root)
    try:
        reply = await client.request(host=name)
        assert reply.status == 200
        return reply.body, client.peer_certificate()
    finally:
        await client.aclose()


def tls(*hosts: str, **kwargs: object) -> ServiceOptions:
    return ServiceOptions(hosts=hosts, tls=True, **kwargs)  # type: ignore[arg-type]


async def test_lazy_issuance_answered_on_the_proxys_http_port(
    nursery: trio.Nursery, pebble: Pebble, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        proxy, logs = await acme_proxy(nursery, pebble, tmp_path / "state")
        upstream = await start_upstream(nursery, "app")
        options = DeploymentOptions(targets=(upstream.address,), service=tls("lazy.test"))
        await proxy.deploy("app", options)
        assert logs.records(OBTAINED) == []  # nothing ordered at deploy
        root = await pebble.root_pem()
        port = proxy.https_port or 0
        results: list[tuple[bytes, bytes]] = []

        async def fetch() -> None:
            results.append(await get(port, "lazy.test", root))

        async with trio.open_nursery() as clients:  # concurrent first handshakes: one order
            for _ in range(3):
                clients.start_soon(fetch)
        assert [body for body, _ in results] == [b"app"] * 3
        assert len({cert for _, cert in results}) == 1
        assert (await get(port, "lazy.test", root))[1] == results[0][1]  # reused
        assert len(logs.records(OBTAINED)) == 1
        # Pebble's validator reached the token on the proxy's HTTP port, before the redirect.
        answered = [
            r
            for r in logs.records("Request")
            if r["path"].startswith("/.well-known/acme-challenge/")
        ]
        assert answered
        assert {(r["status"], r["scheme"]) for r in answered} == {(200, "http")}
        # A token that is not pending is routed as usual: here, the redirect to HTTPS.
        reply = await request(proxy.http_port, "/.well-known/acme-challenge/nope", host="lazy.test")
        assert reply.status == 301
        # Cached under <state-dir>/certs/<directory scope>/, key and chain in one 0600 file.
        cached = tmp_path / "state/certs" / directory_scope(pebble.directory_url) / "lazy.test.pem"
        assert stat.S_IMODE(os.stat(cached).st_mode) == 0o600


async def test_kproxy_run_workers_1_with_the_directory_from_the_environment(
    nursery: trio.Nursery, pebble: Pebble, tmp_path: Path
) -> None:
    env = clean_env(KPROXY_ACME_DIRECTORY=pebble.directory_url, SSL_CERT_FILE=pebble.ca_path)
    with trio.fail_after(GUARD):
        upstream = await start_upstream(nursery, "app")
        running = await start_proxy_process(
            nursery, tmp_path, "--workers", "1", http_port=pebble.http_port, env=env
        )
        line = f"deploy app --target {upstream.address} --host cli.test --tls"
        assert (await control(running.socket_path, line))[-1] == "OK deployed app"
        root = await pebble.root_pem()
        assert (await get(running.https_port, "cli.test", root))[0] == b"app"
        scope = directory_scope(pebble.directory_url)
        assert (tmp_path / "state/certs" / scope / "cli.test.pem").is_file()


@pytest.mark.parametrize("form", ["absolute", "path"])
async def test_on_demand_allows_and_denies(
    nursery: trio.Nursery, pebble: Pebble, tmp_path: Path, form: str
) -> None:
    asked: list[bytes] = []

    async def ask(_u: Upstream, received: Received, client: object) -> None:
        asked.append(received.target)
        status = 200 if received.target.endswith(b"host=yes.test") else 403
        await send_reply(client, status, b"")  # type: ignore[arg-type]

    with trio.fail_after(GUARD):
        proxy, logs = await acme_proxy(nursery, pebble, tmp_path / "state")
        app = await start_upstream(nursery, "app", handlers={b"/ask": ask})
        # A path is asked of the service's own target (kamal-proxy's local form).
        url = f"http://{app.address}/ask" if form == "absolute" else "/ask"
        options = DeploymentOptions(
            targets=(app.address,), service=tls(tls_on_demand_url=url)
        )  # no --host: every name the URL allows
        await proxy.deploy("app", options)
        root = await pebble.root_pem()
        port = proxy.https_port or 0
        assert (await get(port, "yes.test", root))[0] == b"app"
        for _ in range(2):
            with pytest.raises(trio.BrokenResourceError):
                await open_https(port, "no.test", root)
        assert asked.count(b"/ask?host=yes.test") == 1
        assert asked.count(b"/ask?host=no.test") == 1  # the answer is reused for a while
        assert [r["host"] for r in logs.records(OBTAINED)] == ["yes.test"]  # no order for no
        assert [r["host"] for r in logs.records("TLS on-demand refused")] == ["no.test"]


async def test_the_cache_serves_after_a_restart_without_the_ca(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(GUARD):
        upstream = await start_upstream(nursery, "app")
        options = DeploymentOptions(targets=(upstream.address,), service=tls("kept.test"))
        with run_pebble(tmp_path / "pebble") as own:
            monkeypatch.setenv("SSL_CERT_FILE", own.ca_path)
            root = await own.root_pem()
            async with trio.open_nursery() as first:
                proxy, _ = await acme_proxy(first, own, tmp_path / "state")
                await proxy.deploy("app", options)
                _, served = await get(proxy.https_port or 0, "kept.test", root)
                first.cancel_scope.cancel()
        # The CA is gone; the restarted proxy restores the service and serves from its cache.
        state = json.loads((tmp_path / "state/kproxy.state.json").read_text())
        saved = state["services"][0]["options"]["service"]
        assert (saved["tls"], saved["tls_certificate_path"]) == (True, "")
        proxy, logs = await acme_proxy(nursery, own, tmp_path / "state")
        assert (await get(proxy.https_port or 0, "kept.test", root))[1] == served
        assert logs.records(OBTAINED) == []


async def test_a_renewed_certificate_serves_new_handshakes(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 15 s certificates fall due 10 s after issuance (a third of the lifetime before expiry).
    with run_pebble(tmp_path / "pebble", validity=15) as own, trio.fail_after(GUARD):
        monkeypatch.setenv("SSL_CERT_FILE", own.ca_path)
        root = await own.root_pem()
        proxy, logs = await acme_proxy(nursery, own, tmp_path / "state")
        upstream = await start_upstream(nursery, "app")
        options = DeploymentOptions(targets=(upstream.address,), service=tls("renew.test"))
        await proxy.deploy("app", options)
        port = proxy.https_port or 0
        _, first = await get(port, "renew.test", root)
        assert isinstance(proxy.router.acme, AcmeCertificates)
        (manager,) = proxy.router.acme.managers()
        cert = manager.cached("renew.test")
        assert cert is not None
        await trio.sleep(max(renewal_time(cert) - time.time(), 0))
        # The background check (every 10 minutes) does this; the handshakes never wait for it.
        assert await manager.renew_due() == ["renew.test"]
        _, second = await get(port, "renew.test", root)
        assert second != first  # a new context for the new certificate
        assert len(logs.records(OBTAINED)) == 2


async def test_the_cache_is_scoped_by_directory(
    nursery: trio.Nursery, pebble: Pebble, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        proxy, logs = await acme_proxy(nursery, pebble, tmp_path / "state")
        upstream = await start_upstream(nursery, "app")
        root = await pebble.root_pem()
        port = proxy.https_port or 0
        # Two directory URLs of one CA stand for staging and production.
        other = pebble.directory_url + "?as=staging"
        seen = []
        for directory in (pebble.directory_url, other, pebble.directory_url, other):
            service = tls("scoped.test", tls_acme_directory=directory)
            await proxy.deploy(
                "app", DeploymentOptions(targets=(upstream.address,), service=service)
            )
            seen.append((await get(port, "scoped.test", root))[1])
        assert seen[0] != seen[1]  # the other directory orders its own
        assert (seen[2], seen[3]) == (seen[0], seen[1])  # each from its own cache
        assert len(logs.records(OBTAINED)) == 2
        scopes = {directory_scope(pebble.directory_url), directory_scope(other)}
        assert {p.name for p in (tmp_path / "state/certs").iterdir()} == scopes


async def test_refusals(nursery: trio.Nursery, pebble: Pebble, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        upstream = await start_upstream(nursery, "app")
        # Without a state directory, ACME needs --tls-acme-cache-path (embedding).
        proxy, _ = await acme_proxy(nursery, pebble, None)
        options = DeploymentOptions(targets=(upstream.address,), service=tls("a.test"))
        with pytest.raises(DeployError, match="give --tls-acme-cache-path"):
            await proxy.deploy("app", options)
        # Wildcards need certificate files.
        with pytest.raises(ValueError, match=r"wildcard host \*\.w\.test needs a certificate file"):
            tls("*.w.test")


async def test_workers_ask_the_supervisor(
    nursery: trio.Nursery, pebble: Pebble, tmp_path: Path
) -> None:
    env = clean_env(KPROXY_ACME_DIRECTORY=pebble.directory_url, SSL_CERT_FILE=pebble.ca_path)
    with trio.fail_after(GUARD):
        upstream = await start_upstream(nursery, "app")
        running = await start_proxy_process(
            nursery, tmp_path, "--workers", "2", http_port=pebble.http_port, env=env, timeout=20
        )
        line = f"deploy app --target {upstream.address} --host w.test --tls"
        assert (await control(running.socket_path, line))[-1] == "OK deployed app"
        root = await pebble.root_pem()
        served = set()
        for _ in range(6):  # the kernel spreads the connections over both workers
            body, cert = await get(running.https_port, "w.test", root)
            assert body == b"app"
            served.add(cert)
        assert len(served) == 1
        assert len(running.records(OBTAINED)) == 1  # ordered once, by the supervisor
        assert all("worker" not in r for r in running.records(OBTAINED))

        def answered() -> list[dict[str, Any]]:
            return [
                r
                for r in running.records("Request")
                if r["path"].startswith("/.well-known/acme-challenge/")
            ]

        # By the workers, from the supervisor's tokens. Their access lines are batched (up to
        # 0.1 s), and the challenge came just before the first handshake's certificate.
        await wait_until(lambda: bool(answered()))
        assert {r["status"] for r in answered()} == {200}
        line = f"deploy app --target {upstream.address} --host *.w.test --tls"
        answers = await control(running.socket_path, line)
        assert "wildcard host *.w.test needs a certificate file" in answers[-1]
