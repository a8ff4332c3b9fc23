"""kproxy.core.upstream_http: request heads written as bytes, responses read as events, in tables.

Every response table runs fed byte by byte, in 7-byte pieces and all at once: where a feed
happens to split the bytes must change nothing but how the body is cut into pieces.
"""

from __future__ import annotations

import h11
import pytest

from kproxy.core.chunked import LAST_CHUNK, MAX_CHUNK_LINE, MAX_TRAILER_BYTES, encode_chunk
from kproxy.core.headers import strip_response_hop_by_hop
from kproxy.core.response_head import BadResponse, Framing
from kproxy.core.upstream_http import (
    CLOSED,
    END,
    MAX_HEAD_BYTES,
    NEED_DATA,
    Event,
    ResponseHead,
    ResponseReader,
    encode_request_head,
)
from kproxy.errors import ProtocolError

Header = tuple[bytes, bytes]
AT_ONCE = 1 << 30
STEPS = pytest.mark.parametrize("step", [1, 7, AT_ONCE], ids=["bytewise", "by-7", "at-once"])


def response(*lines: bytes, status_line: bytes = b"HTTP/1.1 200 OK", body: bytes = b"") -> bytes:
    return b"".join(line + b"\r\n" for line in (status_line, *lines)) + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    return response(b"Transfer-Encoding: chunked", body=body)


def drive(
    data: bytes,
    step: int = AT_ONCE,
    *,
    eof: bool = True,
    head_request: bool = False,
    max_head_bytes: int = MAX_HEAD_BYTES,
) -> tuple[list[Event], ResponseReader]:
    """Feed ``data`` in pieces of ``step`` bytes (then EOF), taking every event after each feed.

    Events stop at END, CLOSED or a 101 head (what follows a 101 is another protocol), but
    every byte is still fed, so what was not read shows in ``trailing``. NEED_DATA itself is
    never recorded.
    """
    reader = ResponseReader(head_request=head_request, max_head_bytes=max_head_bytes)
    events: list[Event] = []
    finished = False
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    for piece in [*pieces, b""] if eof else pieces:
        reader.feed(piece)
        while not finished and (event := reader.next_event()) is not NEED_DATA:
            events.append(event)
            finished = event is END or event is CLOSED
            finished |= isinstance(event, ResponseHead) and event.status == 101
    return events, reader


def summary(events: list[Event]) -> list[object]:
    """Heads as their status, adjacent body pieces joined (an empty piece stays visible)."""
    out: list[object] = []
    for event in events:
        if isinstance(event, ResponseHead):
            out.append(event.status)
        elif isinstance(event, bytes) and event and out and isinstance(out[-1], bytes) and out[-1]:
            out[-1] += event
        else:
            out.append(event)
    return out


def head_of(data: bytes, *, head_request: bool = False) -> ResponseHead:
    events, _ = drive(data, eof=False, head_request=head_request)
    assert isinstance(events[0], ResponseHead), events
    return events[0]


def failure(data: bytes, step: int = AT_ONCE, *, max_head_bytes: int = MAX_HEAD_BYTES) -> str:
    """The BadResponse message for ``data`` (then EOF); fails the test if the reader accepts it."""
    with pytest.raises(BadResponse) as info:
        drive(data, step, max_head_bytes=max_head_bytes)
    return str(info.value)


# --- encode_request_head, encode_chunk -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "headers", "expected"),
    [
        pytest.param(b"GET", b"/", [], b"GET / HTTP/1.1\r\n\r\n", id="no-fields"),
        pytest.param(
            b"POST",
            b"/x?y=1",
            [(b"host", b"a"), (b"content-length", b"5")],
            b"POST /x?y=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n",
            id="fields-in-order",
        ),
        pytest.param(
            b"GET",
            b"*",
            [(b"X-A", b""), (b"x-a", b"1, 2"), (b"X-A", b"caf\xe9")],
            b"GET * HTTP/1.1\r\nX-A: \r\nx-a: 1, 2\r\nX-A: caf\xe9\r\n\r\n",
            id="as-given",  # names keep their case, repeats stay, nothing is re-checked
        ),
    ],
)
def test_encode_request_head(
    method: bytes, target: bytes, headers: list[Header], expected: bytes
) -> None:
    assert encode_request_head(method, target, headers) == expected
    assert encode_request_head(method, target, iter(headers)) == expected  # any iterable


def test_encoded_request_head_reads_back_in_h11() -> None:
    fields = [(b"host", b"a"), (b"x-a", b"1"), (b"x-a", b"2"), (b"transfer-encoding", b"chunked")]
    server = h11.Connection(h11.SERVER)
    server.receive_data(encode_request_head(b"PUT", b"/p?q", fields))
    server.receive_data(encode_chunk(b"hello") + encode_chunk(b"") + LAST_CHUNK)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target, list(request.headers)) == (b"PUT", b"/p?q", fields)
    data = server.next_event()
    assert isinstance(data, h11.Data)
    assert bytes(data.data) == b"hello"
    assert isinstance(server.next_event(), h11.EndOfMessage)


def test_encoded_chunks_read_back() -> None:
    pieces = [b"a", b"", b"\r\n0\r\n\r\n", b"z" * 300]
    body = b"".join(encode_chunk(p) for p in pieces) + LAST_CHUNK
    assert LAST_CHUNK == b"0\r\n\r\n"
    events, reader = drive(chunked(body))
    assert summary(events) == [200, b"".join(pieces), END]
    assert reader.trailing == b""


# --- status lines -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        pytest.param(b"HTTP/1.1 200 OK", 200, b"OK", id="ok"),
        pytest.param(b"HTTP/1.1 200", 200, b"", id="no-reason"),
        pytest.param(b"HTTP/1.1 200 ", 200, b"", id="empty-reason"),
        pytest.param(b"HTTP/1.1 404 Not  Found ", 404, b"Not  Found ", id="reason-as-sent"),
        pytest.param(b"HTTP/1.1 200  OK", 200, b" OK", id="reason-leading-space"),
        pytest.param(b"HTTP/1.1 200 \tcaf\xe9", 200, b"\tcaf\xe9", id="reason-tab-obs-text"),
        pytest.param(b"HTTP/1.0 200 OK", 200, b"OK", id="http-1.0"),
        pytest.param(b"HTTP/1.1 599 Custom", 599, b"Custom", id="599"),
    ],
)
def test_status_line(status_line: bytes, status: int, reason: bytes) -> None:
    head = head_of(response(b"Content-Length: 0", status_line=status_line))
    assert (head.status, head.reason) == (status, reason)


