"""One exchange relayed to one target over a pooled connection, and the answer back.

The relay sees the client only as an :class:`~kproxy.runtime.exchange.Exchange`, so it serves
any protocol the client speaks. The request head is written as is and the response parsed once
(``core.upstream_http``); what reaches the client is ``core.relay_rules``' to decide. The
request body streams to the target (``request_body``) while the response is awaited (so
``Expect: 100-continue`` and early answers work); the response streams back as it arrives.
Once the body is in, the client is watched, so a client that leaves ends the exchange (499);
for a request without a body, only while the target keeps it waiting, by an alarm that looks
whether the client left (``HangupWatch``); then each wait for more of the body, by its own
alarm (``TargetStall``). Errors before the response head reached the client
become UpstreamError (an error page); errors after it abort the client connection, because a
truncated body must never look complete.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from kproxy.core import relay_rules
from kproxy.core.buffering import (
    BufferAction,
    BufferPolicy,
    buffered_response_headers,
    response_streams,
)
from kproxy.core.cookies import CookieScope
from kproxy.core.headers import strip_response_hop_by_hop
from kproxy.core.relay_rules import Interim
from kproxy.core.response_head import BadResponse
from kproxy.core.upstream_http import (
    NEED_DATA,
    Event,
    Header,
    ResponseHead,
    UpstreamRequest,
    encode_request_head,
)
from kproxy.core.writer_affinity import write_response_headers
from kproxy.errors import (
    BadRequestBody,
    ClientGone,
    KProxyError,
    ResponseAborted,
    ResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.exchange import Exchange, ResponseRecord, Tunnel
from kproxy.runtime.hangup_watch import HANGUP_WATCH_DELAY, HangupWatch, TargetStall
from kproxy.runtime.pool import UpstreamConnection, describe_connect_error
from kproxy.runtime.request_body import RequestBodyPump
from kproxy.runtime.socket_io import STREAM_ERRORS
from kproxy.runtime.target import Target
from kproxy.runtime.tunnel import splice

EXPECT_CONTINUE_TIMEOUT: Final = 1.0  # seconds; ExpectContinueTimeout of Go's DefaultTransport
_BODY: Final = (bytes, memoryview)  # a piece of the response body (upstream_http.Body)


class _StaleConnection(KProxyError):
    """A reused connection failed before anything of the request could matter: retry once."""


class _ConnectionLost(UpstreamUnreachable):
    """The target's connection closed or reset before any byte of a response (not: garbage)."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


async def forward(
    exchange: Exchange,
    request: UpstreamRequest,
    target: Target,
    record: ResponseRecord,
    *,
    body: SpooledBody | None = None,
    buffer_dir: str | None = None,
    cookie_scope: CookieScope | None = None,
    writer_affinity: float | None = None,
) -> None:
    """Relay ``request`` (headers already rewritten) to ``target`` and its answer back.

    Raises UpstreamError while nothing was sent to the client, ClientGone, BadRequestBody or
    ResponseAborted otherwise. The exchange's scope is the one the request runs in: a drain
    or an alarm cancels it; it is marked when upgraded.
    ``body`` is the request body when it was buffered (see receive_request_body);
    ``buffer_dir`` is where a buffered response spills (None: the system temp dir).
    ``cookie_scope`` rewrites the response's Set-Cookie paths (--scope-cookie-paths).
    ``writer_affinity``: the response to a write on a service with read targets gets the
    ``kamal-writer`` cookie for that many seconds (core/writer_affinity.py).
    """
    # Most requests have no body: no pump for them (None), and no object made for it.
    pump = None
    if body is not None or exchange.has_body:
        pump = RequestBodyPump(exchange, request.chunked, body)
    replayable = request.method in relay_rules.REPLAYABLE_METHODS and not exchange.has_body
    for fresh in (False, True):  # a pooled connection first; one retry if it proved stale
        try:
            pooled = None if fresh else target.pool.take_idle(replayable=replayable)
            upstream = pooled if pooled is not None else await target.pool.connect()
        except OSError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {target.name}: {describe_connect_error(exc)}"
            ) from exc
        relay = _Relay(
            exchange, upstream, target, pump, record, buffer_dir, cookie_scope, writer_affinity
        )
        try:
            await relay.run(request)
            return
        except _StaleConnection:  # only a reused connection can be: at most once
            await upstream.aclose()
            if pump is not None:
                pump.rewind()


