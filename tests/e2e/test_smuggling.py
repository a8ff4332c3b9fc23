"""Request smuggling and desync vectors, each against a real proxy and a recording target.

Every vector is raw bytes sent on one client connection. The target records every byte it
receives and every request it parses. For each vector the test proves that:

- the client got exactly the expected statuses, and the proxy closed the connection where
  RFC 9112 requires it (every rejection here), without the client closing first;
- the target saw exactly the expected requests (path and body), framed canonically (one
  ``content-length`` or ``transfer-encoding: chunked``, never both, no chunk extensions), and
  no byte of a smuggled request (``/smuggled``) ever reached it.

Accepted vectors end with a pipelined ``Connection: close`` request for ``/last``, so the
proxy closes after serving them, and the test shows the connection stayed in step.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import h11
import pytest
import trio

from kproxy import DeploymentOptions, TargetOptions
from tests.helpers import Received, guard, start_proxy, start_raw_server

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"
LAST = b"GET /last HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def post(*headers: bytes, target: bytes = b"/post", version: bytes = b"1.1") -> bytes:
    """A request head: POST ``target`` with Host and ``headers`` (raw header lines)."""
    lines = [b"POST " + target + b" HTTP/" + version, b"Host: example.com", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunked(body: bytes) -> bytes:
    """A chunked request (head + ``body`` as given) for ``/post``."""
    return post(b"Transfer-Encoding: chunked") + body


@attrs.frozen
class Vector:
    """One attempt: what the client sends, what it must get back, what the target must see."""

    id: str
    parts: tuple[bytes, ...]  # sent in order, with a short pause between parts
    statuses: tuple[int, ...]  # every response the client gets, in order
    # (path, body) of each request the target must receive (health checks aside), in order
    reaches: tuple[tuple[bytes, bytes], ...] = ()


def reject(id: str, data: bytes, status: int = 400, *more: bytes) -> Vector:
    return Vector(id, (data, *more), (status,))


def accept(id: str, data: bytes, body: bytes, *, path: bytes = b"/post") -> Vector:
    """Served once, re-framed, then ``/last`` on the same connection."""
    return Vector(id, (data + LAST,), (200, 200), ((path, body), (b"/last", b"")))


CL_TE = "Content-Length and Transfer-Encoding together"
VECTORS = [
    # --- CL.TE and TE.CL: both framings in one request (RFC 9112 §6.1: 400, then close) ---
    reject(
        "cl-te",
        post(b"Content-Length: %d" % (5 + len(SMUGGLED)), b"Transfer-Encoding: chunked")
        + b"0\r\n\r\n"
        + SMUGGLED,
    ),
    reject(
        "te-cl",
        post(b"Transfer-Encoding: chunked", b"Content-Length: 4")
        + b"%x\r\n" % len(SMUGGLED)
        + SMUGGLED
        + b"\r\n0\r\n\r\n",
    ),
    reject(
        "cl-te-capitalised-te",
        post(b"Content-Length: 5", b"Transfer-Encoding: Chunked") + b"0\r\n\r\n" + SMUGGLED,
    ),
    reject("cl-zero-te", post(b"Content-Length: 0", b"Transfer-Encoding: chunked") + SMUGGLED),
    reject(
        "http10-te",
        post(b"Transfer-Encoding: chunked", version=b"1.0") + b"0\r\n\r\n" + SMUGGLED,
    ),
    reject(
        "http10-te-cl",
        post(b"Transfer-Encoding: chunked", b"Content-Length: 5", version=b"1.0")
        + b"0\r\n\r\n"
        + SMUGGLED,
    ),
    # --- TE.TE: Transfer-Encoding obfuscations (unknown codings 501, malformed 400) ---------
    reject("te-gzip", post(b"Transfer-Encoding: gzip") + SMUGGLED, 501),
    reject("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked") + SMUGGLED, 501),
    reject("te-chunked-chunked", post(b"Transfer-Encoding: chunked, chunked") + SMUGGLED, 501),
    reject("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity") + SMUGGLED, 501),
    reject("te-xchunked", post(b"Transfer-Encoding: xchunked") + SMUGGLED, 501),
    reject(
        "te-second-header",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity") + SMUGGLED,
        501,
    ),
    reject(
        "te-repeated-header",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
        501,
    ),
    reject("te-vertical-tab", post(b"Transfer-Encoding: chunked\x0b") + b"0\r\n\r\n" + SMUGGLED),
    reject("te-form-feed", post(b"Transfer-Encoding: \x0cchunked") + b"0\r\n\r\n" + SMUGGLED),
    reject("te-quoted", post(b'Transfer-Encoding: "chunked"') + b"0\r\n\r\n" + SMUGGLED),
    reject("te-empty", post(b"Transfer-Encoding: ", b"Content-Length: 0") + SMUGGLED),
    reject("te-leading-comma", post(b"Transfer-Encoding: , chunked") + b"0\r\n\r\n"),
    reject(
        "te-space-before-colon",
        post(b"Transfer-Encoding : chunked", b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
    ),
    reject(
        "te-tab-before-colon",
        post(b"Transfer-Encoding\t: chunked", b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
    ),
    reject(
        "te-obs-fold",
        post(b"Content-Length: 5", b"Transfer-Encoding:", b" chunked") + b"0\r\n\r\n" + SMUGGLED,
    ),
    reject(
        "te-line-starts-with-space",
        post(b"X-A: a", b" Transfer-Encoding: chunked", b"Content-Length: 5")
        + b"0\r\n\r\n"
        + SMUGGLED,
    ),
    reject(
        "te-underscore-name",
        post(b"Transfer_Encoding: chunked", b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
    ),
    # --- Content-Length forms -------------------------------------------------------------
    reject("cl-2^63", post(b"Content-Length: 9223372036854775808") + SMUGGLED),
    reject("cl-huge", post(b"Content-Length: 99999999999999999999999999999") + SMUGGLED),
    reject("cl-plus-sign", post(b"Content-Length: +5") + b"hello" + SMUGGLED),
    reject("cl-minus-sign", post(b"Content-Length: -1") + SMUGGLED),
    reject("cl-inner-space", post(b"Content-Length: 5 5") + b"hello" + SMUGGLED),
    reject("cl-list-differs", post(b"Content-Length: 5, 46") + b"hello" + SMUGGLED),
    reject(
        "cl-headers-differ",
        post(b"Content-Length: 5", b"Content-Length: 46") + b"hello" + SMUGGLED,
    ),
    reject(
        "cl-same-value-spelled-differently",
        post(b"Content-Length: 5", b"Content-Length: 05") + b"hello" + SMUGGLED,
    ),
    reject("cl-hex", post(b"Content-Length: 0x5") + b"hello" + SMUGGLED),
    reject("cl-decimal-point", post(b"Content-Length: 5.0") + b"hello" + SMUGGLED),
    reject("cl-empty", post(b"Content-Length: ") + SMUGGLED),
    reject("cl-trailing-comma", post(b"Content-Length: 5,") + b"hello" + SMUGGLED),
    reject("cl-underscore-name", post(b"Content_Length: 46") + SMUGGLED),
    reject("cl-space-before-colon", post(b"Content-Length : 46") + SMUGGLED),
    accept("cl-list-same", post(b"Content-Length: 5, 5") + b"hello", b"hello"),
    accept(
        "cl-repeated-same", post(b"Content-Length: 5", b"Content-Length: 5") + b"hello", b"hello"
    ),
    accept("cl-leading-zeros", post(b"Content-Length: 005") + b"hello", b"hello"),
    accept(
        "cl-body-holds-a-request",
        post(b"Content-Length: %d" % len(SMUGGLED)) + SMUGGLED,
        SMUGGLED,
    ),
    # --- chunk-size forms -----------------------------------------------------------------
    reject("chunk-hex-overflow", chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-2^63", chunked(b"8000000000000000\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-0x-prefix", chunked(b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-plus-sign", chunked(b"+5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-leading-space", chunked(b" 5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-space-before-ext", chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-empty-size", chunked(b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-underscore", chunked(b"5_0\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-bare-lf", chunked(b"5\nhello\n0\n\n" + SMUGGLED)),
    reject("chunk-data-longer", chunked(b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-data-shorter", chunked(b"9\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-data-then-lf", chunked(b"5\r\nhello\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-ext-bare-cr", chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-ext-nul", chunked(b"5;a\x00b\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-ext-lf", chunked(b"5;a\n" + SMUGGLED[:-2] + b"hello\r\n0\r\n\r\n")),
    reject("chunk-ext-no-name", chunked(b"5;\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    reject("chunk-ext-too-long", chunked(b"5;a=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n")),
    reject(
        "chunk-ext-flood",  # 1 data byte per ~200 bytes of framing: Go's "too much non-data"
        chunked(b"".join(b"1;e=" + b"x" * 200 + b"\r\nx\r\n" for _ in range(100)) + b"0\r\n\r\n"),
    ),
    reject("trailer-obs-fold", chunked(b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n" + SMUGGLED)),
    reject("trailer-bad-name", chunked(b"5\r\nhello\r\n0\r\nX T: a\r\n\r\n" + SMUGGLED)),
    reject("trailer-bare-lf", chunked(b"5\r\nhello\r\n0\r\nX-T: a\n\n" + SMUGGLED)),
    accept("chunk-extensions", chunked(b'5;a=b;c="d;e"\r\nhello\r\n0;z\r\n\r\n'), b"hello"),
    accept("chunk-upper-hex", chunked(b"A\r\nhellohello\r\n0\r\n\r\n"), b"hellohello"),
    accept("chunk-space-before-crlf", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), b"hello"),
    accept("chunk-trailers-dropped", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), b"hello"),
    accept(
        "chunk-body-holds-a-request",
        chunked(b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"),
        SMUGGLED,
    ),
    accept(
        "te-capitalised",
        post(b"Transfer-Encoding: Chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        b"hello",
    ),
    accept(
        "te-whitespace-around",
        post(b"Transfer-Encoding: \t chunked \t") + b"5\r\nhello\r\n0\r\n\r\n",
        b"hello",
    ),
    # --- header-byte tricks -----------------------------------------------------------------
    reject("nul-in-value", post(b"X-A: a\x00b", b"Content-Length: 5") + b"hello"),
    reject("nul-in-name", post(b"X-\x00A: b") + SMUGGLED),
    reject("ctl-in-value", post(b"X-A: a\x01b") + SMUGGLED),
    reject("del-in-value", post(b"X-A: a\x7fb") + SMUGGLED),
    reject("bare-cr-in-value", post(b"X-A: a\rb") + SMUGGLED),
    reject(
        "bare-cr-ends-line",
        post(b"X-A: a\rTransfer-Encoding: chunked", b"Content-Length: 5") + b"0\r\n\r\n",
    ),
    reject("obs-fold", post(b"X-A: a", b"\tb") + SMUGGLED),
    reject("space-in-name", post(b"X A: b") + SMUGGLED),
    reject("no-colon", post(b"X-A b") + SMUGGLED),
    reject("high-byte-in-name", post(b"X\xffA: b") + SMUGGLED),
    reject("two-hosts", post(b"Host: smuggled.example") + SMUGGLED),
    reject("request-line-double-space", b"GET  /x HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    reject("request-line-tab", b"GET\t/x HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    reject("request-target-nul", b"GET /x\x00 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    reject("http-2.0", b"GET /x HTTP/2.0\r\nHost: example.com\r\n\r\n" + SMUGGLED, 505),
    reject("lowercase-http", b"GET /x http/1.1\r\nHost: example.com\r\n\r\n" + SMUGGLED),
    # --- CONNECT: no tunnels (405), authority-form only, and closed after either ---------
    reject(
        "connect-authority",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + SMUGGLED,
        405,
    ),
    reject("connect-asterisk", b"CONNECT * HTTP/1.1\r\nHost: example.com\r\n\r\n" + SMUGGLED),
    reject("connect-origin-form", b"CONNECT /x HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    reject("get-authority-form", b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    accept(
        "bare-lf-line-ends",
        b"POST /post HTTP/1.1\nHost: example.com\nContent-Length: 5\n\nhello",
        b"hello",
    ),
    accept(
        "mixed-line-ends",
        b"POST /post HTTP/1.1\r\nHost: example.com\nContent-Length: 5\r\n\nhello",
        b"hello",
    ),
    accept("obs-text-in-value", post(b"X-A: caf\xe9", b"Content-Length: 5") + b"hello", b"hello"),
    # --- pipelining: a smuggled request after a good one, or split across reads ----------
    Vector(
        "good-then-cl-te",
        (
            b"GET /first HTTP/1.1\r\nHost: example.com\r\n\r\n"
            + post(b"Content-Length: 5", b"Transfer-Encoding: chunked")
            + b"0\r\n\r\n"
            + SMUGGLED,
        ),
        (200, 400),
        ((b"/first", b""),),
    ),
    Vector(
        "good-then-bad-chunk",
        (chunked(b"0\r\n\r\n") + chunked(b"0x0\r\n\r\n") + SMUGGLED,),
        (200, 400),
        ((b"/post", b""),),
    ),
    Vector(
        "chunked-then-pipelined",
        (chunked(b"5\r\nhello\r\n0\r\n\r\n") + b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n" + LAST,),
        (200, 200, 200),
        ((b"/post", b"hello"), (b"/second", b""), (b"/last", b"")),
    ),
    Vector(
        "bad-chunk-in-a-later-read",  # checked on its way to a target that has the head
        (chunked(b"5\r\nhello\r\n"), b"zz\r\n" + SMUGGLED),
        (400,),
    ),
    Vector(
        "cl-te-in-a-later-read",  # arrives while the first request is being answered
        (
            post(b"Content-Length: 5"),
            b"hello"
            + post(b"Content-Length: 5", b"Transfer-Encoding: chunked", target=b"/x")
            + b"0\r\n\r\n"
            + SMUGGLED,
        ),
        (200, 400),
        ((b"/post", b"hello"),),
    ),
]


@attrs.define(eq=False)
class Recorder:
    """A target that records every byte it receives and every request it parses (then
    answers 200 with the path as the body)."""

    raw: bytearray = attrs.field(factory=bytearray)
    requests: list[Received] = attrs.field(factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                self.raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self.requests.append(
                    Received(request.method, request.target, list(request.headers), body)
                )
                answer = request.target.partition(b"?")[0]
                headers = [(b"content-length", b"%d" % len(answer))]
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=answer)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            else:
                return

    def seen(self) -> list[Received]:
        return [r for r in self.requests if r.target != b"/up"]


async def converse(port: int, parts: tuple[bytes, ...]) -> tuple[bytes, bool]:
    """Send ``parts`` (pausing between them), read until the proxy closes; returns what came
    and whether the proxy closed within the deadline. The client never closes first."""
    received = b""
    with trio.move_on_after(3):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            try:
                for i, part in enumerate(parts):
                    if i:
                        await trio.sleep(0.2)
                    await stream.send_all(part)
            except trio.BrokenResourceError:
                pass  # closed on us mid-send: what was answered is still readable
            while chunk := await stream.receive_some(65536):
                received += chunk
            return received, True
    return received, False


def statuses(data: bytes) -> list[int]:
    """The statuses of the responses in ``data``, in order (h11 checks their framing)."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    found: list[int] = []
    while True:
        conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if isinstance(event, h11.ConnectionClosed):
            break
        assert isinstance(event, h11.Response), event
        found.append(event.status_code)
        while not isinstance(conn.next_event(), h11.EndOfMessage):
            pass
        if conn.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            break
        conn.start_next_cycle()
    return found


