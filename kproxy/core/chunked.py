"""The chunked transfer coding (RFC 9112 §7.1), read and written the same way in both directions.

:class:`ChunkedDecoder` reads a chunked body as its bytes arrive, in pieces cut anywhere: it
finds the chunk data and checks every framing byte around it, and raises
:class:`~kproxy.errors.ProtocolError` at the first that breaks the rules. The client side
checks request bodies with it before h11 reads them (``framing.ChunkedBody``); the target side
decodes response bodies with it (``upstream_http.ResponseReader``). The rules are stricter
than h11 0.16 exactly where h11 is lenient:

- chunk sizes of 2^63 or more (h11 reads up to 20 hex digits);
- chunk extensions outside the RFC 9112 §7.1.1 grammar (h11 takes any byte after ``;``, bare
  CR and NUL included);
- chunk lines over :data:`MAX_CHUNK_LINE` and trailer sections over :data:`MAX_TRAILER_BYTES`;
- more framing than data (Go's "too much non-data"), for request bodies;
- a bare LF in chunk framing or trailers (h11 waits for a CRLF that may never come).

Trailer fields are checked as header lines are (``http1.parse_field_line``), then dropped:
kproxy forwards none. :func:`encode_chunk` and :data:`LAST_CHUNK` write the coding.
"""

from __future__ import annotations

import enum
import re
from typing import Final

import attrs

from kproxy.core.http1 import OWS, TOKEN, parse_field_line
from kproxy.errors import ProtocolError

MAX_CHUNK_SIZE: Final = (1 << 63) - 1  # bytes; Go's parseHexUint stops at 16 hex digits
MAX_CHUNK_LINE: Final = 4096  # bytes of chunk-size line, as Go's chunked reader (maxLineLength)
MAX_TRAILER_BYTES: Final = 64 * 1024  # bytes of trailer section; trailers are dropped anyway
# Go's chunked reader allows 16 bytes of framing per chunk plus twice the chunk's data, and
# fails once the framing beyond that passes 16 KiB (net/http/internal/chunked.go).
CHUNK_OVERHEAD_ALLOWANCE: Final = 16  # bytes per chunk
MAX_EXCESS_FRAMING: Final = 16 * 1024  # bytes
LAST_CHUNK: Final = b"0\r\n\r\n"

_QUOTED_STRING: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# RFC 9112 §7.1.1: chunk-size [ chunk-ext ] CRLF, with
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ). h11 wants the first
# ";" right after the size, and both h11 and Go allow whitespace before the CRLF.
CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"(?:;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + _QUOTED_STRING + rb"))?"
    rb"[ \t]*)*"
)


def encode_chunk(data: bytes | memoryview) -> bytes:
    """One chunk of a chunked body (empty data encodes nothing: it would end the body)."""
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n")) if data else b""


class _State(enum.Enum):
    SIZE_LINE = enum.auto()  # reading "<hex>[;ext]\r\n"
    DATA = enum.auto()  # chunk data
    DATA_END = enum.auto()  # expecting the CRLF after the data
    TRAILERS = enum.auto()  # reading trailer lines up to an empty one
    DONE = enum.auto()


# Python 3.11 finds an Enum member through a descriptor (about 70 ns, where a global takes 10),
# and the decoder compares its state a few times per chunk: it uses these names instead.
_SIZE_LINE, _DATA, _DATA_END = _State.SIZE_LINE, _State.DATA, _State.DATA_END
_TRAILERS, _DONE = _State.TRAILERS, _State.DONE


@attrs.define
class ChunkedDecoder:
    """Reads one chunked body: call :meth:`next_data` with the bytes after the head, in order,
    until ``done``; the bytes after the body (the next message) are left alone.

    Args:
      max_excess_framing: the most framing bytes the data has not paid for (Go's rule, see
        :data:`CHUNK_OVERHEAD_ALLOWANCE`), or None for no such limit. Request bodies have it
        (a client sending framing without data only costs the proxy); response bodies have
        never had it here, and a limit there would refuse responses kproxy relays today.
    """

    max_excess_framing: int | None = MAX_EXCESS_FRAMING
    _state: _State = _SIZE_LINE
    _line: bytearray = attrs.field(factory=bytearray)  # a line that arrived in pieces
    _remaining: int = 0  # data bytes left in this chunk, or CRLF bytes left after it
    _excess: int = 0  # framing bytes the data has not paid for
    _trailer_bytes: int = 0

    @property
    def done(self) -> bool:
        return self._state is _DONE

    def next_data(self, data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
        """Read ``data[start:]`` up to the end of the next run of chunk data.

        Returns:
          ``(begin, end)``: ``data[begin:end]`` is chunk data, empty when none came before
          the bytes ran out or the body ended, and ``end`` is where reading stopped. Call
          again from ``end`` while it is short of ``len(data)`` and the body is not done.

        Raises:
          ProtocolError: the framing breaks the rules; the body is lost, and so is the
            connection (nothing says where the next message starts).
        """
        i, n = start, len(data)
        while i < n:
            state = self._state
            if state is _DATA:
                take = min(self._remaining, n - i)
                self._remaining -= take
                if not self._remaining:
                    self._state, self._remaining = _DATA_END, 2
                return i, i + take
            if state is _DATA_END:
                if data[i] != b"\r\n"[2 - self._remaining]:
                    raise ProtocolError("chunk data not followed by CRLF")
                i += 1
                self._remaining -= 1
                if not self._remaining:
                    self._state = _SIZE_LINE
                continue
            if state is _DONE:
                break
            end = data.find(b"\n", i)
            if end < 0:  # the rest of a line comes later: keep it, within bounds
                self._line += data[i:]
                i = n
                self._check_partial_line()
                break
            if self._line:
                self._line += data[i : end + 1]
                line = bytes(self._line)
                self._line.clear()
            else:
                line = bytes(data[i : end + 1])
            i = end + 1
            self._end_line(line)
        return i, i

    def _check_partial_line(self) -> None:
        if self._state is _TRAILERS:
            if self._trailer_bytes + len(self._line) > MAX_TRAILER_BYTES:
                raise ProtocolError("trailer section too large")
        elif len(self._line) > MAX_CHUNK_LINE + 2:
            raise ProtocolError("chunk size line too long")

    def _end_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise ProtocolError("bare LF in chunked framing")
        content = line[:-2]
        if self._state is _TRAILERS:
            self._trailer_line(content)
            return
        if len(content) > MAX_CHUNK_LINE:
            raise ProtocolError("chunk size line too long")
        match = CHUNK_LINE.fullmatch(content.rstrip(OWS))
        if match is None:
            raise ProtocolError(f"invalid chunk size line {content[:40]!r}")
        size = int(match[1], 16)
        if size > MAX_CHUNK_SIZE:
            raise ProtocolError("chunk size too large")
        if self.max_excess_framing is not None:
            excess = self._excess + len(line) - CHUNK_OVERHEAD_ALLOWANCE - 2 * size
            self._excess = max(0, excess)
            if self._excess > self.max_excess_framing:
                raise ProtocolError("chunked body has too much framing for its data")
        if size == 0:
            self._state = _TRAILERS
        else:
            self._state, self._remaining = _DATA, size

    def _trailer_line(self, content: bytes) -> None:
        if not content:
            self._state = _DONE
            return
        self._trailer_bytes += len(content) + 2
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise ProtocolError("trailer section too large")
        try:
            parse_field_line(content)
        except ProtocolError as exc:
            raise ProtocolError(f"malformed trailer: {exc}") from None
