"""The client side: one task per connection, in the proxy's connection nursery.

Requests on a connection are served in order (keep-alive and pipelining). Each request head,
and each chunked body, passes ``kproxy.core.framing`` before h11 parses it (``client.py``);
a head that fails is answered here and its connection closed. Each request is then routed,
admitted by its service (pause/stop), given a target, and relayed by ``upstream``, which opens
a nursery under the connection's task only while a request needs a second task (a body to
pump). Deadlines, and the look for a client that hangs up on a slow target, are alarms of
the server's one clock (``alarms``), not cancel scopes of their own. Answers are written by
``kproxy.core.responses`` (h11 only reads). Errors become a status in one place
(``_status_for``) and one JSON log line per request; an unexpected error ends its connection
only, logged with its traceback.
"""

from __future__ import annotations

import html
import socket
import time
from typing import Final

import attrs
import h11
import trio

from kproxy.core import framing
from kproxy.core.buffering import BufferPolicy, buffered_request_headers, has_request_body
from kproxy.core.cookies import CookieScope
from kproxy.core.headers import (
    build_upstream_request_headers,
    canonical_host_redirect,
    header_value,
    upgrade_type,
)
from kproxy.core.pages import CONTENT_TYPE
from kproxy.core.responses import ResponseWriter
from kproxy.core.service_map import strip_path_prefix
from kproxy.core.upstream_http import UpstreamRequest
from kproxy.errors import NoMatchingService, UpstreamError, UpstreamTimeout
from kproxy.runtime.acceptor import accept_connections, default_max_connections
from kproxy.runtime.access_log import ClientRequest, RequestLog, text
from kproxy.runtime.alarms import AlarmClock
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.client import BadRequestBody, ClientGone, ClientStream
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import BUILTIN_PAGES, error_page
from kproxy.runtime.request_body import receive_request_body
from kproxy.runtime.router import Router
from kproxy.runtime.service import Service
from kproxy.runtime.socket_io import STREAM_ERRORS
from kproxy.runtime.target import Target
from kproxy.runtime.upstream import ResponseAborted, ResponseRecord, forward

MAX_HEADER_BYTES: Final = 1024 * 1024  # request line + headers; Go's net/http allows 1 MiB
# Go counts no header fields (only bytes); Apache allows 100. 500 leaves room for any real
# client while bounding the per-request work on the header list.
MAX_HEADERS: Final = 500  # header fields per request
KEEPALIVE_TIMEOUT: Final = 60.0  # seconds an idle keep-alive connection is kept
HEADER_TIMEOUT: Final = 30.0  # seconds a client may take to send a whole request head
MAX_DISCARD: Final = 256 * 1024  # bytes of unread request body read to keep a connection
DISCARD_TIMEOUT: Final = 5.0  # seconds allowed for reading them
STATUS_CLIENT_CLOSED: Final = 499  # nginx's convention, as kamal-proxy logs it
CUT_OFF_ANSWER_TIMEOUT: Final = 5.0  # seconds to deliver the answer to a cut-off request


