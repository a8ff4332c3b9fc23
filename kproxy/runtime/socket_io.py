"""The data path's socket reads and writes, on a stdlib socket (see ``transport``).

``trio.SocketStream`` wraps each call in a conflict detector and an error-translating context
manager, and a trio socket's own ``recv``/``send`` in two more layers (a method wrapper and an
async context manager around the call): with four socket calls per proxied request, those
layers measured about 10 % of kproxy's CPU per request. kproxy keeps one reader and one
writer per socket and catches OSError wherever it catches trio's stream errors, so the data
path makes the call itself, with a checkpoint for cancellation before it and trio's wait when
the socket is not ready. A send yields to the scheduler after it, as trio's does: the peer
gets to answer meanwhile (a target's response is then often there at the first read: leaving
this yield out measured slower). A read that found data does not yield: on the data path a
send follows every read, so that yield would be a second scheduling pass per exchange.
Hence the one rule for callers: a loop that only reads checkpoints itself.
"""

from __future__ import annotations

import ctypes
import fcntl
import math
import select
import socket
import struct
import termios
from typing import Final

import attrs
import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

from kproxy.core import tcp_info

# Bytes per receive: large reads mean fewer syscalls (a 64 KiB body comes with its head in
# one: 16 % less CPU per such response, measured), while staying under glibc's 128 KiB mmap
# threshold, so each read's buffer comes from the heap, not an mmap/munmap pair.
READ_SIZE: Final = 120 * 1024
MAX_PARTS: Final = 64  # buffers per send_parts call (Linux's IOV_MAX is 1024)
# What a broken or closed connection raises, through a trio stream or straight from a socket.
STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends an RST
# Freed memory glibc may keep at the top of the heap instead of returning it (see keep_heap).
HEAP_KEPT: Final = 8 * 1024 * 1024  # bytes
_M_TRIM_THRESHOLD: Final = -1  # glibc's mallopt(3) parameter


def keep_heap() -> None:
    """Have glibc keep up to HEAP_KEPT bytes of freed memory at the top of the heap, once per
    process that serves the data path (``Listeners``).

    Each read is one bytes object (a 64 KiB response body with its head: one read), freed once
    sent. With glibc's default (memory freed at the top of the heap goes back to the kernel
    once more than 128 KiB of it is free) the heap shrank by brk(2) and grew again on 4 reads
    in 10, the kernel zeroing the pages each time: a 64 KiB response cost about a fifth more
    CPU, measured. Nothing changes where the C
    library has no mallopt (not glibc or musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT)


async def receive(sock: socket.socket) -> bytes:
    """Up to READ_SIZE bytes; b"" once the peer has closed its side. Yields to the scheduler
    only to wait (see the module's docstring)."""
    await checkpoint_if_cancelled()
    try:
        return sock.recv(READ_SIZE)
    except BlockingIOError:
        return await receive_when_ready(sock)


async def receive_when_ready(sock: socket.socket) -> bytes:
    """``receive`` for a socket that had nothing to read a moment ago (``receive_nowait``):
    it waits first, rather than ask the kernel again."""
    while True:
        await wait_readable(sock)
        try:
            return sock.recv(READ_SIZE)
        except BlockingIOError:
            pass


def receive_nowait(sock: socket.socket) -> bytes | None:
    """What ``receive`` would return if it would not wait; None if it would. No checkpoint:
    the caller's loop has one elsewhere."""
    try:
        return sock.recv(READ_SIZE)
    except BlockingIOError:
        return None


class SendTimeout(TimeoutError):
    """The peer took no byte of what we sent for the whole send timeout (an OSError, so
    it counts among STREAM_ERRORS: a peer that stopped taking bytes is as good as gone)."""


LOOKS: Final = 30  # looks at a blocked peer's progress per send timeout (every 2 s of 60 s)
_NOTHING_SEEN: Final = -(1 << 63)


@attrs.define(eq=False)
class SendProgress:
    """What a connection's peer had taken (TCP's count of acknowledged bytes) when last looked
    at, and since when: kept across sends, so each wait for a writable socket goes on from the
    last byte the peer took rather than starting its own timeout."""

    taken: int = _NOTHING_SEEN
    since: float = 0.0


async def _wait_sendable(
    sock: socket.socket, timeout: float, progress: SendProgress | None = None
) -> None:
    """Wait until ``sock`` takes more bytes; SendTimeout once its peer took no byte for
    ``timeout`` seconds. Progress is the peer acknowledging bytes (TCP_INFO), not the socket
    turning writable: with large buffers a slow but steady reader can leave it unwritable for
    minutes, and the kernel may grow a socket's buffer, making it writable, while its peer
    takes nothing. Looked at LOOKS times per timeout, so a stalled peer is cut between
    ``timeout`` and ``timeout * (1 + 1/LOOKS)`` after the last byte it took (a cancel scope per
    wait is fine here: only a full buffer gets this far). Without TCP_INFO (not TCP), progress
    is the queue of unsent and unacknowledged bytes going down during this wait."""
    if timeout == math.inf:
        await wait_writable(sock)
        return
    acked = _bytes_acked(sock)
    if progress is None or acked is None:
        progress = SendProgress()
    while True:
        now = trio.current_time()
        taken = acked if acked is not None else -unsent(sock)
        if taken > progress.taken:
            progress.taken, progress.since = taken, now
        elif now - progress.since >= timeout:
            # Closing will reset the connection: a FIN would wait behind the unsent bytes,
            # which the kernel would hold (and probe a zero window for) long after us.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            raise SendTimeout(f"the peer took no byte for {timeout:g}s")
        with trio.move_on_after(min(progress.since + timeout - now, timeout / LOOKS)):
            await wait_writable(sock)
            return
        acked = _bytes_acked(sock)


def _bytes_acked(sock: socket.socket) -> int | None:
    """The bytes the peer's TCP has acknowledged so far; None for a socket that is not TCP."""
    try:
        data = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, tcp_info.SIZE)
    except OSError:
        return None
    info = tcp_info.parse(data)
    return info.bytes_acked if info is not None else None


