"""In-memory connections for the data path on trio's MockClock: no sockets, exact virtual time.

``transport_pair()`` joins two :class:`MemoryTransport` ends, each a
:class:`kproxy.runtime.transport.Transport`. :class:`MemoryNetwork` is a connector
(``Router(..., connector=network.connect)``) that reaches :class:`HttpTarget` tasks by
address, and :class:`HttpClient` speaks HTTP/1 over the other end of a client connection
(hand its peer to ``HttpServer.handle_connection``).

The pipes are written here rather than taken from ``trio.testing.memory_stream_pair()``: the
proxy asks a connection whether input or EOF is pending *without reading* it
(``peer_gone``, ``readable_now``), and trio's memory streams keep that state private. Each
end behaves as ``SocketTransport`` does: a read that finds bytes returns without yielding, a
send yields after it, ``send_eof`` is a FIN (the peer reads b""), and a read waiting on an end
that is closed meanwhile raises ClosedResourceError (trio's ``notify_closing``). ``aclose`` is
a FIN too; as on TCP, the peer's next send still succeeds (its bytes are lost: the kernel
answers them with a reset) and the one after fails (BrokenResourceError). Buffers have no
bound: a test's bodies are small.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio

from kproxy.core.addresses import Address
from kproxy.runtime.socket_io import READ_SIZE
from kproxy.runtime.transport import Transport

Peer = tuple[str, int]


@attrs.define(eq=False)
class _Pipe:
    """One direction of a connection: what one end sent and the other has not read yet."""

    data: bytearray = attrs.field(factory=bytearray)
    eof: bool = False  # the sender sent its FIN (send_eof or close)
    broken: bool = False  # the receiving end closed: the next send is lost, then sends fail
    reset: bool = False  # a send was lost to a closed end: the sender got its reset
    waiting: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def wake(self) -> None:
        self.waiting.unpark_all()


@attrs.define(eq=False)
class MemoryTransport:
    """One end of an in-memory connection (see the module doc)."""

    inbound: _Pipe
    outbound: _Pipe
    address: Peer  # what ``peer()`` says: the other end's address
    closed: bool = False

    def peer(self) -> Peer:
        return self.address

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        inbound = self.inbound
        while True:
            if self.closed:
                raise trio.ClosedResourceError("this end is closed")
            if inbound.data:
                data = bytes(inbound.data[:READ_SIZE])
                del inbound.data[:READ_SIZE]
                return data
            if inbound.eof:
                return b""
            await inbound.waiting.park()

    async def send(self, data: bytes) -> None:
        if not data:
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        outbound = self.outbound
        if self.closed:
            raise trio.ClosedResourceError("this end is closed")
        if outbound.eof or outbound.reset:  # our FIN went out, or the peer reset: EPIPE
            raise trio.BrokenResourceError("the connection is closed for sending")
        if outbound.broken:
            outbound.reset = True
        else:
            outbound.data += data
            outbound.wake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        await self.send(b"".join(parts))

    def peer_gone(self) -> bool:
        return self.closed or (self.inbound.eof and not self.inbound.data)

    def readable_now(self) -> bool:
        return self.closed or self.inbound.eof or bool(self.inbound.data)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("this end is closed")
        self.outbound.eof = True
        self.outbound.wake()

    def close_nowait(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbound.eof = True
        self.inbound.broken = True
        self.inbound.data.clear()  # unread bytes are dropped
        self.outbound.wake()
        self.inbound.wake()  # our own waiting read raises ClosedResourceError

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.cancel_shielded_checkpoint()


def transport_pair(
    left: Peer = ("10.0.0.100", 40000), right: Peer = ("10.0.0.1", 3000)
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends: the first at ``left`` (the second's peer), the second at ``right``."""
    left_to_right, right_to_left = _Pipe(), _Pipe()
    return (
        MemoryTransport(right_to_left, left_to_right, right),
        MemoryTransport(left_to_right, right_to_left, left),
    )


