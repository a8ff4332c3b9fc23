"""One request relayed to one target over a pooled connection.

The request head is written as is and the response parsed once (``core.upstream_http``); h11
stays on the client's side only. The request body streams to the target (``request_body``)
while the response is awaited (so ``Expect: 100-continue`` and early answers work); the
response streams back as it arrives. Once the body is in, the client connection is watched,
so a client that leaves ends the exchange (499); for a request without a body, only while the
target keeps it waiting, by an alarm that looks at the client's socket (``_HangupWatch``).
Errors before the response head reached the client become UpstreamError (an error page);
errors after it abort the client connection, because a truncated body must never look complete.
"""

from __future__ import annotations

import functools
import math
from typing import Final

import attrs
import trio

from kproxy.core.buffering import (
    BufferAction,
    BufferPolicy,
    buffered_response_headers,
    response_streams,
)
from kproxy.core.cookies import CookieScope
from kproxy.core.headers import strip_response_hop_by_hop
from kproxy.core.upstream_http import (
    NEED_DATA,
    BadResponse,
    Event,
    Framing,
    Header,
    ResponseHead,
    UpstreamRequest,
)
from kproxy.errors import ResponseTooLarge, UpstreamTimeout, UpstreamUnreachable
from kproxy.runtime import socket_io
from kproxy.runtime.alarms import TICK, Alarm
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.client import BadRequestBody, ClientGone, ClientStream
from kproxy.runtime.pool import UpstreamConnection, describe_connect_error
from kproxy.runtime.request_body import RequestBodyPump
from kproxy.runtime.socket_io import STREAM_ERRORS
from kproxy.runtime.target import Target

EXPECT_CONTINUE_TIMEOUT: Final = 1.0  # seconds; ExpectContinueTimeout of Go's DefaultTransport
_JOIN_BELOW: Final = 16 * 1024  # bytes: a response smaller than this is joined to be sent
HANGUP_WATCH_DELAY: Final = 0.05  # seconds a bodiless request's answer may take before the
# client is looked at for a hang-up: far below anything a person notices, above most answers


class ResponseAborted(Exception):
    """The target broke off after the response head was sent: the client connection is cut."""


class _StaleConnection(Exception):
    """A reused connection failed before anything of the request could matter: retry once."""


class _ConnectionLost(UpstreamUnreachable):
    """The target's connection closed or reset before any byte of a response (not: garbage)."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


# Methods a client may repeat without changing the outcome (RFC 9110 §9.2.2); like Go's
# transport, only these are sent again after the target may already have received them.
_REPLAYABLE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


@attrs.define
class ResponseRecord:
    """What the access log needs from the exchange."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    body_bytes: int = 0  # response body bytes sent to the client
    head_sent: bool = False  # the client has seen a status line: no error page any more
    upgraded: bool = False
    interruption: Exception | None = None  # why an alarm cancelled the request's scope


@attrs.define(eq=False)
class _HangupWatch(Alarm):
    """A bodiless request's alarm while it waits on its target. At ``timeout_at`` (the target
    timeout, while the head is awaited) it goes off as a 504; before that, from
    HANGUP_WATCH_DELAY on, it looks every TICK whether the client hung up (499), as Go's server
    notices with a background read. No task and no cancel scope of its own: see ``alarms``."""

    record: ResponseRecord = attrs.field(kw_only=True)
    client_fd: int = attrs.field(kw_only=True)
    target_name: str = attrs.field(kw_only=True)
    timeout_at: float = math.inf

    def due(self, now: float) -> float | None:
        if now >= self.timeout_at:
            self.record.interruption = UpstreamTimeout(
                f"{self.target_name} sent no response within the target timeout"
            )
            return None
        if socket_io.hung_up(self.client_fd):
            self.record.interruption = ClientGone()
            return None
        return min(self.timeout_at, now + TICK)


