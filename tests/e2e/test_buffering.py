"""--buffer-requests, --buffer-responses and their limits, end to end on loopback sockets.

The targets here are ``RawServer``s speaking h11 by hand, so a test sees exactly when a request
head reaches the target and can hold a response half-sent. Buffered bodies that pass
``--buffer-memory`` spill to an anonymous temporary file; tests point the proxy's
``buffer_dir`` at their tmp_path and look for descriptors open into it in /proc/self/fd.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from kproxy import DeploymentOptions, Proxy, TargetOptions
from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    LogCapture,
    TargetHandler,
    control,
    guard,
    h11_target,
    open_client,
    parse_responses,
    read_body,
    read_reply,
    receive_all,
    receive_until,
    request,
    rss_bytes,
    send_reply,
    start_proxy,
    start_raw_server,
    start_raw_target,
    wait_until,
)

MiB = 1024 * 1024


async def count_body(conn: H11Stream) -> int:
    size = 0
    while not isinstance(event := await conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        size += len(event.data)
    return size


async def echo(conn: H11Stream, req: h11.Request) -> None:
    await send_reply(conn, 200, b"got " + await read_body(conn))


async def proxied(
    nursery: trio.Nursery,
    tmp_path: Path,
    handle: TargetHandler,
    heads: list[h11.Request] | None = None,
    **target: Any,
) -> tuple[Proxy, LogCapture]:
    """A proxy (spilling into tmp_path/spool) whose service "web" is an h11 target."""
    server = await start_raw_server(nursery, h11_target(handle, heads))
    proxy, logs = await start_proxy(nursery, tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    assert proxy._http is not None
    proxy._http.pipeline.buffer_dir = str(spool)
    options = DeploymentOptions(targets=(server.address,), target=TargetOptions(**target))
    await proxy.deploy("web", options)
    return proxy, logs


def spooled_files(tmp_path: Path) -> list[str]:
    """Descriptors this process holds open into the spool dir (the proxy runs in-process)."""
    spool = str(tmp_path / "spool") + "/"
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith(spool):
            links.append(link)
    return links


async def open_raw(proxy: Proxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.http_port)


async def logged(logs: LogCapture, count: int = 1) -> list[dict[str, Any]]:
    await wait_until(lambda: len(logs.records("Request")) >= count)
    return logs.records("Request")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# --- request buffering ------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@guard(10)
async def test_target_sees_nothing_until_the_whole_body_arrived(
    nursery: trio.Nursery, tmp_path: Path, chunked: bool
) -> None:
    heads: list[h11.Request] = []
    proxy, logs = await proxied(nursery, tmp_path, echo, heads, buffer_requests=True)
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: 10"
    async with await open_raw(proxy) as stream:
        await stream.send_all(b"POST /upload HTTP/1.1\r\nhost: a\r\n%s\r\n\r\n" % framing)
        await stream.send_all(chunk(b"hello") if chunked else b"hello")
        await trio.sleep(0.3)  # a slow client: the streaming proxy would have forwarded by now
        assert heads == []
        await stream.send_all(chunk(b"world") + b"0\r\n\r\n" if chunked else b"world")
        [reply] = parse_responses(await receive_until(stream, b"got helloworld"), ["POST"])
    assert (reply.status, reply.body) == (200, b"got helloworld")
    # Re-framed by length, whatever the client used.
    [head] = heads
    assert dict(head.headers)[b"content-length"] == b"10"
    assert b"transfer-encoding" not in dict(head.headers)
    assert (await logged(logs))[-1]["status"] == 200


@guard(10)
async def test_bodiless_requests_are_not_held(nursery: trio.Nursery, tmp_path: Path) -> None:
    heads: list[h11.Request] = []
    proxy, _ = await proxied(nursery, tmp_path, echo, heads, buffer_requests=True)
    reply = await request(proxy.http_port, "/plain")
    assert (reply.status, reply.body) == (200, b"got ")
    assert b"content-length" not in dict(heads[0].headers)  # no length invented for a GET


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@guard(10)
async def test_413_for_an_oversize_body_and_the_target_never_contacted(
    nursery: trio.Nursery, tmp_path: Path, chunked: bool
) -> None:
    heads: list[h11.Request] = []
    proxy, logs = await proxied(
        nursery, tmp_path, echo, heads, buffer_requests=True, max_request_body=1000
    )
    async with await open_raw(proxy) as stream:
        if chunked:
            await stream.send_all(
                b"POST /big HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            await stream.send_all(chunk(b"x" * 600) + chunk(b"x" * 600) + b"0\r\n\r\n")
        else:
            # Refused by its declared length: the client need not send a byte of it.
            await stream.send_all(b"POST /big HTTP/1.1\r\nhost: a\r\ncontent-length: 1001\r\n\r\n")
        data = await receive_until(stream, b"</html>")
    [reply] = parse_responses(data, ["POST"])
    assert reply.status == 413
    assert b"<html" in reply.body.lower()
    assert heads == []
    assert (await logged(logs))[-1]["status"] == 413
    # Exactly the limit still goes through.
    reply = await request(proxy.http_port, "/ok", method="POST", body=b"y" * 1000)
    assert (reply.status, reply.body) == (200, b"got " + b"y" * 1000)


# --- Expect: 100-continue ---------------------------------------------------------------------


@guard(10)
async def test_proxy_answers_100_continue_itself(nursery: trio.Nursery, tmp_path: Path) -> None:
    heads: list[h11.Request] = []
    proxy, _ = await proxied(nursery, tmp_path, echo, heads, buffer_requests=True)
    async with await open_raw(proxy) as stream:
        await stream.send_all(
            b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
        )
        interim = await receive_until(stream, b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        assert heads == []  # the 100 came from the proxy, before any target was contacted
        await stream.send_all(b"hello")
        data = interim + await receive_until(stream, b"got hello")
    [reply] = parse_responses(data, ["PUT"])
    assert (reply.status, reply.body) == (200, b"got hello")
    assert b"expect" not in dict(heads[0].headers)  # the body is all there: nothing to agree to


@guard(10)
async def test_100_continue_with_an_oversize_length_gets_413_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    heads: list[h11.Request] = []
    proxy, logs = await proxied(
        nursery, tmp_path, echo, heads, buffer_requests=True, max_request_body=10
    )
    async with await open_raw(proxy) as stream:
        await stream.send_all(
            b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 11\r\n\r\n"
        )
        # No 100 first; the connection closes after the 413 (the body will never come).
        data = await receive_all(stream)
    assert data.startswith(b"HTTP/1.1 413 "), data
    [reply] = parse_responses(data, ["PUT"])
    assert reply.header(b"connection") == b"close"
    assert heads == []
    assert (await logged(logs))[-1]["status"] == 413


@guard(10)
async def test_final_answer_to_a_client_awaiting_100_closes_the_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A 404 (no service) to a client holding its body for a 100: the body never comes, so
    the answer says ``Connection: close`` and the proxy closes, instead of waiting for a body
    to discard."""
    proxy, _ = await start_proxy(nursery, tmp_path)
    async with await open_raw(proxy) as stream:
        await stream.send_all(
            b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
        )
        with trio.fail_after(2):
            data = await receive_all(stream)
    [reply] = parse_responses(data, ["PUT"])
    assert (reply.status, reply.header(b"connection")) == (404, b"close")


