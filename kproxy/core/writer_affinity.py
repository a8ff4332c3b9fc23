"""Writer affinity: after a write, the client's reads go to a writer for a while.

kamal-proxy's rules (internal/server/load_balancer.go, ``loadBalancerResponseWriter``), kept:

- Only on a service with read targets and a ``--writer-affinity-timeout`` above zero, and only
  on the response to a request that is not a read (core/balancer.py ``is_read_request``).
- That response gets ``Set-Cookie: kamal-writer=<expiry, Unix milliseconds>; Path=/;
  Expires=<expiry + 1s>; HttpOnly`` unless the target answered ``X-Writer-Affinity: false``.
  The ``X-Writer-Affinity`` header itself is removed from that response either way.
- A request whose ``kamal-writer`` cookie holds an integer later than now has a valid cookie;
  its reads go to a writer.

Sans-IO: the runtime passes the clock (``now``, seconds since the epoch).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Final

COOKIE_NAME: Final = "kamal-writer"
OPT_OUT_HEADER: Final = b"x-writer-affinity"
_COOKIE_PREFIX: Final = COOKIE_NAME.encode() + b"="
_INTEGER: Final = re.compile(rb"[+-]?[0-9]+")  # Go's strconv.ParseInt(value, 10, 64)
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
)  # fmt: skip

Header = tuple[bytes, bytes]


def has_valid_cookie(headers: Sequence[Header], now: float) -> bool:
    """Whether the request carries a ``kamal-writer`` cookie that has not expired (the first
    one wins, as Go's ``Request.Cookie``)."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            part = part.strip(b" \t")
            if not part.startswith(_COOKIE_PREFIX):
                continue
            raw = part[len(_COOKIE_PREFIX) :]
            if len(raw) > 1 and raw[:1] == raw[-1:] == b'"':
                raw = raw[1:-1]
            if _INTEGER.fullmatch(raw) is None:
                return False
            expires = int(raw)
            return -(2**63) <= expires < 2**63 and now * 1000 < expires
    return False


def _http_date(seconds: int) -> str:
    """Go's ``http.TimeFormat``: ``Mon, 02 Jan 2006 15:04:05 GMT``."""
    t = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )


def set_cookie_value(now: float, timeout: float) -> bytes:
    """The ``Set-Cookie`` value for a write answered at ``now``."""
    expires_ms = int(now * 1000) + int(timeout * 1000)
    expires = _http_date(expires_ms // 1000 + 1)
    return f"{COOKIE_NAME}={expires_ms}; Path=/; Expires={expires}; HttpOnly".encode()


def write_response_headers(headers: Sequence[Header], now: float, timeout: float) -> list[Header]:
    """A write's response headers as the client gets them: the opt-out header removed and,
    unless the target opted out, the affinity cookie added."""
    first: bytes | None = None  # Go's Header.Get: the first value, compared exactly
    kept: list[Header] = []
    for header in headers:
        if header[0] == OPT_OUT_HEADER:
            if first is None:
                first = header[1]
            continue
        kept.append(header)
    if first != b"false":
        kept.append((b"set-cookie", set_cookie_value(now, timeout)))
    return kept
