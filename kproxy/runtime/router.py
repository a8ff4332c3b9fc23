"""The router: services by name, the current ServiceMap, and the commands that change them.

Every change follows one pattern: validate, wait (health, drain) under a deadline, then swap
the ServiceMap value whole and save a snapshot. Requests read ``router.service_map`` once, so
they always see either the old or the new routing, never a mix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import attrs
import trio

from kproxy.core import snapshot
from kproxy.core.flag_values import format_duration
from kproxy.core.listing import ServiceInfo
from kproxy.core.options import DeploymentOptions
from kproxy.core.pages import ErrorPages
from kproxy.core.service_map import Route, ServiceMap
from kproxy.core.states import TargetHealth
from kproxy.errors import CommandError, DeployError, DeployTimeout, ServiceNotFound, StateError
from kproxy.runtime.health import run_health_checks
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import BUILTIN_PAGES, read_error_pages
from kproxy.runtime.service import Service
from kproxy.runtime.state_store import StateStore
from kproxy.runtime.target import Target

Progress = Callable[[str], Awaitable[None]]

SAVE_TIMEOUT: Final = 10.0  # seconds a state save may take (it runs shielded)


async def _no_progress(_line: str) -> None:
    pass


class Replicas(Protocol):
    """Worker processes serving with copies of the router's state (``run --workers N``)."""

    def publish(self) -> None:
        """The state changed (a cutover, a pause, a health change): send it to every worker."""

    async def sync(self) -> None:
        """Wait until every live worker applied the latest published state."""

    async def drain(self, targets: list[Target], timeout: float) -> int:
        """Drain retired ``targets`` in every worker; returns the requests cancelled in all."""

    async def wait_idle(self, service: str, timeout: float) -> bool:
        """Wait for the service's in-flight requests in every worker; True if all finished."""