def _as_transport(transport: MemoryTransport) -> Transport:
    return transport  # mypy checks here that MemoryTransport is a Transport


Handler = Callable[[MemoryTransport], Awaitable[None]]


@attrs.define(eq=False)
class MemoryNetwork:
    """Servers by address; :meth:`connect` is a kproxy ``Connector`` that reaches them, each
    connection served by a task in ``nursery``. An address nobody serves refuses."""

    nursery: trio.Nursery
    servers: dict[str, Handler] = attrs.field(factory=dict)
    connections: int = 0  # opened so far
    _next_port: int = 50000

    def serve(self, address: str, handler: Handler) -> None:
        self.servers[address] = handler

    async def connect(self, address: Address) -> Transport:
        await trio.lowlevel.checkpoint()
        handler = self.servers.get(str(address))
        if handler is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        self._next_port += 1
        ours, theirs = transport_pair(("10.0.0.200", self._next_port), (address.host, address.port))
        self.connections += 1
        self.nursery.start_soon(handler, theirs)
        return _as_transport(ours)


async def _next_event(conn: h11.Connection, transport: Transport) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await transport.receive())
            continue
        assert not isinstance(event, type)  # PAUSED: only after a whole message
        return event


async def _send(conn: h11.Connection, transport: Transport, *events: h11.Event) -> None:
    data = b"".join(conn.send(event) or b"" for event in events)
    await transport.send(data)


@attrs.define(eq=False)
class HttpTarget:
    """A target that answers every request 200 with ``<name> <path>``, ``/sleep/<seconds>``
    after that long, except ``/slow``, which it never answers: it waits for the proxy to close
    the connection and notes when.
    With ``keep_alive`` False it closes each connection after one response, unannounced (as
    a target does with a connection idle past its keep-alive timeout)."""

    name: str
    keep_alive: bool = True
    requests: list[tuple[float, str]] = attrs.field(factory=list)  # (when, path) as received
    hung_up: list[float] = attrs.field(factory=list)  # when a /slow request's connection closed

    async def __call__(self, transport: MemoryTransport) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, transport)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed: the proxy is done with this connection
                path = event.target.decode()
                self.requests.append((trio.current_time(), path))
                while not isinstance(await _next_event(conn, transport), h11.EndOfMessage):
                    pass
                if path == "/slow":
                    while await transport.receive():
                        pass
                    self.hung_up.append(trio.current_time())
                    return
                if path.startswith("/sleep/"):
                    await trio.sleep(float(path.removeprefix("/sleep/")))
                body = f"{self.name} {path}".encode()
                headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
                response = h11.Response(status_code=200, headers=headers)
                await _send(conn, transport, response, h11.Data(data=body), h11.EndOfMessage())
                if not self.keep_alive:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await transport.aclose()


@attrs.define(eq=False)
class HttpClient:
    """HTTP/1 requests over the client's end of a connection, one at a time."""

    transport: MemoryTransport
    conn: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))

    async def send_request(
        self, path: str, *, method: str = "GET", body: bytes | None = None, end: bool = True
    ) -> None:
        """A request head (with ``body`` if given); ``end=False`` leaves a body unfinished."""
        headers = [("host", "example.test")]
        if body is not None:
            headers.append(("content-length", str(len(body) + (0 if end else 1))))
        events: list[h11.Event] = [h11.Request(method=method, target=path, headers=headers)]
        if body:
            events.append(h11.Data(data=body))
        if end:
            events.append(h11.EndOfMessage())
        await _send(self.conn, self.transport, *events)

    async def receive_response(self) -> tuple[int, bytes]:
        """The status and body of the response; ready for the next request after it."""
        response = await _next_event(self.conn, self.transport)
        assert isinstance(response, h11.Response), response
        body = b""
        while isinstance(event := await _next_event(self.conn, self.transport), h11.Data):
            body += event.data
        assert isinstance(event, h11.EndOfMessage), event
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return response.status_code, body

    async def get(self, path: str) -> tuple[int, bytes]:
        await self.send_request(path)
        return await self.receive_response()
