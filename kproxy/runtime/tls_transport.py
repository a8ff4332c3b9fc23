"""TLS on a client connection: the handshake, then a :class:`Transport` of plaintext.

The accepted socket's first bytes are read here, not peeked at: the ClientHello's server name
(``core/client_hello``) chooses the certificate, awaited from the ``CertificateStore`` (which
may take time: ACME), and only then does the handshake begin, fed the bytes already read. A
name no TLS service serves gets a fatal ``unrecognized_name`` alert and nothing else.

The TLS itself is an ``ssl.SSLObject`` between two ``MemoryBIO``s over the socket, driven with
``socket_io``'s calls, on the event loop's thread. Not ``trio.SSLStream``: that needs the
socket wrapped in a ``trio.SocketStream`` (the layers ``socket_io`` exists to avoid), and
would have to peek at the ClientHello, and a peek that finds a partial hello cannot wait for
more (the socket stays readable) without reading it. Measured: keep-alive GETs of a 3-byte
answer through one kproxy process (wrk, 16 connections, loopback, a busy 2-core machine),
CPU time of the proxy per request: plain HTTP ~180 µs, HTTPS with this transport ~205 µs,
HTTPS with trio.SSLStream in its place ~235-255 µs (TLS costs a third as much here).

A handshake has its own deadline (``HANDSHAKE_TIMEOUT``), so a client that stalls mid-
handshake cannot hold a connection slot for longer; the wait for the certificate is not
counted against it (that time is ours, not the client's) but has its own bound,
``CERTIFICATE_TIMEOUT``, long enough for an ACME order. TLS 1.2 and 1.3 only.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio
from trio.lowlevel import checkpoint_if_cancelled

from kproxy.core.client_hello import (
    NEED_DATA,
    UNRECOGNIZED_NAME_ALERT,
    ClientHello,
    NotClientHello,
    parse_client_hello,
)
from kproxy.runtime import socket_io
from kproxy.runtime.log import Logger
from kproxy.runtime.socket_io import READ_SIZE, STREAM_ERRORS
from kproxy.runtime.transport import SocketTransport

HANDSHAKE_TIMEOUT: Final = 10.0  # seconds from the accept to an established TLS session
# Seconds a handshake may wait for its certificate, beside HANDSHAKE_TIMEOUT: an ACME order
# (validation included) takes a few seconds at Let's Encrypt, and the client is only waiting
# for our ServerHello meanwhile, not holding us up. An order that takes longer goes on in
# the background (the manager's), and the client's next handshake gets its certificate.
CERTIFICATE_TIMEOUT: Final = 60.0
RECORD_SIZE: Final = 16 * 1024  # bytes of plaintext per TLS record (RFC 8446 §5.1)

ChooseContext = Callable[[str | None], Awaitable[ssl.SSLContext | None]]


@attrs.define(eq=False)
class TlsTransport:
    """A TLS session over a connected socket as a :class:`Transport`; it owns ``raw``."""

    raw: SocketTransport
    session: ssl.SSLObject
    incoming: ssl.MemoryBIO  # bytes read from the socket, not yet decrypted
    outgoing: ssl.MemoryBIO  # bytes encrypted, not yet sent
    # What ``peer_gone`` decrypted to look past a close_notify: the next ``receive``'s.
    _plain: bytes = b""
    _ended: bool = False  # the client's close_notify, or its EOF, is behind _plain

    async def handshake(self) -> None:
        """Complete the handshake (the caller bounds it in time).

        Raises:
          OSError: ``ssl.SSLError`` for a failed handshake, or the connection broke.
        """
        while True:
            try:
                self.session.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await socket_io.receive(self.raw.sock)
                if not data:
                    raise ConnectionResetError("the client closed during the handshake") from None
                self.incoming.write(data)
                continue
            await self._flush()  # the last flight (and TLS 1.3's session tickets)
            return

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await self.raw.send(self.outgoing.read())

    async def receive(self) -> bytes:
        await checkpoint_if_cancelled()
        if self._plain or self._ended:
            data, self._plain = self._plain, b""
            return data
        session, incoming = self.session, self.incoming
        while True:
            try:
                data = session.read(READ_SIZE)
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:  # a key update to answer
                    await self._flush()
                chunk = await socket_io.receive(self.raw.sock)
                if not chunk:
                    return b""  # closed without close_notify: as good as EOF for HTTP/1
                incoming.write(chunk)
            except ssl.SSLZeroReturnError:
                return b""  # close_notify (Python's read may also just return b"")
        if not incoming.pending:
            return data
        # More whole records arrived with this one (a body): hand them over in one piece,
        # as a plain socket's read would, rather than one 16 KiB record per call.
        parts = [data]
        size = len(data)
        while size < READ_SIZE and incoming.pending:
            try:
                more = session.read(READ_SIZE - size)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not more:  # close_notify: the next receive says so
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    async def send(self, data: bytes) -> None:
        if data:
            self.session.write(data)
            await self.raw.send(self.outgoing.read())

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        total = sum(map(len, parts))
        if total <= RECORD_SIZE:  # one record for a head and a small body, not one each
            self.session.write(b"".join(parts))
        else:
            for part in parts:
                if part:
                    self.session.write(part)
        if self.outgoing.pending:
            await self.raw.send(self.outgoing.read())
        else:
            await checkpoint_if_cancelled()

    def peer(self) -> tuple[str, int]:
        return self.raw.peer()

    def peer_gone(self) -> bool:
        """A TLS client that leaves sends a close_notify before its FIN, so unread bytes do
        not say it stays (as for a plain socket): what has arrived is read and decrypted
        (kept for the next ``receive``), and the client is gone if nothing but the end came."""
        if self._plain:
            return False
        if not self._ended and self.raw.readable_now():
            self._take_arrived()
        return self._ended and not self._plain

    def _take_arrived(self) -> None:
        sock = self.raw.sock
        while True:
            try:
                chunk = sock.recv(READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._ended = True
                break
            self.incoming.write(chunk)
        parts = [self._plain]
        while True:
            try:
                data = self.session.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:  # a broken session
                data = b""
            if not data:  # close_notify (read says b"" once it came)
                self._ended = True
                break
            parts.append(data)
        self._plain = b"".join(parts)

    def readable_now(self) -> bool:
        return (
            bool(self._plain or self._ended or self.incoming.pending or self.session.pending())
            or self.raw.readable_now()
        )

    async def send_eof(self) -> None:
        with contextlib.suppress(ssl.SSLError):  # close_notify; reading may go on
            self.session.unwrap()
        await self._flush()
        await self.raw.send_eof()

    def close_nowait(self) -> None:
        self.raw.close_nowait()

    async def aclose(self) -> None:
        if not self.raw.closed:
            # A close_notify if the socket takes it now (as Go's Close sends one); no wait.
            with contextlib.suppress(ssl.SSLError, OSError):
                self.session.unwrap()
            with contextlib.suppress(OSError):
                if self.outgoing.pending:
                    self.raw.sock.send(self.outgoing.read())
        await self.raw.aclose()


async def open_tls(
    raw: SocketTransport, choose: ChooseContext, logger: Logger
) -> TlsTransport | None:
    """Read the ClientHello, choose its context, and complete the handshake within
    HANDSHAKE_TIMEOUT; None when that fails (logged at debug level, as kamal-proxy does:
    scanners try names and protocols all day). The caller closes ``raw`` then."""
    with trio.move_on_after(HANDSHAKE_TIMEOUT) as deadline:
        try:
            return await _handshake(raw, choose, logger, deadline)
        except STREAM_ERRORS as exc:
            _refused(logger, raw, f"{type(exc).__name__}: {exc}")
            return None
    _refused(logger, raw, f"no handshake within {HANDSHAKE_TIMEOUT:g}s")
    return None


async def _handshake(
    raw: SocketTransport, choose: ChooseContext, logger: Logger, deadline: trio.CancelScope
) -> TlsTransport | None:
    data = b""
    while True:
        chunk = await socket_io.receive(raw.sock)
        if not chunk:
            return None
        data += chunk
        try:
            hello = parse_client_hello(data)
        except NotClientHello as exc:
            _refused(logger, raw, str(exc))
            return None
        if hello is not NEED_DATA:
            break
        await trio.lowlevel.checkpoint()  # a loop that only reads checkpoints itself
    assert isinstance(hello, ClientHello)
    left = deadline.deadline - trio.current_time()
    with trio.move_on_after(CERTIFICATE_TIMEOUT) as waited:
        deadline.deadline = trio.current_time() + CERTIFICATE_TIMEOUT + 1.0
        context = await choose(hello.server_name)
    deadline.deadline = trio.current_time() + left  # what the client had left
    if waited.cancelled_caught:
        _refused(logger, raw, f"no certificate within {CERTIFICATE_TIMEOUT:g}s", hello.server_name)
        return None
    if context is None:
        _refused(logger, raw, "no TLS service for this name", hello.server_name)
        with contextlib.suppress(*STREAM_ERRORS):
            await raw.send(UNRECOGNIZED_NAME_ALERT)
        return None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    incoming.write(data)
    session = context.wrap_bio(incoming, outgoing, server_side=True)
    tls = TlsTransport(raw, session, incoming, outgoing)
    await tls.handshake()
    return tls


def _refused(logger: Logger, raw: SocketTransport, reason: str, name: str | None = None) -> None:
    logger.debug("TLS handshake failed", client_addr=raw.peer()[0], server_name=name, error=reason)
