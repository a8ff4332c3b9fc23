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

from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeAlias

import attrs

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


@attrs.frozen
class UpstreamRequestHeaders:
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
    tokens: set[bytes] = set()
    for value in header_values(headers, CONNECTION):
        tokens.update(t.strip(b" \t").lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


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
    make_request_id: Callable[[], str],
    upgrade: bool,
) -> UpstreamRequestHeaders:
    """The headers to send to a target for one client request, kamal-proxy's rules in one pass.

    Args:
      headers: the client's request headers.
      client_ip: the peer address (or the one a trusted layer resolved); "" when unknown
        (e.g. a Unix socket), which omits X-Forwarded-For as Go does.
      scheme: "http" or "https", the listener the request came in on.
      forward_headers: the service trusts incoming X-Forwarded-* (``--forward-headers``).
      target: the chosen target's ``host:port``, sent as X-Kamal-Target.
      now: wall-clock unix time in seconds (``time.time()``, not trio's clock): X-Request-Start
        is read by APM tools as an absolute time.
      make_request_id: called only when the client sent no X-Request-ID.
      upgrade: the request is forwarded as an upgrade (see :func:`strip_hop_by_hop`).

    Returns:
      The new list (kept headers in their original order, then X-Forwarded-For, -Proto, -Host,
      a generated X-Request-ID and X-Request-Start if needed, and X-Kamal-Target) and the
      request id used.
    """
    incoming_id = header_value(headers, X_REQUEST_ID)
    incoming_start = header_value(headers, X_REQUEST_START)
    # Go's Header.Get treats an empty first value as absent, so the middleware replaces it.
    drop = set(_ALWAYS_REBUILT)
    if not incoming_id:
        drop.add(X_REQUEST_ID)
    if not incoming_start:
        drop.add(X_REQUEST_START)
    protected = _NEVER_CONNECTION_NAMED | _SET_BY_PROXY
    out = [
        h for h in _strip(headers, keep_upgrade=upgrade, protected=protected) if h[0] not in drop
    ]

    if client_ip:
        prior = [v for v in header_values(headers, X_FORWARDED_FOR) if v] if forward_headers else []
        out.append((X_FORWARDED_FOR, b", ".join([*prior, client_ip.encode("ascii")])))
    proto = header_value(headers, X_FORWARDED_PROTO) if forward_headers else None
    out.append((X_FORWARDED_PROTO, proto or scheme.encode("ascii")))
    host = header_value(headers, X_FORWARDED_HOST) if forward_headers else None
    host = host or header_value(headers, HOST)
    if host:
        out.append((X_FORWARDED_HOST, host))

    if incoming_id:
        request_id = incoming_id.decode("latin-1")
    else:
        request_id = make_request_id()
        out.append((X_REQUEST_ID, request_id.encode("ascii")))
    if not incoming_start:
        # "t=<unix ms>" is the form kamal-proxy sends (request_start_middleware.go).
        out.append((X_REQUEST_START, b"t=%d" % int(now * 1000)))
    out.append((X_KAMAL_TARGET, target.encode("ascii")))
    return UpstreamRequestHeaders(headers=out, request_id=request_id)


def _strip(
    headers: Sequence[Header], *, keep_upgrade: bool, protected: frozenset[bytes]
) -> HeaderList:
    """Shared body of the strip functions; ``protected`` names survive being Connection-named."""
    named = connection_tokens(headers) - protected
    out: HeaderList = []
    upgrading = False
    for name, value in headers:
        if keep_upgrade and name == UPGRADE:
            out.append((name, value))
            upgrading = True
        elif not is_hop_by_hop(name) and name not in named:
            out.append((name, value))
    if upgrading:
        out.append((CONNECTION, UPGRADE))
    return out
