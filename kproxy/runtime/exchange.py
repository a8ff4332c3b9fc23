"""The exchange seam: one request and its response, whatever protocol carries them.

The request pipeline (``pipeline``: route, admit, choose a target, answer, log) and the relay
(``relay``: one request to one target and its answer back) work on :class:`Exchange` only.
HTTP/1 implements it (``http1_exchange``), one exchange at a time per connection; an HTTP/2
stream would be another implementation, many at a time per connection. So each exchange has
its own ``scope``: a drain's cut-off or a deadline cancels that, never the connection.

Response bytes are queued without I/O (``queue_head``, ``queue_data``, ``queue_end``) and
sent by ``flush``: the relay gathers what the target's bytes already read hold, so a usual
response goes out in one write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import attrs
import trio

from kproxy.core.upstream_http import Header
from kproxy.runtime.alarms import AlarmClock
from kproxy.runtime.transport import Transport

if TYPE_CHECKING:
    from kproxy.runtime.hangup_watch import HangupWatch


class RequestHead(NamedTuple):  # not attrs.frozen: see core/upstream_http.ResponseHead
    """A request head as parsed, its fields in a plain list: they are searched a dozen times
    per request, and h11's Headers, a Sequence, costs a method call per field read."""

    method: bytes
    target: bytes
    headers: list[Header]
    http_version: bytes
    connection: frozenset[bytes]  # its Connection tokens (core/headers.connection_tokens)


@attrs.frozen
class Tunnel:
    """One side of a connection handed over after a 101: raw bytes both ways from now on."""

    transport: Transport
    first: bytes  # what that side sent after the HTTP exchange, already read


class ResponseRecord:
    """What the access log needs from the exchange (the access log's ``RequestLog`` is one).

    A plain class: one is made per request, and attrs' generated ``__init__`` with a factory
    default cost twice as much."""

    __slots__ = ("body_bytes", "head_sent", "headers", "interruption", "status", "upgraded")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_bytes = 0  # response body bytes sent to the client
        self.head_sent = False  # the client has seen a status line: no error page any more
        self.upgraded = False
        self.interruption: Exception | None = None  # why an alarm cancelled the request's scope


class Exchange(Protocol):
    """One request from a client and the answer to it. Methods that reach the client raise
    ClientGone when it has left; reading the body raises BadRequestBody when it breaks the
    protocol's framing."""

    request: RequestHead
    client_ip: str  # the peer's address ("" when it has none)
    client_port: int
    scheme: str  # "http" or "https": how the request came
    clock: AlarmClock  # the server's, for the deadlines of this exchange
    hangup_watch: HangupWatch  # the relay's alarm while a bodiless request waits on a target
    has_body: bool  # the request declares a body
    # trio's clock when the request's head was whole (the access log's start), and when the
    # pipeline was done with it (its log line's end): readings shared, not taken again.
    started_at: float
    finished_at: float
    now: Callable[[], float]  # trio.current_time(), without its per-call overhead

    @property
    def scope(self) -> trio.CancelScope:
        """The scope the exchange runs in: cancelling it cuts this exchange off."""
        ...

    @property
    def cut_off(self) -> bool:
        """The exchange's own scope was cancelled, not the connection's nor the server's."""
        ...

    @property
    def waiting_for_100(self) -> bool:
        """The client holds its body until told to go on (``Expect: 100-continue``)."""
        ...

    @property
    def response_started(self) -> bool:
        """The final response head went out (or was queued): no other answer is possible."""
        ...

    def body_refused(self) -> str | None:
        """Why the body already broke the framing rules, before any target heard of it (it is
        answered 400), or None."""
        ...

    async def discard_body(self) -> bool:
        """Read and drop what is left of the request body, within bounds (after an answer
        that did not need it); returns whether the request was then read to its end."""
        ...

    def body_framing(self) -> list[Header] | None:
        """The framing fields the body should have toward a target, spelled one way (None:
        the request declared none; its fields stand as they are)."""
        ...

    async def receive_body(self) -> bytes:
        """The next piece of the request body; b"" once it is whole (trailers are dropped).
        A loop that only reads checkpoints itself (see ``transport``)."""
        ...

    async def watch_client(self) -> bool:
        """Once the body is in: wait for the client to send more (kept for the next request)
        or to leave; returns whether it left."""
        ...

    def client_gone(self) -> bool:
        """Whether the client has left, looked at without reading."""
        ...

    async def send_informational(self, status: int, headers: Sequence[Header] = ()) -> None:
        """A 1xx answer (not 101: see ``switch_protocols``), if the client understands one."""
        ...

    def queue_head(self, status: int, headers: Sequence[Header], reason: bytes = b"") -> None:
        """The final response head, framed for the body to come (no I/O until ``flush``)."""
        ...

    def queue_data(self, data: bytes | memoryview) -> None: ...

    def queue_end(self) -> None: ...

    async def flush(self) -> None:
        """Send what was queued."""
        ...

    async def send_whole(
        self, status: int, headers: list[Header], body: bytes, *, close: bool = False
    ) -> int | None:
        """A complete small answer (an error page, a redirect), if the client can still take
        one; ``close`` ends the connection after it. Returns the body bytes sent (0 for HEAD),
        or None when nothing could be sent."""
        ...

    async def switch_protocols(self, headers: Sequence[Header]) -> Tunnel:
        """Send the 101 and hand the connection over as a tunnel."""
        ...
