"""kproxy.core.request_framing: request heads and chunked bodies judged as bytes, in tables."""

from __future__ import annotations

import h11
import pytest

from kproxy.core import request_framing
from kproxy.core.chunked import MAX_CHUNK_LINE
from kproxy.core.request_framing import (
    Accept,
    ChunkedBody,
    Reject,
    check_head,
    framing_headers,
)


def head(*lines: bytes, request_line: bytes = b"POST / HTTP/1.1") -> bytes:
    return b"\r\n".join([request_line, b"Host: a", *lines]) + b"\r\n\r\n"


def verdict(data: bytes, max_headers: int = 100) -> Accept | Reject:
    return check_head(data, max_headers=max_headers)


# --- check_head: accepted heads and their framing -----------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (head(), Accept()),
        (head(request_line=b"GET /x?y HTTP/1.0"), Accept()),
        (head(request_line=b"GET / HTTP/1.2"), Accept()),  # a later 1.x is read as 1.1
        (head(b"Content-Length: 5"), Accept(content_length=5)),
        (head(b"Content-Length: 0"), Accept(content_length=0)),
        (head(b"Content-Length: 005"), Accept(content_length=5)),
        (head(b"Content-Length: 5, 5"), Accept(content_length=5)),
        (head(b"Content-Length: 5", b"content-length:5"), Accept(content_length=5)),
        (head(b"Content-Length: 9223372036854775807"), Accept(content_length=(1 << 63) - 1)),
        (head(b"Transfer-Encoding: chunked"), Accept(chunked=True)),
        (head(b"transfer-encoding: CHUNKED"), Accept(chunked=True)),  # codings ignore case
        (head(b"Transfer-Encoding: \t chunked \t"), Accept(chunked=True)),
        (b"POST / HTTP/1.1\nHost: a\nContent-Length: 5\n\n", Accept(content_length=5)),
        (head(b"X-A: caf\xe9"), Accept()),  # obs-text is allowed in values
        (head(b"X-A: a \t b"), Accept()),
        (head(b"X-Empty:"), Accept()),
        (head(b"Content-Length-X: 5", b"X-Transfer-Encoding: gzip"), Accept()),
        # request-target forms (RFC 9112 §3.2)
        (head(request_line=b"GET http://a.example/x HTTP/1.1"), Accept()),
        (head(request_line=b"GET HTTPS://a.example HTTP/1.1"), Accept()),
        (head(request_line=b"OPTIONS * HTTP/1.1"), Accept()),
    ],
)
def test_accepted(data: bytes, expected: Accept) -> None:
    assert verdict(data) == expected


