"""runtime/health.py against real servers on 127.0.0.1: the one-off check and the router's
kept-alive checks (one connection per target, replaced within a check when the target let it
go, closed with the target's checks), and whose time a check's timeout counts."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import trio

from kproxy.core.addresses import parse_target
from kproxy.core.options import TargetOptions
from kproxy.runtime.health import CheckResult, KeptChecks, check_once
from kproxy.runtime.target import Target
from tests.helpers import (
    UP_ANSWER,
    receive_until,
    start_raw_server,
    start_upstream,
    unused_port,
)


def target(address: str, health_check_timeout: float = 5.0) -> Target:
    options = TargetOptions(health_check_timeout=health_check_timeout)
    return Target(parse_target(address), options)


async def test_kept_checks_share_one_connection_per_target(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    checks = KeptChecks()
    one = target(upstream.address)
    results = [await checks(one) for _ in range(3)]
    assert [(r.healthy, r.reason) for r in results] == [(True, "200 from /up")] * 3
    assert upstream.connections == 1
    assert [r.target for r in upstream.received] == [b"/up"] * 3
    assert all(dict(r.headers).get(b"connection") is None for r in upstream.received)
    upstream.healthy = False
    result = await checks(one)
    assert (result.healthy, result.reason) == (False, "503 from /up")
    assert upstream.connections == 1
    checks.release(one)


async def test_a_connection_the_target_let_go_is_replaced_within_the_check(
    nursery: trio.Nursery,
) -> None:
    async def one_answer_each(stream: trio.SocketStream) -> None:
        await receive_until(stream, b"\r\n\r\n")
        await stream.send_all(UP_ANSWER)  # then the connection closes

    server = await start_raw_server(nursery, one_answer_each)
    checks = KeptChecks()
    one = target(server.address)
    for _ in range(3):
        result = await checks(one)
        assert (result.healthy, result.reason) == (True, "200 from /up")
        await trio.sleep(0.05)  # the close reaches the kept connection
    assert server.connections == 3
    checks.release(one)


async def test_what_a_target_says_unasked_on_a_kept_connection_is_no_answer(
    nursery: trio.Nursery,
) -> None:
    async def times_out_when_idle(stream: trio.SocketStream) -> None:
        await receive_until(stream, b"\r\n\r\n")
        await stream.send_all(UP_ANSWER)
        await trio.sleep(0.05)  # idle for too long, by this target's standards
        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await trio.sleep_forever()  # and it even keeps the connection open

    server = await start_raw_server(nursery, times_out_when_idle)
    checks = KeptChecks()
    one = target(server.address)
    assert (await checks(one)).healthy
    await trio.sleep(0.2)
    result = await checks(one)
    assert (result.healthy, result.reason) == (True, "200 from /up")  # on a new connection
    assert server.connections == 2
    checks.release(one)


async def test_release_closes_the_kept_connection(nursery: trio.Nursery) -> None:
    ended = trio.Event()

    async def answer_until_closed(stream: trio.SocketStream) -> None:
        while await receive_until(stream, b"\r\n\r\n"):
            await stream.send_all(UP_ANSWER)
        ended.set()

    server = await start_raw_server(nursery, answer_until_closed)
    checks = KeptChecks()
    one = target(server.address)
    assert (await checks(one)).healthy
    checks.release(one)
    with trio.fail_after(5):
        await ended.wait()
    checks.release(one)  # nothing left: nothing to do


async def test_the_status_counts_when_the_body_never_ends(nursery: trio.Nursery) -> None:
    async def endless_body(stream: trio.SocketStream) -> None:
        await receive_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nup")
        await trio.sleep_forever()

    server = await start_raw_server(nursery, endless_body)
    checks = KeptChecks()
    one = target(server.address, health_check_timeout=0.3)
    result = await checks(one)
    assert (result.healthy, result.reason) == (True, "200 from /up")
    assert (await checks(one)).healthy  # the cut-off connection was not kept: a new one
    assert server.connections == 2
    checks.release(one)


async def test_redirects_and_refusals_are_unhealthy(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery, health_status=301)
    checks, one = KeptChecks(), target(upstream.address)
    kept = await checks(one)
    assert (kept.healthy, kept.reason) == (False, "301 redirect from /up (not followed)")
    checks.release(one)
    refused = await checks(target(f"127.0.0.1:{unused_port()}"))
    assert not refused.healthy
    assert refused.reason.startswith("cannot connect")


async def test_check_once_asks_the_target_to_close(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    result = await check_once(target(upstream.address))
    assert (result.healthy, result.reason) == (True, "200 from /up")
    assert dict(upstream.received[0].headers)[b"connection"] == b"close"

    async def silent_server(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    silent = await start_raw_server(nursery, silent_server)
    late = await check_once(target(silent.address, health_check_timeout=0.2))
    assert (late.healthy, late.reason) == (False, "no response within 200ms")


async def test_an_answer_that_is_not_http_is_a_bad_response(nursery: trio.Nursery) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await receive_until(stream, b"\r\n\r\n")
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")

    server = await start_raw_server(nursery, garbage)
    result = await KeptChecks()(target(server.address))
    assert not result.healthy
    assert result.reason.startswith("bad response:")


@contextlib.contextmanager
def threaded_target(delay: float) -> Iterator[tuple[str, threading.Event]]:
    """A target served by a thread, so that it answers while this test blocks trio's loop:
    it sets the event once a check's request came, and answers ``delay`` seconds later."""
    listener = socket.create_server(("127.0.0.1", 0))
    asked = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as connection:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(4096)
            asked.set()
            time.sleep(delay)
            connection.sendall(UP_ANSWER)
            connection.recv(4096)  # until the checker closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", asked
    finally:
        listener.close()
        thread.join(5)


async def test_a_busy_event_loop_does_not_make_a_healthy_target_look_sick() -> None:
    with threaded_target(delay=0.05) as (address, asked):
        checks = KeptChecks()
        one = target(address, health_check_timeout=0.2)
        results: list[CheckResult] = []

        async def check() -> None:
            results.append(await checks(one))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(check)
                while not asked.is_set():  # noqa: ASYNC110  # a thread's event: polled
                    await trio.sleep(0.001)
                # The loop is busy well past the check's deadline; the target answers meanwhile
                # (in time), and its answer waits unread when the loop sees the deadline.
                time.sleep(0.5)  # noqa: ASYNC251  # blocking the loop is the point
        assert [(r.healthy, r.reason) for r in results] == [(True, "200 from /up")]
        checks.release(one)


async def test_a_target_that_answers_too_late_is_sick_and_its_connection_dropped(
    nursery: trio.Nursery,
) -> None:
    asked: list[trio.SocketStream] = []

    async def late_then_quick(stream: trio.SocketStream) -> None:
        while await receive_until(stream, b"\r\n\r\n"):
            asked.append(stream)
            if asked[0] is stream:  # the first connection's answers come too late
                await trio.sleep(0.35)
            await stream.send_all(UP_ANSWER)

    server = await start_raw_server(nursery, late_then_quick)
    checks = KeptChecks()
    one = target(server.address, health_check_timeout=0.2)
    began = trio.current_time()
    result = await checks(one)
    assert (result.healthy, result.reason) == (False, "no response within 200ms")
    assert 0.2 <= trio.current_time() - began < 0.35
    assert (await checks(one)).healthy  # on a new connection: the late one was not kept
    assert server.connections == 2
    checks.release(one)
