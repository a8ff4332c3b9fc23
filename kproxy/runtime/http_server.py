"""The HTTP/1 server: accepting client connections and serving each one's requests in turn.

One task per connection, in the proxy's connection nursery (``acceptor``). Requests on a
connection are served in order (keep-alive and pipelining) by an ``Http1Exchange``: each
request head, and each chunked body, passes ``kproxy.core.request_framing`` before h11 parses it; a
head that fails is answered here and its connection closed. Each request then goes through
the protocol-neutral ``pipeline`` (route, admit, choose a target, relay, answer, log).
Deadlines, and the look for a client that hangs up on a slow target, are alarms of the
server's one clock (``alarms``), not cancel scopes of their own. An unexpected error ends its
connection only, logged with its traceback.
"""

from __future__ import annotations

from typing import Final

import attrs
import h11
import trio

from kproxy.core import request_framing
from kproxy.core.pages import CONTENT_TYPE
from kproxy.core.responses import ResponseWriter
from kproxy.runtime.acceptor import Handler, accept_connections, default_max_connections
from kproxy.runtime.alarms import AlarmClock
from kproxy.runtime.http1_exchange import Http1Exchange
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import error_page
from kproxy.runtime.pipeline import RequestPipeline
from kproxy.runtime.router import Router
from kproxy.runtime.socket_io import STREAM_ERRORS
from kproxy.runtime.transport import Transport

MAX_HEADER_BYTES: Final = 1024 * 1024  # request line + headers; Go's net/http allows 1 MiB
# Go counts no header fields (only bytes); Apache allows 100. 500 leaves room for any real
# client while bounding the per-request work on the header list.
MAX_HEADERS: Final = 500  # header fields per request
KEEPALIVE_TIMEOUT: Final = 60.0  # seconds an idle keep-alive connection is kept
HEADER_TIMEOUT: Final = 30.0  # seconds a client may take to send a whole request head


def _cancel_requested(scope: trio.CancelScope) -> bool:
    """``scope.cancel_called`` for a scope without a deadline, as an epoch is. trio's property
    reads the clock first to see whether a deadline passed (measured: ~2,900 instructions,
    0.6 % of a request), and this is asked once per request."""
    return scope._cancel_called


