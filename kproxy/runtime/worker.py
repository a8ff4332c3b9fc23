"""A worker process of ``kproxy run --workers N``: serves HTTP with a replica of the state.

Started by the supervisor as ``python -m kproxy.runtime.worker FD CONFIG`` with one end of a
socketpair on FD, its channel (runtime/worker_channel.py). The worker listens on the
supervisor's port with SO_REUSEPORT, routes with the state the supervisor sends
(core/worker_protocol.py), and drains the targets it is asked to.
It has no control socket, no state file and no health checks: those are the supervisor's.
Its upstream connection pools are its own. It exits when the supervisor goes away.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
from typing import ClassVar

import attrs
import trio

from kproxy.core import worker_protocol as wp
from kproxy.core.addresses import parse_target
from kproxy.core.options import DeploymentOptions, RunOptions
from kproxy.core.pages import ErrorPages
from kproxy.core.snapshot import ServiceRecord
from kproxy.runtime.acme_workers import RemoteAcme
from kproxy.runtime.certificates import AutomaticCertificates, restored_source
from kproxy.runtime.listeners import Listeners
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import error_pages_or_builtin
from kproxy.runtime.proxy import Frontend, Proxy
from kproxy.runtime.router import Router
from kproxy.runtime.routing import Cutover
from kproxy.runtime.service import Service
from kproxy.runtime.target import Target
from kproxy.runtime.target_set import drain_targets
from kproxy.runtime.worker_channel import WorkerChannel


def _shared_port(worker: Worker) -> Frontend:
    """Listeners on the supervisor's port, the first state applied before the first accept."""
    return Listeners(worker.options, worker.logger, reuseport=True, prepare=worker._prepare)


