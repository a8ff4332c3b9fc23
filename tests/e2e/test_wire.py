"""What a client receives on the wire, byte for byte, for every way a target frames a response.

Both ends are byte-exact. The target is a ``RawServer`` answering each path with bytes written
out in full (``Scripted``), and the client writes raw requests and reads the answers with a
strict reader of its own (``WireClient``). So a regression in what ``kproxy.core.upstream_http``
reads or ``kproxy.core.responses`` writes shows up as a changed byte, not as a lenient parser
letting it pass. The reader checks that kproxy writes chunks as it should: bare lowercase hex
sizes, no extensions, no trailers. Chunk boundaries depend on how reads fell, so bodies are
compared once dechunked.

Every exchange that should leave the connection usable is followed by a request for ``/next``
on the same connection, whose answer must arrive whole and exact (``assert_serves_next``):
a byte too many or too few in the answer before it would show up there.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

from kproxy import DeploymentOptions, Proxy, TargetOptions
from tests.helpers import LogCapture, guard, start_proxy, start_raw_server

GUARD: Final = 5  # seconds per test; each takes well under 2 when kproxy is right
READ_TIMEOUT: Final = 1.0  # seconds a read may wait for an answer (loopback: milliseconds)

NEXT_REQUEST: Final = b"GET /next HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
NEXT_ANSWER: Final = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"
NEXT_ON_THE_WIRE: Final = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnext"

OK: Final = b"HTTP/1.1 200 OK\r\n"
TEXT: Final = b"content-type: text/plain\r\n"
CHUNKED: Final = b"transfer-encoding: chunked\r\n"
CLOSE: Final = b"connection: close\r\n"
MIB: Final = 1024 * 1024  # bytes


# --- the target: exact bytes per path ---------------------------------------------------------


@attrs.frozen
class Answer:
    data: bytes
    close: bool = False  # the target closes its connection once the bytes are sent


@attrs.define(eq=False)
class Scripted:
    """A target that answers each request path with exact bytes; ``/up`` is its health check.

    ``seen`` records ``(connection number, method, path)`` for every other request, so a test
    can tell whether the proxy reused a target connection.
    """

    answers: dict[bytes, Answer]
    seen: list[tuple[int, bytes, bytes]] = attrs.field(factory=list)
    connections: int = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buffer = b""
        while True:  # the proxy's requests here are GET and HEAD: heads only
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if path == b"/up":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nup")
                continue
            self.seen.append((number, method, path))
            answer = self.answers[path]
            await stream.send_all(answer.data)
            if answer.close:
                return

    def requests(self, path: bytes) -> int:
        return sum(1 for _, _, seen_path in self.seen if seen_path == path)

    def reused(self) -> bool:
        """Whether the last two requests went over one target connection."""
        (first, _, _), (second, _, _) = self.seen[-2:]
        return first == second


# --- the client: raw bytes out, a strict reader in --------------------------------------------


# How kproxy writes a head: HTTP/1.1 always, one space around the status, lowercase names,
# ": " before each value. Names are checked as kproxy writes them, not as the RFC allows.
HEAD_AS_WRITTEN: Final = re.compile(
    rb"HTTP/1\.1 [0-9]{3} [^\r\n]*\r\n(?:[a-z0-9-]+: [^\r\n]*\r\n)*\r\n"
)


class Cut(AssertionError):
    """The connection ended before the bytes a reader needed."""


@attrs.frozen
class Wire:
    """One response as it came: the head verbatim, the body with its framing taken off."""

    head: bytes  # status line and fields, through the blank line
    body: bytes
    framing: str  # "none", "length", "chunked" or "close" (RFC 9112 §6.3, as a client reads it)

    @property
    def status(self) -> int:
        return int(self.head[9:12])


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:-2]
    pairs = [line.split(b":", 1) for line in lines]
    return [(name.lower(), value.strip(b" \t")) for name, value in pairs]


@attrs.define(eq=False)
class WireClient:
    stream: trio.SocketStream
    buffer: bytearray = attrs.field(factory=bytearray)
    eof: bool = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        if self.eof:
            raise Cut(f"connection closed; unread: {bytes(self.buffer[:200])!r}")
        with trio.fail_after(READ_TIMEOUT):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset ends the connection as a close does
                data = b""
        self.eof = not data
        self.buffer += data

    def _take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def through(self, marker: bytes) -> bytes:
        """Bytes up to and including ``marker``."""
        while (found := self.buffer.find(marker)) < 0:
            await self._fill()
        return self._take(found + len(marker))

    async def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill()
        return self._take(n)

    async def rest(self) -> bytes:
        """Everything until the proxy closes the connection (a test fails if it stays open)."""
        while not self.eof:
            await self._fill()
        return self._take(len(self.buffer))

    async def head(self) -> bytes:
        head = await self.through(b"\r\n\r\n")
        assert HEAD_AS_WRITTEN.fullmatch(head), head
        return head

    async def chunked(self) -> tuple[bytes, bool]:
        """A chunked body as kproxy writes it, and whether it ended with its last chunk."""
        body = bytearray()
        try:
            while True:
                line = await self.through(b"\r\n")
                assert re.fullmatch(rb"[1-9a-f][0-9a-f]*\r\n|0\r\n", line), line
                size = int(line, 16)
                if size == 0:
                    assert await self.exactly(2) == b"\r\n", "trailers or junk after the last chunk"
                    return bytes(body), True
                body += await self.exactly(size)
                assert await self.exactly(2) == b"\r\n"
        except Cut:
            return bytes(body), False

    async def response(self, method: bytes = b"GET") -> Wire:
        """The next response, read by its framing; a chunked body must be complete."""
        head = await self.head()
        status = int(head[9:12])
        names = dict(fields(head))
        if method == b"HEAD" or status < 200 or status in (204, 304):
            return Wire(head, b"", "none")
        if b"transfer-encoding" in names:
            assert names[b"transfer-encoding"] == b"chunked", head
            assert b"content-length" not in names, head
            body, complete = await self.chunked()
            assert complete, f"chunked body cut off after {len(body)} bytes"
            return Wire(head, body, "chunked")
        if b"content-length" in names:
            return Wire(head, await self.exactly(int(names[b"content-length"])), "length")
        return Wire(head, await self.rest(), "close")

    async def assert_idle(self) -> None:
        """Nothing arrived beyond the responses read (bytes sent after a bodiless answer)."""
        assert not self.buffer, bytes(self.buffer)
        with trio.move_on_after(0.05):
            await self._fill()
        assert not self.buffer, bytes(self.buffer)


async def assert_serves_next(client: WireClient) -> None:
    """The connection carries another request, whose answer arrives exactly, then the close it
    asked for: a stray byte left by the response before would break either."""
    await client.assert_idle()
    await client.send(NEXT_REQUEST)
    assert await client.rest() == NEXT_ON_THE_WIRE


async def assert_next_follows(client: WireClient, *, pipelined: bool) -> None:
    """``assert_serves_next``, or with ``pipelined`` (``/next`` was sent with the first request,
    in one write) only the check that its answer follows, exactly."""
    if pipelined:
        assert await client.rest() == NEXT_ON_THE_WIRE
    else:
        await assert_serves_next(client)


PIPELINED: Final = pytest.mark.parametrize(
    "pipelined", [False, True], ids=["sequential", "pipelined"]
)


@attrs.frozen
class Rig:
    proxy: Proxy
    target: Scripted
    logs: LogCapture

    async def connect(self) -> WireClient:
        return WireClient(await trio.open_tcp_stream("127.0.0.1", self.proxy.http_port))


async def start_rig(
    nursery: trio.Nursery, tmp_path: Path, answers: dict[bytes, Answer], **target: Any
) -> Rig:
    """A proxy whose service "web" is a Scripted target (which also answers ``/next``)."""
    scripted = Scripted({**answers, b"/next": Answer(NEXT_ANSWER)})
    server = await start_raw_server(nursery, scripted.serve)
    proxy, logs = await start_proxy(nursery, tmp_path)
    options = DeploymentOptions(targets=(server.address,), target=TargetOptions(**target))
    await proxy.deploy("web", options)
    return Rig(proxy, scripted, logs)


def get(path: bytes, version: bytes = b"1.1", method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/%s\r\nhost: a\r\n\r\n" % (method, path, version)


# --- HTTP/1.1 clients: every framing a target may use -----------------------------------------


@attrs.frozen
class Case:
    target: bytes  # the target's whole answer
    head: bytes  # the head the client must receive, exactly
    body: bytes
    framing: str
    reused: bool  # the target connection carries the next request
    close: bool = False  # the target closes after its answer
    method: bytes = b"GET"


HTTP11_CASES: Final = [
    pytest.param(
        Case(OK + TEXT + b"content-length: 5\r\n\r\nhello",
             OK + TEXT + b"content-length: 5\r\n\r\n", b"hello", "length", reused=True),
        id="content-length",
    ),
    pytest.param(
        Case(OK + b"content-length: 0\r\n\r\n", OK + b"content-length: 0\r\n\r\n", b"",
             "length", reused=True),
        id="content-length-0",
    ),
    pytest.param(
        # Extensions and trailers are the target's: kproxy re-chunks the data and drops both,
        # and with the trailers the Trailer field that announced them (as with h11).
        Case(OK + TEXT + CHUNKED + b"trailer: x-sum\r\n\r\n"
             b'5;ext=1\r\nhello\r\n6;q="a;b" \r\n world\r\n0;last\r\nx-sum: abc\r\n\r\n',
             OK + TEXT + CHUNKED + b"\r\n", b"hello world", "chunked", reused=True),
        id="chunked-extensions-trailers",
    ),
    pytest.param(
        Case(OK + CHUNKED + b"\r\n0\r\n\r\n", OK + CHUNKED + b"\r\n", b"", "chunked", reused=True),
        id="chunked-empty",
    ),
    pytest.param(
        # Transfer-Encoding is hop-by-hop: kproxy appends its own after the other fields.
        Case(b"HTTP/1.1 200 OK\r\n" + CHUNKED + TEXT + b"\r\n5\r\nhello\r\n0\r\n\r\n",
             OK + TEXT + CHUNKED + b"\r\n", b"hello", "chunked", reused=True),
        id="chunked-field-moves-last",
    ),
    pytest.param(
        Case(b"HTTP/1.0 200 OK\r\n" + TEXT + b"\r\nuntil close", OK + TEXT + CHUNKED + b"\r\n",
             b"until close", "chunked", reused=False, close=True),
        id="http10-target-until-close",
    ),
    pytest.param(
        Case(OK + TEXT + b"\r\nuntil close", OK + TEXT + CHUNKED + b"\r\n", b"until close",
             "chunked", reused=False, close=True),
        id="http11-target-until-close",
    ),
    pytest.param(
        # RFC 9112 §6.3 item 3: chunked wins, the length must not be forwarded, and the target
        # connection (a sign of a confused sender, or of smuggling) is not used again.
        Case(OK + b"content-length: 100\r\n" + CHUNKED + b"\r\n5\r\nhello\r\n0\r\n\r\n",
             OK + CHUNKED + b"\r\n", b"hello", "chunked", reused=False),
        id="chunked-and-content-length",
    ),
    pytest.param(
        # The target keeps its connection open after all: only the proxy's not reusing it
        # shows that "close" was heard (RFC 9112 §9.6), and it is not passed to the client.
        Case(OK + b"connection: close\r\ncontent-length: 5\r\n\r\nhello",
             OK + b"content-length: 5\r\n\r\n", b"hello", "length", reused=False),
        id="target-connection-close-stays-upstream",
    ),
    pytest.param(
        # HTTP/1.0 without keep-alive: one response per connection (RFC 9112 §9.3).
        Case(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
             OK + b"content-length: 5\r\n\r\n", b"hello", "length", reused=False),
        id="http10-target-content-length",
    ),
    pytest.param(
        Case(OK + b"connection: keep-alive, x-private\r\nkeep-alive: timeout=5\r\n"
             b"x-private: secret\r\nproxy-authenticate: Basic\r\nx-public: kept\r\n"
             b"content-length: 2\r\n\r\nok",
             OK + b"x-public: kept\r\ncontent-length: 2\r\n\r\n", b"ok", "length", reused=True),
        id="hop-by-hop-fields-dropped",
    ),
    pytest.param(
        Case(OK + b"set-cookie: a=1\r\nx-pad: \t spaced  value \t\r\nset-cookie: b=2\r\n"
             b"content-length: 2\r\n\r\nok",
             OK + b"set-cookie: a=1\r\nx-pad: spaced  value\r\nset-cookie: b=2\r\n"
             b"content-length: 2\r\n\r\n", b"ok", "length", reused=True),
        id="field-order-and-whitespace",
    ),
    pytest.param(
        # Names are case-insensitive (RFC 9110 §5.1); kproxy writes them lowercase, as h11 did.
        Case(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCONTENT-LENGTH: 2\r\n\r\nok",
             OK + TEXT + b"content-length: 2\r\n\r\n", b"ok", "length", reused=True),
        id="field-names-lowercased",
    ),
    pytest.param(
        # Bare LF line ends in the head are accepted (RFC 9112 §2.2 MAY, as h11 and Go do).
        Case(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", OK + b"content-length: 2\r\n\r\n",
             b"ok", "length", reused=True),
        id="bare-lf-head",
    ),
    pytest.param(
        # More than the length said: the extra bytes are no response, never the client's, and
        # a connection holding them is not reused.
        Case(OK + b"content-length: 2\r\n\r\nokEXTRA", OK + b"content-length: 2\r\n\r\n", b"ok",
             "length", reused=False),
        id="bytes-past-content-length",
    ),
]  # fmt: skip


@PIPELINED
@pytest.mark.parametrize("case", HTTP11_CASES)
@guard(GUARD)
async def test_http11_client(
    nursery: trio.Nursery, tmp_path: Path, case: Case, pipelined: bool
) -> None:
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(case.target, case.close)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", method=case.method) + (NEXT_REQUEST if pipelined else b""))
        got = await client.response(case.method)
        assert (got.head, got.body, got.framing) == (case.head, case.body, case.framing)
        await assert_next_follows(client, pipelined=pipelined)
    assert rig.target.reused() is case.reused


def chunk_up(data: bytes) -> bytes:
    """``data`` chunked in sizes from 1 byte to over 64 KiB, some chunks with an extension."""
    sizes = [1, 15, 4096, 65536, 70001, 3]
    out, offset, index = bytearray(), 0, 0
    while offset < len(data):
        piece = data[offset : offset + sizes[index % len(sizes)]]
        extension = b";n=%d" % index if index % 2 else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        offset, index = offset + len(piece), index + 1
    return bytes(out + b"0\r\n\r\n")


LARGE_BODY: Final = random.Random(9112).randbytes(MIB)


@pytest.mark.parametrize(
    ("version", "buffered", "head"),
    [
        pytest.param("1.1", False, OK + CHUNKED + b"\r\n", id="http11"),
        pytest.param("1.0", False, OK + b"connection: close\r\n\r\n", id="http10"),
        # A chunked body streams even with --buffer-responses.
        pytest.param("1.1", True, OK + CHUNKED + b"\r\n", id="http11-buffered"),
    ],
)
@guard(GUARD)
async def test_megabyte_chunked_body_arrives_intact(
    nursery: trio.Nursery, tmp_path: Path, version: str, buffered: bool, head: bytes
) -> None:
    answer = Answer(OK + CHUNKED + b"\r\n" + chunk_up(LARGE_BODY))
    rig = await start_rig(nursery, tmp_path, {b"/big": answer}, buffer_responses=buffered)
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/big", version.encode()))
        got = await client.response()
        assert got.head == head
        assert len(got.body) == MIB
        assert got.body == LARGE_BODY
        if version == "1.1":
            await assert_serves_next(client)
        else:
            assert got.framing == "close"


# --- HTTP/1.0 clients: no chunked framing, one answer per connection --------------------------


@pytest.mark.parametrize(
    ("target", "close", "expected"),
    [
        pytest.param(
            OK + TEXT + CHUNKED + b"\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
            False,
            OK + TEXT + CLOSE + b"\r\nhello world",
            id="chunked-target",
        ),
        pytest.param(
            OK + TEXT + b"content-length: 5\r\n\r\nhello",
            False,
            OK + TEXT + b"content-length: 5\r\n" + CLOSE + b"\r\nhello",
            id="content-length-target",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\n" + TEXT + b"\r\nuntil close",
            True,
            OK + TEXT + CLOSE + b"\r\nuntil close",
            id="until-close-target",
        ),
        pytest.param(
            OK + b"content-length: 1\r\n" + CHUNKED + b"\r\n2\r\nok\r\n0\r\n\r\n",
            False,
            OK + CLOSE + b"\r\nok",
            id="chunked-and-content-length-target",
        ),
    ],
)
@guard(GUARD)
async def test_http10_client(
    nursery: trio.Nursery, tmp_path: Path, target: bytes, close: bool, expected: bytes
) -> None:
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(target, close)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", b"1.0"))
        # The whole exchange, byte for byte, and then the close (rest() fails if none comes).
        assert await client.rest() == expected


# --- HEAD, 204 and 304: heads only --------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param(
            OK + TEXT + b"content-length: 1234\r\n\r\n",
            OK + TEXT + b"content-length: 1234\r\n\r\n",
            id="content-length-kept",
        ),
        pytest.param(OK + TEXT + CHUNKED + b"\r\n", OK + TEXT + CHUNKED + b"\r\n", id="chunked"),
        pytest.param(
            # No framing: a GET would get a chunked body, so the HEAD answer says so (as h11).
            OK + TEXT + b"\r\n",
            OK + TEXT + CHUNKED + b"\r\n",
            id="no-framing-fields",
        ),
    ],
)
@PIPELINED
@guard(GUARD)
async def test_head_gets_no_body(
    nursery: trio.Nursery, tmp_path: Path, target: bytes, expected: bytes, pipelined: bool
) -> None:
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(target)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", method=b"HEAD") + (NEXT_REQUEST if pipelined else b""))
        assert await client.head() == expected
        # A body's bytes would be read as the next status line.
        await assert_next_follows(client, pipelined=pipelined)
    assert rig.target.seen[0][1] == b"HEAD"
    assert rig.target.reused()  # a HEAD answer ends with its head (RFC 9112 §6.3 item 1)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
        pytest.param(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n", id="204-cl"),
        pytest.param(b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n', id="304"),
        pytest.param(
            b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\ncontent-length: 1234\r\n\r\n',
            id="304-cl",
        ),
    ],
)
@PIPELINED
@guard(GUARD)
async def test_bodiless_status(
    nursery: trio.Nursery, tmp_path: Path, target: bytes, pipelined: bool
) -> None:
    """Passed on as they came: no body, and no framing field added or taken away (a 304's
    Content-Length describes the representation, RFC 9110 §8.6)."""
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(target)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case") + (NEXT_REQUEST if pipelined else b""))
        assert await client.head() == target
        await assert_next_follows(client, pipelined=pipelined)
    assert rig.target.reused()


@guard(GUARD)
async def test_bytes_after_a_204_go_nowhere(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A target that sends a body after 204 anyway: the client gets the head alone, and the
    target connection, holding bytes that start no response, is not reused."""
    target = b"HTTP/1.1 204 No Content\r\n\r\n"
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(target + b"junk")})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case"))
        assert await client.head() == target
        await assert_serves_next(client)
    assert not rig.target.reused()


