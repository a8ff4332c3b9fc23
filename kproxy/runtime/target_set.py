"""A target group of a service: its targets, their health checks, balancer, and drain.

The shape of kamal-proxy's LoadBalancer (internal/server/load_balancer.go). A set runs as one
task, ``await nursery.start(target_set.run)`` in the router's nursery: it checks its targets'
health until it is drained or closed, and then (for a drain) cuts off what is left in flight
and ends. The router waits on it without owning it, so a command whose control client goes
away leaves a drain running to the end, and nothing is stopped by a scope stored elsewhere.

Health: every target is checked every ``--health-check-interval`` on a fixed grid
(core/check_schedule.py): a deployed target at once and then every interval from then on, a
restored one (which starts out healthy) at a phase of its own, so that many targets' checks
are spread out, not bunched. Between checks they sleep on the router's shared timer
(runtime/check_timer.py), which wakes those due together in one pass. A single-target set
stops checking its target once healthy (taking the only target out of rotation would not help
anyone; kamal-proxy does the same), so a restored single target is not checked at all.

Worker processes build sets with the same code but never run them: their health is the
supervisor's, copied with :meth:`TargetSet.set_health`, and they drain the retired targets they
are told to with :func:`drain_targets`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs
import trio

from kproxy.core.balancer import ReadWriteBalancer, RoundRobin
from kproxy.core.check_schedule import next_check_at, phase_at, spread_phase
from kproxy.core.flag_values import format_duration
from kproxy.core.states import TargetHealth
from kproxy.errors import DeployTimeout
from kproxy.runtime.check_timer import CheckTimer
from kproxy.runtime.health import CheckResult, KeptChecks, check_once
from kproxy.runtime.log import Logger
from kproxy.runtime.target import Target

HealthCheck = Callable[[Target], Awaitable[CheckResult]]  # one check, bounded, never raising
Progress = Callable[[str], Awaitable[None]]
# Drains the same targets elsewhere (in the worker processes); returns the requests cut off.
RemoteDrain = Callable[[list[Target], float], Awaitable[int]]

PROGRESS_INTERVAL: Final = 1.0  # seconds between "not healthy yet" lines while waiting


def _ignore() -> None:
    pass


@attrs.define(eq=False)
class TargetSet:
    """One group of targets (see the module doc).

    Args:
        service: the service's name, for logs and progress lines.
        targets: the group, in deploy order: the writers, then the read targets
            (``Target.read_only``), which are checked and drained alike.
        logger: where health changes and drains are logged.
        check: one health check of one target (``health.check_once``; tests script it).
        on_change: called after every change of a target's health (the supervisor publishes).
        remote_drain: with ``--workers N``, drains the targets in the workers too.
        timer: what the checks sleep on between checks (the router's shared one; by
            default each check sleeps on its own).
    """

    service: str
    targets: list[Target]
    logger: Logger
    check: HealthCheck = check_once
    on_change: Callable[[], None] = _ignore
    remote_drain: RemoteDrain | None = None
    timer: CheckTimer = attrs.field(factory=CheckTimer)
    balancer: ReadWriteBalancer[Target] = attrs.field(init=False)
    has_readers: bool = attrs.field(init=False)  # the one check the data path makes
    cancelled: int = 0  # requests cut off by the drain, once ``drained`` is set
    drained: trio.Event = attrs.field(factory=trio.Event)  # set when run() has ended
    _changed: trio.Event = attrs.field(factory=trio.Event)  # replaced on each health change
    _stop: trio.Event = attrs.field(factory=trio.Event)  # ends the checks: drain or close
    _drain_timeout: float | None = None  # set by drain_nowait()
    _running: bool = False

    def __attrs_post_init__(self) -> None:
        writers = [t for t in self.targets if not t.read_only]
        readers = [t for t in self.targets if t.read_only]
        self.balancer = ReadWriteBalancer(
            RoundRobin(writers, [t.healthy for t in writers]),
            RoundRobin(readers, [t.healthy for t in readers]),
        )
        self.has_readers = bool(readers)

    # --- health -----------------------------------------------------------------------------

    def set_health(self, target: Target, health: TargetHealth) -> bool:
        """Record a target's health; returns whether it changed (and then calls on_change)."""
        if not target.set_health(health):
            return False
        self._rotation(target).set_healthy(target, target.healthy)
        self._changed.set()
        self._changed = trio.Event()
        self.on_change()
        return True

    async def healthy_by(
        self, deadline: float, timeout: float, progress: Progress, what: str = ""
    ) -> None:
        """``wait_healthy`` until ``deadline`` (trio time) at most: a ``deploy``'s new group,
        or a ``rollout deploy``'s (``what="rollout"``).

        Raises:
            DeployTimeout: not every target was healthy by then (``timeout``: the flag's value,
                quoted in the message).
        """
        with trio.move_on_at(deadline) as health_wait:
            await self.wait_healthy(progress, timeout)
        if health_wait.cancelled_caught:
            event = f"{what.capitalize()} deploy failed" if what else "Deploy failed"
            self.logger.info(event, service=self.service, reason="health check timeout")
            raise DeployTimeout(
                f"{what + ' ' if what else ''}target failed to become healthy within "
                f"configured timeout ({format_duration(timeout)})"
            )

    async def wait_healthy(self, progress: Progress, timeout: float) -> None:
        """Return once every target is healthy, reporting progress on the way.

        The caller bounds the wait (``with trio.move_on_after(timeout)``); ``timeout`` is only
        quoted in the progress lines.
        """
        name, targets = self.service, self.targets
        began = trio.current_time()
        await progress(
            f"{name}: waiting for {', '.join(t.name for t in targets)} to pass "
            f"{targets[0].options.health_check_path} (timeout {format_duration(timeout)})"
        )
        while True:
            pending = [t for t in targets if not t.healthy]
            if not pending:
                await progress(f"{name}: all targets healthy")
                return
            # Wake on the first health change, or every second to report progress.
            with trio.move_on_after(PROGRESS_INTERVAL):
                await self._changed.wait()
            for target in pending:
                if target.healthy:
                    await progress(f"{name}: {target.name} is healthy")
            still = [t for t in targets if not t.healthy]
            if still and still == pending:
                waited = trio.current_time() - began
                await progress(
                    f"{name}: {still[0].name} not healthy yet ({still[0].last_check}; "
                    f"{format_duration(round(waited))} of {format_duration(timeout)})"
                )

    # --- the task ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check health until :meth:`drain_nowait` or :meth:`close`; then drain (if asked) and
        end. ``drained`` is set when this returns, however it ends."""
        self._running = True
        try:
            async with trio.open_nursery() as checks:
                for target in self.targets:
                    checks.start_soon(self._check_health, target)
                task_status.started()
                await self._stop.wait()
                checks.cancel_scope.cancel()
            if self._drain_timeout is not None:
                await self._drain(self._drain_timeout)
        finally:
            self.drained.set()

    def close(self) -> None:
        """Stop the health checks, draining nothing (a deploy that did not cut over)."""
        self._stop.set()

    def drain_nowait(self, timeout: float) -> None:
        """Stop the health checks and drain in run()'s task: in-flight requests get
        ``timeout`` seconds, then the rest are cut off. ``drained`` is set once done."""
        if self._drain_timeout is None:
            self._drain_timeout = timeout
        self._stop.set()

    async def drain(self, timeout: float) -> int:
        """Drain (see :meth:`drain_nowait`) and wait for it; returns the requests cut off.

        The drain is run()'s work, so cancelling this wait does not stop it.

        Raises:
            RuntimeError: if run() was never started (a worker's set: see ``drain_targets``).
        """
        if not self._running:
            raise RuntimeError("drain() needs the set's run() task; see drain_targets")
        self.drain_nowait(timeout)
        await self.drained.wait()
        return self.cancelled

    async def wait_idle(self, timeout: float) -> bool:
        """Let in-flight requests finish (pause and stop), without cancelling any."""
        with trio.move_on_after(timeout):
            for target in self.targets:
                await target.wait_idle(timeout)
        return all(t.inflight_count == 0 for t in self.targets)

    # --- helpers ----------------------------------------------------------------------------

    def _rotation(self, target: Target) -> RoundRobin[Target]:
        return self.balancer.readers if target.read_only else self.balancer.writers

    async def _check_health(self, target: Target) -> None:
        try:
            await self._keep_checking(target)
        finally:
            if isinstance(self.check, KeptChecks):  # its connection goes with its checks
                self.check.release(target)

    async def _keep_checking(self, target: Target) -> None:
        single = len(self.targets) == 1
        if single and target.healthy:
            return  # restored: serving, and nobody would take it out of rotation
        interval = target.options.health_check_interval
        phase: float | None = None  # a deployed target's: set by its first check's end
        due = trio.current_time()  # the instant on the grid this check is for
        if target.healthy:  # restored: serving already, its checks take a place of their own
            phase = spread_phase(target.name)
            due = next_check_at(due, interval, phase)
            await self.timer.sleep_until(due)
        while True:
            result = await self.check(target)
            target.last_check = result.reason
            health = TargetHealth.HEALTHY if result.healthy else TargetHealth.UNHEALTHY
            if self.set_health(target, health):
                self.logger.info(
                    "Target health updated",
                    service=self.service,
                    target=target.name,
                    healthy=result.healthy,
                    reason=result.reason,
                )
            else:
                self.logger.debug(
                    "Health check", service=self.service, target=target.name, result=result.reason
                )
            if result.healthy and single:
                return
            now = trio.current_time()
            if phase is None:  # deployed: checked at once, then every interval after that
                phase = phase_at(now, interval)
            # The timer may wake a check a little early: the next one is after this one's due.
            due = next_check_at(max(now, due), interval, phase)
            await self.timer.sleep_until(due)

    async def _drain(self, timeout: float) -> None:
        for target in self.targets:  # out of rotation, should the set still be asked
            self._rotation(target).set_healthy(target, False)

        async def drain_one(target: Target) -> None:
            cancelled = await target.drain(timeout)
            if self.remote_drain is not None:  # the requests are in the workers
                cancelled += await self.remote_drain([target], timeout)
            self.cancelled += cancelled
            self.logger.info(
                "Target drained",
                service=self.service,
                target=target.name,
                cancelled_requests=cancelled,
            )

        async with trio.open_nursery() as nursery:
            for target in self.targets:
                nursery.start_soon(drain_one, target)


async def drain_targets(targets: Sequence[Target], timeout: float) -> int:
    """Drain ``targets`` side by side, with no logging (a worker's retired targets); returns
    the requests cut off."""
    cancelled = 0

    async def drain_one(target: Target) -> None:
        nonlocal cancelled
        cancelled += await target.drain(timeout)

    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(drain_one, target)
    return cancelled
