"""The pool of target connections over real sockets: idle connections expire, and a dead
one tells whether a request sent on it reached the target (core/tcp_info.py)."""

from __future__ import annotations

import trio

from kproxy.core.addresses import parse_target
from kproxy.runtime.pool import IDLE_TIMEOUT, ConnectionPool, UpstreamConnection
from tests.helpers import RawHandler, guard, start_raw_server, wait_until


def test_idle_timeout_is_go_transports() -> None:
    assert IDLE_TIMEOUT == 90.0  # Go's DefaultTransport IdleConnTimeout


@guard(10)
async def test_a_connection_idle_past_the_timeout_is_closed_not_reused(
    nursery: trio.Nursery,
) -> None:
    closed: list[int] = []

    async def hold(stream: trio.SocketStream) -> None:
        while await stream.receive_some():
            pass
        closed.append(1)  # the pool closed its side

    target = await start_raw_server(nursery, hold)
    pool = ConnectionPool(parse_target(target.address), idle_timeout=0.3)
    first = await pool.connect()
    pool.release(first)
    again = pool.take_idle()
    assert again is first  # within the timeout: reused
    assert again.reused
    pool.release(again)
    second = await pool.connect()  # a younger connection above it
    await trio.sleep(0.2)
    pool.release(second)
    await trio.sleep(0.15)  # first: idle 0.35 s; second: 0.15 s
    assert pool.take_idle() is second
    assert pool.idle_count == 0  # first was closed, not kept
    await wait_until(lambda: len(closed) == 1)
    await trio.sleep(0.35)
    pool.release(second)
    await trio.sleep(0.35)
    assert pool.take_idle() is None  # second idled too long: closed
    fresh = await pool.connect()
    assert fresh is not second
    assert not fresh.reused
    assert target.connections == 3
    await wait_until(lambda: len(closed) == 2)
    await fresh.aclose()
    await pool.aclose()


async def _pooled_pair(nursery: trio.Nursery, serve: RawHandler) -> UpstreamConnection:
    """A connection to a raw target that ran one exchange, as the pool hands it out again."""
    target = await start_raw_server(nursery, serve)
    pool = ConnectionPool(parse_target(target.address))
    connection = await pool.connect()
    await connection.transport.send(b"first")
    assert await connection.transport.receive() == b"answer"
    pool.release(connection)
    again = pool.take_idle()
    assert again is connection
    return again


@guard(10)
async def test_bytes_sent_to_a_closed_target_socket_never_reached_it(
    nursery: trio.Nursery,
) -> None:
    """The target closed right after answering; what is sent next gets a reset, unread."""
    handed_out = trio.Event()

    async def answer_then_close(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"answer")
        # Closed once the pool has handed the connection out again: a FIN seen earlier would
        # make the pool drop it and connect anew.
        await handed_out.wait()

    connection = await _pooled_pair(nursery, answer_then_close)
    handed_out.set()
    info = connection.tcp_info()
    assert info is not None
    await wait_until(lambda: connection.transport.readable_now())  # its FIN
    await connection.transport.send(b"POST /x HTTP/1.1\r\n\r\n")
    assert await connection.never_received(info.bytes_acked)  # waits for the reset
    await connection.aclose()


@guard(10)
async def test_bytes_a_target_read_before_closing_reached_it(nursery: trio.Nursery) -> None:
    read: list[bytes] = []

    async def answer_read_then_close(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"answer")
        read.append(await stream.receive_some())

    connection = await _pooled_pair(nursery, answer_read_then_close)
    info = connection.tcp_info()
    assert info is not None
    await connection.transport.send(b"POST /x HTTP/1.1\r\n\r\n")
    await wait_until(lambda: bool(read))
    assert await connection.transport.receive() == b""  # its FIN, after reading ours
    assert not await connection.never_received(info.bytes_acked)
    assert not await connection.never_received(None)  # not asked: unknown
    await connection.aclose()
