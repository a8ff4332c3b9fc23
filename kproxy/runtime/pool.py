"""Keep-alive connections to one target, reused last-in first-out.

A pool opens its connections with a :data:`Connector`: :func:`open_tcp` (the network)
unless one is given (tests pass an in-memory one, so the data path runs on trio's MockClock).

How long a connection idled is measured on ``time.monotonic()``, not trio's clock: only the
pool compares these readings, and a reading of trio's clock costs ten times as much (two per
request). Under a MockClock, then, connections stay fresh however far virtual time jumps.
"""

from __future__ import annotations

import bisect
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from kproxy.core import tcp_info
from kproxy.core.addresses import Address
from kproxy.core.upstream_http import ResponseReader
from kproxy.runtime.socket_io import receive_nowait, receive_when_ready
from kproxy.runtime.transport import SocketTransport, Transport

MAX_IDLE_CONNECTIONS: Final = 256  # per target: as many as a busy client side uses, so a
# burst of concurrent requests reuses connections instead of reconnecting each time
# For a request that can safely be sent again (upstream.py retries it on a connection that
# closed silently), a connection idle for less than this is taken without asking the kernel
# whether the target closed it meanwhile: targets close idle connections after seconds, not
# milliseconds, and a busy proxy would otherwise pay a select(2) per request.
STALE_CHECK_AFTER: Final = 1.0  # seconds
# A connection idle this long is closed rather than reused: Go's DefaultTransport
# IdleConnTimeout, which kamal-proxy's targets see. A target's own keep-alive timeout is then
# rarely longer than what the pool hands out, so few reuses race the target's close.
IDLE_TIMEOUT: Final = 90.0  # seconds
RESET_WAIT: Final = 0.5  # seconds at most to wait for a target's reset after its FIN

# Opens a connection to a target; raises OSError when it cannot (refused, unreachable).
Connector = Callable[[Address], Awaitable[Transport]]


async def open_tcp(address: Address) -> Transport:
    """A TCP connection to ``address`` (its name resolved, each address tried as trio does)."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    return SocketTransport.of_stream(stream)


@attrs.define(eq=False)
class UpstreamConnection:
    """One connection to a target; ``reader`` parses the response to the current request."""

    transport: Transport
    reader: ResponseReader = attrs.field(factory=ResponseReader)
    reused: bool = False
    idle_since: float = 0.0  # time.monotonic() when it went back to the pool
    # A plain socket's, read without waiting by ``receive_nowait``; None for other transports.
    _sock: socket.socket | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        transport = self.transport
        self._sock = transport.sock if isinstance(transport, SocketTransport) else None

    async def receive_when_ready(self) -> None:
        """One read, fed to the reader (b"" at EOF), after ``receive_nowait`` found nothing:
        the wait first."""
        if self._sock is None:
            self.reader.feed(await self.transport.receive())
        else:
            self.reader.feed(await receive_when_ready(self._sock))

    def receive_nowait(self) -> bool:
        """One read if the target's bytes are already there (usually: a send yields, and the
        target answers meanwhile), fed to the reader; whether there were bytes (or EOF). It
        arms no alarm and reads no clock, which a wait needs. No checkpoint: the caller's loop
        has one elsewhere. False on a transport other than a plain socket: the caller waits."""
        if self._sock is None:
            return False
        data = receive_nowait(self._sock)
        if data is None:
            return False
        self.reader.feed(data)
        return True

    async def aclose(self) -> None:
        await self.transport.aclose()

    def tcp_info(self) -> tcp_info.TcpInfo | None:
        """The kernel's TCP_INFO for a TCP connection (core/tcp_info.py); None for any other
        kind of transport, or where the kernel does not tell."""
        transport = self.transport
        if not isinstance(transport, SocketTransport) or transport.sock.fileno() < 0:
            return None
        try:
            data = transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, tcp_info.SIZE)
        except (OSError, AttributeError):  # AttributeError: no socket.TCP_INFO (not Linux)
            return None
        return tcp_info.parse(data)

    async def never_received(self, acked_before: int | None) -> bool:
        """No byte sent since the target had acknowledged ``acked_before`` reached it
        (core/tcp_info.py); a reset that follows the target's FIN is waited for, a few round
        trips at most. False when unknown (``acked_before`` None: not asked)."""
        if acked_before is None:
            return False
        info = self.tcp_info()
        if info is not None and tcp_info.reset_may_follow(acked_before, info):
            with trio.move_on_after(min(RESET_WAIT, 4 * info.rtt + 0.005)):
                while info is not None and tcp_info.reset_may_follow(acked_before, info):
                    await trio.sleep(0.001)  # nothing to wait on: a FIN'd socket stays readable
                    info = self.tcp_info()
        return info is not None and tcp_info.never_received(acked_before, info)


def describe_connect_error(exc: OSError) -> str:
    """trio reports "all attempts to connect ... failed": name the first real cause instead."""
    cause: BaseException = exc
    if isinstance(exc.__cause__, BaseExceptionGroup) and exc.__cause__.exceptions:
        cause = exc.__cause__.exceptions[0]
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()  # trio's own text repeats the address
    return str(cause)


@attrs.define(eq=False)
class ConnectionPool:
    address: Address
    max_idle: int = MAX_IDLE_CONNECTIONS
    connector: Connector = attrs.field(default=open_tcp, kw_only=True)
    idle_timeout: float = attrs.field(default=IDLE_TIMEOUT, kw_only=True)
    _idle: list[UpstreamConnection] = attrs.field(factory=list)  # oldest first
    _closed: bool = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def take_idle(self, *, replayable: bool = False) -> UpstreamConnection | None:
        """A pooled connection that still looks alive, or None (then ``connect``).
        ``replayable``: the request may be retried if the connection proves stale. No await:
        the usual request costs no coroutine here."""
        now = time.monotonic()
        idle = self._idle
        if idle and idle[0].idle_since < now - self.idle_timeout:  # the oldest first
            self._expire(now)
        recent = now - STALE_CHECK_AFTER if replayable else math.inf
        while idle:
            connection = idle.pop()
            # An idle HTTP connection must be silent: readable means EOF, a reset, or stray bytes.
            if connection.idle_since > recent or not connection.transport.readable_now():
                connection.reused = True
                return connection
            connection.transport.close_nowait()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (OSError if refused)."""
        return UpstreamConnection(await self.connector(self.address))

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool (the caller knows the last exchange ended cleanly), or closed when
        the pool is full or closing."""
        if not self._closed and len(self._idle) < self.max_idle:
            # Those idle too long are closed by the next take_idle, which looks at the oldest
            # before it takes the newest (this one): a look here too would find the same.
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.transport.close_nowait()

    def _expire(self, now: float) -> None:
        """Close the connections idle for longer than ``idle_timeout`` (at the bottom)."""
        idle = self._idle
        count = bisect.bisect_left(idle, now - self.idle_timeout, key=_idle_since)
        for connection in idle[:count]:
            connection.transport.close_nowait()
        del idle[:count]

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def close_nowait(self) -> None:
        """Close every idle connection; usable where awaiting is not (shutdown cleanup)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.transport.close_nowait()


def _idle_since(connection: UpstreamConnection) -> float:
    return connection.idle_since
