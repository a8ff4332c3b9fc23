"""The transport seam: the bytes of one connection, whatever carries them.

Everything above this module (the HTTP/1 exchange, the relay, a WebSocket splice) reads and
writes a connection through :class:`Transport` only, so a TLS connection (the TLS issue) or
another socket family slots in beside :class:`SocketTransport` without touching the data path.
The accept path hands over a connected socket; whoever serves it may read its first bytes
(a TLS ClientHello's server name: ``tls_transport``) before choosing how to serve it.

:class:`SocketTransport` keeps the fast path of ``socket_io``: the stdlib socket it owns, with
trio's checkpoints and waits around each call and no stream wrapper in between.

A client connection has a send timeout (``SEND_TIMEOUT``, nginx's ``send_timeout``): a client
that takes no byte of what is sent to it for that long (a response, a tunnel's bytes) is
gone, as if it had reset the connection. "Takes no byte" is measured by the bytes its TCP
acknowledged, counted across writes (``socket_io._wait_sendable``), so a slow but steady
reader is never cut, however long one wait for a writable socket lasts, and a stalled one is
cut 60 s (to 62 s) after the last byte it took, however often the kernel's growing buffer
makes its socket writable meanwhile.
"""

from __future__ import annotations

import math
import socket
from typing import Final, Protocol

import attrs
import trio

from kproxy.runtime import socket_io

# Seconds a client may take no byte of what is sent to it before its connection is closed
# (nginx's send_timeout): a reader at 1 byte/s of a large response would hold its connection
# and a target connection for days.
SEND_TIMEOUT: Final = 60.0


class Transport(Protocol):
    """A connected byte stream. Reads and writes raise ``socket_io.STREAM_ERRORS`` when the
    connection breaks; one task reads and one task writes at a time."""

    async def receive(self) -> bytes:
        """Up to ``socket_io.READ_SIZE`` bytes; b"" once the peer has closed its side. Yields
        to the scheduler only to wait: a loop that only reads checkpoints itself."""
        ...

    async def send(self, data: bytes) -> None:
        """All of ``data``. Raises socket_io.SendTimeout (an OSError) on a client connection
        whose peer takes none of it for SEND_TIMEOUT."""
        ...

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """All of ``parts`` in order (at most ``socket_io.MAX_PARTS``), without joining them."""
        ...

    def peer(self) -> tuple[str, int]:
        """The peer's IP address and port ("", 0 when it has none: a Unix socket)."""
        ...

    def peer_gone(self) -> bool:
        """Whether the peer closed or reset the connection, looked at without reading (unread
        bytes, a pipelined request, say no)."""
        ...

    def readable_now(self) -> bool:
        """Whether a ``receive`` would not wait: bytes, EOF or an error are pending, looked at
        without reading (the pool's test of an idle connection: it must be silent)."""
        ...

    async def send_eof(self) -> None:
        """Close our sending side; the peer reads EOF and may still send."""
        ...

    def close_nowait(self) -> None:
        """Close at once, unsent bytes dropped, where awaiting is not possible; safe to call
        twice."""
        ...

    async def aclose(self) -> None:
        """``close_nowait`` and a checkpoint; safe to call twice."""
        ...


@attrs.define(eq=False)
class SocketTransport:
    """A plain TCP (or Unix) socket as a :class:`Transport`; it owns and closes ``sock``."""

    sock: socket.socket
    closed: bool = False
    send_timeout: float = math.inf  # see SEND_TIMEOUT: a client's; a target's has none
    _progress: socket_io.SendProgress = attrs.field(factory=socket_io.SendProgress)

    @classmethod
    def of_accepted(cls, sock: socket.socket) -> SocketTransport:
        """A connection just accepted: non-blocking, and on TCP with Nagle's delay off (as
        trio's SocketStream sets it), since a response head often goes out alone."""
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, send_timeout=SEND_TIMEOUT)

    @classmethod
    def of_stream(cls, stream: trio.SocketStream) -> SocketTransport:
        """Take over the socket of a connected trio stream (``trio.open_tcp_stream``'s, which
        resolved and connected it); the stream is of no further use."""
        return cls(socket.socket(fileno=stream.socket.detach()))

    def peer(self) -> tuple[str, int]:
        """The peer's IP address and port ("", 0 when it has none: a Unix socket)."""
        if self.sock.family not in (socket.AF_INET, socket.AF_INET6):
            return "", 0
        try:
            address = self.sock.getpeername()
        except OSError:
            return "", 0
        return str(address[0]), int(address[1])

    async def receive(self) -> bytes:
        return await socket_io.receive(self.sock)

    async def send(self, data: bytes) -> None:
        if data:
            await socket_io.send_all(self.sock, data, self.send_timeout, self._progress)

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        await socket_io.send_parts(self.sock, parts, self.send_timeout, self._progress)

    def peer_gone(self) -> bool:
        return socket_io.hung_up(self.sock.fileno())

    def readable_now(self) -> bool:
        fd = self.sock.fileno()
        try:
            return fd < 0 or socket_io.readable_now(fd)  # closed counts: not worth reusing
        except OSError:
            return True

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.sock.shutdown(socket.SHUT_WR)

    def close_nowait(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)  # wakes a task waiting on it, as trio does
            self.sock.close()

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.cancel_shielded_checkpoint()  # closed either way, as aclose_forcefully
