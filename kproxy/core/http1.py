"""The HTTP/1.1 grammar both directions share: field lines, Content-Length, head encoding.

kproxy reads HTTP/1.1 in two places (request heads from clients, ``request_framing``; responses from
targets, ``upstream_http``) and writes it in two (requests to targets, responses to clients,
``responses``). The rules they have in common are written here once: the byte classes of RFC
9110 §5 and RFC 9112 §3-5, the one reading of Content-Length (RFC 9110 §8.6, RFC 9112 §6.3),
the statuses that never carry a body, and the one head encoder. Chunked coding has its own
module (``chunked``).

Grammar violations raise :class:`~kproxy.errors.ProtocolError`; each reader turns it into its
own answer (a 400 for a client, a :class:`~kproxy.core.response_head.BadResponse` for a target).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

from kproxy.errors import ProtocolError

Header: TypeAlias = tuple[bytes, bytes]

MAX_CONTENT_LENGTH: Final = (1 << 63) - 1  # bytes; Go's parseContentLength refuses more
NO_BODY_STATUSES: Final = frozenset({204, 304})  # and every 1xx (RFC 9110 §6.4.1)
FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding"})
OWS: Final = b" \t"  # RFC 9110 §5.6.3 optional whitespace, as ``bytes.strip`` takes it

# RFC 9110 §5.6.2 token.
TOKEN: Final = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
TOKEN_RE: Final = re.compile(TOKEN)
# RFC 9110 §5.5 field-value: VCHAR and obs-text, with SP and HTAB anywhere (so ``OWS
# field-value OWS`` too, which is the same set of strings); no other control byte.
FIELD_TEXT: Final = rb"[\t\x20-\x7e\x80-\xff]*"
FIELD_TEXT_RE: Final = re.compile(FIELD_TEXT)
# The field lines of a head all at once, each ``token ":" OWS field-value OWS CRLF``: one
# C-level match instead of two per line. A head that fails it is judged line by line, with
# :func:`parse_field_line`, which says what is wrong.
FIELD_LINES: Final = re.compile(rb"(?:" + TOKEN + rb":" + FIELD_TEXT + rb"\r\n)*")
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")  # where h11 ends a head (h11/_receivebuffer.py)


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int | None:
    """The offset just past the blank line that ends a head, found as h11 finds it.

    Args:
      buffer: bytes received since the previous message ended.
      start: where a previous search of the same buffer stopped (its length then), so a head
        that trickles in is not searched from the beginning each time.

    Returns:
      The head's length, or None while the head is incomplete. A buffer that starts with an
      empty line is a (malformed) head of that one line, as in h11.
    """
    if buffer[:1] == b"\n":
        return 1
    if buffer[:2] == b"\r\n":
        return 2
    match = _BLANK_LINE.search(buffer, max(0, start - 2))
    return match.end() if match is not None else None


def parse_field_line(line: bytes) -> Header:
    """One ``name: value`` line of a head or trailer section (without its line end).

    Returns:
      The lowercase name and the value without surrounding whitespace.

    Raises:
      ProtocolError: the line breaks RFC 9112 §5 (obsolete folding included, §5.2).
    """
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError("obsolete line folding")
    if b"\r" in line:
        raise ProtocolError("bare CR in a header line")
    name, colon, value = line.partition(b":")
    if not colon:
        raise ProtocolError(f"header line without a colon: {line[:40]!r}")
    if not TOKEN_RE.fullmatch(name):
        raise ProtocolError(f"invalid header name {name[:40]!r}")
    value = value.strip(OWS)
    if not FIELD_TEXT_RE.fullmatch(value):
        raise ProtocolError(f"invalid byte in the value of header {name.decode('ascii')}")
    return name.lower(), value


def list_elements(values: Iterable[bytes]) -> list[bytes]:
    """The elements of a comma-separated list field given in one or more lines."""
    return [element.strip(OWS) for value in values for element in value.split(b",")]


def length_value(value: bytes) -> int | None:
    """One Content-Length element as a number, or None unless it is ASCII digits below 2**63.

    Leading zeros are allowed (``005`` is 5), as in Go and h11; 2**63 and more are refused,
    as Go's parseContentLength refuses them.
    """
    if not value.isdigit():  # bytes.isdigit: ASCII digits only
        return None
    if len(value) <= 18:  # below 10**18 < 2**63: no need to look further
        return int(value)
    digits = value.lstrip(b"0") or b"0"
    if len(digits) > 19:  # checked before int(): 5000 digits are refused without converting
        return None
    number = int(digits)
    return number if number <= MAX_CONTENT_LENGTH else None


def content_length(values: Sequence[bytes]) -> int:
    """The body length that a message's Content-Length fields declare (RFC 9110 §8.6).

    Args:
      values: the value of every Content-Length field line, in order (at least one).

    Returns:
      The one number they give. A list (``5, 5``) and repeated fields count as one value if
      every element is spelled the same (RFC 9112 §6.3 item 5; ``5`` and ``05`` conflict).

    Raises:
      ProtocolError: an element that is not a number, elements that differ, or 2**63 or more.
    """
    if len(values) == 1 and (number := length_value(values[0])) is not None:
        return number  # the usual field: one plain number
    elements = list_elements(values)
    if not all(e.isdigit() for e in elements):
        raise ProtocolError("malformed Content-Length")
    if len(set(elements)) != 1:
        raise ProtocolError("conflicting Content-Length values")
    number = length_value(elements[0])
    if number is None:
        raise ProtocolError("Content-Length too large")
    return number


def encode_head(start_line: list[bytes], headers: Iterable[Header]) -> bytes:
    """A head: the start line, then the fields exactly as given (already checked), then CRLF.

    Args:
      start_line: the pieces of ``METHOD target HTTP/1.1`` or ``HTTP/1.1 status reason``
        and its CRLF, in a new list that the head is built onto (no bytes are joined twice).
      headers: the fields in the order to send them.
    """
    # Each line made in C (``b": ".join`` of a field's pair), none in a loop of Python's.
    fields = b"\r\n".join(map(b": ".join, headers))
    start_line += (fields, b"\r\n\r\n" if fields else b"\r\n")
    return b"".join(start_line)
