"""The client's side of a connection: h11, with kproxy's framing rules in front of it.

h11 parses what a client sends only after ``kproxy.core.framing`` has judged the same bytes:
each request head as a whole (``receive_head``), each chunked body as it arrives
(``next_event``). So a request h11 would read one way and a target another never gets past
this module. Deadlines: an idle keep-alive connection waits ``idle_timeout`` for the first
byte of its next request; from then (from the accept, for the first request) the whole head
must arrive within ``header_timeout``, however quickly each byte comes, as Go's server applies
IdleTimeout and then ReadHeaderTimeout. Either one passing cancels the connection's scope
(``head_alarm``, see ``alarms``): the connection closes.
"""

from __future__ import annotations

import math
import socket
from typing import Final

import attrs
import h11
import trio

from kproxy.core import framing
from kproxy.core.responses import ResponseWriter
from kproxy.runtime import socket_io
from kproxy.runtime.alarms import Alarm, AlarmClock
from kproxy.runtime.socket_io import READ_SIZE, STREAM_ERRORS

LINGER_TIMEOUT: Final = 1.0  # seconds to drain a client after an error answer, before closing
MAX_LINGER_BYTES: Final = 256 * 1024  # bytes read (and dropped) while lingering
# h11's states for a client whose request is not (or no longer) whole; every other one means
# it was read to its end (DONE, MUST_CLOSE, and MIGHT_SWITCH_PROTOCOL for an upgrade request).
_REQUEST_UNREAD: Final = frozenset({h11.IDLE, h11.SEND_BODY, h11.ERROR, h11.CLOSED})


class ClientGone(Exception):
    """The client disconnected (or half-closed) before the exchange finished: logged as 499."""


class BadRequestBody(Exception):
    """The client's body broke HTTP framing (e.g. a malformed chunk): answered 400."""


