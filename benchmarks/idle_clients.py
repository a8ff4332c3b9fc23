"""Hold many idle keep-alive connections open to one server (run as its own process).

    python -m benchmarks.idle_clients --port 8080 --count 10000

Each connection sends one ``GET`` and reads the whole response, so the server has a finished
exchange behind it and is waiting for the next request on a keep-alive connection. When every
connection is open, one JSON line ``{"open": N, "failed": M, "seconds": S}`` is printed; the
connections stay open until stdin reaches EOF (the runner closes it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Final

import trio

CONCURRENT_OPENS: Final = 200
OPEN_TIMEOUT: Final = 10.0  # seconds, per connection (a refused slot waits in the backlog)


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _read_response(stream: trio.SocketStream) -> bool:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return False
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


async def _open_one(
    port: int, path: str, limit: trio.Semaphore, streams: list[trio.SocketStream]
) -> None:
    async with limit:
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        with trio.move_on_after(OPEN_TIMEOUT):
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                return
            try:
                await stream.send_all(request)
                if await _read_response(stream):
                    streams.append(stream)
                    return
            except (trio.BrokenResourceError, OSError):
                pass
            await trio.aclose_forcefully(stream)


async def hold(port: int, count: int, path: str) -> None:
    started = time.monotonic()
    streams: list[trio.SocketStream] = []
    limit = trio.Semaphore(CONCURRENT_OPENS)
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(_open_one, port, path, limit, streams)
    report = {"open": len(streams), "failed": count - len(streams)}
    print(json.dumps({**report, "seconds": round(time.monotonic() - started, 2)}), flush=True)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    while await stdin.receive_some(4096):
        pass
    for stream in streams:
        await trio.aclose_forcefully(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--path", default="/tiny")
    args = parser.parse_args()
    raise_fd_limit()
    trio.run(hold, args.port, args.count, args.path)


if __name__ == "__main__":
    main()