@attrs.define(eq=False)
class Worker(Proxy):
    """The HTTP side of the proxy, following the supervisor's state (see the module doc)."""

    started_message: ClassVar[str] = "Worker started"
    serves_metrics: ClassVar[bool] = False  # it records them (runtime/metrics.py)

    channel: WorkerChannel | None = None
    initial: wp.Message | None = None  # the first state, applied before the first accept
    # Per service, serial → target, as routed (both groups).
    _live: dict[str, dict[int, Target]] = attrs.field(factory=dict)
    _retired: dict[int, Target] = attrs.field(factory=dict)  # replaced; waiting for "drain"

    frontend: Frontend = attrs.field(
        default=attrs.Factory(_shared_port, takes_self=True), kw_only=True
    )

    def _automatic_certificates(self, nursery: trio.Nursery) -> AutomaticCertificates | None:
        """The supervisor's, asked over the channel (runtime/acme_workers.py)."""
        return RemoteAcme(self.channel, self.logger) if self.channel is not None else None

    def _prepare(self, router: Router) -> None:
        if self.initial is not None:
            self.apply(router, self.initial)

    def apply(self, router: Router, message: wp.Message) -> int:
        """Take a ``state`` message into the replica; returns its version. No await:
        requests see the whole old state or the whole new one.

        The routing is built as the supervisor's router built it (``Router.target_set``,
        ``cut_over_all``, ``withdraw``); only health comes from the message, not from checks.
        A message carries the services that changed (``whole``: all of them): only those are
        looked at, and the new or redeployed ones are routed in one change."""
        update = wp.read_state(message)
        if update.whole:
            names = {view.record.name for view in update.services}
            gone = [name for name in router.services if name not in names]
        else:
            gone = [name for name in update.removed if name in router.services]
        for name in gone:
            router.withdraw(name)
            self._retire(name, {})
        cutovers: list[Cutover] = []
        changed: list[tuple[wp.ServiceView, list[Target], dict[int, Target]]] = []
        for view in update.services:
            record = view.record
            live: dict[int, Target] = {}
            targets = self._targets(router, record, record.options, view.targets, live)
            service = router.services.get(record.name)
            if service is None or service.targets != targets or service.options != record.options:
                # A deploy: its --error-pages are read again, as the supervisor did, and its
                # certificate files, which this worker loads itself.
                pages = self._pages(record.name, record.options)
                certificates = restored_source(
                    record.name, record.options.service, self.logger, router.acme
                )
                group = router.target_set(record.name, targets)
                cutovers.append(Cutover(record.name, record.options, group, pages, certificates))
            changed.append((view, targets, live))
        if cutovers:
            router.cut_over_all(cutovers)
        for view, targets, live in changed:
            record = view.record
            service = router.services[record.name]
            for target, seen in zip(targets, view.targets, strict=True):
                service.active.set_health(target, seen.health)
            self._follow_rollout(router, service, view, live)
            service.follow(record.state, record.message, record.max_pause)
            self._retire(record.name, live)
        return update.version

    def _retire(self, name: str, live: dict[int, Target]) -> None:
        """Service ``name`` now routes to ``live`` (serial → target): the others it had wait
        for the supervisor's "drain"."""
        for serial, target in self._live.pop(name, {}).items():
            if serial not in live:
                self._retired[serial] = target
        if live:
            self._live[name] = live

    def _targets(
        self,
        router: Router,
        record: ServiceRecord,
        options: DeploymentOptions,
        views: tuple[wp.TargetView, ...],
        live: dict[int, Target],
    ) -> list[Target]:
        """A group's targets as the supervisor has them: the ones this worker routes to
        already (by serial), new ones made; each is entered in ``live``."""
        targets = []
        known = self._live.get(record.name, {})
        writers = len(options.targets)  # the readers follow (routing.new_targets)
        for index, seen in enumerate(views):
            target = known.get(seen.serial)
            if target is None:
                address = parse_target(seen.address)
                target = Target(
                    address, options.target, connector=router.connector, read_only=index >= writers
                )
                target.serial = seen.serial
            targets.append(target)
            live[seen.serial] = target
        return targets

    def _follow_rollout(
        self, router: Router, service: Service, view: wp.ServiceView, live: dict[int, Target]
    ) -> None:
        """The service's rollout group and split as the supervisor has them (rollouts.py)."""
        rollout = view.record.rollout
        if rollout is None:
            service.replace_rollout(None, None)
            return
        options = rollout.deployment_options(view.record.options)
        targets = self._targets(router, view.record, options, view.rollout_targets, live)
        group = service.rollout
        if group is None or group.targets != targets:
            group = router.target_set(service.name, targets)
        service.replace_rollout(group, options, rollout.split)
        for target, seen in zip(targets, view.rollout_targets, strict=True):
            group.set_health(target, seen.health)

    def _pages(self, name: str, options: DeploymentOptions) -> ErrorPages:
        pages, error = error_pages_or_builtin(options.service.error_pages)
        if error is not None:
            self.logger.error("Error pages unavailable", service=name, error=error)
        return pages

    async def drain(self, serials: list[int], timeout: float) -> int:
        """Drain the retired targets named (others were never here, or are gone)."""
        targets = [self._retired.pop(s) for s in serials if s in self._retired]
        return await drain_targets(targets, timeout)

    async def follow(self, nursery: trio.Nursery, message: wp.Message) -> None:
        """Take one of the supervisor's events (the channel's ``handle_event``): the first
        state starts serving, in ``nursery``; "shutdown" and "abort" end it."""
        assert self.channel is not None
        kind = message["type"]
        if kind == "state":
            if self._router is None:  # the first state: applied before the first accept
                self.initial = message
                await nursery.start(self.serve)
                self.channel.send_nowait({"type": "ack", "version": message["version"]})
                self.channel.send_nowait({"type": "ready", "pid": os.getpid()})
            else:
                version = self.apply(self.router, message)
                self.channel.send_nowait({"type": "ack", "version": version})
        elif kind == "shutdown":  # events go on meanwhile: "abort" cuts the grace short
            nursery.start_soon(self._shut_down, float(message["grace"]), nursery.cancel_scope)
        elif kind == "abort":
            nursery.cancel_scope.cancel()
        else:
            raise wp.ChannelError(f"unknown message type {kind!r}")

    async def answer(self, message: wp.Message) -> wp.Message:
        """Answer one of the supervisor's requests (the channel's ``handle_request``)."""
        kind = message["type"]
        if kind == "drain":
            serials = [int(s) for s in message["targets"]]
            return {"cancelled": await self.drain(serials, message["timeout"])}
        if kind == "idle":
            service = self.router.services.get(str(message["service"]))
            idle = True
            if service is not None:
                idle = await service.wait_idle(float(message["timeout"]))
            return {"idle": idle}
        raise wp.ChannelError(f"unknown message type {kind!r}")

    async def _shut_down(self, grace: float, done: trio.CancelScope) -> None:
        await self.shutdown(grace)
        done.cancel()


async def serve_worker(sock: socket.socket, index: int, options: RunOptions) -> None:
    """Run one worker until the supervisor says stop (or goes away)."""
    # Every line of a worker carries ``worker``: its number, 1…N (kept across restarts).
    logger = Logger(debug_enabled=options.debug, context={"worker": index})
    worker = Worker(options, logger)
    async with trio.open_nursery() as nursery:
        worker.channel = WorkerChannel(
            trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
            handle_request=worker.answer,
            handle_event=functools.partial(worker.follow, nursery),
        )
        await worker.channel.serve()  # until the supervisor goes away
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    fd, index, config = int(argv[0]), int(argv[1]), json.loads(argv[2])
    options = RunOptions(**config)
    sock = socket.socket(fileno=fd)
    trio.run(serve_worker, sock, index, options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
