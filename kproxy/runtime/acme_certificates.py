"""Automatic certificates for the whole proxy: the HTTP-01 tokens, one ``AcmeManager`` per
(directory, cache), the on-demand checks, and the ``CertificateSource`` of an ACME service.

One :class:`AcmeCertificates` per proxy process that serves (``kproxy run --workers 1``,
embedding). A deploy makes an :class:`AcmeSource` without any network access; the manager of
its (directory URL, cache root) is started in the proxy's nursery then (it reads the cache,
makes the account key if there is none, and renews in the background), and the first
handshake for an allowed name awaits ``AcmeManager.certificate(name)``: concurrent handshakes
share the manager's one order. Allowed names are the service's ``--host`` values and, with
``--tls-on-demand-url``, any name for which ``GET <url>?host=<name>`` answers 200 (asked once
per name per ``ON_DEMAND_TTL``, within ``ON_DEMAND_TIMEOUT``). SSL contexts are cached per
certificate (its ``not_after``), so a renewal makes a new one.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final
from urllib.parse import quote

import attrs
import trio

from kproxy.core.acme_challenges import ChallengeTokens
from kproxy.core.acme_problem import AcmeError
from kproxy.core.options import ServiceOptions
from kproxy.errors import CertificateError
from kproxy.runtime.acme_cache import CertificateCache, default_cache_root
from kproxy.runtime.acme_client import LETS_ENCRYPT, LETS_ENCRYPT_STAGING, AcmeClient
from kproxy.runtime.acme_http import HttpsClient, client_ssl_context
from kproxy.runtime.acme_manager import AcmeManager
from kproxy.runtime.certificates import Targets, server_context
from kproxy.runtime.log import Logger

ON_DEMAND_TIMEOUT: Final = 5.0  # seconds for the on-demand URL's answer
ON_DEMAND_TTL: Final = 60.0  # seconds an on-demand answer is reused for a name
NO_CACHE_ROOT: Final = (
    "automatic certificates (--tls without certificate files) need a directory to keep "
    "them in: give --tls-acme-cache-path (this proxy has no state directory)"
)

ManagerKey = tuple[str, str]  # (directory URL, cache root)


@attrs.define(eq=False)
class _Slot:
    """A manager being started, then running: handshakes wait on ``ready``."""

    ready: trio.Event = attrs.field(factory=trio.Event)
    manager: AcmeManager | None = None
    error: str = ""


@attrs.define(eq=False)
class AcmeCertificates:
    """The proxy's automatic certificates (see the module doc).

    Args:
        nursery: where the managers run (the proxy's: they live as long as it does).
        logger: for orders, renewals and on-demand refusals.
        default_directory: the ACME directory of services that name none ("" = Let's Encrypt).
        state_dir: the default cache is ``<state_dir>/certs``; "" = none (embedding without
            a state directory: services must give ``--tls-acme-cache-path``).
        trust: the client context for the CA and the on-demand URL (None: the system store
            plus ``SSL_CERT_FILE``).
    """

    nursery: trio.Nursery
    logger: Logger
    default_directory: str = ""
    state_dir: str = ""
    trust: ssl.SSLContext | None = None
    tokens: ChallengeTokens = attrs.field(factory=ChallengeTokens)
    _slots: dict[ManagerKey, _Slot] = attrs.field(factory=dict, init=False)
    contexts: ContextCache = attrs.field(factory=lambda: ContextCache(), init=False)
    _asked: dict[tuple[str, str], tuple[float, bool]] = attrs.field(factory=dict, init=False)
    _http: HttpsClient | None = attrs.field(default=None, init=False)

    def directory_for(self, options: ServiceOptions) -> str:
        """The service's directory: its own, else staging, else the run's, else production."""
        if options.tls_acme_directory:
            return options.tls_acme_directory
        if options.tls_staging:
            return LETS_ENCRYPT_STAGING
        return self.default_directory or LETS_ENCRYPT

    def cache_root_for(self, options: ServiceOptions) -> str:
        """Raises CertificateError: no cache path and no state directory."""
        if options.tls_acme_cache_path:
            return str(Path(options.tls_acme_cache_path).absolute())
        if not self.state_dir:
            raise CertificateError(NO_CACHE_ROOT)
        return str(default_cache_root(Path(self.state_dir).absolute()))

    def source(self, options: ServiceOptions, targets: Targets = list) -> AcmeSource:
        """The source of an ACME service; its manager starts now, in the background.

        Raises:
          CertificateError: nowhere to keep the certificates (see ``cache_root_for``).
        """
        key = (self.directory_for(options), self.cache_root_for(options))
        if key not in self._slots:
            self._slots[key] = _Slot()
            self.nursery.start_soon(self._run_manager, key, self._slots[key])
        hosts = frozenset(options.hosts)
        return AcmeSource(self, key, hosts, options.tls_on_demand_url, targets)

    async def answer(self, target: bytes) -> bytes | None:
        return self.tokens.answer(target)

    def managers(self) -> list[AcmeManager]:
        """The managers running now, one per (directory, cache) in use."""
        return [slot.manager for slot in self._slots.values() if slot.manager is not None]

    def client_context(self) -> ssl.SSLContext:
        if self.trust is None:
            self.trust = client_ssl_context()
        return self.trust

    async def _run_manager(self, key: ManagerKey, slot: _Slot) -> None:
        directory, root = key
        cache = CertificateCache(Path(root), directory)
        try:
            account_key = await cache.account_key()
        except AcmeError as exc:
            slot.error = str(exc)
            self.logger.error("ACME unavailable", directory=directory, error=slot.error)
            slot.ready.set()
            return
        http = HttpsClient(ssl_context=self.client_context())
        client = AcmeClient(directory, account_key, self.tokens, http=http)
        manager = AcmeManager(client, cache, logger=self.logger)
        try:
            slot.manager = await self.nursery.start(manager.serve)
        finally:
            slot.ready.set()

    async def certificate(self, key: ManagerKey, name: str) -> tuple[str, float] | None:
        """The file of ``name``'s certificate (key and chain) from the manager of ``key``,
        and its expiry, ordering it if there is none at hand; None when it cannot be had
        (the failure is logged)."""
        slot = self._slots[key]
        await slot.ready.wait()
        if slot.manager is None:
            return None
        try:
            cert = await slot.manager.certificate(name)
        except AcmeError as exc:
            self.logger.debug("No ACME certificate", host=name, error=str(exc))
            return None
        return str(slot.manager.cache.path(name)), cert.not_after

    async def context(self, key: ManagerKey, name: str) -> ssl.SSLContext | None:
        """:meth:`certificate` as a server context, made once per certificate."""
        found = await self.certificate(key, name)
        return None if found is None else self.contexts.load(*found, logger=self.logger)

    async def allowed(self, url: str, name: str, targets: Targets = list) -> bool:
        """Whether ``GET <url>?host=<name>`` answers 200 (asked at most once per
        ``ON_DEMAND_TTL`` per name; no answer within ``ON_DEMAND_TIMEOUT`` is a no). A ``url``
        that is a path is asked of the service's first target (as kamal-proxy asks the
        service itself)."""
        now = trio.current_time()
        asked = self._asked.get((url, name))
        if asked is not None and now < asked[0]:
            return asked[1]
        if self._http is None:
            self._http = HttpsClient(
                ssl_context=self.client_context(), timeout=ON_DEMAND_TIMEOUT, allow_http=True
            )
        separator = "&" if "?" in url else "?"
        addresses = targets() if url.startswith("/") else [""]
        base = f"http://{addresses[0]}{url}" if url.startswith("/") and addresses else url
        try:
            response = await self._http.request("GET", f"{base}{separator}host={quote(name)}")
            allowed, reason = response.status == 200, f"status {response.status}"
        except AcmeError as exc:
            allowed, reason = False, str(exc)
        if not allowed:
            self.logger.info("TLS on-demand refused", host=name, url=url, reason=reason)
        self._asked[(url, name)] = (trio.current_time() + ON_DEMAND_TTL, allowed)
        return allowed


@attrs.define(eq=False)
class ContextCache:
    """Server contexts of ACME certificate files, one per certificate (path and expiry): a
    renewal makes a new one."""

    _contexts: dict[str, tuple[float, ssl.SSLContext]] = attrs.field(factory=dict)

    def load(self, path: str, not_after: float, *, logger: Logger) -> ssl.SSLContext | None:
        cached = self._contexts.get(path)
        if cached is not None and cached[0] == not_after:
            return cached[1]
        try:
            context = server_context(path, path)
        except CertificateError as exc:
            logger.error("ACME certificate unusable", error=str(exc))
            return None
        self._contexts[path] = (not_after, context)
        return context


@attrs.frozen
class AcmeSource:
    """The ``CertificateSource`` of one ACME service: its hosts, else what its on-demand URL
    allows, from the proxy's manager for its directory and cache."""

    acme: AcmeCertificates
    key: ManagerKey
    hosts: frozenset[str]
    on_demand_url: str = ""
    targets: Targets = list  # the service's target addresses (a path on_demand_url)

    async def context_for(self, server_name: str) -> ssl.SSLContext | None:
        found = await self.certificate(server_name)
        return None if found is None else self.acme.contexts.load(*found, logger=self.acme.logger)

    async def certificate(self, server_name: str) -> tuple[str, float] | None:
        """The certificate file for ``server_name`` and its expiry, if the name is allowed
        and a certificate can be had (a worker of ``--workers N`` asks this of the
        supervisor)."""
        name = server_name.lower().rstrip(".")
        if name not in self.hosts and not (
            self.on_demand_url and await self.acme.allowed(self.on_demand_url, name, self.targets)
        ):
            return None
        return await self.acme.certificate(self.key, name)
