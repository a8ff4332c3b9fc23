"""The server side of an HTTP/1 client connection, as an :class:`~kproxy.runtime.exchange.Exchange`.

h11 parses what a client sends only after ``kproxy.core.request_framing`` has judged the same bytes:
each request head as a whole (``receive_head``), each chunked body as it arrives
(``receive_body``). So a request h11 would read one way and a target another never gets past
this module. Answers are written by ``kproxy.core.responses`` (h11 only reads).

One object serves the connection's requests in turn (``next_cycle`` readies the next), so a
request costs no exchange object of its own. Deadlines: an idle keep-alive connection waits
``idle_timeout`` for the first byte of its next request; from then (from the accept, for the
first request) the whole head must arrive within ``header_timeout``, however quickly each byte
comes, as Go's server applies IdleTimeout and then ReadHeaderTimeout. Either one passing
cancels the connection's scope (``head_alarm``, see ``alarms``): the connection closes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import h11
import trio

from kproxy.core import request_framing
from kproxy.core.headers import connection_tokens
from kproxy.core.http1 import find_head_end
from kproxy.core.responses import ResponseWriter, keeps_alive
from kproxy.core.upstream_http import Header
from kproxy.errors import BadRequestBody, ClientGone
from kproxy.runtime.alarms import Alarm, AlarmClock
from kproxy.runtime.exchange import RequestHead, Tunnel
from kproxy.runtime.hangup_watch import HangupWatch
from kproxy.runtime.read_pacing import TINY, ReadPacer
from kproxy.runtime.socket_io import MAX_PARTS, STREAM_ERRORS
from kproxy.runtime.transport import Transport

MAX_DISCARD: Final = 256 * 1024  # bytes of unread request body read to keep a connection
DISCARD_TIMEOUT: Final = 5.0  # seconds allowed for reading them
LINGER_TIMEOUT: Final = 1.0  # seconds to drain a client after an error answer, before closing
MAX_LINGER_BYTES: Final = 256 * 1024  # bytes read (and dropped) while lingering
# h11's states for a client whose request is not (or no longer) whole; every other one means
# it was read to its end (DONE, MUST_CLOSE, and MIGHT_SWITCH_PROTOCOL for an upgrade request).
_REQUEST_UNREAD: Final = frozenset({h11.IDLE, h11.SEND_BODY, h11.ERROR, h11.CLOSED})
_NO_REQUEST: Final = RequestHead(b"", b"", [], b"1.1", frozenset())
_NOTHING_CARRIED: Final = (b"", False)
JOIN_BELOW: Final = 16 * 1024  # bytes: a response smaller than this is joined to be sent
# h11's Headers is a Sequence: a list of it goes through the ABC's __iter__, a generator
# step and a __getitem__ call per field. h11 0.16 keeps (raw name, name, value) triples in a
# slot, read directly when it is there.
_H11_FIELDS: Final = hasattr(
    type(h11.Request(method="GET", target="/", headers=[("Host", "a")]).headers), "_full_items"
)


@attrs.define(eq=False)
class Http1Exchange:
    """One client connection, and the exchange of its current request (see the module doc)."""

    transport: Transport
    max_head_bytes: int
    clock: AlarmClock
    connection_scope: trio.CancelScope  # cancelling it ends the connection
    scheme: str = "http"
    client_ip: str = ""
    client_port: int = 0
    head_alarm: Alarm = attrs.field(init=False)  # cancels ``connection_scope`` when a head is late
    hangup_watch: HangupWatch = attrs.field(init=False)
    # trio's clock, read straight: trio.current_time() costs ~2,400 instructions (it marks
    # its caller's frame for Ctrl-C protection), this ~800; the same reading.
    now: Callable[[], float] = attrs.field(init=False)
    # The scope requests run in, for a run of requests (set by http1_connection): one scope
    # per request would cost ~7 µs each. A drain's cut-off or an alarm cancels it to stop the
    # request in flight; the connection then goes on in a new one.
    epoch: trio.CancelScope = attrs.field(init=False)
    conn: h11.Connection = attrs.field(init=False)
    request: RequestHead = _NO_REQUEST
    response: ResponseWriter = attrs.field(factory=ResponseWriter)
    # Response bytes queued for ``flush`` (a large body piece is a view of the target's bytes).
    _pending: list[bytes | memoryview] = attrs.field(factory=list)
    eof: bool = False  # the client has closed (or half-closed) its side
    # The current request's framing declares a body. Without one the request is whole once
    # its head is read: h11 is not asked for its end (the next request gets a new Connection).
    has_body: bool = False
    # The head's verdict: how its body is framed.
    framing_verdict: request_framing.Accept = attrs.field(factory=request_framing.Accept)
    body_check: request_framing.ChunkedBody | None = None  # the current request's, when chunked
    pacer: ReadPacer = attrs.field(factory=ReadPacer)  # slows the reads of a trickled request
    # What the last h11 connection had received beyond its request (``next_cycle``): where
    # the next head begins, read by ``receive_head`` without asking h11 again.
    carried: tuple[bytes, bool] = (b"", False)
    started_at: float = 0.0  # trio's clock when the current request's head was whole
    finished_at: float = 0.0  # trio's clock when the pipeline was done with the last request

    def __attrs_post_init__(self) -> None:
        self.head_alarm = Alarm(self.connection_scope)
        self.hangup_watch = HangupWatch(self.connection_scope, exchange=self)
        self.conn = self._new_connection()
        self.client_ip, self.client_port = self.transport.peer()
        self.now = trio.lowlevel.current_clock().current_time

    def _new_connection(self) -> h11.Connection:
        # max_incomplete_event_size by position: a keyword costs type.__call__ a dict.
        return h11.Connection(h11.SERVER, self.max_head_bytes)

    # --- the connection's life ------------------------------------------------------------

    def begin(self, event: h11.Request, verdict: request_framing.Accept) -> None:
        """The request h11 parsed from the head that ``verdict`` judged is the current one."""
        headers = event.headers
        fields = (
            [(name, value) for _, name, value in headers._full_items]
            if _H11_FIELDS
            else list(headers)
        )
        version, connection = event.http_version, connection_tokens(fields)
        # tuple.__new__ (C) for every field: the NamedTuple's own __new__ is a Python call.
        self.request = tuple.__new__(
            RequestHead, (event.method, bytes(event.target), fields, version, connection)
        )
        self.has_body, self.framing_verdict = verdict.has_body, verdict
        self.response.restart(event.method, version, keeps_alive(version, connection))

    def next_cycle(self) -> None:
        """Ready for the next request: h11 starts afresh with the bytes already received
        (a pipelined request), since the responses it would track are not written by it."""
        self.carried = pending, closed = self.conn.trailing_data
        self.conn = self._new_connection()
        if pending:
            self.conn.receive_data(pending)
        if closed:
            self.conn.receive_data(b"")

    @property
    def request_complete(self) -> bool:
        """The current request was read to its end."""
        return not self.has_body or self.conn.their_state not in _REQUEST_UNREAD

    @property
    def body_rejection(self) -> request_framing.Reject | None:
        """Why the current chunked body broke kproxy's rules (it is answered 400), if it did."""
        return self.body_check.rejected if self.body_check is not None else None

    @property
    def body_in_step(self) -> bool:
        """kproxy's check of the body ended where h11's parse did (always, unless a bug)."""
        return self.body_check is None or self.body_check.done

    async def write(self, data: bytes) -> None:
        """Bytes to the client outside an exchange (a rejected head's answer)."""
        await self.transport.send(data)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def receive_head(
        self,
        *,
        idle_timeout: float | None,
        header_timeout: float,
        max_bytes: int,
        max_headers: int,
    ) -> request_framing.Verdict | None:
        """Buffer the next request head whole (in h11 too) and judge it.

        Args:
          idle_timeout: how long to wait for the head's first byte (None: the first request,
            whose head deadline runs from the accept).
          header_timeout: how long the whole head may take once it has begun.
          max_bytes: the longest request line plus headers (431 beyond).
          max_headers: the most header fields (431 beyond).

        Returns:
          The verdict on the head (once accepted, h11's ``next_event`` returns the Request
          without waiting), or None when the client closed the connection. A deadline that
          passes cancels the connection's scope.
        """
        self.body_check = None
        pacer = self.pacer
        if pacer.trickles:
            pacer.reset()
        pending, closed = self.carried  # a pipelined head may already be here
        self.carried = _NOTHING_CARRIED
        buffer = bytearray(pending)
        if closed and not buffer:
            return None
        alarm, clock = self.head_alarm, self.clock
        # One clock reading per head: the wait for its first byte runs from the previous
        # request's end, read for its log line (the first request's from the accept).
        now = self.now() if idle_timeout is None else self.finished_at
        idle_wait = idle_timeout if idle_timeout is not None and not buffer else None
        clock.set(alarm, now + (header_timeout if idle_wait is None else idle_wait))
        searched = 0
        stale = False  # a read came after ``now`` was read
        try:
            if idle_wait is not None:  # _receive_into inlined: an await layer fewer
                try:
                    data = await self.transport.receive()
                except STREAM_ERRORS:
                    return None
                if not data:
                    return None
                self.conn.receive_data(data)
                buffer += data
                now = self.now()
                clock.set(alarm, now + header_timeout)
            while (end := find_head_end(buffer, searched)) is None:
                if len(buffer) > max_bytes:
                    return request_framing.Reject(
                        431, f"request head larger than {max_bytes} bytes"
                    )
                # A few bytes that left the head unfinished: a trickle's, if they keep coming
                # so, after pauses (read_pacing). A whole head in one read is never counted.
                came = len(buffer) - searched
                if 0 < came < TINY:
                    pacer.tiny_read()
                elif came and pacer.trickles:
                    pacer.reset()
                searched = len(buffer)
                if pacer.paced:
                    await pacer.pause()
                stale = True
                if not await self._receive_into(buffer):
                    return None
        finally:
            alarm.deadline = math.inf  # disarmed, as clock.set does it (without the call)
        # The request starts when its head is whole: ``now``, unless it took more reads.
        self.started_at = self.now() if stale else now
        if end > max_bytes:
            return request_framing.Reject(431, f"request head larger than {max_bytes} bytes")
        head = bytes(buffer) if end == len(buffer) else bytes(buffer[:end])  # one copy, mostly
        verdict = request_framing.check_head(head, max_headers=max_headers)
        if isinstance(verdict, request_framing.Accept) and verdict.chunked:
            # Body bytes that came with the head are checked now; if they are bad already,
            # ``body_rejection`` says so and the request is answered 400 before any target
            # hears of it (as a body error, logged like one, unlike a bad head).
            self.body_check = request_framing.ChunkedBody()
            self.body_check.feed(buffer[end:])
        return verdict

    async def _receive_into(self, buffer: bytearray) -> bool:
        """One read, fed to h11 and kept in ``buffer``; False at EOF or a broken connection."""
        try:
            data = await self.transport.receive()
        except STREAM_ERRORS:
            return False
        self.conn.receive_data(data)
        buffer += data
        return bool(data)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """h11's next event of the request, its body checked before h11 parses it."""
        while True:
            self._raise_if_rejected()
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # NEED_DATA was ruled out
            if self.pacer.paced:
                await self.pacer.pause()
            data = await self.transport.receive()
            if len(data) < TINY and data:
                self.pacer.tiny_read()
            elif self.pacer.trickles:
                self.pacer.reset()
            self.eof = not data
            if self.body_check is not None:
                self.body_check.feed(data)  # before h11 parses a byte of it
                self._raise_if_rejected()
            self.conn.receive_data(data)

    def _raise_if_rejected(self) -> None:
        if self.body_check is not None and self.body_check.rejected is not None:
            reject = self.body_check.rejected
            raise h11.RemoteProtocolError(reject.reason, error_status_hint=reject.status)

    async def close_after_error(self) -> None:
        """Half-close, then read what the client is still sending for a moment before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        error response before the client reads it (Go's server lingers the same way:
        closeWriteAndWait). Bounded in time and bytes.
        """
        with trio.move_on_after(LINGER_TIMEOUT):
            try:
                await self.transport.send_eof()
                drained = 0
                while drained < MAX_LINGER_BYTES:
                    data = await self.transport.receive()
                    if not data:
                        break
                    drained += len(data)
                    await trio.lowlevel.checkpoint()  # a loop that only reads
            except STREAM_ERRORS:
                pass

    # --- the Exchange ---------------------------------------------------------------------

    @property
    def scope(self) -> trio.CancelScope:
        return self.epoch

    @property
    def cut_off(self) -> bool:
        return self.epoch.cancel_called and not self.connection_scope.cancel_called

    @property
    def waiting_for_100(self) -> bool:
        return (
            self.has_body
            and self.conn.they_are_waiting_for_100_continue
            and not self.response.answered
        )

    @property
    def response_started(self) -> bool:
        return self.response.started

    def body_refused(self) -> str | None:
        rejection = self.body_rejection
        return rejection.reason if rejection is not None else None

    async def discard_body(self) -> bool:
        """Like Go's server (maxPostHandlerReadBytes), give up past a limit."""
        if self.request_complete:
            return True  # the common case: the whole request was read
        if self.conn.they_are_waiting_for_100_continue and not self.response.continued:
            return False  # the client sends nothing until asked to: don't ask now
        discarded = 0
        with trio.move_on_after(DISCARD_TIMEOUT):
            while self.conn.their_state is h11.SEND_BODY and discarded <= MAX_DISCARD:
                try:
                    event = await self.next_event()
                except (h11.RemoteProtocolError, *STREAM_ERRORS):
                    return False
                if isinstance(event, h11.Data):
                    discarded += len(event.data)
                    await trio.lowlevel.checkpoint()  # a loop that only reads (see transport)
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        return self.request_complete

    def body_framing(self) -> list[Header] | None:
        verdict = self.framing_verdict
        if verdict.chunked or verdict.content_length is not None:
            # The framing kproxy checked, spelled one way only (h11 re-chunks the body).
            return request_framing.framing_headers(self.request.headers)
        return None

    async def receive_body(self) -> bytes:
        try:
            event = await self.next_event()
        except h11.RemoteProtocolError as exc:
            # A body cut short by the client closing is a client gone (499, as Go's server
            # logs a request whose connection closed), not a malformed body (400).
            raise (ClientGone() if self.eof else BadRequestBody(str(exc))) from exc
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc
        if isinstance(event, h11.Data):
            return event.data
        if isinstance(event, h11.EndOfMessage):
            return b""
        raise ClientGone()  # ConnectionClosed or PAUSED mid-body: the client went away

    async def watch_client(self) -> bool:
        # Go's server keeps reading the connection in the background and cancels the request
        # on EOF (net/http connReader.backgroundRead). Bytes that arrive instead (a pipelined
        # request) are handed to h11 for later.
        try:
            data = await self.transport.receive()
        except STREAM_ERRORS:
            data = b""
        if data:
            self.conn.receive_data(data)
        return not data

    def client_gone(self) -> bool:
        return self.transport.peer_gone()

    async def send_informational(self, status: int, headers: Sequence[Header] = ()) -> None:
        if self.response.http_version >= b"1.1":  # HTTP/1.0 has no interim answers
            await self._answer(self.response.informational(status, headers))

    def queue_head(self, status: int, headers: Sequence[Header], reason: bytes = b"") -> None:
        # Answered before the client sent the body it announced with Expect: 100-continue,
        # the connection cannot be reused: the body may or may not follow (RFC 9110 §10.1.1).
        close = self.has_body and self.waiting_for_100  # no property call without a body
        self._pending.append(self.response.head(status, headers, reason=reason, close=close))

    def queue_data(self, data: bytes | memoryview) -> None:
        self._pending.append(self.response.data(data))

    def queue_end(self) -> None:
        self._pending.append(self.response.end())

    async def flush(self) -> None:
        """Large responses go as they are (one sendmsg), small ones joined (one buffer is
        cheaper to hand to the kernel)."""
        pending = self._pending
        try:
            if 1 < len(pending) <= MAX_PARTS and sum(map(len, pending)) >= JOIN_BELOW:
                await self.transport.send_parts(pending)
            else:
                await self.transport.send(b"".join(pending))
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc
        finally:
            pending.clear()

    async def send_whole(
        self, status: int, headers: list[Header], body: bytes, *, close: bool = False
    ) -> int | None:
        if self.response.started:
            return None
        # A client still holding its body for a 100 never sends it after a final answer, so
        # the connection cannot carry another request: say so (RFC 9110 §10.1.1), as Go does.
        # Nor can one whose chunked body broke the framing rules (it is closed after this).
        closes = close or self.waiting_for_100 or self.body_rejection is not None
        if closes and all(name != b"connection" for name, _ in headers):
            headers = [*headers, (b"connection", b"close")]
        try:
            # A HEAD answer has the GET answer's headers and no body (RFC 9110 §9.3.2).
            await self.transport.send(self.response.whole(status, headers, body))
        except STREAM_ERRORS:
            return None
        return 0 if self.response.head_request else len(body)

    async def switch_protocols(self, headers: Sequence[Header]) -> Tunnel:
        await self._answer(self.response.informational(101, headers))
        first, _ = self.conn.trailing_data
        return Tunnel(self.transport, bytes(first))

    async def _answer(self, data: bytes) -> None:
        try:
            await self.transport.send(data)
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc
