"""The router: the commands that change the routing (runtime/routing.py) and the state file.

Every change follows one pattern: validate, wait (health) under a deadline, save the state the
change will make, then swap the ServiceMap value whole (``StateSaver.commit``: an unsaved change
is not made), then drain. Requests read ``router.service_map`` once: old or new, never a mix.

A service's targets come as a TargetSet (runtime/target_set.py), made by ``target_set`` and run
in the router's nursery: their health checks and drains outlive the command that began them.
Worker processes build their read-only copy of the routing with the same methods, those of
:class:`~kproxy.runtime.routing.Routing`. The rollout commands (runtime/rollouts.py) use the
public ones here: ``get``, ``locks``, ``saver``, ``records_with``, ``publish``, ``sync`` and
``wait_drained``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from kproxy.core.flag_values import format_duration
from kproxy.core.listing import ServiceInfo
from kproxy.core.options import DeploymentOptions
from kproxy.core.pages import ErrorPages
from kproxy.core.snapshot import ServiceRecord
from kproxy.core.states import ServiceState
from kproxy.errors import DeployError, ServiceNotFound
from kproxy.runtime.certificates import (
    AutomaticCertificates,
    certificate_source,
    restored_source,
)
from kproxy.runtime.pages import error_pages_or_builtin, read_error_pages
from kproxy.runtime.routing import Cutover, Routing, new_targets
from kproxy.runtime.routing import Replicas as Replicas  # proxy.py's type
from kproxy.runtime.service import Service
from kproxy.runtime.service_locks import ServiceLocks
from kproxy.runtime.state_saver import StateSaver, replaced_record
from kproxy.runtime.state_store import StateStore
from kproxy.runtime.target_set import Progress as Progress  # the commands' type, for proxy.py
from kproxy.runtime.target_set import TargetSet


async def _no_progress(_line: str) -> None:
    pass


@attrs.define(eq=False)
class Router(Routing):
    """The deciding process's routing (runtime/routing.py) and the commands that change it."""

    store: StateStore | None
    nursery: trio.Nursery  # runs the target sets: their checks and drains outlive a command
    # One command at a time per service (rollouts.py takes them too).
    locks: ServiceLocks = attrs.field(factory=ServiceLocks, init=False)
    # Automatic certificates, and the HTTP-01 tokens the HTTP port answers (None: none).
    acme: AutomaticCertificates | None = attrs.field(default=None, kw_only=True)
    # Every change to the saved state: saved first, then made (``ERR`` means nothing changed).
    saver: StateSaver = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.saver = StateSaver(self.store, self.logger)
        self.check_timer.nursery = self.nursery  # its task runs beside the target sets

    # --- commands ---------------------------------------------------------------------------

    async def deploy(
        self, name: str, options: DeploymentOptions, progress: Progress = _no_progress
    ) -> None:
        """Health-check the new targets, cut over, drain the old ones.

        Cancellation before the cutover leaves everything as it was. After the cutover the
        drain is the old target set's own task, in the router's nursery: it completes even if
        the caller goes away.
        """
        self._check_conflicts(name, options)  # fail fast, before any health check
        pages = self._read_pages(options)  # likewise: a bad --error-pages changes nothing
        certificates = certificate_source(options.service, self.acme, self.addresses(name))
        deadline = trio.current_time() + options.deploy_timeout  # a queued deploy's wait counts
        what = f"deploy to {', '.join(options.targets)}"
        async with self.locks.hold(name, what, progress, deadline):
            if pages.directory:
                statuses = ", ".join(map(str, sorted(pages.templates)))
                await progress(f"{name}: error pages from {pages.directory}: {statuses}")
            new = self.target_set(name, new_targets(options, self.connector))
            self.logger.info("Deploying", service=name, targets=options.targets)
            try:
                await self.nursery.start(new.run)  # the health checks begin
                if options.force:
                    await progress(f"{name}: --force given, not waiting for health checks")
                else:
                    await new.healthy_by(deadline, options.deploy_timeout, progress)

                def prospective() -> list[ServiceRecord]:
                    # Another service's deploy may have taken the route meanwhile.
                    self._check_conflicts(name, options)
                    current = self.services.get(name)  # its pause or stop stays
                    record = current.record() if current else ServiceRecord(name, options)
                    return self.records_with(name, attrs.evolve(record, options=options))

                def switch() -> TargetSet | None:
                    old = self.cut_over(name, options, new, pages, certificates)
                    self.publish()
                    # The drain starts with the cutover, before an await that a vanished
                    # control client can cancel: the old targets must not keep their checks.
                    if old is not None:
                        old.drain_nowait(options.drain_timeout)
                    return old

                old = await self.saver.commit(prospective, switch)
            except BaseException:
                new.close()
                raise
            self.logger.info("Deployed", service=name, targets=options.targets)
            await self.sync()  # with workers, the cutover is done once every one has cut over
            await progress(f"{name}: traffic now goes to {', '.join(options.targets)}")
            if old is not None:
                await self.wait_drained(old, options.drain_timeout, progress)

    async def remove(self, name: str, progress: Progress = _no_progress) -> None:
        async with self.locks.hold(name, "remove", progress):

            def switch() -> tuple[Service, TargetSet | None, float | None]:
                service = self.withdraw(name)
                self.publish()
                service.active.drain_nowait(service.options.drain_timeout)  # as in deploy
                rollout, rollout_options, _ = service.replace_rollout(None, None)
                rollout_drain = rollout_options.drain_timeout if rollout_options else None
                if rollout is not None and rollout_drain is not None:
                    rollout.drain_nowait(rollout_drain)
                return service, rollout, rollout_drain

            removed = await self.saver.commit(lambda: self.records_with(name, None), switch)
            service, rollout, rollout_drain = removed
            self.logger.info("Removed", service=name)
            await self.wait_drained(service.active, service.options.drain_timeout, progress)
            if rollout is not None and rollout_drain is not None:
                await self.wait_drained(rollout, rollout_drain, progress)

    async def pause(
        self, name: str, drain_timeout: float, max_pause: float, progress: Progress = _no_progress
    ) -> None:
        service = await self._change_state(
            name, ServiceState.PAUSED, lambda s: s.pause(max_pause), max_pause=max_pause
        )
        self.logger.info("Paused", service=name)
        await self.sync()
        await self._wait_in_flight(service, drain_timeout, progress)

    async def stop(
        self, name: str, drain_timeout: float, message: str, progress: Progress = _no_progress
    ) -> None:
        service = await self._change_state(
            name, ServiceState.STOPPED, lambda s: s.stop(message), message=message
        )
        self.logger.info("Stopped", service=name, message=message)
        await self.sync()
        await self._wait_in_flight(service, drain_timeout, progress)

    async def resume(self, name: str) -> None:
        await self._change_state(name, ServiceState.RUNNING, Service.resume, message="")
        self.logger.info("Resumed", service=name)
        await self.sync()

    def service_infos(self) -> list[ServiceInfo]:
        return [
            ServiceInfo(
                name=s.name,
                hosts=s.options.service.hosts,
                path_prefixes=s.options.service.path_prefixes,
                targets=tuple(t.name for t in s.targets),
                state=s.state.value,
                tls=s.tls.enabled,  # a path-prefix service's is its root service's
                rollout=s.record().rollout,
            )
            for s in sorted(self.services.values(), key=lambda s: s.name)
        ]

    # --- state ------------------------------------------------------------------------------

    def records_with(self, name: str, record: ServiceRecord | None) -> list[ServiceRecord]:
        """Every service's record once ``name`` is ``record`` (None: gone), for saver.commit."""
        return replaced_record([s.record() for s in self.services.values()], name, record)

    async def _change_state(
        self, name: str, state: ServiceState, change: Callable[[Service], None], **fields: Any
    ) -> Service:
        """Pause, stop or resume service ``name``: saved first, then made and published."""
        service = self.get(name)

        def switch() -> Service:
            change(service)
            self.publish()
            return service

        def prospective() -> list[ServiceRecord]:
            if self.services.get(name) is not service:
                raise ServiceNotFound(f"service {name!r} was removed meanwhile")
            return self.records_with(name, attrs.evolve(service.record(), state=state, **fields))

        return await self.saver.commit(prospective, switch)

    async def restore(self, records: list[ServiceRecord], errors: list[str]) -> None:
        """Bring back saved services (see ``load_state``), serving at once: their targets
        start out healthy. All of them are routed in one change (``cut_over_all``)."""
        for error in errors:
            self.logger.error("State restore failed for a service", error=error)
        refused = self.service_map.clashes(
            (r.name, r.options.service.hosts, r.options.service.path_prefixes) for r in records
        )
        restored: list[tuple[ServiceRecord, Cutover]] = []
        for record in records:
            clash = refused.get(record.name)
            if clash is not None:
                reason = clash if isinstance(clash, ValueError) else clash.service
                self.logger.error(
                    "State restore skipped a service",
                    service=record.name,
                    error=f"routes clash with service {reason}",
                )
                continue
            restored.append((record, self._restored_cutover(record)))
        self.cut_over_all([cutover for _, cutover in restored])
        groups: list[TargetSet] = []
        for record, cutover in restored:
            service = self.services[record.name]
            service.follow(record.state, record.message, record.max_pause)
            groups.append(cutover.targets)
            if record.rollout is not None:  # its rollout group (runtime/rollouts.py), likewise
                rollout = record.rollout.deployment_options(record.options)
                grouped = new_targets(rollout, self.connector, healthy=True)
                group = self.target_set(record.name, grouped)
                service.replace_rollout(group, rollout, record.rollout.split)
                groups.append(group)
            self.logger.info(
                "Restored",
                service=record.name,
                targets=record.options.targets,
                state=record.state.value,
            )
        # Started, not waited for one by one: each wait is a pass of the scheduler, and with
        # thousands of groups those passes (each running every check due meanwhile) were most
        # of a restore's time. A single target is not checked: it serves.
        for group in groups:
            self.nursery.start_soon(group.run)

    def _restored_cutover(self, record: ServiceRecord) -> Cutover:
        targets = self.target_set(
            record.name, new_targets(record.options, self.connector, healthy=True)
        )
        pages, unreadable = error_pages_or_builtin(record.options.service.error_pages)
        if unreadable is not None:
            self.logger.error(
                "State restore: error pages unavailable, using the built-in pages",
                service=record.name,
                error=unreadable,
            )
        options = record.options.service
        addresses = self.addresses(record.name)
        certificates = restored_source(record.name, options, self.logger, self.acme, addresses)
        return Cutover(record.name, record.options, targets, pages, certificates)

    # --- helpers ----------------------------------------------------------------------------

    def _check_conflicts(self, name: str, options: DeploymentOptions) -> None:
        conflict = self.service_map.conflict(
            name, options.service.hosts, options.service.path_prefixes
        )
        if conflict is not None:
            host = conflict.host or "(any host)"
            raise DeployError(
                f"host {host} path {conflict.path_prefix} is already used by service "
                f"{conflict.service!r}; remove it first or deploy with other --host/--path-prefix"
            )

    @staticmethod
    def _read_pages(options: DeploymentOptions) -> ErrorPages:
        """Read and parse the deploy's --error-pages directory (before any health check)."""
        try:
            return read_error_pages(options.service.error_pages)
        except ValueError as exc:
            raise DeployError(str(exc)) from None

    async def wait_drained(self, old: TargetSet, timeout: float, progress: Progress) -> None:
        """Report the drain and wait for it; cancelling this wait leaves the drain running."""
        await progress(
            f"{old.service}: draining {', '.join(t.name for t in old.targets)} "
            f"(timeout {format_duration(timeout)})"
        )
        await old.drained.wait()
        await progress(f"{old.service}: old targets drained")

    async def _wait_in_flight(self, service: Service, timeout: float, progress: Progress) -> None:
        await progress(
            f"{service.name}: waiting for in-flight requests (timeout {format_duration(timeout)})"
        )
        idle = await service.wait_idle(timeout)
        if self.replicas is not None:
            idle = await self.replicas.wait_idle(service.name, timeout) and idle
        if not idle:
            await progress(f"{service.name}: some requests are still running after the timeout")