# --- check_head: rejected heads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        # both framings, or chunked in HTTP/1.0 (RFC 9112 §6.1)
        (head(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400, "both"),
        (head(b"Transfer-Encoding: chunked", b"Content-Length: 0"), 400, "both"),
        (head(b"Transfer-Encoding: chunked", request_line=b"POST / HTTP/1.0"), 400, "HTTP/1.0"),
        # transfer codings
        (head(b"Transfer-Encoding: gzip"), 501, "unsupported"),
        (head(b"Transfer-Encoding: gzip, chunked"), 501, "unsupported"),
        (head(b"Transfer-Encoding: chunked, chunked"), 501, "unsupported"),
        (head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 501, "unsupported"),
        (head(b"Transfer-Encoding: identity"), 501, "unsupported"),
        (head(b"Transfer-Encoding: xchunked"), 501, "unsupported"),
        (head(b"Transfer-Encoding: chunked\x0b"), 400, "invalid byte"),
        (head(b'Transfer-Encoding: "chunked"'), 400, "malformed Transfer-Encoding"),
        (head(b"Transfer-Encoding: "), 400, "malformed Transfer-Encoding"),
        (head(b"Transfer-Encoding: chunked,"), 400, "malformed Transfer-Encoding"),
        (head(b"Transfer_Encoding: chunked"), 400, "looks like a framing field"),
        (head(b"TRANSFER_encoding: chunked"), 400, "looks like a framing field"),
        # Content-Length forms
        (head(b"Content-Length: 9223372036854775808"), 400, "too large"),
        (head(b"Content-Length: " + b"9" * 5000), 400, "too large"),  # no int() of it
        (head(b"Content-Length: +5"), 400, "malformed"),
        (head(b"Content-Length: -5"), 400, "malformed"),
        (head(b"Content-Length: 5 5"), 400, "malformed"),
        (head(b"Content-Length: 0x5"), 400, "malformed"),
        (head(b"Content-Length: 5.0"), 400, "malformed"),
        (head(b"Content-Length: "), 400, "malformed"),
        (head(b"Content-Length: 5,"), 400, "malformed"),
        (head(b"Content-Length: \xd9\xa5"), 400, "malformed"),  # Arabic-Indic five
        (head(b"Content-Length: 5, 6"), 400, "conflicting"),
        (head(b"Content-Length: 5", b"Content-Length: 6"), 400, "conflicting"),
        (head(b"Content-Length: 5", b"Content-Length: 05"), 400, "conflicting"),
        (head(b"Content_Length: 5"), 400, "looks like a framing field"),
        # header lines
        (head(b"X-A: a", b" folded"), 400, "obsolete line folding"),
        (head(b"X-A: a", b"\tfolded"), 400, "obsolete line folding"),
        (head(b" X-A: a"), 400, "obsolete line folding"),
        (head(b"X-A: a\x00b"), 400, "invalid byte"),
        (head(b"X-A: a\x01b"), 400, "invalid byte"),
        (head(b"X-A: a\x7fb"), 400, "invalid byte"),
        (head(b"X-A: a\x0cb"), 400, "invalid byte"),
        (head(b"X-A: a\rb"), 400, "bare CR"),
        (head(b"X-A: a\r\r"), 400, "bare CR"),
        (head(b"X-\x00A: b"), 400, "invalid header name"),
        (head(b"X A: b"), 400, "invalid header name"),
        (head(b"X-A : b"), 400, "invalid header name"),
        (head(b"X-A\t: b"), 400, "invalid header name"),
        (head(b": b"), 400, "invalid header name"),
        (head(b"X@A: b"), 400, "invalid header name"),
        (head(b"X\xffA: b"), 400, "invalid header name"),
        (head(b"X-A b"), 400, "without a colon"),
        # request lines
        (b"\r\n", 400, "no request line"),
        (head(request_line=b"GET  / HTTP/1.1"), 400, "malformed request line"),
        (head(request_line=b"GET\t/ HTTP/1.1"), 400, "malformed request line"),
        (head(request_line=b"GET / http/1.1"), 400, "malformed request line"),
        (head(request_line=b"GET / HTTP/1.1 "), 400, "malformed request line"),
        (head(request_line=b"GET /\x00 HTTP/1.1"), 400, "malformed request line"),
        (head(request_line=b"GET /\xff HTTP/1.1"), 400, "malformed request line"),
        (head(request_line=b"GET /\r HTTP/1.1"), 400, "bare CR"),
        (head(request_line=b"G(T / HTTP/1.1"), 400, "malformed request line"),
        (head(request_line=b"GET /"), 400, "malformed request line"),
        (head(request_line=b"GET / HTTP/2.0"), 505, "HTTP/2.0"),
        (head(request_line=b"PRI * HTTP/2.0"), 505, "HTTP/2.0"),
        (head(request_line=b"GET / HTTP/0.9"), 505, "HTTP/0.9"),
        # request targets that are no form of RFC 9112 §3.2
        (head(request_line=b"GET ?p HTTP/1.1"), 400, "invalid request target b'?p'"),
        (head(request_line=b"GET x/y HTTP/1.1"), 400, "invalid request target"),
        (head(request_line=b"GET a.example:80 HTTP/1.1"), 400, "invalid request target"),
        (head(request_line=b"GET * HTTP/1.1"), 400, "invalid request target"),
        (head(request_line=b"GET #f HTTP/1.1"), 400, "invalid request target"),
        (head(request_line=b"GET 1http://a/ HTTP/1.1"), 400, "invalid request target"),
        (head(request_line=b"POST a.example:443 HTTP/1.1"), 400, "invalid request target"),
        (head(request_line=b"OPTIONS a.example:443 HTTP/1.1"), 400, "invalid request target"),
        # CONNECT: no tunnels (405) and only in authority-form (RFC 9112 §3.2.3)
        (head(request_line=b"CONNECT a.example:443 HTTP/1.1"), 405, "not a forward proxy"),
        (head(request_line=b"CONNECT 127.0.0.1:80 HTTP/1.0"), 405, "not a forward proxy"),
        (head(request_line=b"CONNECT [::1]:8080 HTTP/1.1"), 405, "not a forward proxy"),
        (b"CONNECT a.example:443 HTTP/1.1\nHost: a\n\n", 405, "not a forward proxy"),
        (head(request_line=b"CONNECT * HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT ?p HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT /rpc HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT a.example HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT a.example: HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT :443 HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT u@a.example:443 HTTP/1.1"), 400, "host:port"),
        (head(request_line=b"CONNECT http://a.example:443/ HTTP/1.1"), 400, "host:port"),
    ],
)
def test_rejected(data: bytes, status: int, reason: str) -> None:
    result = verdict(data)
    assert isinstance(result, Reject), result
    assert result.status == status
    assert reason in result.reason


