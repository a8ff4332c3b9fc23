"""A healthy client measured while a scenario does its damage: one GET at a time on a
keep-alive connection (a new one when the proxy closes it), with its latency and failures."""

from __future__ import annotations

import socket
import threading
import time
from typing import Final

import attrs

from reliability.background import Background

TIMEOUT: Final = 5.0  # seconds: a slower answer is a failure


def _read_response(sock: socket.socket) -> tuple[int, bool]:
    """(status, keep-alive) of one response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    fields = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
    length = int(fields.get(b"content-length", b"0").strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return status, fields.get(b"connection", b"").strip() != b"close"


@attrs.define(eq=False)
class Prober(Background):
    """GET ``http://host/`` through the proxy every ``interval`` seconds, until stopped."""

    port: int
    host: str
    interval: float = 0.05
    latencies: list[float] = attrs.field(factory=list)
    failures: list[str] = attrs.field(factory=list)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        request = f"GET /probe HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        sock: socket.socket | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            reused = sock is not None
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
                sock.sendall(request)
                status, keep_alive = _read_response(sock)
                if status != 200:
                    self.failures.append(f"status {status}")
                if not keep_alive:
                    sock.close()
                    sock = None
            except (OSError, ValueError) as exc:
                # A keep-alive connection the proxy closed while idle is not a failure: retry once.
                if reused and sock is not None and isinstance(exc, ConnectionError):
                    sock.close()
                    sock = None
                    continue
                self.failures.append(f"{type(exc).__name__}: {exc}")
                if sock is not None:
                    sock.close()
                    sock = None
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(self.interval)
        if sock is not None:
            sock.close()

    def p99(self) -> float:
        return percentile(self.latencies, 99)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
