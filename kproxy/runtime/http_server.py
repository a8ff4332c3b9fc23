"""The client side: one task (and nursery) per connection, an h11 server connection each.

Requests on a connection are served in order (keep-alive and pipelining). Each request is
routed, admitted by its service (pause/stop), given a target, and relayed by ``upstream``.
Errors become a status in one place (``_status_for``) and one JSON log line per request.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Final

import attrs
import h11
import trio

from kproxy.core.headers import (
    build_upstream_request_headers,
    header_value,
    upgrade_type,
)
from kproxy.core.pages import CONTENT_TYPE
from kproxy.core.service_map import request_host, strip_path_prefix
from kproxy.errors import UpstreamError, UpstreamTimeout
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import error_page
from kproxy.runtime.router import Router
from kproxy.runtime.service import Service
from kproxy.runtime.upstream import (
    STREAM_ERRORS,
    BadRequestBody,
    ClientGone,
    ResponseAborted,
    ResponseRecord,
    forward,
)

MAX_HEADER_BYTES: Final = 1024 * 1024  # request line + headers; Go's net/http allows 1 MiB
KEEPALIVE_TIMEOUT: Final = 60.0  # seconds an idle keep-alive connection is kept
HEADER_TIMEOUT: Final = 30.0  # seconds a client may take to send a request head
STATUS_CLIENT_CLOSED: Final = 499  # nginx's convention, as kamal-proxy logs it


@attrs.define
class RequestLog:
    """The fields of one access log line (kamal-proxy's names)."""

    fields: dict[str, Any]
    status: int = 0
    started: float = 0.0


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
    closing: bool = False
    _connections: dict[trio.CancelScope, bool] = attrs.field(factory=dict)  # scope → busy
    _all_closed: trio.Event = attrs.field(factory=trio.Event)

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        client = H11Stream(stream, conn)
        client_ip, client_port = _peer(stream)
        with trio.CancelScope() as scope:
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
        self, client: H11Stream, client_ip: str, client_port: int, scope: trio.CancelScope
    ) -> None:
        timeout = HEADER_TIMEOUT
        while not self.closing:
            with trio.move_on_after(timeout):
                try:
                    event = await client.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._send_error(client, exc.error_status_hint)
                    self.logger.info("Bad request", client_addr=client_ip, error=str(exc))
                    return
                except STREAM_ERRORS:
                    return
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed (or anything unexpected): we're done
                self._connections[scope] = True
                try:
                    keep_open = await self._handle(client, event, client_ip, client_port)
                finally:
                    self._connections[scope] = False
                if not keep_open or client.conn.our_state is not h11.DONE:
                    return
                if client.conn.their_state is not h11.DONE:
                    return  # the body was not read (an error answered early): can't reuse
                client.conn.start_next_cycle()
                timeout = KEEPALIVE_TIMEOUT
                continue
            return  # idle too long, or a head that trickled in too slowly

    async def _handle(
        self, client: H11Stream, request: h11.Request, client_ip: str, client_port: int
    ) -> bool:
        """Serve one request; returns whether the connection may carry another."""
        raw_target = bytes(request.target)
        path_bytes, _, query = raw_target.partition(b"?")
        path = path_bytes.decode("latin-1")
        host = request_host(header_value(request.headers, b"host"))
        log = RequestLog(
            fields={
                "host": host,
                "port": self.port,
                "path": path,
                "method": request.method.decode("latin-1"),
                "proto": f"HTTP/{request.http_version.decode()}",
                "scheme": self.scheme,
                "query": query.decode("latin-1"),
                "client_addr": client_ip,
                "client_port": client_port,
                "remote_addr": client_ip,
                "user_agent": _text(header_value(request.headers, b"user-agent")),
                "req_content_length": _length(header_value(request.headers, b"content-length")),
                "req_content_type": _text(header_value(request.headers, b"content-type")),
            },
            started=trio.current_time(),
        )
        keep_open = True
        try:
            keep_open = await self._route(client, request, raw_target, path, host, log)
        finally:
            log.fields["status"] = log.status
            log.fields["duration"] = int((trio.current_time() - log.started) * 1e9)
            self.logger.info("Request", **log.fields)
        return keep_open

    async def _route(
        self,
        client: H11Stream,
        request: h11.Request,
        raw_target: bytes,
        path: str,
        host: str,
        log: RequestLog,
    ) -> bool:
        routed = self.router.route(host, path)
        if routed is None:
            log.status = await self._send_error(client, 404)
            return True
        service, route = routed
        log.fields["service"] = service.name
        upstream_target = raw_target
        if service.options.service.strip_path_prefix:
            upstream_target = strip_path_prefix(raw_target, route.path_prefix)
        upstream_path = upstream_target.partition(b"?")[0].decode("latin-1")
        try:
            if service.is_health_check(request.method, upstream_path) and not service.running:
                # Paused or stopped: keep load balancers in front of us from dropping the host.
                log.status = await self._send_simple(client, 200, b"OK\n")
                return True
            await service.admit()
            target = service.choose_target()
        except UpstreamError as exc:
            log.status = await self._send_error(client, exc.status_hint, _message(exc))
            return True
        log.fields["target"] = target.name
        return await self._proxy(client, request, upstream_target, service, target, log)

    async def _proxy(
        self,
        client: H11Stream,
        request: h11.Request,
        upstream_target: bytes,
        service: Service,
        target: Any,
        log: RequestLog,
    ) -> bool:
        headers = build_upstream_request_headers(
            request.headers,
            client_ip=log.fields["client_addr"],
            scheme=self.scheme,
            forward_headers=target.options.forward_headers,
            target=target.name,
            now=time.time(),
            make_request_id=lambda: str(uuid.uuid4()),
            upgrade=upgrade_type(request.headers) is not None,
        )
        log.fields["request_id"] = headers.request_id
        upstream_headers = headers.headers
        if header_value(request.headers, b"transfer-encoding") is not None:
            upstream_headers.append((b"transfer-encoding", b"chunked"))  # h11 re-frames it
        if header_value(upstream_headers, b"host") is None:
            upstream_headers.insert(0, (b"host", target.name.encode()))
        upstream_request = h11.Request(
            method=request.method, target=upstream_target, headers=upstream_headers
        )
        _log_headers(log, "req_", request.headers, target.options.log_request_headers)
        record = ResponseRecord()
        keep_open = True
        with target.track() as scope:
            try:
                with scope:
                    await forward(client, upstream_request, target, scope, record)
                if scope.cancelled_caught and not record.upgraded:
                    raise UpstreamTimeout(f"request to draining target {target.name} cut off")
                log.status = record.status
                keep_open = not record.upgraded
            except UpstreamError as exc:
                if record.head_sent:
                    log.status, keep_open = record.status, False
                else:
                    log.status = await self._send_error(client, exc.status_hint, _message(exc))
                    keep_open = log.status != 0
                self.logger.info(
                    "Proxy error",
                    service=service.name,
                    target=target.name,
                    status=exc.status_hint,
                    error=str(exc),
                )
            except ClientGone:
                log.status, keep_open = STATUS_CLIENT_CLOSED, False
            except BadRequestBody as exc:
                log.status = 400 if record.head_sent else await self._send_error(client, 400)
                keep_open = False
                self.logger.info("Bad request body", service=service.name, error=str(exc))
            except ResponseAborted as exc:
                log.status, keep_open = record.status, False
                self.logger.warning(
                    "Response aborted", service=service.name, target=target.name, error=str(exc)
                )
        if record.headers:
            _log_headers(log, "resp_", record.headers, target.options.log_response_headers)
            log.fields["resp_content_length"] = _length(
                header_value(record.headers, b"content-length")
            )
            log.fields["resp_content_type"] = _text(header_value(record.headers, b"content-type"))
        return keep_open

    async def _send_error(self, client: H11Stream, status: int, message: str = "") -> int:
        return await self._send_simple(client, status, error_page(status, message), CONTENT_TYPE)

    async def _send_simple(
        self, client: H11Stream, status: int, body: bytes, content_type: bytes = b"text/plain"
    ) -> int:
        """Send a complete small response if the client can still take one; returns the status
        sent, or 0 when nothing could be sent."""
        if client.conn.our_state is not h11.SEND_RESPONSE:
            return 0
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if self.closing:
            headers.append((b"connection", b"close"))
        try:
            await client.send(h11.Response(status_code=status, headers=headers))
            await client.send(h11.Data(data=body))
            await client.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, *STREAM_ERRORS):
            return 0
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


def _message(exc: UpstreamError) -> str:
    return getattr(exc, "message", "")


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value is not None else ""


def _length(value: bytes | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _log_headers(log: RequestLog, prefix: str, headers: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = header_value(headers, name.lower().encode())
        key = prefix + name.lower().replace("-", "_")
        log.fields[key] = _text(value)