@pytest.mark.parametrize(
    "status_line",
    [
        pytest.param(b"HTTP/2.0 200 OK", id="http-2.0"),
        pytest.param(b"HTTP/2 200 OK", id="http-2"),
        pytest.param(b"HTTP/0.9 200 OK", id="http-0.9"),
        pytest.param(b"HTTP/1.10 200 OK", id="two-digit-minor"),
        pytest.param(b"http/1.1 200 OK", id="lowercase-name"),
        pytest.param(b"ICY 200 OK", id="icy"),
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"HTTP/1.1 20 OK", id="two-digit-status"),
        pytest.param(b"HTTP/1.1 2000 OK", id="four-digit-status"),
        pytest.param(b"HTTP/1.1 abc OK", id="letters-status"),
        pytest.param(b"HTTP/1.1 200OK", id="no-space-before-reason"),
        pytest.param(b"HTTP/1.1  200 OK", id="two-spaces"),
        pytest.param(b"HTTP/1.1\t200 OK", id="tab"),
        pytest.param(b" HTTP/1.1 200 OK", id="leading-space"),
        pytest.param(b"HTTP/1.1 200 O\x00K", id="nul-in-reason"),
        pytest.param(b"HTTP/1.1 200 O\x7fK", id="del-in-reason"),
        pytest.param(b"HTTP/1.1 200 O\rK", id="cr-in-reason"),
        pytest.param(b"", id="empty-line"),  # a response that starts with a blank line
    ],
)
@STEPS
def test_bad_status_line(status_line: bytes, step: int) -> None:
    data = response(b"Content-Length: 0", status_line=status_line)
    assert "malformed status line" in failure(data, step)


# --- header fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        pytest.param(
            response(b"Content-Type: text/plain", b"X-MiXeD: v", b"CONTENT-length: 9"),
            [(b"content-type", b"text/plain"), (b"x-mixed", b"v"), (b"content-length", b"9")],
            id="names-lowercased",
        ),
        pytest.param(
            response(b"X-A:  \t v \t ", b"X-B:v", b"X-C: a \t b", b"X-D:", b"X-E: \t "),
            [(b"x-a", b"v"), (b"x-b", b"v"), (b"x-c", b"a \t b"), (b"x-d", b""), (b"x-e", b"")],
            id="values-stripped-inside-kept",
        ),
        pytest.param(
            response(b"Set-Cookie: a=1", b"X-A: 1", b"set-cookie: b=2", b"Set-Cookie: a=1"),
            [
                (b"set-cookie", b"a=1"),
                (b"x-a", b"1"),
                (b"set-cookie", b"b=2"),
                (b"set-cookie", b"a=1"),
            ],
            id="order-and-repeats-kept",
        ),
        pytest.param(
            response(b"X-A: caf\xe9 \xff", b"X-B: a:b:c", b"X-!#$%&'*+.^_`|~: t"),
            [(b"x-a", b"caf\xe9 \xff"), (b"x-b", b"a:b:c"), (b"x-!#$%&'*+.^_`|~", b"t")],
            id="obs-text-colons-token-chars",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\nX-A: 1\nX-B: 2\n\n",
            [(b"x-a", b"1"), (b"x-b", b"2")],
            id="bare-lf",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\n",
            [(b"x-a", b"1"), (b"x-b", b"2")],
            id="mixed-line-ends",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\nX-A: 1\r\n\r\n", [(b"x-a", b"1")], id="bare-lf-after-status"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\n\r\n", [(b"x-a", b"1")], id="lf-crlf-end"),
        pytest.param(b"HTTP/1.1 200 OK\n\n", [], id="bare-lf-no-fields"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", [], id="no-fields"),
    ],
)
@STEPS
def test_header_fields(data: bytes, headers: list[Header], step: int) -> None:
    events, reader = drive(data, step, eof=False)
    assert len(events) == 1
    assert isinstance(events[0], ResponseHead)
    assert events[0].headers == headers
    assert (events[0].status, events[0].reason) == (200, b"OK")
    assert reader.trailing == b""  # the head's own bytes, and no more, were taken


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param(b" folded", "obsolete line folding", id="obs-fold-space"),
        pytest.param(b"\tfolded", "obsolete line folding", id="obs-fold-tab"),
        pytest.param(b"X-B: a\x00b", "invalid byte in the value of header X-B", id="nul"),
        pytest.param(b"X-B: a\x01b", "invalid byte in the value of header X-B", id="soh"),
        pytest.param(b"X-B: a\x0bb", "invalid byte in the value of header X-B", id="vt"),
        pytest.param(b"X-B: a\x7fb", "invalid byte in the value of header X-B", id="del"),
        pytest.param(b"X-B: a\rb", "bare CR", id="bare-cr"),
        pytest.param(b"X-B: a\r", "bare CR", id="cr-before-crlf"),
        pytest.param(b"X-B b", "header line without a colon", id="no-colon"),
        pytest.param(b"X-B", "header line without a colon", id="name-only"),
        pytest.param(b"X-B : b", "invalid header name b'X-B '", id="space-before-colon"),
        pytest.param(b"X-B\t: b", "invalid header name", id="tab-before-colon"),
        pytest.param(b"X B: b", "invalid header name", id="space-in-name"),
        pytest.param(b": b", "invalid header name", id="empty-name"),
        pytest.param(b"X@B: b", "invalid header name", id="separator-in-name"),
        pytest.param(b"X\xffB: b", "invalid header name", id="obs-text-in-name"),
    ],
)
@STEPS
def test_bad_header_field(line: bytes, reason: str, step: int) -> None:
    message = failure(response(b"X-A: a", line, b"Content-Length: 0"), step)
    assert reason in message


def test_obs_fold_as_first_field() -> None:
    assert "obsolete line folding" in failure(response(b" X-A: a", b"Content-Length: 0"))


def test_obs_fold_with_bare_lf() -> None:
    assert "obsolete line folding" in failure(b"HTTP/1.1 200 OK\nX-A: a\n b\n\n")


# --- head size ----------------------------------------------------------------------------------

SMALL_HEAD = response(b"X-A: 1")  # 27 bytes


