"""A tunnel: after a 101 (a WebSocket, say), raw bytes both ways until either side closes."""

from __future__ import annotations

import trio

from kproxy.runtime.exchange import Tunnel
from kproxy.runtime.socket_io import STREAM_ERRORS
from kproxy.runtime.transport import Transport


async def splice(client: Tunnel, upstream: Tunnel) -> None:
    """Copy each side's bytes to the other, each side's ``first`` bytes (read before the
    switch) first; the first side to close or break ends both copies."""
    async with trio.open_nursery() as nursery:

        async def copy(source: Transport, sink: Transport, first: bytes) -> None:
            try:
                await sink.send(first)
                while data := await source.receive():
                    await sink.send(data)
            except STREAM_ERRORS:
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(copy, client.transport, upstream.transport, client.first)
        nursery.start_soon(copy, upstream.transport, client.transport, upstream.first)
