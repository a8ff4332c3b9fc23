"""A worker process of ``kproxy run --workers N``: serves HTTP with a replica of the state.

Started by the supervisor as ``python -m kproxy.runtime.worker FD CONFIG`` with one end of a
socketpair on FD. The worker listens on the supervisor's port with SO_REUSEPORT, routes with
the state the supervisor sends (core/worker_protocol.py), and drains the targets it is told to.
It has no control socket, no state file and no health checks: those are the supervisor's.
Its upstream connection pools are its own. It exits when the supervisor goes away.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from typing import ClassVar

import attrs
import trio

from kproxy.core import worker_protocol as wp
from kproxy.core.options import DeploymentOptions, RunOptions, parse_target
from kproxy.core.pages import ErrorPages
from kproxy.runtime.listen import open_reuseport_listeners
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import BUILTIN_PAGES, read_error_pages
from kproxy.runtime.proxy import Proxy
from kproxy.runtime.router import Router
from kproxy.runtime.target import Target
from kproxy.runtime.target_set import drain_targets

RECEIVE_SIZE = 65536  # bytes per read from the channel


@attrs.define(eq=False)
class Channel:
    """The worker's end of the socketpair: whole messages in, whole messages out."""

    stream: trio.SocketStream
    _reader: wp.MessageReader = attrs.field(factory=wp.MessageReader)
    _send_lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def receive(self) -> wp.Message | None:
        """The next message, or None once the supervisor has gone."""
        while (message := self._reader.next_message()) is None:
            if self._reader.closed:
                return None
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self._reader.receive_data(data)
        return message

    async def send(self, message: wp.Message) -> None:
        async with self._send_lock:
            # The supervisor may have gone: receive() sees it, and the worker exits.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(wp.encode(message))


@attrs.define(eq=False)
class Worker(Proxy):
    """The HTTP side of the proxy, following the supervisor's state (see the module doc)."""

    started_message: ClassVar[str] = "Worker started"

    channel: Channel | None = None
    initial: wp.Message | None = None  # the first state, applied before the first accept
    _live: dict[int, Target] = attrs.field(factory=dict)  # serial → target, as routed
    _retired: dict[int, Target] = attrs.field(factory=dict)  # replaced; waiting for "drain"

    async def _open_listeners(self) -> list[trio.SocketListener]:
        return await open_reuseport_listeners(self.options.bind, self.options.http_port)

    async def _prepare(self, router: Router, nursery: trio.Nursery) -> None:
        if self.initial is not None:
            self.apply(router, self.initial)

    def apply(self, router: Router, message: wp.Message) -> int:
        """Replace the replica with a ``state`` message's; returns its version. No await:
        requests see the whole old state or the whole new one.

        The routing is built as the supervisor's router built it (``Router.target_set``,
        ``cut_over``, ``withdraw``); only health comes from the message, not from checks."""
        version, views = wp.read_state(message)
        names = {view.record.name for view in views}
        for name in [name for name in router.services if name not in names]:
            router.withdraw(name)
        live: dict[int, Target] = {}
        for view in views:
            record = view.record
            targets = []
            for seen in view.targets:
                target = self._live.get(seen.serial)
                if target is None:
                    target = Target(parse_target(seen.address), record.options.target)
                    target.serial = seen.serial
                targets.append(target)
                live[seen.serial] = target
            service = router.services.get(record.name)
            if service is None or service.targets != targets or service.options != record.options:
                # A deploy: its --error-pages are read again, as the supervisor did.
                pages = self._pages(record.name, record.options)
                router.cut_over(
                    record.name, record.options, router.target_set(record.name, targets), pages
                )
                service = router.services[record.name]
            for target, seen in zip(targets, view.targets, strict=True):
                service.active.set_health(target, seen.health)
            service.follow(record.state, record.message, record.max_pause)
        for serial, target in self._live.items():
            if serial not in live:
                self._retired[serial] = target
        self._live = live
        return version

    def _pages(self, name: str, options: DeploymentOptions) -> ErrorPages:
        try:
            return read_error_pages(options.service.error_pages)
        except ValueError as exc:
            self.logger.error("Error pages unavailable", service=name, error=str(exc))
            return BUILTIN_PAGES

    async def drain(self, serials: list[int], timeout: float) -> int:
        """Drain the retired targets named (others were never here, or are gone)."""
        targets = [self._retired.pop(s) for s in serials if s in self._retired]
        return await drain_targets(targets, timeout)

    async def follow(self, nursery: trio.Nursery) -> None:
        """Handle the supervisor's messages until it goes away or says to stop."""
        assert self.channel is not None
        channel = self.channel
        while (message := await channel.receive()) is not None:
            kind = message["type"]
            if kind == "state":
                version = self.apply(self.router, message)
                await channel.send({"type": "ack", "version": version})
            elif kind == "drain":
                nursery.start_soon(self._answer_drain, message)
            elif kind == "idle":
                nursery.start_soon(self._answer_idle, message)
            elif kind == "shutdown":  # keep reading meanwhile: "abort" cuts the grace short
                nursery.start_soon(self._shut_down, float(message["grace"]), nursery.cancel_scope)
            elif kind == "abort":
                return
            else:
                raise wp.ChannelError(f"unknown message type {kind!r}")

    async def _shut_down(self, grace: float, done: trio.CancelScope) -> None:
        await self.shutdown(grace)
        done.cancel()

    async def _answer_drain(self, message: wp.Message) -> None:
        cancelled = await self.drain([int(s) for s in message["targets"]], message["timeout"])
        assert self.channel is not None
        await self.channel.send({"type": "drained", "id": message["id"], "cancelled": cancelled})

    async def _answer_idle(self, message: wp.Message) -> None:
        service = self.router.services.get(str(message["service"]))
        idle = True
        if service is not None:
            idle = await service.wait_idle(float(message["timeout"]))
        assert self.channel is not None
        await self.channel.send({"type": "idle", "id": message["id"], "idle": idle})


async def serve_worker(sock: socket.socket, index: int, options: RunOptions) -> None:
    """Run one worker until the supervisor says stop (or goes away)."""
    channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
    # Every line of a worker carries ``worker``: its number, 1…N (kept across restarts).
    logger = Logger(debug_enabled=options.debug, context={"worker": index})
    initial = await channel.receive()
    if initial is None:
        return
    worker = Worker(options, logger, channel=channel, initial=initial)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await channel.send({"type": "ack", "version": initial["version"]})
        await channel.send({"type": "ready", "pid": os.getpid()})
        await worker.follow(nursery)
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    fd, index, config = int(argv[0]), int(argv[1]), json.loads(argv[2])
    options = RunOptions(**config)
    sock = socket.socket(fileno=fd)
    trio.run(serve_worker, sock, index, options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
