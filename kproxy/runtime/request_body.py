"""The request body on its way to a target: streamed by a task, or buffered whole first.

``RequestBodyPump`` moves what the client sends to the target connection while the exchange
awaits the response, then watches the client for a hang-up; a request without a body needs no
task at all. ``receive_request_body`` is --buffer-requests: the whole body before any target.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import h11
import trio

from kproxy.core.buffering import BufferAction, declared_length
from kproxy.core.upstream_http import LAST_CHUNK, Header, encode_chunk
from kproxy.errors import BodyTooLarge, UpstreamUnreachable
from kproxy.runtime import socket_io
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.client import BadRequestBody, ClientGone, ClientStream
from kproxy.runtime.pool import UpstreamConnection
from kproxy.runtime.socket_io import STREAM_ERRORS


@attrs.define(eq=False)
class RequestBodyPump:
    """Moves the client's request body to the target; remembers enough to allow one retry."""

    client: ClientStream
    chunked: bool  # the request goes to the target chunked (else by its Content-Length)
    body: SpooledBody | None = None  # --buffer-requests: the whole body, already read
    sent_data: bool = False  # body bytes went to a target: the request can't be replayed
    finished: bool = False  # the whole request body was read (or there is none)
    error: Exception | None = None

    def __attrs_post_init__(self) -> None:
        self.finished = self.body is not None

    def end_without_body(self) -> bool:
        """A request that declared no body is complete as it is (see ClientStream.has_body):
        no task has to pump it. Returns whether that is so."""
        if self.body is not None or self.client.has_body:
            return False  # bytes to send
        self.finished = True
        return True

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
        """Notice a client that leaves while its response is awaited or streamed.

        Go's server keeps reading the connection in the background and cancels the request on
        EOF (net/http connReader.backgroundRead); kamal-proxy logs that as 499, and the target
        connection is released at once instead of when the target finally answers. Bytes that
        arrive instead (a pipelined request) are handed to h11 for later, ending the watch.
        """
        try:
            data = await socket_io.receive(self.client.sock)
        except STREAM_ERRORS:
            data = b""
        if data:
            self.client.conn.receive_data(data)
        else:
            self.error = ClientGone()
            cancel.cancel()

    async def _pump(self, upstream: UpstreamConnection) -> None:
        if self.body is not None:  # a buffered body can be replayed: sent_data stays False
            for chunk in self.body.chunks():
                await _send_upstream(upstream, chunk)
        while not self.finished:
            try:
                event = await self.client.next_event()
            except h11.RemoteProtocolError as exc:
                raise _body_error(self.client, exc) from exc
            except STREAM_ERRORS as exc:
                raise ClientGone() from exc
            if isinstance(event, h11.Data):
                self.sent_data = True
                await _send_upstream(
                    upstream, encode_chunk(event.data) if self.chunked else event.data
                )
            elif isinstance(event, h11.EndOfMessage):
                self.finished = True
            else:  # ConnectionClosed or PAUSED mid-body: the client went away
                raise ClientGone()
        if self.chunked:
            await _send_upstream(upstream, LAST_CHUNK)  # trailers are dropped


async def receive_request_body(
    client: ClientStream, headers: Sequence[Header], body: SpooledBody
) -> None:
    """--buffer-requests: read the whole request body into ``body`` before any target is
    contacted, answering ``Expect: 100-continue`` here (a body declared too large gets its 413
    at once, without the client sending it, RFC 9110 §10.1.1).

    Raises BodyTooLarge, BadRequestBody or ClientGone.
    """
    limit = body.policy.max_body
    if body.policy.declare(declared_length(headers)) is BufferAction.REJECT:
        raise BodyTooLarge(f"request body larger than --max-request-body ({limit} bytes)")
    if client.waiting_for_100:
        await client.answer(client.response.informational(100))
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
            await trio.lowlevel.checkpoint()  # a loop that only reads (see socket_io)
        elif isinstance(event, h11.EndOfMessage):
            return  # trailers are dropped, as when streaming
        else:  # ConnectionClosed mid-body: the client went away
            raise ClientGone()


def _body_error(client: ClientStream, exc: h11.RemoteProtocolError) -> Exception:
    """A body cut short by the client closing is a client gone (499, as Go's server logs a
    request whose connection closed), not a malformed body (400)."""
    return ClientGone() if client.eof else BadRequestBody(str(exc))


async def _send_upstream(upstream: UpstreamConnection, data: bytes) -> None:
    try:
        await socket_io.send_all(upstream.sock, data)
    except STREAM_ERRORS as exc:
        raise UpstreamUnreachable(f"connection to target broke while sending: {exc}") from exc
