"""Header rewriting between client and target, as pure functions over h11 header lists.

kamal-proxy gets these rules from Go's ``httputil.ReverseProxy`` (``removeHopByHopHeaders``,
``Rewrite`` + ``ProxyRequest.SetXForwarded``) and its own middleware (basecamp/kamal-proxy:
internal/server/target.go ``forwardHeaders``, request_id_middleware.go,
request_start_middleware.go). Here they are plain functions so the runtime can apply them in
one ordered pass and tests can table them.

Header lists are what h11 gives: ``(name, value)`` pairs with lowercase byte names, where order
and repeated names matter. Inputs may be any sequence (h11's ``Headers`` included); outputs are
fresh lists ready for ``h11.Request``/``h11.Response``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple, TypeAlias

from kproxy.core.service_map import request_host

Header: TypeAlias = tuple[bytes, bytes]
HeaderList: TypeAlias = list[Header]

# RFC 9110 section 7.6.1 plus the legacy names Go's ReverseProxy strips ("Trailer", not
# "Trailers": RFC 2616 errata 4522). Every other ``proxy-*`` name goes too (is_hop_by_hop).
HOP_BY_HOP: Final[frozenset[bytes]] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_EMPTY_TOKEN: Final = frozenset({b""})  # what ", ," and an empty Connection value give
HOST: Final = b"host"
CONNECTION: Final = b"connection"
UPGRADE: Final = b"upgrade"
FORWARDED: Final = b"forwarded"
X_FORWARDED_FOR: Final = b"x-forwarded-for"
X_FORWARDED_PROTO: Final = b"x-forwarded-proto"
X_FORWARDED_HOST: Final = b"x-forwarded-host"
X_REQUEST_ID: Final = b"x-request-id"
X_REQUEST_START: Final = b"x-request-start"
X_KAMAL_TARGET: Final = b"x-kamal-target"

# A Connection header may name any header as hop-by-hop, but not these: dropping Host or
# Content-Length would break routing or body framing (Go keeps both outside Header, so it can't
# drop them either), and the headers the proxy sets itself must not be suppressible by a client.
_NEVER_CONNECTION_NAMED: Final = frozenset({HOST, b"content-length"})
_SET_BY_PROXY: Final = frozenset(
    {
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        X_REQUEST_ID,
        X_REQUEST_START,
        X_KAMAL_TARGET,
    }
)
# Incoming values never forwarded as-is: Go's Rewrite deletes Forwarded and X-Forwarded-* before
# calling kamal-proxy's forwardHeaders, which re-adds X-Forwarded-* from the inbound request.
_ALWAYS_REBUILT: Final = frozenset(
    {FORWARDED, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_KAMAL_TARGET}
)
_REQUEST_PROTECTED: Final = _NEVER_CONNECTION_NAMED | _SET_BY_PROXY
_READ_BY_REWRITE: Final = _SET_BY_PROXY | {HOST}  # build_upstream_request_headers' inputs
# What a request loses on its way to a target, by (has an X-Request-ID, has an X-Request-Start):
# the hop-by-hop fields, the rebuilt ones, and each of the two that the proxy will add itself.
# Built once here rather than per request.
_REQUEST_DROPPED: Final = {
    (has_id, has_start): HOP_BY_HOP
    | _ALWAYS_REBUILT
    | ({X_REQUEST_ID} if not has_id else set())
    | ({X_REQUEST_START} if not has_start else set())
    for has_id in (False, True)
    for has_start in (False, True)
}


class UpstreamRequestHeaders(NamedTuple):  # not attrs.frozen: see upstream_http.ResponseHead
    """What :func:`build_upstream_request_headers` returns.

    ``request_id`` is the X-Request-ID sent upstream (incoming or generated), returned so the
    runtime can log it without searching the list again.
    """

    headers: HeaderList
    request_id: str


def header_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """First value of ``name`` (lowercase), like Go's ``Header.Get``; None if absent."""
    for key, value in headers:
        if key == name:
            return value
    return None


