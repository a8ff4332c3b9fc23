"""The data path's limits over real sockets, and targets that misbehave.

Each limit is a constant (or ``run --max-connections``); tests shorten them through the
``HttpServer`` attributes (``proxy._http``) instead of waiting out production values.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import h11
import pytest
import trio

from kproxy import DeploymentOptions, Proxy, RunOptions, TargetOptions
from kproxy.core.command_parser import parse_command
from kproxy.core.commands import Run
from kproxy.errors import UsageError
from kproxy.runtime import read_pacing, request_body
from kproxy.runtime.acceptor import default_max_connections
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.http_server import (
    HEADER_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    HttpServer,
)
from kproxy.runtime.log import Logger
from tests.helpers import (
    LogCapture,
    Received,
    guard,
    open_client,
    raw_exchange,
    read_reply,
    receive_until,
    request,
    reset_on_close,
    start_proxy,
    start_raw_server,
    start_upstream,
)

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n"


def server_of(proxy: Proxy) -> HttpServer:
    assert proxy._http is not None
    return proxy._http


async def proxy_for(
    nursery: trio.Nursery, tmp_path: Path, address: str
) -> tuple[Proxy, HttpServer]:
    proxy, _ = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", DeploymentOptions(targets=(address,), target=TargetOptions()))
    return proxy, server_of(proxy)


async def big_head_target(received: list[Received], stream: trio.SocketStream) -> None:
    """An h11 target that takes heads as large as the proxy's limit (h11's own is 16 KiB)."""
    conn = H11Stream(stream, h11.Connection(h11.SERVER, max_incomplete_event_size=2 << 20))
    while isinstance(event := await conn.next_event(), h11.Request):
        while not isinstance(await conn.next_event(), h11.EndOfMessage):
            pass
        received.append(Received(event.method, event.target, list(event.headers), b""))
        await conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")]))
        await conn.send(h11.Data(data=b"ok"))
        await conn.send(h11.EndOfMessage())
        conn.conn.start_next_cycle()


def test_defaults() -> None:
    assert MAX_HEADER_BYTES == 1 << 20  # Go's DefaultMaxHeaderBytes, as kamal-proxy runs
    assert MAX_HEADERS == 500
    assert HEADER_TIMEOUT == 30.0
    assert KEEPALIVE_TIMEOUT == 60.0
    assert 1 <= default_max_connections() <= 10_000


# --- request line + headers size ------------------------------------------------------------


@guard(20)
async def test_64k_of_cookies_pass_and_a_head_over_the_limit_gets_431(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    received: list[Received] = []
    server = await start_raw_server(nursery, lambda s: big_head_target(received, s))
    proxy, _ = await proxy_for(nursery, tmp_path, server.address)

    cookies = [(b"cookie", b"; ".join(b"c%d=%s" % (i, b"v" * 2000) for i in range(32)))]
    cookies += [(b"cookie", b"extra=%s" % (b"w" * 4000))]
    reply = await request(proxy.http_port, "/cookies", headers=cookies)
    assert reply.status == 200
    sent = b"; ".join(v for _, v in cookies)
    assert len(sent) > 64 * 1024
    at_target = [v for k, v in received[-1].headers if k == b"cookie"]
    assert b"; ".join(at_target) == sent  # intact (joined as Go joins Cookie lines, or not)

    too_big = GET + b"X-Big: " + b"b" * MAX_HEADER_BYTES + b"\r\n\r\n"
    data = await raw_exchange(proxy.http_port, too_big)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in data.lower()
    assert all(r.target != b"/x" for r in received)


@pytest.mark.parametrize("complete", [True, False], ids=["whole-head", "head-never-ends"])
@guard(20)
async def test_head_size_limit_is_exact(
    nursery: trio.Nursery, tmp_path: Path, complete: bool
) -> None:
    up = await start_upstream(nursery)
    proxy, http = await proxy_for(nursery, tmp_path, up.address)
    http.max_header_bytes = limit = 8192

    def head_of(size: int) -> bytes:
        filler = size - len(GET) - len(b"X-Fill: \r\n\r\n")
        return GET + b"X-Fill: " + b"f" * filler + b"\r\n\r\n"

    assert len(head_of(limit)) == limit
    data = await raw_exchange(proxy.http_port, head_of(limit)[:-2] + b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431 ")  # the Connection line made it one too long
    reply = await request(proxy.http_port, "/x", headers=[(b"x-fill", b"f" * (limit - 100))])
    assert reply.status == 200
    over = head_of(limit + 1) if complete else GET + b"X-Fill: " + b"f" * (limit + 1)
    data = await raw_exchange(proxy.http_port, over)  # the proxy closes; no client EOF needed
    assert data.startswith(b"HTTP/1.1 431 ")
    assert [r.target for r in up.received if r.target != b"/up"] == [b"/x"]


# --- number of header fields ----------------------------------------------------------------


@guard(20)
async def test_header_count_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, _ = await proxy_for(nursery, tmp_path, up.address)
    fields = [(b"x-%d" % i, b"v") for i in range(MAX_HEADERS - 1)]  # plus Host
    assert (await request(proxy.http_port, "/many", headers=fields)).status == 200
    too_many = GET + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n"
    data = await raw_exchange(proxy.http_port, too_many)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert [r.target for r in up.received if r.target != b"/up"] == [b"/many"]


# --- header read timeout and idle keep-alive timeout -----------------------------------------


async def trickle(stream: trio.SocketStream, data: bytes, interval: float) -> None:
    try:
        for i in range(len(data)):
            await stream.send_all(data[i : i + 1])
            await trio.sleep(interval)
    except trio.BrokenResourceError:
        pass


async def seconds_until_closed(stream: trio.SocketStream) -> float:
    started = trio.current_time()
    with trio.fail_after(5):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    return trio.current_time() - started


@pytest.mark.parametrize("first", [True, False], ids=["first-request", "after-keep-alive"])
@guard(20)
async def test_a_trickled_head_is_cut_off(
    nursery: trio.Nursery, tmp_path: Path, first: bool
) -> None:
    """Each byte comes quickly (every 20 ms), but the whole head must come within the header
    timeout: a deadline for the head, not for each read."""
    up = await start_upstream(nursery)
    proxy, http = await proxy_for(nursery, tmp_path, up.address)
    http.header_timeout, http.keepalive_timeout = 0.5, 3.0
    endless = GET + b"X-Slow: " + b"s" * 10_000 + b"\r\n\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
    async with stream:
        if not first:
            await stream.send_all(b"GET /first HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert (await receive_until(stream, b"upstream")).startswith(b"HTTP/1.1 200 ")
            await trio.sleep(1.0)  # idle, but within the keep-alive timeout: no head clock yet
        async with trio.open_nursery() as sending:
            sending.start_soon(trickle, stream, endless, 0.02)
            elapsed = await seconds_until_closed(stream)
            sending.cancel_scope.cancel()
    assert 0.4 < elapsed < 1.5
    assert [r.target for r in up.received if r.target != b"/up"] == ([] if first else [b"/first"])


@guard(20)
async def test_a_paced_trickle_is_still_served_whole_and_cut_off_by_its_timeout(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head trickled with pauses between its pieces is read paced (read_pacing): the pieces
    that came meanwhile are read together and the request is served intact, and a head that
    never ends is cut off by the header timeout as it is unpaced."""
    monkeypatch.setattr(read_pacing, "TRICKLE_GAP", 0.05)
    monkeypatch.setattr(read_pacing, "PAUSE", 0.2)
    up = await start_upstream(nursery)
    proxy, http = await proxy_for(nursery, tmp_path, up.address)
    http.header_timeout = 1.0
    whole = b"GET /paced HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
        for start in range(0, len(whole), 6):  # 11 pieces, 70 ms apart: paced from the 3rd
            await stream.send_all(whole[start : start + 6])
            await trio.sleep(0.07)
        assert (await receive_until(stream, b"upstream")).startswith(b"HTTP/1.1 200 ")
    assert [r.target for r in up.received if r.target != b"/up"] == [b"/paced"]
    endless = GET + b"X-Slow: " + b"s" * 10_000 + b"\r\n\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
    async with stream, trio.open_nursery() as sending:
        sending.start_soon(trickle, stream, endless, 0.07)
        elapsed = await seconds_until_closed(stream)
        sending.cancel_scope.cancel()
    assert 0.9 < elapsed < 1.6
    assert [r.target for r in up.received if r.target != b"/up"] == [b"/paced"]


