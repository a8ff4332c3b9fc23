"""kproxy.core.http1: the grammar both directions share, in tables.

The readers that use it have their own tables (test_framing for requests, test_upstream_http
for responses); these pin the shared pieces themselves.
"""

from __future__ import annotations

import re

import h11
import pytest

from kproxy.core.http1 import (
    FIELD_LINES,
    FIELD_TEXT_RE,
    MAX_CONTENT_LENGTH,
    content_length,
    encode_head,
    find_head_end,
    length_value,
    list_elements,
    parse_field_line,
)
from kproxy.errors import KProxyError, ProtocolError

Header = tuple[bytes, bytes]

# --- find_head_end: where h11 ends a head -------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "end"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 27),
        (b"GET / HTTP/1.1\nHost: a\n\nrest", 24),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\nrest", 26),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 2),  # a leading empty line is a (bad) head of its own
        (b"\nGET", 1),
        (b"", None),
    ],
)
def test_find_head_end(buffer: bytes, end: int | None) -> None:
    assert find_head_end(buffer) == end


def test_find_head_end_agrees_with_h11_when_searched_piecewise() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
    searched, end = 0, None
    for size in range(1, len(data) + 1):
        end = find_head_end(data[:size], searched)
        if end is not None:
            break
        searched = size
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    assert isinstance(conn.next_event(), h11.Request)
    assert end == len(data) - len(conn.trailing_data[0])  # h11 took the same bytes
    assert conn.trailing_data[0].startswith(b"GET /next")


# --- parse_field_line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b"Host: a", (b"host", b"a")),
        (b"Host:a", (b"host", b"a")),
        (b"X-Empty:", (b"x-empty", b"")),
        (b"X-Spaces: \t padded value \t", (b"x-spaces", b"padded value")),
        (b"X-A: caf\xe9", (b"x-a", b"caf\xe9")),  # obs-text
        (b"X-A: a \t b", (b"x-a", b"a \t b")),
        (b"X_Custom: fine", (b"x_custom", b"fine")),
    ],
)
def test_field_line(line: bytes, field: Header) -> None:
    assert parse_field_line(line) == field


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b" folded", "obsolete line folding"),
        (b"\tfolded", "obsolete line folding"),
        (b"X-A: a\rb", "bare CR"),
        (b"NoColon", "without a colon"),
        (b": b", "invalid header name"),
        (b"X A: b", "invalid header name"),
        (b"X-A : b", "invalid header name"),
        (b"X\xffA: b", "invalid header name"),
        (b"X-A: a\x00b", "invalid byte in the value of header X-A"),
        (b"X-A: a\x01b", "invalid byte"),
        (b"X-A: a\x7fb", "invalid byte"),
    ],
)
def test_bad_field_line(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        parse_field_line(line)


@pytest.mark.parametrize(
    "line",
    [b"Host: a", b"X-Empty:", b"X: \t a \t", b"X: caf\xe9", b"X: a\x01", b"X: a\x7f", b"X A: b"],
)
def test_field_lines_matches_what_parse_field_line_accepts(line: bytes) -> None:
    """The one-match fast path and the line-by-line reading agree on each line."""
    try:
        parse_field_line(line)
    except ProtocolError:
        accepted = False
    else:
        accepted = True
    assert (FIELD_LINES.fullmatch(line + b"\r\n") is not None) is accepted


def test_field_text_is_every_byte_but_controls() -> None:
    allowed = {b for b in range(256) if FIELD_TEXT_RE.fullmatch(bytes([b]))}
    assert allowed == {9} | set(range(0x20, 0x7F)) | set(range(0x80, 0x100))


def test_list_elements() -> None:
    assert list_elements([b"a, b", b" c ,", b"d"]) == [b"a", b"b", b"c", b"", b"d"]


# --- Content-Length -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (b"0", 0),
        (b"5", 5),
        (b"005", 5),
        (b"123456789012345678", 123456789012345678),  # 18 digits: taken at once
        (b"%d" % MAX_CONTENT_LENGTH, MAX_CONTENT_LENGTH),
        (b"000%d" % MAX_CONTENT_LENGTH, MAX_CONTENT_LENGTH),  # zeros do not count
        (b"%d" % (MAX_CONTENT_LENGTH + 1), None),
        (b"9" * 5000, None),
        (b"", None),
        (b"-5", None),
        (b"+5", None),
        (b" 5", None),
        (b"5,5", None),
        (b"0x5", None),
        (b"\xd9\xa5", None),  # Arabic-Indic five: not an ASCII digit
    ],
)
def test_length_value(value: bytes, number: int | None) -> None:
    assert length_value(value) == number


@pytest.mark.parametrize(
    ("values", "number"),
    [
        ([b"5"], 5),
        ([b"005"], 5),
        ([b"5, 5"], 5),
        ([b"5", b"5"], 5),
        ([b"5 ,5", b"5"], 5),
        ([b"05", b"05"], 5),
        ([b"%d" % MAX_CONTENT_LENGTH], MAX_CONTENT_LENGTH),
    ],
)
def test_content_length(values: list[bytes], number: int) -> None:
    assert content_length(values) == number


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([b"-5"], "malformed Content-Length"),
        ([b""], "malformed Content-Length"),
        ([b"5,"], "malformed Content-Length"),
        ([b"5 5"], "malformed Content-Length"),
        ([b"5", b"x"], "malformed Content-Length"),
        ([b"5, 6"], "conflicting Content-Length values"),
        ([b"5", b"6"], "conflicting Content-Length values"),
        ([b"5", b"05"], "conflicting Content-Length values"),  # spelled differently
        ([b"%d" % (MAX_CONTENT_LENGTH + 1)], "Content-Length too large"),
        ([b"9" * 5000, b"9" * 5000], "Content-Length too large"),
    ],
)
def test_bad_content_length(values: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        content_length(values)
    assert isinstance(info.value, KProxyError)


# --- encode_head --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start_line", "headers", "expected"),
    [
        ([b"HTTP/1.1 204 No Content\r\n"], [], b"HTTP/1.1 204 No Content\r\n\r\n"),
        (
            [b"GET", b" ", b"/", b" HTTP/1.1\r\n"],
            [(b"X-A", b""), (b"x-a", b"1, 2"), (b"X-A", b"caf\xe9")],
            b"GET / HTTP/1.1\r\nX-A: \r\nx-a: 1, 2\r\nX-A: caf\xe9\r\n\r\n",
        ),
    ],
)
def test_encode_head(start_line: list[bytes], headers: list[Header], expected: bytes) -> None:
    """Fields exactly as given: names keep their case, repeats stay, nothing is re-checked."""
    assert encode_head(list(start_line), headers) == expected
    assert encode_head(list(start_line), iter(headers)) == expected  # any iterable
