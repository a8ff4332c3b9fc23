"""A deployed service: its target groups, the choice of a target per request, the pause gate.

The shape of kamal-proxy's Service (internal/server/service.go). Today a service has one group,
``active``. Issue 12 adds a ``rollout`` group beside it (chosen per request by the rollout
split, core/rollout.py). A group's read targets get the reads (``choose_target``), and the
response to a write gets the writer-affinity cookie (``writer_affinity``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs
import trio

from kproxy.core.balancer import is_read_request
from kproxy.core.headers import upgrade_type
from kproxy.core.options import DEFAULT_PAUSE_TIMEOUT, DeploymentOptions
from kproxy.core.pages import ErrorPages
from kproxy.core.snapshot import ServiceRecord
from kproxy.core.states import ServiceState
from kproxy.core.tls_rules import NO_TLS, TlsPolicy
from kproxy.core.writer_affinity import has_valid_cookie
from kproxy.errors import NoHealthyTargets, PauseExpired, ServiceUnavailable
from kproxy.runtime.target import Target
from kproxy.runtime.target_set import TargetSet

if TYPE_CHECKING:  # the data path's request head; only its fields are read
    from kproxy.runtime.certificates import CertificateSource
    from kproxy.runtime.exchange import RequestHead


@attrs.define(eq=False)
class Service:
    name: str
    options: DeploymentOptions
    active: TargetSet  # the group requests go to (a rollout group joins it in issue 12)
    state: ServiceState = ServiceState.RUNNING
    message: str = ""  # shown on the 503 page while stopped
    max_pause: float = DEFAULT_PAUSE_TIMEOUT
    # Set while running; a new event replaces it on every pause or stop.
    _running: trio.Event = attrs.field(factory=trio.Event)
    removed: bool = False  # set by close(); routing no longer reaches the service
    # --error-pages, read and parsed at deploy; replaced with the targets at the cutover.
    pages: ErrorPages = attrs.field(factory=ErrorPages, kw_only=True)
    # Its certificates (runtime/certificates.py), loaded at deploy; None: no TLS, or a restored
    # certificate that no longer loads. Replaced with the targets at the cutover.
    certificates: CertificateSource | None = attrs.field(default=None, kw_only=True)
    # How it treats HTTP and HTTPS (core/tls_rules.py): its own TLS options, or those of its
    # host's root service if it serves a path prefix; the router keeps it up to date.
    tls: TlsPolicy = attrs.field(default=NO_TLS, kw_only=True)

    def __attrs_post_init__(self) -> None:
        self._read_websockets()
        if self.state is ServiceState.RUNNING:
            self._running.set()

    @property
    def targets(self) -> list[Target]:
        """The active group's targets, in deploy order."""
        return self.active.targets

    def replace_active(self, options: DeploymentOptions, targets: TargetSet) -> TargetSet:
        """The cutover: one assignment, so every request after it sees the new targets."""
        old, self.active, self.options = self.active, targets, options
        self._read_websockets()
        return old

    def choose_target(self, request: RequestHead) -> Target:
        """Round robin over the active group's healthy targets: with read targets, reads go to
        them and the rest to the writers (core/balancer.py ReadWriteBalancer)."""
        active = self.active
        if not active.has_readers:
            target = active.balancer.writers.choose()
        else:
            target = active.balancer.choose(
                request.method,
                _is_websocket(request),
                has_valid_cookie(request.headers, time.time()),
            )
        if target is None:
            raise NoHealthyTargets(f"service {self.name} has no healthy target")
        return target

    def writer_affinity(self, request: RequestHead) -> float | None:
        """The ``kamal-writer`` cookie's lifetime for the response to ``request``, or None when
        it gets none (core/writer_affinity.py). Asked only when ``active.has_readers``."""
        timeout = self.options.service.writer_affinity_timeout
        if timeout <= 0 or is_read_request(
            request.method, _is_websocket(request), self.options.service.read_target_websockets
        ):
            return None
        return timeout

    def _read_websockets(self) -> None:
        self.active.balancer.read_websockets = self.options.service.read_target_websockets

    def record(self) -> ServiceRecord:
        """What the state file keeps of the service (and what workers are sent)."""
        return ServiceRecord(self.name, self.options, self.state, self.message, self.max_pause)

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

    def follow(self, state: ServiceState, message: str, max_pause: float) -> None:
        """Take on a saved or published state (restore, and workers following the supervisor)."""
        if (state, message, max_pause) == (self.state, self.message, self.max_pause):
            return
        if state is ServiceState.RUNNING:
            self.resume()
        elif state is ServiceState.PAUSED:
            self.pause(max_pause)
        else:
            self.stop(message)

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
        return await self.active.wait_idle(timeout)


def _is_websocket(request: RequestHead) -> bool:
    """kamal-proxy's isWebSocketRequest: a GET asking to upgrade to ``websocket``."""
    if request.method != b"GET":
        return False
    upgrade = upgrade_type(request.headers)
    return upgrade is not None and upgrade.lower() == b"websocket"
