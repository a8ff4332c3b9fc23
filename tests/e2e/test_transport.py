"""The transport seam and the socket calls under it, on real loopback TCP connections: what
they move, how they wait, that they stay cancellable, and the hang-up look of the alarms."""

from __future__ import annotations

import os
import resource
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from kproxy.runtime import socket_io
from kproxy.runtime.transport import SocketTransport

Pair = tuple[SocketTransport, socket.socket]


@pytest.fixture
async def tcp_pair() -> AsyncIterator[Pair]:
    """An accepted connection as the proxy serves it, and its peer, a plain blocking socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    transport = SocketTransport.of_accepted(ours)
    try:
        yield transport, peer
    finally:
        peer.close()
        await transport.aclose()


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


async def test_an_accepted_connection_sends_without_delay(tcp_pair: Pair) -> None:
    transport, _ = tcp_pair
    assert not transport.sock.getblocking()
    assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert transport.peer()[0] == "127.0.0.1"


async def test_a_connected_trio_stream_is_taken_over() -> None:
    """An upstream connection: trio resolves and connects, the transport keeps the socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    peer, _ = listener.accept()
    listener.close()
    transport = SocketTransport.of_stream(stream)
    try:
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await transport.send(b"ping")
        assert peer.recv(10) == b"ping"
        peer.sendall(b"pong")
        assert await transport.receive() == b"pong"
    finally:
        peer.close()
        await transport.aclose()
        await transport.aclose()  # twice is fine
    assert transport.sock.fileno() == -1


async def test_receive_waits_for_data_then_sees_eof(tcp_pair: Pair) -> None:
    transport, peer = tcp_pair
    with trio.move_on_after(0.2) as waited:  # nothing sent: it waits
        await transport.receive()
    assert waited.cancelled_caught
    peer.sendall(b"hello")
    assert await transport.receive() == b"hello"
    peer.shutdown(socket.SHUT_WR)
    assert await transport.receive() == b""


async def test_send_eof_half_closes(tcp_pair: Pair) -> None:
    transport, peer = tcp_pair
    await transport.send_eof()
    assert peer.recv(10) == b""  # the peer reads EOF
    peer.sendall(b"still here")  # and may still send
    assert await transport.receive() == b"still here"


async def test_send_waits_for_a_full_buffer(tcp_pair: Pair) -> None:
    """More than the kernel buffers take at once: partial sends, then waits, until all is out."""
    transport, peer = tcp_pair
    data = bytes(range(256)) * 40_000  # 10 MB
    assert await _read_while(peer, len(data), transport.send, data) == data


async def test_calls_are_checkpoints(tcp_pair: Pair) -> None:
    """A cancelled scope stops even a call that would not have to wait."""
    transport, peer = tcp_pair
    peer.sendall(b"ready")
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.receive()
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.send(b"x")
    assert scope.cancelled_caught
    assert await transport.receive() == b"ready"  # nothing was consumed


async def test_peer_gone(tcp_pair: Pair) -> None:
    transport, peer = tcp_pair
    assert not transport.peer_gone()  # connected and quiet
    peer.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is no hang-up
    assert not transport.peer_gone()
    assert await transport.receive()
    peer.shutdown(socket.SHUT_WR)
    assert transport.peer_gone()


async def test_peer_gone_on_reset(tcp_pair: Pair) -> None:
    transport, peer = tcp_pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # with linger 0: a reset
    await trio.sleep(0.05)
    assert transport.peer_gone()


@pytest.mark.parametrize(
    "parts",
    [
        [b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n", b"b" * 65536, b""],
        [bytes([i]) * 3_000_000 for i in range(4)],  # more than the kernel takes at once
    ],
    ids=["head-and-body", "partial-sends"],
)
async def test_send_parts_sends_them_in_order(tcp_pair: Pair, parts: list[bytes]) -> None:
    transport, peer = tcp_pair
    expected = b"".join(parts)
    assert await _read_while(peer, len(expected), transport.send_parts, parts) == expected


async def test_hung_up_past_select_limit(tcp_pair: Pair) -> None:
    """A busy proxy's descriptors pass 1024, where select(2) stops: the look still works."""
    transport, peer = tcp_pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1500:
        pytest.skip("descriptor limit below 1500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1500), hard))
    high = os.dup2(transport.sock.fileno(), 1400)
    try:
        assert not socket_io.hung_up(high)
        assert not socket_io.readable_now(high)
        peer.shutdown(socket.SHUT_WR)
        assert socket_io.hung_up(high)
    finally:
        os.close(high)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