async def forward(
    client: ClientStream,
    request: UpstreamRequest,
    target: Target,
    scope: trio.CancelScope,
    record: ResponseRecord,
    *,
    body: SpooledBody | None = None,
    buffer_dir: str | None = None,
    cookie_scope: CookieScope | None = None,
) -> None:
    """Relay ``request`` (headers already rewritten) to ``target`` and its answer back.

    Raises UpstreamError while nothing was sent to the client, ClientGone, BadRequestBody or
    ResponseAborted otherwise. ``scope`` is the one the request runs in (the connection's
    epoch, see HttpServer._serve): a drain or an alarm cancels it; it is marked when upgraded.
    ``body`` is the request body when it was buffered (see receive_request_body);
    ``buffer_dir`` is where a buffered response spills (None: the system temp dir).
    ``cookie_scope`` rewrites the response's Set-Cookie paths (--scope-cookie-paths).
    """
    pump = RequestBodyPump(client, request.chunked, body)
    replayable = request.method in _REPLAYABLE_METHODS and not client.has_body
    for fresh in (False, True):  # a pooled connection first; one retry if it proved stale
        try:
            if fresh:
                upstream = await target.pool.connect()
            else:
                upstream = await target.pool.acquire(replayable=replayable)
        except OSError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {target.name}: {describe_connect_error(exc)}"
            ) from exc
        relay = _Relay(client, upstream, target, pump, record, buffer_dir, cookie_scope)
        try:
            await relay.run(request, scope)
            return
        except _StaleConnection:  # only a reused connection can be: at most once
            await upstream.aclose()