def header_values(headers: Iterable[Header], name: bytes) -> list[bytes]:
    """Every value of ``name`` (lowercase) in order, for headers that may repeat."""
    return [value for key, value in headers if key == name]


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """Lowercased tokens of every Connection header (RFC 9110 section 7.6.1)."""
    # A loop, not a comprehension: in Python 3.11 that is a function call of its own.
    values = None
    for key, value in headers:
        if key == CONNECTION:
            if values is None:
                values = [value]
            else:
                values.append(value)
    if values is None:
        return _NO_TOKENS  # most requests and responses: asked several times per request
    # Every value at once: one lower() and one split() instead of one per token.
    tokens = frozenset([t.strip(b" \t") for t in b",".join(values).lower().split(b",")])
    return tokens - _EMPTY_TOKEN if b"" in tokens else tokens


def is_hop_by_hop(name: bytes) -> bool:
    """Whether ``name`` (lowercase) never crosses the proxy, whatever Connection says.

    Any ``proxy-*`` header is meant for a proxy, not the application. A bare ``Proxy`` header
    goes too: CGI-style apps read it as HTTP_PROXY (httpoxy, CVE-2016-5385).
    """
    return name in HOP_BY_HOP or name == b"proxy" or name.startswith(b"proxy-")


def upgrade_type(headers: Sequence[Header]) -> bytes | None:
    """The protocol a request asks to switch to, or None if it is not an upgrade.

    Mirrors Go's ``upgradeType``: Connection must carry the ``upgrade`` token and Upgrade must
    be non-empty. The runtime passes ``upgrade=upgrade_type(...) is not None`` below.
    """
    if UPGRADE not in connection_tokens(headers):
        return None
    return header_value(headers, UPGRADE) or None


def strip_hop_by_hop(headers: Sequence[Header], *, keep_upgrade: bool) -> HeaderList:
    """Remove hop-by-hop headers, which describe one connection and must not be forwarded.

    Args:
      headers: incoming header list.
      keep_upgrade: the request is being forwarded as an upgrade (WebSocket): keep Upgrade and
        send ``connection: upgrade``, as Go's ReverseProxy re-adds them after stripping.

    Returns:
      A new list in the original order. Content-Length stays (the caller frames bodies);
      Transfer-Encoding goes, so a chunked body must be re-framed by the caller.
    """
    return _strip(headers, keep_upgrade=keep_upgrade, protected=_NEVER_CONNECTION_NAMED)


def strip_response_hop_by_hop(headers: Sequence[Header]) -> HeaderList:
    """Hop-by-hop stripping for a target's response (not for 101, which passes through as is)."""
    return _strip(headers, keep_upgrade=False, protected=_NEVER_CONNECTION_NAMED)


