"""Certificates by name from one ACME directory: the cache first, else an order, renewed in
the background. This is what an ACME ``CertificateSource`` (the TLS listener's seam) asks.

- ``certificate(name)`` answers at once with a cached certificate that has not expired, even
  one due for renewal (the renewal runs in the background, so no handshake waits for it);
  otherwise it orders one, and concurrent callers for the same name share that one order.
  The order runs in the manager's own nursery, so a handshake that gives up does not cancel
  it: the next handshake gets the result.
- A failing name backs off exponentially (``core/acme_renewal``): while it waits, callers get
  the last failure at once and the CA is not asked. Each failure is logged with the CA's
  problem document.
- ``serve`` reads the cache (so a restart while the CA is unreachable serves what it had),
  reports itself started, then checks renewals every ``check_interval``: 30 days before
  expiry, or inside the CA's ARI window (RFC 9773) when the directory offers renewalInfo.

Times are wall-clock POSIX seconds (``clock``): certificate validity is wall-clock time.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Final

import attrs
import trio

from kproxy.core.acme_certificate import IssuedCertificate
from kproxy.core.acme_problem import AcmeError
from kproxy.core.acme_renewal import Backoff, RenewalWindow, after_failure, is_due
from kproxy.runtime.acme_cache import CertificateCache
from kproxy.runtime.acme_client import AcmeClient
from kproxy.runtime.log import Logger

CHECK_INTERVAL: Final = 600.0  # seconds between renewal checks


class AcmeBackoff(AcmeError):
    """A name whose recent orders failed is waiting before the next; the message says until
    when and why the last one failed."""


@attrs.define(eq=False)
class _Order:
    """One order in flight for a name: callers wait on ``done``, then read the outcome."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: IssuedCertificate | None = None
    error: AcmeError | None = None


@attrs.define(eq=False)
class _Ari:
    """A certificate's renewal information: the window (None: the CA gave none), when to ask
    again, and where in the window this certificate renews (RFC 9773 §4.2)."""

    window: RenewalWindow | None
    poll_at: float
    fraction: float


@attrs.define(eq=False)
class AcmeManager:
    """The certificates of one ACME directory (one client, one cache).

    Args:
        client: the ACME client for the directory.
        cache: the directory's cache (``CertificateCache(root, client.directory_url)``).
        logger: where failures and renewals are logged.
        clock: wall-clock POSIX time.
        check_interval: seconds between renewal checks.
    """

    client: AcmeClient
    cache: CertificateCache
    logger: Logger = attrs.field(factory=Logger)
    clock: Callable[[], float] = time.time
    check_interval: float = CHECK_INTERVAL
    _certificates: dict[str, IssuedCertificate] = attrs.field(factory=dict, init=False)
    _orders: dict[str, _Order] = attrs.field(factory=dict, init=False)
    _backoff: dict[str, Backoff] = attrs.field(factory=dict, init=False)
    _ari: dict[str, _Ari] = attrs.field(factory=dict, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    async def serve(
        self, *, task_status: trio.TaskStatus[AcmeManager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the cache, then order and renew until cancelled."""
        self._certificates.update(self.cache.read_all())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            try:
                while True:
                    await self.renew_due()
                    await trio.sleep(self.check_interval)
            finally:
                self._nursery = None

    def cached(self, name: str) -> IssuedCertificate | None:
        """``name``'s certificate if one is at hand and has not expired; never waits."""
        cert = self._certificates.get(name.lower())
        return cert if cert is not None and self.clock() < cert.not_after else None

    async def certificate(self, name: str) -> IssuedCertificate:
        """A certificate for ``name``: the one at hand, else a new one (see the module doc).

        Raises:
            AcmeBackoff: the name failed recently and is waiting before its next order.
            AcmeError: the order failed (an ``AcmeProblem`` carries the CA's problem).
        """
        name = name.lower()
        cert = self.cached(name)
        if cert is not None:
            return cert
        order = self._start_order(name)
        await order.done.wait()
        if order.error is not None:
            raise order.error
        assert order.result is not None
        return order.result

    async def renew_due(self) -> list[str]:
        """One renewal pass: start an order for each certificate that is due (and not backing
        off) and wait for them; returns the names renewed."""
        due = []
        for name, cert in list(self._certificates.items()):
            ari = await self._renewal_info(name, cert)
            window, fraction = (ari.window, ari.fraction) if ari else (None, 0.0)
            if is_due(cert, self.clock(), window, fraction) and name not in self._orders:
                due.append(name)
        renewed = []
        for name in due:
            backoff = self._backoff.get(name)
            if backoff is not None and not backoff.allows(self.clock()):
                continue
            order = self._start_order(name, replaces=self._certificates[name].ari_id)
            await order.done.wait()
            if order.result is not None:
                renewed.append(name)
        return renewed

    def _start_order(self, name: str, replaces: str | None = None) -> _Order:
        order = self._orders.get(name)
        if order is not None:
            return order  # share the order in flight
        order = _Order()
        backoff = self._backoff.get(name)
        if backoff is not None and not backoff.allows(self.clock()):
            order.error = AcmeBackoff(
                f"{name}: {backoff.failures} failed order(s), next attempt in "
                f"{math.ceil(backoff.next_attempt - self.clock())} s; last: {backoff.last_error}"
            )
            order.done.set()
            return order
        if self._nursery is None:
            raise AcmeError("the ACME manager is not running (start it with nursery.start)")
        self._orders[name] = order
        self._nursery.start_soon(self._order, name, order, replaces)
        return order

    async def _order(self, name: str, order: _Order, replaces: str | None) -> None:
        try:
            cert = await self.client.obtain([name], replaces=replaces)
            await self.cache.write(name, cert)
        except AcmeError as exc:
            backoff = after_failure(self._backoff.get(name), self.clock(), str(exc))
            self._backoff[name] = backoff
            self.logger.error(
                "ACME order failed", host=name, error=str(exc), failures=backoff.failures,
                retry_in=round(backoff.next_attempt - self.clock()),
            )  # fmt: skip
            order.error = exc
        else:
            self._backoff.pop(name, None)
            self._ari.pop(name, None)
            self._certificates[name] = cert
            self.logger.info("ACME certificate obtained", host=name, not_after=cert.not_after)
            order.result = cert
        finally:
            self._orders.pop(name, None)
            order.done.set()

    async def _renewal_info(self, name: str, cert: IssuedCertificate) -> _Ari | None:
        ari = self._ari.get(name)
        if ari is not None and self.clock() < ari.poll_at:
            return ari
        try:
            answer = await self.client.renewal_info(cert)
        except AcmeError as exc:
            self.logger.warning("ACME renewalInfo unavailable", host=name, error=str(exc))
            return ari  # the last window we had, if any; else 30 days before expiry
        if answer is None:
            return None  # the CA offers no ARI
        window, poll_at = answer
        fraction = ari.fraction if ari is not None else random.random()
        self._ari[name] = _Ari(window, poll_at, fraction)
        return self._ari[name]
