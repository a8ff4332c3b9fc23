"""A target's response head judged: its status line, its fields and how its body is framed.

kproxy's reader of what targets send (``upstream_http.ResponseReader``) uses these to parse
each response head once. A head is held to the grammar the client side holds requests to
(``http1``), and a body framing the proxy could not relay faithfully is refused
(:class:`BadResponse`), as h11 refuses it: RFC 9112 §4 (status line), §5 (fields) and §6.3
(message body length).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Container
from typing import Final

from kproxy.core.http1 import (
    FIELD_LINES,
    FIELD_TEXT,
    NO_BODY_STATUSES,
    Header,
    list_elements,
    parse_field_line,
)
from kproxy.errors import ProtocolError

STATUS_LINE: Final = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: (" + FIELD_TEXT + rb"))?")
# Both at once, for a head with CRLF line ends throughout (what servers send): one match
# instead of splitting off the status line and the blank line first. Group 4 is the fields.
CRLF_HEAD: Final = re.compile(STATUS_LINE.pattern + rb"\r\n(" + FIELD_LINES.pattern + rb")\r\n")


class BadResponse(ProtocolError):
    """The target's bytes are not a well-framed HTTP/1.1 response."""


class Framing(enum.Enum):
    NONE = enum.auto()  # HEAD answers, 1xx, 204, 304
    LENGTH = enum.auto()  # Content-Length bytes
    CHUNKED = enum.auto()
    CLOSE = enum.auto()  # until the target closes the connection


def split_head(head: bytes) -> tuple[int, int, bytes | None, bytes]:
    """The version digit, status, reason and CRLF-ended field lines of a head, checked."""
    status_line, _, fields = head.partition(b"\n")
    status_line = status_line.removesuffix(b"\r")
    match = STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise BadResponse(f"malformed status line {status_line[:80]!r}")
    version, status, reason = int(match[1]), int(match[2]), match[3]
    if status < 100:  # RFC 9110 §15: 100-599 (Go and h11 refuse lower codes too)
        raise BadResponse(f"invalid status code {status:03d}")
    fields = fields[: -2 if fields.endswith(b"\r\n") else -1]  # the blank line
    if fields.count(b"\n") != fields.count(b"\r\n"):  # bare LF line ends, as h11 allows
        fields = fields.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not FIELD_LINES.fullmatch(fields):
        raise BadResponse(field_error(fields))
    return version, status, reason, fields


def without_length(headers: list[Header]) -> list[Header]:
    return [h for h in headers if h[0] != b"content-length"]


def one_length(headers: list[Header], length: int) -> list[Header]:
    """The fields with every Content-Length replaced by one canonical field, where the first was."""
    out: list[Header] = []
    for name, value in headers:
        if name != b"content-length":
            out.append((name, value))
        elif length >= 0:
            out.append((name, b"%d" % length))
            length = -1  # written: later ones are dropped
    return out


def response_framing(
    headers: list[Header],
    names: Container[bytes],
    declared: int | None,
    status: int,
    head_request: bool,
) -> tuple[Framing, int]:
    """RFC 9112 §6.3 for a response: how its body is delimited."""
    if status < 200 or status in NO_BODY_STATUSES or head_request:
        return Framing.NONE, 0
    if b"transfer-encoding" in names:  # it wins over any Content-Length (§6.3 item 3)
        codings = list_elements(v for n, v in headers if n == b"transfer-encoding")
        if [c.lower() for c in codings] != [b"chunked"]:
            raise BadResponse("unsupported Transfer-Encoding (only chunked is)")
        return Framing.CHUNKED, 0
    if declared is None:
        return Framing.CLOSE, 0
    return Framing.LENGTH, declared


def field_error(fields: bytes) -> str:
    """Say which header line broke the grammar (only called once a head failed)."""
    for line in fields.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding in the response head"
        try:
            parse_field_line(line)
        except ProtocolError as exc:
            return f"invalid response header: {exc}"
    return "malformed response head"
