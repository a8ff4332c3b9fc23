"""Embed kproxy in a trio program: serve an app, put it behind an in-process proxy, deploy it.

Run it with ``python examples/embed.py``: it prints what a client sees through the proxy and
exits. The proxy uses port 0 (any free port), no control socket and no state file.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import kproxy


async def app(stream: trio.SocketStream) -> None:
    """A tiny HTTP app: answers every request (health checks included) with a greeting."""
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        body = b"hello from the app\n"
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )


async def fetch(port: int, path: str) -> bytes:
    """A plain HTTP/1.0 GET through the proxy, returning the whole response."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: demo.test\r\n\r\n".encode())
        response = b""
        while chunk := await stream.receive_some(4096):
            response += chunk
    return response


async def main() -> None:
    async with trio.open_nursery() as nursery:
        app_listeners = await nursery.start(partial(trio.serve_tcp, app, 0, host="127.0.0.1"))
        app_port = app_listeners[0].socket.getsockname()[1]

        options = kproxy.RunOptions(socket_path="", state_dir="", bind="127.0.0.1", http_port=0)
        # JSON log lines go to stderr here, so stdout shows just what the demo prints.
        proxy = await nursery.start(kproxy.Proxy(options, kproxy.Logger(out=sys.stderr)).serve)

        async def show(line: str) -> None:
            print("progress:", line)

        await proxy.deploy(
            "demo",
            kproxy.DeploymentOptions(targets=(f"127.0.0.1:{app_port}",)),
            progress=show,
        )
        print(await proxy.execute(kproxy.parse_command(["list"]), show) or "listed")
        response = await fetch(proxy.http_port, "/")
        status_line, body = response.split(b"\r\n", 1)[0], response.split(b"\r\n\r\n", 1)[1]
        print(status_line.decode(), "|", body.decode().strip())
        nursery.cancel_scope.cancel()  # cancelling the scope stops the proxy and the app


if __name__ == "__main__":
    trio.run(main)
