"""Target addresses (``host:port``) as ``--target`` gives them: parsed and checked once."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import attrs

# Used with fullmatch(): "$" would also match before a trailing newline.
_HOSTNAME_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE | re.ASCII)


@attrs.frozen
class Address:
    """A target's ``host:port``; ``host`` is a name or an IP literal (no brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str) -> Address:
    """Parse a ``--target`` value: ``host:port``, ``[v6]:port``, or ``host`` (port 80).

    Host names may contain underscores (Docker container names); IP literals are
    canonicalized, so ``[0:0::1]:80`` and ``[::1]:80`` are the same target.

    Raises:
      ValueError: naming the bad value, what is wrong with it and the expected form.
    """
    value = text.strip()

    def bad(reason: str = "") -> ValueError:
        hint = f"invalid target {text!r}: expected host:port (e.g. 127.0.0.1:3000 or web:80)"
        return ValueError(f"{hint}; {reason}" if reason else hint)

    if not value:
        raise bad("empty")
    if "://" in value:
        raise bad("give host:port, not a URL")
    if any(c.isspace() or c in "/?#@" or not c.isprintable() for c in value):
        raise bad()
    host, port = value, 80
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise bad("unclosed '['")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise bad()
            port = _parse_port(rest[1:], bad)
        if not _is_ip(host, version=6):
            raise bad(f"{host!r} is not an IPv6 address")
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        port = _parse_port(port_text, bad)
    elif ":" in value:
        raise bad("put an IPv6 address in brackets, as in [::1]:3000")
    if not host:
        raise bad("the host is missing")
    if _is_ip(host):
        return Address(str(ipaddress.ip_address(host)), port)
    labels = host.split(".")
    if not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels) or len(host) > 253:
        raise bad(f"{host!r} is not a valid host name")
    if labels[-1].isdigit():
        # getaddrinfo would read "30" or "10.1.2" as an IPv4 address; say so rather than guess
        raise bad(f"{host!r} is neither a host name nor an IPv4 address")
    return Address(host.lower(), port)


def _parse_port(text: str, bad: Callable[[str], ValueError]) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise bad(f"the port must be 1-65535, got {text!r}")
    return int(text)


def _is_ip(host: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return version is None or address.version == version
