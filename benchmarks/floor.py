"""The trio+h11 floor for the benchmark: this is not a proxy, and must never be used as one.

    python -m benchmarks.floor --port 8081 --upstream-port 8080

It is the least work a trio+h11 relay does per request, kept in the benchmark only to show what
the platform (CPython + trio + h11) costs; it must never be used for anything else. Per client
connection one task: h11 parses each request head, which is re-encoded with x-forwarded-for and
sent on a pooled keep-alive upstream connection; the upstream's response (framed by
Content-Length, as the benchmark's nginx upstream frames them) is read whole and sent back as
it came. No logging, no timeouts, no request bodies; anything unexpected closes the client.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
from typing import Final

import h11
import trio

READ_SIZE: Final = 120 * 1024  # bytes per recv()
NOT_IMPLEMENTED: Final = (
    b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


async def send_all(sock: trio.socket.SocketType, data: bytes | bytearray) -> None:
    """One send() of the whole buffer, looped only if the kernel takes part of it."""
    with memoryview(data) as view:
        sent = 0
        while sent < len(view):
            sent += await sock.send(view[sent:])


def content_length(head: bytes) -> int | None:
    """The body length of a response head (ending in CRLF), or None unless it is framed by
    Content-Length alone (RFC 9112 §6.3)."""
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0 or b"\r\ntransfer-encoding:" in lower:
        return None
    try:
        return int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
    except ValueError:
        return None


async def exchange(
    upstream: trio.socket.SocketType, request: bytes, head_only: bool
) -> bytearray | None:
    """Send one request head upstream and return the whole response, or None if it can't be."""
    await send_all(upstream, request)
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = await upstream.recv(READ_SIZE)
        if not chunk:
            return None
        buffer += chunk
    length = 0 if head_only else content_length(bytes(buffer[: end + 2]))
    if length is None:
        return None
    total = end + 4 + length
    while len(buffer) < total:
        chunk = await upstream.recv(READ_SIZE)
        if not chunk:
            return None
        buffer += chunk
    return buffer if len(buffer) == total else None


async def open_upstream(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await sock.connect(("127.0.0.1", port))
    return sock


async def relay(
    stream: trio.SocketStream, pool: list[trio.socket.SocketType], upstream_port: int
) -> None:
    client = stream.socket  # trio's serve_tcp closes the stream when this returns
    forwarded = b"x-forwarded-for: " + client.getpeername()[0].encode() + b"\r\n"
    leftover, eof = b"", False
    while True:
        conn = h11.Connection(h11.SERVER)
        if leftover:
            conn.receive_data(leftover)
        if eof:
            conn.receive_data(b"")  # b"" is EOF to h11
        event = conn.next_event()
        while event is h11.NEED_DATA:
            conn.receive_data(await client.recv(READ_SIZE))
            event = conn.next_event()
        if not isinstance(event, h11.Request):
            return  # the client closed between requests
        if not isinstance(conn.next_event(), h11.EndOfMessage):
            await send_all(client, NOT_IMPLEMENTED)  # a request body
            return
        leftover, eof = conn.trailing_data
        close = event.http_version != b"1.1"  # as h11 decides keep-alive
        headers = []
        for name, value in event.headers:
            if name == b"connection":  # hop-by-hop (RFC 9110 §7.6.1): not for the pooled upstream
                close = close or b"close" in value.lower()
            else:
                headers.append(b"%s: %s\r\n" % (name, value))
        head = b"%s %s HTTP/1.1\r\n" % (event.method, event.target)
        request = b"".join([head, *headers, forwarded, b"\r\n"])
        upstream = pool.pop() if pool else await open_upstream(upstream_port)
        try:
            response = await exchange(upstream, request, event.method == b"HEAD")
        except OSError:
            response = None
        if response is None:
            upstream.close()
            return
        pool.append(upstream)  # LIFO: the connection just used is the next one taken
        await send_all(client, response)
        if close:
            return


async def serve(port: int, upstream_port: int) -> None:
    pool: list[trio.socket.SocketType] = []

    async def handler(stream: trio.SocketStream) -> None:
        # The client went away or sent something h11 rejects: close it.
        with contextlib.suppress(OSError, h11.RemoteProtocolError):
            await relay(stream, pool, upstream_port)

    await trio.serve_tcp(handler, port, host="127.0.0.1", backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    trio.run(serve, args.port, args.upstream_port)


if __name__ == "__main__":
    main()
