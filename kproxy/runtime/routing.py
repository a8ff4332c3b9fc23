"""The routing table: services by name, the current ServiceMap, and the changes that make it.

:class:`Routing` is what the router's commands (runtime/router.py, runtime/rollouts.py) and a
worker's replica (runtime/worker.py) share: they build target groups with
:meth:`Routing.target_set`, route to them with :meth:`Routing.cut_over` (or
:meth:`Routing.cut_over_all`, many services in one change: a restore, a worker's first
state) and stop with :meth:`Routing.withdraw`. None of these awaits: requests read
``service_map`` once and see the old routing or the new, never a mix.

Costs: a change costs what it changes, plus one copy of the map's per-host dict and one pass
over the services for the TLS policies of path-prefix services, so n services restored at
once, or deployed one after another, cost O(n) each time rather than O(n) per service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from kproxy.core.options import DeploymentOptions
from kproxy.core.pages import ErrorPages
from kproxy.core.service_map import Route, ServiceMap
from kproxy.core.states import TargetHealth
from kproxy.core.tls_rules import inherits_tls, policy_for, root_host
from kproxy.errors import ServiceNotFound
from kproxy.runtime.certificates import CertificateSource, Targets
from kproxy.runtime.check_timer import CheckTimer
from kproxy.runtime.health import KeptChecks
from kproxy.runtime.log import Logger
from kproxy.runtime.pages import BUILTIN_PAGES
from kproxy.runtime.pool import Connector, open_tcp
from kproxy.runtime.service import Service
from kproxy.runtime.target import Target
from kproxy.runtime.target_set import HealthCheck, TargetSet


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


@attrs.frozen
class Cutover:
    """One service's new main group and what comes with it, for :meth:`Routing.cut_over_all`."""

    name: str
    options: DeploymentOptions
    targets: TargetSet
    pages: ErrorPages = BUILTIN_PAGES
    certificates: CertificateSource | None = None


@attrs.define(eq=False)
class Routing:
    """Services and the map that routes to them (see the module doc)."""

    logger: Logger
    services: dict[str, Service] = attrs.field(factory=dict, kw_only=True)
    service_map: ServiceMap = attrs.field(factory=ServiceMap.empty, kw_only=True)
    # Set in the supervisor of ``run --workers N``: the workers serve; this router decides.
    replicas: Replicas | None = attrs.field(default=None, kw_only=True)
    # Each target's checks keep a connection (tests script the checks instead).
    health_check: HealthCheck = attrs.field(factory=KeptChecks, kw_only=True)
    connector: Connector = attrs.field(default=open_tcp, kw_only=True)  # tests: in memory
    # What the target sets' checks sleep on (runtime/check_timer.py); the router gives it
    # its nursery.
    check_timer: CheckTimer = attrs.field(factory=CheckTimer, kw_only=True)

    def route(self, host: str, path: str) -> tuple[Service, Route] | None:
        route = self.service_map.lookup(host, path)
        if route is None:
            return None
        return self.services[route.service], route

    def get(self, name: str) -> Service:
        """Service ``name``.

        Raises:
            ServiceNotFound: it is not deployed (the message lists those that are).
        """
        service = self.services.get(name)
        if service is None:
            known = ", ".join(sorted(self.services)) or "none"
            raise ServiceNotFound(f"service {name!r} is not deployed (deployed: {known})")
        return service

    def addresses(self, name: str) -> Targets:
        """The service's target addresses when asked (for an on-demand URL that is a path)."""
        return lambda: (
            [t.name for t in self.services[name].targets] if name in self.services else []
        )

    def target_set(self, name: str, targets: list[Target]) -> TargetSet:
        """A target group of service ``name``; the router runs it (``nursery.start(set.run)``),
        a worker does not (its health is the supervisor's)."""
        return TargetSet(
            name,
            targets,
            self.logger,
            check=self.health_check,
            on_change=self.publish,
            remote_drain=self.replicas.drain if self.replicas is not None else None,
            timer=self.check_timer,
        )

    def cut_over(
        self,
        name: str,
        options: DeploymentOptions,
        targets: TargetSet,
        pages: ErrorPages = BUILTIN_PAGES,
        certificates: CertificateSource | None = None,
    ) -> TargetSet | None:
        """Route ``name`` to ``targets``, making the service if new; returns the group it
        replaced. No await: requests see the old service or the new, never a mix."""
        return self.cut_over_all([Cutover(name, options, targets, pages, certificates)])[0]

    def cut_over_all(self, cutovers: Sequence[Cutover]) -> list[TargetSet | None]:
        """:meth:`cut_over` for each of ``cutovers`` (distinct services), in one change of
        the routing table; returns the group each replaced."""
        if not cutovers:
            return []
        service_map = self.service_map.with_services(
            (c.name, c.options.service.hosts, c.options.service.path_prefixes) for c in cutovers
        )
        replaced: list[TargetSet | None] = []
        for cutover in cutovers:
            service = self.services.get(cutover.name)
            if service is None:
                service = Service(cutover.name, cutover.options, cutover.targets)
                self.services[cutover.name] = service
                replaced.append(None)
            else:
                replaced.append(service.replace_active(cutover.options, cutover.targets))
            service.pages = cutover.pages
            service.certificates = cutover.certificates
        self.service_map = service_map
        self.sync_tls(c.name for c in cutovers)
        return replaced

    def withdraw(self, name: str) -> Service:
        """Stop routing to service ``name`` (a remove); its targets are the caller's to drain."""
        service = self.get(name)
        del self.services[name]
        self.service_map = self.service_map.without_service(name)
        self.sync_tls(())
        service.close()
        return service

    def sync_tls(self, changed: Iterable[str] | None = None) -> None:
        """Each service's TLS policy after a routing change to ``changed`` (None: any): a
        path-prefix service follows the root service of its host (kamal-proxy's
        syncTLSOptionsFromRootDomain), any other has its own, which only its own change moves."""
        names = None if changed is None else set(changed)
        for service in self.services.values():
            options = service.options.service
            if not inherits_tls(options):
                if names is None or service.name in names:
                    service.tls = policy_for(options, None)
                continue
            routed = self.route(root_host(options), "/")
            service.tls = policy_for(options, routed[0].options.service if routed else None)

    def publish(self) -> None:
        """Send the state to the workers, if any (after every change, with no await between)."""
        if self.replicas is not None:
            self.replicas.publish()

    async def sync(self) -> None:
        """Wait until every worker, if any, applied what was published."""
        if self.replicas is not None:
            await self.replicas.sync()

    def close_nowait(self) -> None:
        """Release every pooled upstream connection (the proxy is stopping)."""
        for service in self.services.values():
            for target in service.all_targets:
                target.pool.close_nowait()


def new_targets(
    options: DeploymentOptions, connector: Connector = open_tcp, *, healthy: bool = False
) -> list[Target]:
    """A deploy's targets, writers then readers: checked before they serve, or, restored,
    serving at once."""
    targets = [Target(a, options.target, connector=connector) for a in options.addresses]
    targets += [
        Target(a, options.target, connector=connector, read_only=True)
        for a in options.read_addresses
    ]
    if healthy:
        for target in targets:
            target.set_health(TargetHealth.HEALTHY)
    return targets
