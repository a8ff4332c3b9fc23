"""New TLS handshakes per second: every request on a new connection (run as its own process).

    python -m benchmarks.handshakes --port 8443 --host localhost --path /tiny --seconds 5

``--connections`` threads each loop: connect to 127.0.0.1, a full TLS handshake with SNI set
to ``--host`` (ALPN ``http/1.1``), one ``GET`` with ``Connection: close``, read the response
to the end, close. No session is ever offered again, so every handshake is a full one (wrk
with ``Connection: close`` resumes its previous session instead: a cheaper handshake, not
what a new client costs). The certificate is not verified here (the runner checks it once
with the CA before measuring), to leave the CPU to the server. Python's ``ssl`` releases the
GIL while OpenSSL works, so the threads handshake in parallel.

After ``--seconds`` it prints one JSON line: the fields ``benchmarks.loadgen.parse`` reads
from wrk (requests, duration, errors, latency percentiles in µs), plus the TLS version and
cipher the server negotiated and how many handshakes were resumptions (should be 0).
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import ssl
import statistics
import struct
import threading
import time
from typing import Any, Final

from benchmarks.loadgen import MARKER

TIMEOUT: Final = 5  # seconds per socket call, as wrk's --timeout
NOT_READ: Final = ("ConnectionRefusedError", "ValueError", "TimeoutError", "BlockingIOError")
TIMEVAL: Final = struct.pack("ll", TIMEOUT, 0)  # struct timeval


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


class Totals:
    """What all threads found, merged under a lock once per thread at the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies_us: list[float] = []
        self.bytes = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.negotiated: collections.Counter[str] = collections.Counter()
        self.resumed = 0


def one_request(
    context: ssl.SSLContext, port: int, host: str, request: bytes
) -> tuple[int, str, bool]:
    """Connect, handshake, send, read to EOF; return (bytes read, "version cipher", resumed)."""
    with socket.socket() as raw:
        # Blocking, with the kernel's timeouts: a Python timeout would poll() before each call.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.connect(("127.0.0.1", port))
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(request)
            received = bytearray()
            while chunk := tls.recv(65536):
                received += chunk
            if not received.startswith(b"HTTP/1.1 200"):
                raise ValueError(f"answer {bytes(received[:40])!r}")
            cipher = tls.cipher()
            negotiated = f"{tls.version()} {cipher[0] if cipher else '?'}"
            return len(received), negotiated, bool(tls.session_reused)


def worker(
    context: ssl.SSLContext, port: int, host: str, request: bytes, until: float, totals: Totals
) -> None:
    latencies: list[float] = []
    received = resumed = 0
    errors: collections.Counter[str] = collections.Counter()
    negotiated: collections.Counter[str] = collections.Counter()
    while (started := time.monotonic()) < until:
        try:
            size, tls, reused = one_request(context, port, host, request)
        except (OSError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            continue
        latencies.append((time.monotonic() - started) * 1e6)
        received += size
        negotiated[tls] += 1
        resumed += reused
    with totals.lock:
        totals.latencies_us += latencies
        totals.bytes += received
        totals.errors += errors
        totals.negotiated += negotiated
        totals.resumed += resumed


def run(port: int, host: str, path: str, connections: int, seconds: float) -> dict[str, Any]:
    context = client_context()
    # The Host header with the port, as wrk and browsers send it for a port not 443.
    authority = f"{host}:{port}"
    request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
    totals = Totals()
    started = time.monotonic()
    until = started + seconds
    threads = [
        threading.Thread(target=worker, args=(context, port, host, request, until, totals))
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration = time.monotonic() - started
    latencies = sorted(totals.latencies_us) or [0.0]
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(totals.latencies_us),
        "duration_us": round(duration * 1e6),
        "bytes": totals.bytes,
        # wrk's error kinds, roughly: the error_kinds below name the exceptions.
        "connect": totals.errors["ConnectionRefusedError"],
        "read": sum(totals.errors.values()) - sum(totals.errors[k] for k in NOT_READ),
        "write": 0,
        "status": totals.errors["ValueError"],  # an answer other than 200
        "timeout": totals.errors["TimeoutError"] + totals.errors["BlockingIOError"],
        "p50_us": round(cuts[49]),
        "p90_us": round(cuts[89]),
        "p99_us": round(cuts[98]),
        "max_us": round(latencies[-1]),
        "mean_us": statistics.fmean(latencies),
        "error_kinds": dict(totals.errors),
        "negotiated": dict(totals.negotiated),
        "resumed": totals.resumed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True, help="SNI and Host header")
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=16, help="threads, one connection each")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    result = run(args.port, args.host, args.path, args.connections, args.seconds)
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
