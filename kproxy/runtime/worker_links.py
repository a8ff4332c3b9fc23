"""The supervisor's side of its workers (``run --workers N``): a :class:`WorkerLink` per worker
process, and :class:`Workers`, the router's ``Replicas`` (runtime/routing.py), which sends
each change to every worker, waits until each applied it, and asks them to drain.

A new worker gets the whole state; after that every worker gets, per change, the services it
changed and the names of those removed (core/worker_protocol.py), so a change costs one
service's encoding, sending and applying, not every service's.
"""

from __future__ import annotations

from typing import Final

import attrs
import trio

from kproxy.core import worker_protocol as wp
from kproxy.runtime.log import Logger
from kproxy.runtime.router import Router
from kproxy.runtime.service import Service
from kproxy.runtime.target import Target
from kproxy.runtime.worker_channel import WorkerChannel

SYNC_TIMEOUT: Final = 10.0  # seconds a worker may take to apply a state before it is not waited for
REPLY_MARGIN: Final = 5.0  # seconds past a drain's or pause's own timeout to wait for a worker


@attrs.define(eq=False)
class WorkerLink:
    """The supervisor's side of one worker process."""

    index: int
    process: trio.Process
    channel: WorkerChannel
    logger: Logger
    pid: int = 0
    acked: int = -1  # the latest state version the worker applied
    alive: bool = True
    ready: trio.Event = attrs.field(factory=trio.Event)  # also set when it dies first
    changed: trio.Event = attrs.field(factory=trio.Event)  # replaced on each ack or death

    def __attrs_post_init__(self) -> None:
        self.channel.handle_event = self._follow

    def send_nowait(self, message: wp.Message | bytes) -> None:
        # A worker going away at this very moment gets nothing: its replacement gets the state.
        if self.alive:
            self.channel.send_nowait(message)

    async def _follow(self, message: wp.Message) -> None:
        """Take one of the worker's events (the channel's ``handle_event``)."""
        kind = message["type"]
        if kind == "ack":
            self.acked = max(self.acked, int(message["version"]))
            self.wake()
        elif kind == "ready":
            self.pid = int(message["pid"])
            self.logger.info("Worker ready", worker=self.index, pid=self.pid)
            self.ready.set()
        else:
            raise wp.ChannelError(f"unknown message type {kind!r}")

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def died(self) -> None:
        self.alive = False
        self.ready.set()
        self.wake()


@attrs.define(eq=False)
class Workers:
    """The router's ``Replicas``: every live worker gets each state and each drain."""

    router: Router | None = None
    logger: Logger | None = None
    links: dict[int, WorkerLink] = attrs.field(factory=dict)  # by worker number
    version: int = 0
    _published: dict[str, wp.ServiceView] = attrs.field(factory=dict)  # as of ``version``

    def state_message(self) -> bytes:
        """The whole state, for a new worker: as published, once any change is published."""
        self.publish()
        views = self._published.values()
        return wp.encode(wp.state_message(self.version, views, whole=True))

    def changes(self) -> bytes | None:
        """The services changed or removed since the last call, as a ``state`` message of a
        new version (None: nothing changed). O(services) to compare, but only the changed
        ones are encoded, and applied by the workers."""
        assert self.router is not None
        views = {s.name: _view(s) for s in self.router.services.values()}
        changed = [view for name, view in views.items() if self._published.get(name) != view]
        removed = [name for name in self._published if name not in views]
        if not changed and not removed:
            return None
        self.version += 1
        self._published = views
        return wp.encode(wp.state_message(self.version, changed, removed=removed, whole=False))

    def publish(self) -> None:
        data = self.changes()
        if data is not None:
            for link in self.links.values():
                link.send_nowait(data)

    async def sync(self) -> None:
        links = list(self.links.values())
        with trio.move_on_after(SYNC_TIMEOUT):
            for link in links:
                while link.alive and link.acked < self.version:
                    await link.changed.wait()
        behind = [link.index for link in links if link.alive and link.acked < self.version]
        if behind and self.logger is not None:  # a stuck worker must not hold every command
            self.logger.error(
                "Workers did not apply the new state in time",
                workers=behind,
                timeout_seconds=SYNC_TIMEOUT,
            )

    async def ask_all(self, message: wp.Message, timeout: float) -> list[wp.Message]:
        """Send ``message`` to every live worker; their answers (a worker that dies or takes
        longer than ``timeout`` gives none)."""
        answers: list[wp.Message] = []

        async def ask(link: WorkerLink) -> None:
            answer = await link.channel.ask(message, timeout)
            if answer is not None:
                answers.append(answer)

        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                if link.alive:
                    nursery.start_soon(ask, link)
        return answers

    async def drain(self, targets: list[Target], timeout: float) -> int:
        message = {"type": "drain", "targets": [t.serial for t in targets], "timeout": timeout}
        answers = await self.ask_all(message, timeout + REPLY_MARGIN)
        return sum(int(a["cancelled"]) for a in answers)

    async def wait_idle(self, service: str, timeout: float) -> bool:
        message = {"type": "idle", "service": service, "timeout": timeout}
        answers = await self.ask_all(message, timeout + REPLY_MARGIN)
        return all(a["idle"] for a in answers)


def _view(service: Service) -> wp.ServiceView:
    """What the workers are told of ``service``."""
    rollout = service.rollout.targets if service.rollout is not None else ()
    return wp.ServiceView(
        service.record(),
        tuple(wp.TargetView(t.serial, t.name, t.health) for t in service.targets),
        tuple(wp.TargetView(t.serial, t.name, t.health) for t in rollout),
    )
