"""Keep-alive connections to one target, reused last-in first-out."""

from __future__ import annotations

import os
import select
from typing import Final

import attrs
import h11
import trio

from kproxy.core.options import Address
from kproxy.runtime.h11_stream import H11Stream

MAX_IDLE_CONNECTIONS: Final = 256  # per target: as many as a busy client side uses, so a
# burst of concurrent requests reuses connections instead of reconnecting each time


@attrs.define(eq=False)
class UpstreamConnection(H11Stream):
    reused: bool = False


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
    try:
        readable, _, _ = select.select([connection.stream.socket.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


@attrs.define(eq=False)
class ConnectionPool:
    address: Address
    max_idle: int = MAX_IDLE_CONNECTIONS
    _idle: list[UpstreamConnection] = attrs.field(factory=list)
    _closed: bool = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def acquire(self) -> UpstreamConnection:
        """A pooled connection that still looks alive, else a new one (OSError if refused)."""
        while self._idle:
            connection = self._idle.pop()
            if not _is_stale(connection):
                connection.reused = True
                return connection
            await connection.aclose()
        return await self.connect()

    async def connect(self) -> UpstreamConnection:
        stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        return UpstreamConnection(stream, h11.Connection(h11.CLIENT))

    async def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool if the last exchange ended cleanly on both sides, else closed."""
        conn = connection.conn
        if (
            not self._closed
            and len(self._idle) < self.max_idle
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
        ):
            conn.start_next_cycle()
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
            connection.stream.socket.close()