# --- response buffering -----------------------------------------------------------------------


@guard(20)
async def test_client_gets_nothing_until_the_target_finished(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The target writes 8 MiB and is done while the client has read nothing: with streaming it
    would be stuck on a full socket; buffered, it is free at once."""
    size = 8 * MiB
    first_sent, client_checked, target_done = trio.Event(), trio.Event(), trio.Event()

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        await conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % size)]))
        await conn.send(h11.Data(data=b"first"))
        first_sent.set()
        await client_checked.wait()
        for _ in range(size // 65536 - 1):
            await conn.send(h11.Data(data=b"x" * 65536))
        await conn.send(h11.Data(data=b"x" * (65536 - 5)))
        await conn.send(h11.EndOfMessage())
        target_done.set()

    proxy, logs = await proxied(nursery, tmp_path, handle, buffer_responses=True, buffer_memory=MiB)
    async with await open_raw(proxy) as stream:
        await stream.send_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        await first_sent.wait()
        with trio.move_on_after(0.2):
            assert await stream.receive_some(1) == b"never: nothing may come before the end"
        client_checked.set()
        await target_done.wait()  # done without the client reading a byte
        assert len(spooled_files(tmp_path)) == 1  # 8 MiB > --buffer-memory: in a file
        data = await receive_all_of(stream, size)
    [reply] = parse_responses(data, ["GET"])
    assert (reply.status, len(reply.body), reply.header(b"content-length")) == (
        200,
        size,
        b"%d" % size,
    )
    assert reply.body.startswith(b"first")
    await logged(logs)
    assert spooled_files(tmp_path) == []


async def receive_all_of(stream: trio.SocketStream, body_size: int) -> bytes:
    """A response head and a ``body_size`` body (a bytearray: no quadratic copies)."""
    data = bytearray()
    while (head_end := data.find(b"\r\n\r\n")) < 0 or len(data) < head_end + 4 + body_size:
        part = await stream.receive_some(1 << 20)
        if not part:
            break
        data += part
    return bytes(data)


@guard(10)
async def test_close_delimited_response_gets_a_length(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")

    server = await start_raw_target(nursery, answer)
    proxy, _ = await start_proxy(nursery, tmp_path)
    options = DeploymentOptions(
        targets=(server.address,), target=TargetOptions(buffer_responses=True)
    )
    await proxy.deploy("web", options)
    client = await open_client(proxy.http_port)
    async with client.stream:
        await client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
        await client.send(h11.EndOfMessage())
        reply = await read_reply(client)
        assert (reply.status, reply.body) == (200, b"until close")
        assert reply.header(b"content-length") == b"11"
        assert client.conn.our_state is h11.DONE  # reusable: the length framed it
        assert client.conn.their_state is h11.DONE


@guard(10)
async def test_500_for_an_oversize_response(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        await send_reply(conn, 200, b"z" * 5000)

    proxy, logs = await proxied(
        nursery, tmp_path, handle, buffer_responses=True, max_response_body=4999
    )
    reply = await request(proxy.http_port, "/big")
    assert reply.status == 500
    assert b"zzzz" not in reply.body  # none of the target's body
    assert (await logged(logs))[-1]["status"] == 500
    [error] = logs.records("Proxy error")
    assert error["status"] == 500
    assert "max-response-body" in error["error"]


@pytest.mark.parametrize(
    "content_type", [b"text/event-stream", b"text/plain"], ids=["sse", "chunked"]
)
@guard(10)
async def test_event_streams_and_chunked_responses_stream_through(
    nursery: trio.Nursery, tmp_path: Path, content_type: bytes
) -> None:
    client_has_first = trio.Event()

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        # No Content-Length: h11 sends it chunked.
        await conn.send(h11.Response(status_code=200, headers=[(b"content-type", content_type)]))
        await conn.send(h11.Data(data=b"data: 1\n\n"))
        await client_has_first.wait()  # a buffering proxy never lets the client see it
        await conn.send(h11.Data(data=b"data: 2\n\n"))
        await conn.send(h11.EndOfMessage())

    proxy, _ = await proxied(nursery, tmp_path, handle, buffer_responses=True, buffer_requests=True)
    client = await open_client(proxy.http_port)
    async with client.stream:
        await client.send(h11.Request(method="GET", target="/events", headers=[(b"host", b"a")]))
        await client.send(h11.EndOfMessage())
        head = await client.next_event()
        assert isinstance(head, h11.Response)
        assert dict(head.headers)[b"transfer-encoding"] == b"chunked"
        first = await client.next_event()
        assert isinstance(first, h11.Data)
        assert first.data == b"data: 1\n\n"
        client_has_first.set()
        second = await client.next_event()
        assert isinstance(second, h11.Data)
        assert second.data == b"data: 2\n\n"
        assert isinstance(await client.next_event(), h11.EndOfMessage)


# --- spilling to a file ----------------------------------------------------------------------


@guard(20)
async def test_upload_spills_above_buffer_memory_and_the_file_goes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sizes: list[int] = []

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        sizes.append(await count_body(conn))
        await send_reply(conn, 200, b"%d" % sizes[-1])

    proxy, _ = await proxied(
        nursery, tmp_path, handle, buffer_requests=True, buffer_memory=256 * 1024
    )
    total = 3 * MiB
    async with await open_raw(proxy) as stream:
        await stream.send_all(
            b"POST /up/load HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % total
        )
        await stream.send_all(b"a" * 100_000)
        await trio.sleep(0.1)
        assert spooled_files(tmp_path) == []  # below --buffer-memory: in memory
        await stream.send_all(b"a" * (MiB - 100_000))
        await wait_until(lambda: len(spooled_files(tmp_path)) == 1)
        assert os.listdir(tmp_path / "spool") == []  # anonymous: no name on disk
        await stream.send_all(b"a" * (total - MiB))
        data = await receive_until(stream, b"%d" % total)
    [reply] = parse_responses(data, ["POST"])
    assert (reply.status, reply.body) == (200, b"%d" % total)
    assert sizes == [total]
    await wait_until(lambda: spooled_files(tmp_path) == [])


@guard(20)
async def test_spill_file_goes_when_the_client_leaves_mid_upload(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    heads: list[h11.Request] = []
    proxy, logs = await proxied(
        nursery, tmp_path, echo, heads, buffer_requests=True, buffer_memory=64 * 1024
    )
    async with await open_raw(proxy) as stream:
        await stream.send_all(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 10000000\r\n\r\n")
        await stream.send_all(b"b" * 500_000)
        await wait_until(lambda: len(spooled_files(tmp_path)) == 1)
    records = await logged(logs)
    assert records[-1]["status"] == 499
    assert spooled_files(tmp_path) == []
    assert heads == []


@guard(20)
async def test_response_spill_file_goes_when_the_client_leaves(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    release = trio.Event()

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        await read_body(conn)
        await conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % MiB)]))
        await conn.send(h11.Data(data=b"c" * (MiB // 2)))
        await release.wait()

    proxy, logs = await proxied(
        nursery, tmp_path, handle, buffer_responses=True, buffer_memory=64 * 1024
    )
    async with await open_raw(proxy) as stream:
        await stream.send_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        await wait_until(lambda: len(spooled_files(tmp_path)) == 1)
    assert (await logged(logs))[-1]["status"] == 499
    assert spooled_files(tmp_path) == []
    release.set()


UPLOADS = 8
UPLOAD_SIZE = 20 * MiB
PIECE = b"u" * 65536


@guard(90)
async def test_many_large_concurrent_uploads_use_bounded_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """8 uploads of 20 MiB at once, buffered with --buffer-memory 1 MiB: 160 MiB held in
    memory would show; spilled, the growth stays near 8 x 1 MiB plus socket buffers."""
    sizes: list[int] = []

    async def handle(conn: H11Stream, req: h11.Request) -> None:
        sizes.append(await count_body(conn))
        await send_reply(conn, 200, b"%d" % sizes[-1])

    proxy, _ = await proxied(nursery, tmp_path, handle, buffer_requests=True, buffer_memory=MiB)
    gc.collect()
    baseline = peak = rss_bytes()
    max_files = 0

    async def sample() -> None:
        nonlocal peak, max_files
        while True:
            peak = max(peak, rss_bytes())
            max_files = max(max_files, len(spooled_files(tmp_path)))
            await trio.sleep(0.01)

    async def upload(results: list[bytes]) -> None:
        async with await open_raw(proxy) as stream:
            await stream.send_all(
                b"POST /u HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % UPLOAD_SIZE
            )
            for _ in range(UPLOAD_SIZE // len(PIECE)):
                await stream.send_all(PIECE)
            [reply] = parse_responses(await receive_until(stream, b"%d" % UPLOAD_SIZE), ["POST"])
            results.append(reply.body)

    results: list[bytes] = []
    async with trio.open_nursery() as uploads:
        uploads.start_soon(sample)
        async with trio.open_nursery() as clients:
            for _ in range(UPLOADS):
                clients.start_soon(upload, results)
        uploads.cancel_scope.cancel()
    assert results == [b"%d" % UPLOAD_SIZE] * UPLOADS
    assert sizes == [UPLOAD_SIZE] * UPLOADS
    assert max_files > 1  # they were spilled, and at the same time
    await wait_until(lambda: spooled_files(tmp_path) == [])
    growth = peak - baseline
    print(f"RSS growth, {UPLOADS} x {UPLOAD_SIZE // MiB} MiB buffered: {growth / MiB:.1f} MiB")
    # Held in memory, the bodies alone would be 160 MiB.
    assert growth < 48 * MiB, (baseline, peak)


# --- framing errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("buffered", [False, True], ids=["streaming", "buffered"])
@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"1ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
    ],
    ids=["not-hex", "negative", "0x-prefix", "huge", "no-crlf-after-data"],
)
@guard(10)
async def test_malformed_chunked_request_body_is_400_and_closed(
    nursery: trio.Nursery, tmp_path: Path, buffered: bool, body: bytes
) -> None:
    heads: list[h11.Request] = []
    proxy, logs = await proxied(nursery, tmp_path, echo, heads, buffer_requests=buffered)
    async with await open_raw(proxy) as stream:
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n" + body
        )
        with trio.fail_after(2):  # the proxy closes the connection after the 400
            data = await receive_all(stream)
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert (await logged(logs))[-1]["status"] == 400
    if buffered:
        assert heads == []  # buffered: the target never hears of it


@pytest.mark.parametrize("buffered", [False, True], ids=["streaming", "buffered"])
@pytest.mark.parametrize("breakage", ["short-body", "bad-chunk", "truncated-chunk"])
@guard(10)
async def test_target_breaking_its_framing_never_looks_complete(
    nursery: trio.Nursery, tmp_path: Path, buffered: bool, breakage: str
) -> None:
    """Streaming, the head already went out: the client connection is cut. Buffered, nothing
    went out yet: 502. Chunked answers stream even when buffering, so they are cut too."""

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        if breakage == "short-body":
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart.")
        elif breakage == "bad-chunk":
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\npart.\r\nzz\r\n"
            )
            await trio.sleep(1)
        else:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\npart.\r\n"
            )

    server = await start_raw_target(nursery, answer)
    proxy, logs = await start_proxy(nursery, tmp_path)
    options = DeploymentOptions(
        targets=(server.address,), target=TargetOptions(buffer_responses=buffered)
    )
    await proxy.deploy("web", options)
    client = await open_client(proxy.http_port)
    async with client.stream:
        await client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
        await client.send(h11.EndOfMessage())
        if buffered and breakage == "short-body":
            reply = await read_reply(client)
            assert reply.status == 502
            assert b"part." not in reply.body
        else:
            with pytest.raises(
                h11.RemoteProtocolError, match="without sending complete message body"
            ):
                await read_reply(client)
    [error] = logs.records("Proxy error")
    assert "broke off" in error["error"] or "closed the connection" in error["error"]
    status = 502 if buffered and breakage == "short-body" else 200
    assert error["status"] == status
    assert (await logged(logs))[-1]["status"] == status


@guard(10)
async def test_a_post_the_target_received_is_not_sent_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A kept-alive target connection that reads the next request and closes unanswered: the
    target may have acted on a POST, so, as Go's transport does, it is not sent again (502),
    even though the buffered body could be; its spill file is removed all the same."""
    served = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal served
        conn = H11Stream(stream, h11.Connection(h11.SERVER))
        event = await conn.next_event()
        assert isinstance(event, h11.Request)
        if event.target == b"/up":
            await read_body(conn)
            await send_reply(conn, 200, b"up")
            return
        served += 1
        await send_reply(conn, 200, b"served %d: %d" % (served, await count_body(conn)))
        conn.conn.start_next_cycle()
        await conn.next_event()  # the next request: dropped unanswered

    server = await start_raw_server(nursery, serve)
    proxy, _ = await start_proxy(nursery, tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    assert proxy._http is not None
    proxy._http.pipeline.buffer_dir = str(spool)
    target = TargetOptions(buffer_requests=True, buffer_memory=64 * 1024)
    await proxy.deploy("web", DeploymentOptions(targets=(server.address,), target=target))
    body = b"r" * 300_000
    assert (await request(proxy.http_port, "/a", method="POST", body=b"one")).body == b"served 1: 3"
    reply = await request(proxy.http_port, "/b", method="POST", body=body)
    assert reply.status == 502
    assert served == 1
    await wait_until(lambda: spooled_files(tmp_path) == [])  # closed just after the reply


# --- kamal's command line ---------------------------------------------------------------------


@guard(20)
async def test_kamal_deploy_line_with_buffering_deploys(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    heads: list[h11.Request] = []
    server = await start_raw_server(nursery, h11_target(echo, heads))
    proxy, _ = await start_proxy(nursery, tmp_path)
    line = (
        f"deploy app-web --target={server.address} --deploy-timeout=30s --drain-timeout=30s"
        " --buffer-requests --buffer-responses --buffer-memory=65536"
        " --max-request-body=100 --max-response-body=1000"
        " --log-request-header=Cache-Control --log-request-header=Last-Modified"
        " --log-request-header=User-Agent"
    )
    assert (await control(tmp_path / "kproxy.sock", line))[-1] == "OK deployed app-web"
    options = proxy.router.services["app-web"].options.target
    assert (options.buffer_requests, options.buffer_responses) == (True, True)
    assert (options.buffer_memory, options.max_request_body) == (65536, 100)
    assert options.max_response_body == 1000
    reply = await request(proxy.http_port, "/", method="POST", body=b"small")
    assert (reply.status, reply.body) == (200, b"got small")
    assert (await request(proxy.http_port, "/", method="POST", body=b"x" * 101)).status == 413
    listed = await control(tmp_path / "kproxy.sock", "list")
    assert any("app-web" in line for line in listed)
