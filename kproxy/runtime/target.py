"""One target of a service: health, its connection pool, and the requests it is serving.

Its health checks and its place in a balancer belong to its group: runtime/target_set.py.
"""

from __future__ import annotations

import itertools
import time

import attrs
import trio

from kproxy.core.addresses import Address
from kproxy.core.options import TargetOptions
from kproxy.core.states import TargetHealth
from kproxy.runtime.pool import ConnectionPool, Connector, open_tcp

# Target identities, unique in the process: worker replicas (--workers) name targets by them.
_serials = itertools.count(1)


@attrs.define(eq=False)
class Target:
    address: Address
    options: TargetOptions
    health: TargetHealth = TargetHealth.ADDING
    last_check: str = "not checked yet"  # the latest health check's outcome, for progress
    health_since: float = attrs.field(factory=time.time)  # wall clock (metrics): last change
    pool: ConnectionPool = attrs.field(init=False)
    _inflight: set[trio.CancelScope] = attrs.field(factory=set)
    _upgraded: set[trio.CancelScope] = attrs.field(factory=set)
    # Set when the last request in flight ends; made only by a waiter (wait_idle), not by
    # every request that finds the target idle.
    _idle: trio.Event | None = None
    serial: int = attrs.field(factory=lambda: next(_serials), kw_only=True)
    connector: Connector = attrs.field(default=open_tcp, kw_only=True)  # tests: in memory
    read_only: bool = attrs.field(default=False, kw_only=True)  # a --read-target
    name: str = attrs.field(init=False)  # host:port, spelled once: every request logs it

    def __attrs_post_init__(self) -> None:
        self.pool = ConnectionPool(self.address, connector=self.connector)
        self.name = str(self.address)

    @property
    def healthy(self) -> bool:
        return self.health is TargetHealth.HEALTHY

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    def set_health(self, health: TargetHealth) -> bool:
        """Record a new health state; returns whether it changed (a draining target stays so).

        Its target set calls this (``TargetSet.set_health``), keeping its balancer in step."""
        if self.health is TargetHealth.DRAINING or health is self.health:
            return False
        self.health = health
        self.health_since = time.time()
        return True

    def track(self, scope: trio.CancelScope) -> _Tracked:
        """Count a request as in flight while in the ``with``; the drain cancels ``scope``
        (the one the request runs in) if it overstays."""
        return _Tracked(self, scope)

    def begin(self, scope: trio.CancelScope) -> None:
        """A request in ``scope`` is in flight (``track`` is the ``with`` form); ``end`` must
        follow."""
        self._inflight.add(scope)

    def end(self, scope: trio.CancelScope) -> None:
        self._inflight.discard(scope)
        self._upgraded.discard(scope)
        if not self._inflight and self._idle is not None:
            self._idle.set()
            self._idle = None

    def mark_upgraded(self, scope: trio.CancelScope) -> None:
        """A WebSocket (or other upgrade) now lives in this scope: the drain closes it at once."""
        self._upgraded.add(scope)
        if self.health is TargetHealth.DRAINING:
            scope.cancel()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight, at most ``timeout`` seconds; True if idle."""
        with trio.move_on_after(timeout):
            if not self._inflight:
                await trio.lowlevel.checkpoint()
            else:
                if self._idle is None:
                    self._idle = trio.Event()
                await self._idle.wait()
        return not self._inflight

    async def drain(self, timeout: float) -> int:
        """Stop taking requests, let in-flight ones finish, then cancel the rest.

        Upgraded connections are closed at the start: they may last for hours. Returns how many
        requests were cancelled when the deadline passed.
        """
        self.health = TargetHealth.DRAINING  # its set has stopped checking it
        for scope in self._upgraded:
            scope.cancel()
        cancelled = 0
        try:
            if not await self.wait_idle(timeout):
                cancelled = len(self._inflight)
                for scope in self._inflight:
                    scope.cancel()
        finally:
            self.pool.close_nowait()
        return cancelled


@attrs.define(eq=False)
class _Tracked:
    """``Target.track()``: a class, not a generator, since it wraps every request."""

    target: Target
    scope: trio.CancelScope

    def __enter__(self) -> None:
        self.target.begin(self.scope)

    def __exit__(self, *exc_info: object) -> None:
        self.target.end(self.scope)
