"""One request relayed to one target over a pooled h11 client connection.

The request body streams to the target while the response is awaited (so ``Expect:
100-continue`` and early answers work); the response streams back as it arrives. Once the body
is in, the client connection is watched, so a client that leaves ends the exchange (499).
Errors before the response head reached the client become UpstreamError (an error page);
errors after it abort the client connection, because a truncated body must never look complete.
"""

from __future__ import annotations

import functools
import math
from typing import Final

import attrs
import h11
import trio

from kproxy.core.buffering import (
    BufferAction,
    BufferPolicy,
    buffered_response_headers,
    declared_length,
    response_streams,
)
from kproxy.core.cookies import CookieScope
from kproxy.core.headers import header_value, strip_response_hop_by_hop
from kproxy.errors import BodyTooLarge, ResponseTooLarge, UpstreamTimeout, UpstreamUnreachable
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.h11_stream import READ_SIZE, H11Stream
from kproxy.runtime.pool import UpstreamConnection, describe_connect_error
from kproxy.runtime.target import Target

STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
EXPECT_CONTINUE_TIMEOUT: Final = 1.0  # seconds; ExpectContinueTimeout of Go's DefaultTransport


class ClientGone(Exception):
    """The client disconnected (or half-closed) before the exchange finished: logged as 499."""


class BadRequestBody(Exception):
    """The client's body broke HTTP framing (e.g. a malformed chunk): answered 400."""


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


@attrs.define(eq=False)
class RequestBodyPump:
    """Moves the client's request body to the target; remembers enough to allow one retry."""

    client: H11Stream
    body: SpooledBody | None = None  # --buffer-requests: the whole body, already read
    sent_data: bool = False  # body bytes went to a target: the request can't be replayed
    finished: bool = False  # the client's EndOfMessage was read
    error: Exception | None = None

    def __attrs_post_init__(self) -> None:
        self.finished = self.body is not None

    async def run(
        self, upstream: UpstreamConnection, cancel: trio.CancelScope, *, watch: bool
    ) -> None:
        try:
            await self._pump(upstream)
            if watch:
                await self._watch_for_hangup()
        except Exception as exc:  # reported to the exchange, which decides the status
            self.error = exc
            cancel.cancel()

    async def _watch_for_hangup(self) -> None:
        """Notice a client that leaves while its response is awaited or streamed.

        Go's server keeps reading the connection in the background and cancels the request on
        EOF (net/http connReader.backgroundRead); kamal-proxy logs that as 499, and the target
        connection is released at once instead of when the target finally answers. Bytes that
        arrive instead (a pipelined request) are handed to h11 for later, ending the watch.
        """
        try:
            data = await self.client.stream.receive_some(READ_SIZE)
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc
        if not data:
            raise ClientGone()
        self.client.conn.receive_data(data)

    async def _pump(self, upstream: UpstreamConnection) -> None:
        if self.body is not None:  # a buffered body can be replayed: sent_data stays False
            for chunk in self.body.chunks():
                await _send_upstream(upstream, h11.Data(data=chunk))
        while not self.finished:
            try:
                event = await self.client.next_event()
            except h11.RemoteProtocolError as exc:
                raise _body_error(self.client, exc) from exc
            except STREAM_ERRORS as exc:
                raise ClientGone() from exc
            if isinstance(event, h11.Data):
                self.sent_data = True
                await _send_upstream(upstream, event)
            elif isinstance(event, h11.EndOfMessage):
                self.finished = True
            else:  # ConnectionClosed or PAUSED mid-body: the client went away
                raise ClientGone()
        await _send_upstream(upstream, h11.EndOfMessage())  # trailers are dropped


