"""One deploy (or remove) of a service at a time: a command queued behind another says at once
what it waits for, and its wait counts against its own deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from kproxy.errors import DeployTimeout


@attrs.define(eq=False)
class ServiceLocks:
    _locks: dict[str, trio.Lock] = attrs.field(factory=dict)
    _holders: dict[str, str] = attrs.field(factory=dict)  # what holds each lock, for progress

    @asynccontextmanager
    async def hold(
        self,
        name: str,
        what: str,
        progress: Callable[[str], Awaitable[None]],
        deadline: float = float("inf"),
    ) -> AsyncIterator[None]:
        """Hold service ``name`` for ``what`` (e.g. ``deploy to 10.0.0.1:80``).

        Raises:
            DeployTimeout: the command holding it did not finish by ``deadline`` (trio time);
                nothing was done.
        """
        lock = self._locks.setdefault(name, trio.Lock())
        if lock.locked():
            holder = self._holders.get(name, "command")
            await progress(f"{name}: waiting for the {holder} in progress to finish")
        with trio.move_on_at(deadline) as wait:
            await lock.acquire()  # a cancelled acquire leaves the lock to its holder
        if wait.cancelled_caught:
            raise DeployTimeout(
                f"{name}: the {self._holders.get(name, 'command')} in progress did not finish "
                f"in time; nothing changed"
            )
        self._holders[name] = what
        try:
            yield
        finally:
            self._holders.pop(name, None)
            lock.release()
