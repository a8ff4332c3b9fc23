"""The data path's own socket calls, on real loopback TCP connections: what they move, how
they wait, that they stay cancellable, and the hang-up look of the alarms."""

from __future__ import annotations

import os
import resource
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from kproxy.runtime import socket_io


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, socket.socket]]:
    """A trio stream (the proxy's side) and its peer, a plain blocking socket."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname())
    ours, _ = await listener.accept()
    listener.close()
    stream = trio.SocketStream(ours)
    try:
        yield stream, peer
    finally:
        peer.close()
        await stream.aclose()


async def _read_while(
    peer: socket.socket, size: int, send: Callable[..., Awaitable[None]], *args: object
) -> bytes:
    """What ``peer`` reads (in a thread, blocking) while ``send(*args)`` runs, up to ``size``."""
    received = bytearray()

    def read() -> None:
        while len(received) < size:
            received.extend(peer.recv(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, *args)
        await trio.to_thread.run_sync(read)
    return bytes(received)


def test_stdlib_socket_is_the_one_trio_wraps() -> None:
    raw = socket.socket()
    try:
        assert socket_io.stdlib_socket(trio.socket.from_stdlib_socket(raw)) is raw
    finally:
        raw.close()


async def test_receive_waits_for_data_then_sees_eof(
    tcp_pair: tuple[trio.SocketStream, socket.socket],
) -> None:
    stream, peer = tcp_pair
    sock = socket_io.stdlib_socket(stream.socket)
    with trio.move_on_after(0.2) as waited:  # nothing sent: it waits
        await socket_io.receive(sock)
    assert waited.cancelled_caught
    peer.sendall(b"hello")
    assert await socket_io.receive(sock) == b"hello"
    peer.shutdown(socket.SHUT_WR)
    assert await socket_io.receive(sock) == b""


async def test_send_all_waits_for_a_full_buffer(
    tcp_pair: tuple[trio.SocketStream, socket.socket],
) -> None:
    """More than the kernel buffers take at once: partial sends, then waits, until all is out."""
    stream, peer = tcp_pair
    sock = socket_io.stdlib_socket(stream.socket)
    data = bytes(range(256)) * 40_000  # 10 MB
    assert await _read_while(peer, len(data), socket_io.send_all, sock, data) == data


async def test_calls_are_checkpoints(tcp_pair: tuple[trio.SocketStream, socket.socket]) -> None:
    """A cancelled scope stops even a call that would not have to wait."""
    stream, peer = tcp_pair
    sock = socket_io.stdlib_socket(stream.socket)
    peer.sendall(b"ready")
    with trio.CancelScope() as scope:
        scope.cancel()
        await socket_io.receive(sock)
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await socket_io.send_all(sock, b"x")
    assert scope.cancelled_caught
    assert await socket_io.receive(sock) == b"ready"  # nothing was consumed


async def test_hung_up(tcp_pair: tuple[trio.SocketStream, socket.socket]) -> None:
    stream, peer = tcp_pair
    fd = stream.socket.fileno()
    assert not socket_io.hung_up(fd)  # connected and quiet
    peer.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is no hang-up
    assert not socket_io.hung_up(fd)
    assert await socket_io.receive(socket_io.stdlib_socket(stream.socket))
    peer.shutdown(socket.SHUT_WR)
    assert socket_io.hung_up(fd)


async def test_hung_up_on_reset(tcp_pair: tuple[trio.SocketStream, socket.socket]) -> None:
    stream, peer = tcp_pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # with linger 0: a reset
    await trio.sleep(0.05)
    assert socket_io.hung_up(stream.socket.fileno())


@pytest.mark.parametrize(
    "parts",
    [
        [b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n", b"b" * 65536, b""],
        [bytes([i]) * 3_000_000 for i in range(4)],  # more than the kernel takes at once
    ],
    ids=["head-and-body", "partial-sends"],
)
async def test_send_parts_sends_them_in_order(
    tcp_pair: tuple[trio.SocketStream, socket.socket], parts: list[bytes]
) -> None:
    stream, peer = tcp_pair
    sock = socket_io.stdlib_socket(stream.socket)
    expected = b"".join(parts)
    assert await _read_while(peer, len(expected), socket_io.send_parts, sock, parts) == expected


async def test_hung_up_past_select_limit(
    tcp_pair: tuple[trio.SocketStream, socket.socket],
) -> None:
    """A busy proxy's descriptors pass 1024, where select(2) stops: the look still works."""
    stream, peer = tcp_pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1500:
        pytest.skip("descriptor limit below 1500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1500), hard))
    high = os.dup2(stream.socket.fileno(), 1400)
    try:
        assert not socket_io.hung_up(high)
        assert not socket_io.readable_now(high)
        peer.shutdown(socket.SHUT_WR)
        assert socket_io.hung_up(high)
    finally:
        os.close(high)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
