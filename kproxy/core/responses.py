"""Responses as kproxy writes them to a client: h11 reads what clients send, this writes back.

Writing needs no parser and no state machine beyond one request's: the head, then the body in
the framing the head announced. :class:`ResponseWriter` chooses that framing as RFC 9112 §6
(and h11 before it) does: a Content-Length when the length is known, else chunked for an
HTTP/1.1 client and "until close" for an HTTP/1.0 one; no body after HEAD, 1xx, 204 and 304.
It also keeps the one fact the connection needs afterwards: whether it may carry another
request (``keep_alive``).
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from typing import TypeAlias

import attrs

from kproxy.core.chunked import LAST_CHUNK, encode_chunk
from kproxy.core.headers import connection_tokens
from kproxy.core.http1 import FRAMING_FIELDS, NO_BODY_STATUSES, encode_head, length_value
from kproxy.core.response_head import Framing

Header: TypeAlias = tuple[bytes, bytes]

# Python 3.11 finds an Enum member through a descriptor (about 70 ns, where a global takes 10),
# and a response compares its framing a few times per call: these names stand for them.
_NONE, _LENGTH, _CHUNKED, _CLOSE = Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.CLOSE


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase (``Not Found``), or none for a status without one."""
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


@attrs.define
class ResponseWriter:
    """The answer to one request: bytes to send for its head, body and end."""

    head_request: bool = False
    http_version: bytes = b"1.1"  # the client's
    keep_alive: bool = True  # the connection may carry another request after this answer
    answered: bool = False  # a 100 Continue or the final head went out
    continued: bool = False  # a 100 Continue went out: the client sends its body
    started: bool = False  # the final head went out
    done: bool = False  # the whole response went out
    framing: Framing = Framing.NONE
    _remaining: int = 0  # Framing.LENGTH: body bytes still owed

    def restart(self, method: bytes, http_version: bytes, keep_alive: bool) -> None:
        """Ready for the answer to the connection's next request (``keep_alive``: see
        :func:`keeps_alive`; HTTP/1.0 clients, and those that say ``Connection: close``, get
        one answer only): one writer per connection, not one per request."""
        self.head_request = method == b"HEAD"
        self.http_version, self.keep_alive = http_version, keep_alive
        self.answered = self.continued = self.started = self.done = False
        self.framing, self._remaining = _NONE, 0

    def informational(self, status: int, headers: Sequence[Header] = ()) -> bytes:
        """A 1xx head (100 Continue, 103, or the 101 that hands the connection over)."""
        self.answered = True
        self.continued |= status == 100
        if status == 101:
            self.started = self.done = True
            self.keep_alive = False  # the connection is no longer HTTP
        return encode_head([b"HTTP/1.1 %d %b\r\n" % (status, reason_phrase(status))], headers)

    def head(
        self, status: int, headers: Sequence[Header], *, reason: bytes = b"", close: bool = False
    ) -> bytes:
        """The final response head, its framing fields set for the body to come.

        ``headers`` may carry a Content-Length (kept, and then the body must match it) or a
        Transfer-Encoding (the body is sent chunked); without either the body is chunked, or
        for HTTP/1.0 delimited by closing. ``close`` ends the connection after this answer.
        """
        fields = list(headers)
        # Each name's last value, built in C: which fields are there, without a scan per name.
        last = dict(fields)
        framing, length = _NONE, 0  # 204 and 304: the fields stay as they are
        if status not in NO_BODY_STATUSES:
            value = last.get(b"content-length")
            if (
                value is not None
                and len(last) == len(fields)
                and b"transfer-encoding" not in last
                and value.isdigit()
                and len(value) <= 18
            ):  # the usual: one plain length (_framing's and length_value's first case, inline)
                framing, length = _LENGTH, int(value)
            else:
                framing, length = _framing(fields, last)
                if framing is _CHUNKED and self.http_version < b"1.1":
                    framing = _CLOSE
                if framing is not _LENGTH:
                    fields = [h for h in fields if h[0] not in FRAMING_FIELDS]
                    if framing is _CHUNKED:
                        fields.append((b"transfer-encoding", b"chunked"))
        has_connection = b"connection" in last
        if has_connection and b"close" in connection_tokens(fields):
            close = True  # the caller said it in the fields: the connection ends all the same
        if close or framing is _CLOSE or not self.keep_alive:
            self.keep_alive = False
            if not has_connection:
                fields.append((b"connection", b"close"))
        if self.head_request:  # the head describes the body a GET would get; none follows
            framing, length = _NONE, 0
        self.framing, self._remaining = framing, length
        self.answered = self.started = True
        return encode_head(
            [b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status))], fields
        )

    def data(self, chunk: bytes | memoryview) -> bytes | memoryview:
        framing = self.framing
        if framing is _CHUNKED:
            return encode_chunk(chunk)
        if framing is _LENGTH:
            if len(chunk) > self._remaining:  # the head promised less: nothing more may go
                chunk = chunk[: self._remaining]
                self.keep_alive = False
            self._remaining -= len(chunk)
            return chunk
        return chunk if framing is _CLOSE else b""

    def end(self) -> bytes:
        self.done = True
        if self.framing is _CHUNKED:
            return LAST_CHUNK
        if self.framing is _LENGTH and self._remaining:
            self.keep_alive = False  # short of its length: only closing ends it for the client
        return b""

    def whole(
        self, status: int, headers: Sequence[Header], body: bytes, *, close: bool = False
    ) -> bytes:
        """A complete small response in one piece (error pages, redirects)."""
        return self.head(status, headers, close=close) + self.data(body) + self.end()


def keeps_alive(http_version: bytes, connection: frozenset[bytes]) -> bool:
    """Whether a request's connection may carry another after its answer, by its version
    and its Connection tokens (RFC 9112 §9.3)."""
    return http_version >= b"1.1" and b"close" not in connection


def _framing(headers: Sequence[Header], last: dict[bytes, bytes]) -> tuple[Framing, int]:
    """Chunked when told so or when no usable length is given (the callers give one canonical
    Content-Length: kproxy's own, or a target's as ``upstream_http`` passes it on).

    ``last`` is ``dict(headers)``: when no name repeats and there is no Transfer-Encoding, it
    gives the one Content-Length, if any, without a loop.
    """
    length: int | None = None
    if b"transfer-encoding" not in last and len(last) == len(headers):
        value = last.get(b"content-length")
        length = None if value is None else length_value(value)
        return (_CHUNKED, 0) if length is None else (_LENGTH, length)
    for name, value in headers:
        if name == b"transfer-encoding":
            return _CHUNKED, 0
        if name == b"content-length" and (number := length_value(value)) is not None:
            length = number
    return (_CHUNKED, 0) if length is None else (_LENGTH, length)