def test_connect_405_names_the_methods_served() -> None:
    result = verdict(head(request_line=b"CONNECT a.example:443 HTTP/1.1"))
    assert isinstance(result, Reject)
    assert dict(result.headers)[b"allow"] == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    other = verdict(head(request_line=b"CONNECT * HTTP/1.1"))
    assert isinstance(other, Reject)
    assert other.headers == ()


def test_header_count_limit() -> None:
    fields = [b"X-%d: v" % i for i in range(99)]  # plus Host: 100
    assert verdict(head(*fields)) == Accept()
    assert verdict(head(*fields, b"X-Last: v")) == Reject(431, "more than 100 header fields")


# --- framing_headers: canonical re-framing ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"host", b"a")], []),
        ([(b"content-length", b"005")], [(b"content-length", b"5")]),
        ([(b"content-length", b"5, 5")], [(b"content-length", b"5")]),
        ([(b"Content-Length", b"0")], [(b"content-length", b"0")]),
        ([(b"transfer-encoding", b"Chunked")], [(b"transfer-encoding", b"chunked")]),
    ],
)
def test_framing_headers(
    headers: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]
) -> None:
    assert framing_headers(headers) == expected


# --- ChunkedBody: the chunked grammar (test_chunked) applied before h11 reads the body ----------

GOOD_BODIES = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;a=b\r\nhello\r\n0\r\n\r\n",
    b'5;a="q;\\"x"; b ; c = d\r\nhello\r\n0\r\n\r\n',
    b"5 \r\nhello\r\n0\t\r\n\r\n",
    b"A\r\n0123456789\r\n00\r\n\r\n",
    b"000000000000005\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\r\nY: \r\n\r\n",
    b"1\r\n\n\r\n1\r\n\r\r\n0\r\n\r\n",  # CR and LF as data are data
    b"".join(b"1\r\nx\r\n" for _ in range(5000)) + b"0\r\n\r\n",  # byte streaming is fine
]


