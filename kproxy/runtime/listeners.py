"""The ``Frontend`` of a process that serves HTTP and HTTPS itself (runtime/proxy.py): one
process (``kproxy run --workers 1``, embedding) and each worker of ``run --workers N``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry

from kproxy.core.options import RunOptions
from kproxy.runtime.acceptor import default_max_connections
from kproxy.runtime.certificates import CertificateStore
from kproxy.runtime.http_server import HttpServer
from kproxy.runtime.listen import open_reuseport_listeners
from kproxy.runtime.log import Logger
from kproxy.runtime.metrics import RequestMetrics
from kproxy.runtime.router import Router
from kproxy.runtime.socket_io import keep_heap
from kproxy.runtime.tls_transport import open_tls
from kproxy.runtime.transport import SocketTransport


@attrs.define(eq=False)
class Listeners:
    """The ``Frontend`` that serves HTTP and HTTPS in this process, on its own listening
    sockets; HTTPS connections are TLS sessions (runtime/tls_transport.py) with the
    certificates of the router's services (runtime/certificates.py)."""

    options: RunOptions
    logger: Logger
    reuseport: bool = False  # a worker's: the port is shared with the other workers
    prepare: Callable[[Router], None] | None = None  # runs before the first accept
    http_port: int = 0
    https_port: int | None = None
    http: HttpServer | None = None
    https: HttpServer | None = None
    request_metrics: RequestMetrics | None = None  # with --metrics-port, from ``open``
    _listeners: list[trio.SocketListener] = attrs.field(factory=list)
    _tls_listeners: list[trio.SocketListener] = attrs.field(factory=list)
    _accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def open(self) -> tuple[int, int | None]:
        keep_heap()  # the data path's reads come and go: see socket_io.keep_heap
        self._listeners = await self._listen(self.options.http_port)
        self.http_port = self._listeners[0].socket.getsockname()[1]
        if self.options.https_port is not None:
            try:
                self._tls_listeners = await self._listen(self.options.https_port)
            except BaseException:
                self.close()
                raise
            self.https_port = self._tls_listeners[0].socket.getsockname()[1]
        if self.options.metrics_port:
            self.request_metrics = RequestMetrics()
        return self.http_port, self.https_port

    def metrics_registry(self) -> CollectorRegistry | None:
        return self.request_metrics.registry if self.request_metrics is not None else None

    async def _listen(self, port: int) -> list[trio.SocketListener]:
        if self.reuseport:
            return await open_reuseport_listeners(self.options.bind, port)
        return await trio.open_tcp_listeners(port, host=self.options.bind or None)

    def replicas(self, router: Router) -> None:
        return None

    async def start(
        self, router: Router, nursery: trio.Nursery, connections: trio.Nursery
    ) -> dict[str, Any]:
        if self.prepare is not None:
            self.prepare(router)
        # One bound on client connections, HTTP and HTTPS together.
        slots = trio.CapacityLimiter(self.options.max_connections or default_max_connections())
        self.http = HttpServer(router, self.logger, port=self.http_port, connection_slots=slots)
        if self.https_port is not None:
            self.https = HttpServer(
                router, self.logger, port=self.https_port, scheme="https", connection_slots=slots
            )
        for server in (self.http, self.https):
            if server is not None:
                server.pipeline.metrics = self.request_metrics
                connections.start_soon(server.clock.run)  # lives as long as the connections
        nursery.start_soon(self._accept, CertificateStore(router), connections)
        return {}

    async def _accept(self, store: CertificateStore, connections: trio.Nursery) -> None:
        assert self.http is not None
        https = self.https

        async def handle_tls(transport: SocketTransport) -> None:
            assert https is not None
            tls = await open_tls(transport, store.context_for, self.logger)
            if tls is not None:
                await https.handle_connection(tls)

        with self._accepting:  # bounded: see HttpServer
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.http.serve_listeners, self._listeners, connections)
                if https is not None:
                    nursery.start_soon(
                        https.serve_listeners, self._tls_listeners, connections, handle_tls
                    )
        # shutdown() stopped us: close the ports so new clients are refused, not left queued.
        self.close()

    def begin_shutdown(self) -> dict[str, Any]:
        self._accepting.cancel()
        return {}

    async def shutdown(self, grace: float) -> None:
        async with trio.open_nursery() as nursery:
            for server in (self.http, self.https):
                if server is not None:
                    nursery.start_soon(server.shutdown, grace)

    def close(self) -> None:
        # Listeners are closed here, not by serve_listeners, which leaves them open.
        for listener in (*self._listeners, *self._tls_listeners):
            listener.socket.close()