async def receive_request_body(client: H11Stream, request: h11.Request, body: SpooledBody) -> None:
    """--buffer-requests: read the whole request body into ``body`` before any target is
    contacted, answering ``Expect: 100-continue`` here (a body declared too large gets its 413
    at once, without the client sending it, RFC 9110 §10.1.1).

    Raises BodyTooLarge, BadRequestBody or ClientGone.
    """
    limit = body.policy.max_body
    if body.policy.declare(declared_length(request.headers)) is BufferAction.REJECT:
        raise BodyTooLarge(f"request body larger than --max-request-body ({limit} bytes)")
    if client.conn.they_are_waiting_for_100_continue:
        await _send_client(client, h11.InformationalResponse(status_code=100, headers=[]))
    while True:
        try:
            event = await client.next_event()
        except h11.RemoteProtocolError as exc:
            raise _body_error(client, exc) from exc
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc
        if isinstance(event, h11.Data):
            if body.write(event.data) is BufferAction.REJECT:
                raise BodyTooLarge(f"request body larger than --max-request-body ({limit} bytes)")
        elif isinstance(event, h11.EndOfMessage):
            return  # trailers are dropped, as when streaming
        else:  # ConnectionClosed mid-body: the client went away
            raise ClientGone()


def _body_error(client: H11Stream, exc: h11.RemoteProtocolError) -> Exception:
    """A body cut short by the client closing is a client gone (499, as Go's server logs a
    request whose connection closed), not a malformed body (400)."""
    return ClientGone() if client.eof else BadRequestBody(str(exc))


async def _send_upstream(upstream: UpstreamConnection, event: h11.Event) -> None:
    try:
        await upstream.send(event)
    except STREAM_ERRORS as exc:
        raise UpstreamUnreachable(f"connection to target broke while sending: {exc}") from exc


@attrs.define
class ResponseRecord:
    """What the access log needs from the exchange."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    body_bytes: int = 0  # response body bytes sent to the client
    head_sent: bool = False  # the client has seen a status line: no error page any more
    upgraded: bool = False


async def forward(
    client: H11Stream,
    request: h11.Request,
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
    ResponseAborted otherwise. ``scope`` is the request's drain scope (marked when upgraded).
    ``body`` is the request body when it was buffered (see receive_request_body);
    ``buffer_dir`` is where a buffered response spills (None: the system temp dir).
    ``cookie_scope`` rewrites the response's Set-Cookie paths (--scope-cookie-paths).
    """
    pump = RequestBodyPump(client, body)
    for fresh in (False, True):  # a pooled connection first; one retry if it proved stale
        try:
            upstream = await (target.pool.connect() if fresh else target.pool.acquire())
        except OSError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {target.name}: {describe_connect_error(exc)}"
            ) from exc
        try:
            await _exchange(
                client, upstream, request, pump, target, scope, record, buffer_dir, cookie_scope
            )
            return
        except _StaleConnection:  # only a reused connection can be: at most once
            await upstream.aclose()


async def _exchange(
    client: H11Stream,
    upstream: UpstreamConnection,
    request: h11.Request,
    pump: RequestBodyPump,
    target: Target,
    scope: trio.CancelScope,
    record: ResponseRecord,
    buffer_dir: str | None,
    cookie_scope: CookieScope | None,
) -> None:
    release = completed = False
    try:
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            try:
                try:
                    await upstream.send(request)
                except STREAM_ERRORS as exc:
                    raise _ConnectionLost(
                        f"cannot send to {target.name}: {exc}", request_sent=False
                    ) from exc
                # An upgrade's client bytes belong to the splice: nothing else may read them.
                watch = header_value(request.headers, b"upgrade") is None
                nursery.start_soon(
                    functools.partial(pump.run, watch=watch), upstream, nursery.cancel_scope
                )
                release = await _relay_response(
                    client,
                    upstream,
                    target,
                    scope,
                    record,
                    request.method,
                    buffer_dir,
                    cookie_scope,
                )
                completed = True
            except Exception as exc:  # raised after the nursery, so it is not wrapped in a group
                error = exc
            nursery.cancel_scope.cancel()
        if not completed and isinstance(pump.error, ClientGone | BadRequestBody):
            error = pump.error  # the client's side failed: that is the story to tell
        if (
            isinstance(error, _ConnectionLost)
            and upstream.reused
            and record.status == 0
            and (not pump.sent_data or pump.body is not None)  # a buffered body can be resent
            and (not error.request_sent or request.method in _REPLAYABLE_METHODS)
        ):
            raise _StaleConnection() from error
        if error is not None:
            release = False
            raise error
    finally:
        if release and pump.finished:
            await target.pool.release(upstream)
        else:
            await upstream.aclose()