def unsent(sock: socket.socket) -> int:
    """Bytes queued in the kernel that the peer has not acknowledged (sent or not yet)."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"), "little")


async def _send(
    sock: socket.socket, data: bytes | memoryview, timeout: float, progress: SendProgress | None
) -> int:
    await checkpoint_if_cancelled()
    try:
        sent = sock.send(data)
    except BlockingIOError:
        while True:
            await _wait_sendable(sock, timeout, progress)
            try:
                return sock.send(data)
            except BlockingIOError:
                pass
    await cancel_shielded_checkpoint()
    return sent


async def send_all(
    sock: socket.socket,
    data: bytes,
    timeout: float = math.inf,
    progress: SendProgress | None = None,
) -> None:
    """All of ``data``; SendTimeout when the peer takes no byte for ``timeout`` (counted
    across calls that pass the connection's ``progress``)."""
    await checkpoint_if_cancelled()
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
        await _wait_sendable(sock, timeout, progress)
    else:
        if sent == len(data):  # the usual: all at once (one coroutine, not two)
            await cancel_shielded_checkpoint()
            return
    # The kernel's buffer filled up: go on from where it stopped.
    with memoryview(data) as view:
        while sent < len(data):
            sent += await _send(sock, view[sent:], timeout, progress)


async def send_parts(
    sock: socket.socket,
    parts: list[bytes | memoryview],
    timeout: float = math.inf,
    progress: SendProgress | None = None,
) -> None:
    """``send_all`` of ``parts`` in order, by one sendmsg(2): no joined copy of them first (a
    response head and a 64 KiB body). At most MAX_PARTS parts (the kernel takes 1024)."""
    await checkpoint_if_cancelled()
    try:
        sent = sock.sendmsg(parts)
    except BlockingIOError:
        sent = 0
    if sent == sum(map(len, parts)):
        await cancel_shielded_checkpoint()
    else:  # the kernel's buffer filled up: the rest as one buffer (rare, so the copy is fine)
        await send_all(sock, b"".join(parts)[sent:], timeout, progress)


def readable_now(fd: int) -> bool:
    """Whether a read of ``fd`` would not wait (data, EOF or an error)."""
    return _ready_now(fd, select.POLLIN)


def writable_now(fd: int) -> bool:
    """Whether a write to ``fd`` would not wait; for a connecting socket, whether the connect
    ended (connected or refused)."""
    return _ready_now(fd, select.POLLOUT)


def _ready_now(fd: int, events: int) -> bool:
    """Asked of poll(2), which takes any descriptor (select(2) refuses those from 1024 on, and
    a busy proxy has them)."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(0))


def hung_up(fd: int) -> bool:
    """Whether the peer of the connected socket ``fd`` closed (or reset) it, looked at without
    reading: readable with nothing to read. Unread bytes (a pipelined request) say no."""
    try:
        if not readable_now(fd):
            return False
        pending = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return True
    return pending == b"\0\0\0\0"
