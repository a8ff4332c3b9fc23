"""A target for the campaign: ``python -m reliability.upstream --port P --name N [--fault F]``.

It parses every request with h11 (a strict HTTP/1.1 parser) and counts what reaches it, so a
scenario can tell whether anything badly framed ever got through the proxy. Routes:

- ``GET /up``: 200 (health checks); ``GET /__stats``: the counters as JSON (read directly,
  not through the proxy); ``GET /big``: 8 MiB, streamed; ``GET /sse``: 30 events over 3 s;
  ``GET /ws`` with an upgrade: a WebSocket (101) that echoes every byte;
  ``GET /__fault?<fault>`` changes the fault (``none`` heals it);
- anything else: 200 with ``<name> <method> <body length>`` as the body, unless ``--fault``
  says otherwise (health checks always pass, so a faulty target deploys):

  ``reset``    sends the head and part of the body, then resets the connection (RST);
  ``garbage``  answers bytes that are not HTTP, then closes;
  ``silent``   reads the request and never answers;
  ``close``    answers correctly, keep-alive, then closes the connection at once;
  ``stall``    sends the head and 10 of 100 body bytes, then nothing more.

Counters: ``requests`` (complete, well-framed), ``malformed`` (h11 refused what the proxy sent,
before the connection ended), ``bad_target`` (a request-target neither origin-form nor
``OPTIONS *``), ``aborted`` (the proxy closed mid-request: legitimate when its
client went away), ``connections``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import struct
from collections import Counter
from typing import Final

import h11
import trio

RECEIVE_SIZE: Final = 65536
BIG_CHUNK: Final = 64 * 1024  # bytes
BIG_CHUNKS: Final = 128  # GET /big: 8 MiB
SSE_EVENTS: Final = 30  # GET /sse: 30 events, one every 100 ms
SSE_INTERVAL: Final = 0.1  # seconds
WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
MAX_HEAD: Final = 1024 * 1024  # bytes: a proxy may forward big heads (Go allows 1 MiB)
COUNTS: Counter[str] = Counter()
FAULT: list[str] = ["none"]  # changed at run time by GET /__fault?<fault>
SAMPLES: list[str] = []  # the first few malformed requests, for the report


def _answer(status: int, body: bytes, *, close: bool = False) -> list[h11.Event]:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain")]
    if close:
        headers.append((b"connection", b"close"))
    return [
        h11.Response(status_code=status, headers=headers),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ]


async def _send(stream: trio.SocketStream, conn: h11.Connection, events: list[h11.Event]) -> None:
    for event in events:
        data = conn.send(event)
        if data:
            await stream.send_all(data)


def _reset(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _fault(stream: trio.SocketStream, fault: str) -> bool:
    """Misbehave; True when the connection is done for."""
    if fault == "reset":
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        _reset(stream)
        return True
    if fault == "garbage":
        await stream.send_all(b"\x00\x17garbage that is not HTTP\r\n\r\n\xff\xfe")
        return True
    if fault in ("silent", "stall"):
        if fault == "stall":
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        await trio.sleep_forever()
    return False


async def _websocket_echo(
    stream: trio.SocketStream, conn: h11.Connection, headers: dict[bytes, bytes]
) -> None:
    """Accept the upgrade (RFC 6455 §4.2.2), then echo every byte until the proxy closes."""
    key = headers.get(b"sec-websocket-key", b"")
    accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %b\r\n\r\n" % accept
    )
    data, _ = conn.trailing_data
    while True:
        if data:
            await stream.send_all(data)
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return


async def _handle(stream: trio.SocketStream, name: str) -> None:
    COUNTS["connections"] += 1
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    eof = False
    try:
        while True:
            request: h11.Request | None = None
            body = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    eof = not data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += len(event.data)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            if request is None:
                return
            COUNTS["requests"] += 1
            path = request.target
            if not path.startswith(b"/") and not (request.method == b"OPTIONS" and path == b"*"):
                COUNTS["bad_target"] += 1  # only origin-form (or OPTIONS *) may reach a target
                if len(SAMPLES) < 20:
                    SAMPLES.append(f"request-target {path[:80]!r}")
            if path == b"/__stats":
                await _send(stream, conn, _answer(200, json.dumps(COUNTS).encode(), close=True))
                return
            if path.startswith(b"/__fault?"):
                FAULT[0] = path.partition(b"?")[2].decode()
                await _send(stream, conn, _answer(200, b"fault " + path.partition(b"?")[2]))
                conn.start_next_cycle()
                continue
            if path == b"/__malformed":
                await _send(stream, conn, _answer(200, "\n".join(SAMPLES).encode(), close=True))
                return
            fault = FAULT[0]
            if path != b"/up" and await _fault(stream, fault):
                return
            if path == b"/sse":
                await _send(
                    stream,
                    conn,
                    [
                        h11.Response(
                            status_code=200, headers=[(b"content-type", b"text/event-stream")]
                        )
                    ],
                )  # chunked: no length
                for index in range(SSE_EVENTS):
                    await _send(stream, conn, [h11.Data(data=b"data: %d\n\n" % index)])
                    await trio.sleep(SSE_INTERVAL)
                await _send(stream, conn, [h11.EndOfMessage()])
                conn.start_next_cycle()
                continue
            if path == b"/ws" and conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:  # type: ignore[attr-defined]
                await _websocket_echo(stream, conn, dict(request.headers))
                return
            if path == b"/big":
                await _send(
                    stream,
                    conn,
                    [
                        h11.Response(
                            status_code=200,
                            headers=[(b"content-length", str(BIG_CHUNK * BIG_CHUNKS).encode())],
                        )
                    ],
                )
                for _ in range(BIG_CHUNKS):  # streamed: a slow reader holds back the sender
                    await _send(stream, conn, [h11.Data(data=b"x" * BIG_CHUNK)])
                await _send(stream, conn, [h11.EndOfMessage()])
                conn.start_next_cycle()
                continue
            text = b"up" if path == b"/up" else f"{name} {request.method.decode()} {body}".encode()
            await _send(stream, conn, _answer(200, text))
            if fault == "close" and path != b"/up":
                return
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        COUNTS["aborted" if eof else "malformed"] += 1
        if not eof and len(SAMPLES) < 20:
            SAMPLES.append(repr(exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        COUNTS["aborted"] += 1
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def serve(port: int, name: str, fault: str) -> None:
    FAULT[0] = fault

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, name)

    await trio.serve_tcp(handler, port, host="127.0.0.1", backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    faults = ["none", "reset", "garbage", "silent", "close", "stall"]
    parser.add_argument("--fault", choices=faults, default="none")
    args = parser.parse_args()
    trio.run(serve, args.port, args.name, args.fault)


if __name__ == "__main__":
    main()