@guard(20)
async def test_a_trickled_buffered_body_is_cut_off_and_a_slow_one_is_not(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--buffer-requests: a body may take BODY_TIMEOUT plus a second per MIN_BODY_RATE bytes.
    Here 1 s and 100 B/s: 20 B/s is cut off (408, at about 1.25 s), while 500 B/s for 2 s,
    longer than the base timeout, goes through."""
    monkeypatch.setattr(request_body, "BODY_TIMEOUT", 1.0)
    monkeypatch.setattr(request_body, "MIN_BODY_RATE", 100)
    up = await start_upstream(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path, state=False)
    target = TargetOptions(buffer_requests=True)
    await proxy.deploy("web", DeploymentOptions(targets=(up.address,), target=target))
    head = b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000\r\n\r\n"

    async def send_body(interval: float) -> tuple[bytes, float]:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
        async with stream, trio.open_nursery() as sending:
            await stream.send_all(head)
            started = trio.current_time()
            sending.start_soon(trickle, stream, b"b" * 1000, interval)
            answer = await receive_until(stream, b"\r\n\r\n")
            sending.cancel_scope.cancel()
        return answer, trio.current_time() - started

    answer, elapsed = await send_body(0.05)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 1.1 < elapsed < 2.0
    assert [r.target for r in up.received if r.target != b"/up"] == []
    answer, elapsed = await send_body(0.002)  # 500 B/s
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert elapsed > 1.5
    assert [r.body for r in up.received if r.target == b"/x"] == [b"b" * 1000]


@guard(20)
async def test_idle_connections_are_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, http = await proxy_for(nursery, tmp_path, up.address)
    http.header_timeout, http.keepalive_timeout = 0.4, 0.8
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as silent:
        assert 0.3 < await seconds_until_closed(silent) < 1.0  # never sent a byte: head clock
    async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as kept:
        await kept.send_all(GET + b"\r\n")
        assert (await receive_until(kept, b"upstream")).startswith(b"HTTP/1.1 200 ")
        assert 0.7 < await seconds_until_closed(kept) < 1.5  # idle after a request: keep-alive


# --- simultaneous client connections ----------------------------------------------------------


@guard(20)
async def test_connections_beyond_the_bound_wait(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    options = RunOptions("", "", bind="127.0.0.1", http_port=0, max_connections=2)
    proxy: Proxy = await nursery.start(Proxy(options, Logger(out=LogCapture())).serve)  # type: ignore[arg-type]
    await proxy.deploy("web", DeploymentOptions(targets=(up.address,), target=TargetOptions()))
    http = server_of(proxy)
    assert http.connection_slots.total_tokens == 2

    holders = [await trio.open_tcp_stream("127.0.0.1", proxy.http_port) for _ in range(2)]
    await trio.sleep(0.1)
    assert http.connection_slots.borrowed_tokens == 2
    waiting = await open_client(proxy.http_port)  # connects: the kernel's backlog holds it
    await waiting.send(h11.Request(method="GET", target="/late", headers=[(b"host", b"a")]))
    await waiting.send(h11.EndOfMessage())
    with trio.move_on_after(0.5) as still_waiting:
        await read_reply(waiting)
    assert still_waiting.cancelled_caught
    assert all(r.target != b"/late" for r in up.received)

    await holders[0].aclose()  # a slot frees up: the waiting connection is accepted and served
    with trio.fail_after(2):
        reply = await read_reply(waiting)
    assert reply.status == 200
    await waiting.stream.aclose()
    await holders[1].aclose()
    # Every slot comes back but the one the accept loop holds for the next connection.
    with trio.fail_after(2):
        while http.connection_slots.borrowed_tokens > 1:  # noqa: ASYNC110  # no event to wait on
            await trio.sleep(0.01)


@guard(30)
async def test_a_burst_of_connections_is_served(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Many clients connect at once (the accept loop takes all that wait at each wake-up) while
    others keep it busy: every one is accepted, answered, and gives its slot back."""
    up = await start_upstream(nursery)
    proxy, http = await proxy_for(nursery, tmp_path, up.address)
    answered: list[int] = []

    async def client(index: int) -> None:
        reply = await request(proxy.http_port, f"/burst/{index}")
        answered.append(reply.status)

    async with trio.open_nursery() as clients:
        for index in range(150):
            clients.start_soon(client, index)
    assert answered == [200] * 150
    assert sorted(r.target for r in up.received if r.target.startswith(b"/burst/")) == sorted(
        b"/burst/%d" % i for i in range(150)
    )
    with trio.fail_after(5):
        while http.connection_slots.borrowed_tokens:  # noqa: ASYNC110  # no event to wait on
            await trio.sleep(0.01)


def run_options(*words: str, env: dict[str, str]) -> RunOptions:
    command = parse_command(("run", *words), env=env)
    assert isinstance(command, Run)
    return command.options


def test_max_connections_run_flag() -> None:
    assert run_options("--max-connections=250", env={}).max_connections == 250
    assert run_options(env={"KPROXY_MAX_CONNECTIONS": "7"}).max_connections == 7
    assert run_options(env={}).max_connections == 0  # automatic
    with pytest.raises(UsageError, match="max-connections"):
        run_options("--max-connections=-1", env={})


# --- a misbehaving target costs one request -----------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    "mode",
    ["garbage-head", "reset-before-head", "bad-chunk", "reset-mid-body", "close-mid-body"],
)
@guard(20)
async def test_a_misbehaving_target_costs_only_that_request(
    nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    """Before the response head: 502. After it: the client connection is cut. Either way the
    target connection is dropped (never pooled, even if the target keeps it open), a request in
    flight on another connection completes, and the next request is served."""
    ids = itertools.count()
    bad_connections: dict[int, bool] = {}  # connection → the proxy closed it

    async def serve(stream: trio.SocketStream) -> None:
        me = next(ids)
        while head := await receive_until(stream, b"\r\n\r\n"):
            path = head.split(b" ", 2)[1]
            if path == b"/slow":
                await trio.sleep(0.5)
            if path != b"/bad":
                await stream.send_all(OK)
                continue
            bad_connections[me] = False
            if mode.startswith("reset"):
                if mode == "reset-mid-body":
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart")
                    await trio.sleep(0.05)
                reset_on_close(stream)
                bad_connections[me] = True
                return
            if mode == "close-mid-body":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart")
                bad_connections[me] = True
                return
            if mode == "garbage-head":
                await stream.send_all(b"HTTP/1.1 2OO OK\r\n\r\n")
            else:
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\npart\r\nzz\r\n"
                )
            # Keep the socket open: only the proxy can end it.
            with trio.move_on_after(5):
                bad_connections[me] = await stream.receive_some(65536) == b""
            return

    server = await start_raw_server(nursery, serve)
    proxy, _ = await proxy_for(nursery, tmp_path, server.address)
    assert (await request(proxy.http_port, "/warm")).status == 200  # a pooled connection now

    slow_status: list[int] = []

    async def slow_request() -> None:
        slow_status.append((await request(proxy.http_port, "/slow")).status)

    async with trio.open_nursery() as clients:
        clients.start_soon(slow_request)
        await trio.sleep(0.1)
        if mode in ("garbage-head", "reset-before-head"):
            reply = await request(proxy.http_port, "/bad")
            assert reply.status == 502
        else:
            client = await open_client(proxy.http_port)
            async with client.stream:
                await client.send(
                    h11.Request(method="GET", target="/bad", headers=[(b"host", b"a")])
                )
                await client.send(h11.EndOfMessage())
                with pytest.raises(h11.RemoteProtocolError):
                    await read_reply(client)
    assert slow_status == [200]
    with trio.fail_after(3):
        while not all(bad_connections.values()):  # noqa: ASYNC110  # no event to wait on
            await trio.sleep(0.01)
    assert bad_connections
    for _ in range(3):
        assert (await request(proxy.http_port, "/after")).status == 200
