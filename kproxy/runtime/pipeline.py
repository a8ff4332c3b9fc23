"""The request pipeline: route, admit, choose a target, relay, answer, log, for one exchange.

It works on an :class:`~kproxy.runtime.exchange.Exchange` only, so any client protocol can
feed it. The decisions are ``core``'s (routing, header rules, ``relay_rules``); this module
sequences them and awaits what they ask for. Each request gets one JSON access log line.
"""

from __future__ import annotations

import time
from typing import Final

import attrs
import trio

from kproxy.core import relay_rules
from kproxy.core.acme_challenges import CHALLENGE_PATH
from kproxy.core.acme_challenges import CONTENT_TYPE as CHALLENGE_CONTENT_TYPE
from kproxy.core.buffering import BufferPolicy, has_request_body
from kproxy.core.cookies import CookieScope
from kproxy.core.headers import (
    UPGRADE,
    build_upstream_request_headers,
    header_value,
    upgrade_type,
)
from kproxy.core.pages import CONTENT_TYPE
from kproxy.core.relay_rules import STATUS_CLIENT_CLOSED
from kproxy.core.service_map import absolute_form, strip_path_prefix
from kproxy.core.tls_rules import check_scheme
from kproxy.errors import (
    BadRequestBody,
    ClientGone,
    NoMatchingService,
    NotServedOverTls,
    ResponseAborted,
    UpstreamError,
    UpstreamTimeout,
)
from kproxy.runtime.access_log import RequestLog, text
from kproxy.runtime.buffer import SpooledBody
from kproxy.runtime.exchange import Exchange, RequestHead, ResponseRecord
from kproxy.runtime.log import Logger
from kproxy.runtime.metrics import RequestMetrics
from kproxy.runtime.pages import error_page
from kproxy.runtime.relay import forward
from kproxy.runtime.request_body import receive_request_body
from kproxy.runtime.router import Router
from kproxy.runtime.service import Service
from kproxy.runtime.target import Target

CUT_OFF_ANSWER_TIMEOUT: Final = 5.0  # seconds to deliver the answer to a cut-off request


