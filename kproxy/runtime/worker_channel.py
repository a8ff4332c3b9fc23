"""One end of the supervisor ⇄ worker socketpair: events and requests, both ways.

The supervisor and each worker hold one ``WorkerChannel`` over their ends of the pair; the
messages and their rules are core/worker_protocol.py's. Either side can

- ``send_nowait(event)``: a one-way message, queued in order (never blocks);
- ``await ask(request, timeout)``: a request; returns the peer's answer, or None if none came
  in time or the channel closed first;
- answer the peer's requests with ``handle_request`` (run in a task each, side by side) and
  take its events with ``handle_event`` (one at a time, in order: Rule 2 of the protocol).

``serve`` runs the one reader and the one writer until the peer goes away. Handlers that meet a
message they do not know raise ``ChannelError``, as the reader does for bytes that are not a
message: ``serve`` then stops and raises it (a bug, both ends ship together).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import attrs
import trio

from kproxy.core import worker_protocol as wp

RECEIVE_SIZE: Final = 65536  # bytes per read from the channel

RequestHandler = Callable[[wp.Message], Awaitable[wp.Message]]
EventHandler = Callable[[wp.Message], Awaitable[None]]


async def refuse(message: wp.Message) -> NoReturn:
    """The handler of a side that takes no requests (or no events) of this type."""
    raise wp.ChannelError(f"unknown message type {message['type']!r}")


@attrs.define(eq=False)
class _Question:
    answered: trio.Event = attrs.field(factory=trio.Event)  # also set when the channel closes
    answer: wp.Message | None = None


@attrs.define(eq=False)
class WorkerChannel:
    """Events and requests over one stream (see the module doc).

    Args:
        stream: this side's end of the socketpair.
        handle_request: returns the answer to one of the peer's requests.
        handle_event: takes one of the peer's events; the next message waits for it, so
            long work belongs in a task of its own.
    """

    stream: trio.SocketStream
    handle_request: RequestHandler = refuse
    handle_event: EventHandler = refuse
    closed: bool = attrs.field(default=False, init=False)  # the peer has gone (or serve ended)
    _outbox: trio.MemorySendChannel[bytes] = attrs.field(init=False)
    _queued: trio.MemoryReceiveChannel[bytes] = attrs.field(init=False)
    _questions: dict[int, _Question] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _error: wp.ChannelError | None = None

    def __attrs_post_init__(self) -> None:
        self._outbox, self._queued = trio.open_memory_channel[bytes](float("inf"))

    def send_nowait(self, message: wp.Message | bytes) -> None:
        """Queue an event (or a message already encoded: one state goes to every worker).
        Once the channel has closed it is dropped: the peer is gone."""
        if not self.closed:
            self._outbox.send_nowait(message if isinstance(message, bytes) else wp.encode(message))

    async def ask(self, message: wp.Message, timeout: float) -> wp.Message | None:
        """Send ``message`` as a request; its answer, or None if none came within ``timeout``
        seconds or the channel closed first."""
        if self.closed:
            return None
        request_id = next(self._ids)
        question = self._questions[request_id] = _Question()
        self.send_nowait(wp.request(message, request_id))
        try:
            with trio.move_on_after(timeout):
                await question.answered.wait()
        finally:
            del self._questions[request_id]
        return question.answer

    async def serve(self) -> None:
        """Carry messages both ways until the peer goes away; then the handlers still running
        are cancelled and every ``ask`` waiting returns None.

        Raises:
            ChannelError: the peer sent something that is not a message, or a handler met one
                it does not know.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write)
                await self._read(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            self._outbox.close()
            self._queued.close()
            for question in self._questions.values():
                question.answered.set()
        if self._error is not None:
            raise self._error

    async def _read(self, nursery: trio.Nursery) -> None:
        reader = wp.MessageReader()
        try:
            while True:
                message = reader.next_message()
                if message is None:
                    if reader.closed:
                        return
                    try:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    reader.receive_data(data)
                elif message["type"] == wp.REPLY:
                    question = self._questions.get(message["id"])
                    if question is not None:  # else its asker stopped waiting
                        question.answer = message["answer"]
                        question.answered.set()
                elif "id" in message:
                    nursery.start_soon(self._answer, message, nursery.cancel_scope)
                else:
                    await self.handle_event(message)
        except wp.ChannelError as exc:
            self._error = self._error or exc

    async def _answer(self, message: wp.Message, done: trio.CancelScope) -> None:
        try:
            answer = await self.handle_request(message)
        except wp.ChannelError as exc:
            self._error = self._error or exc
            done.cancel()
            return
        self.send_nowait(wp.reply(message["id"], answer))

    async def _write(self) -> None:
        # The queue stays open after a failed write, so send_nowait never raises: ``closed``
        # (set when the reader sees the peer go) is what stops the queueing.
        async for data in self._queued:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the peer went away: the reader sees it and ends the channel
