"""Keep-alive connections to one target, reused last-in first-out."""

from __future__ import annotations

import math
import os
from typing import Final

import attrs
import trio

from kproxy.core.options import Address
from kproxy.core.upstream_http import ResponseReader
from kproxy.runtime import socket_io
from kproxy.runtime.transport import SocketTransport

MAX_IDLE_CONNECTIONS: Final = 256  # per target: as many as a busy client side uses, so a
# burst of concurrent requests reuses connections instead of reconnecting each time
# For a request that can safely be sent again (upstream.py retries it on a connection that
# closed silently), a connection idle for less than this is taken without asking the kernel
# whether the target closed it meanwhile: targets close idle connections after seconds, not
# milliseconds, and a busy proxy would otherwise pay a select(2) per request.
STALE_CHECK_AFTER: Final = 1.0  # seconds


@attrs.define(eq=False)
class UpstreamConnection:
    """One connection to a target; ``reader`` parses the response to the current request."""

    transport: SocketTransport
    reader: ResponseReader = attrs.field(factory=ResponseReader)
    reused: bool = False
    idle_since: float = 0.0

    def start(self, *, head_request: bool) -> None:
        """A fresh reader for the next exchange."""
        self.reader = ResponseReader(head_request=head_request)

    async def receive(self) -> None:
        """One read, fed to the reader (b"" at EOF)."""
        self.reader.feed(await self.transport.receive())

    async def aclose(self) -> None:
        await self.transport.aclose()


def describe_connect_error(exc: OSError) -> str:
    """trio reports "all attempts to connect ... failed": name the first real cause instead."""
    cause: BaseException = exc
    if isinstance(exc.__cause__, BaseExceptionGroup) and exc.__cause__.exceptions:
        cause = exc.__cause__.exceptions[0]
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()  # trio's own text repeats the address
    return str(cause)


def _is_stale(connection: UpstreamConnection) -> bool:
    """An idle HTTP connection must be silent: readable means EOF, a reset, or stray bytes."""
    fd = connection.transport.sock.fileno()
    try:
        return fd < 0 or socket_io.readable_now(fd)
    except OSError:
        return True


@attrs.define(eq=False)
class ConnectionPool:
    address: Address
    max_idle: int = MAX_IDLE_CONNECTIONS
    _idle: list[UpstreamConnection] = attrs.field(factory=list)
    _closed: bool = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def acquire(self, *, replayable: bool = False) -> UpstreamConnection:
        """A pooled connection that still looks alive, else a new one (OSError if refused).
        ``replayable``: the request may be retried if the connection proves stale."""
        recent = trio.current_time() - STALE_CHECK_AFTER if replayable else math.inf
        while self._idle:
            connection = self._idle.pop()
            if connection.idle_since > recent or not _is_stale(connection):
                connection.reused = True
                return connection
            await connection.aclose()
        return await self.connect()

    async def connect(self) -> UpstreamConnection:
        stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        return UpstreamConnection(SocketTransport.of_stream(stream))

    async def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool (the caller knows the last exchange ended cleanly), or closed when
        the pool is full or closing."""
        if not self._closed and len(self._idle) < self.max_idle:
            connection.idle_since = trio.current_time()
            self._idle.append(connection)
        else:
            await connection.aclose()

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def close_nowait(self) -> None:
        """Close every idle connection; usable where awaiting is not (shutdown cleanup)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.transport.close_nowait()