def h11_body_length(body: bytes) -> int:
    """How many bytes of ``body`` (then a next request) h11 takes as the chunked body."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.receive_data(body + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    while not isinstance(conn.next_event(), h11.EndOfMessage):
        pass
    return len(body) + len(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n") - len(conn.trailing_data[0])


@pytest.mark.parametrize("body", GOOD_BODIES, ids=range(len(GOOD_BODIES)))
@pytest.mark.parametrize("step", [1, 3, 1 << 20], ids=["bytewise", "by-3", "at-once"])
def test_good_bodies_end_where_h11_ends_them(body: bytes, step: int) -> None:
    check = ChunkedBody()
    data = body + b"GET /next HTTP/1.1\r\n\r\n"
    for i in range(0, len(data), step):
        assert check.feed(data[i : i + step]) is None
    assert check.done
    assert check.consumed == len(body) == h11_body_length(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"8000000000000000\r\nhello\r\n0\r\n\r\n", "too large"),  # 2^63
        (b"5;a\x00b\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5" + b"0" * (MAX_CHUNK_LINE + 10), "too long"),  # no line end in sight
        (b"5;a\nGET /smuggled HTTP/1.1\r\n", "bare LF"),
        (b"5\r\nhelloXX0\r\n\r\n", "not followed by CRLF"),
        (b"5\r\nhello\r\n0\r\nX T: 1\r\n\r\n", "malformed trailer: invalid header name"),
        (b"".join(b"1;e=" + b"x" * 200 + b"\r\nx\r\n" for _ in range(100)), "too much framing"),
    ],
)
def test_bad_bodies(body: bytes, reason: str) -> None:
    for step in (1, len(body)):
        check = ChunkedBody()
        results = [check.feed(body[i : i + step]) for i in range(0, len(body), step)]
        rejected = next(r for r in results if r is not None)
        assert rejected.status == 400
        assert reason in rejected.reason
        assert check.rejected == rejected
        assert not check.done
        assert check.feed(b"0\r\n\r\n") == rejected  # final: nothing is accepted after it


def test_framing_overhead_is_forgiven_by_data() -> None:
    """Go's rule: 16 bytes of framing per chunk plus twice the chunk's data are free."""
    ext = b";e=" + b"x" * 100
    check = ChunkedBody()
    body = b"".join(b"80" + ext + b"\r\n" + b"d" * 0x80 + b"\r\n" for _ in range(1000))
    assert check.feed(body + b"0\r\n\r\n") is None
    assert check.done


def test_nothing_is_read_after_the_body() -> None:
    check = ChunkedBody()
    assert check.feed(b"0\r\n\r\nGARBAGE\n\n\x00") is None
    assert check.done
    assert check.consumed == 5
    assert check.feed(b"more garbage") is None
    assert check.consumed == 5


# --- the usual head's one-match path agrees with the line-by-line judgement ---------------------

_REQUEST_LINES = [
    b"GET / HTTP/1.1",
    b"POST /upload?x=1 HTTP/1.0",
    b"GET /a\rb HTTP/1.1",
    b"GET / HTTP/2.0",
    b"GET  / HTTP/1.1",
    b"G@T / HTTP/1.1",
    b"GET ?p HTTP/1.1",
    b"OPTIONS * HTTP/1.1",
    b"CONNECT /x HTTP/1.1",
    b"CONNECT a.example:443 HTTP/1.1",
    b"GET http://a.example/ HTTP/1.1",
]
_FIELD_LINES = [
    b"Host: a",
    b"Host:a",
    b"X-Empty:",
    b"X-Spaces:   padded value \t",
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) \xc3\xa9",
    b"Cookie: _ga=GA1.2; a_b=c",
    b"Content-Length: 5",
    b"Content-Length: 5, 5",
    b"Content-Length: 05",
    b"Content-Length: x",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer_Encoding: chunked",
    b"content_length: 5",
    b"TRANSFER-ENCODING: chunked",
    b"Content-Lengths: 5",
    b"X-Content-Length: 5",
    b"X_Custom: fine",
    b" folded",
    b"\tfolded",
    b"Bad Name: x",
    b"Name : x",
    b"NoColon",
    b":novalue",
    b"X-Ctl: a\x01b",
    b"X-Del: a\x7fb",
    b"X-Cr: a\rb",
    b"X-Nul: \x00",
]


@pytest.mark.parametrize("request_line", _REQUEST_LINES)
@pytest.mark.parametrize("first", _FIELD_LINES)
@pytest.mark.parametrize(
    "second", [None, b"Host: b", b"Content-Length: 5", b" folded", b"X-Ctl: a\x01b"]
)
def test_usual_path_agrees_with_line_by_line(
    request_line: bytes, first: bytes, second: bytes | None
) -> None:
    """A head with CRLF line ends takes a one-match path (the whole head, or its field lines)
    when it is well-formed; the same head with bare LF line ends is judged line by line. The
    verdicts agree for every combination of good and bad lines."""
    lines = [request_line, first] if second is None else [request_line, first, second]
    crlf = b"\r\n".join(lines) + b"\r\n\r\n"
    lf = b"\n".join(lines) + b"\n\n"
    assert verdict(crlf, max_headers=100) == verdict(lf, max_headers=100)
    assert verdict(crlf, max_headers=1) == verdict(lf, max_headers=1)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /tiny HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\n\r\n",
        b"HEAD /a?b=c HTTP/1.0\r\nHost: a\r\nAccept-Encoding: gzip\r\nX-E:\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\nHost: a\r\nUser-Agent: caf\xc3\xa9 \t(x)\r\n\r\n",
    ],
)
def test_plain_heads_are_judged_by_one_match(data: bytes) -> None:
    """The heads most requests have (no body, origin-form) skip the line-by-line work: the
    cost the instruction benchmark measures rests on this."""
    assert request_framing._PLAIN_HEAD.fullmatch(data) is not None
    assert verdict(data) is request_framing._NO_BODY


@pytest.mark.parametrize(
    "data",
    [
        head(b"Content-Length: 0", request_line=b"GET / HTTP/1.1"),
        head(b"content_length: 0", request_line=b"GET / HTTP/1.1"),
        head(b"X: \x01", request_line=b"GET / HTTP/1.1"),
        head(b" folded", request_line=b"GET / HTTP/1.1"),
        head(request_line=b"CONNECT /x HTTP/1.1"),
        head(request_line=b"GET / HTTP/2.0"),
        head(request_line=b"GET * HTTP/1.1"),
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    ],
)
def test_other_heads_take_the_careful_way(data: bytes) -> None:
    assert request_framing._PLAIN_HEAD.fullmatch(data) is None


def test_the_header_limit_holds_for_plain_heads() -> None:
    data = b"GET / HTTP/1.1\r\n" + b"".join(b"X%d:\r\n" % i for i in range(12)) + b"\r\n"
    assert verdict(data, max_headers=12) == Accept()
    assert verdict(data, max_headers=11) == Reject(431, "more than 11 header fields")
