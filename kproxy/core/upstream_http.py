"""HTTP/1.1 as kproxy speaks it to a target: request heads written directly, responses read once.

The request side needs no parser: every field kproxy sends was either checked on the way in
(``request_framing`` and h11 on the client side) or made by kproxy itself, so the head is written as
is (:func:`encode_request_head`; the body with ``chunked.encode_chunk``).

The response side is :class:`ResponseReader`, shaped like h11's ``Connection``:
``feed(data)`` (``b""`` for EOF), then ``next_event()``, which returns a :class:`ResponseHead`,
body bytes, :data:`END`, or :data:`NEED_DATA`. Each head is parsed once, and the body is
delimited by the framing it declared (RFC 9112 §6.3: none, Content-Length, chunked, or until
close). A target that breaks its framing raises :class:`~kproxy.core.response_head.BadResponse`,
so a response cut short never passes for a complete one. What the target sends is held to the
same grammar the client side holds requests to (``response_head`` judges each head with
``http1``'s rules; ``chunked`` checks chunked bodies), and a response whose framing the proxy
could not relay faithfully (a transfer coding other than chunked, conflicting lengths) is
refused, as h11 refuses it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final, NamedTuple, TypeAlias

import attrs

from kproxy.core.chunked import ChunkedDecoder
from kproxy.core.headers import HOP_BY_HOP, connection_tokens
from kproxy.core.http1 import (
    NO_BODY_STATUSES,
    OWS,
    content_length,
    encode_head,
    find_head_end,
    length_value,
)
from kproxy.core.response_head import (
    CRLF_HEAD,
    BadResponse,
    Framing,
    one_length,
    response_framing,
    split_head,
    without_length,
)
from kproxy.errors import ProtocolError

Header: TypeAlias = tuple[bytes, bytes]

MAX_HEAD_BYTES: Final = 1024 * 1024  # status line + headers; as much as kproxy takes from clients
# Body pieces this large are views of the bytes read, not copies: a copy (and its allocation)
# costs more than a view's two objects from about here on.
VIEW_FROM: Final = 4096  # bytes


class _Sentinel(enum.Enum):
    NEED_DATA = enum.auto()
    END = enum.auto()
    CLOSED = enum.auto()


NEED_DATA: Final = _Sentinel.NEED_DATA  # feed more bytes
END: Final = _Sentinel.END  # the body is complete
CLOSED: Final = _Sentinel.CLOSED  # EOF before the first byte of a head: no response at all

# A piece of a response body: a memoryview of the bytes read when it is large (see
# ResponseReader), which every writer of bytes takes as it takes bytes.
Body: TypeAlias = bytes | memoryview
Event: TypeAlias = "ResponseHead | Body | _Sentinel"


# The values made for every request (these two, ``headers.UpstreamRequestHeaders`` and
# ``exchange.RequestHead``) are NamedTuples, not attrs' frozen classes: a frozen __init__
# sets each field through a call (UpstreamRequest's five cost ~7,500 instructions under
# callgrind), where a NamedTuple is one tuple (too few to tell from the noise).


class ResponseHead(NamedTuple):
    status: int
    reason: bytes
    headers: list[Header]  # lowercase names, values without surrounding whitespace, in order
    framing: Framing
    length: int = 0  # for Framing.LENGTH
    keep_alive: bool = True  # the target allows another request on this connection
    # ``headers`` without the hop-by-hop fields (headers.strip_response_hop_by_hop's answer),
    # gathered as they were read, for the usual head: its only hop-by-hop fields are of
    # HOP_BY_HOP's names and proxy-*, and its Connection field names no other field present.
    # None for any other head (strip_response_hop_by_hop decides).
    end_to_end: list[Header] | None = None

    @property
    def informational(self) -> bool:
        return self.status < 200


class UpstreamRequest(NamedTuple):
    """A request as it goes to a target: the rewritten head, and how its body is framed."""

    method: bytes
    target: bytes
    headers: list[Header]  # with the framing fields kproxy chose (at most one of CL, TE)
    chunked: bool  # the body goes chunked
    upgrade: bool  # the request asks to switch protocols


def encode_request_head(method: bytes, target: bytes, headers: Iterable[Header]) -> bytes:
    """``METHOD target HTTP/1.1`` and the fields, exactly as given (already checked)."""
    return encode_head([method, b" ", target, b" HTTP/1.1\r\n"], headers)


class _Body(enum.Enum):
    HEAD = enum.auto()  # reading a head (the first, or the next after a 1xx)
    LENGTH = enum.auto()
    CHUNKED = enum.auto()
    CLOSE = enum.auto()
    DONE = enum.auto()


# Python 3.11 finds an Enum member through a descriptor (about 70 ns, where a global takes 10),
# and the reader compares its state a few times per event: it uses these names instead.
_HEAD, _LENGTH, _CLOSE, _DONE = _Body.HEAD, _Body.LENGTH, _Body.CLOSE, _Body.DONE
_NO_BODY, _BY_LENGTH, _CHUNKED = Framing.NONE, Framing.LENGTH, Framing.CHUNKED

_BODY_STATES: Final = {
    Framing.NONE: _DONE,
    Framing.LENGTH: _LENGTH,
    Framing.CHUNKED: _Body.CHUNKED,
    Framing.CLOSE: _CLOSE,
}


@attrs.define
class ResponseReader:
    """Reads one response to one request (1xx heads first, if any), then ``restart`` for the
    next one on the same connection.

    The bytes fed are kept as they came (``_data``, read from ``_pos`` on), not copied into
    a buffer: a body piece of at least VIEW_FROM bytes is a memoryview of them (a 64 KiB body
    read with its head is neither copied nor allocated again), a smaller one a bytes copy."""

    head_request: bool = False  # a response to HEAD has no body, whatever it declares
    max_head_bytes: int = MAX_HEAD_BYTES
    received: int = 0  # bytes fed so far: tells "closed silently" from "sent garbage"
    eof: bool = False
    # What was fed and not yet read, from ``_pos`` on: bytes as received, or while a head
    # arrives in pieces a bytearray they are gathered in (each read is copied once, not the
    # whole head at each read).
    _data: bytes | bytearray = b""
    _pos: int = 0
    _state: _Body = _Body.HEAD
    _remaining: int = 0  # body bytes left (LENGTH)
    _searched: int = 0  # how far the unread bytes were searched for a head's end
    _chunks: ChunkedDecoder | None = None  # the body's, when it is chunked

    def restart(self, *, head_request: bool) -> None:
        """Ready for the response to the next request on the same connection (the previous
        one was read to its end): as a new reader, without making one per exchange."""
        self.head_request = head_request
        self.received = self._remaining = self._searched = self._pos = 0
        self.eof = False
        self._data = b""
        self._state = _HEAD
        self._chunks = None

    @property
    def done(self) -> bool:
        return self._state is _DONE

    @property
    def has_trailing(self) -> bool:
        """Bytes came after what was read (``trailing``, without copying them)."""
        return self._pos < len(self._data)

    @property
    def trailing(self) -> bytes:
        """Bytes after what was read: the upgraded stream after a 101, or stray bytes."""
        return bytes(self._data[self._pos :])

    def feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
            return
        self.received += len(data)
        held, pos = self._data, self._pos
        if pos < len(held):  # an unfinished head (or stray bytes): gathered
            if pos or type(held) is bytes:
                held = bytearray(held[pos:])
            held += data
            self._data, self._pos = held, 0
        else:
            self._data, self._pos = data, 0

    def next_event(self) -> Event:
        """The next head, body bytes, END, CLOSED or NEED_DATA; raises BadResponse."""
        state = self._state
        if state is _HEAD:
            return self._read_head()
        if state is _LENGTH:
            return self._read_length()
        if state is _CLOSE:
            if self._pos < len(self._data):
                return self._take(len(self._data) - self._pos)
            if self.eof:
                self._state = _DONE
                return END
            return NEED_DATA
        if state is _DONE:
            return END
        return self._read_chunked()

    def _take(self, n: int) -> Body:
        """The next ``n`` unread bytes (there are as many), as a body piece."""
        data, pos = self._data, self._pos
        if type(data) is not bytes:  # stray bytes after a response, gathered: rare
            data = self._data = bytes(data)
        self._pos = end = pos + n
        if n == len(data):  # the whole of one read: as it came
            return data
        if n < VIEW_FROM:
            return data[pos:end]
        with memoryview(data) as view:
            return view[pos:end]

    def _read_length(self) -> Event:
        available = len(self._data) - self._pos
        if available and self._remaining:
            data = self._take(min(self._remaining, available))
            self._remaining -= len(data)
            if not self._remaining:
                self._state = _DONE
            return data
        if not self._remaining:
            self._state = _DONE
            return END
        if self.eof:
            raise BadResponse(f"connection closed with {self._remaining} body bytes missing")
        return NEED_DATA

    def _read_head(self) -> Event:
        data = self._data
        if self._pos:  # a head after a 1xx one: read from the start of the bytes
            data = self._data = data[self._pos :]
            self._pos = 0
        if not data and not self.eof:
            return NEED_DATA  # nothing to look at yet (the first look, usually)
        end = find_head_end(data, self._searched)
        if end is None:
            if len(data) > self.max_head_bytes:
                raise BadResponse(f"response head larger than {self.max_head_bytes} bytes")
            if self.eof:
                if not data and self.received == 0:
                    return CLOSED
                raise BadResponse("connection closed in the middle of the response head")
            self._searched = len(data)
            return NEED_DATA
        if end > self.max_head_bytes:
            raise BadResponse(f"response head larger than {self.max_head_bytes} bytes")
        if type(data) is not bytes:  # gathered: bytes again, which body pieces may view
            data = self._data = bytes(data)
        head = self._parse_head(data[:end])
        self._pos = end
        self._searched = 0
        if head.status == 101:
            self._state = _DONE  # what follows is the new protocol's: see ``trailing``
            return head
        if head.status < 200:
            return head  # the state stays HEAD: the final response follows
        self._state = _BODY_STATES[head.framing]
        self._remaining = head.length
        if head.framing is _CHUNKED:
            # Responses never had Go's limit on framing without data (see ChunkedDecoder).
            self._chunks = ChunkedDecoder(max_excess_framing=None)
        return head

    def _parse_head(self, head: bytes) -> ResponseHead:
        match = CRLF_HEAD.fullmatch(head)
        if match is None:  # bare LF line ends, or a head to refuse: step by step
            version, status, reason, fields = split_head(head)
        else:
            digit, code, reason, fields = match.groups()  # one call, not four
            version, status = int(digit), int(code)
            if status < 100:  # as split_head says it
                raise BadResponse(f"invalid status code {status:03d}")
        head_request = self.head_request
        headers: list[Header] = []
        gathered: list[Header] = []  # the end-to-end fields, as ResponseHead.end_to_end says
        proxy_named = False  # a proxy* field: is_hop_by_hop's to judge, not the usual head
        for line in fields.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            field = (name := name.lower(), value.strip(OWS))
            headers.append(field)
            if name[:5] == b"proxy":
                proxy_named = True
            elif name not in HOP_BY_HOP:
                gathered.append(field)
        end_to_end = None if proxy_named else gathered
        # Each name's last value, built in C: it answers "is there one" for every name, and
        # when no name repeats (the usual head) it is each name's only value.
        last = dict(headers)
        once = len(last) == len(headers)
        declared: int | None = None
        confused = False  # both Transfer-Encoding and Content-Length
        if b"content-length" in last:
            value = last[b"content-length"]
            if b"transfer-encoding" in last:
                # RFC 9112 §6.3: the length is void and must not be forwarded, and the
                # message, a sign of a confused sender, ends the connection.
                headers, confused, end_to_end = without_length(headers), True, None
            elif once and value.isdigit() and len(value) <= 18 and value[:1] != b"0":
                declared = int(value)  # the usual field: one plain number (length_value's)
            else:
                declared = length_value(value) if once else None
                if declared is None or (value[:1] == b"0" and value != b"0"):
                    # Not the one plain number one_length would make of it: judged whole.
                    try:
                        declared = content_length([v for n, v in headers if n == b"content-length"])
                    except ProtocolError as exc:
                        if status >= 200 and status not in NO_BODY_STATUSES and not head_request:
                            raise BadResponse(str(exc)) from None  # it frames the body
                        # It frames nothing: dropped, as Go does.
                        declared, headers, end_to_end = None, without_length(headers), None
                    else:  # one field, one plain number, as h11 and Go pass it on (RFC 9110 §8.6)
                        headers, end_to_end = one_length(headers, declared), None
        if declared is not None and status >= 200 and status not in NO_BODY_STATUSES:
            # The usual: a length and no Transfer-Encoding (with one it is void, see above).
            framing, length = (_NO_BODY, 0) if head_request else (_BY_LENGTH, declared)
        else:
            framing, length = response_framing(headers, last, declared, status, head_request)
        if (connection := last.get(b"connection")) is not None:
            # It may name other fields hop-by-hop: one token that names none present (the
            # usual keep-alive or close) leaves end_to_end as gathered.
            token = connection.lower()
            if not once or b"," in token or (token in last and token not in HOP_BY_HOP):
                end_to_end = None
        keep_alive = (
            version >= 1  # HTTP/1.1 or a later 1.x
            and not confused
            and framing is not Framing.CLOSE
            and (
                connection is None
                # The one Connection value cannot hold a "close" token: no need to list them.
                or (once and b"close" not in connection.lower())
                or b"close" not in connection_tokens(headers)
            )
        )
        # tuple.__new__ (C) for every field: the NamedTuple's own __new__ is a Python call.
        return tuple.__new__(
            ResponseHead, (status, reason or b"", headers, framing, length, keep_alive, end_to_end)
        )

    def _read_chunked(self) -> Event:
        chunks = self._chunks
        assert chunks is not None  # set with the state
        try:
            begin, end = chunks.next_data(self._data, self._pos)
        except ProtocolError as exc:
            raise BadResponse(str(exc)) from None
        if begin < end:
            self._pos = begin
            return self._take(end - begin)
        self._pos = end
        if chunks.done:
            self._state = _DONE
            return END
        if self.eof:
            raise BadResponse("connection closed in the middle of a chunked body")
        return NEED_DATA
