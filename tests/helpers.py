"""Real parts for tests: an upstream HTTP server, a proxy on loopback, clients for both sockets.

Everything listens on 127.0.0.1 port 0; nothing is mocked.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import h11
import trio

from kproxy import Proxy, RunOptions
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.log import Logger

Headers = list[tuple[bytes, bytes]]


@attrs.define
class Received:
    """A request as the upstream saw it."""

    method: bytes
    target: bytes
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@attrs.define
class Reply:
    status: int
    headers: Headers
    body: bytes
    http_version: bytes = b"1.1"

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


Handler = Callable[["Upstream", Received, H11Stream], Awaitable[None]]


async def send_reply(
    client: H11Stream, status: int, body: bytes = b"", headers: Headers | None = None
) -> None:
    all_headers = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await client.send(h11.Response(status_code=status, headers=all_headers))
    if body:
        await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())


@attrs.define(eq=False)
class Upstream:
    """A real HTTP/1.1 server on 127.0.0.1 that records what reaches it.

    Built-in routes: ``/up`` (200 while ``healthy``, else 503), ``/echo`` (JSON of the request),
    ``/slow?<seconds>`` (waits, then answers), anything else: 200 with ``name`` as the body.
    ``handlers`` maps a path to a custom coroutine for special behaviour.
    """

    name: str = "upstream"
    healthy: bool = True
    health_status: int = 200
    handlers: dict[bytes, Handler] = attrs.field(factory=dict)
    received: list[Received] = attrs.field(factory=list)
    connections: int = 0
    port: int = 0
    active: int = 0  # requests being handled right now

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[Upstream] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        client = H11Stream(stream, h11.Connection(h11.SERVER))
        try:
            while True:
                event = await client.next_event()
                if not isinstance(event, h11.Request):
                    return
                body = b""
                while True:
                    part = await client.next_event()
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                request = Received(event.method, event.target, list(event.headers), body)
                self.received.append(request)
                self.active += 1
                try:
                    await self._answer(request, client)
                finally:
                    self.active -= 1
                if client.conn.our_state is not h11.DONE or client.conn.their_state is not h11.DONE:
                    return
                client.conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, OSError):
            return
        finally:
            await client.aclose()

    async def _answer(self, request: Received, client: H11Stream) -> None:
        path, _, query = request.target.partition(b"?")
        handler = self.handlers.get(path)
        if handler is not None:
            await handler(self, request, client)
        elif path == b"/up":
            status = self.health_status if self.healthy else 503
            await send_reply(client, status, b"up" if self.healthy else b"down")
        elif path == b"/echo":
            data = {
                "method": request.method.decode(),
                "target": request.target.decode(),
                "headers": [[k.decode(), v.decode()] for k, v in request.headers],
                "body": request.body.decode("latin-1"),
                "upstream": self.name,
            }
            await send_reply(client, 200, json.dumps(data).encode(), [(b"content-type", b"application/json")])
        elif path == b"/slow":
            await trio.sleep(float(query or b"1"))
            await send_reply(client, 200, self.name.encode())
        else:
            await send_reply(client, 200, self.name.encode(), [(b"content-type", b"text/plain")])


async def start_upstream(nursery: trio.Nursery, name: str = "upstream", **kwargs: Any) -> Upstream:
    upstream: Upstream = await nursery.start(Upstream(name, **kwargs).serve)
    return upstream


class LogCapture:
    """A text sink for the proxy's JSON log lines, parsed on demand."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line)
        return len(text)

    def flush(self) -> None:
        pass

    def records(self, msg: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines]
        return [r for r in parsed if msg is None or r["msg"] == msg]


async def start_proxy(
    nursery: trio.Nursery, tmp_path: Path, *, state: bool = True, socket_name: str = "kproxy.sock"
) -> tuple[Proxy, LogCapture]:
    """A proxy on a free loopback port with its control socket and state dir under tmp_path."""
    logs = LogCapture()
    options = RunOptions(
        socket_path=str(tmp_path / socket_name),
        state_dir=str(tmp_path / "state") if state else "",
        bind="127.0.0.1",
        http_port=0,
    )
    proxy: Proxy = await nursery.start(Proxy(options, Logger(out=logs)).serve)  # type: ignore[arg-type]
    return proxy, logs


async def request(
    port: int,
    target: str = "/",
    *,
    method: str = "GET",
    host: str = "example.com",
    headers: Headers | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> Reply:
    """One request on a fresh connection, via h11, with a deadline."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = H11Stream(stream, h11.Connection(h11.CLIENT))
        try:
            all_headers: Headers = [(b"host", host.encode()), *(headers or [])]
            if body is not None and not any(k.lower() == b"content-length" for k, _ in all_headers):
                all_headers.append((b"content-length", str(len(body)).encode()))
            await client.send(h11.Request(method=method, target=target, headers=all_headers))
            if body:
                await client.send(h11.Data(data=body))
            await client.send(h11.EndOfMessage())
            return await read_reply(client)
        finally:
            await client.aclose()


async def read_reply(client: H11Stream) -> Reply:
    event = await client.next_event()
    while isinstance(event, h11.InformationalResponse):
        event = await client.next_event()
    assert isinstance(event, h11.Response), event
    data = b""
    while True:
        part = await client.next_event()
        if isinstance(part, h11.Data):
            data += part.data
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"unexpected {part!r}")
    return Reply(event.status_code, list(event.headers), data, event.http_version)


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the proxy closes (or the timeout passes); returns what came."""
    received = b""
    with trio.move_on_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def control(socket_path: str | Path, *lines: str, timeout: float = 30) -> list[str]:
    """Send command lines on the control socket, half-close, return every answer line."""
    with trio.fail_after(timeout):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(socket_path))
        stream = trio.SocketStream(sock)
        async with stream:
            await stream.send_all("".join(line + "\n" for line in lines).encode())
            await stream.send_eof()
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data.decode().splitlines()
