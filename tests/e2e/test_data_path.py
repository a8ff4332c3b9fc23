"""The HTTP data path end to end: a real client, the proxy and a real target on loopback.

Targets are either ``Upstream`` (whole requests, per-path handlers) or a ``RawServer`` with an
h11 handler written here, when a test must see the body arrive piece by piece or the target
must misbehave. Every test runs under a ``fail_after`` guard, so a hang fails rather than stalls.
"""

from __future__ import annotations

import gc
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from kproxy import DeploymentOptions, Proxy, TargetOptions
from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    LogCapture,
    Received,
    Reply,
    TargetHandler,
    Upstream,
    exchange,
    h11_target,
    open_client,
    parse_responses,
    raw_exchange,
    read_body,
    read_reply,
    receive_all,
    receive_until,
    request,
    reset_on_close,
    rss_bytes,
    send_reply,
    start_proxy,
    start_raw_server,
    start_raw_target,
    start_upstream,
    unused_port,
    wait_until,
)


async def deploy(proxy: Proxy, address: str, *, force: bool = False, **target: Any) -> None:
    options = DeploymentOptions(
        targets=(address,),
        target=TargetOptions(**target),
        force=force,
    )
    await proxy.deploy("web", options)


async def proxied(
    nursery: trio.Nursery, tmp_path: Path, handle: TargetHandler, **target: Any
) -> tuple[Proxy, LogCapture]:
    """A proxy whose service "web" is a RawServer running ``handle``."""
    server = await start_raw_server(nursery, h11_target(handle))
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address, **target)
    return proxy, logs


async def open_raw(proxy: Proxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.http_port)


def request_logs(logs: LogCapture) -> list[dict[str, object]]:
    return logs.records("Request")


async def logged(logs: LogCapture, count: int = 1) -> list[dict[str, object]]:
    """The access log once it has ``count`` lines: a line is written after the response went
    out, so a client may read the response before the line exists."""
    await wait_until(lambda: len(request_logs(logs)) >= count)
    return request_logs(logs)


# --- request headers at the target ------------------------------------------------------------