async def _relay_response(
    client: H11Stream,
    upstream: UpstreamConnection,
    target: Target,
    scope: trio.CancelScope,
    record: ResponseRecord,
    method: bytes,
    buffer_dir: str | None,
    cookie_scope: CookieScope | None,
) -> bool:
    """Relay the response; returns whether the upstream connection may be reused."""
    with trio.move_on_after(target.options.target_timeout) as timer:
        head = await _read_head(client, upstream, target)
    if timer.cancelled_caught:
        raise UpstreamTimeout(f"{target.name} sent no response within the target timeout")
    record.status = head.status_code
    record.headers = list(head.headers)
    if isinstance(head, h11.InformationalResponse):  # 101 Switching Protocols
        await _splice(client, upstream, head, target, scope, record)
        return False
    if cookie_scope is not None:  # as kamal-proxy's targetResponseWriter.WriteHeader does
        head = h11.Response(
            status_code=head.status_code,
            headers=cookie_scope.apply(list(head.headers)),
            reason=head.reason,
            http_version=head.http_version,
        )
    if target.options.buffer_responses and not response_streams(head.headers):
        await _relay_buffered(client, upstream, head, target, record, method, buffer_dir)
        return True
    # Bytes for the client are gathered while the target's bytes already read hold more
    # events, and sent when more must be read: the head, the body and its end usually go
    # out in one send(2). h11 still parses the target's framing and re-frames it for the
    # client, so a target that breaks its framing is caught (ResponseAborted).
    pending = [
        _encode(
            client,
            h11.Response(
                status_code=head.status_code,
                headers=strip_response_hop_by_hop(list(head.headers)),
                reason=head.reason,
            ),
        )
    ]
    record.head_sent = True
    while True:
        try:
            event = upstream.conn.next_event()
            if event is h11.NEED_DATA:
                await _send_bytes(client, pending)
                event = await upstream.next_event()
        except (h11.RemoteProtocolError, *STREAM_ERRORS) as exc:
            await _send_bytes(client, pending)  # what came before the break is the client's
            raise ResponseAborted(f"{target.name} broke off the response: {exc}") from exc
        if isinstance(event, h11.Data):
            pending.append(_encode(client, event))
            record.body_bytes += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            pending.append(_encode(client, h11.EndOfMessage()))
            await _send_bytes(client, pending)
            return True
        else:
            await _send_bytes(client, pending)
            raise ResponseAborted(f"{target.name} closed the connection mid-response")


def _encode(client: H11Stream, event: h11.Event) -> bytes:
    return client.conn.send(event) or b""


async def _send_bytes(client: H11Stream, pending: list[bytes]) -> None:
    """Send what ``_encode`` gathered, in one write, and empty ``pending``."""
    data = b"".join(pending)
    pending.clear()
    if data:
        try:
            await client.stream.send_all(data)
        except STREAM_ERRORS as exc:
            raise ClientGone() from exc