def _peer(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "", 0
    if stream.socket.family in (socket.AF_INET, socket.AF_INET6):
        return str(address[0]), int(address[1])
    return "", 0


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
    buffer_dir: str | None = None  # where buffered bodies spill; None = the system temp dir
    clock: AlarmClock = attrs.field(factory=AlarmClock)  # the data path's deadlines
    closing: bool = False
    _connections: dict[trio.CancelScope, bool] = attrs.field(factory=dict)  # scope → busy
    _all_closed: trio.Event = attrs.field(factory=trio.Event)

    async def serve_listeners(
        self, listeners: list[trio.SocketListener], handler_nursery: trio.Nursery
    ) -> None:
        """Accept on every listener until cancelled; each connection runs in
        ``handler_nursery``, at most ``connection_slots.total_tokens`` at once, with the clock
        of their deadlines (which lives as long as they may)."""
        handler_nursery.start_soon(self.clock.run)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    accept_connections,
                    listener,
                    self.connection_slots,
                    handler_nursery,
                    self.handle_connection,
                    self.logger,
                )

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        client_ip, client_port = _peer(stream)
        with trio.CancelScope() as scope:
            client = ClientStream(stream, self.max_header_bytes, self.clock, scope)
            if not self._connections:
                self._all_closed = trio.Event()
            self._connections[scope] = False
            try:
                await self._serve(client, client_ip, client_port, scope)
            finally:
                del self._connections[scope]
                if not self._connections:
                    self._all_closed.set()
                await client.aclose()

    async def _serve(
        self, client: ClientStream, client_ip: str, client_port: int, scope: trio.CancelScope
    ) -> None:
        """Serve requests in runs, each in one cancel scope (``client.epoch``) rather than one
        scope per request (trio's cost: ~7 µs each). A drain's cut-off or an alarm cancels the
        epoch; ``_proxy`` answers and logs the request it stopped (shielded, for a bounded
        time), and the connection goes on in a new epoch."""
        idle_timeout: float | None = None  # the first head's deadline runs from the accept
        while True:
            keep_open: bool | None = None
            with trio.CancelScope() as client.epoch:
                keep_open = await self._serve_run(
                    client, client_ip, client_port, scope, idle_timeout
                )
            # None: the connection ends. Else the epoch was cancelled while a request was in
            # flight, and that request has ended: the connection may go on in a new one.
            if keep_open is None or not await self._ready_for_next(client, keep_open):
                return
            idle_timeout = self.keepalive_timeout

    async def _serve_run(
        self,
        client: ClientStream,
        client_ip: str,
        client_port: int,
        scope: trio.CancelScope,
        idle_timeout: float | None,
    ) -> bool | None:
        """Requests until the connection ends (None) or a request's epoch was cancelled
        (returns whether the connection may carry another, as ``_handle``)."""
        while not self.closing:
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
            if isinstance(verdict, framing.Reject):
                await self._reject(client, verdict, client_ip)
                return None
            try:
                event = client.conn.next_event()  # the whole head is buffered: no waiting
            except h11.RemoteProtocolError as exc:
                reject = framing.Reject(exc.error_status_hint, str(exc))
                await self._reject(client, reject, client_ip)
                return None
            if not isinstance(event, h11.Request):
                return None
            request = ClientRequest(
                event.method, bytes(event.target), list(event.headers), event.http_version
            )
            client.has_body, client.body_framing = verdict.has_body, verdict
            client.response = ResponseWriter.for_request(
                request.method, request.http_version, request.headers
            )
            self._connections[scope] = True
            try:
                keep_open = await self._handle(client, request, client_ip, client_port)
            finally:
                self._connections[scope] = False
            if client.epoch.cancel_called:
                return keep_open  # no further await in this epoch: it would be cancelled
            if not await self._ready_for_next(client, keep_open):
                return None
            idle_timeout = self.keepalive_timeout
        return None

    async def _ready_for_next(self, client: ClientStream, keep_open: bool) -> bool:
        """After a request: whether the connection can carry the next one (then readied)."""
        if client.body_rejection is not None:
            # Its 400 is sent; where a next request would begin is unknowable (RFC 9112 §11.2).
            await client.close_after_error()
            return False
        if not keep_open or not (client.response.done and client.response.keep_alive):
            return False
        if not await _discard_request_body(client) or not client.body_in_step:
            return False  # too much unread body (an early answer) to reuse the connection
        client.next_cycle()
        return True

    async def _reject(self, client: ClientStream, reject: framing.Reject, client_ip: str) -> None:
        """Answer a request head kproxy will not serve, then close: after broken framing no
        later byte on the connection can be trusted to start a request (RFC 9112 §6.1, §11.2).
        Like Go's server, this happens before routing, so there is no access log line."""
        self.logger.info(
            "Bad request", client_addr=client_ip, status=reject.status, error=reject.reason
        )
        body = error_page(reject.status)
        headers = [
            (b"content-type", CONTENT_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            await client.write(ResponseWriter().whole(reject.status, headers, body))
        except STREAM_ERRORS:
            return
        await client.close_after_error()

    async def _handle(
        self, client: ClientStream, request: ClientRequest, client_ip: str, client_port: int
    ) -> bool:
        """Serve one request; returns whether the connection may carry another."""
        log = RequestLog.begin(
            request,
            port=self.port,
            scheme=self.scheme,
            client_ip=client_ip,
            client_port=client_port,
            now=trio.current_time(),
        )
        keep_open = True
        try:
            keep_open = await self._route(client, request, log)
        finally:
            self.logger.access(log.line(trio.current_time()))
        return keep_open

    async def _route(self, client: ClientStream, request: ClientRequest, log: RequestLog) -> bool:
        raw_target = request.target
        routed = self.router.route(log.fields["host"], log.fields["path"])
        if routed is None:
            return await self._fail(client, log, NoMatchingService(), ResponseRecord())
        service, route = routed
        log.fields["service"] = service.name
        log.pages = service.pages
        if (rejection := client.body_rejection) is not None:  # bad in the head's packet
            return await self._fail(client, log, BadRequestBody(rejection.reason), ResponseRecord())
        service_options = service.options.service
        host_header = header_value(request.headers, b"host")
        if service_options.client_ip_header:
            log.use_client_ip_header(request.headers, service_options.client_ip_header)
        location = canonical_host_redirect(
            host_header,
            raw_target,
            canonical_host=service_options.canonical_host,
            scheme=self.scheme,
        )
        if location is not None:
            log.status = await self._send_redirect(client, request, location, log)
            # Read a small unread body first, as Go's server does before closing, so the close
            # does not reset the connection under a client still sending it.
            await _discard_request_body(client)
            return False
        if (
            service_options.scope_cookie_paths
            and service_options.strip_path_prefix
            and route.path_prefix != "/"
        ):  # kamal-proxy scopes only what it strips (router.go sets MatchedPrefix only then)
            log.cookie_scope = CookieScope(route.path_prefix, text(host_header))
        target_options = service.options.target
        log.add_headers("req_", request.headers, target_options.log_request_headers)
        log.response_header_names = target_options.log_response_headers
        upstream_target = raw_target
        if service_options.strip_path_prefix:
            upstream_target = strip_path_prefix(raw_target, route.path_prefix)
        upstream_path = upstream_target.partition(b"?")[0].decode("latin-1")
        try:
            if service.is_health_check(request.method, upstream_path) and not service.running:
                # Paused or stopped: keep load balancers in front of us from dropping the host.
                log.status = await self._send_simple(client, 200, b"OK\n", log=log)
                return True
            await service.admit()
            if target_options.buffer_requests and has_request_body(request.headers):
                return await self._proxy_buffered(client, request, upstream_target, service, log)
            target = service.choose_target(request)
        except UpstreamError as exc:
            return await self._fail(client, log, exc, ResponseRecord())
        log.fields["target"] = target.name
        return await self._proxy(client, request, upstream_target, service, target, log)

    async def _proxy_buffered(
        self,
        client: ClientStream,
        request: ClientRequest,
        upstream_target: bytes,
        service: Service,
        log: RequestLog,
    ) -> bool:
        """--buffer-requests: the whole body first, before a target is chosen, so a slow upload
        occupies no target (nor its drain); the file, if it spilled, goes when this returns."""
        options = service.options.target
        policy = BufferPolicy(options.buffer_memory, options.max_request_body)
        with SpooledBody(policy, self.buffer_dir) as body:
            try:
                await receive_request_body(client, request.headers, body)
                await service.admit()  # it may have been paused or stopped meanwhile
                target = service.choose_target(request)
            except (UpstreamError, ClientGone, BadRequestBody) as exc:
                return await self._fail(client, log, exc, ResponseRecord())
            log.fields["target"] = target.name
            return await self._proxy(
                client, request, upstream_target, service, target, log, body=body
            )

    async def _proxy(
        self,
        client: ClientStream,
        request: ClientRequest,
        upstream_target: bytes,
        service: Service,
        target: Target,
        log: RequestLog,
        *,
        body: SpooledBody | None = None,
    ) -> bool:
        headers = build_upstream_request_headers(
            request.headers,
            client_ip=log.peer_ip,
            scheme=self.scheme,
            forward_headers=target.options.forward_headers,
            target=target.name,
            now=time.time(),
            make_request_id=lambda: str(log.fields["request_id"]),
            upgrade=upgrade_type(request.headers) is not None,
            forwarded_for=log.forwarded_for,
        )
        upstream_headers = headers.headers
        if body is not None:
            upstream_headers = buffered_request_headers(upstream_headers, body.size)
        elif client.body_framing.chunked or client.body_framing.content_length is not None:
            # The framing kproxy checked, spelled one way only (h11 re-chunks the body).
            upstream_headers = [h for h in upstream_headers if h[0] != b"content-length"]
            upstream_headers += framing.framing_headers(request.headers)
        if header_value(upstream_headers, b"host") is None:
            upstream_headers.insert(0, (b"host", target.name.encode()))
        upstream_request = UpstreamRequest(request.method, upstream_target, upstream_headers)
        record = ResponseRecord()
        epoch = client.epoch
        try:
            try:
                with target.track(epoch):
                    await forward(
                        client,
                        upstream_request,
                        target,
                        epoch,
                        record,
                        body=body,
                        buffer_dir=self.buffer_dir,
                        cookie_scope=log.cookie_scope,
                    )
            except (trio.Cancelled, BaseExceptionGroup) as stopped:
                # The epoch alone (not the connection, nor the server) was cancelled: the
                # request is cut off, and answered here, shielded for a bounded time; _serve
                # then leaves the epoch. Anything else cancelled goes on up. (A nursery in the
                # relay reports its tasks' Cancelled as a group.)
                if (
                    not _only_cancelled(stopped)
                    or not epoch.cancel_called
                    or client.scope.cancel_called
                    or record.upgraded
                ):
                    raise
                raise record.interruption or UpstreamTimeout(
                    f"request to draining target {target.name} cut off"
                ) from None
        except (UpstreamError, ClientGone, BadRequestBody, ResponseAborted) as exc:
            log.response_headers, log.response_bytes = record.headers, record.body_bytes
            if not isinstance(exc, ClientGone):  # a client leaving is the access log's news
                self.logger.info(
                    "Proxy error",
                    service=service.name,
                    target=target.name,
                    status=_status_for(exc, record),
                    error=str(exc),
                )
            if not epoch.cancel_called:
                return await self._fail(client, log, exc, record)
            # Cut off: answered outside the cancelled epoch's reach, for a bounded time.
            with trio.move_on_after(CUT_OFF_ANSWER_TIMEOUT, shield=True):
                return await self._fail(client, log, exc, record)
            log.status = STATUS_CLIENT_CLOSED  # the answer could not be delivered in time
            return False
        log.response_headers, log.response_bytes = record.headers, record.body_bytes
        log.status = record.status
        return not record.upgraded

    async def _fail(
        self, client: ClientStream, log: RequestLog, exc: Exception, record: ResponseRecord
    ) -> bool:
        """Answer (or, past the response head, just log) a failure; returns keep-open."""
        log.status = _status_for(exc, record)
        if record.head_sent or isinstance(exc, ClientGone):
            return False  # a truncated response must end with a cut connection
        if not await self._send_error(client, log.status, _message(exc), log):
            log.status = STATUS_CLIENT_CLOSED  # the error page could not be delivered
            return False
        return True

    async def _send_redirect(
        self, client: ClientStream, request: ClientRequest, location: bytes, log: RequestLog
    ) -> int:
        """A --canonical-host 301 as Go's http.Redirect writes it, with ``Connection: close``
        as kamal-proxy's handleRedirectsIfNeeded (internal/server/service.go) sends it.
        Returns the status sent, or 0 when nothing could be sent."""
        href = html.escape(location.decode("ascii"), quote=True).encode("ascii")
        body = b'<a href="' + href + b'">Moved Permanently</a>.\n\n'
        headers = [(b"location", location), (b"connection", b"close")]
        if request.method in (b"GET", b"HEAD"):
            headers.append((b"content-type", b"text/html; charset=utf-8"))
        if request.method != b"GET":
            body = b""  # Go writes the link for GET only
        headers.append((b"content-length", b"%d" % len(body)))
        try:
            await client.write(client.response.whole(301, headers, body))
        except STREAM_ERRORS:
            return 0
        log.response_headers, log.response_bytes = headers, len(body)
        return 301

    async def _send_error(
        self, client: ClientStream, status: int, message: str = "", log: RequestLog | None = None
    ) -> int:
        pages = log.pages if log is not None else BUILTIN_PAGES
        return await self._send_simple(
            client, status, error_page(status, message, pages), CONTENT_TYPE, log=log
        )

    async def _send_simple(
        self,
        client: ClientStream,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain",
        *,
        log: RequestLog | None = None,
    ) -> int:
        """Send a complete small response if the client can still take one; returns the status
        sent, or 0 when nothing could be sent."""
        if client.response.started:
            return 0
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        # A client still holding its body for a 100 never sends it after a final answer, so the
        # connection cannot carry another request: say so (RFC 9110 §10.1.1), as Go does.
        # Nor can one whose chunked body broke the framing rules (it is closed after this).
        if self.closing or client.waiting_for_100 or client.body_rejection is not None:
            headers.append((b"connection", b"close"))
        try:
            # A HEAD answer has the GET answer's headers and no body (RFC 9110 §9.3.2).
            await client.write(client.response.whole(status, headers, body))
        except STREAM_ERRORS:
            return 0
        if log is not None:
            sent = 0 if client.response.head_request else len(body)
            log.response_headers, log.response_bytes = headers, sent
        return status

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; give busy ones ``grace`` seconds, then cut them off."""
        self.closing = True
        for scope, busy in list(self._connections.items()):
            if not busy:
                scope.cancel()
        if self._connections:
            with trio.move_on_after(grace):
                await self._all_closed.wait()
        for scope in list(self._connections):
            scope.cancel()


async def _discard_request_body(client: ClientStream) -> bool:
    """Read what is left of a request body that was answered without it (a 404, a 502, a target
    that replied early), so the connection can carry the next request. Like Go's server
    (maxPostHandlerReadBytes), give up past a limit; returns whether the request is complete."""
    if client.request_complete:
        return True  # the common case: the whole request was read
    if client.conn.they_are_waiting_for_100_continue and not client.response.continued:
        return False  # the client sends nothing until asked to: don't ask now
    discarded = 0
    with trio.move_on_after(DISCARD_TIMEOUT):
        while client.conn.their_state is h11.SEND_BODY and discarded <= MAX_DISCARD:
            try:
                event = await client.next_event()
            except (h11.RemoteProtocolError, *STREAM_ERRORS):
                return False
            if isinstance(event, h11.Data):
                discarded += len(event.data)
                await trio.lowlevel.checkpoint()  # a loop that only reads (see socket_io)
            elif not isinstance(event, h11.EndOfMessage):
                return False
    return client.request_complete


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _status_for(exc: Exception, record: ResponseRecord) -> int:
    """The one place a failure becomes a status, like kamal-proxy's handleProxyError
    (internal/server/target.go). Once the head went out, the log keeps the status sent."""
    if isinstance(exc, ClientGone):
        return STATUS_CLIENT_CLOSED
    if record.head_sent:
        return record.status
    if isinstance(exc, BadRequestBody):
        return 400
    if isinstance(exc, UpstreamError):
        return exc.status_hint  # 404, 502, 503, 504
    return 502


def _message(exc: Exception) -> str:
    return getattr(exc, "message", "")
