"""Request and response buffering decisions (``--buffer-*``, ``--max-*-body``), without I/O.

kamal-proxy buffers through ``Buffer`` (basecamp/kamal-proxy: internal/server/buffer.go): bytes
stay in memory up to ``maxMemBytes``, then go to a temporary file, and past ``maxBytes`` the
body is refused. :class:`BufferPolicy` makes the same decisions and returns them as actions;
``kproxy.runtime.buffer`` owns the memory and the file.

Rule 1: ``size`` counts every byte fed, kept or not; the body may be refused by its declared
        ``Content-Length`` before a byte arrives.
Rule 2: a policy spills at most once (memory → file, never back), on the first feed that takes
        ``size`` past ``memory_limit``.
Rule 3: once a feed returned REJECT the body is dead: feeding more is a bug and raises.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

import attrs

from kproxy.core.headers import Header, HeaderList, header_value
from kproxy.core.http1 import FRAMING_FIELDS, NO_BODY_STATUSES, length_value

_REFRAMED: Final = FRAMING_FIELDS | {b"expect"}  # what a buffered request is sent without


class BufferAction(enum.Enum):
    CONTINUE = "continue"  # keep the bytes where the buffer keeps them now
    SPILL = "spill"  # the memory limit was passed: move what is held to a file, then keep these
    REJECT = "reject"  # over the body limit: stop reading, answer the limit's status


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than zero, got {value}")


def _not_negative(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


@attrs.define(eq=False)
class BufferPolicy:
    """The decisions for one body; ``feed(n)`` as each piece arrives.

    Args:
      memory_limit: bytes held in memory before spilling (``--buffer-memory``).
      max_body: the largest body accepted, in bytes; 0 means unlimited.
    """

    memory_limit: int = attrs.field(validator=_positive)
    max_body: int = attrs.field(default=0, validator=_not_negative)
    size: int = 0  # bytes fed so far
    spilled: bool = False
    rejected: bool = False

    def declare(self, content_length: int | None) -> BufferAction:
        """Judge a body by its declared length before reading it (413 before ``100 Continue``).

        Returns REJECT for a length over ``max_body``, else CONTINUE (``None``: unknown).
        """
        if content_length is not None and self._over(content_length):
            self.rejected = True
            return BufferAction.REJECT
        return BufferAction.CONTINUE

    def feed(self, n: int) -> BufferAction:
        """Account for ``n`` more body bytes; returns what to do with them."""
        if self.rejected:
            raise RuntimeError("feed() after REJECT: the body was already refused")
        if n < 0:
            raise ValueError(f"cannot feed a negative byte count ({n})")
        self.size += n
        if self._over(self.size):
            self.rejected = True
            return BufferAction.REJECT
        if not self.spilled and self.size > self.memory_limit:
            self.spilled = True
            return BufferAction.SPILL
        return BufferAction.CONTINUE

    def _over(self, size: int) -> bool:
        return self.max_body > 0 and size > self.max_body


def declared_length(headers: Sequence[Header]) -> int | None:
    """The ``Content-Length`` value (h11 has already validated it), or None when absent."""
    value = header_value(headers, b"content-length")
    return None if value is None else length_value(value)


def has_request_body(headers: Sequence[Header]) -> bool:
    """Whether a request's framing allows a body at all (RFC 9112 §6.3: no Content-Length and
    no Transfer-Encoding means none). A request without one has nothing to buffer."""
    return header_value(headers, b"transfer-encoding") is not None or bool(declared_length(headers))


def response_streams(headers: Sequence[Header]) -> bool:
    """Whether a response must stream even with ``--buffer-responses``.

    Server-sent events, and bodies the target sends chunked (it has no length to give: long
    polls, streamed renders), would otherwise reach the client only when the target finishes,
    which for an event stream is never.
    """
    return is_event_stream(headers) or (
        header_value(headers, b"transfer-encoding") is not None
        and header_value(headers, b"content-length") is None
    )


def is_event_stream(headers: Sequence[Header]) -> bool:
    """Whether the response is server-sent events (``text/event-stream``): a stream that may
    stay silent for as long as it likes."""
    content_type = header_value(headers, b"content-type") or b""
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


def buffered_request_headers(headers: Sequence[Header], size: int) -> HeaderList:
    """Frame a buffered request body by its length (RFC 9112 §6.2) instead of chunks.

    ``Expect`` goes too: the whole body is at hand, so the target has nothing to agree to
    (RFC 9110 §10.1.1), and a target waiting to send ``100`` would only delay it.
    """
    out = [(name, value) for name, value in headers if name not in _REFRAMED]
    out.append((b"content-length", b"%d" % size))
    return out


def buffered_response_headers(
    headers: Sequence[Header], size: int, *, status: int, head_request: bool
) -> HeaderList:
    """The response head to send once its body is buffered.

    A ``Content-Length`` from the target stays (h11 checked the body against it, and for HEAD
    it describes a body that is not sent). A body the target delimited by closing gets its
    length, so the client connection stays reusable. Statuses that never carry a body
    (RFC 9110 §6.4.1) and HEAD answers are left alone.
    """
    out = [(name, value) for name, value in headers if name != b"transfer-encoding"]
    if (
        header_value(out, b"content-length") is None
        and not head_request
        and status >= 200
        and status not in NO_BODY_STATUSES
    ):
        out.append((b"content-length", b"%d" % size))
    return out