@STEPS
def test_head_of_exactly_max_head_bytes(step: int) -> None:
    assert len(SMALL_HEAD) == 27
    events, _ = drive(SMALL_HEAD, step, max_head_bytes=27)
    assert summary(events) == [200, END]  # until close, and the EOF came


@STEPS
def test_head_over_max_head_bytes_with_its_end(step: int) -> None:
    assert failure(SMALL_HEAD, step, max_head_bytes=26) == "response head larger than 26 bytes"


def test_head_over_max_head_bytes_before_its_end() -> None:
    reader = ResponseReader(max_head_bytes=24)
    reader.feed(SMALL_HEAD[:24])  # no blank line yet, and no more than the limit
    assert reader.next_event() is NEED_DATA
    reader.feed(b"X")  # 25 bytes and still no end: refused without waiting for one
    with pytest.raises(BadResponse, match="response head larger than 24 bytes"):
        reader.next_event()


def test_head_limit_counts_the_head_not_the_body() -> None:
    data = response(b"Content-Length: 100", body=b"b" * 100)
    events, _ = drive(data, max_head_bytes=len(data) - 100)
    assert summary(events) == [200, b"b" * 100, END]


def test_head_limit_applies_to_each_head() -> None:
    data = response(status_line=b"HTTP/1.1 100 Continue") + response(b"Content-Length: 0")
    assert len(response(b"Content-Length: 0")) == 38
    events, _ = drive(data, max_head_bytes=38)
    assert summary(events) == [100, 200, END]
    assert failure(data, max_head_bytes=37) == "response head larger than 37 bytes"


# --- framing (RFC 9112 §6.3) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "head_request", "framing", "length"),
    [
        # no body, whatever the head declares
        pytest.param(response(b"Content-Length: 5"), True, Framing.NONE, 0, id="head-cl"),
        pytest.param(
            response(b"Transfer-Encoding: chunked"), True, Framing.NONE, 0, id="head-chunked"
        ),
        pytest.param(response(b"Transfer-Encoding: gzip"), True, Framing.NONE, 0, id="head-gzip"),
        pytest.param(response(), True, Framing.NONE, 0, id="head-no-framing"),
        pytest.param(
            response(b"Content-Length: 5", status_line=b"HTTP/1.1 100 Continue"),
            False,
            Framing.NONE,
            0,
            id="100-cl",
        ),
        pytest.param(
            response(b"Content-Length: 5", status_line=b"HTTP/1.1 103 Early Hints"),
            False,
            Framing.NONE,
            0,
            id="103-cl",
        ),
        pytest.param(
            response(b"Content-Length: 5", status_line=b"HTTP/1.1 204 No Content"),
            False,
            Framing.NONE,
            0,
            id="204-cl",
        ),
        pytest.param(
            response(b"Content-Length: 5", status_line=b"HTTP/1.1 304 Not Modified"),
            False,
            Framing.NONE,
            0,
            id="304-cl",
        ),
        pytest.param(
            response(b"Transfer-Encoding: gzip", status_line=b"HTTP/1.1 304 Not Modified"),
            False,
            Framing.NONE,
            0,
            id="304-gzip",
        ),
        pytest.param(
            response(status_line=b"HTTP/1.1 204 No Content"), False, Framing.NONE, 0, id="204"
        ),
        # chunked, in any case, beats Content-Length
        pytest.param(response(b"Transfer-Encoding: chunked"), False, Framing.CHUNKED, 0, id="te"),
        pytest.param(
            response(b"transfer-encoding: Chunked"), False, Framing.CHUNKED, 0, id="te-case"
        ),
        pytest.param(
            response(b"Transfer-Encoding: \t CHUNKED \t"), False, Framing.CHUNKED, 0, id="te-ows"
        ),
        pytest.param(
            response(b"Transfer-Encoding: chunked", b"Content-Length: 5"),
            False,
            Framing.CHUNKED,
            0,
            id="te-then-cl",
        ),
        pytest.param(
            response(b"Content-Length: 5", b"Transfer-Encoding: chunked"),
            False,
            Framing.CHUNKED,
            0,
            id="cl-then-te",
        ),
        pytest.param(
            response(b"Content-Length: 5, 6", b"Transfer-Encoding: chunked"),
            False,
            Framing.CHUNKED,
            0,
            id="te-ignores-bad-cl",
        ),
        # Content-Length
        pytest.param(response(b"Content-Length: 5"), False, Framing.LENGTH, 5, id="cl"),
        pytest.param(response(b"Content-Length: 0"), False, Framing.LENGTH, 0, id="cl-0"),
        pytest.param(response(b"Content-Length: 005"), False, Framing.LENGTH, 5, id="cl-zeros"),
        pytest.param(response(b"Content-Length: 000"), False, Framing.LENGTH, 0, id="cl-000"),
        pytest.param(response(b"Content-Length: 5, 5"), False, Framing.LENGTH, 5, id="cl-list"),
        pytest.param(
            response(b"Content-Length: 5", b"content-length:5"),
            False,
            Framing.LENGTH,
            5,
            id="cl-twice",
        ),
        pytest.param(
            response(b"Content-Length: 9223372036854775807"),
            False,
            Framing.LENGTH,
            (1 << 63) - 1,
            id="cl-max",
        ),
        # neither: the body runs until the target closes
        pytest.param(response(), False, Framing.CLOSE, 0, id="until-close"),
        pytest.param(
            response(status_line=b"HTTP/1.0 200 OK"), False, Framing.CLOSE, 0, id="until-close-1.0"
        ),
        pytest.param(
            response(b"X-Content-Length: 5", b"X-Transfer-Encoding: chunked"),
            False,
            Framing.CLOSE,
            0,
            id="lookalike-fields",
        ),
    ],
)
def test_framing(data: bytes, head_request: bool, framing: Framing, length: int) -> None:
    head = head_of(data, head_request=head_request)
    assert (head.framing, head.length) == (framing, length)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        pytest.param(b"Transfer-Encoding: gzip", "unsupported Transfer-Encoding", id="gzip"),
        pytest.param(b"Transfer-Encoding: gzip, chunked", "unsupported", id="gzip-chunked"),
        pytest.param(b"Transfer-Encoding: chunked, gzip", "unsupported", id="chunked-gzip"),
        pytest.param(b"Transfer-Encoding: chunked, chunked", "unsupported", id="chunked-twice"),
        pytest.param(b"Transfer-Encoding: identity", "unsupported", id="identity"),
        pytest.param(b"Transfer-Encoding: xchunked", "unsupported", id="xchunked"),
        pytest.param(b"Transfer-Encoding: chunked,", "unsupported", id="trailing-comma"),
        pytest.param(b"Transfer-Encoding:", "unsupported", id="empty"),
        pytest.param(b"Content-Length: 5, 6", "conflicting Content-Length", id="cl-conflict"),
        pytest.param(b"Content-Length: 5\r\nContent-Length: 6", "conflicting", id="cl-lines"),
        pytest.param(b"Content-Length: 5\r\nContent-Length: 05", "conflicting", id="cl-spelling"),
        pytest.param(b"Content-Length: -5", "malformed Content-Length", id="cl-negative"),
        pytest.param(b"Content-Length: +5", "malformed", id="cl-plus"),
        pytest.param(b"Content-Length: 0x5", "malformed", id="cl-hex"),
        pytest.param(b"Content-Length: 5.0", "malformed", id="cl-decimal"),
        pytest.param(b"Content-Length: 5 5", "malformed", id="cl-space"),
        pytest.param(b"Content-Length:", "malformed", id="cl-empty"),
        pytest.param(b"Content-Length: 5,", "malformed", id="cl-trailing-comma"),
        pytest.param(b"Content-Length: \xd9\xa5", "malformed", id="cl-arabic-indic-five"),
        pytest.param(b"Content-Length: 9223372036854775808", "too large", id="cl-2^63"),
        pytest.param(b"Content-Length: 99999999999999999999", "too large", id="cl-20-digits"),
        pytest.param(b"Content-Length: " + b"9" * 5000, "too large", id="cl-5000-digits"),
    ],
)
def test_bad_framing(field: bytes, reason: str) -> None:
    assert reason in failure(response(field))