def assert_canonical(request: Received) -> None:
    lengths = [v for k, v in request.headers if k == b"content-length"]
    codings = [v for k, v in request.headers if k == b"transfer-encoding"]
    assert len(lengths) + len(codings) <= 1, request.headers
    assert codings in ([], [b"chunked"])
    if lengths:
        assert lengths == [str(len(request.body)).encode()]


def test_the_table_is_large_enough() -> None:
    assert len(VECTORS) >= 40
    assert len({v.id for v in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
@guard(15)
async def test_vector(nursery: trio.Nursery, tmp_path: Path, vector: Vector) -> None:
    recorder = Recorder()
    server = await start_raw_server(nursery, recorder.handle)
    proxy, _ = await start_proxy(nursery, tmp_path, state=False)
    await proxy.deploy("web", DeploymentOptions(targets=(server.address,), target=TargetOptions()))

    data, closed = await converse(proxy.http_port, vector.parts)

    assert closed, f"the proxy left the connection open; got {data!r}"
    assert statuses(data) == list(vector.statuses), data
    if vector.statuses[-1] >= 400:
        assert b"connection: close" in data.lower()
    # Let anything the proxy might still send reach the target before looking.
    await trio.sleep(0.05)
    seen = recorder.seen()
    assert [(r.target, r.body) for r in seen] == list(vector.reaches)
    for request in seen:
        assert_canonical(request)
    assert b"smuggled" not in bytes(recorder.raw).lower() or any(
        SMUGGLED in body for _, body in vector.reaches
    )
    if any(SMUGGLED in body for _, body in vector.reaches):
        # Only ever inside a body the target read with the proxy's framing.
        assert bytes(recorder.raw).count(b"/smuggled") == 1
    assert b";a=b" not in recorder.raw  # chunk extensions are not passed on
    assert b";z" not in recorder.raw


async def test_connect_405_carries_allow(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path, state=False)
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    data, closed = await converse(proxy.http_port, (connect,))
    assert closed
    assert statuses(data) == [405]
    head = data.split(b"\r\n\r\n")[0].lower()
    assert b"\r\nallow: get, head, post, put, patch, delete, options\r\n" in head + b"\r\n"
