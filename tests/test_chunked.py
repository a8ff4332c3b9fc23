"""kproxy.core.chunked: the chunked coding read and written, in tables.

Every table runs fed byte by byte, in 3-byte pieces and all at once: where a piece ends must
change nothing but how the data is cut. The two users apply it to their own traffic:
test_framing (request bodies, checked against h11) and test_upstream_http (response bodies).
"""

from __future__ import annotations

import pytest

from kproxy.core.chunked import (
    LAST_CHUNK,
    MAX_CHUNK_LINE,
    MAX_TRAILER_BYTES,
    ChunkedDecoder,
    encode_chunk,
)
from kproxy.errors import ProtocolError

STEPS = pytest.mark.parametrize("step", [1, 3, 1 << 20], ids=["bytewise", "by-3", "at-once"])
NEXT = b"GET /next HTTP/1.1\r\n\r\n"  # what follows a body, never read


def decode(body: bytes, step: int, decoder: ChunkedDecoder | None = None) -> tuple[bytes, int]:
    """Feed ``body`` and then NEXT in pieces of ``step`` bytes until the decoder is done.

    Returns:
      The data decoded, and how many bytes the decoder read (the body's length).
    """
    decoder = ChunkedDecoder() if decoder is None else decoder
    data = body + NEXT
    out, read = b"", 0
    for offset in range(0, len(data), step):
        piece = data[offset : offset + step]
        i = 0
        while i < len(piece) and not decoder.done:
            begin, i = decoder.next_data(piece, i)
            out += piece[begin:i]
        read += i
        if decoder.done:
            return out, read
    raise AssertionError("the body never ended")