def test_transfer_encoding_split_over_lines_is_one_list() -> None:
    data = response(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked")
    assert "unsupported Transfer-Encoding" in failure(data)
    data = response(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")
    assert "unsupported Transfer-Encoding" in failure(data)


# --- keep_alive ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_line", "fields", "head_request", "keep_alive"),
    [
        pytest.param(b"HTTP/1.1 200 OK", [b"Content-Length: 0"], False, True, id="length"),
        pytest.param(
            b"HTTP/1.1 200 OK", [b"Transfer-Encoding: chunked"], False, True, id="chunked"
        ),
        pytest.param(b"HTTP/1.1 204 No Content", [], False, True, id="204-no-framing"),
        pytest.param(b"HTTP/1.1 200 OK", [], True, True, id="head-no-framing"),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: keep-alive", b"Content-Length: 0"],
            False,
            True,
            id="keep-alive",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: closed", b"Content-Length: 0"],
            False,
            True,
            id="token-closed-is-not-close",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"X-Connection: close", b"Keep-Alive: close", b"Content-Length: 0"],
            False,
            True,
            id="close-in-other-fields",
        ),
        pytest.param(b"HTTP/1.1 200 OK", [], False, False, id="until-close"),
        pytest.param(b"HTTP/1.0 200 OK", [b"Content-Length: 0"], False, False, id="http-1.0"),
        pytest.param(
            b"HTTP/1.0 200 OK",
            [b"Connection: keep-alive", b"Content-Length: 0"],
            False,
            False,
            id="http-1.0-keep-alive",  # RFC 9112 §9.3 allows it; kproxy does not reuse 1.0
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: close", b"Content-Length: 0"],
            False,
            False,
            id="close",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"connection: CLOSE", b"Content-Length: 0"],
            False,
            False,
            id="close-uppercase",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: keep-alive, Close", b"Content-Length: 0"],
            False,
            False,
            id="close-in-list",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection:upgrade,close,x", b"Content-Length: 0"],
            False,
            False,
            id="close-in-list-no-spaces",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: keep-alive", b"Connection: \tclose ", b"Content-Length: 0"],
            False,
            False,
            id="close-in-second-field",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: close", b"Transfer-Encoding: chunked"],
            False,
            False,
            id="close-chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK", [b"Connection: close"], True, False, id="head-close"),
        # with a name repeated, the last value of each is not all there is to look at
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Set-Cookie: a", b"Set-Cookie: b", b"Connection: keep-alive", b"Content-Length: 0"],
            False,
            True,
            id="repeats-keep-alive",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK",
            [b"Connection: close", b"X-A: a", b"Connection: keep-alive", b"Content-Length: 0"],
            False,
            False,
            id="close-before-keep-alive",
        ),
    ],
)
def test_keep_alive(
    status_line: bytes, fields: list[bytes], head_request: bool, keep_alive: bool
) -> None:
    data = response(*fields, status_line=status_line)
    assert head_of(data, head_request=head_request).keep_alive is keep_alive


# --- complete responses, event by event ---------------------------------------------------------

CONTINUE = response(status_line=b"HTTP/1.1 100 Continue")
EARLY_HINTS = response(b"Link: </a.css>; rel=preload", status_line=b"HTTP/1.1 103 Early Hints")


