"""A deployed service: its active targets, round-robin choice, and the pause gate."""

from __future__ import annotations

import attrs
import trio

from kproxy.core.options import DEFAULT_PAUSE_TIMEOUT, DeploymentOptions
from kproxy.core.pages import ErrorPages
from kproxy.core.states import ServiceState
from kproxy.errors import NoHealthyTargets, PauseExpired, ServiceUnavailable
from kproxy.runtime.target import Target


@attrs.define(eq=False)
class Service:
    name: str
    options: DeploymentOptions
    targets: list[Target]
    state: ServiceState = ServiceState.RUNNING
    message: str = ""  # shown on the 503 page while stopped
    max_pause: float = DEFAULT_PAUSE_TIMEOUT
    # Set while running; a new event replaces it on every pause or stop.
    _running: trio.Event = attrs.field(factory=trio.Event)
    _next: int = 0
    removed: bool = False  # set by close(); routing no longer reaches the service
    # --error-pages, read and parsed at deploy; replaced with the targets at the cutover.
    pages: ErrorPages = attrs.field(factory=ErrorPages, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.state is ServiceState.RUNNING:
            self._running.set()

    def replace_targets(self, options: DeploymentOptions, targets: list[Target]) -> list[Target]:
        """The cutover: one assignment, so every request after it sees the new targets."""
        old, self.targets, self.options = self.targets, targets, options
        return old

    def choose_target(self) -> Target:
        """Round robin over the healthy targets."""
        targets = self.targets
        for offset in range(len(targets)):
            target = targets[(self._next + offset) % len(targets)]
            if target.healthy:
                self._next = (self._next + offset + 1) % len(targets)
                return target
        raise NoHealthyTargets(f"service {self.name} has no healthy target")

    @property
    def running(self) -> bool:
        return self.state is ServiceState.RUNNING

    def is_health_check(self, method: bytes, path: str) -> bool:
        return method in (b"GET", b"HEAD") and path == self.options.target.health_check_path

    async def admit(self) -> None:
        """Wait while paused (at most max-pause); raise while stopped or once removed."""
        while self.state is not ServiceState.RUNNING or self.removed:
            if self.removed:
                raise NoHealthyTargets(f"service {self.name} was removed")
            if self.state is ServiceState.STOPPED:
                raise ServiceUnavailable(self.message)
            with trio.move_on_after(self.max_pause):
                await self._running.wait()
                continue
            raise PauseExpired(f"service {self.name} stayed paused for longer than max-pause")

    def pause(self, max_pause: float) -> None:
        self._hold(ServiceState.PAUSED)
        self.max_pause = max_pause

    def stop(self, message: str) -> None:
        self._hold(ServiceState.STOPPED)
        self.message = message

    def resume(self) -> None:
        self.state = ServiceState.RUNNING
        self.message = ""
        self._running.set()

    def close(self) -> None:
        """The service was removed: requests held by a pause get 503 now, not at max-pause."""
        self.removed = True
        self._running.set()

    def _hold(self, state: ServiceState) -> None:
        # Wake the requests held by an earlier pause so they look at the new state: a stop
        # answers them 503 at once (the newest command wins), a new pause holds them again.
        self._running.set()
        self._running = trio.Event()
        self.state = state

    async def wait_idle(self, timeout: float) -> bool:
        """Let in-flight requests finish (pause and stop), without cancelling any."""
        with trio.move_on_after(timeout):
            for target in list(self.targets):
                await target.wait_idle(timeout)
        return all(t.inflight_count == 0 for t in self.targets)
