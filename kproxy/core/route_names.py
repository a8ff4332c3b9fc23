"""The names a service routes by: ``--host`` and ``--path-prefix`` values, validated and made
canonical (core/service_map.py binds them; core/options.py checks them at deploy)."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Final

ROOT_PATH: Final = "/"
MAX_HOST_LENGTH: Final = 253  # characters, RFC 1035 section 2.3.4

# One DNS label, RFC 1123 section 2.1, plus "_" which real networks (Docker) do use.
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_HOST_HINT: Final = "use a name like example.com, a wildcard like *.example.com, or an IP"
_PREFIX_HINT: Final = "use a path like /api"


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _host_error(value: str, reason: str) -> ValueError:
    return ValueError(f"invalid host {_quote(value)}: {reason} ({_HOST_HINT})")


def canonical_ipv6(text: str) -> str | None:
    """The canonical (RFC 5952) form of an IPv6 literal, so "0:0::1" and "::1" are one host."""
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def normalize_host(value: str) -> str:
    """Validate and canonicalize a ``--host`` value: lowercase, IPv6 without brackets.

    Raises:
      ValueError: for an empty value, spaces, a port, a path, or a misplaced ``*``.
    """
    host = value.strip().lower()
    if not host:
        raise _host_error(value, "empty")
    if any(char.isspace() for char in host):
        raise _host_error(value, "whitespace is not allowed (give one host per --host)")
    if not host.isascii():
        raise _host_error(value, "non-ASCII (use the punycode form, xn--...)")
    if "://" in host:
        raise _host_error(value, "give the host name only, not a URL")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif host.startswith("[") or (host.count(":") == 1 and not host.startswith(":")):
        raise _host_error(value, "a host must not include a port")
    if ":" in host:
        ipv6 = canonical_ipv6(host)
        if ipv6 is None:
            raise _host_error(value, "not a valid IPv6 address")
        return ipv6
    if "/" in host:
        raise _host_error(value, "a host has no path (use --path-prefix for that)")
    name = host.removeprefix("*.")
    if "*" in name:
        raise _host_error(
            value, '"*" is only allowed as the whole first label, as in *.example.com'
        )
    if all(label.isdigit() and label.isascii() for label in name.split(".")):
        try:
            ipv4 = str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _host_error(value, "not a valid IPv4 address") from None
        if name != host:
            raise _host_error(value, "a wildcard needs a domain name, not an IP address")
        return ipv4
    if len(name) > MAX_HOST_LENGTH:
        raise _host_error(value, f"longer than {MAX_HOST_LENGTH} characters")
    for label in name.split("."):
        if not label:
            raise _host_error(value, "empty label (a leading, trailing or doubled dot)")
        if not _LABEL.fullmatch(label):
            raise _host_error(
                value, f"bad label {_quote(label)} (letters, digits and inner hyphens only)"
            )
    return host


def normalize_path_prefix(value: str) -> str:
    """Give a ``--path-prefix`` one leading and no trailing slash, like NormalizePathPrefixes.

    Prefixes are compared with the request path as sent (not percent-decoded), so they
    must be plain ASCII.

    Raises:
      ValueError: for ``?``, ``#``, whitespace, control or non-ASCII characters.
    """
    for char in value:
        if char in "?#":
            reason = f"{_quote(char)} starts a query or fragment, not part of a path"
        elif char.isspace():
            reason = "whitespace is not allowed"
        elif not char.isascii():
            reason = f"non-ASCII {_quote(char)} is not allowed (percent-encode it)"
        elif not char.isprintable():
            reason = "control characters are not allowed"
        else:
            continue
        raise ValueError(f"invalid path prefix {_quote(value)}: {reason} ({_PREFIX_HINT})")
    return ROOT_PATH + value.strip("/")