@pytest.mark.parametrize(
    ("data", "head_request", "events", "trailing"),
    [
        # Content-Length
        pytest.param(
            response(b"Content-Length: 5", body=b"hello"),
            False,
            [200, b"hello", END],
            b"",
            id="length",
        ),
        pytest.param(
            response(b"Content-Length: 5", body=b"helloHTTP/1.1 200 OK\r\n\r\n"),
            False,
            [200, b"hello", END],
            b"HTTP/1.1 200 OK\r\n\r\n",
            id="length-then-stray-bytes",
        ),
        pytest.param(
            response(b"Content-Length: 4", body=b"\r\n\r\n"),
            False,
            [200, b"\r\n\r\n", END],
            b"",
            id="length-line-ends-as-data",
        ),
        pytest.param(response(b"Content-Length: 0"), False, [200, END], b"", id="length-0"),
        # chunked
        pytest.param(
            chunked(b"5\r\nhello\r\n0\r\n\r\n"), False, [200, b"hello", END], b"", id="chunked"
        ),
        pytest.param(chunked(b"0\r\n\r\n"), False, [200, END], b"", id="chunked-empty"),
        pytest.param(
            chunked(b'5;a=b\r\nhello\r\n6; q="x;y" ;n\r\n world\r\n0;last\r\n\r\n'),
            False,
            [200, b"hello world", END],
            b"",
            id="chunk-extensions",
        ),
        pytest.param(
            chunked(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-B:\r\n\r\n"),
            False,
            [200, b"hello", END],
            b"",
            id="trailers-dropped",
        ),
        pytest.param(
            chunked(b"A\r\n0123456789\r\n005\r\nabcde\r\n00\r\n\r\n"),
            False,
            [200, b"0123456789abcde", END],
            b"",
            id="hex-case-zeros",
        ),
        pytest.param(
            chunked(b"5 \t\r\nhello\r\n0 \r\n\r\n"),
            False,
            [200, b"hello", END],
            b"",
            id="whitespace-after-size",
        ),
        pytest.param(
            chunked(b"1\r\n\n\r\n2\r\n\r\n\r\n0\r\n\r\n"),
            False,
            [200, b"\n\r\n", END],
            b"",
            id="line-ends-as-data",
        ),
        pytest.param(
            chunked(b"1\r\nx\r\n0\r\n\r\nEXTRA"), False, [200, b"x", END], b"EXTRA", id="extra"
        ),
        pytest.param(
            chunked(b"".join(b"1\r\n%c\r\n" % c for c in b"abcdef") + b"0\r\n\r\n"),
            False,
            [200, b"abcdef", END],
            b"",
            id="many-small-chunks",
        ),
        # until close
        pytest.param(
            response(body=b"abc\r\n\r\n"), False, [200, b"abc\r\n\r\n", END], b"", id="until-close"
        ),
        pytest.param(response(), False, [200, END], b"", id="until-close-empty"),
        pytest.param(
            response(status_line=b"HTTP/1.0 200 OK", body=b"old"),
            False,
            [200, b"old", END],
            b"",
            id="until-close-1.0",
        ),
        # no body
        pytest.param(
            response(b"Content-Length: 5", body=b"hello"),
            True,
            [200, END],
            b"hello",
            id="head-request",
        ),
        pytest.param(
            response(b"Content-Length: 5", status_line=b"HTTP/1.1 304 Not Modified", body=b"x"),
            False,
            [304, END],
            b"x",
            id="304-stray-byte",
        ),
        pytest.param(
            response(status_line=b"HTTP/1.1 204 No Content"), False, [204, END], b"", id="204"
        ),
        # 1xx first
        pytest.param(
            CONTINUE + response(b"Content-Length: 2", body=b"hi"),
            False,
            [100, 200, b"hi", END],
            b"",
            id="100-then-200",
        ),
        pytest.param(
            EARLY_HINTS + CONTINUE + chunked(b"2\r\nhi\r\n0\r\n\r\n"),
            False,
            [103, 100, 200, b"hi", END],
            b"",
            id="103-100-200",
        ),
        pytest.param(
            CONTINUE + response(b"Content-Length: 2"),
            True,
            [100, 200, END],
            b"",
            id="100-then-head-answer",
        ),
        pytest.param(
            response(b"Upgrade: websocket", b"Connection: Upgrade", status_line=b"HTTP/1.1 101 X")
            + b"\x81\x05hello\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            False,
            [101],
            b"\x81\x05hello\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            id="101-leaves-the-stream",
        ),
        pytest.param(
            CONTINUE + response(status_line=b"HTTP/1.1 101 Switching Protocols") + b"raw",
            False,
            [100, 101],
            b"raw",
            id="100-then-101",
        ),
    ],
)
@STEPS
def test_response_events(
    data: bytes, head_request: bool, events: list[object], trailing: bytes, step: int
) -> None:
    got, reader = drive(data, step, head_request=head_request)
    assert summary(got) == events
    assert reader.trailing == trailing
    assert reader.done is (events[-1] is END or events[-1] == 101)  # a 101 ends the HTTP
    assert reader.received == len(data)
    if reader.done:
        assert reader.next_event() is END  # END again, and the stray bytes stay where they are
        assert reader.trailing == trailing


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(response(b"Content-Length: 11", body=b"hello world"), id="length"),
        pytest.param(chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), id="chunked"),
        pytest.param(response(body=b"hello world"), id="until-close"),
    ],
)
def test_body_pieces_follow_the_feeds(data: bytes) -> None:
    """Body bytes go out as they arrive, never held back for more (streaming)."""
    body_start = data.index(b"\r\n\r\n") + 4
    reader = ResponseReader()
    reader.feed(data[:body_start])
    assert isinstance(reader.next_event(), ResponseHead)
    pieces = []
    for byte in data[body_start:]:
        reader.feed(bytes([byte]))
        while isinstance(event := reader.next_event(), bytes):
            pieces.append(event)
        assert event is NEED_DATA or event is END
    assert all(len(piece) == 1 for piece in pieces)
    assert b"".join(pieces) == b"hello world"


def test_until_close_waits_for_eof() -> None:
    reader = ResponseReader()
    reader.feed(response(body=b"abc"))
    assert isinstance(reader.next_event(), ResponseHead)
    assert reader.next_event() == b"abc"
    assert reader.next_event() is NEED_DATA
    assert not reader.done
    reader.feed(b"def")
    assert reader.next_event() == b"def"
    reader.feed(b"")
    assert reader.next_event() is END
    assert reader.done


def test_100_and_200_in_one_feed() -> None:
    reader = ResponseReader()
    reader.feed(EARLY_HINTS + response(b"Content-Length: 2", b"X-A: 1", body=b"hi"))
    first, second = reader.next_event(), reader.next_event()
    link = [(b"link", b"</a.css>; rel=preload")]
    assert first == ResponseHead(103, b"Early Hints", link, Framing.NONE, end_to_end=link)
    assert first.informational
    fields = [(b"content-length", b"2"), (b"x-a", b"1")]
    assert second == ResponseHead(200, b"OK", fields, Framing.LENGTH, 2, end_to_end=fields)
    assert not second.informational
    assert reader.next_event() == b"hi"
    assert reader.next_event() is END


def test_final_head_after_a_1xx_found_late() -> None:
    """The search for the next head starts afresh: the 1xx was searched piecewise, and the
    short final head that came in the same feed as the 1xx's last byte ends before the point
    where the 1xx search stopped."""
    final = response(status_line=b"HTTP/1.1 204 X")
    assert len(final) < len(EARLY_HINTS) - 3
    reader = ResponseReader()
    reader.feed(EARLY_HINTS[:-1])
    assert reader.next_event() is NEED_DATA
    reader.feed(EARLY_HINTS[-1:] + final)
    events = [reader.next_event(), reader.next_event(), reader.next_event()]
    assert summary(events) == [103, 204, END]


