"""The data path's two progress timeouts over real sockets: the send timeout (a client that
takes no byte of what kproxy sends it) and the target timeout on a response body (a target
that sends no byte of an unfinished body).

Both are shortened here: ``transport.SEND_TIMEOUT`` by monkeypatching (it is read when a
connection is accepted), the target timeout by ``--target-timeout``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trustme

from kproxy.runtime import transport
from kproxy.runtime.socket_io import LOOKS, SendTimeout
from kproxy.runtime.transport import SEND_TIMEOUT, SocketTransport
from tests.helpers import (
    control,
    guard,
    quick_options,
    receive_all,
    receive_until,
    start_proxy,
    start_raw_target,
    wait_until,
)
from tests.tls_helpers import issue, open_https
from tests.workers import deploy, start_workers

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
BIG = 1 << 30  # bytes: far more than the kernel buffers between target and client hold


def test_the_send_timeout_is_nginxs() -> None:
    assert SEND_TIMEOUT == 60.0


# --- the send timeout, on a connected pair of TCP sockets ------------------------------------


def tcp_pair(receive_buffer: int, send_buffer: int) -> tuple[socket.socket, socket.socket]:
    """(sender, receiver) on loopback, with the buffer sizes fixed (Linux doubles them)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        receiver = socket.socket()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        receiver.connect(listener.getsockname())
        sender, _ = listener.accept()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sender.setblocking(False)
    receiver.setblocking(False)
    return sender, receiver


async def read_slowly(receiver: socket.socket, size: int, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        try:
            if not receiver.recv(size):
                return
        except BlockingIOError:
            pass


def read_until_reset(receiver: socket.socket) -> int:
    """Bytes read before the connection was reset (an EOF fails: it should not come)."""
    received = 0
    try:
        while chunk := receiver.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        return received
    raise AssertionError("the connection ended with a FIN, not a reset")


async def receive_until_reset(stream: trio.SocketStream) -> bytes:
    """What came before the connection was reset (an EOF fails: it should not come)."""
    received = b""
    try:
        while chunk := await stream.receive_some(1 << 20):
            received += chunk
    except trio.BrokenResourceError:
        return received
    raise AssertionError("the connection ended with a FIN, not a reset")


@guard(10)
async def test_a_peer_that_takes_nothing_is_cut_after_the_send_timeout() -> None:
    sender, receiver = tcp_pair(64 << 10, 256 << 10)
    with sender, receiver:
        started = trio.current_time()
        connection = SocketTransport(sender, send_timeout=0.5)
        with pytest.raises(SendTimeout):
            await connection.send(b"x" * (4 << 20))
        assert 0.5 <= trio.current_time() - started < 1.5
        await connection.aclose()  # resets the connection: no FIN queued behind 4 MiB
        receiver.setblocking(True)
        assert read_until_reset(receiver) < 4 << 20


@guard(10)
async def test_the_send_timeout_counts_from_the_last_byte_taken_not_from_each_wait() -> None:
    """A wait that ends without the peer taking a byte (here cancelled; in life, the kernel
    growing the socket's buffer makes it writable) does not start the timeout again: the
    next send is cut one timeout after the last byte taken, not one timeout after it began."""
    sender, receiver = tcp_pair(64 << 10, 256 << 10)
    with sender, receiver:
        connection = SocketTransport(sender, send_timeout=0.6)
        started = trio.current_time()
        with trio.move_on_after(0.4):
            await connection.send(b"x" * (4 << 20))
        with pytest.raises(SendTimeout):
            await connection.send(b"y" * (4 << 20))
        assert 0.6 <= trio.current_time() - started < 0.6 * (1 + 1 / LOOKS) + 0.2
        await connection.aclose()


@guard(20)
async def test_a_slow_steady_reader_is_not_cut() -> None:
    """The reader takes 8 KiB per 25 ms. Its kernel opens the window about every 0.4 s, so
    the send queue moves within each 0.6 s, but the socket turns writable only after a third
    of its large buffer drained (about 0.8 s): one wait outlasts the timeout, and progress,
    not writability, keeps the connection."""
    sender, receiver = tcp_pair(64 << 10, 256 << 10)
    with sender, receiver:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly, receiver, 8192, 0.025)
            started = trio.current_time()
            await SocketTransport(sender, send_timeout=0.6).send(b"x" * (1 << 20))
            assert trio.current_time() - started > 1.2  # it did wait, over two timeouts
            nursery.cancel_scope.cancel()


