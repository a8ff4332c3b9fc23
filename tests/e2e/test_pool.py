"""The pool of target connections over real sockets: idle connections expire."""

from __future__ import annotations

import trio

from kproxy.core.addresses import parse_target
from kproxy.runtime.pool import IDLE_TIMEOUT, ConnectionPool
from tests.helpers import guard, start_raw_server, wait_until


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
    first = await pool.acquire()
    await pool.release(first)
    again = await pool.acquire()
    assert again is first  # within the timeout: reused
    assert again.reused
    await pool.release(again)
    second = await pool.connect()  # a younger connection above it
    await trio.sleep(0.2)
    await pool.release(second)
    await trio.sleep(0.15)  # first: idle 0.35 s; second: 0.15 s
    assert (await pool.acquire()) is second
    assert pool.idle_count == 0  # first was closed, not kept
    await wait_until(lambda: len(closed) == 1)
    await trio.sleep(0.35)
    await pool.release(second)
    await trio.sleep(0.35)
    fresh = await pool.acquire()
    assert fresh is not second
    assert not fresh.reused
    assert target.connections == 3
    await wait_until(lambda: len(closed) == 2)
    await fresh.aclose()
    await pool.aclose()