async def test_request_headers_at_target(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    before = int(time.time() * 1000)
    with trio.fail_after(10):
        reply = await request(
            proxy.http_port,
            "/p?p=a;b&x=%20",
            host="App.Example.com:8080",
            headers=[
                (b"connection", b"keep-alive, X-Secret"),
                (b"x-secret", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-authorization", b"Basic eDp5"),
                (b"proxy-connection", b"keep-alive"),
                (b"te", b"trailers"),
                (b"trailer", b"x-t"),
                (b"upgrade", b"websocket"),  # no "Connection: upgrade": not an upgrade
                (b"x-custom", b"kept"),
            ],
        )
    after = int(time.time() * 1000)
    assert reply.status == 200
    got = up.received[-1]
    assert got.target == b"/p?p=a;b&x=%20"
    assert got.header(b"host") == b"App.Example.com:8080"
    names = {name for name, _ in got.headers}
    dropped = {b"connection", b"x-secret", b"keep-alive", b"proxy-authorization"}
    dropped |= {b"proxy-connection", b"te", b"trailer", b"upgrade", b"transfer-encoding"}
    assert not names & dropped
    assert got.header(b"x-custom") == b"kept"
    assert got.header(b"x-forwarded-for") == b"127.0.0.1"
    assert got.header(b"x-forwarded-proto") == b"http"
    assert got.header(b"x-forwarded-host") == b"App.Example.com:8080"
    assert got.header(b"x-kamal-target") == up.address.encode()
    request_id = got.header(b"x-request-id")
    assert request_id is not None
    assert str(uuid.UUID(request_id.decode())) == request_id.decode()
    start = got.header(b"x-request-start") or b""
    match = re.fullmatch(rb"t=(\d+)", start)
    assert match is not None, start
    assert before <= int(match[1]) <= after
    assert (await logged(logs))[-1]["request_id"] == request_id.decode()


@pytest.mark.parametrize(
    ("forward_headers", "xff", "proto", "xfh", "kamal_target"),
    [
        (True, b"10.0.0.1, 127.0.0.1", b"https", b"public.example", b"edge:80, {target}"),
        (False, b"127.0.0.1", b"http", b"example.com", b"{target}"),
    ],
)
async def test_forwarded_headers_trusted_or_replaced(
    nursery: trio.Nursery,
    tmp_path: Path,
    forward_headers: bool,
    xff: bytes,
    proto: bytes,
    xfh: bytes,
    kamal_target: bytes,
) -> None:
    up = await start_upstream(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address, forward_headers=forward_headers)
    incoming = [
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"public.example"),
        (b"x-kamal-target", b"edge:80"),  # appended to like the others (kamal-proxy)
    ]
    with trio.fail_after(10):
        assert (await request(proxy.http_port, headers=incoming)).status == 200
    got = up.received[-1]
    assert [v for k, v in got.headers if k == b"x-forwarded-for"] == [xff]
    assert [v for k, v in got.headers if k == b"x-forwarded-proto"] == [proto]
    assert [v for k, v in got.headers if k == b"x-forwarded-host"] == [xfh]
    expected_target = kamal_target.replace(b"{target}", up.address.encode())
    assert [v for k, v in got.headers if k == b"x-kamal-target"] == [expected_target]


async def test_request_id_and_start_kept(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    incoming = [(b"x-request-id", b"abc-123"), (b"x-request-start", b"t=1000")]
    with trio.fail_after(10):
        assert (await request(proxy.http_port, headers=incoming)).status == 200
    got = up.received[-1]
    assert [v for k, v in got.headers if k == b"x-request-id"] == [b"abc-123"]
    assert [v for k, v in got.headers if k == b"x-request-start"] == [b"t=1000"]
    assert (await logged(logs))[-1]["request_id"] == "abc-123"


# --- bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_request_body_streams_to_target(
    nursery: trio.Nursery, tmp_path: Path, chunked: bool
) -> None:
    first_part = trio.Event()
    parts: list[bytes] = []

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        while isinstance(event := await conn.next_event(), h11.Data):
            parts.append(bytes(event.data))
            first_part.set()
        await send_reply(conn, 200, b"got " + b"".join(parts))

    proxy, _ = await proxied(nursery, tmp_path, handle)
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: 10"
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(b"POST /up/load HTTP/1.1\r\nhost: a\r\n%s\r\n\r\n" % framing)
            await stream.send_all(b"5\r\nhello\r\n" if chunked else b"hello")
            # The rest is sent only once the target has the first part: a buffering proxy hangs.
            await first_part.wait()
            await stream.send_all(b"5\r\nworld\r\n0\r\n\r\n" if chunked else b"world")
            data = await receive_until(stream, b"got helloworld")
    [reply] = parse_responses(data, ["POST"])
    assert (reply.status, reply.body) == (200, b"got helloworld")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_response_streams_to_client(
    nursery: trio.Nursery, tmp_path: Path, chunked: bool
) -> None:
    client_has_first = trio.Event()

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        headers = [] if chunked else [(b"content-length", b"10")]
        await conn.send(h11.Response(status_code=200, headers=headers))
        await conn.send(h11.Data(data=b"first"))
        await client_has_first.wait()  # a buffering proxy never lets the client see "first"
        await conn.send(h11.Data(data=b" last"))
        await conn.send(h11.EndOfMessage())

    proxy, _ = await proxied(nursery, tmp_path, handle)
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            await client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
            await client.send(h11.EndOfMessage())
            head = await client.next_event()
            assert isinstance(head, h11.Response)
            framing = dict(head.headers)
            if chunked:
                assert framing[b"transfer-encoding"] == b"chunked"
            else:
                assert framing[b"content-length"] == b"10"
            first = await client.next_event()
            assert isinstance(first, h11.Data)
            assert first.data == b"first"
            client_has_first.set()
            rest = await client.next_event()
            assert isinstance(rest, h11.Data)
            assert rest.data == b" last"
            assert isinstance(await client.next_event(), h11.EndOfMessage)


LARGE: int = 50 * 1024 * 1024  # bytes
CHUNK: bytes = b"x" * 65536


async def test_large_upload_and_download_use_bounded_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def handle(conn: H11Stream, req: h11.Request) -> None:
        if req.method == b"POST":
            size = 0
            while isinstance(event := await conn.next_event(), h11.Data):
                size += len(event.data)
            await send_reply(conn, 200, str(size).encode())
            return
        await read_body(conn)
        await conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % LARGE)]))
        for _ in range(LARGE // len(CHUNK)):
            await conn.send(h11.Data(data=CHUNK))
        await conn.send(h11.EndOfMessage())

    proxy, _ = await proxied(nursery, tmp_path, handle)
    gc.collect()
    baseline = peak = rss_bytes()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes())
            await trio.sleep(0.005)

    with trio.fail_after(40):
        async with trio.open_nursery() as sampler:
            sampler.start_soon(sample)

            async with await open_raw(proxy) as stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % LARGE
                )
                for _ in range(LARGE // len(CHUNK)):
                    await stream.send_all(CHUNK)
                [reply] = parse_responses(await receive_until(stream, b"%d" % LARGE), ["POST"])
                assert reply.body == b"%d" % LARGE

            client = await open_client(proxy.http_port)
            async with client.stream:
                await client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
                await client.send(h11.EndOfMessage())
                assert isinstance(await client.next_event(), h11.Response)
                received = 0
                while isinstance(event := await client.next_event(), h11.Data):
                    received += len(event.data)
                assert received == LARGE
            sampler.cancel_scope.cancel()
    # Client, proxy and target share this process: buffering either body would add ~50 MB.
    assert peak - baseline < 20 * 1024 * 1024, (baseline, peak)


async def test_head_response_has_no_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        if req.method == b"HEAD":
            headers = [(b"content-length", b"1234"), (b"content-type", b"text/plain")]
            await conn.send(h11.Response(status_code=200, headers=headers))
            await conn.send(h11.EndOfMessage())
        else:
            await send_reply(conn, 200, b"after")

    proxy, logs = await proxied(nursery, tmp_path, handle)
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            head = await exchange(client, "/x", method="HEAD")
            assert (head.status, head.header(b"content-length"), head.body) == (200, b"1234", b"")
            # The connection is still framed correctly: the next response is read as its own.
            assert (await exchange(client, "/y")).body == b"after"
    assert [r["method"] for r in await logged(logs, 2)] == ["HEAD", "GET"]


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses(nursery: trio.Nursery, tmp_path: Path, status: int) -> None:
    async def bodiless(upstream: Upstream, req: Received, conn: H11Stream) -> None:
        headers = [(b"etag", b'"v1"')] if status == 304 else []
        await conn.send(h11.Response(status_code=status, headers=headers))
        await conn.send(h11.EndOfMessage())

    up = await start_upstream(nursery, handlers={b"/none": bodiless})
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            reply = await exchange(client, "/none")
            assert (reply.status, reply.body) == (status, b"")
            assert reply.header(b"transfer-encoding") is None
            assert (await exchange(client, "/next")).body == b"upstream"


async def test_trailers_dropped_both_ways(nursery: trio.Nursery, tmp_path: Path) -> None:
    request_trailers: list[h11.EndOfMessage] = []

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        body = b""
        while isinstance(event := await conn.next_event(), h11.Data):
            body += event.data
        assert isinstance(event, h11.EndOfMessage)
        request_trailers.append(event)
        await conn.send(h11.Response(status_code=200, headers=[(b"trailer", b"x-checksum")]))
        await conn.send(h11.Data(data=body))
        await conn.send(h11.EndOfMessage(headers=[(b"x-checksum", b"abc")]))

    proxy, _ = await proxied(nursery, tmp_path, handle)
    with trio.fail_after(10):
        data = await raw_exchange(
            proxy.http_port,
            b"POST / HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
            b"4\r\nbody\r\n0\r\nx-request-trailer: 1\r\n\r\n",
        )
    [reply] = parse_responses(data, ["POST"])
    assert (reply.status, reply.body) == (200, b"body")
    assert b"x-checksum" not in data.lower()
    assert b"trailer" not in data.lower()
    assert list(request_trailers[0].headers) == []


@pytest.mark.parametrize("target_sends_100", [True, False])
async def test_expect_100_continue(
    nursery: trio.Nursery, tmp_path: Path, target_sends_100: bool
) -> None:
    """The client holds its body until it sees 100: from the target, or (like Go's transport
    after ExpectContinueTimeout) from the proxy when the target says nothing."""
    body_started = trio.Event()

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        assert dict(req.headers)[b"expect"] == b"100-continue"
        if target_sends_100:
            await conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = await read_body(conn)
        body_started.set()
        await send_reply(conn, 201, b"got " + body)

    proxy, _ = await proxied(nursery, tmp_path, handle)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(
                b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
            )
            interim = await receive_until(stream, b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 "), interim
            assert interim.endswith(b"\r\n\r\n")  # exactly one interim response so far
            assert not body_started.is_set()
            await stream.send_all(b"hello")
            data = await receive_until(stream, b"got hello")
    [reply] = parse_responses(data, ["PUT"])
    assert (reply.status, reply.body) == (201, b"got hello")


async def test_expect_100_without_a_body_is_a_plain_exchange(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """With no body to hold back there is nothing to continue: no 100, the answer, and the
    connection carries the next request."""
    up = await start_upstream(nursery, "plain")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(b"GET /a HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n")
            data = await receive_until(stream, b"plain")
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"connection: close" not in data.lower()
            await stream.send_all(b"GET /b HTTP/1.1\r\nhost: a\r\n\r\n")
            assert b"plain" in await receive_until(stream, b"plain")


async def test_early_answer_after_100_keeps_the_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The target says 100, then answers before the body arrives: the client, told to go on,
    sends its body anyway; the proxy reads it past, so the connection carries the next request."""

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        if req.method == b"PUT":
            await conn.send(h11.InformationalResponse(status_code=100, headers=[]))
            await send_reply(conn, 200, b"early")
            return
        await send_reply(conn, 200, b"next")

    proxy, _ = await proxied(nursery, tmp_path, handle)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(
                b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
            )
            data = await receive_until(stream, b"early")
            assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
            assert b"connection: close" not in data.lower()
            await stream.send_all(b"hello" + b"GET /y HTTP/1.1\r\nhost: a\r\n\r\n")
            assert b"next" in await receive_until(stream, b"next")


async def test_target_connection_close_is_not_passed_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def closing(upstream: Upstream, req: Received, conn: H11Stream) -> None:
        await send_reply(conn, 200, b"bye", [(b"connection", b"close")])

    up = await start_upstream(nursery, handlers={b"/close": closing})
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    connections = up.connections
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            for _ in range(2):
                reply = await exchange(client, "/close")
                assert (reply.status, reply.body, reply.header(b"connection")) == (
                    200,
                    b"bye",
                    None,
                )
    assert up.connections - connections == 2  # the closed connection was not pooled


# --- keep-alive, pipelining, pooling ------------------------------------------------------------


async def test_pipelined_requests_answered_in_order(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    pipelined = b"".join(
        b"GET /echo?n=%d HTTP/1.1\r\nhost: a\r\n%s\r\n" % (n, b"connection: close\r\n" * (n == 3))
        for n in (1, 2, 3)
    )
    with trio.fail_after(10):
        data = await raw_exchange(proxy.http_port, pipelined)
    replies = parse_responses(data, ["GET"] * 3)
    assert [json.loads(r.body)["target"] for r in replies] == [
        "/echo?n=1",
        "/echo?n=2",
        "/echo?n=3",
    ]
    assert len(await logged(logs, 3)) == 3


async def test_pipelined_request_behind_a_slow_target_is_no_hang_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """While a bodiless request waits on a slow target, the client's socket is looked at for a
    hang-up; the next request, sent meanwhile and waiting unread on the socket, is no hang-up,
    and both are answered."""
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    data = b""
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(b"GET /slow?0.5 HTTP/1.1\r\nhost: a\r\n\r\n")
            await trio.sleep(0.2)  # the first waits on the target, being looked at
            await stream.send_all(b"GET /echo?n=2 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            while chunk := await stream.receive_some(65536):
                data += chunk
    replies = parse_responses(data, ["GET"] * 2)
    assert [r.status for r in replies] == [200, 200]
    assert json.loads(replies[1].body)["target"] == "/echo?n=2"
    assert [record["status"] for record in await logged(logs, 2)] == [200, 200]


async def test_pipelined_bodies_and_http10(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Bodies in a pipeline stay with their request; an HTTP/1.0 request ends the connection."""
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    pipelined = (
        b"POST /echo?n=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nfirst"
        b"POST /echo?n=2 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"6\r\nsecond\r\n0\r\n\r\n"
        b"GET /echo?n=3 HTTP/1.0\r\n\r\n"
    )
    with trio.fail_after(10):
        data = await raw_exchange(proxy.http_port, pipelined)
    replies = parse_responses(data, ["POST", "POST", "GET"])
    echoed = [json.loads(r.body) for r in replies]
    assert [(e["target"], e["body"]) for e in echoed] == [
        ("/echo?n=1", "first"),
        ("/echo?n=2", "second"),
        ("/echo?n=3", ""),
    ]
    assert replies[2].http_version == b"1.1"  # h11 answers 1.0 clients as a 1.1 server
    # Without a Host, the target's address stands in (as Go's transport does).
    assert up.received[-1].header(b"host") == up.address.encode()
    # Go's Request.ContentLength, as logged: -1 when chunked.
    assert [r["req_content_length"] for r in await logged(logs, 3)] == [5, -1, 0]


async def test_upstream_connections_reused(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    connections = up.connections
    with trio.fail_after(10):
        for _ in range(5):
            assert (await request(proxy.http_port)).status == 200
    assert up.connections - connections == 1


@pytest.mark.parametrize(
    ("how", "method"),
    [("idle-timeout", "GET"), ("closed-after-request", "GET"), ("idle-timeout", "POST")],
)
async def test_stale_pooled_connection_retried(
    nursery: trio.Nursery, tmp_path: Path, how: str, method: str
) -> None:
    """The target closes a kept-alive connection: when idle (a GET finds out when it is sent,
    a POST, which could not be sent twice, before: the pool asks the kernel), or just as the
    next request arrives (the send succeeds, the response never comes): all are answered."""
    served = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal served
        conn = H11Stream(stream, h11.Connection(h11.SERVER))
        with trio.move_on_after(5):
            event = await conn.next_event()
            assert isinstance(event, h11.Request)
            await read_body(conn)
            served += 1
            await send_reply(conn, 200, b"served %d" % served)
            conn.conn.start_next_cycle()
            if how == "closed-after-request":
                await conn.next_event()  # the next request: dropped unanswered
            else:
                await trio.sleep(0.1)

    server = await start_raw_server(nursery, serve)
    health = await start_upstream(nursery, "health")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address, health_check_port=health.port)
    with trio.fail_after(10):
        assert (await request(proxy.http_port)).body == b"served 1"
        await trio.sleep(0.3)
        body = b"data" if method == "POST" else None
        assert (await request(proxy.http_port, method=method, body=body)).body == b"served 2"
    assert server.connections == 2


# --- upgrades ---------------------------------------------------------------------------------

UPGRADE_REQUEST = (
    b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


def websocket_upstream(closed: trio.Event, *, hang_up: bool) -> Upstream:
    async def ws(upstream: Upstream, req: Received, conn: H11Stream) -> None:
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
        await conn.send(h11.InformationalResponse(status_code=101, headers=headers))
        stream = conn.stream
        await stream.send_all(b"hello from target;")
        if hang_up:
            return  # Upstream closes the connection
        rest, _ = conn.conn.trailing_data
        if rest:
            await stream.send_all(bytes(rest))
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        closed.set()

    return Upstream("ws", handlers={b"/ws": ws})


async def test_websocket_echo_until_client_closes(nursery: trio.Nursery, tmp_path: Path) -> None:
    target_saw_close = trio.Event()
    up: Upstream = await nursery.start(websocket_upstream(target_saw_close, hang_up=False).serve)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(UPGRADE_REQUEST)
            data = await receive_until(stream, b"hello from target;")
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"upgrade: websocket" in head.lower()
            assert rest == b"hello from target;"
            for message in (b"ping", b"\x00\xffbinary"):
                await stream.send_all(message)
                assert await receive_until(stream, message) == message
        await target_saw_close.wait()
    got = up.received[-1]
    assert (got.header(b"upgrade"), got.header(b"connection")) == (b"websocket", b"upgrade")
    assert (await logged(logs))[-1]["status"] == 101
    assert proxy.router.services["web"].targets[0].inflight_count == 0


async def test_websocket_target_close_ends_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    up: Upstream = await nursery.start(websocket_upstream(trio.Event(), hang_up=True).serve)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(UPGRADE_REQUEST)
            data = await receive_all(stream)  # ends: the proxy closed the client side too
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(b"\r\n\r\nhello from target;")
    # The proxy keeps serving.
    assert (await request(proxy.http_port, "/plain")).body == b"ws"


async def test_refused_upgrade_is_a_plain_exchange(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery, "plain")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    upgrade = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            reply = await exchange(client, "/ws", headers=upgrade)
            assert (reply.status, reply.body) == (200, b"plain")
            assert (await exchange(client, "/after")).body == b"plain"
    assert up.received[-2].header(b"upgrade") == b"websocket"


# --- errors and the access log ----------------------------------------------------------------


def assert_error_page(reply: Reply, status: int) -> None:
    """One of the proxy's built-in HTML pages, complete and framed by Content-Length."""
    assert reply.status == status
    assert (reply.header(b"content-type") or b"").startswith(b"text/html")
    assert str(status).encode() in reply.body
    assert int(reply.header(b"content-length") or -1) == len(reply.body)


async def test_404_without_service(tmp_path: Path, nursery: trio.Nursery) -> None:
    proxy, logs = await start_proxy(nursery, tmp_path)
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            reply = await exchange(client, "/anything")
            assert (await exchange(client, "/again")).status == 404  # still kept alive
    assert_error_page(reply, 404)
    record = (await logged(logs, 2))[0]
    assert (record["status"], record["path"], record["service"]) == (404, "/anything", "")
    assert (record["target"], record["resp_content_type"]) == ("", "text/html; charset=utf-8")
    assert record["resp_content_length"] == len(reply.body)
    assert uuid.UUID(str(record["request_id"]))


async def test_502_when_target_unreachable(nursery: trio.Nursery, tmp_path: Path) -> None:
    health = await start_upstream(nursery, "health")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, f"127.0.0.1:{unused_port()}", health_check_port=health.port)
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            reply = await exchange(client, method="POST", body=b"unread body")
            # The unread body was skipped, so the connection carries the next request.
            assert (await exchange(client)).status == 502
    assert_error_page(reply, 502)
    assert [r["status"] for r in await logged(logs, 2)] == [502, 502]


@pytest.mark.parametrize("misbehaviour", ["reset", "close", "garbage"])
async def test_502_when_target_fails_before_head(
    nursery: trio.Nursery, tmp_path: Path, misbehaviour: str
) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await receive_until(stream, b"\r\n\r\n")
        if misbehaviour == "reset":
            reset_on_close(stream)
        elif misbehaviour == "garbage":
            await stream.send_all(b"garbage, not HTTP\r\n\r\n")

    server = await start_raw_server(nursery, serve)
    health = await start_upstream(nursery, "health")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address, health_check_port=health.port)
    reply = await request(proxy.http_port)
    assert_error_page(reply, 502)
    assert (await logged(logs))[-1]["status"] == 502


async def test_504_after_target_timeout(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address, target_timeout=0.5)
    started = trio.current_time()
    reply = await request(proxy.http_port, "/slow?3")
    assert 0.5 <= trio.current_time() - started < 2
    assert_error_page(reply, 504)
    assert (await logged(logs))[-1]["status"] == 504
    assert (await request(proxy.http_port, "/fast")).status == 200  # not a poisoned pool


async def test_connection_goes_on_after_a_target_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A request cut off by the target timeout is answered 504 and its connection carries the
    next requests (each run of requests shares one cancel scope, renewed after a cut-off)."""
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address, target_timeout=0.3)
    data = b""
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            for path in (b"/slow?3", b"/echo?n=2", b"/slow?3", b"/echo?n=4"):
                await stream.send_all(b"GET %s HTTP/1.1\r\nhost: a\r\n\r\n" % path)
                data += await _one_response(stream)
    replies = parse_responses(data, ["GET"] * 4)
    assert [r.status for r in replies] == [504, 200, 504, 200]
    assert [record["status"] for record in await logged(logs, 4)] == [504, 200, 504, 200]


async def _one_response(stream: trio.SocketStream) -> bytes:
    """The bytes of one response framed by Content-Length (kproxy's pages and the test
    upstream's answers are)."""
    data = await receive_until(stream, b"\r\n\r\n")
    head_end = data.index(b"\r\n\r\n") + 4
    length = int(re.search(rb"content-length: (\d+)", data[:head_end], re.I)[1])  # type: ignore[index]
    while len(data) < head_end + length:
        data += await stream.receive_some(65536)
    return data


async def test_503_without_healthy_target(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery, healthy=False)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address, force=True)
    reply = await request(proxy.http_port)
    assert_error_page(reply, 503)
    assert (await logged(logs))[-1]["status"] == 503
    assert up.received == [] or all(r.target == b"/up" for r in up.received)


ACCESS_LOG_FIELDS = {
    "host",
    "port",
    "path",
    "request_id",
    "status",
    "service",
    "target",
    "duration",
    "method",
    "req_content_length",
    "req_content_type",
    "resp_content_length",
    "resp_content_type",
    "client_addr",
    "client_port",
    "remote_addr",
    "user_agent",
    "proto",
    "scheme",
    "query",
}


async def test_access_log_line(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(
        proxy,
        up.address,
        log_request_headers=("X-Custom",),
        log_response_headers=("Content-Type", "X-Missing"),
    )
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            local_port = client.stream.socket.getsockname()[1]
            reply = await exchange(
                client,
                "/echo?a=1&b=2",
                method="POST",
                host="App.Example.com:8080",
                headers=[
                    (b"user-agent", b"test-agent/1"),
                    (b"content-type", b"text/plain"),
                    (b"x-custom", b"custom value"),
                ],
                body=b"hello",
            )
            await exchange(client, "/second", headers=[(b"x-forwarded-for", b"203.0.113.9")])
    assert reply.status == 200
    records = await logged(logs, 2)
    assert len(records) == 2
    record = records[0]
    assert record.keys() >= ACCESS_LOG_FIELDS
    expected = {
        "host": "app.example.com",
        "port": proxy.http_port,
        "path": "/echo",
        "query": "a=1&b=2",
        "status": 200,
        "service": "web",
        "target": up.address,
        "method": "POST",
        "req_content_length": 5,
        "req_content_type": "text/plain",
        "resp_content_length": len(reply.body),
        "resp_content_type": "application/json",
        "client_addr": "127.0.0.1",
        "client_port": str(local_port),
        "remote_addr": "127.0.0.1",
        "user_agent": "test-agent/1",
        "proto": "HTTP/1.1",
        "scheme": "http",
        "req_x_custom": "custom value",
        "resp_x_missing": "",
    }
    assert {k: record[k] for k in expected} == expected
    assert isinstance(record["duration"], int)
    assert record["duration"] > 0
    assert record["request_id"] == (up.received[-2].header(b"x-request-id") or b"").decode()
    assert records[1]["path"] == "/second"
    # kamal-proxy's remote_addr is the X-Forwarded-For value when there is one.
    assert (records[1]["client_addr"], records[1]["remote_addr"]) == ("127.0.0.1", "203.0.113.9")


async def test_client_gone_while_waiting_is_499(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(b"GET /slow?5 HTTP/1.1\r\nhost: a\r\n\r\n")
            await wait_until(lambda: up.active > 0)
        with trio.fail_after(1.5):  # long before the target would answer
            records = await logged(logs)
    assert records[-1]["status"] == 499
    assert proxy.router.services["web"].targets[0].inflight_count == 0


async def test_client_gone_mid_response_is_499(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        await conn.send(h11.Response(status_code=200, headers=[]))
        for _ in range(100):
            await conn.send(h11.Data(data=b"tick\n" * 1000))
            await trio.sleep(0.05)
        await conn.send(h11.EndOfMessage())

    proxy, logs = await proxied(nursery, tmp_path, handle)
    with trio.fail_after(10):
        async with await open_raw(proxy) as stream:
            await stream.send_all(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
            assert b"tick" in await receive_until(stream, b"tick")
        with trio.fail_after(1.5):  # not only when the target finishes, 5 s later
            records = await logged(logs)
    assert records[-1]["status"] == 499


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_slow_target_that_resets_is_502(
    nursery: trio.Nursery, tmp_path: Path, method: str
) -> None:
    """The reset arrives while the client is being watched (a GET waits past the watch delay
    with no body; a POST after its body): a 502 either way, and the proxy keeps serving."""

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await trio.sleep(0.3)  # past HANGUP_WATCH_DELAY
        reset_on_close(stream)

    server = await start_raw_target(nursery, answer)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address)
    body = b"data" if method == "POST" else None
    assert (await request(proxy.http_port, "/x", method=method, body=body)).status == 502
    assert (await request(proxy.http_port, "/x", method=method, body=body)).status == 502


async def test_101_to_a_request_that_asked_no_upgrade_is_502(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
        )

    server = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address)
    assert (await request(proxy.http_port, "/plain")).status == 502
    assert "switched protocols unasked" in str(logs.records("Proxy error")[-1]["error"])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_target_breaking_off_mid_body_aborts_client(
    nursery: trio.Nursery, tmp_path: Path, chunked: bool
) -> None:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        if chunked:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\npart.\r\n"
            )
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart.")

    server = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address)
    with trio.fail_after(10):
        client = await open_client(proxy.http_port)
        async with client.stream:
            await client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
            await client.send(h11.EndOfMessage())
            with pytest.raises(
                h11.RemoteProtocolError, match="without sending complete message body"
            ):
                await read_reply(client)
    assert "broke off" in str(logs.records("Proxy error")[-1]["error"])
    # The proxy keeps serving (the next target connection answers in full).
    server.handler = h11_target(lambda conn, req: _hello(conn))
    assert (await request(proxy.http_port)).body == b"hello"


async def _hello(conn: H11Stream) -> None:
    await read_body(conn)
    await send_reply(conn, 200, b"hello")


# --- connection deadlines ------------------------------------------------------------------------


async def test_head_deadlines_never_cut_an_exchange_short(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The header and keep-alive deadlines govern the wait for a request head only: a response
    slower than both still arrives, and only an idle connection is closed."""
    up = await start_upstream(nursery, "slow")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, up.address)
    http = proxy._http  # the deadlines are constants in production; shortened for the test
    assert http is not None
    http.header_timeout = http.keepalive_timeout = 0.3

    reply = await request(proxy.http_port, "/slow?1")
    assert (reply.status, reply.body) == (200, b"slow")

    started = trio.current_time()
    data = await raw_exchange(proxy.http_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert trio.current_time() - started < 2  # closed by the keep-alive deadline, not ours


async def test_head_gets_error_pages_without_a_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A HEAD answered by the proxy itself (404 here) has headers only; the connection stays."""
    proxy, logs = await start_proxy(nursery, tmp_path)
    data = await raw_exchange(
        proxy.http_port,
        b"HEAD /x HTTP/1.1\r\nHost: nobody.test\r\n\r\nGET /y HTTP/1.1\r\nHost: nobody.test\r\n"
        b"Connection: close\r\n\r\n",
    )
    responses = parse_responses(data, ["HEAD", "GET"])
    assert [r.status for r in responses] == [404, 404]
    assert responses[0].body == b""
    assert responses[1].body.lower().startswith(b"<!doctype html>")
    lines = await logged(logs, 2)
    assert [(line["method"], line["status"]) for line in lines] == [("HEAD", 404), ("GET", 404)]


async def test_garbage_on_a_reused_connection_is_not_retried(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Only a silent close counts as a stale connection: a target that received the request and
    answered garbage may have acted on it, so the client gets 502 and nothing is sent twice."""
    paths: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        conn = H11Stream(stream, h11.Connection(h11.SERVER))
        while isinstance(event := await conn.next_event(), h11.Request):
            await read_body(conn)
            paths.append(event.target)
            if event.target == b"/garbage":
                await stream.send_all(b"NOT HTTP\r\n\r\n")
                return
            await send_reply(conn, 200, b"ok")
            conn.conn.start_next_cycle()

    server = await start_raw_server(nursery, serve)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await deploy(proxy, server.address)
    with trio.fail_after(10):
        assert (await request(proxy.http_port, "/first")).status == 200
        assert (await request(proxy.http_port, "/garbage")).status == 502
    assert paths.count(b"/garbage") == 1