# --- 1xx ----------------------------------------------------------------------------------------

EARLY_HINTS: Final = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"
FINAL: Final = OK + b"content-length: 2\r\n\r\nok"


@guard(GUARD)
async def test_early_hints_reach_http11_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(EARLY_HINTS * 2 + FINAL)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case"))
        assert await client.response() == Wire(EARLY_HINTS, b"", "none")
        assert await client.response() == Wire(EARLY_HINTS, b"", "none")
        final = await client.response()
        assert (final.head, final.body) == (OK + b"content-length: 2\r\n\r\n", b"ok")
        await assert_serves_next(client)


@guard(GUARD)
async def test_early_hints_withheld_from_http10_client(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """HTTP/1.0 has no 1xx: a server must not send one to a 1.0 client (RFC 9110 §15.2)."""
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(EARLY_HINTS + FINAL)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", b"1.0"))
        assert await client.rest() == OK + b"content-length: 2\r\n" + CLOSE + b"\r\nok"


@guard(GUARD)
async def test_unasked_100_continue_is_not_relayed(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A 100 to a request that sent no ``Expect: 100-continue`` answers nothing it asked."""
    answer = Answer(b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL)
    rig = await start_rig(nursery, tmp_path, {b"/case": answer})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case"))
        final = await client.response()
        assert (final.head, final.body) == (OK + b"content-length: 2\r\n\r\n", b"ok")
        await assert_serves_next(client)


# --- reason phrases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_line", "expected"),
    [
        pytest.param(b"HTTP/1.1 200 Fine", b"HTTP/1.1 200 Fine", id="custom"),
        pytest.param(b"HTTP/1.1 404 Nope, not here", b"HTTP/1.1 404 Nope, not here", id="404"),
        pytest.param(b"HTTP/1.1 200 D\xe9j\xe0 vu", b"HTTP/1.1 200 D\xe9j\xe0 vu", id="obs-text"),
        # No reason at all: kproxy writes the standard one.
        pytest.param(b"HTTP/1.1 200 ", b"HTTP/1.1 200 OK", id="empty"),
        pytest.param(b"HTTP/1.1 200", b"HTTP/1.1 200 OK", id="absent"),
        pytest.param(b"HTTP/1.1 599", b"HTTP/1.1 599 ", id="absent-no-standard-phrase"),
    ],
)
@guard(GUARD)
async def test_target_reason_phrase(
    nursery: trio.Nursery, tmp_path: Path, status_line: bytes, expected: bytes
) -> None:
    answer = Answer(status_line + b"\r\ncontent-length: 2\r\n\r\nok")
    rig = await start_rig(nursery, tmp_path, {b"/case": answer})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case"))
        got = await client.response()
        assert (got.head, got.body) == (expected + b"\r\ncontent-length: 2\r\n\r\n", b"ok")
        await assert_serves_next(client)


@guard(GUARD)
async def test_own_404_has_standard_reason(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)  # no service: every host is unknown
    client = WireClient(await trio.open_tcp_stream("127.0.0.1", proxy.http_port))
    async with client.stream:
        for _ in range(2):  # the connection carries a second request after the first 404
            await client.send(b"GET /x HTTP/1.1\r\nhost: nobody.test\r\n\r\n")
            got = await client.response()
            assert got.head.startswith(b"HTTP/1.1 404 Not Found\r\n")
            assert (got.framing, got.body[:15].lower()) == ("length", b"<!doctype html>")
        await client.assert_idle()


# --- targets that break their framing ---------------------------------------------------------

SHORT: Final = OK + b"content-length: 100\r\n\r\npart."


@pytest.mark.parametrize(
    ("version", "target", "close", "head", "received"),
    [
        pytest.param(
            "1.1", SHORT, True, OK + b"content-length: 100\r\n\r\n", b"part.",
            id="content-length-short",
        ),
        pytest.param(
            "1.1", OK + CHUNKED + b"\r\n5\r\nhello\r\n3\r\nab", True, OK + CHUNKED + b"\r\n",
            b"helloab", id="chunked-closed-mid-chunk",
        ),
        pytest.param(
            "1.1", OK + CHUNKED + b"\r\n5\r\nhello\r\n", True, OK + CHUNKED + b"\r\n", b"hello",
            id="chunked-closed-between-chunks",
        ),
        pytest.param(
            "1.1", OK + CHUNKED + b"\r\n5\r\nhello\r\n0\r\nx-sum: a", True,
            OK + CHUNKED + b"\r\n", b"hello", id="chunked-closed-in-trailers",
        ),
        pytest.param(
            "1.1", OK + CHUNKED + b"\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n", False,
            OK + CHUNKED + b"\r\n", b"hello", id="chunk-size-not-hex",
        ),
        pytest.param(
            "1.1", OK + CHUNKED + b"\r\n5\r\nhelloXX0\r\n\r\n", False, OK + CHUNKED + b"\r\n",
            b"hello", id="chunk-data-without-crlf",
        ),
        pytest.param(
            "1.1", OK + CHUNKED + b"\r\n5\r\nhello\r\n2\nok\r\n0\r\n\r\n", False,
            OK + CHUNKED + b"\r\n", b"hello", id="chunk-line-bare-lf",
        ),
        pytest.param(
            # The target's length stays, so the 1.0 client sees the body come up short.
            "1.0", SHORT, True, OK + b"content-length: 100\r\n" + CLOSE + b"\r\n", b"part.",
            id="http10-content-length-short",
        ),
        pytest.param(
            # Until-close framing has no end to leave out: only a reset could tell the client
            # (RFC 9112 §8), and kproxy closes plainly, as Go's server (so kamal-proxy) does
            # after ReverseProxy's ErrAbortHandler panic. A reset would pass here too.
            "1.0", OK + CHUNKED + b"\r\n5\r\nhello\r\nzz\r\n", False, OK + CLOSE + b"\r\n",
            b"hello", id="http10-chunk-size-not-hex",
        ),
    ],
)  # fmt: skip
@guard(GUARD)
async def test_target_breaking_framing_cuts_client(
    nursery: trio.Nursery,
    tmp_path: Path,
    version: str,
    target: bytes,
    close: bool,
    head: bytes,
    received: bytes,
) -> None:
    """What came before the break is the client's; then the connection is cut, so a client
    never takes the truncated body for a whole one (no last chunk, fewer bytes than the
    length; RFC 9112 §8)."""
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(target, close)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", version.encode()))
        assert await client.head() == head
        if b"chunked" in head:
            assert await client.chunked() == (received, False)
        else:
            assert await client.rest() == received
        assert client.eof
    assert "broke off" in str(rig.logs.records("Proxy error")[-1]["error"])
    client = await rig.connect()
    async with client.stream:  # the proxy serves on (over a new target connection)
        await assert_serves_next(client)


BIG_FIELD: Final = b"x-big: " + b"a" * MIB + b"\r\n"


@pytest.mark.parametrize(
    ("target", "close"),
    [
        pytest.param(b"HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n", False, id="status-099"),
        pytest.param(b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n", False, id="status-4-digits"),
        pytest.param(b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n", False, id="version-2"),
        pytest.param(
            OK + b"x-long: a\r\n  folded\r\ncontent-length: 0\r\n\r\n", False, id="obs-fold"
        ),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", False, id="garbage"),
        pytest.param(OK + BIG_FIELD + b"content-length: 0\r\n\r\n", False, id="head-over-1mib"),
        pytest.param(OK + b"transfer-encoding: gzip\r\n\r\nxxx", True, id="te-gzip"),
        pytest.param(
            OK + b"transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", False, id="te-gzip-chunked"
        ),
        pytest.param(
            OK + b"content-length: 5\r\ncontent-length: 6\r\n\r\nhello!", False, id="cl-conflict"
        ),
        pytest.param(OK + b"content-length: -1\r\n\r\n", False, id="cl-negative"),
        pytest.param(OK + b"content-length : 2\r\n\r\nok", False, id="space-before-colon"),
        pytest.param(OK + b"x-a: b\x00c\r\ncontent-length: 0\r\n\r\n", False, id="nul-in-value"),
        pytest.param(OK + b"content-len", True, id="closed-mid-head"),
        pytest.param(b"", True, id="closed-without-a-byte"),
    ],
)
@guard(GUARD)
async def test_malformed_target_head_is_502(
    nursery: trio.Nursery, tmp_path: Path, target: bytes, close: bool
) -> None:
    rig = await start_rig(nursery, tmp_path, {b"/case": Answer(target, close)})
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case"))
        got = await client.response()
        assert got.head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), got.head
        assert (got.framing, got.body[:15].lower()) == ("length", b"<!doctype html>")
        await assert_serves_next(client)  # the proxy serves on, on the same client connection
    assert rig.target.requests(b"/case") == 1  # the target may have acted on it: no retry


# --- Content-Length values: one plain number reaches the client, or a 502 -----------------------


@pytest.mark.parametrize(
    ("method", "target", "allowed", "buffered"),
    [
        pytest.param(b"GET", OK + b"content-length: 0005\r\n\r\nhello", ([b"0005"], [b"5"]),
                     False, id="leading-zeros"),
        pytest.param(b"HEAD", OK + b"content-length: 1234\r\n\r\n", ([b"1234"],), False,
                     id="head"),
        pytest.param(b"GET", OK + b"content-length: 5, 5\r\n\r\nhello", ([b"5"],), False,
                     id="list"),
        pytest.param(b"GET", OK + b"content-length: 5, 5\r\n\r\nhello", ([b"5"],), True,
                     id="list-buffered"),
        pytest.param(b"GET", OK + b"content-length: 5\r\ncontent-length: 5\r\n\r\nhello",
                     ([b"5"],), False, id="duplicate-fields"),
        pytest.param(b"HEAD", OK + b"content-length: 5, 5\r\n\r\n", ([b"5"], []), False,
                     id="head-list"),
        pytest.param(b"HEAD", OK + b"content-length: abc\r\n\r\n", ([],), False,
                     id="head-not-a-number"),
        pytest.param(b"HEAD", OK + b"content-length: -1\r\n\r\n", ([],), False,
                     id="head-negative"),
    ],
)  # fmt: skip
@guard(GUARD)
async def test_content_length_reaches_client_single_and_valid(
    nursery: trio.Nursery,
    tmp_path: Path,
    method: bytes,
    target: bytes,
    allowed: tuple[list[bytes], ...],
    buffered: bool,
) -> None:
    """A Content-Length the client gets is one plain number; a value the proxy cannot relay
    as one may instead get a 502 (RFC 9112 §6.3 item 5, and what Go's transport does)."""
    # The proxy runs in a nursery of the test's own, so its crash fails this test's call.
    async with trio.open_nursery() as proxy_nursery:
        answers = {b"/case": Answer(target)}
        rig = await start_rig(proxy_nursery, tmp_path, answers, buffer_responses=buffered)
        client = await rig.connect()
        async with client.stream:
            await client.send(get(b"/case", method=method))
            got = await client.response(method)
            if got.status != 502:
                lengths = [value for name, value in fields(got.head) if name == b"content-length"]
                assert got.status == 200
                assert lengths in allowed
                assert got.body == (b"" if method == b"HEAD" else b"hello")
            await assert_serves_next(client)
        proxy_nursery.cancel_scope.cancel()


# --- --buffer-responses -------------------------------------------------------------------------

BUFFERED_CASES: Final = [
    pytest.param(
        # The whole body is at hand: it gets a length, and the client connection stays usable.
        Case(b"HTTP/1.0 200 OK\r\n" + TEXT + b"\r\nuntil close",
             OK + TEXT + b"content-length: 11\r\n\r\n", b"until close", "length", reused=False,
             close=True),
        id="until-close-gets-length",
    ),
    pytest.param(
        Case(OK + TEXT + b"content-length: 5\r\n\r\nhello",
             OK + TEXT + b"content-length: 5\r\n\r\n", b"hello", "length", reused=True),
        id="content-length",
    ),
    pytest.param(
        Case(OK + TEXT + CHUNKED + b"\r\n5;e=1\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
             OK + TEXT + CHUNKED + b"\r\n", b"hello", "chunked", reused=True),
        id="chunked-streams",
    ),
    pytest.param(
        Case(OK + b"content-length: 100\r\n" + CHUNKED + b"\r\n5\r\nhello\r\n0\r\n\r\n",
             OK + CHUNKED + b"\r\n", b"hello", "chunked", reused=False),
        id="chunked-and-content-length",
    ),
    pytest.param(
        Case(OK + TEXT + b"content-length: 1234\r\n\r\n",
             OK + TEXT + b"content-length: 1234\r\n\r\n", b"", "none", reused=True,
             method=b"HEAD"),
        id="head-content-length",
    ),
    pytest.param(
        Case(b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n", b"", "none",
             reused=True),
        id="204",
    ),
    pytest.param(
        Case(b"HTTP/1.1 200 Fine\r\n" + TEXT + b"\r\nbody", b"HTTP/1.1 200 Fine\r\n" + TEXT +
             b"content-length: 4\r\n\r\n", b"body", "length", reused=False, close=True),
        id="custom-reason",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", BUFFERED_CASES)
@guard(GUARD)
async def test_buffered_http11_client(nursery: trio.Nursery, tmp_path: Path, case: Case) -> None:
    answers = {b"/case": Answer(case.target, case.close)}
    rig = await start_rig(nursery, tmp_path, answers, buffer_responses=True)
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", method=case.method))
        got = await client.response(case.method)
        assert (got.head, got.body, got.framing) == (case.head, case.body, case.framing)
        await assert_serves_next(client)
    assert rig.target.reused() is case.reused


@guard(GUARD)
async def test_buffered_http10_client_gets_length(nursery: trio.Nursery, tmp_path: Path) -> None:
    target = b"HTTP/1.0 200 OK\r\n" + TEXT + b"\r\nuntil close"
    answers = {b"/case": Answer(target, close=True)}
    rig = await start_rig(nursery, tmp_path, answers, buffer_responses=True)
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case", b"1.0"))
        expected = OK + TEXT + b"content-length: 11\r\n" + CLOSE + b"\r\nuntil close"
        assert await client.rest() == expected


@guard(GUARD)
async def test_buffered_target_breaking_off_is_a_clean_502(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Nothing reached the client before the body was whole, so a target that breaks off gets
    a 502 on a connection that carries on, not a cut one."""
    target = OK + b"content-length: 100\r\n\r\npart."
    answers = {b"/case": Answer(target, close=True)}
    rig = await start_rig(nursery, tmp_path, answers, buffer_responses=True)
    client = await rig.connect()
    async with client.stream:
        await client.send(get(b"/case"))
        got = await client.response()
        assert got.head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), got.head
        assert b"part." not in got.body
        await assert_serves_next(client)
