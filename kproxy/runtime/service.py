"""A deployed service: its target groups, the choice of a target per request, the pause gate.

The shape of kamal-proxy's Service (internal/server/service.go). A service has its main group,
``active``, and during a rollout a ``rollout`` group beside it (``rollout deploy``), which gets
the requests the ``split`` sends it (``rollout set``, core/rollout.py) and no others. Inside
the group chosen, its read targets get the reads (``choose_target``), and the response to a
write gets the writer-affinity cookie (``writer_affinity``).

Rule: ``split`` is None whenever ``rollout`` is (the data path checks ``split`` alone).
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
from kproxy.core.rollout import RolloutSplit
from kproxy.core.snapshot import RolloutRecord, ServiceRecord
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
    active: TargetSet  # the main group: every request the rollout split does not take
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
    # The rollout group, what its ``rollout deploy`` said, and the split (see the module doc).
    rollout: TargetSet | None = attrs.field(default=None, kw_only=True)
    rollout_options: DeploymentOptions | None = attrs.field(default=None, kw_only=True)
    split: RolloutSplit | None = attrs.field(default=None, kw_only=True)
    # Whether either group has read targets: the one check the data path makes for them.
    has_readers: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        self._groups_changed()
        if self.state is ServiceState.RUNNING:
            self._running.set()

    @property
    def targets(self) -> list[Target]:
        """The active group's targets, in deploy order."""
        return self.active.targets

    @property
    def all_targets(self) -> list[Target]:
        """Both groups' targets: the active group's, then the rollout group's."""
        rollout = self.rollout.targets if self.rollout is not None else []
        return self.active.targets + rollout

    def replace_active(self, options: DeploymentOptions, targets: TargetSet) -> TargetSet:
        """The cutover: one assignment, so every request after it sees the new targets. A
        rollout group stays, with its split (as kamal-proxy's deploy keeps it)."""
        old, self.active, self.options = self.active, targets, options
        self._groups_changed()
        return old

    def replace_rollout(
        self,
        targets: TargetSet | None,
        options: DeploymentOptions | None,
        split: RolloutSplit | None = None,
    ) -> tuple[TargetSet | None, DeploymentOptions | None, RolloutSplit | None]:
        """Install a rollout group (None: none) and its split; returns what it replaced, so a
        failed save can put it back. No await, like ``replace_active``."""
        old = self.rollout, self.rollout_options, self.split
        self.rollout, self.rollout_options = targets, options
        self.split = split if targets is not None else None
        self._groups_changed()
        return old

    def group_for(self, request: RequestHead) -> TargetSet:
        """The group a request goes to: the rollout group if the split takes it."""
        split = self.split
        if (
            split is not None
            and self.rollout is not None
            and split.chooses_rollout(request.headers)
        ):
            return self.rollout
        return self.active

    def choose_target(self, request: RequestHead) -> Target:
        """Round robin over the chosen group's healthy targets: with read targets, reads go to
        them and the rest to the writers (core/balancer.py ReadWriteBalancer)."""
        group = self.active if self.split is None else self.group_for(request)
        if not group.has_readers:
            target = group.balancer.writers.choose()
        else:
            target = group.balancer.choose(
                request.method,
                _is_websocket(request),
                has_valid_cookie(request.headers, time.time()),
            )
        if target is None:
            raise NoHealthyTargets(f"service {self.name} has no healthy target")
        return target

    def writer_affinity(self, request: RequestHead) -> float | None:
        """The ``kamal-writer`` cookie's lifetime for the response to ``request``, or None when
        it gets none (core/writer_affinity.py). Asked only when ``has_readers``."""
        timeout = self.options.service.writer_affinity_timeout
        if (
            timeout <= 0
            or is_read_request(
                request.method, _is_websocket(request), self.options.service.read_target_websockets
            )
            or not self.group_for(request).has_readers
        ):
            return None
        return timeout

    def _groups_changed(self) -> None:
        websockets = self.options.service.read_target_websockets
        self.active.balancer.read_websockets = websockets
        self.has_readers = self.active.has_readers
        if self.rollout is not None:
            self.rollout.balancer.read_websockets = websockets
            self.has_readers = self.has_readers or self.rollout.has_readers

    def record(self) -> ServiceRecord:
        """What the state file keeps of the service (and what workers are sent)."""
        rollout = None
        if self.rollout_options is not None:
            rollout = RolloutRecord.of(self.rollout_options, self.split)
        return ServiceRecord(
            self.name, self.options, self.state, self.message, self.max_pause, rollout
        )

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
        with trio.move_on_after(timeout):  # one deadline for both groups
            for group in (self.active, self.rollout):
                if group is not None:
                    await group.wait_idle(timeout)
        return all(t.inflight_count == 0 for t in self.all_targets)


def _is_websocket(request: RequestHead) -> bool:
    """kamal-proxy's isWebSocketRequest: a GET asking to upgrade to ``websocket``."""
    if request.method != b"GET":
        return False
    upgrade = upgrade_type(request.headers)
    return upgrade is not None and upgrade.lower() == b"websocket"
