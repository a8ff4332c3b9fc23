"""Just enough of an HTTP/1.1 client on a blocking socket to judge what the proxy answered."""

from __future__ import annotations

import socket

import attrs


@attrs.frozen
class Response:
    status: int  # 0: no response head at all
    body: bytes
    complete: bool  # the whole Content-Length body arrived
    keep_alive: bool


def read_response(sock: socket.socket, *, head_request: bool = False) -> Response:
    """One response with a Content-Length (or no) body; a close mid-way gives what came.
    Raises ``TimeoutError`` when the socket's timeout passes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return Response(0, data, False, False)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Response(0, data, False, False)
    fields = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
    length = 0 if head_request else int(fields.get(b"content-length", b"0").strip() or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return Response(status, body, False, False)
        body += chunk
    keep_alive = fields.get(b"connection", b"").strip().lower() != b"close"
    return Response(status, body[:length], True, keep_alive)


def request(method: str, host: str, path: str = "/", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}\r\n".encode() + body