def build_upstream_request_headers(
    headers: Sequence[Header],
    *,
    client_ip: str,
    scheme: str,
    forward_headers: bool,
    target: str,
    now: float,
    new_request_id: str,
    upgrade: bool,
    forwarded_for: Sequence[str] | None = None,
    connection: frozenset[bytes] | None = None,
) -> UpstreamRequestHeaders:
    """The headers to send to a target for one client request, kamal-proxy's rules in one pass.

    Args:
      headers: the client's request headers.
      client_ip: the peer address (or the one a trusted layer resolved); "" when unknown
        (e.g. a Unix socket), which omits X-Forwarded-For as Go does.
      scheme: "http" or "https", the listener the request came in on.
      forward_headers: the service trusts incoming X-Forwarded-* (``--forward-headers``).
      target: the chosen target's ``host:port``, sent as X-Kamal-Target (appended to the
        incoming value when ``forward_headers``, as kamal-proxy does).
      now: wall-clock unix time in seconds (``time.time()``, not trio's clock): X-Request-Start
        is read by APM tools as an absolute time.
      new_request_id: the X-Request-ID to send when the client sent none (the access log's
        id: every request has one, so a string costs less than a callable).
      upgrade: the request is forwarded as an upgrade (see :func:`strip_hop_by_hop`).
      forwarded_for: the addresses a trusted ``--client-ip-header`` gave (see
        :func:`client_ips_from_header`). When not None they replace the incoming
        X-Forwarded-For whatever ``forward_headers`` says, and ``client_ip`` is appended;
        None (the option unset, or the request lacks the header) keeps the usual rule.
      connection: ``connection_tokens(headers)``, if the caller has it (else read here).

    Returns:
      The new list (kept headers in their original order, then X-Forwarded-For, -Proto, -Host,
      a generated X-Request-ID and X-Request-Start if needed, and X-Kamal-Target) and the
      request id used.
    """
    # One pass for every field this reads (a scan per name cost seven): the first value of
    # each, as Go's Header.Get; X-Forwarded-For's and X-Kamal-Target's every value.
    first: dict[bytes, bytes] = {}
    forwarded: list[bytes] = []
    targets: list[bytes] = []
    for name, value in headers:
        if name in _READ_BY_REWRITE:
            if name == X_FORWARDED_FOR:
                forwarded.append(value)
            elif name == X_KAMAL_TARGET:
                targets.append(value)
            elif name not in first:
                first[name] = value
    incoming_id = first.get(X_REQUEST_ID)
    incoming_start = first.get(X_REQUEST_START)
    # Go's Header.Get treats an empty first value as absent, so the middleware replaces it.
    dropped = _REQUEST_DROPPED[bool(incoming_id), bool(incoming_start)]
    out = _strip(
        headers,
        keep_upgrade=upgrade,
        protected=_REQUEST_PROTECTED,
        dropped=dropped,
        named=connection_tokens(headers) if connection is None else connection,
    )

    if client_ip:
        prior = [v for v in forwarded if v] if forward_headers else []
        if forwarded_for is not None:
            prior = [", ".join(forwarded_for).encode("ascii")] if forwarded_for else []
        client = client_ip.encode("ascii")
        out.append((X_FORWARDED_FOR, b", ".join([*prior, client]) if prior else client))
    proto = first.get(X_FORWARDED_PROTO) if forward_headers else None
    out.append((X_FORWARDED_PROTO, proto or scheme.encode("ascii")))
    host = first.get(X_FORWARDED_HOST) if forward_headers else None
    host = host or first.get(HOST)
    if host:
        out.append((X_FORWARDED_HOST, host))

    if incoming_id:
        request_id = incoming_id.decode("latin-1")
    else:
        request_id = new_request_id
        out.append((X_REQUEST_ID, request_id.encode("ascii")))
    if not incoming_start:
        # "t=<unix ms>" is the form kamal-proxy sends (request_start_middleware.go).
        out.append((X_REQUEST_START, b"t=%d" % int(now * 1000)))
    # kamal-proxy's setTargetHeader (load_balancer.go): with forwarded headers trusted, every
    # incoming value (empty ones too, as Go's Header map holds them) then the target.
    own = target.encode("ascii")
    if forward_headers and targets:
        own = b", ".join([*targets, own])
    out.append((X_KAMAL_TARGET, own))
    # tuple.__new__ (C): the NamedTuple's own __new__ is a Python call.
    return tuple.__new__(UpstreamRequestHeaders, (out, request_id))


def client_ips_from_header(headers: Sequence[Header], name: str) -> tuple[str, ...] | None:
    """The addresses in a trusted ``--client-ip-header`` (e.g. CF-Connecting-IP); None when
    the request lacks it.

    kamal-proxy (internal/server/client_ip_middleware.go) copies every value of that header
    into X-Forwarded-For, as if a trusted proxy had sent it, and logs its first entry as the
    client; the socket peer is appended after them as usual. kproxy takes the same values but
    only if every comma-separated entry is an IP address: a forged-looking header gives ``()``,
    and the caller falls back to the socket peer alone. An absent or blank header gives None:
    the request is forwarded as if the option were unset (its X-Forwarded-For kept and
    extended with ``--forward-headers``), as kamal-proxy leaves it alone.

    Returns:
      The entries as sent (whitespace trimmed), the client first.
    """
    values = header_values(headers, name.lower().encode("ascii"))
    if not any(value.strip(b" \t") for value in values):
        return None
    entries: list[str] = []
    for value in values:
        for entry in value.split(b","):
            text = entry.strip(b" \t").decode("latin-1")
            try:
                ipaddress.ip_address(text)
            except ValueError:
                return ()
            entries.append(text)
    return tuple(entries)


