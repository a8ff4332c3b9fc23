"""What a reverse proxy decides about one exchange, apart from the bytes: sans-IO.

The runtime's pipeline and relay ask these functions and do what they answer: which status a
failure gets, how a redirect reads, the head a target gets, which interim (1xx) answers reach
the client, the fields of the response the client gets, and when a request may be sent again.
"""

from __future__ import annotations

import enum
import html
from collections.abc import Sequence
from typing import Final

from kproxy.core.buffering import buffered_request_headers
from kproxy.core.headers import header_value, strip_response_hop_by_hop
from kproxy.core.response_head import Framing
from kproxy.core.upstream_http import (
    Header,
    UpstreamRequest,
)
from kproxy.errors import BadRequestBody, BodyTimeout, ClientGone, UpstreamError

STATUS_CLIENT_CLOSED: Final = 499  # nginx's convention, as kamal-proxy logs it
# Methods a client may repeat without changing the outcome (RFC 9110 §9.2.2); like Go's
# transport, only these are sent again after the target may already have received them.
REPLAYABLE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def status_for(exc: Exception, *, head_sent: bool, sent_status: int) -> int:
    """The one place a failure becomes a status, like kamal-proxy's handleProxyError
    (internal/server/target.go). Once the head went out, the log keeps the status sent."""
    if isinstance(exc, ClientGone):
        return STATUS_CLIENT_CLOSED
    if head_sent:
        return sent_status
    if isinstance(exc, BodyTimeout):
        return 408
    if isinstance(exc, BadRequestBody):
        return 400
    if isinstance(exc, UpstreamError):
        return exc.status_hint  # 404, 413, 500, 502, 503, 504
    return 502


def redirect_answer(method: bytes, location: bytes) -> tuple[list[Header], bytes]:
    """A --canonical-host 301 as Go's http.Redirect writes it, with ``Connection: close`` as
    kamal-proxy's handleRedirectsIfNeeded (internal/server/service.go) sends it."""
    href = html.escape(location.decode("ascii"), quote=True).encode("ascii")
    body = b'<a href="' + href + b'">Moved Permanently</a>.\n\n'
    headers = [(b"location", location), (b"connection", b"close")]
    if method in (b"GET", b"HEAD"):
        headers.append((b"content-type", b"text/html; charset=utf-8"))
    if method != b"GET":
        body = b""  # Go writes the link for GET only
    headers.append((b"content-length", b"%d" % len(body)))
    return headers, body


def upstream_request(
    method: bytes,
    target: bytes,
    headers: list[Header],
    *,
    target_name: str,
    framing: list[Header] | None,
    upgrade: bool,
    buffered_size: int | None = None,
) -> UpstreamRequest:
    """The request a target gets: ``headers`` (already rewritten for it: no hop-by-hop field
    but an upgrade's) with its body framing spelled one way only: a buffered body's length
    (``buffered_size``), or the framing the client's head declared, canonical (``framing``;
    None: no body framing was declared, and the fields stand as they are). ``upgrade``: the
    request is forwarded as an upgrade. A Host the client left out is the target's address."""
    chunked = False
    if buffered_size is not None:
        headers = buffered_request_headers(headers, buffered_size)
    elif framing is not None:
        headers = [h for h in headers if h[0] != b"content-length"]
        headers += framing
        chunked = any(name == b"transfer-encoding" for name, _ in framing)
    if header_value(headers, b"host") is None:
        headers.insert(0, (b"host", target_name.encode()))
    # tuple.__new__ (C) for every field: the NamedTuple's own __new__ is a Python call.
    return tuple.__new__(UpstreamRequest, (method, target, headers, chunked, upgrade))


class Interim(enum.Enum):
    """What becomes of a 1xx answer from the target (RFC 9110 §15.2)."""

    FORWARD = "forward"  # to the client as it came, hop-by-hop fields removed
    DROP = "drop"  # a 100 the client does not wait for (any more)
    SWITCH = "switch"  # a 101 to an upgrade request: the connection becomes a tunnel
    REFUSE = "refuse"  # a 101 nobody asked for (as h11 and Go's ReverseProxy): 502


def interim_action(status: int, *, upgrade: bool, client_waiting_for_100: bool) -> Interim:
    """For a 1xx ``status``: ``upgrade``, the request asked to switch protocols;
    ``client_waiting_for_100``, the client holds its body until told to go on."""
    if status == 101:
        return Interim.SWITCH if upgrade else Interim.REFUSE
    if status == 100 and not client_waiting_for_100:
        return Interim.DROP  # we already sent one, or the client is sending its body anyway
    return Interim.FORWARD


def client_response_headers(headers: Sequence[Header], framing: Framing) -> list[Header]:
    """A target's response fields as the client gets them: hop-by-hop ones removed, and a
    Content-Length beside chunked framing dropped (chunked wins, RFC 9112 §6.3)."""
    client_headers = strip_response_hop_by_hop(headers)
    if framing is Framing.CHUNKED:
        client_headers = [h for h in client_headers if h[0] != b"content-length"]
    return client_headers


def may_resend(
    method: bytes,
    *,
    reused: bool,
    response_began: bool,
    body_sent: bool,
    body_buffered: bool,
    request_sent: bool,
    never_received: bool = False,
) -> bool:
    """Whether a request whose target connection closed before any byte of a response may go
    again on a fresh connection: only when that connection was a reused one (it closed while
    idle, as targets do), the body can be sent again (buffered, or still kept: ``body_sent``
    says it is gone), and either no byte of it reached the target (it never left, or the
    target reset the connection without acknowledging any: core/tcp_info.py) or it is safe
    to repeat. Go's transport retries only the first for any method; the second closes the
    window a target that closes after each answer leaves."""
    return (
        reused
        and not response_began
        and (not body_sent or body_buffered)
        and (not request_sent or never_received or method in REPLAYABLE_METHODS)
    )
