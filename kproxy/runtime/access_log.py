"""The access log line of one request, in kamal-proxy's field names, filled in as it goes.

Also the request ids every line carries.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any, Final

import attrs

from kproxy.core.cookies import CookieScope
from kproxy.core.headers import client_ips_from_header, header_value
from kproxy.core.pages import ErrorPages
from kproxy.core.service_map import request_host
from kproxy.runtime.exchange import RequestHead
from kproxy.runtime.pages import BUILTIN_PAGES

Header = tuple[bytes, bytes]


@attrs.define
class RequestLog:
    """The fields of one access log line (kamal-proxy's names), filled in as the request goes."""

    fields: dict[str, Any]
    status: int = 0
    started: float = 0.0
    response_headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    response_bytes: int = 0  # body bytes sent to the client, as kamal-proxy counts them
    response_header_names: tuple[str, ...] = ()  # the service's --log-response-header
    # Per-request decisions the relay needs, made once the service is known:
    peer_ip: str = ""  # the socket peer, which X-Forwarded-For always ends with
    forwarded_for: tuple[str, ...] | None = None  # --client-ip-header's addresses (None: unset)
    cookie_scope: CookieScope | None = None  # --scope-cookie-paths, when it applies
    pages: ErrorPages = BUILTIN_PAGES  # the service's --error-pages
    metered: object = None  # what RequestMetrics.enter returned (runtime/metrics.py)

    @classmethod
    def begin(
        cls,
        request: RequestHead,
        *,
        port: int,
        scheme: str,
        client_ip: str,
        client_port: int,
        now: float,
    ) -> RequestLog:
        """The fields known from the request head alone."""
        # The first value of each header, as Go's Header.Get gives it: one dict built in C
        # (the last duplicate written first, so the first one wins) instead of six scans.
        first = dict(reversed(request.headers))
        path, _, query = request.target.partition(b"?")
        # Every line gets a request id, 404s included (kamal-proxy's request-id middleware
        # runs before routing); an empty incoming value counts as absent, as in Go.
        request_id = first.get(b"x-request-id", b"").decode("latin-1") or _new_request_id()
        fields = {
            "host": request_host(first.get(b"host")),
            "port": port,
            "path": path.decode("latin-1"),
            "request_id": request_id,
            "service": "",
            "target": "",
            "method": request.method.decode("latin-1"),
            # Go's Request.ContentLength: -1 when unknown (chunked).
            "req_content_length": -1
            if b"transfer-encoding" in first
            else _length(first.get(b"content-length")),
            "req_content_type": first.get(b"content-type", b"").decode("latin-1"),
            "client_addr": client_ip,
            "client_port": str(client_port) if client_ip else "",  # a string, as Go logs it
            "remote_addr": first.get(b"x-forwarded-for", b"").decode("latin-1") or client_ip,
            "user_agent": first.get(b"user-agent", b"").decode("latin-1"),
            "proto": f"HTTP/{request.http_version.decode()}",
            "scheme": scheme,
            "query": query.decode("latin-1"),
        }
        return cls(fields, started=now, peer_ip=client_ip)

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
        self.fields["client_addr"] = client
        self.fields["remote_addr"] = ", ".join(self.forwarded_for) or client

    def add_headers(self, prefix: str, headers: Sequence[Header], names: tuple[str, ...]) -> None:
        """``req_x_custom`` style fields for --log-request-header/--log-response-header."""
        _add_headers(self.fields, prefix, headers, names)

    def line(self, now: float) -> dict[str, Any]:
        """The fields to log, the response's added; the request's own are left as they are."""
        fields = self.fields.copy()  # measurably cheaper than dict(self.fields)
        fields["status"] = self.status
        fields["duration"] = int((now - self.started) * 1e9)
        fields["resp_content_length"] = self.response_bytes
        fields["resp_content_type"] = text(header_value(self.response_headers, b"content-type"))
        if self.response_header_names:
            _add_headers(fields, "resp_", self.response_headers, self.response_header_names)
        return fields


# Request ids in UUID version 4 form: a random per-process prefix and a counter, since
# uuid.uuid4() reads 16 bytes from the kernel for every request. They stay unique per
# process; the random prefix keeps processes (and restarts) apart.
def _request_id_prefix() -> str:
    digits = os.urandom(9).hex()
    variant = "89ab"[os.urandom(1)[0] & 3]  # RFC 9562 variant bits 10xx
    return f"{digits[:8]}-{digits[8:12]}-4{digits[12:15]}-{variant}{digits[15:]}"


_ID_PREFIX: Final = _request_id_prefix()
_ID_FORMAT: Final = _ID_PREFIX + "-%012x"  # a %-format: cheaper than an f-string's spec
_id_counter = itertools.count(int.from_bytes(os.urandom(5)))


def _new_request_id() -> str:
    return _ID_FORMAT % (next(_id_counter) & 0xFFFFFFFFFFFF)


def text(value: bytes | None) -> str:
    return value.decode("latin-1") if value is not None else ""


def _length(value: bytes | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _add_headers(
    fields: dict[str, Any], prefix: str, headers: Sequence[Header], names: tuple[str, ...]
) -> None:
    for name in names:
        value = header_value(headers, name.lower().encode())
        fields[prefix + name.lower().replace("-", "_")] = text(value)