def canonical_host_redirect(
    host_header: bytes | None, target: bytes, *, canonical_host: str, scheme: str
) -> bytes | None:
    """The Location of a ``--canonical-host`` redirect (301), or None to serve the request.

    Mirrors kamal-proxy's ``Service.redirectURLIfNeeded`` (internal/server/service.go): a
    request whose host (port removed) is not the canonical one goes to
    ``<scheme>://<canonical host><request URI>``, the path and query byte for byte. Every
    path is redirected, the health check path included, as in kamal-proxy: a load balancer
    probing by IP address never reaches a service that has ``--host`` values.

    One deliberate difference: kamal-proxy drops the port of the ``Host`` header, so a proxy
    published on ``:8080`` redirects to port 80. kproxy keeps a port that is not the scheme's
    default (``www.example.com:8080`` → ``http://example.com:8080/…``).

    Args:
      host_header: the request's Host header, as sent.
      target: the request target, as sent (origin or absolute form).
      canonical_host: the service's normalized ``--canonical-host``; "" means no redirects.
      scheme: "http" or "https", the listener the request came in on.
    """
    return redirect_location(host_header, target, canonical_host=canonical_host, scheme=scheme)


def redirect_location(
    host_header: bytes | None,
    target: bytes,
    *,
    canonical_host: str,
    scheme: str,
    to_https: bool = False,
) -> bytes | None:
    """The Location of a redirect to the canonical host and/or to HTTPS, in one hop, or None.

    As kamal-proxy's ``redirectURLIfNeeded`` (internal/server/service.go): the host becomes
    the canonical one (if set and not already it), the scheme https (``to_https``: a TLS
    service's plain HTTP request), the path and query stay byte for byte. A move to https
    drops the port, as kamal-proxy does: the HTTP port's number means nothing for HTTPS (and
    behind a port mapping kproxy cannot know the published HTTPS port). A redirect within the
    same scheme keeps a port that is not the scheme's default (see ``canonical_host_redirect``).
    """
    host = request_host(host_header)
    moved = bool(canonical_host) and host != canonical_host
    if not moved and not (to_https and host):
        return None
    new_host = canonical_host if moved else host
    authority = (f"[{new_host}]" if ":" in new_host else new_host).encode("latin-1")
    if to_https:
        scheme = "https"
    else:
        port = _host_port(host_header or b"")
        if port is not None and port != (443 if scheme == "https" else 80):
            authority += b":%d" % port
    return _escape_location(scheme.encode("ascii") + b"://" + authority + _request_uri(target))


def _host_port(host: bytes) -> int | None:
    """The port of a Host header value, if it has a valid one."""
    if host.startswith(b"["):
        _, _, rest = host.partition(b"]")
        port = rest[1:] if rest.startswith(b":") else b""
    elif host.count(b":") == 1:
        port = host.partition(b":")[2]
    else:
        return None
    if not (1 <= len(port) <= 5 and port.isdigit() and 1 <= int(port) <= 65535):
        return None
    return int(port)


def _request_uri(target: bytes) -> bytes:
    """Path and query of a request target (Go's ``URL.RequestURI``); "/" when it has none."""
    if target.startswith(b"/"):
        return target
    _, scheme_sep, rest = target.partition(b"://")
    if scheme_sep:  # absolute form: drop the scheme and authority
        ends = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
        if ends:
            uri = rest[min(ends) :]
            return uri if uri.startswith(b"/") else b"/" + uri
    return b"/"  # "*" and authority forms have no path to keep


def _escape_location(uri: bytes) -> bytes:
    """Percent-encode what may not stand in a header value (Go's hexEscapeNonASCII, plus
    controls, which h11 lets through in a request target but not in a header)."""
    return b"".join(b"%%%02X" % b if b <= 0x20 or b >= 0x7F else bytes((b,)) for b in uri)


def _strip(
    headers: Sequence[Header],
    *,
    keep_upgrade: bool,
    protected: frozenset[bytes],
    dropped: frozenset[bytes] = HOP_BY_HOP,
    named: frozenset[bytes] | None = None,
) -> HeaderList:
    """Shared body of the strip functions; ``protected`` names survive being Connection-named,
    and ``dropped`` names (the hop-by-hop ones, and any the caller replaces) never do.
    ``named``: the Connection tokens, if the caller has them."""
    if named is None:
        named = connection_tokens(headers)
    # One comprehension with is_hop_by_hop inlined (a call per field costs more than the rest
    # of the test), and ``protected`` asked only about a name the Connection header gave.
    out = [
        (name, value)
        for name, value in headers
        if (keep_upgrade and name == UPGRADE)
        or not (
            name in dropped
            or (name in named and name not in protected)
            or (name.startswith(b"proxy") and is_hop_by_hop(name))
        )
    ]
    if keep_upgrade and any(name == UPGRADE for name, _ in headers):
        out.append((CONNECTION, UPGRADE))
    return out