@attrs.define(eq=False)
class HttpServer:
    router: Router
    logger: Logger
    port: int = 0
    scheme: str = "http"
    header_timeout: float = HEADER_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS
    # One token per open client connection, taken before accept(): beyond the bound, new
    # clients wait in the kernel's listen backlog rather than costing memory and descriptors.
    connection_slots: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(default_max_connections())
    )
    clock: AlarmClock = attrs.field(factory=AlarmClock)  # the data path's deadlines
    pipeline: RequestPipeline = attrs.field(init=False)
    _connections: dict[trio.CancelScope, bool] = attrs.field(factory=dict)  # scope → busy
    _all_closed: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.pipeline = RequestPipeline(self.router, self.logger, self.port)

    @property
    def closing(self) -> bool:
        return self.pipeline.closing

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        handler_nursery: trio.Nursery,
        handle: Handler | None = None,
    ) -> None:
        """Accept on every listener until cancelled; each connection runs in
        ``handler_nursery``, at most ``connection_slots.total_tokens`` at once. ``handle``
        takes each accepted connection (default: ``handle_connection``; TLS: the handshake
        first). The clock of their deadlines must run as long as they may: the caller starts
        it there (``handler_nursery.start_soon(server.clock.run)``) when it starts this."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    accept_connections,
                    listener,
                    self.connection_slots,
                    handler_nursery,
                    handle or self.handle_connection,
                    self.logger,
                    self.pipeline.metrics,
                )

    async def handle_connection(self, transport: Transport) -> None:
        with trio.CancelScope() as scope:
            client = Http1Exchange(
                transport, self.max_header_bytes, self.clock, scope, scheme=self.scheme
            )
            if not self._connections:
                self._all_closed = trio.Event()
            self._connections[scope] = False
            try:
                await self._serve(client)
            finally:
                del self._connections[scope]
                if not self._connections:
                    self._all_closed.set()
                await client.aclose()

    async def _serve(self, client: Http1Exchange) -> None:
        """Serve requests in runs, each in one cancel scope (``client.epoch``) rather than one
        scope per request (trio's cost: ~7 µs each). A drain's cut-off or an alarm cancels the
        epoch; the pipeline answers and logs the request it stopped (shielded, for a bounded
        time), and the connection goes on in a new epoch."""
        idle_timeout: float | None = None  # the first head's deadline runs from the accept
        while True:
            keep_open: bool | None = None
            with trio.CancelScope() as client.epoch:
                keep_open = await self._serve_run(client, idle_timeout)
            # None: the connection ends. Else the epoch was cancelled while a request was in
            # flight, and that request has ended: the connection may go on in a new one.
            if keep_open is None or not await self._ready_for_next(client, keep_open):
                return
            idle_timeout = self.keepalive_timeout

    async def _serve_run(self, client: Http1Exchange, idle_timeout: float | None) -> bool | None:
        """Requests until the connection ends (None) or a request's epoch was cancelled
        (returns whether the connection may carry another, as ``RequestPipeline.handle``)."""
        pipeline, busy, scope = self.pipeline, self._connections, client.connection_scope
        while not pipeline.closing:
            # The deadlines cover waiting for the request head only, never the exchange:
            # a slow response or a WebSocket may rightly last far longer.
            verdict = await client.receive_head(
                idle_timeout=idle_timeout,
                header_timeout=self.header_timeout,
                max_bytes=self.max_header_bytes,
                max_headers=self.max_headers,
            )
            if verdict is None:
                return None  # the client closed the connection
            if isinstance(verdict, request_framing.Reject):
                await self._reject(client, verdict)
                return None
            try:
                event = client.conn.next_event()  # the whole head is buffered: no waiting
            except h11.RemoteProtocolError as exc:
                await self._reject(client, request_framing.Reject(exc.error_status_hint, str(exc)))
                return None
            if not isinstance(event, h11.Request):
                return None
            client.begin(event, verdict)
            busy[scope] = True
            try:
                keep_open = await pipeline.handle(client)
            finally:
                busy[scope] = False
            if _cancel_requested(client.epoch):
                return keep_open  # no further await in this epoch: it would be cancelled
            if not await self._ready_for_next(client, keep_open):
                return None
            idle_timeout = self.keepalive_timeout
        return None

    async def _ready_for_next(self, client: Http1Exchange, keep_open: bool) -> bool:
        """After a request: whether the connection can carry the next one (then readied)."""
        # body_rejection and body_in_step, read without a property call each: only a chunked
        # body has a check.
        body_check = client.body_check
        if body_check is not None and body_check.rejected is not None:
            # Its 400 is sent; where a next request would begin is unknowable (RFC 9112 §11.2).
            await client.close_after_error()
            return False
        if not keep_open or not (client.response.done and client.response.keep_alive):
            return False
        if client.has_body and not client.request_complete:  # a bodiless one is complete
            if not await client.discard_body():
                return False  # too much unread body (an early answer) to reuse the connection
            client.finished_at = client.now()  # the keep-alive wait runs from here
        if body_check is not None and not body_check.done:
            return False  # kproxy's check and h11's parse of the body disagree (a bug)
        client.next_cycle()
        return True

    async def _reject(self, client: Http1Exchange, reject: request_framing.Reject) -> None:
        """Answer a request head kproxy will not serve, then close: after broken framing no
        later byte on the connection can be trusted to start a request (RFC 9112 §6.1, §11.2).
        Like Go's server, this happens before routing, so there is no access log line."""
        self.logger.info(
            "Bad request", client_addr=client.client_ip, status=reject.status, error=reject.reason
        )
        body = error_page(reject.status)
        headers = [
            (b"content-type", CONTENT_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *reject.headers,
        ]
        try:
            await client.write(ResponseWriter().whole(reject.status, headers, body))
        except STREAM_ERRORS:
            return
        await client.close_after_error()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; give busy ones ``grace`` seconds, then cut them off."""
        self.pipeline.closing = True
        for scope, busy in list(self._connections.items()):
            if not busy:
                scope.cancel()
        if self._connections:
            with trio.move_on_after(grace):
                await self._all_closed.wait()
        for scope in list(self._connections):
            scope.cancel()
