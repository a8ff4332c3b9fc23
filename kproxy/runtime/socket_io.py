"""The data path's socket reads and writes: a trio socket's own ``recv`` and ``send``.

``trio.SocketStream`` wraps each call in a conflict detector and an error-translating context
manager; with four socket calls per proxied request, that layer measured about 6 % of kproxy's
CPU per request (py-spy). kproxy already keeps one reader and one writer per socket, and
catches OSError wherever it catches trio's stream errors, so the data path calls the socket
itself: trio still does the waiting, the cancellation and the scheduling.
"""

from __future__ import annotations

import fcntl
import select
import termios
from typing import Final

import trio

# Bytes per receive: large reads mean fewer syscalls (a 64 KiB body comes with its head in
# one: 16 % less CPU per such response, measured), while staying under glibc's 128 KiB mmap
# threshold, so each read's buffer comes from the heap, not an mmap/munmap pair.
READ_SIZE: Final = 120 * 1024
# What a broken or closed connection raises, through a trio stream or straight from a socket.
STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def receive(sock: trio.socket.SocketType) -> bytes:
    """Up to READ_SIZE bytes; b"" once the peer has closed its side."""
    return await sock.recv(READ_SIZE)


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    sent = await sock.send(data)
    if sent < len(data):  # the kernel's buffer filled up: go on from where it stopped
        with memoryview(data) as view:
            while sent < len(data):
                sent += await sock.send(view[sent:])


def hung_up(fd: int) -> bool:
    """Whether the peer of the connected socket ``fd`` closed (or reset) it, looked at without
    reading: readable with nothing to read. Unread bytes (a pipelined request) say no."""
    try:
        readable, _, _ = select.select([fd], [], [], 0)
        if not readable:
            return False
        pending = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return True
    return pending == b"\0\0\0\0"