@attrs.define(eq=False)
class _Relay:
    """One exchange on one target connection: the request out, the response back."""

    client: ClientStream
    upstream: UpstreamConnection
    target: Target
    pump: RequestBodyPump
    record: ResponseRecord
    buffer_dir: str | None
    cookie_scope: CookieScope | None
    # Set when the request had no body to pump and is no upgrade: the client is looked at for
    # a hang-up only while the target keeps it waiting (see _receive), not on every request.
    hangup_watch: _HangupWatch | None = None
    upgrade: bool = False  # the request asks to switch protocols: a 101 may answer it

    async def run(self, request: UpstreamRequest, scope: trio.CancelScope) -> None:
        """The whole exchange; the connection goes back to the pool only if it ended cleanly."""
        upstream, pump = self.upstream, self.pump
        upstream.start(head_request=request.method == b"HEAD")
        self.upgrade = request.upgrade
        release = False
        try:
            try:
                await socket_io.send_all(upstream.sock, request.head)
            except STREAM_ERRORS as exc:
                raise _ConnectionLost(
                    f"cannot send to {self.target.name}: {exc}", request_sent=False
                ) from exc
            # An upgrade's client bytes belong to the splice: nothing else may read them.
            if pump.end_without_body():  # most requests: no task, no nursery
                if not self.upgrade:
                    self.hangup_watch = _HangupWatch(
                        scope,
                        record=self.record,
                        client_fd=self.client.fd,
                        target_name=self.target.name,
                    )
                release = await self._relay_response(scope)
            else:
                release = await self._relay_with_pump(scope, watch=not self.upgrade)
        except Exception as error:
            if (
                isinstance(error, _ConnectionLost)
                and upstream.reused
                and self.record.status == 0
                and (not pump.sent_data or pump.body is not None)  # a buffered body can be resent
                and (not error.request_sent or request.method in _REPLAYABLE_METHODS)
            ):
                raise _StaleConnection() from error
            release = False
            raise
        finally:
            if release and pump.finished:
                await self.target.pool.release(upstream)
            else:
                await upstream.aclose()

    async def _relay_with_pump(self, scope: trio.CancelScope, *, watch: bool) -> bool:
        """The response relayed while a task sends the request body (and then watches the
        client, if ``watch``); returns whether the target connection may be reused."""
        pump = self.pump
        error: Exception | None = None
        release = completed = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(pump.run, watch=watch), self.upstream, nursery.cancel_scope
            )
            try:
                release = await self._relay_response(scope)
                completed = True
            except Exception as exc:  # raised after the nursery: not wrapped in a group
                error = exc
            nursery.cancel_scope.cancel()
        # The pump cancels the relay when the client's side failed (that is the story to tell)
        # or the target stopped taking the body.
        if (
            not completed
            and pump.error is not None
            and (error is None or isinstance(pump.error, ClientGone | BadRequestBody))
        ):
            error = pump.error
        if error is not None:
            raise error
        return release

    async def _receive(self, deadline: float) -> bool:
        """One read from the target, given up at ``deadline`` (False).

        With a ``hangup_watch``, the deadline and the look for a hang-up are its alarm's: one
        that goes off cancels the request's scope (``record.interruption`` says why), so this
        returns True or not at all. A quick answer (most of them) costs an attribute store.
        """
        watch = self.hangup_watch
        if watch is not None:
            clock = self.client.clock
            watch.timeout_at = deadline
            clock.set(watch, min(deadline, trio.current_time() + HANGUP_WATCH_DELAY))
            try:
                await self.upstream.receive()
            finally:
                clock.set(watch, math.inf)
            if watch.rang:  # it went off just as the read completed: stop here, not later
                await trio.lowlevel.checkpoint()
            return True
        if deadline == math.inf:
            await self.upstream.receive()
            return True
        with trio.move_on_at(deadline):
            await self.upstream.receive()
            return True
        return False

    async def _next_event(self) -> Event:
        """The reader's next event, reading as needed."""
        reader = self.upstream.reader
        while (event := reader.next_event()) is NEED_DATA:
            await self._receive(math.inf)
        return event

    async def _next_event_by(self, deadline: float) -> Event | None:
        """The reader's next event, reading as needed; None once ``deadline`` passed."""
        reader = self.upstream.reader
        while (event := reader.next_event()) is NEED_DATA:
            if not await self._receive(deadline):
                return None
        return event

    async def _read_head(self) -> ResponseHead:
        """The final response head (or a 101); 1xx answers on the way go to the client."""
        client, target = self.client, self.target
        deadline = trio.current_time() + target.options.target_timeout
        while True:
            wait = deadline
            if client.waiting_for_100:
                wait = min(deadline, trio.current_time() + EXPECT_CONTINUE_TIMEOUT)
            try:
                event = await self._next_event_by(wait)
            except BadResponse as exc:
                raise UpstreamUnreachable(f"{target.name} sent no valid response: {exc}") from exc
            except STREAM_ERRORS as exc:
                raise _ConnectionLost(
                    f"connection to {target.name} lost: {exc}", request_sent=True
                ) from exc
            if event is None:
                if trio.current_time() >= deadline:
                    raise UpstreamTimeout(
                        f"{target.name} sent no response within the target timeout"
                    )
                # The client holds its body for a 100 the target has not sent. Go's transport
                # sends the body anyway after ExpectContinueTimeout, so ask the client for it.
                # Sent from this task because only one task may write to the client.
                await client.answer(client.response.informational(100))
                continue
            if not isinstance(event, ResponseHead):  # CLOSED: EOF before any byte
                raise _ConnectionLost(
                    f"{target.name} closed the connection without a response", request_sent=True
                )
            if event.status == 101 and not self.upgrade:  # as h11 and Go's ReverseProxy
                raise UpstreamUnreachable(f"{target.name} switched protocols unasked")
            if not event.informational or event.status == 101:
                return event
            if event.status == 100 and not client.waiting_for_100:
                continue  # we already sent one, or the client is sending its body anyway
            # 100 Continue and friends go to the client as they come (RFC 9110 §15.2).
            if client.response.http_version >= b"1.1":
                headers = strip_response_hop_by_hop(event.headers)
                await client.answer(client.response.informational(event.status, headers))

    async def _relay_response(self, scope: trio.CancelScope) -> bool:
        """Relay the response; returns whether the target connection may be reused."""
        client, target, record = self.client, self.target, self.record
        head = await self._read_head()
        record.status = head.status
        record.headers = head.headers
        if head.status == 101:
            await self._splice(head, scope)
            return False
        headers = head.headers
        if self.cookie_scope is not None:  # as kamal-proxy's targetResponseWriter.WriteHeader
            headers = self.cookie_scope.apply(headers)
        if target.options.buffer_responses and not response_streams(headers):
            await self._relay_buffered(head, headers)
            return head.keep_alive and not self.upstream.reader.trailing
        client_headers = strip_response_hop_by_hop(headers)
        if head.framing is Framing.CHUNKED:  # chunked wins; the length must not go on
            client_headers = [h for h in client_headers if h[0] != b"content-length"]
        # Bytes for the client are gathered while the target's bytes already read hold more
        # of the body, and sent when more must be read: the head, the body and its end
        # usually go out in one send(2). The target's framing is checked as it is read, so a
        # target that breaks it is caught (ResponseAborted), never relayed as a whole response.
        # Answered before the client sent the body it announced with Expect: 100-continue,
        # the connection cannot be reused: the body may or may not follow (RFC 9110 §10.1.1).
        response = client.response
        pending = [
            response.head(
                head.status, client_headers, reason=head.reason, close=client.waiting_for_100
            )
        ]
        record.head_sent = True
        reader = self.upstream.reader
        while True:
            try:
                event = reader.next_event()
                if event is NEED_DATA:
                    await _send_bytes(client, pending)
                    event = await self._next_event()
            except (BadResponse, *STREAM_ERRORS) as exc:
                await _send_bytes(client, pending)  # what came before the break is the client's
                raise ResponseAborted(f"{target.name} broke off the response: {exc}") from exc
            if isinstance(event, bytes):
                pending.append(response.data(event))
                record.body_bytes += len(event)
            else:  # END: a body ends nowhere else
                pending.append(response.end())
                await _send_bytes(client, pending)
                return head.keep_alive and not reader.trailing

    async def _relay_buffered(self, head: ResponseHead, headers: list[Header]) -> None:
        """--buffer-responses: take the whole body from the target, then send it on. Until the
        end nothing reached the client, so a target that breaks off gets a clean 502 (and one
        whose body passes --max-response-body a 500) instead of a cut connection."""
        client, target, record = self.client, self.target, self.record
        options = target.options
        policy = BufferPolicy(options.buffer_memory, options.max_response_body)
        with SpooledBody(policy, self.buffer_dir) as body:
            while True:
                try:
                    event = await self._next_event()
                except (BadResponse, *STREAM_ERRORS) as exc:
                    raise UpstreamUnreachable(
                        f"{target.name} broke off the response: {exc}"
                    ) from exc
                if not isinstance(event, bytes):
                    break  # END
                if body.write(event) is BufferAction.REJECT:
                    raise ResponseTooLarge(
                        f"{target.name} sent a response larger than --max-response-body"
                        f" ({options.max_response_body} bytes)"
                    )
                await trio.lowlevel.checkpoint()  # a loop that only reads (see socket_io)
            client_headers = buffered_response_headers(
                strip_response_hop_by_hop(headers),
                body.size,
                status=head.status,
                head_request=self.upstream.reader.head_request,
            )
            response = client.response
            close = client.waiting_for_100
            await client.answer(
                response.head(head.status, client_headers, reason=head.reason, close=close)
            )
            record.head_sent = True
            for chunk in body.chunks():
                await client.answer(response.data(chunk))
                record.body_bytes += len(chunk)
            await client.answer(response.end())

    async def _splice(self, head: ResponseHead, scope: trio.CancelScope) -> None:
        """After 101, copy raw bytes both ways until either side closes."""
        client, upstream = self.client, self.upstream
        await client.answer(client.response.informational(101, head.headers))
        self.record.head_sent = self.record.upgraded = True
        self.target.mark_upgraded(scope)
        client_rest, _ = client.conn.trailing_data
        async with trio.open_nursery() as nursery:

            async def copy(
                source: trio.SocketStream, sink: trio.SocketStream, first: bytes
            ) -> None:
                try:
                    if first:
                        await sink.send_all(first)
                    while data := await source.receive_some(64 * 1024):
                        await sink.send_all(data)
                except STREAM_ERRORS:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(copy, client.stream, upstream.stream, bytes(client_rest))
            nursery.start_soon(copy, upstream.stream, client.stream, upstream.reader.trailing)


async def _send_bytes(client: ClientStream, pending: list[bytes]) -> None:
    """Send the bytes gathered in ``pending`` in one write, and empty it. Large ones go as
    they are (one sendmsg), small ones joined (one buffer is cheaper to hand to the kernel)."""
    if 1 < len(pending) <= socket_io.MAX_PARTS and sum(map(len, pending)) >= _JOIN_BELOW:
        await client.answer_parts(pending)
    else:
        await client.answer(b"".join(pending))
    pending.clear()