def test_101_is_done() -> None:
    """After a 101 the reader has no more to read: the caller splices ``trailing`` on, and
    asking for more gives END, never the new protocol's bytes parsed as a head."""
    reader = ResponseReader()
    reader.feed(response(b"Upgrade: h2c", status_line=b"HTTP/1.1 101 Switching") + b"PRI *")
    head = reader.next_event()
    assert isinstance(head, ResponseHead)
    assert (head.status, head.informational, head.framing) == (101, True, Framing.NONE)
    assert reader.done
    assert reader.next_event() is END
    assert reader.trailing == b"PRI *"


# --- broken bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # Content-Length
        pytest.param(
            response(b"Content-Length: 5", body=b"hel"),
            "connection closed with 2 body bytes missing",
            id="length-short",
        ),
        pytest.param(
            response(b"Content-Length: 5"), "with 5 body bytes missing", id="length-no-body"
        ),
        # CRLF after the data
        pytest.param(chunked(b"5\r\nhelloXX0\r\n\r\n"), "not followed by CRLF", id="no-crlf"),
        pytest.param(chunked(b"5\r\nhello\n0\r\n\r\n"), "not followed by CRLF", id="lf-only"),
        pytest.param(chunked(b"5\r\nhello\r0\r\n\r\n"), "not followed by CRLF", id="cr-only"),
        pytest.param(chunked(b"3\r\nhello\r\n0\r\n\r\n"), "not followed by CRLF", id="too-much"),
        # bare LF
        pytest.param(chunked(b"5\nhello\r\n0\r\n\r\n"), "bare LF", id="lf-size-line"),
        pytest.param(chunked(b"5\r\nhello\r\n0\n\r\n"), "bare LF", id="lf-last-chunk"),
        pytest.param(chunked(b"5\r\nhello\r\n0\r\n\n"), "bare LF", id="lf-end"),
        pytest.param(chunked(b"0\r\nX-T: 1\n\r\n"), "bare LF", id="lf-trailer"),
        pytest.param(chunked(b"5;a\nGET /x HTTP/1.1\r\n"), "bare LF", id="lf-smuggle"),
        # chunk size lines
        pytest.param(chunked(b"zz\r\n"), "invalid chunk size line b'zz'", id="not-hex"),
        pytest.param(chunked(b"-5\r\nhello\r\n0\r\n\r\n"), "invalid chunk size", id="negative"),
        pytest.param(chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), "invalid chunk size", id="0x"),
        pytest.param(chunked(b" 5\r\nhello\r\n0\r\n\r\n"), "invalid chunk size", id="lead-space"),
        pytest.param(chunked(b"\r\nhello\r\n0\r\n\r\n"), "invalid chunk size", id="empty"),
        pytest.param(chunked(b"5;\r\nhello\r\n0\r\n\r\n"), "invalid chunk size", id="empty-ext"),
        pytest.param(chunked(b"5 ;a\r\nhello\r\n0\r\n\r\n"), "invalid chunk size", id="sp-semi"),
        pytest.param(chunked(b"5;a=b c\r\nhello\r\n"), "invalid chunk size", id="ext-space"),
        pytest.param(chunked(b'5;a="x\r\nhello\r\n'), "invalid chunk size", id="open-quote"),
        pytest.param(chunked(b"5;a\x00\r\nhello\r\n"), "invalid chunk size", id="ext-nul"),
        pytest.param(chunked(b"5\r\r\nhello\r\n"), "invalid chunk size", id="bare-cr"),
        pytest.param(chunked(b"1" * 17 + b"\r\n"), "invalid chunk size", id="17-digits"),
        pytest.param(
            chunked(b"5;a=" + b"x" * (MAX_CHUNK_LINE - 3) + b"\r\nhello\r\n0\r\n\r\n"),
            "chunk size line too long",
            id="line-one-over",
        ),
        pytest.param(
            chunked(b"5" + b"0" * (MAX_CHUNK_LINE + 10)),
            "chunk size line too long",
            id="line-without-end",
        ),
        # trailers
        pytest.param(
            chunked(b"0\r\nX T: 1\r\n\r\n"),
            "malformed trailer: invalid header name",
            id="trailer-bad-name",
        ),
        pytest.param(
            chunked(b"0\r\nX-T: 1\r\n folded\r\n\r\n"),
            "obsolete line folding",
            id="trailer-obs-fold",
        ),
        pytest.param(
            chunked(b"0\r\nX-T: \x01\r\n\r\n"),
            "malformed trailer: invalid byte",
            id="trailer-control-byte",
        ),
        pytest.param(
            chunked(b"0\r\nX-T\r\n\r\n"),
            "malformed trailer: header line without",
            id="trailer-no-colon",
        ),
        pytest.param(
            chunked(b"0\r\nX-T: " + b"v" * MAX_TRAILER_BYTES + b"\r\n\r\n"),
            "trailer section",  # "... too large" once its end is seen, "... too long" before
            id="trailer-too-large",
        ),
        # EOF inside the chunked body
        pytest.param(chunked(b""), "closed in the middle of a chunked body", id="eof-no-body"),
        pytest.param(chunked(b"5"), "closed in the middle of a chunked body", id="eof-size"),
        pytest.param(chunked(b"5\r\nhel"), "closed in the middle", id="eof-mid-data"),
        pytest.param(chunked(b"5\r\nhello"), "closed in the middle", id="eof-before-crlf"),
        pytest.param(chunked(b"5\r\nhello\r"), "closed in the middle", id="eof-mid-crlf"),
        pytest.param(chunked(b"5\r\nhello\r\n"), "closed in the middle", id="eof-no-last-chunk"),
        pytest.param(chunked(b"5\r\nhello\r\n0\r\n"), "closed in the middle", id="eof-no-end"),
        pytest.param(chunked(b"0\r\nX-T: 1\r\n"), "closed in the middle", id="eof-in-trailers"),
        pytest.param(chunked(b"0\r\n\r"), "closed in the middle", id="eof-before-last-lf"),
    ],
)
@STEPS
def test_broken_body(data: bytes, reason: str, step: int) -> None:
    assert reason in failure(data, step)


