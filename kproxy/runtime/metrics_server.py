"""The metrics listener of ``run --metrics-port N``: ``GET /metrics`` and ``GET /up``.

``/metrics`` is the Prometheus text exposition of a registry (runtime/metrics.py), as
kamal-proxy serves it on ``--bind``:N. ``/up`` answers 200 while the proxy serves and 503 from
the moment a graceful shutdown begins, so a load balancer in front can take the host out
before its ports close. Anything else is 404. This is not the data path: one small h11
server, each connection in its own task, idle ones closed after ``IDLE_TIMEOUT``.
"""

from __future__ import annotations

from typing import Final

import attrs
import h11
import trio
from prometheus_client import CollectorRegistry, generate_latest

IDLE_TIMEOUT: Final = 30.0  # seconds a scrape connection may wait for its next request
RECEIVE_SIZE: Final = 16384  # bytes per read
# The text format's type, as Go's promhttp names what it writes for a scraper that asks for
# nothing else (prometheus_client's CONTENT_TYPE_LATEST moved to 1.0.0, which is the same text).
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"


@attrs.define(eq=False)
class MetricsServer:
    """Serves ``registry`` at /metrics, and /up (see the module doc)."""

    registry: CollectorRegistry
    shutting_down: bool = False  # /up answers 503 once set

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer scrapes until cancelled; closes the listeners as it ends."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)
        finally:
            for listener in listeners:
                listener.socket.close()

    def answer(self, method: bytes, target: bytes) -> tuple[int, bytes, bytes]:
        """Status, content type and body for one request."""
        path = target.partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            return 405, b"text/plain", b"Method Not Allowed\n"
        if path == b"/metrics":
            return 200, CONTENT_TYPE, generate_latest(self.registry)
        if path == b"/up":
            if self.shutting_down:
                return 503, b"text/plain", b"Shutting down\n"
            return 200, b"text/plain", b"OK\n"
        return 404, b"text/plain", b"Not Found\n"

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(connection, stream)
                if not isinstance(event, h11.Request):
                    return
                status, content_type, body = self.answer(event.method, event.target)
                headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
                if self.shutting_down:
                    headers.append((b"connection", b"close"))
                data = connection.send(h11.Response(status_code=status, headers=headers))
                data += connection.send(h11.Data(data=body if event.method != b"HEAD" else b""))
                data += connection.send(h11.EndOfMessage())
                await stream.send_all(data)
                while isinstance(await _next_event(connection, stream), h11.Data):
                    pass  # a body nobody asked for
                if connection.our_state is not h11.DONE or self.shutting_down:
                    return
                connection.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)


async def _next_event(connection: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.move_on_after(IDLE_TIMEOUT):
            connection.receive_data(await stream.receive_some(RECEIVE_SIZE))
            continue
        return None


async def open_metrics_listeners(bind: str, port: int) -> list[trio.SocketListener]:
    """The metrics port on ``--bind`` (every address when empty), as the HTTP port is."""
    return await trio.open_tcp_listeners(port, host=bind or None)