@attrs.define(eq=False)
class RequestPipeline:
    """Serves exchanges with the router's services; ``closing`` once the server shuts down
    (answers then say the connection closes)."""

    router: Router
    logger: Logger
    port: int = 0  # the listener's, for the log
    buffer_dir: str | None = None  # where buffered bodies spill; None = the system temp dir
    closing: bool = False
    metrics: RequestMetrics | None = None  # run --metrics-port: None costs one test a request

    async def handle(self, exchange: Exchange) -> bool:
        """Serve one request; returns whether its connection may carry another. (Routing is no
        coroutine of its own: each await layer costs every request at each of its waits.)"""
        request = exchange.request
        if request.target[:1] != b"/":  # the one check origin-form requests pay
            absolute = absolute_form(request.target, request.headers)
            if absolute is not None:  # routed, logged and forwarded by its authority
                request = exchange.request = RequestHead(
                    request.method,
                    absolute[0],
                    absolute[1],
                    request.http_version,
                    request.connection,
                )
        log = RequestLog(  # port, scheme, client_ip, client_port, now
            request,
            self.port,
            exchange.scheme,
            exchange.client_ip,
            exchange.client_port,
            exchange.started_at,
        )
        try:
            raw_target = request.target
            # HTTP-01 (RFC 8555 §8.3) before routing, redirects and pause/stop: a pending token
            # is answered; any other request goes on. One prefix check is all others pay.
            if raw_target.startswith(CHALLENGE_PATH) and self.router.acme is not None:
                key_authorization = await self.router.acme.answer(raw_target)
                if key_authorization is not None:
                    log.status = await self._send_simple(
                        exchange, 200, key_authorization, CHALLENGE_CONTENT_TYPE, log=log
                    )
                    return True
            routed = self.router.route(log.host, log.path)
            if routed is None:
                return await self._fail(exchange, log, NoMatchingService())
            service, route = routed
            log.service = service.name
            log.pages = service.pages
            service_options = service.options.service
            if self.metrics is not None:
                log.metered = self.metrics.enter(
                    service.name,
                    log.path,
                    service_options.exclude_metrics_paths,
                    route.path_prefix,
                    service_options.strip_path_prefix,
                )
            # A body known bad before any target (a bodiless request has none to ask about).
            if exchange.has_body and (refused := exchange.body_refused()) is not None:
                return await self._fail(exchange, log, BadRequestBody(refused))
            if service_options.client_ip_header:
                log.use_client_ip_header(request.headers, service_options.client_ip_header)
            secure = exchange.scheme == "https"
            # Plain HTTP to a service without TLS or a canonical host skips the call (fast path).
            if service.tls.enabled or secure or service_options.canonical_host:
                answer = check_scheme(
                    service.tls,
                    secure=secure,
                    host_header=header_value(request.headers, b"host"),
                    target=raw_target,
                    canonical_host=service_options.canonical_host,
                )
                if isinstance(answer, bytes):
                    return await self._redirect(exchange, log, answer)
                if answer is not None:  # STATUS_NOT_OVER_TLS
                    return await self._fail(exchange, log, NotServedOverTls())
            if (
                service_options.scope_cookie_paths
                and service_options.strip_path_prefix
                and route.path_prefix != "/"
            ):  # kamal-proxy scopes only what it strips (router.go sets MatchedPrefix only then)
                host_header = header_value(request.headers, b"host")
                log.cookie_scope = CookieScope(route.path_prefix, text(host_header))
            target_options = service.options.target
            if target_options.log_request_headers:  # asked here: a call costs more
                log.add_request_headers(request.headers, target_options.log_request_headers)
            log.response_header_names = target_options.log_response_headers
            upstream_target = raw_target
            if service_options.strip_path_prefix:
                upstream_target = strip_path_prefix(raw_target, route.path_prefix)
            try:
                running = service.running
                if not running and service.is_health_check(
                    request.method, upstream_target.partition(b"?")[0].decode("latin-1")
                ):
                    # Paused or stopped: keep load balancers in front of us from dropping the host.
                    log.status = await self._send_simple(exchange, 200, b"OK\n", log=log)
                    return True
                if not running or service.removed:  # else admit() has nothing to wait for
                    await service.admit()
                if target_options.buffer_requests and has_request_body(request.headers):
                    return await self._proxy_buffered(exchange, upstream_target, service, log)
                target = service.choose_target(exchange.request)
            except UpstreamError as exc:
                return await self._fail(exchange, log, exc)
            log.target = target.name
            return await self._proxy(exchange, upstream_target, service, target, log)
        finally:  # the access log line (and metrics), however the request ended
            exchange.finished_at = now = exchange.now()
            members = log.members(now)
            if members is None or not self.logger.access_members(members):
                self.logger.access(log.line(now))
            if self.metrics is not None:
                self.metrics.leave(
                    log.metered, log.service, log.method, log.status, now - log.started
                )

    async def _redirect(self, exchange: Exchange, log: RequestLog, location: bytes) -> bool:
        headers, body = relay_rules.redirect_answer(exchange.request.method, location)
        sent = await exchange.send_whole(301, headers, body)
        if sent is not None:
            log.status, log.headers, log.body_bytes = 301, headers, len(body)
        # Read a small unread body first, as Go's server does before closing, so the close
        # does not reset the connection under a client still sending it.
        await exchange.discard_body()
        return False  # the redirect says Connection: close

    async def _proxy_buffered(
        self, exchange: Exchange, upstream_target: bytes, service: Service, log: RequestLog
    ) -> bool:
        """--buffer-requests: the whole body first, before a target is chosen, so a slow upload
        occupies no target (nor its drain); the file, if it spilled, goes when this returns."""
        options = service.options.target
        policy = BufferPolicy(options.buffer_memory, options.max_request_body)
        with SpooledBody(policy, self.buffer_dir) as body:
            try:
                await receive_request_body(exchange, exchange.request.headers, body)
                await service.admit()  # it may have been paused or stopped meanwhile
                target = service.choose_target(exchange.request)
            except (UpstreamError, ClientGone, BadRequestBody) as exc:
                return await self._fail(exchange, log, exc)
            log.target = target.name
            return await self._proxy(exchange, upstream_target, service, target, log, body=body)

    async def _proxy(
        self,
        exchange: Exchange,
        upstream_target: bytes,
        service: Service,
        target: Target,
        log: RequestLog,
        *,
        body: SpooledBody | None = None,
    ) -> bool:
        request = exchange.request
        # The Connection tokens read once, for upgrade_type's and the header rules' use.
        upgrade = UPGRADE in request.connection and upgrade_type(request.headers) is not None
        headers = build_upstream_request_headers(
            request.headers,
            client_ip=log.peer_ip,
            scheme=exchange.scheme,
            forward_headers=target.options.forward_headers,
            target=target.name,
            now=time.time(),
            new_request_id=log.request_id,
            upgrade=upgrade,
            forwarded_for=log.forwarded_for,
            connection=request.connection,
        )
        upstream_request = relay_rules.upstream_request(
            request.method,
            upstream_target,
            headers.headers,
            target_name=target.name,
            framing=exchange.body_framing() if body is None else None,
            upgrade=upgrade,
            buffered_size=body.size if body is not None else None,
        )
        scope = exchange.scope
        try:
            target.begin(scope)  # in flight: not a ``with target.track()``, which costs more
            try:
                await forward(
                    exchange,
                    upstream_request,
                    target,
                    log,
                    body=body,
                    buffer_dir=self.buffer_dir,
                    cookie_scope=log.cookie_scope,
                    writer_affinity=(
                        service.writer_affinity(request) if service.has_readers else None
                    ),
                )
            except (trio.Cancelled, BaseExceptionGroup) as stopped:
                # The exchange alone (not the connection, nor the server) was cancelled: the
                # request is cut off, and answered here, shielded for a bounded time. Anything
                # else cancelled goes on up. (A nursery in the relay reports its tasks'
                # Cancelled as a group.)
                if not _only_cancelled(stopped) or not exchange.cut_off or log.upgraded:
                    raise
                if self.metrics is not None:
                    self.metrics.cut_off.labels(service.name).inc()
                raise log.interruption or UpstreamTimeout(
                    f"request to draining target {target.name} cut off"
                ) from None
            finally:
                target.end(scope)
        except (UpstreamError, ClientGone, BadRequestBody, ResponseAborted) as exc:
            if not isinstance(exc, ClientGone):  # a client leaving is the access log's news
                self.logger.info(
                    "Proxy error",
                    service=service.name,
                    target=target.name,
                    status=_status_for(exc, log),
                    error=str(exc),
                )
            if not exchange.scope.cancel_called:
                return await self._fail(exchange, log, exc)
            # Cut off: answered outside the cancelled exchange's reach, for a bounded time.
            with trio.move_on_after(CUT_OFF_ANSWER_TIMEOUT, shield=True):
                return await self._fail(exchange, log, exc)
            log.status = STATUS_CLIENT_CLOSED  # the answer could not be delivered in time
            return False
        return not log.upgraded  # the status, headers and bytes logged are the relay's

    async def _fail(self, exchange: Exchange, log: RequestLog, exc: Exception) -> bool:
        """Answer (or, past the response head, just log) a failure; returns keep-open. What
        the relay recorded in ``log`` of the response so far decides the status."""
        log.status = _status_for(exc, log)
        if log.head_sent or isinstance(exc, ClientGone):
            return False  # a truncated response must end with a cut connection
        page = error_page(log.status, getattr(exc, "message", ""), log.pages)
        if not await self._send_simple(exchange, log.status, page, CONTENT_TYPE, log=log):
            log.status = STATUS_CLIENT_CLOSED  # the error page could not be delivered
            return False
        return True

    async def _send_simple(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain",
        *,
        log: RequestLog,
    ) -> int:
        """Send a complete small response if the client can still take one; returns the status
        sent, or 0 when nothing could be sent."""
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        sent = await exchange.send_whole(status, headers, body, close=self.closing)
        if sent is None:
            return 0
        log.headers, log.body_bytes = headers, sent
        return status


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _status_for(exc: Exception, record: ResponseRecord) -> int:
    return relay_rules.status_for(exc, head_sent=record.head_sent, sent_status=record.status)
