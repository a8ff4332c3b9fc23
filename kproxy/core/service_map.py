"""Which service serves a request: exact host, then ``*.`` wildcard, then default; then path.

Mirrors kamal-proxy's internal/server/service_map.go. Each service binds every pair of
(host, path prefix) it was deployed with; a service without hosts binds the default host
``""`` and one without prefixes binds ``/``. A request picks the FIRST host level that has
any bindings (exact, then the wildcard one label up, then the default) and within it the
longest prefix that matches on a segment boundary; if none matches, the answer is 404 and the
lower levels are not consulted. The map is an immutable value: the router makes a changed copy
on each deploy or remove (costing the hosts it changes, not every service's routes) and swaps
it in one assignment, so lookups need no locks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

# The names' own rules are in core/route_names.py; these are here for the modules that
# import them from the routing table.
from kproxy.core.route_names import ROOT_PATH as ROOT_PATH
from kproxy.core.route_names import canonical_ipv6
from kproxy.core.route_names import normalize_host as normalize_host
from kproxy.core.route_names import normalize_path_prefix as normalize_path_prefix

DEFAULT_HOST: Final = ""  # the key of services deployed without --host


@attrs.frozen
class Route:
    """Where a request goes: the service, and the prefix it matched (to strip if asked)."""

    service: str
    path_prefix: str


@attrs.frozen
class Conflict:
    """A (host, path prefix) pair that another service already serves; host "" is the default."""

    host: str
    path_prefix: str
    service: str


def request_host(header: bytes | None) -> str:
    """The host of an incoming ``Host`` header, lowercased, without port or IPv6 brackets.

    Like Go's ``net.SplitHostPort`` as service_map.go uses it, a value that does not split
    (``a:b:c``, ``:80``) is kept whole and simply finds no exact binding.
    """
    if not header:
        return DEFAULT_HOST
    host = header.decode("latin-1").lower()  # h11 has validated it; latin-1 cannot fail
    if host.startswith("["):
        end = host.find("]")
        return (canonical_ipv6(host[1:end]) or host[1:end]) if end > 0 else host
    colon = host.find(":")
    if colon > 0 and host.find(":", colon + 1) < 0:
        return host[:colon]
    if colon >= 0:
        return canonical_ipv6(host) or host  # a bare IPv6 literal, which RFC 9110 does not allow
    return host


# RFC 3986 §3.1 scheme, "://", then the authority up to the path, query or end.
_ABSOLUTE_FORM: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)(.*)", re.DOTALL)


def absolute_form(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """An absolute-form request target (``http://other.example/path?q``) as the origin-form
    target and headers to route and forward by, or None for any other form.

    RFC 9112 §3.2.2: the target's authority replaces the ``Host`` header, as Go's server does
    (``Request.Host`` is the URL's host when it has one). The scheme is not looked at, as in
    Go: it decides neither the listener nor the redirect to HTTPS. Userinfo is dropped; an
    empty authority (``http:///p``) keeps the ``Host`` header. ``*`` (OPTIONS) and authority
    form (``host:port``, CONNECT) are not absolute form. Callers check ``target[:1] != b"/"``
    first, so origin-form requests (nearly all) never reach this.
    """
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        return None
    authority = match[1].rpartition(b"@")[2]
    rest = match[2]
    origin = rest if rest.startswith(b"/") else b"/" + rest  # "" or "?q" → "/", "/?q"
    if not authority:
        return origin, headers
    # The authority takes the first Host field's place; any other Host field is dropped.
    out: list[tuple[bytes, bytes]] = []
    swapped = False
    for name, value in headers:
        if name != b"host":
            out.append((name, value))
        elif not swapped:
            out.append((b"host", authority))
            swapped = True
    return origin, out if swapped else [(b"host", authority), *out]


def _normalize_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    # An explicit "" binds the default host, as kamal-proxy's NormalizeHosts allows.
    unique = dict.fromkeys(normalize_host(h) if h else DEFAULT_HOST for h in hosts)
    return tuple(unique) or (DEFAULT_HOST,)


def _normalize_prefixes(path_prefixes: Sequence[str]) -> tuple[str, ...]:
    unique = dict.fromkeys(normalize_path_prefix(p) for p in path_prefixes)
    return tuple(unique) or (ROOT_PATH,)


def _with_slash(path: str) -> str:
    """EnsureTrailingSlash: comparing "/api/" prefixes keeps "/apix" out of "/api"."""
    return path if path.endswith("/") else path + "/"


@attrs.frozen
class _Binding:
    service: str
    hosts: tuple[str, ...]
    path_prefixes: tuple[str, ...]

    def entries(self) -> list[_Entry]:
        # "" for the root so it matches any path, even "*" or an empty one.
        return [
            ("" if prefix == ROOT_PATH else _with_slash(prefix), Route(self.service, prefix))
            for prefix in self.path_prefixes
        ]


_Entry = tuple[str, Route]  # (prefix to match, with a trailing slash; route), longest first
# The services to bind: name, hosts, path prefixes (as given to ServiceMap.with_service).
ServiceRoutes = tuple[str, Sequence[str], Sequence[str]]


def _entry_order(entry: _Entry) -> tuple[int, str]:
    # Longest prefix first; on a duplicate pair the service whose name sorts first wins.
    return -len(entry[0]), entry[1].service


def _binding(name: str, hosts: Sequence[str], path_prefixes: Sequence[str]) -> _Binding:
    return _Binding(name, _normalize_hosts(hosts), _normalize_prefixes(path_prefixes))


@attrs.frozen
class ServiceMap:
    """An immutable routing table from (host, path) to service; change it by making a copy.

    Build with ``ServiceMap.empty().with_services(...)`` or ``with_service``. A copy shares
    what did not change: a change costs the hosts it touches plus one dict copy, not a
    rebuild of every service's routes. Equal bindings compare equal whatever the build order.
    """

    _bindings: frozenset[_Binding] = frozenset()
    # Derived from _bindings: by service name, and host → entries, longest prefix first.
    _by_service: dict[str, _Binding] = attrs.field(init=False, eq=False, repr=False)
    _routes: dict[str, tuple[_Entry, ...]] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        table: dict[str, list[_Entry]] = {}
        for binding in self._bindings:
            entries = binding.entries()
            for host in binding.hosts:
                table.setdefault(host, []).extend(entries)
        routes = {host: tuple(sorted(e, key=_entry_order)) for host, e in table.items()}
        self._derive({b.service: b for b in self._bindings}, routes)

    def _derive(
        self, by_service: dict[str, _Binding], routes: dict[str, tuple[_Entry, ...]]
    ) -> None:
        object.__setattr__(self, "_by_service", by_service)  # attrs' way for frozen classes
        object.__setattr__(self, "_routes", routes)

    @classmethod
    def _copy(
        cls, by_service: dict[str, _Binding], routes: dict[str, tuple[_Entry, ...]]
    ) -> ServiceMap:
        """A map whose derived tables are handed over, not rebuilt (see _replaced)."""
        made = object.__new__(cls)
        object.__setattr__(made, "_bindings", frozenset(by_service.values()))
        made._derive(by_service, routes)
        return made

    @classmethod
    def empty(cls) -> ServiceMap:
        """A map with no services: every lookup is None."""
        return cls()

    def with_service(
        self, name: str, hosts: Sequence[str], path_prefixes: Sequence[str]
    ) -> ServiceMap:
        """A copy where ``name`` serves exactly these hosts and prefixes.

        Replaces the service's earlier bindings. Does not check conflicts: call
        :meth:`conflict` first (on a duplicate pair the service whose name sorts first wins).

        Raises:
          ValueError: if a host or prefix is invalid (see normalize_host, normalize_path_prefix).
        """
        return self.with_services([(name, hosts, path_prefixes)])

    def with_services(self, services: Iterable[ServiceRoutes]) -> ServiceMap:
        """:meth:`with_service` for each of ``services`` at once: one copy for all (a restore,
        a worker's replica). Checks no conflicts (see :meth:`clashes`).

        Raises:
          ValueError: if a host or prefix is invalid; the map is unchanged.
        """
        return self._replaced({name: _binding(name, h, p) for name, h, p in services})

    def without_service(self, name: str) -> ServiceMap:
        """A copy without ``name``; unchanged if it was not there."""
        return self.without_services([name])

    def without_services(self, names: Iterable[str]) -> ServiceMap:
        """A copy without any of ``names`` (those not there are ignored)."""
        gone = {name: None for name in names if name in self._by_service}
        return self._replaced(gone) if gone else self

    def _replaced(self, changes: Mapping[str, _Binding | None]) -> ServiceMap:
        """A copy with each named service bound as given (None: unbound)."""
        by_service = dict(self._by_service)
        touched: set[str] = set()
        for name, binding in changes.items():
            old = by_service.pop(name, None)
            if old is not None:
                touched.update(old.hosts)
            if binding is not None:
                by_service[name] = binding
                touched.update(binding.hosts)
        routes = dict(self._routes)
        for host in touched:
            entries = [e for e in routes.pop(host, ()) if e[1].service not in changes]
            for binding in changes.values():
                if binding is not None and host in binding.hosts:
                    entries += binding.entries()
            if entries:
                routes[host] = tuple(sorted(entries, key=_entry_order))
        return ServiceMap._copy(by_service, routes)

    def services(self) -> frozenset[str]:
        """The names of all services in the map."""
        return frozenset(self._by_service)

    def conflict(
        self, name: str, hosts: Sequence[str], path_prefixes: Sequence[str]
    ) -> Conflict | None:
        """The first (host, prefix) pair that a service other than ``name`` already serves.

        Mirrors CheckAvailability: only identical pairs conflict, so ``/api`` on a host
        served at ``/`` by another service is fine (it takes ``/api`` over).

        Raises:
          ValueError: if a host or prefix is invalid.
        """
        prefixes = _normalize_prefixes(path_prefixes)
        for host in _normalize_hosts(hosts):
            for prefix in prefixes:
                for _, route in self._routes.get(host, ()):
                    if route.path_prefix == prefix and route.service != name:
                        return Conflict(host=host, path_prefix=prefix, service=route.service)
        return None

    def clashes(self, services: Iterable[ServiceRoutes]) -> dict[str, Conflict | ValueError]:
        """Which of ``services``, taken in order, :meth:`conflict` would refuse: with this map's
        services and the ones before it in the list (a restore keeps the first of two that
        clash), or whose hosts or prefixes are invalid. One pass, however many there are."""
        taken = {
            (host, route.path_prefix): route.service
            for host, entries in self._routes.items()
            for _, route in entries
        }
        refused: dict[str, Conflict | ValueError] = {}
        for name, hosts, path_prefixes in services:
            try:
                binding = _binding(name, hosts, path_prefixes)
            except ValueError as exc:
                refused[name] = exc
                continue
            pairs = [(h, p) for h in binding.hosts for p in binding.path_prefixes]
            clash = next((pair for pair in pairs if taken.get(pair, name) != name), None)
            if clash is not None:
                refused[name] = Conflict(clash[0], clash[1], taken[clash])
                continue
            taken.update((pair, name) for pair in pairs)
        return refused

    def lookup(self, host: str, path: str) -> Route | None:
        """Route a request, or None for a 404.

        Args:
          host: from :func:`request_host`.
          path: the request target's path without the query, as sent (not percent-decoded).
        """
        entries = self._routes.get(host)
        if entries is None:
            # service_map.go bindingsForHost: "*" + everything from the first dot, so the
            # wildcard covers exactly one more label.
            dot = host.find(".")
            if dot > 0:
                entries = self._routes.get("*" + host[dot:])
            if entries is None:
                entries = self._routes.get(DEFAULT_HOST)
                if entries is None:
                    return None
        slashed = _with_slash(path)
        for prefix, route in entries:
            if slashed.startswith(prefix):
                return route
        return None


def strip_path_prefix(target: bytes, prefix: str) -> bytes:
    """Remove a matched prefix from an origin-form target, keeping the query byte for byte.

    ``b"/api/x?p=1"`` with ``/api`` gives ``b"/x?p=1"``; an emptied path becomes ``/``.

    Raises:
      ValueError: if the target's path does not start with ``prefix`` on a segment boundary.
    """
    if prefix == ROOT_PATH:
        return target
    path, sep, query = target.partition(b"?")
    raw = prefix.encode("ascii")
    rest = path[len(raw) :]
    if not path.startswith(raw) or rest[:1] not in (b"", b"/"):
        quoted = json.dumps(prefix, ensure_ascii=False)
        raise ValueError(f"target {target!r} does not start with path prefix {quoted}")
    return (rest or b"/") + sep + query
