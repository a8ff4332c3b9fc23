"""The accept loop over real sockets: a handler that fails costs its connection only."""

from __future__ import annotations

import trio

from kproxy.runtime.acceptor import accept_connections
from kproxy.runtime.log import Logger
from kproxy.runtime.transport import SocketTransport
from tests.helpers import LogCapture, guard


@guard(10)
async def test_a_failing_connection_is_logged_and_the_rest_are_served() -> None:
    """An unexpected error in one connection's handler costs that connection only: it is
    logged with its traceback, its slot comes back, and later clients are served."""
    logs = LogCapture()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    slots = trio.CapacityLimiter(1)  # one at a time: a slot not given back stalls the next

    async def handle(transport: SocketTransport) -> None:
        request = await transport.receive()
        if request == b"fail":
            raise ValueError("a bug in the handler")
        await transport.send(b"served " + request)
        await transport.aclose()

    answers = []
    async with trio.open_nursery() as nursery:
        handlers = await nursery.start(_hold)
        logger = Logger(out=logs)  # type: ignore[arg-type]
        nursery.start_soon(accept_connections, listener, slots, handlers, handle, logger)
        for word in (b"fail", b"one", b"two"):
            async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                await client.send_all(word)
                answers.append(await client.receive_some(100))
        while slots.borrowed_tokens:  # noqa: ASYNC110  # no event to wait on
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    await listener.aclose()
    assert answers == [b"", b"served one", b"served two"]
    [failure] = logs.records("Connection failed")
    assert failure["error"] == "ValueError: a bug in the handler"
    assert "raise ValueError" in failure["traceback"]


async def _hold(task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()