@attrs.define(eq=False)
class ClientStream:
    """One client connection: h11 reads its requests, kproxy's framing rules in front of it;
    ``response`` writes the answer to the current one (see ``kproxy.core.responses``)."""

    stream: trio.SocketStream
    max_head_bytes: int
    clock: AlarmClock
    scope: trio.CancelScope  # the connection's: cancelling it ends the connection
    head_alarm: Alarm = attrs.field(init=False)  # cancels ``scope`` when a head is late
    # The scope requests run in, for a run of requests, set by HttpServer._serve: a drain's
    # cut-off or an alarm cancels it to stop the request in flight.
    epoch: trio.CancelScope = attrs.field(init=False)
    conn: h11.Connection = attrs.field(init=False)
    sock: socket.socket = attrs.field(init=False)  # the stream's: see socket_io
    fd: int = attrs.field(init=False)  # the socket's descriptor, to look for a hang-up
    response: ResponseWriter = attrs.field(factory=ResponseWriter)
    eof: bool = False  # the client has closed (or half-closed) its side
    # The current request's framing declares a body. Without one the request is whole once
    # its head is read: h11 is not asked for its end (the next request gets a new Connection).
    has_body: bool = False
    body_framing: framing.Accept = attrs.field(factory=framing.Accept)  # the head's verdict
    body_check: framing.ChunkedBody | None = None  # the current request's, when chunked

    def __attrs_post_init__(self) -> None:
        self.head_alarm = Alarm(self.scope)
        self.conn = self._new_connection()
        self.sock = socket_io.stdlib_socket(self.stream.socket)
        self.fd = self.sock.fileno()

    def _new_connection(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)

    def next_cycle(self) -> None:
        """Ready for the next request: h11 starts afresh with the bytes already received
        (a pipelined request), since the responses it would track are not written by it."""
        pending, closed = self.conn.trailing_data
        self.conn = self._new_connection()
        if pending:
            self.conn.receive_data(bytes(pending))
        if closed:
            self.conn.receive_data(b"")

    @property
    def request_complete(self) -> bool:
        """The current request was read to its end."""
        return not self.has_body or self.conn.their_state not in _REQUEST_UNREAD

    @property
    def waiting_for_100(self) -> bool:
        """The client holds its body until told to go on (``Expect: 100-continue``)."""
        return (
            self.has_body
            and self.conn.they_are_waiting_for_100_continue
            and not self.response.answered
        )

    async def write(self, data: bytes) -> None:
        if data:
            await socket_io.send_all(self.sock, data)

    async def answer(self, data: bytes) -> None:
        """``write`` in the middle of an exchange: a client that left raises ClientGone."""
        try:
            await self.write(data)
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc

    async def answer_parts(self, parts: list[bytes]) -> None:
        """``answer`` of several buffers at once, without joining them (socket_io.send_parts)."""
        try:
            await socket_io.send_parts(self.sock, parts)
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    @property
    def body_rejection(self) -> framing.Reject | None:
        """Why the current chunked body broke kproxy's rules (it is answered 400), if it did."""
        return self.body_check.rejected if self.body_check is not None else None

    @property
    def body_in_step(self) -> bool:
        """kproxy's check of the body ended where h11's parse did (always, unless a bug)."""
        return self.body_check is None or self.body_check.done

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            self._raise_if_rejected()
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # NEED_DATA was ruled out
            data = await socket_io.receive(self.sock)
            self.eof = not data
            if self.body_check is not None:
                self.body_check.feed(data)  # before h11 parses a byte of it
                self._raise_if_rejected()
            self.conn.receive_data(data)

    def _raise_if_rejected(self) -> None:
        if self.body_check is not None and self.body_check.rejected is not None:
            reject = self.body_check.rejected
            raise h11.RemoteProtocolError(reject.reason, error_status_hint=reject.status)

    async def receive_head(
        self,
        *,
        idle_timeout: float | None,
        header_timeout: float,
        max_bytes: int,
        max_headers: int,
    ) -> framing.Verdict | None:
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
        pending, closed = self.conn.trailing_data  # a pipelined head may already be here
        buffer = bytearray(pending)
        if closed and not buffer:
            return None
        idle_wait = idle_timeout if idle_timeout is not None and not buffer else None
        searched = 0
        alarm, clock = self.head_alarm, self.clock
        clock.set(alarm, trio.current_time() + (header_timeout if idle_wait is None else idle_wait))
        try:
            if idle_wait is not None:
                if not await self._receive_into(buffer):
                    return None
                clock.set(alarm, trio.current_time() + header_timeout)
            while (end := framing.find_head_end(buffer, searched)) is None:
                if len(buffer) > max_bytes:
                    return framing.Reject(431, f"request head larger than {max_bytes} bytes")
                searched = len(buffer)
                if not await self._receive_into(buffer):
                    return None
        finally:
            clock.set(alarm, math.inf)
        if end > max_bytes:
            return framing.Reject(431, f"request head larger than {max_bytes} bytes")
        verdict = framing.check_head(bytes(buffer[:end]), max_headers=max_headers)
        if isinstance(verdict, framing.Accept) and verdict.chunked:
            # Body bytes that came with the head are checked now; if they are bad already,
            # ``body_rejected`` says so and the request is answered 400 before any target
            # hears of it (as a body error, logged like one, unlike a bad head).
            self.body_check = framing.ChunkedBody()
            self.body_check.feed(buffer[end:])
        return verdict

    async def _receive_into(self, buffer: bytearray) -> bool:
        """One read, fed to h11 and kept in ``buffer``; False at EOF or a broken connection."""
        try:
            data = await socket_io.receive(self.sock)
        except STREAM_ERRORS:
            return False
        self.conn.receive_data(data)
        buffer += data
        return bool(data)

    async def close_after_error(self) -> None:
        """Half-close, then read what the client is still sending for a moment before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        error response before the client reads it (Go's server lingers the same way:
        closeWriteAndWait). Bounded in time and bytes.
        """
        with trio.move_on_after(LINGER_TIMEOUT):
            try:
                await self.stream.send_eof()
                drained = 0
                while drained < MAX_LINGER_BYTES:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    drained += len(data)
            except STREAM_ERRORS:
                pass
