"""Real parts for tests: an upstream HTTP server, a proxy on loopback, clients for both sockets.

Everything listens on 127.0.0.1 port 0; nothing is mocked.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final, ParamSpec

import attrs
import h11
import trio

from kproxy import DeploymentOptions, Proxy, RunOptions, TargetOptions
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.log import Logger

Headers = list[tuple[bytes, bytes]]
P = ParamSpec("P")


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

    async def serve(
        self, *, task_status: trio.TaskStatus[Upstream] = trio.TASK_STATUS_IGNORED
    ) -> None:
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
            await send_reply(
                client, 200, json.dumps(data).encode(), [(b"content-type", b"application/json")]
            )
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
        https_port=0,  # tests run side by side: never 443
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


@attrs.define(eq=False)
class ControlClient:
    """One open control connection: send lines, read one answer at a time (up to OK/ERR)."""

    stream: trio.SocketStream
    buffer: bytes = b""

    async def send(self, *lines: str | bytes) -> None:
        data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
        await self.stream.send_all(data)

    async def read_line(self) -> str:
        """The next answer line without its newline; ``""`` once the server has closed."""
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest.decode()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    async def read_answer(self) -> list[str]:
        """Lines up to and including the final ``OK``/``ERR`` line."""
        lines: list[str] = []
        while True:
            line = await self.read_line()
            if not line:
                raise AssertionError(f"connection closed mid-answer after {lines!r}")
            lines.append(line)
            if not line.startswith("  "):
                return lines

    async def command(self, line: str | bytes) -> list[str]:
        await self.send(line)
        return await self.read_answer()


async def open_control(socket_path: str | Path) -> ControlClient:
    """A raw connection to the control socket; close it with ``await client.stream.aclose()``."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(socket_path))
    except BaseException:
        sock.close()
        raise
    return ControlClient(trio.SocketStream(sock))


def quick_options(*upstreams: Upstream | str, **kwargs: Any) -> DeploymentOptions:
    """DeploymentOptions for tests: fast health checks (100 ms), short deadlines.

    ``kwargs`` go to DeploymentOptions; ``target=`` fields may be given flat as
    ``target_<field>=`` (e.g. ``target_health_check_path="/ok"``).
    """
    target_fields = {k[7:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("target_")}
    target_fields.setdefault("health_check_interval", 0.1)
    target_fields.setdefault("health_check_timeout", 1.0)
    kwargs.setdefault("deploy_timeout", 5.0)
    kwargs.setdefault("drain_timeout", 5.0)
    addresses = tuple(u.address if isinstance(u, Upstream) else u for u in upstreams)
    return DeploymentOptions(targets=addresses, target=TargetOptions(**target_fields), **kwargs)


def hits(upstream: Upstream, path: bytes = b"/up") -> int:
    """How many requests for ``path`` (query ignored) reached ``upstream``."""
    return sum(1 for r in upstream.received if r.target.partition(b"?")[0] == path)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 5, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110  # the things we watch have no event
            await trio.sleep(interval)


def guard(
    seconds: float,
) -> Callable[[Callable[P, Awaitable[None]]], Callable[P, Coroutine[Any, Any, None]]]:
    """Decorate an async test so it fails (TooSlowError) after ``seconds`` instead of hanging."""

    def decorate(test: Callable[P, Awaitable[None]]) -> Callable[P, Coroutine[Any, Any, None]]:
        @functools.wraps(test)  # keeps the signature, so pytest still injects the fixtures
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return guarded

    return decorate


# --- raw targets and clients (for misbehaving targets, streaming by hand, pipelining) --------

RawHandler = Callable[[trio.SocketStream], Awaitable[None]]
ClientErrors = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError)