@attrs.define(eq=False)
class Router:
    logger: Logger
    store: StateStore | None
    nursery: trio.Nursery  # owns health loops and drains, which outlive the command that began them
    services: dict[str, Service] = attrs.field(factory=dict)
    service_map: ServiceMap = attrs.field(factory=ServiceMap.empty)
    _locks: dict[str, trio.Lock] = attrs.field(factory=dict)
    # Set in the supervisor of ``run --workers N``: the workers serve; this router decides.
    replicas: Replicas | None = attrs.field(default=None, kw_only=True)

    # --- requests ---------------------------------------------------------------------------

    def route(self, host: str, path: str) -> tuple[Service, Route] | None:
        route = self.service_map.lookup(host, path)
        if route is None:
            return None
        return self.services[route.service], route

    # --- commands ---------------------------------------------------------------------------

    async def deploy(
        self, name: str, options: DeploymentOptions, progress: Progress = _no_progress
    ) -> None:
        """Health-check the new targets, cut over, drain the old ones.

        Cancellation before the cutover leaves everything as it was. After the cutover the
        drain belongs to the router's nursery and completes even if the caller goes away.
        """
        self._check_conflicts(name, options)  # fail fast, before any health check
        pages = self._read_pages(options)  # likewise: a bad --error-pages changes nothing
        async with self._lock(name):
            if pages.directory:
                statuses = ", ".join(map(str, sorted(pages.templates)))
                statuses = statuses or "no <status>.html files, the built-in pages stay"
                await progress(f"{name}: error pages from {pages.directory}: {statuses}")
            targets = [Target(address, options.target) for address in options.addresses]
            self.logger.info("Deploying", service=name, targets=options.targets)
            try:
                await self._start_health_checks(name, targets)
                if options.force:
                    await progress(f"{name}: --force given, not waiting for health checks")
                else:
                    await self._wait_healthy(name, targets, options.deploy_timeout, progress)
                # Another service's deploy may have taken the route meanwhile; no await
                # separates this check from the cutover.
                self._check_conflicts(name, options)
            except BaseException:
                for target in targets:
                    target.health_scope.cancel()
                raise
            old_targets = self._cut_over(name, options, targets, pages)
            self._publish()
            # The deploy has happened. Start the drain and save before the first await that a
            # vanished control client can cancel (a progress write), or neither would happen:
            # the old targets would keep their health checks and the state file its old targets.
            drained = self._start_drain(name, old_targets, options.drain_timeout)
            self.logger.info("Deployed", service=name, targets=options.targets)
            save_error = await self._save_quietly()
            await self._sync()  # with workers, the cutover is done once every one has cut over
            await progress(f"{name}: traffic now goes to {', '.join(options.targets)}")
            await self._wait_drained(name, old_targets, drained, options.drain_timeout, progress)
            if save_error is not None:
                raise CommandError(f"deployed {name}, but {save_error}")

    async def remove(self, name: str, progress: Progress = _no_progress) -> None:
        async with self._lock(name):
            service = self._get(name)
            del self.services[name]
            self.service_map = self.service_map.without_service(name)
            service.close()
            self._publish()
            self.logger.info("Removed", service=name)
            timeout = service.options.drain_timeout
            drained = self._start_drain(name, service.targets, timeout)  # before any await
            save_error = await self._save_quietly()
            await self._wait_drained(name, service.targets, drained, timeout, progress)
            if save_error is not None:
                raise CommandError(f"removed {name}, but {save_error}")

    async def pause(
        self, name: str, drain_timeout: float, max_pause: float, progress: Progress = _no_progress
    ) -> None:
        service = self._get(name)
        service.pause(max_pause)
        self._publish()
        self.logger.info("Paused", service=name)
        await self._save()
        await self._sync()
        await self._wait_in_flight(service, drain_timeout, progress)

    async def stop(
        self, name: str, drain_timeout: float, message: str, progress: Progress = _no_progress
    ) -> None:
        service = self._get(name)
        service.stop(message)
        self._publish()
        self.logger.info("Stopped", service=name, message=message)
        await self._save()
        await self._sync()
        await self._wait_in_flight(service, drain_timeout, progress)

    async def resume(self, name: str) -> None:
        self._get(name).resume()
        self._publish()
        self.logger.info("Resumed", service=name)
        await self._save()
        await self._sync()

    def service_infos(self) -> list[ServiceInfo]:
        return [
            ServiceInfo(
                name=s.name,
                hosts=s.options.service.hosts,
                path_prefixes=s.options.service.path_prefixes,
                targets=tuple(t.name for t in s.targets),
                state=s.state.value,
            )
            for s in sorted(self.services.values(), key=lambda s: s.name)
        ]

    # --- state ------------------------------------------------------------------------------

    def state_data(self) -> dict[str, Any]:
        return snapshot.dump(
            snapshot.ServiceRecord(s.name, s.options, s.state, s.message, s.max_pause)
            for s in self.services.values()
        )

    async def restore(self, records: list[snapshot.ServiceRecord], errors: list[str]) -> None:
        """Bring back saved services (see ``load_state``), serving at once: their targets
        start out healthy."""
        for error in errors:
            self.logger.error("State restore failed for a service", error=error)
        for record in records:
            conflict = self.service_map.conflict(
                record.name, record.options.service.hosts, record.options.service.path_prefixes
            )
            if conflict is not None:
                self.logger.error(
                    "State restore skipped a service",
                    service=record.name,
                    error=f"routes clash with service {conflict.service}",
                )
                continue
            targets = [Target(a, record.options.target) for a in record.options.addresses]
            for target in targets:
                target.set_health(TargetHealth.HEALTHY)
            service = Service(
                record.name, record.options, targets, record.state, record.message, record.max_pause
            )
            service.pages = self._restore_pages(record.name, record.options)
            self.services[record.name] = service
            self.service_map = self.service_map.with_service(
                record.name, record.options.service.hosts, record.options.service.path_prefixes
            )
            if len(targets) > 1:
                await self._start_health_checks(record.name, targets)
            self.logger.info(
                "Restored",
                service=record.name,
                targets=record.options.targets,
                state=record.state.value,
            )

    @staticmethod
    def load_state(store: StateStore) -> tuple[list[snapshot.ServiceRecord], list[str]]:
        """Read the state file: the services in it, and why any could not be restored.

        A file that is unusable as a whole (another format version) raises StateError: it is
        left untouched rather than overwritten by the next change.
        """
        data = store.read()
        if data is None:
            return [], []
        try:
            return snapshot.load(data)
        except ValueError as exc:
            raise StateError(
                f"cannot restore {store.path}: {exc}; move the file away to start with no services"
            ) from exc

    def close_nowait(self) -> None:
        """Release every pooled upstream connection (the proxy is stopping)."""
        for service in self.services.values():
            for target in service.targets:
                target.pool.close_nowait()

    # --- helpers ----------------------------------------------------------------------------

    def _publish(self) -> None:
        if self.replicas is not None:
            self.replicas.publish()

    async def _sync(self) -> None:
        if self.replicas is not None:
            await self.replicas.sync()

    def _lock(self, name: str) -> trio.Lock:
        return self._locks.setdefault(name, trio.Lock())

    def _get(self, name: str) -> Service:
        service = self.services.get(name)
        if service is None:
            known = ", ".join(sorted(self.services)) or "none"
            raise ServiceNotFound(f"service {name!r} is not deployed (deployed: {known})")
        return service

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

    def _restore_pages(self, name: str, options: DeploymentOptions) -> ErrorPages:
        """A restored service whose --error-pages can no longer be read (the directory went
        away with an old release, say) keeps serving, with the built-in pages. Its options keep
        the directory, so the state file does not forget it; the next deploy reads it again."""
        try:
            return read_error_pages(options.service.error_pages)
        except ValueError as exc:
            self.logger.error(
                "State restore: error pages unavailable, using the built-in pages",
                service=name,
                error=str(exc),
            )
            return BUILTIN_PAGES

    async def _start_health_checks(self, name: str, targets: list[Target]) -> None:
        keep_checking = len(targets) > 1
        for target in targets:
            await self.nursery.start(
                lambda t=target, **kw: run_health_checks(
                    t, name, self.logger, keep_checking=keep_checking, on_change=self._publish, **kw
                )
            )

    async def _wait_healthy(
        self, name: str, targets: list[Target], timeout: float, progress: Progress
    ) -> None:
        deadline = trio.current_time() + timeout
        await progress(
            f"{name}: waiting for {', '.join(t.name for t in targets)} to pass "
            f"{targets[0].options.health_check_path} (timeout {format_duration(timeout)})"
        )
        with trio.move_on_at(deadline):
            while True:
                pending = [t for t in targets if not t.healthy]
                if not pending:
                    await progress(f"{name}: all targets healthy")
                    return
                # Wake on the first health change, or every second to report progress.
                with trio.move_on_after(1.0):
                    await pending[0].health_changed.wait()
                for target in pending:
                    if target.healthy:
                        await progress(f"{name}: {target.name} is healthy")
                still = [t for t in targets if not t.healthy]
                if still and still == pending:
                    waited = timeout - (deadline - trio.current_time())
                    await progress(
                        f"{name}: {still[0].name} not healthy yet ({still[0].last_check}; "
                        f"{format_duration(round(waited))} of {format_duration(timeout)})"
                    )
        self.logger.info("Deploy failed", service=name, reason="health check timeout")
        raise DeployTimeout(
            f"target failed to become healthy within configured timeout "
            f"({format_duration(timeout)})"
        )

    def _cut_over(
        self,
        name: str,
        options: DeploymentOptions,
        targets: list[Target],
        pages: ErrorPages = BUILTIN_PAGES,
    ) -> list[Target]:
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(name, options, targets)
            old: list[Target] = []
        else:
            old = service.replace_targets(options, targets)
        service.pages = pages  # no await since the targets changed: requests see both or neither
        self.service_map = self.service_map.with_service(
            name, options.service.hosts, options.service.path_prefixes
        )
        return old

    def _start_drain(self, name: str, targets: list[Target], timeout: float) -> trio.Event:
        """Drain old targets in the router's nursery, so it outlives the command; returns an
        event set when every one is drained."""
        done = trio.Event()
        if not targets:
            done.set()
            return done

        async def drain_one(target: Target) -> None:
            cancelled = await target.drain(timeout)
            if self.replicas is not None:  # the requests are in the workers
                cancelled += await self.replicas.drain([target], timeout)
            self.logger.info(
                "Target drained", service=name, target=target.name, cancelled_requests=cancelled
            )

        async def drain_all() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    for target in targets:
                        nursery.start_soon(drain_one, target)
            finally:
                done.set()

        self.nursery.start_soon(drain_all)
        return done

    async def _wait_drained(
        self,
        name: str,
        targets: list[Target],
        drained: trio.Event,
        timeout: float,
        progress: Progress,
    ) -> None:
        """Report the drain and wait for it; cancelling this wait leaves the drain running."""
        if not targets:
            return
        await progress(
            f"{name}: draining {', '.join(t.name for t in targets)} "
            f"(timeout {format_duration(timeout)})"
        )
        await drained.wait()
        await progress(f"{name}: old targets drained")

    async def _wait_in_flight(self, service: Service, timeout: float, progress: Progress) -> None:
        await progress(
            f"{service.name}: waiting for in-flight requests (timeout {format_duration(timeout)})"
        )
        idle = await service.wait_idle(timeout)
        if self.replicas is not None:
            idle = await self.replicas.wait_idle(service.name, timeout) and idle
        if not idle:
            await progress(f"{service.name}: some requests are still running after the timeout")

    async def _save(self) -> None:
        """Save the state the change just made; called once that change has happened.

        Shielded, with a bound: a control client that goes away at this moment must not leave
        the file behind the running proxy (a restart would bring back the old state).
        """
        if self.store is None:
            return
        with trio.move_on_after(SAVE_TIMEOUT, shield=True) as scope:
            try:
                await self.store.write(self.state_data())
            except StateError as exc:
                self.logger.error("State save failed", error=str(exc))
                raise CommandError(str(exc)) from exc
        if scope.cancelled_caught:
            self.logger.error("State save failed", error="timed out")
            raise CommandError(f"saving the state took longer than {SAVE_TIMEOUT:g}s")

    async def _save_quietly(self) -> str | None:
        """Save after a change that has already happened: report, don't undo, on failure."""
        try:
            await self._save()
        except CommandError as exc:
            return str(exc)
        return None
