"""The request body on its way to a target: streamed by a task, or buffered whole first.

``RequestBodyPump`` moves what the client sends to the target connection while the exchange
awaits the response, then watches the client for a hang-up; a request without a body needs no
task at all. ``receive_request_body`` is --buffer-requests: the whole body before any target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import trio

from kproxy.core.buffering import BufferAction, declared_length
from kproxy.core.chunked import LAST_CHUNK, encode_chunk
from kproxy.core.upstream_http import Header
from kproxy.errors import BodyTimeout, BodyTooLarge, ClientGone, UpstreamUnreachable
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.exchange import Exchange
from kproxy.runtime.pool import UpstreamConnection
from kproxy.runtime.socket_io import STREAM_ERRORS

# A buffered body must keep coming: it may take BODY_TIMEOUT plus one second per MIN_BODY_RATE
# bytes received, so a slow upload goes on while a trickle (1 byte/s) is cut off after about
# BODY_TIMEOUT, as Apache's mod_reqtimeout does (body=20,MinRate=500). Go's server, and so
# kamal-proxy, has no body timeout at all; kproxy's matches its own header timeout.
BODY_TIMEOUT: Final = 30.0  # seconds
MIN_BODY_RATE: Final = 1024  # bytes per second that extend it
# A streamed body is kept while it is this small, so a request whose target connection proved
# dead before any byte reached the target can be sent again, body and all (relay.py).
KEEP_FOR_RESEND: Final = 64 * 1024  # bytes


class RequestBodyPump:
    """Moves the client's request body to the target; remembers enough to allow one retry.

    A plain class: one is made per request, and attrs' generated ``__init__`` with a factory
    and ``__attrs_post_init__`` cost twice as much."""

    __slots__ = ("_kept", "body", "chunked", "error", "exchange", "finished", "sent_data")

    def __init__(self, exchange: Exchange, chunked: bool, body: SpooledBody | None = None) -> None:
        self.exchange = exchange
        self.chunked = chunked  # the request goes to the target chunked (else by its length)
        self.body = body  # --buffer-requests: the whole body, already read
        self.sent_data = False  # body bytes went to a target and are gone: no replay
        # What went to the target so far, as sent, while it is small (KEEP_FOR_RESEND).
        self._kept: bytearray | None = bytearray()
        self.finished = body is not None  # the whole request body was read (or there is none)
        self.error: Exception | None = None

    async def run(
        self, upstream: UpstreamConnection, cancel: trio.CancelScope, *, watch: bool
    ) -> None:
        try:
            await self._pump(upstream)
        except Exception as exc:  # reported to the exchange, which decides the status
            self.error = exc
            cancel.cancel()
            return
        if watch:
            await self.watch(cancel)

    async def watch(self, cancel: trio.CancelScope) -> None:
        """Notice a client that leaves while its response is awaited or streamed: kamal-proxy
        logs that as 499, and the target connection is released at once instead of when the
        target finally answers."""
        if await self.exchange.watch_client():
            self.error = ClientGone()
            cancel.cancel()

    def rewind(self) -> None:
        """Ready to send the body again, on another connection (``relay``'s one retry)."""
        self.error = None

    async def _pump(self, upstream: UpstreamConnection) -> None:
        if self.body is not None:  # a buffered body can be replayed: sent_data stays False
            for chunk in self.body.chunks():
                await _send_upstream(upstream, chunk)
        elif self._kept:  # a retry: what the dead connection was given, again
            await _send_upstream(upstream, bytes(self._kept))
        while not self.finished:
            data = await self.exchange.receive_body()
            if data:
                if self.chunked:
                    data = encode_chunk(data)
                self._keep(data)  # before the send: a cancelled send is sent again too
                await _send_upstream(upstream, data)
            else:
                self.finished = True
        if self.chunked:
            await _send_upstream(upstream, LAST_CHUNK)  # trailers are dropped

    def _keep(self, data: bytes) -> None:
        kept = self._kept
        if kept is not None and len(kept) + len(data) <= KEEP_FOR_RESEND:
            kept += data
        else:
            self._kept = None
            self.sent_data = True


async def receive_request_body(
    exchange: Exchange, headers: Sequence[Header], body: SpooledBody
) -> None:
    """--buffer-requests: read the whole request body into ``body`` before any target is
    contacted, answering ``Expect: 100-continue`` here (a body declared too large gets its 413
    at once, without the client sending it, RFC 9110 §10.1.1).

    Raises BodyTooLarge, BadRequestBody, BodyTimeout (see BODY_TIMEOUT) or ClientGone.
    """
    limit = body.policy.max_body
    if body.policy.declare(declared_length(headers)) is BufferAction.REJECT:
        raise BodyTooLarge(f"request body larger than --max-request-body ({limit} bytes)")
    if exchange.waiting_for_100:
        await exchange.send_informational(100)
    start, received = trio.current_time(), 0
    with trio.CancelScope(deadline=start + BODY_TIMEOUT) as reading:
        while data := await exchange.receive_body():
            if body.write(data) is BufferAction.REJECT:
                raise BodyTooLarge(f"request body larger than --max-request-body ({limit} bytes)")
            received += len(data)
            reading.deadline = start + BODY_TIMEOUT + received / MIN_BODY_RATE
            await trio.lowlevel.checkpoint()  # a loop that only reads (see transport)
    if reading.cancelled_caught:
        raise BodyTimeout(
            f"request body too slow: {received} bytes in {trio.current_time() - start:.0f}s"
        )


async def _send_upstream(upstream: UpstreamConnection, data: bytes) -> None:
    try:
        await upstream.transport.send(data)
    except STREAM_ERRORS as exc:
        raise UpstreamUnreachable(f"connection to target broke while sending: {exc}") from exc
