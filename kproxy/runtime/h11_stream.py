"""An h11 connection bound to a trio stream: an HTTP client for the tests (kproxy itself reads
and writes HTTP on its own: ``http1_exchange`` and ``relay`` on the data path, ``health`` with
the data path's response reader)."""

from __future__ import annotations

import attrs
import h11
import trio

from kproxy.runtime.socket_io import READ_SIZE


@attrs.define(eq=False)
class H11Stream:
    """``next_event`` reads until h11 has an event; ``send`` writes what h11 encodes."""

    stream: trio.SocketStream
    conn: h11.Connection

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # NEED_DATA was ruled out
            self.conn.receive_data(await self.stream.receive_some(READ_SIZE))

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
