"""tests/memory_transport.py is true to SocketTransport: the same cases, on loopback TCP and
in memory, so the MockClock tests of the data path see what a real connection would show."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio

from kproxy.runtime.socket_io import STREAM_ERRORS
from kproxy.runtime.transport import SocketTransport, Transport
from tests.memory_transport import transport_pair

Pair = tuple[Transport, Transport]
SETTLE = 0.05  # seconds for a loopback FIN or reset to arrive (a memory pipe needs none)


@pytest.fixture(params=["tcp", "memory"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "memory":
        left, right = transport_pair()
        yield left, right
        return
    listener = socket.create_server(("127.0.0.1", 0))
    connected = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    tcp_left, tcp_right = (
        SocketTransport.of_accepted(connected),
        SocketTransport.of_accepted(accepted),
    )
    try:
        yield tcp_left, tcp_right
    finally:
        await tcp_left.aclose()
        await tcp_right.aclose()


async def test_bytes_arrive_and_are_seen_pending(pair: Pair) -> None:
    left, right = pair
    assert not right.readable_now()
    assert not right.peer_gone()
    await left.send_parts([b"hel", b"lo"])
    await trio.sleep(SETTLE)
    assert right.readable_now()
    assert not right.peer_gone()  # unread bytes are no hang-up
    assert await right.receive() == b"hello"
    assert not right.readable_now()


async def test_eof_comes_after_the_bytes_sent_before_it(pair: Pair) -> None:
    left, right = pair
    await left.send(b"last")
    await left.send_eof()
    await trio.sleep(SETTLE)
    assert right.readable_now()
    assert not right.peer_gone()  # the bytes are still unread
    assert await right.receive() == b"last"
    assert right.peer_gone()
    assert right.readable_now()
    assert await right.receive() == b""
    await right.send(b"still open the other way")  # a half-close
    assert await left.receive() == b"still open the other way"
    with pytest.raises(STREAM_ERRORS):
        await left.send(b"after our eof")


async def test_a_closed_peer_is_gone_and_refuses_a_second_send(pair: Pair) -> None:
    left, right = pair
    await left.aclose()
    await trio.sleep(SETTLE)
    assert right.peer_gone()
    assert right.readable_now()
    await right.send(b"lost")  # accepted: the peer's kernel answers it with a reset
    await trio.sleep(SETTLE)
    with pytest.raises(STREAM_ERRORS):
        await right.send(b"refused")


async def test_a_wait_on_an_end_closed_meanwhile_raises_closed(pair: Pair) -> None:
    _, right = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.aclose)
        with pytest.raises(trio.ClosedResourceError):
            await right.receive()
    await right.aclose()  # twice is fine


async def test_the_peer_address_is_the_other_end(pair: Pair) -> None:
    left, right = pair
    host, port = left.peer()
    assert host.startswith(("127.", "10."))
    assert port > 0
    assert right.peer() != left.peer()
