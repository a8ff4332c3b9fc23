"""A handshake's wait for its certificate (an ACME order) has its own bound beside the
handshake deadline: time spent choosing is not the client's, and is not counted against it."""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest
import trio
import trustme

from kproxy.runtime import tls_transport
from kproxy.runtime.log import Logger
from kproxy.runtime.tls_transport import TlsTransport, open_tls
from kproxy.runtime.transport import SocketTransport
from tests.helpers import LogCapture

GUARD = 10  # seconds


async def _handshake_with_a_slow_certificate(
    delay: float,
) -> tuple[TlsTransport | None, LogCapture, float]:
    """open_tls over a socket pair whose certificate takes ``delay`` seconds to choose; the
    client completes its side if it can. Returns the server's transport, the log, the time."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("a.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server_sock, client_sock = socket.socketpair()
    raw = SocketTransport.of_accepted(server_sock)
    client = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(client_sock)),
        client_context,
        server_hostname="a.test",
    )
    logs = LogCapture()
    result: list[TlsTransport | None] = []
    served = trio.Event()

    async def choose(name: str | None) -> ssl.SSLContext | None:
        assert name == "a.test"
        await trio.sleep(delay)
        return server_context

    async def serve() -> None:
        logger = Logger(out=logs, debug_enabled=True)  # type: ignore[arg-type]  # a text sink
        result.append(await open_tls(raw, choose, logger))
        served.set()

    async def connect() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await client.do_handshake()

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(connect)
        with trio.fail_after(GUARD):
            await served.wait()
        elapsed = trio.current_time() - began
        raw.close_nowait()
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(client)
    return result[0], logs, elapsed


async def test_an_order_longer_than_the_handshake_deadline_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls_transport, "HANDSHAKE_TIMEOUT", 0.3)
    monkeypatch.setattr(tls_transport, "CERTIFICATE_TIMEOUT", 3.0)
    tls, _, elapsed = await _handshake_with_a_slow_certificate(0.8)
    assert tls is not None  # 0.8 s choosing, yet the 0.3 s handshake deadline held
    assert elapsed >= 0.8


async def test_the_certificate_wait_has_its_own_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_transport, "HANDSHAKE_TIMEOUT", 0.3)
    monkeypatch.setattr(tls_transport, "CERTIFICATE_TIMEOUT", 0.5)
    tls, logs, elapsed = await _handshake_with_a_slow_certificate(30)
    assert tls is None
    assert 0.5 <= elapsed < 3
    assert "no certificate within 0.5s" in logs.records("TLS handshake failed")[0]["error"]