@attrs.define(eq=False)
class RawServer:
    """A TCP server on 127.0.0.1 that hands each accepted stream to ``handler`` as is.

    For targets that misbehave on purpose (garbage, resets, half-sent bodies) or that stream by
    hand. A handler's I/O errors end its connection quietly; the stream is closed afterwards.
    """

    handler: RawHandler
    port: int = 0
    connections: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[RawServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self.handler(stream)
        except ClientErrors:
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def start_raw_server(nursery: trio.Nursery, handler: RawHandler) -> RawServer:
    server: RawServer = await nursery.start(RawServer(handler).serve)
    return server


UP_ANSWER: Final = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nup"


async def start_raw_target(
    nursery: trio.Nursery, answer: Callable[[trio.SocketStream, bytes], Awaitable[None]]
) -> RawServer:
    """A raw server that answers kproxy's health checks (``GET /up``) itself and hands every
    other request, its head read whole, to ``answer(stream, head)``."""

    async def serve(stream: trio.SocketStream) -> None:
        head = await receive_until(stream, b"\r\n\r\n")
        if head.startswith(b"GET /up "):
            await stream.send_all(UP_ANSWER)
        else:
            await answer(stream, head)

    return await start_raw_server(nursery, serve)


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def reset_on_close(stream: trio.SocketStream) -> None:
    """Make closing ``stream`` send a TCP RST instead of a FIN (SO_LINGER with timeout 0)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def receive_until(stream: trio.SocketStream, marker: bytes, *, limit: int = 1 << 20) -> bytes:
    """Read until ``marker`` has arrived (or EOF); returns everything read, maybe more."""
    data = b""
    while marker not in data and len(data) < limit:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def receive_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def parse_responses(data: bytes, methods: list[str]) -> list[Reply]:
    """Split raw bytes into the responses to ``methods`` (in order), via an h11 client."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    replies: list[Reply] = []
    for method in methods:
        conn.send(h11.Request(method=method, target="/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = conn.next_event()
        assert isinstance(event, h11.Response), event
        body = b""
        while not isinstance(part := conn.next_event(), h11.EndOfMessage):
            assert isinstance(part, h11.Data), part
            body += part.data
        replies.append(Reply(event.status_code, list(event.headers), body, event.http_version))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
    return replies


async def open_client(port: int) -> H11Stream:
    """An h11 client connection to the proxy, for several requests on one connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return H11Stream(stream, h11.Connection(h11.CLIENT))


async def exchange(
    client: H11Stream,
    target: str = "/",
    *,
    method: str = "GET",
    host: str = "example.com",
    headers: Headers | None = None,
    body: bytes = b"",
) -> Reply:
    """One request/response on an open client connection, leaving it ready for the next."""
    all_headers: Headers = [(b"host", host.encode()), *(headers or [])]
    if body:
        all_headers.append((b"content-length", str(len(body)).encode()))
    await client.send(h11.Request(method=method, target=target, headers=all_headers))
    if body:
        await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())
    reply = await read_reply(client)
    if client.conn.our_state is h11.DONE and client.conn.their_state is h11.DONE:
        client.conn.start_next_cycle()
    return reply


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without kproxy's and kamal-proxy's settings, plus ``extra``."""
    ours = ("KPROXY_", "KAMAL_PROXY_", "HTTP_PORT", "HTTPS_PORT", "BIND", "DEBUG", "STATE_DIR",
            "WORKERS", "MAX_CONNECTIONS")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {**env, **extra}


@attrs.define(eq=False)
class ProxyProcess:
    """``python -m kproxy run`` as a real subprocess; its stdout is parsed as it arrives."""

    process: trio.Process
    socket_path: Path
    http_port: int = 0
    https_port: int = 0
    logs: list[dict[str, Any]] = attrs.field(factory=list)
    started: trio.Event = attrs.field(factory=trio.Event)
    exited: trio.Event = attrs.field(factory=trio.Event)

    def records(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.logs if r.get("msg") == msg]

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async with self.process.stdout:
            while chunk := await self.process.stdout.receive_some(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    record = json.loads(line)
                    self.logs.append(record)
                    if record.get("msg") == "Server started":
                        self.http_port = record["http_port"]
                        self.https_port = record["https_port"]
                        self.started.set()
        self.exited.set()


async def start_proxy_process(
    nursery: trio.Nursery,
    tmp_path: Path,
    *args: str,
    http_port: int | None = 0,
    socket_path: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 10,
) -> ProxyProcess:
    """Run the proxy in a subprocess on 127.0.0.1 with its socket and state under tmp_path.

    ``http_port=None`` passes no ``--http-port`` (the environment decides); a ``socket_path``
    is where the environment puts the socket (no ``--socket`` flag then). The process is
    terminated when ``nursery`` is cancelled; stderr goes to the test's stderr.
    """
    argv = [sys.executable, "-m", "kproxy", "run", "--bind", "127.0.0.1"]
    argv += ["--state-dir", str(tmp_path / "state")]
    if socket_path is None:
        socket_path = tmp_path / "kproxy.sock"
        argv += ["--socket", str(socket_path)]
    if http_port is not None:
        argv += ["--http-port", str(http_port)]
    if not any(arg.startswith("--https-port") for arg in args):
        argv += ["--https-port", "0"]  # tests run side by side: never 443
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            [*argv, *args],
            stdout=subprocess.PIPE,
            check=False,
            env=clean_env() if env is None else env,
        )
    )
    proxy = ProxyProcess(process, socket_path)
    nursery.start_soon(proxy._read_stdout)
    with trio.fail_after(timeout):
        async with trio.open_nursery() as waiting:
            for event in (proxy.started, proxy.exited):
                waiting.start_soon(_set_when, event, waiting)
    if not proxy.started.is_set():
        raise AssertionError(f"kproxy run exited early: {proxy.logs}")
    return proxy


async def _set_when(event: trio.Event, nursery: trio.Nursery) -> None:
    await event.wait()
    nursery.cancel_scope.cancel()


TargetHandler = Callable[[H11Stream, h11.Request], Awaitable[None]]


def h11_target(
    handle: TargetHandler, heads: list[h11.Request] | None = None
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A target: ``/up`` answers 200; other requests are appended to ``heads`` the moment their
    head arrives (before the body is read), then go to ``handle``."""

    async def serve(stream: trio.SocketStream) -> None:
        conn = H11Stream(stream, h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20))
        while isinstance(event := await conn.next_event(), h11.Request):
            if event.target == b"/up":
                await read_body(conn)
                await send_reply(conn, 200, b"up")
            else:
                if heads is not None:
                    heads.append(event)
                await handle(conn, event)
            if conn.conn.our_state is not h11.DONE or conn.conn.their_state is not h11.DONE:
                return
            conn.conn.start_next_cycle()

    return serve


async def read_body(conn: H11Stream) -> bytes:
    body = b""
    while not isinstance(event := await conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    return body