# --- the send timeout through the proxy -------------------------------------------------------


def endless_body(ended: trio.Event) -> Callable[[trio.SocketStream, bytes], Awaitable[None]]:
    """A target answering with a BIG body, as fast as it is taken; ``ended`` is set once its
    connection is gone."""

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        try:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            chunk = b"x" * 65536
            for _ in range(BIG // len(chunk)):
                await stream.send_all(chunk)
        finally:
            ended.set()

    return answer


@guard(20)
async def test_a_client_that_reads_nothing_is_cut_and_its_target_connection_dropped(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "SEND_TIMEOUT", 1.0)
    ended = trio.Event()
    answer = endless_body(ended)
    target = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", quick_options(target.address))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    await trio.socket.from_stdlib_socket(client).connect(("127.0.0.1", proxy.http_port))
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
    async with stream:
        await stream.send_all(GET)
        started = trio.current_time()
        await ended.wait()  # the target's connection was closed under it
        assert 1.0 <= trio.current_time() - started < 4.0, logs.lines
        await wait_until(lambda: bool(logs.records("Request")))
        received = await receive_until_reset(stream)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(received) < BIG  # visibly short of its Content-Length
    [line] = logs.records("Request")
    assert line["status"] == 499  # as for any client that leaves mid-response
    assert not logs.records("Proxy error")


@guard(20)
async def test_a_tls_client_that_reads_nothing_is_cut(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send timeout sits under the TLS layer: the same cut for HTTPS."""
    monkeypatch.setattr(transport, "SEND_TIMEOUT", 1.0)
    ended = trio.Event()
    answer = endless_body(ended)
    ca = trustme.CA()
    target = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path)
    files = issue(ca, tmp_path / "certs", "a.test")
    line = f"deploy web --target {target.address} --host a.test {files.flags()}"
    assert (await control(tmp_path / "kproxy.sock", line))[-1] == "OK deployed web"
    client = await open_https(proxy.https_port or 0, "a.test", ca)
    try:
        await client.stream.send_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        started = trio.current_time()
        await ended.wait()
        assert 1.0 <= trio.current_time() - started < 4.0
    finally:
        await client.aclose()
    await wait_until(lambda: bool(logs.records("Request")))
    assert logs.records("Request")[0]["status"] == 499


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@guard(20)
async def test_a_tunnel_client_that_takes_nothing_is_cut(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WebSocket whose client stops reading while its target keeps sending: as dead as a
    response's reader, so the same send timeout ends the tunnel, both sides."""
    monkeypatch.setattr(transport, "SEND_TIMEOUT", 1.0)
    ended = trio.Event()

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        try:
            while True:
                await stream.send_all(b"m" * 65536)
        finally:
            ended.set()

    target = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", quick_options(target.address, target_target_timeout=0.5))
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
        await stream.send_all(UPGRADE)
        started = trio.current_time()
        await ended.wait()
        assert 1.0 <= trio.current_time() - started < 4.0  # not the 0.5 s target timeout
        received = await receive_until_reset(stream)
    assert received.startswith(b"HTTP/1.1 101 ")
    await wait_until(lambda: bool(logs.records("Request")))
    assert logs.records("Request")[0]["status"] == 101


# --- the target timeout on a response body ----------------------------------------------------


def stalling_target(head: bytes, first: bytes):  # type: ignore[no-untyped-def]
    """An answer that sends ``head`` and ``first`` of its body, then nothing, ever."""

    async def answer(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(head + first)
        await trio.sleep_forever()

    return answer


@pytest.mark.parametrize(
    ("framing", "first"),
    [
        (b"Content-Length: 100", b"0123456789"),
        (b"Transfer-Encoding: chunked", b"a\r\n0123456789\r\n"),
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"POST"])  # a POST's body has its pump
@guard(20)
async def test_a_stalled_body_is_cut_after_the_target_timeout(
    nursery: trio.Nursery, tmp_path: Path, framing: bytes, first: bytes, method: bytes
) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n"
    target = await start_raw_target(nursery, stalling_target(head, first))
    proxy, logs = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", quick_options(target.address, target_target_timeout=0.5))
    request = method + b" /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi"
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
        await stream.send_all(request)
        started = trio.current_time()
        received = await receive_all(stream)
        elapsed = trio.current_time() - started
    assert 0.5 <= elapsed < 2.0
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"0123456789" if b"Length" in framing else b"0123456789\r\n")
    assert b"\r\n0\r\n" not in received  # no last chunk: the body is visibly cut
    [error] = logs.records("Proxy error")
    assert "sent no byte of the response body" in error["error"]
    assert error["status"] == 200
    await wait_until(lambda: bool(logs.records("Request")))
    assert logs.records("Request")[0]["status"] == 200  # the status sent


@guard(30)
async def test_a_slow_client_is_not_counted_against_the_target(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The target sends 4 MiB at once; the client takes it at about 1 MiB/s through a small
    buffer, so the relay waits on the client for seconds, never on the target: no cut."""
    size = 4 << 20

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        await stream.send_all(b"x" * size)

    target = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", quick_options(target.address, target_target_timeout=0.5))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    await trio.socket.from_stdlib_socket(client).connect(("127.0.0.1", proxy.http_port))
    async with trio.SocketStream(trio.socket.from_stdlib_socket(client)) as stream:
        await stream.send_all(GET)
        started = trio.current_time()
        received = b""
        while len(received) < size and (chunk := await stream.receive_some(32 << 10)):
            received += chunk
            await trio.sleep(0.03)
        assert trio.current_time() - started > 2.0  # many target timeouts
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) >= size - len(head) - 4
    assert not logs.records("Proxy error")


@guard(20)
async def test_a_stalled_buffered_body_is_answered_504(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    target = await start_raw_target(nursery, stalling_target(head, b"0123456789"))
    proxy, logs = await start_proxy(nursery, tmp_path, state=False)
    options = quick_options(target.address, target_target_timeout=0.5, target_buffer_responses=True)
    await proxy.deploy("web", options)
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
        await stream.send_all(GET)
        received = await receive_until(stream, b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 504 "), received
    [error] = logs.records("Proxy error")
    assert "sent no byte of the response body" in error["error"]


@guard(20)
async def test_an_event_stream_may_be_silent(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def answer(stream: trio.SocketStream, request: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 18\r\n\r\n"
        await stream.send_all(head + b"data: one\n\n")
        await trio.sleep(1.5)  # three target timeouts
        await stream.send_all(b"data: 2\n\n"[:7])

    target = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", quick_options(target.address, target_target_timeout=0.5))
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
        await stream.send_all(GET)
        received = await receive_until(stream, b"data: 2")
    assert received.endswith(b"\r\n\r\ndata: one\n\ndata: 2")
    assert not logs.records("Proxy error")


@guard(40)
async def test_a_stalled_body_is_cut_with_workers(nursery: trio.Nursery, tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    target = await start_raw_target(nursery, stalling_target(head, b"0123456789"))
    proxy = await start_workers(nursery, tmp_path)
    await deploy(proxy, f"--target {target.address} --target-timeout 1s")
    for _ in range(4):  # the kernel spreads connections over both workers
        async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
            await stream.send_all(GET)
            started = trio.current_time()
            received = await receive_all(stream)
            assert 1.0 <= trio.current_time() - started < 3.0
        assert received.endswith(b"\r\n\r\n0123456789")
    await wait_until(lambda: len(proxy.records("Proxy error")) == 4)
    assert {r["status"] for r in proxy.records("Proxy error")} == {200}
