"""Long-lived clients for the deploy scenario: SSE streams and WebSockets through the proxy.

Each runs in a loop until stopped, and records every stream that ended other than as the
target meant it, with the time it ended, so the scenario can tell a drain's documented cut
(README "Deploys": WebSockets to old targets close as the drain starts; other requests are
cut at ``--drain-timeout``) from a failure.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from typing import Final

import attrs

from reliability.background import Background

TIMEOUT: Final = 10.0  # seconds without a byte: a hang


@attrs.define(eq=False)
class StreamClient(Background):
    port: int
    host: str
    kind: str  # "sse" or "websocket"
    completed: int = 0  # SSE streams the target ended
    ends: list[tuple[float, str]] = attrs.field(factory=list)  # (time.monotonic(), why)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), TIMEOUT) as sock:
                    why = self._sse(sock) if self.kind == "sse" else self._websocket(sock)
            except OSError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if why:
                self.ends.append((time.monotonic(), why))
                self._stop.wait(0.05)

    def _sse(self, sock: socket.socket) -> str:
        """'' when the target's stream arrived whole (its last chunk), else why not."""
        sock.sendall(f"GET /sse HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        data = b""
        while not data.endswith(b"\r\n0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return f"SSE cut after {data.count(b'data:')} events ({data[:12]!r})"
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            return f"SSE answered {data[:12]!r}"
        self.completed += 1
        return ""

    def _websocket(self, sock: socket.socket) -> str:
        """Why the WebSocket ended (never '' : only the proxy or a failure ends it)."""
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return "WebSocket closed before its 101"
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            return f"WebSocket answered {head[:12]!r}"
        count = 0
        while not self._stop.is_set():
            message = b"ping %d;" % count
            sock.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                chunk = sock.recv(65536)
                if not chunk:
                    return "WebSocket closed"
                echoed += chunk
            if echoed != message:
                return f"WebSocket echoed {echoed[:20]!r}"
            count += 1
            self._stop.wait(0.1)
        return ""
