"""The access log line of one request, in kamal-proxy's field names, filled in as it goes.

Also the request ids every line carries.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from kproxy.core.cookies import CookieScope
from kproxy.core.headers import client_ips_from_header, header_value
from kproxy.core.pages import ErrorPages
from kproxy.core.service_map import request_host
from kproxy.runtime.exchange import RequestHead, ResponseRecord
from kproxy.runtime.log import ACCESS_FIELDS
from kproxy.runtime.pages import BUILTIN_PAGES

Header = tuple[bytes, bytes]


class RequestLog(ResponseRecord):
    """The fields of one access log line (kamal-proxy's names), filled in as the request goes;
    also the request's :class:`ResponseRecord`, which the relay fills in (``status`` is the
    status logged, ``headers`` and ``body_bytes`` those of the response sent).

    A plain class with a slot per field, not a dict: the usual line is written from the
    slots (``members``), with no dict to build and check."""

    __slots__ = (
        *ACCESS_FIELDS[:16],  # the request's fields, in their order (see members())
        "started",
        "request_header_fields",  # --log-request-header's fields, or None
        "response_header_names",  # the service's --log-response-header
        # Per-request decisions the relay needs, made once the service is known:
        "peer_ip",  # the socket peer, which X-Forwarded-For always ends with
        "forwarded_for",  # --client-ip-header's addresses (None: unset)
        "cookie_scope",  # --scope-cookie-paths, when it applies
        "pages",  # the service's --error-pages
        "metered",  # what RequestMetrics.enter returned (runtime/metrics.py)
    )

    def __init__(
        self,
        request: RequestHead,
        port: int,
        scheme: str,
        client_ip: str,
        client_port: int,
        now: float,
    ) -> None:
        """The fields known from the request head alone. (Called with positional arguments
        per request: keywords cost type.__call__ a dict.)"""
        # ResponseRecord's fields, set here: its __init__ would be a call more.
        self.status = self.body_bytes = 0
        self.headers = []
        self.head_sent = self.upgraded = False
        self.interruption = None
        # The first value of each header, as Go's Header.Get gives it: one dict built in C
        # (the last duplicate written first, so the first one wins) instead of six scans.
        first = dict(reversed(request.headers))
        path, _, query = request.target.partition(b"?")
        host = first.get(b"host")
        self.host = _HOSTS.get(host) or _new_host(host)
        self.port = port
        self.path = path.decode("latin-1")
        # Every line gets a request id, 404s included (kamal-proxy's request-id middleware
        # runs before routing); an empty incoming value counts as absent, as in Go. Here and
        # below, an absent or empty value is not decoded: a call saved.
        incoming_id = first.get(b"x-request-id")
        self.request_id = incoming_id.decode("latin-1") if incoming_id else next(_REQUEST_IDS)
        self.service = ""
        self.target = ""
        self.method = request.method.decode("latin-1")
        # Go's Request.ContentLength: -1 when unknown (chunked).
        length = first.get(b"content-length")
        self.req_content_length = (
            -1
            if b"transfer-encoding" in first
            else int(length)
            if length is not None and length.isdigit()
            else 0
        )
        content_type = first.get(b"content-type")
        self.req_content_type = content_type.decode("latin-1") if content_type else ""
        self.client_addr = client_ip
        self.client_port = str(client_port) if client_ip else ""  # a string, as Go logs it
        forwarded_for = first.get(b"x-forwarded-for")
        self.remote_addr = forwarded_for.decode("latin-1") if forwarded_for else client_ip
        user_agent = first.get(b"user-agent")
        self.user_agent = user_agent.decode("latin-1") if user_agent else ""
        version = request.http_version
        self.proto = _PROTOS.get(version) or f"HTTP/{version.decode()}"
        self.scheme = scheme
        self.query = query.decode("latin-1") if query else ""
        self.started = now
        self.request_header_fields: dict[str, Any] | None = None
        self.response_header_names: tuple[str, ...] = ()
        self.peer_ip = client_ip
        self.forwarded_for: tuple[str, ...] | None = None
        self.cookie_scope: CookieScope | None = None
        self.pages: ErrorPages = BUILTIN_PAGES
        self.metered: object = None

    def use_client_ip_header(self, headers: Sequence[Header], name: str) -> None:
        """--client-ip-header: its addresses, if they all parse, become the client for the log
        and the start of X-Forwarded-For; if not, the peer alone, and the incoming
        X-Forwarded-For is not trusted either. A request without the header is logged and
        forwarded as if the option were unset (kamal-proxy: client_ip_middleware.go)."""
        forwarded_for = client_ips_from_header(headers, name)
        if forwarded_for is None:
            return
        self.forwarded_for = forwarded_for
        client = self.forwarded_for[0] if self.forwarded_for else self.peer_ip
        self.client_addr = client
        self.remote_addr = ", ".join(self.forwarded_for) or client

    def add_request_headers(self, headers: Sequence[Header], names: tuple[str, ...]) -> None:
        """``req_x_custom`` style fields for --log-request-header."""
        if names:
            fields: dict[str, Any] = {}
            _add_headers(fields, "req_", headers, names)
            self.request_header_fields = fields

    def members(self, now: float) -> str | None:
        """The usual line's members as JSON text, in ``ACCESS_FIELDS``' order, for
        ``Logger.access_members``; None when the line has more fields (--log-request-header,
        --log-response-header): see ``line``.

        One f-string from the slots (the values are str and int by construction), checked
        once as a whole: a tuple of values and a join of the pieces cost twice as much."""
        if self.request_header_fields is not None or self.response_header_names:
            return None
        content_type = ""
        for name, value in self.headers:  # header_value and text, without two calls
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        host, path, request_id, service, target, method = (
            self.host, self.path, self.request_id, self.service, self.target, self.method
        )  # fmt: skip
        req_type, client_addr, client_port, remote_addr, user_agent, proto, scheme, query = (
            self.req_content_type, self.client_addr, self.client_port, self.remote_addr,
            self.user_agent, self.proto, self.scheme, self.query,
        )  # fmt: skip
        text = (
            f"{host}{path}{request_id}{service}{target}{method}{req_type}{client_addr}"
            f"{client_port}{remote_addr}{user_agent}{proto}{scheme}{query}{content_type}"
        )
        # json (ensure_ascii) writes printable ASCII as it is, but for the quote and backslash:
        # with those and the controls deleted, ASCII text keeps its length (one pass in C;
        # isprintable looks each character up in the Unicode tables). Otherwise each value is
        # escaped as json escapes a str.
        if not text.isascii() or len(text.encode().translate(None, _JSON_ESCAPED)) != len(text):
            (host, path, request_id, service, target, method, req_type, client_addr,
             client_port, remote_addr, user_agent, proto, scheme, query, content_type) = (
                encode_basestring_ascii(s)[1:-1]
                for s in (host, path, request_id, service, target, method, req_type,
                          client_addr, client_port, remote_addr, user_agent, proto, scheme,
                          query, content_type)
            )  # fmt: skip
        return (
            f'"host": "{host}", "port": {self.port}, "path": "{path}", '
            f'"request_id": "{request_id}", "service": "{service}", "target": "{target}", '
            f'"method": "{method}", "req_content_length": {self.req_content_length}, '
            f'"req_content_type": "{req_type}", "client_addr": "{client_addr}", '
            f'"client_port": "{client_port}", "remote_addr": "{remote_addr}", '
            f'"user_agent": "{user_agent}", "proto": "{proto}", "scheme": "{scheme}", '
            f'"query": "{query}", "status": {self.status}, '
            f'"duration": {int((now - self.started) * 1e9)}, '
            f'"resp_content_length": {self.body_bytes}, "resp_content_type": "{content_type}"'
        )

    def line(self, now: float) -> dict[str, Any]:
        """The fields to log, by name, in the order they are written."""
        fields = {name: getattr(self, name) for name in ACCESS_FIELDS[:16]}
        if self.request_header_fields is not None:
            fields.update(self.request_header_fields)
        fields["status"] = self.status
        fields["duration"] = int((now - self.started) * 1e9)
        fields["resp_content_length"] = self.body_bytes
        fields["resp_content_type"] = text(header_value(self.headers, b"content-type"))
        if self.response_header_names:
            _add_headers(fields, "resp_", self.headers, self.response_header_names)
        return fields


_PROTOS: Final = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
# The ASCII characters json escapes: the controls (DEL too: not printable), quote, backslash.
_JSON_ESCAPED: Final = bytes([*range(0x20), ord('"'), ord("\\"), 0x7F])


# Request ids in UUID version 4 form: a random per-process prefix and a counter, since
# uuid.uuid4() reads 16 bytes from the kernel for every request. They stay unique per
# process; the random prefix keeps processes (and restarts) apart.
def _request_id_prefix() -> str:
    digits = os.urandom(9).hex()
    variant = "89ab"[os.urandom(1)[0] & 3]  # RFC 9562 variant bits 10xx
    return f"{digits[:8]}-{digits[8:12]}-4{digits[12:15]}-{variant}{digits[15:]}"


_ID_PREFIX: Final = _request_id_prefix()
_ID_FORMAT: Final = _ID_PREFIX + "-%012x"  # a %-format: cheaper than an f-string's spec
# The ids themselves, made by a C iterator (no Python call per id); the counter starts below
# 2**40, so it takes 2**48 - 2**40 requests before it outgrows its 12 digits.
_REQUEST_IDS: Final = map(_ID_FORMAT.__mod__, itertools.count(int.from_bytes(os.urandom(5))))
# request_host() of the Host values seen: the same few come again and again. Cleared when
# full, so made-up hosts cannot grow it.
_HOSTS: Final[dict[bytes | None, str]] = {}
MAX_HOSTS_KEPT: Final = 1024


def _new_host(header: bytes | None) -> str:
    if len(_HOSTS) >= MAX_HOSTS_KEPT:
        _HOSTS.clear()
    host = _HOSTS[header] = request_host(header)
    return host


def text(value: bytes | None) -> str:
    return value.decode("latin-1") if value is not None else ""


def _add_headers(
    fields: dict[str, Any], prefix: str, headers: Sequence[Header], names: tuple[str, ...]
) -> None:
    for name in names:
        value = header_value(headers, name.lower().encode())
        fields[prefix + name.lower().replace("-", "_")] = text(value)
