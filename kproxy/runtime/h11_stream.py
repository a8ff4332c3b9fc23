"""An h11 connection bound to a trio stream: the one read loop both sides share."""

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
    received: int = 0  # bytes read so far: tells "closed silently" from "sent garbage"
    eof: bool = False  # the peer has closed (or half-closed) its side

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # NEED_DATA was ruled out
            data = await self.stream.receive_some(READ_SIZE)
            self.received += len(data)
            self.eof = not data
            self.conn.receive_data(data)

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def send_all(self, *events: h11.Event) -> None:
        """Several events in one write: a small response is one send(2), not three."""
        data = b"".join([self.conn.send(event) or b"" for event in events])
        if data:
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