@attrs.define(eq=False)
class _Relay:
    """One exchange on one target connection: the request out, the response back."""

    exchange: Exchange
    upstream: UpstreamConnection
    target: Target
    pump: RequestBodyPump | None  # None: the request has no body
    record: ResponseRecord
    buffer_dir: str | None
    cookie_scope: CookieScope | None
    writer_affinity: float | None
    # Set when the request had no body to pump and is no upgrade: the client is looked at for
    # a hang-up only while the target keeps it waiting (see _receive), not on every request.
    hangup_watch: HangupWatch | None = None
    upgrade: bool = False  # the request asks to switch protocols: a 101 may answer it
    stall: TargetStall | None = None  # bounds each wait for more of the response body

    async def run(self, request: UpstreamRequest) -> None:
        """The whole exchange; the connection goes back to the pool only if it ended cleanly."""
        upstream, pump = self.upstream, self.pump
        upstream.reader.restart(head_request=request.method == b"HEAD")
        self.upgrade = request.upgrade
        release = False
        # What the target had acknowledged before this request, to tell later whether any of
        # it arrived (core/tcp_info.py); asked only where that decides a retry.
        acked_before = None
        replayable = request.method in relay_rules.REPLAYABLE_METHODS
        if upstream.reused and (self.exchange.has_body or not replayable):
            info = upstream.tcp_info()
            acked_before = info.bytes_acked if info is not None else None
        try:
            try:
                await upstream.transport.send(
                    encode_request_head(request.method, request.target, request.headers)
                )
            except STREAM_ERRORS as exc:
                raise _ConnectionLost(
                    f"cannot send to {self.target.name}: {exc}", request_sent=False
                ) from exc
            # An upgrade's client bytes belong to the splice: nothing else may read them.
            if pump is None:  # most requests: no task, no nursery
                if not self.upgrade:  # readied by the first wait (_receive)
                    self.hangup_watch = self.exchange.hangup_watch
                release = await self._relay_response()
            else:
                release = await self._relay_with_pump(pump, watch=not self.upgrade)
        except Exception as error:
            # The connection broke: reading the answer, or sending the body (the pump's error).
            lost = isinstance(error, _ConnectionLost) or (
                pump is not None and error is pump.error and isinstance(error, UpstreamUnreachable)
            )
            if lost and relay_rules.may_resend(
                request.method,
                reused=upstream.reused,
                response_began=self.record.status != 0,
                body_sent=pump is not None and pump.sent_data,
                body_buffered=pump is not None and pump.body is not None,
                request_sent=getattr(error, "request_sent", True),
                never_received=await upstream.never_received(acked_before),
            ):
                raise _StaleConnection() from error
            release = False
            raise
        finally:
            if self.stall is not None:
                self.stall.disarm()
            if release and (pump is None or pump.finished):
                self.target.pool.release(upstream)
            else:
                await upstream.aclose()

    async def _relay_with_pump(self, pump: RequestBodyPump, *, watch: bool) -> bool:
        """The response relayed while a task sends the request body (and then watches the
        client, if ``watch``); returns whether the target connection may be reused."""
        error: Exception | None = None
        release = completed = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(pump.run, watch=watch), self.upstream, nursery.cancel_scope
            )
            try:
                release = await self._relay_response()
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

    async def _receive(self, deadline: float, watch_at: float) -> bool:
        """One read from the target, which had nothing to read a moment ago (see
        ``receive_nowait``), given up at ``deadline`` (False).

        With a ``hangup_watch``, the deadline and the look for a hang-up (from ``watch_at``
        on) are its alarm's: one that goes off cancels the request's scope
        (``record.interruption`` says why), so this returns True or not at all. A quick answer
        (most of them) costs an attribute store.
        """
        upstream = self.upstream
        watch = self.hangup_watch
        if watch is not None:
            watch.watch(self.exchange.scope, self.record, self.target.name)
            watch.timeout_at = deadline
            self.exchange.clock.set(watch, min(deadline, watch_at))
            try:
                await upstream.receive_when_ready()
            finally:
                watch.deadline = math.inf  # disarmed, as clock.set does it (without the call)
            if watch.rang:  # it went off just as the read completed: stop here, not later
                await trio.lowlevel.checkpoint()
            return True
        if deadline == math.inf:
            await upstream.receive_when_ready()
            return True
        with trio.move_on_at(deadline):
            await upstream.receive_when_ready()
            return True
        return False

    async def _next_event(self) -> Event:
        """The reader's next event of the response body, reading as needed."""
        upstream = self.upstream
        reader = upstream.reader
        while (event := reader.next_event()) is NEED_DATA:
            if upstream.receive_nowait():  # more was there: no alarm needed
                continue
            if (stall := self.stall) is None:
                stall = self.stall = TargetStall.of_body(
                    self.exchange,
                    self.record,
                    self.target.name,
                    self.target.options.target_timeout,
                    watch_client=self.hangup_watch is not None,
                )
            await stall.receive(upstream.receive_when_ready)
        return event

    async def _read_head(self) -> ResponseHead:
        """The final response head (or a 101); 1xx answers on the way go to the client."""
        exchange, target, upstream = self.exchange, self.target, self.upstream
        reader = upstream.reader
        # Set at the first wait, with one clock reading: an answer already there (the usual,
        # see socket_io) costs none, and no alarm.
        deadline = watch_at = 0.0
        while True:
            wait = 0.0  # the end of this wait: the deadline, or sooner for a 100-continue
            try:  # the next event, reading as needed; None once ``wait`` passed
                while (event := reader.next_event()) is NEED_DATA:
                    if upstream.receive_nowait():
                        continue
                    if not wait:
                        if not deadline:
                            now = trio.current_time()  # for the deadline and the hang-up look
                            deadline = now + target.options.target_timeout
                            watch_at = now + HANGUP_WATCH_DELAY
                        wait = deadline
                        if exchange.waiting_for_100:
                            wait = min(deadline, trio.current_time() + EXPECT_CONTINUE_TIMEOUT)
                    if not await self._receive(wait, watch_at):
                        event = None
                        break
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
                await exchange.send_informational(100)
                continue
            if not isinstance(event, ResponseHead):  # CLOSED: EOF before any byte
                raise _ConnectionLost(
                    f"{target.name} closed the connection without a response", request_sent=True
                )
            if event.status >= 200:  # final (``informational`` without the call)
                return event
            action = relay_rules.interim_action(
                event.status, upgrade=self.upgrade, client_waiting_for_100=exchange.waiting_for_100
            )
            if action is Interim.SWITCH:
                return event
            if action is Interim.REFUSE:
                raise UpstreamUnreachable(f"{target.name} switched protocols unasked")
            if action is Interim.FORWARD:  # 100 Continue and friends, as they come
                headers = strip_response_hop_by_hop(event.headers)
                await exchange.send_informational(event.status, headers)

    async def _relay_response(self) -> bool:
        """Relay the response; returns whether the target connection may be reused."""
        exchange, target, record = self.exchange, self.target, self.record
        head = await self._read_head()
        record.status = head.status
        record.headers = head.headers
        headers = head.headers
        if self.cookie_scope is not None:  # as kamal-proxy's targetResponseWriter.WriteHeader,
            headers = self.cookie_scope.apply(headers)  # which a 101 goes through too
        if self.writer_affinity is not None:  # kamal-proxy's loadBalancerResponseWriter
            headers = write_response_headers(headers, time.time(), self.writer_affinity)
        if head.status == 101:
            await self._splice(headers)
            return False
        if target.options.buffer_responses and not response_streams(headers):
            await self._relay_buffered(head, headers)
            return head.keep_alive and not self.upstream.reader.has_trailing
        # Bytes for the client are queued while the target's bytes already read hold more of
        # the body, and flushed when more must be read: the head, the body and its end
        # usually go out in one send(2). The target's framing is checked as it is read, so a
        # target that breaks it is caught (ResponseAborted), never relayed as a whole response.
        client_headers = head.end_to_end  # the usual head's, found as it was read
        if client_headers is None or headers is not head.headers:
            client_headers = relay_rules.client_response_headers(headers, head.framing)
        exchange.queue_head(head.status, client_headers, head.reason)
        record.head_sent = True
        reader = self.upstream.reader
        while True:
            try:
                event = reader.next_event()
                if event is NEED_DATA:
                    await exchange.flush()
                    event = await self._next_event()
            except (BadResponse, *STREAM_ERRORS) as exc:
                await exchange.flush()  # what came before the break is the client's
                raise ResponseAborted(f"{target.name} broke off the response: {exc}") from exc
            if isinstance(event, _BODY):
                exchange.queue_data(event)
                record.body_bytes += len(event)
            else:  # END: a body ends nowhere else
                exchange.queue_end()
                await exchange.flush()
                return head.keep_alive and not reader.has_trailing

    async def _relay_buffered(self, head: ResponseHead, headers: list[Header]) -> None:
        """--buffer-responses: take the whole body from the target, then send it on. Until the
        end nothing reached the client, so a target that breaks off gets a clean 502 (and one
        whose body passes --max-response-body a 500) instead of a cut connection."""
        exchange, target, record = self.exchange, self.target, self.record
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
                if not isinstance(event, _BODY):
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
            exchange.queue_head(head.status, client_headers, head.reason)
            await exchange.flush()
            record.head_sent = True
            for chunk in body.chunks():
                exchange.queue_data(chunk)
                await exchange.flush()
                record.body_bytes += len(chunk)
            exchange.queue_end()
            await exchange.flush()

    async def _splice(self, headers: Sequence[Header]) -> None:
        """After 101 (``headers`` its fields), the client's connection and the target's are
        one tunnel."""
        exchange, upstream = self.exchange, self.upstream
        tunnel = await exchange.switch_protocols(headers)
        self.record.head_sent = self.record.upgraded = True
        self.target.mark_upgraded(exchange.scope)
        await splice(tunnel, Tunnel(upstream.transport, upstream.reader.trailing))
