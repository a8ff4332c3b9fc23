"""HTTP ports shared by worker processes (``run --workers N``) with ``SO_REUSEPORT``.

The kernel spreads new connections over every listening socket of the group, so each worker
accepts on its own socket (no thundering herd on a shared one). trio.open_tcp_listeners does
not set the option, so the sockets are made here, the way it makes them (IPV6_V6ONLY, one per
address family of the bind address).
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import trio

LISTEN_BACKLOG: Final = 65535  # the kernel caps it at net.core.somaxconn


async def _addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    seen: list[tuple[int, tuple[str, int]]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        entry = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if entry not in seen:
            seen.append(entry)
    return seen


def _socket(family: int, *, reuseport: bool) -> socket.socket | None:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:  # no IPv6 here: serve IPv4 only, as trio does
            return None
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


async def reserve_port(host: str, port: int) -> list[socket.socket]:
    """The supervisor's hold on the HTTP port: sockets bound with SO_REUSEPORT, not listening
    (they receive no connections), which keep the port for the workers across restarts.

    Port 0 becomes one concrete port for every address family. A port that anything else has
    bound is refused here (``EADDRINUSE``), as a single process would refuse it: a plain bind
    without SO_REUSEPORT fails while any other socket holds the port.
    """
    reserved: list[socket.socket] = []
    try:
        for family, address in await _addresses(host, port):
            for reuseport in (False, True):
                sock = _socket(family, reuseport=reuseport)
                if sock is None:
                    break
                try:
                    sock.bind((address[0], port))
                except BaseException:
                    sock.close()
                    raise
                port = sock.getsockname()[1]
                if reuseport:
                    reserved.append(sock)
                else:
                    sock.close()  # only the check; the port is free again until the next bind
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return reserved


async def open_reuseport_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """A worker's own listening sockets on ``port`` (a concrete port the supervisor reserved)."""
    listeners: list[trio.SocketListener] = []
    try:
        for family, address in await _addresses(host, port):
            sock = _socket(family, reuseport=True)
            if sock is None:
                continue
            try:
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