@STEPS
def test_longest_chunk_line_is_accepted(step: int) -> None:
    line = b"5;a=" + b"x" * (MAX_CHUNK_LINE - 4)
    assert len(line) == MAX_CHUNK_LINE
    events, _ = drive(chunked(line + b"\r\nhello\r\n0\r\n\r\n"), step)
    assert summary(events) == [200, b"hello", END]


def test_a_bad_response_is_a_protocol_error() -> None:
    """BadResponse belongs to kproxy.errors' ProtocolError family."""
    with pytest.raises(ProtocolError, match="invalid chunk size line"):
        drive(chunked(b"zz\r\n"))


def test_body_bytes_before_a_break_are_delivered() -> None:
    """What came before the target broke its framing was delivered; the break is an error."""
    reader = ResponseReader()
    reader.feed(chunked(b"5\r\nhello\r\nXYZ\r\n"))
    assert isinstance(reader.next_event(), ResponseHead)
    assert reader.next_event() == b"hello"
    with pytest.raises(BadResponse, match="invalid chunk size line b'XYZ'"):
        reader.next_event()


# --- no response at all -------------------------------------------------------------------------


def test_eof_before_any_byte_is_closed() -> None:
    reader = ResponseReader()
    assert reader.next_event() is NEED_DATA
    reader.feed(b"")
    assert reader.next_event() is CLOSED
    assert reader.next_event() is CLOSED
    assert (reader.received, reader.eof, reader.done) == (0, True, False)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"H", id="one-byte"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", id="status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r", id="almost"),
        pytest.param(CONTINUE, id="after-100"),  # something came, so not a silent close
    ],
)
@STEPS
def test_eof_mid_head(data: bytes, step: int) -> None:
    assert failure(data, step) == "connection closed in the middle of the response head"


# --- the same bytes through h11 -----------------------------------------------------------------