@pytest.mark.parametrize(
    ("body", "data"),
    [
        pytest.param(b"0\r\n\r\n", b"", id="empty"),
        pytest.param(b"5\r\nhello\r\n0\r\n\r\n", b"hello", id="one-chunk"),
        pytest.param(b"5;a=b\r\nhello\r\n0\r\n\r\n", b"hello", id="extension"),
        pytest.param(
            b'5;a="q;\\"x"; b ; c = d\r\nhello\r\n0\r\n\r\n', b"hello", id="quoted-extensions"
        ),
        pytest.param(b"5 \r\nhello\r\n0\t\r\n\r\n", b"hello", id="whitespace-before-crlf"),
        pytest.param(b"A\r\n0123456789\r\n00\r\n\r\n", b"0123456789", id="hex-and-zeros"),
        pytest.param(b"000000000000005\r\nhello\r\n0\r\n\r\n", b"hello", id="leading-zeros"),
        pytest.param(b"5\r\nhello\r\n0\r\nX-T: 1\r\nY: \r\n\r\n", b"hello", id="trailers"),
        pytest.param(b"1\r\n\n\r\n1\r\n\r\r\n0\r\n\r\n", b"\n\r", id="cr-lf-as-data"),
        pytest.param(
            b"".join(encode_chunk(b"x" * n) for n in range(1, 200)) + LAST_CHUNK,
            b"".join(b"x" * n for n in range(1, 200)),
            id="encoded",
        ),
        pytest.param(
            b"5;a=" + b"x" * (MAX_CHUNK_LINE - 4) + b"\r\nhello\r\n0\r\n\r\n",
            b"hello",
            id="longest-line",
        ),
        pytest.param(
            b"0\r\nX-T: " + b"v" * (MAX_TRAILER_BYTES - 9) + b"\r\n\r\n", b"", id="most-trailers"
        ),
    ],
)
@STEPS
def test_good_bodies(body: bytes, data: bytes, step: int) -> None:
    assert decode(body, step) == (data, len(body))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # chunk size lines
        (b"10000000000000005\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),  # 17 digits
        (b"8000000000000000\r\nhello\r\n0\r\n\r\n", "chunk size too large"),  # 2^63
        (b"-5\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"+5\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b" 5\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5 ;a=b\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),  # as h11
        (b"\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5_0\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"zz\r\nhello\r\n0\r\n\r\n", "invalid chunk size line b'zz'"),
        (b"5;\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5;a=\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b'5;a="open\r\nhello\r\n0\r\n\r\n', "invalid chunk size line"),
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5\r\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5;a\x00b\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5;a=b c\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5;a=" + b"x" * (MAX_CHUNK_LINE - 3) + b"\r\nhello\r\n0\r\n\r\n", "line too long"),
        (b"5" + b"0" * (MAX_CHUNK_LINE + 10), "chunk size line too long"),  # no end in sight
        # bare LF
        (b"5\nhello\n0\n\n", "bare LF"),
        (b"5\r\nhello\r\n0\n\n", "bare LF"),
        (b"5\r\nhello\r\n0\r\n\n", "bare LF"),
        (b"0\r\nX-T: 1\n\r\n", "bare LF"),
        (b"5;a\nGET /smuggled HTTP/1.1\r\n", "bare LF"),
        # the CRLF after the data
        (b"5\r\nhelloXX0\r\n\r\n", "not followed by CRLF"),
        (b"5\r\nhello\n0\r\n\r\n", "not followed by CRLF"),
        (b"5\r\nhello\r0\r\n\r\n", "not followed by CRLF"),
        (b"3\r\nhello\r\n0\r\n\r\n", "not followed by CRLF"),
        # trailers
        (b"5\r\nhello\r\n0\r\nX T: 1\r\n\r\n", "malformed trailer: invalid header name"),
        (b"5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n", "trailer: obsolete line folding"),
        (b"5\r\nhello\r\n0\r\nX-T: \x01\r\n\r\n", "malformed trailer: invalid byte"),
        (b"0\r\nX-T\r\n\r\n", "malformed trailer: header line without a colon"),
        (b"0\r\nX-T: " + b"v" * (MAX_TRAILER_BYTES - 6) + b"\r\n\r\n", "trailer section too large"),
        (b"0\r\nX-T: " + b"v" * 70_000, "trailer section too large"),  # no end in sight
        # framing without data (Go's "too much non-data")
        (b"".join(b"1;e=" + b"x" * 200 + b"\r\nx\r\n" for _ in range(100)), "too much framing"),
    ],
)
@STEPS
def test_bad_bodies(body: bytes, reason: str, step: int) -> None:
    with pytest.raises(ProtocolError, match=reason.replace("\\", "\\\\")):
        decode(body, step)


def test_framing_overhead_is_forgiven_by_data() -> None:
    """Go's rule: 16 bytes of framing per chunk plus twice the chunk's data are free."""
    ext = b";e=" + b"x" * 100
    body = b"".join(b"80" + ext + b"\r\n" + b"d" * 0x80 + b"\r\n" for _ in range(1000))
    data, read = decode(body + LAST_CHUNK, 1 << 20)
    assert (data, read) == (b"d" * 0x80 * 1000, len(body) + len(LAST_CHUNK))


def test_framing_without_data_can_be_allowed() -> None:
    """Response bodies are read without that limit (``max_excess_framing=None``)."""
    body = b"".join(b"1;e=" + b"x" * 200 + b"\r\nx\r\n" for _ in range(100)) + LAST_CHUNK
    decoder = ChunkedDecoder(max_excess_framing=None)
    assert decode(body, 1 << 20, decoder) == (b"x" * 100, len(body))


def test_data_comes_in_runs_as_it_arrives() -> None:
    decoder = ChunkedDecoder()
    assert decoder.next_data(b"5\r\nhel") == (3, 6)
    assert decoder.next_data(b"lo\r\n3\r\nabc\r\n0\r\n\r\nNEXT") == (0, 2)
    assert decoder.next_data(b"lo\r\n3\r\nabc\r\n0\r\n\r\nNEXT", 2) == (7, 10)
    assert decoder.next_data(b"lo\r\n3\r\nabc\r\n0\r\n\r\nNEXT", 10) == (17, 17)
    assert decoder.done
    assert decoder.next_data(b"more") == (0, 0)  # nothing is read after the body


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", b"", id="empty-is-nothing"),  # b"0\r\n\r\n" would end the body
        pytest.param(b"x", b"1\r\nx\r\n", id="one"),
        pytest.param(b"0123456789abcdef", b"10\r\n0123456789abcdef\r\n", id="hex-size"),
        pytest.param(b"a\r\n0\r\n\r\n", b"8\r\na\r\n0\r\n\r\n\r\n", id="framing-as-data"),
        pytest.param(b"z" * 300, b"12c\r\n" + b"z" * 300 + b"\r\n", id="300-bytes"),
    ],
)
def test_encode_chunk(data: bytes, expected: bytes) -> None:
    assert encode_chunk(data) == expected
    assert LAST_CHUNK == b"0\r\n\r\n"