async def _relay_buffered(
    client: H11Stream,
    upstream: UpstreamConnection,
    head: h11.Response,
    target: Target,
    record: ResponseRecord,
    method: bytes,
    buffer_dir: str | None,
) -> None:
    """--buffer-responses: take the whole body from the target, then send it on. Until the end
    nothing reached the client, so a target that breaks off gets a clean 502 (and one whose
    body passes --max-response-body a 500) instead of a cut connection."""
    options = target.options
    policy = BufferPolicy(options.buffer_memory, options.max_response_body)
    with SpooledBody(policy, buffer_dir) as body:
        while True:
            try:
                event = await upstream.next_event()
            except (h11.RemoteProtocolError, *STREAM_ERRORS) as exc:
                raise UpstreamUnreachable(f"{target.name} broke off the response: {exc}") from exc
            if isinstance(event, h11.Data):
                if body.write(event.data) is BufferAction.REJECT:
                    raise ResponseTooLarge(
                        f"{target.name} sent a response larger than --max-response-body"
                        f" ({options.max_response_body} bytes)"
                    )
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise UpstreamUnreachable(f"{target.name} closed the connection mid-response")
        headers = buffered_response_headers(
            strip_response_hop_by_hop(list(head.headers)),
            body.size,
            status=head.status_code,
            head_request=method == b"HEAD",
        )
        await _send_client(
            client, h11.Response(status_code=head.status_code, headers=headers, reason=head.reason)
        )
        record.head_sent = True
        for chunk in body.chunks():
            await _send_client(client, h11.Data(data=chunk))
            record.body_bytes += len(chunk)
        await _send_client(client, h11.EndOfMessage())


async def _read_head(
    client: H11Stream, upstream: UpstreamConnection, target: Target
) -> h11.Response | h11.InformationalResponse:
    received = upstream.received
    while True:
        event: h11.Event | type[h11.PAUSED] | None = None
        with trio.move_on_after(_continue_wait(client)):
            try:
                event = await upstream.next_event()
            except h11.RemoteProtocolError as exc:
                if upstream.received == received:  # h11's word for a close with no response
                    raise _ConnectionLost(
                        f"{target.name} closed the connection without a response",
                        request_sent=True,
                    ) from exc
                raise UpstreamUnreachable(f"{target.name} sent no valid response: {exc}") from exc
            except STREAM_ERRORS as exc:
                raise _ConnectionLost(
                    f"connection to {target.name} lost: {exc}", request_sent=True
                ) from exc
        if event is None:
            # The client holds its body for a 100 the target has not sent. Go's transport sends
            # the body anyway after ExpectContinueTimeout, so ask the client for it. Sent from
            # this task because only one task may write to the client.
            await _send_client(client, h11.InformationalResponse(status_code=100, headers=[]))
            continue
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return event
            if event.status_code == 100 and not client.conn.they_are_waiting_for_100_continue:
                continue  # we already sent one, or the client is sending its body anyway
            # 100 Continue and friends go to the client as they come (RFC 9110 §15.2).
            if client.conn.their_http_version != b"1.0":
                await _send_client(
                    client,
                    h11.InformationalResponse(
                        status_code=event.status_code,
                        headers=strip_response_hop_by_hop(list(event.headers)),
                    ),
                )
            continue
        raise _ConnectionLost(
            f"{target.name} closed the connection without a response", request_sent=True
        )


def _continue_wait(client: H11Stream) -> float:
    return EXPECT_CONTINUE_TIMEOUT if client.conn.they_are_waiting_for_100_continue else math.inf


async def _send_client(client: H11Stream, event: h11.Event) -> None:
    try:
        await client.send(event)
    except STREAM_ERRORS as exc:
        raise ClientGone() from exc


async def _splice(
    client: H11Stream,
    upstream: UpstreamConnection,
    head: h11.InformationalResponse,
    target: Target,
    scope: trio.CancelScope,
    record: ResponseRecord,
) -> None:
    """After 101, copy raw bytes both ways until either side closes."""
    await _send_client(
        client, h11.InformationalResponse(status_code=101, headers=list(head.headers))
    )
    record.head_sent = record.upgraded = True
    target.mark_upgraded(scope)
    client_rest, _ = client.conn.trailing_data
    upstream_rest, _ = upstream.conn.trailing_data
    async with trio.open_nursery() as nursery:

        async def copy(source: trio.SocketStream, sink: trio.SocketStream, first: bytes) -> None:
            try:
                if first:
                    await sink.send_all(first)
                while data := await source.receive_some(64 * 1024):
                    await sink.send_all(data)
            except STREAM_ERRORS:
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(copy, client.stream, upstream.stream, bytes(client_rest))
        nursery.start_soon(copy, upstream.stream, client.stream, bytes(upstream_rest))