WELL_FORMED = [
    pytest.param(b"GET", response(b"Content-Length: 5", b"X-A: 1", body=b"hello"), id="length"),
    pytest.param(
        b"GET",
        chunked(b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"),
        id="chunked-ext-trailers",
    ),
    pytest.param(b"GET", response(b"Server: x", body=b"until close\r\n"), id="until-close"),
    pytest.param(b"GET", response(status_line=b"HTTP/1.0 200 OK", body=b"1.0"), id="http-1.0"),
    pytest.param(b"GET", response(status_line=b"HTTP/1.1 204 No Content"), id="204"),
    pytest.param(
        b"GET",
        response(b"Content-Length: 9", b"ETag: x", status_line=b"HTTP/1.1 304 Not Modified"),
        id="304",
    ),
    pytest.param(b"HEAD", response(b"Content-Length: 9"), id="head"),
    pytest.param(b"HEAD", response(b"Transfer-Encoding: chunked"), id="head-chunked"),
    pytest.param(
        b"POST", CONTINUE + EARLY_HINTS + response(b"Content-Length: 2", body=b"ok"), id="1xx"
    ),
    pytest.param(b"GET", b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nhi", id="bare-lf"),
    pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nhi", id="mixed-ends"),
    pytest.param(b"GET", b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", id="no-reason"),
    pytest.param(b"GET", b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", id="empty-reason"),
    pytest.param(
        b"GET",
        response(b"Set-Cookie: a=1", b"X-A: 1", b"SET-COOKIE: b=2", b"Content-Length: 0"),
        id="repeats",
    ),
    pytest.param(
        b"GET",
        response(b"X-A:   spaced \t value \t", b"X-B:", b"X-C: caf\xe9", b"Content-Length: 0"),
        id="values",
    ),
    pytest.param(
        b"GET", response(b"Content-Length: 1", status_line=b"HTTP/1.1 599 X", body=b"!"), id="599"
    ),
]


def h11_read(method: bytes, data: bytes) -> tuple[list[tuple[int, bytes, list[Header]]], bytes]:
    """The heads (status, reason, fields) and body h11 reads from ``data``, EOF after it."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    heads: list[tuple[int, bytes, list[Header]]] = []
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.InformationalResponse | h11.Response):
            heads.append((event.status_code, bytes(event.reason), list(event.headers)))
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            return heads, body


@pytest.mark.parametrize(("method", "data"), WELL_FORMED)
@STEPS
def test_agrees_with_h11(method: bytes, data: bytes, step: int) -> None:
    events, reader = drive(data, step, head_request=method == b"HEAD")
    heads = [(e.status, e.reason, e.headers) for e in events if isinstance(e, ResponseHead)]
    body = b"".join(e for e in events if isinstance(e, bytes))
    assert events[-1] is END
    assert (heads, body) == h11_read(method, data)
    assert reader.trailing == b""


# --- found by these tests ------------------------------------------------------------------------


def test_empty_length_body_gives_no_empty_event() -> None:
    data = response(b"Content-Length: 0", body=b"HTTP/1.1 200 OK\r\n\r\n")
    bytewise, _ = drive(data, 1)
    at_once, _ = drive(data)
    assert summary(bytewise) == [200, END]
    assert summary(at_once) == [200, END]


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 X", b"HTTP/1.1 000 X"], ids=["099", "000"])
def test_status_below_100_is_refused(status_line: bytes) -> None:
    """Not a 1xx to wait past: the runtime would relay it as a malformed interim head."""
    data = response(status_line=status_line) + response(b"Content-Length: 0")
    assert "status" in failure(data)


def test_length_beside_chunked_is_dropped_and_ends_the_connection() -> None:
    """RFC 9112 §6.3: chunked wins, the Content-Length must not be forwarded, and a sender
    that wrote both is not trusted with the next request."""
    (head, *_), reader = drive(
        chunked(b"3\r\nabc\r\n0\r\n\r\n").replace(b"\r\n\r\n", b"\r\nContent-Length: 9\r\n\r\n", 1)
    )
    assert isinstance(head, ResponseHead)
    assert (head.framing, head.keep_alive) == (Framing.CHUNKED, False)
    assert [name for name, _ in head.headers] == [b"transfer-encoding"]
    assert reader.done


def test_chunk_size_past_2_to_the_63_is_refused() -> None:
    assert "too large" in failure(chunked(b"8000000000000000\r\nabc"))


def test_a_later_http_1_minor_version_keeps_the_connection() -> None:
    (head, *_), _ = drive(response(b"Content-Length: 0", status_line=b"HTTP/1.2 200 OK"))
    assert isinstance(head, ResponseHead)
    assert head.keep_alive


@pytest.mark.parametrize(
    ("fields", "head_request", "expected"),
    [
        pytest.param((b"Content-Length: 5, 5",), False, [b"5"], id="list"),
        pytest.param((b"Content-Length: 5", b"Content-Length: 5"), False, [b"5"], id="repeated"),
        pytest.param((b"Content-Length: 0005",), False, [b"5"], id="leading-zeros"),
        pytest.param((b"Content-Length: 1234",), True, [b"1234"], id="head-kept"),
        pytest.param((b"Content-Length: abc",), True, [], id="head-malformed-dropped"),
        pytest.param((b"Content-Length: 1", b"Content-Length: 2"), True, [], id="head-conflict"),
        # the single plain field (the usual head) is taken as is; these are either side of it
        pytest.param((b"Content-Length: 0",), False, [b"0"], id="zero"),
        pytest.param(
            (b"Set-Cookie: a", b"Set-Cookie: b", b"Content-Length: 05"),
            False,
            [b"5"],
            id="other-names-repeat",
        ),
        pytest.param((b"Content-Length: %d" % (2**63 - 1),), True, [b"%d" % (2**63 - 1)], id="max"),
        pytest.param((b"Content-Length: %d" % 2**63,), True, [], id="head-past-max-dropped"),
        pytest.param(
            (b"Content-Length: 0%d" % (2**63 - 1),), True, [b"%d" % (2**63 - 1)], id="20-digits"
        ),
    ],
)
def test_content_length_goes_on_as_one_plain_number(
    fields: tuple[bytes, ...], head_request: bool, expected: list[bytes]
) -> None:
    """What reaches the client is one canonical field (as h11 and Go pass it on) or, where it
    frames nothing, no field rather than a malformed one."""
    body = b"" if head_request else b"hello"
    (head, *_), _ = drive(response(*fields, body=body), head_request=head_request)
    assert isinstance(head, ResponseHead)
    assert [v for n, v in head.headers if n == b"content-length"] == expected


def _read_all(reader: ResponseReader, data: bytes) -> list[object]:
    reader.feed(data)
    events: list[Event] = []
    while (event := reader.next_event()) is not NEED_DATA and event is not END:
        events.append(event)
        if event is CLOSED:
            break
    return summary(events)


def test_a_restarted_reader_reads_the_next_response_as_a_new_one_would() -> None:
    reader = ResponseReader()
    first = chunked(encode_chunk(b"hello") + LAST_CHUNK)
    assert _read_all(reader, first) == [200, b"hello"]
    assert reader.done
    assert not reader.has_trailing
    # A HEAD's answer declares a length and sends no body.
    reader.restart(head_request=True)
    assert _read_all(reader, response(b"Content-Length: 5")) == [200]
    assert reader.done
    reader.restart(head_request=False)
    assert _read_all(reader, response(b"Content-Length: 2", body=b"ok")) == [200, b"ok"]
    # Nothing fed since the restart, then EOF: no response at all, not a broken one.
    reader.restart(head_request=False)
    assert (reader.received, reader.eof) == (0, False)
    reader.feed(b"")
    assert reader.next_event() is CLOSED


def test_has_trailing_says_what_trailing_holds() -> None:
    events, reader = drive(response(b"Content-Length: 2", body=b"okHTTP/1.1"), eof=False)
    assert summary(events) == [200, b"ok", END]
    assert reader.has_trailing
    assert reader.trailing == b"HTTP/1.1"
    events, reader = drive(response(b"Content-Length: 2", body=b"ok"), eof=False)
    assert not reader.has_trailing
    assert reader.trailing == b""


def test_a_large_body_piece_is_a_view_of_the_bytes_read_not_a_copy() -> None:
    body = bytes(range(256)) * 256  # 64 KiB
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + body
    reader = ResponseReader()
    reader.feed(data)
    assert isinstance(reader.next_event(), ResponseHead)
    piece = reader.next_event()
    assert isinstance(piece, memoryview)
    assert piece.obj is data
    assert piece == body
    assert reader.next_event() is END


def test_a_small_body_piece_is_bytes_and_a_whole_read_is_passed_on_as_it_came() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nab")
    assert isinstance(reader.next_event(), ResponseHead)
    assert reader.next_event() == b"ab"
    assert reader.next_event() is NEED_DATA
    rest = b"c" * 4998
    reader.feed(rest)
    assert reader.next_event() is rest
    assert reader.next_event() is END


@pytest.mark.parametrize(
    ("fields", "usual"),
    [
        pytest.param([b"Server: nginx", b"Content-Length: 0"], True, id="nothing-to-drop"),
        pytest.param([b"Connection: keep-alive", b"Keep-Alive: timeout=5"], True, id="nginx"),
        pytest.param([b"Connection: Close", b"X-A: 1"], True, id="close"),
        pytest.param([b"Connection: close", b"Close: x"], False, id="close-names-a-field"),
        pytest.param([b"Connection: x-a", b"X-A: 1"], False, id="names-a-field"),
        pytest.param([b"Connection: x-a, x-b", b"X-B: 2"], False, id="a-list"),
        pytest.param([b"Connection: content-length", b"Content-Length: 1"], False, id="kept"),
        pytest.param([b"Connection: x", b"Connection: x-a", b"X-A: 1"], False, id="repeated"),
        pytest.param([b"Proxy-Authenticate: x", b"X-A: 1"], False, id="proxy-"),
        pytest.param([b"Proxyx: 1"], False, id="proxy-prefix-not-hop-by-hop"),
        pytest.param([b"TE: x", b"Trailer: y", b"Upgrade: z", b"X-A: 1"], True, id="hop"),
        pytest.param([b"Transfer-Encoding: chunked", b"X-A: 1"], True, id="chunked"),
        pytest.param([b"Transfer-Encoding: chunked", b"Content-Length: 3"], False, id="both"),
        pytest.param([b"Content-Length: 003"], False, id="length-rewritten"),
    ],
)
def test_end_to_end_fields_are_strip_response_hop_by_hops_answer(
    fields: list[bytes], usual: bool
) -> None:
    """The usual head's end-to-end fields are gathered as it is read, and are exactly what
    headers.strip_response_hop_by_hop makes of its fields; any other head says None."""
    head = head_of(response(b"Date: today", *fields, b"X-App: 1"))
    if usual:
        assert head.end_to_end == strip_response_hop_by_hop(head.headers)
    else:
        assert head.end_to_end is None
