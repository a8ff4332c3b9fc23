"""``--scope-cookie-paths``: Set-Cookie paths from a target rewritten under its path prefix.

An application mounted at ``/app`` with the prefix stripped believes it lives at ``/``, so its
cookies say ``Path=/`` and would be sent to every other application on the host. kamal-proxy
(basecamp/kamal-proxy: internal/server/cookie_scope.go, applied in target.go's
``targetResponseWriter.WriteHeader``) moves them under the prefix. Its rules, kept here:

- Only when the service strips its prefix and the matched prefix is not ``/`` (router.go sets
  ``MatchedPrefix`` only then); the runtime decides that and builds a :class:`CookieScope`.
- A Set-Cookie that Go's ``http.ParseSetCookie`` rejects (no ``=``, a name that is not a token,
  a value with bytes outside cookie-octets) is left as it is.
- Only cookies without a Domain, or whose Domain is exactly the request's host (the ``Host``
  header, port removed as ``net.SplitHostPort`` does), are scoped. ``Domain=other.com``,
  ``Domain=.example.com`` and ``Domain=sub.example.com`` stay untouched.
- The new path is ``url.JoinPath(prefix, strings.Trim(path, "/"))``: ``Path=/`` or no Path
  gives ``/app``, ``Path=/admin/`` gives ``/app/admin``, dot segments are resolved.

One deliberate difference: kamal-proxy re-serializes the whole cookie with ``Cookie.String()``,
which drops attributes Go does not know (``Priority=High``) and reformats others. kproxy
replaces the Path attribute only and keeps every other byte of the cookie as the target sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

SET_COOKIE: Final = b"set-cookie"

_ALNUM: Final = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# RFC 9110 tchar: Go's isCookieNameValid accepts a name made of these only.
_TOKEN: Final = _ALNUM | frozenset(b"!#$%&'*+-.^_`|~")
# Go's validCookieValueByte: printable ASCII and space, but no '"', ';' or '\'.
_COOKIE_VALUE: Final = frozenset(b for b in range(0x20, 0x7F) if b not in b'";\\')
# Go's net/url shouldEscape(c, encodePath) is false for these (plus '?', which it escapes)...
_PATH_UNESCAPED: Final = _ALNUM | frozenset(b"-_.~$&+,/:;=@")
# ...and validEncoded additionally lets these stand unescaped in an already-escaped path.
_PATH_VALID_ENCODED: Final = _PATH_UNESCAPED | frozenset(b"!'()*[]%")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_GO_SPACE: Final = " \t\r\n"  # textproto.TrimString


def _split_host_port(host: str) -> str:
    """Go's ``net.SplitHostPort`` host part, or ``host`` unchanged where Go returns an error."""
    if host.startswith("["):
        end = host.find("]")
        if end > 0 and host[end + 1 : end + 2] == ":":
            return host[1:end]
        return host
    colon = host.rfind(":")
    if colon < 0 or ":" in host[:colon]:
        return host  # no port, or too many colons
    return host[:colon]


@attrs.frozen
class CookieScope:
    """Where a response's cookies are scoped: the matched path prefix and the request's host.

    Args:
      path_prefix: the matched ``--path-prefix`` (normalized, never ``/``).
      host: the request's ``Host`` header as sent; its port is removed here.
    """

    path_prefix: str
    host: str = attrs.field(converter=_split_host_port)

    def apply(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The response headers with every Set-Cookie scoped; other headers and order kept."""
        return [
            (name, self.scope(value) if name == SET_COOKIE else value) for name, value in headers
        ]

    def scope(self, set_cookie: bytes) -> bytes:
        """One Set-Cookie value, scoped if kamal-proxy's rules say so, else unchanged."""
        line = set_cookie.decode("latin-1").strip(_GO_SPACE)
        parsed = _parse_set_cookie(line)
        if parsed is None:
            return set_cookie
        domain, path = parsed
        if domain and domain != self.host:
            return set_cookie
        scoped = _join_path(self.path_prefix, path.strip("/"))
        return _replace_path(line, scoped).encode("latin-1")


def _cookie_value_ok(value: str, *, allow_quotes: bool) -> bool:
    """Go's ``parseCookieValue`` success: surrounding quotes (names only) then cookie-octets."""
    if allow_quotes and len(value) > 1 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return all(ord(c) in _COOKIE_VALUE for c in value)


def _parse_set_cookie(line: str) -> tuple[str, str] | None:
    """(Domain, Path) as Go's ``http.ParseSetCookie`` reads them, or None where it fails.

    Like Go, the last valid Domain and Path attributes win, an attribute name is not trimmed
    (``Path =/x`` is not a Path), and an attribute whose value has bad bytes is ignored.
    """
    parts = line.split(";")
    if parts == [""]:
        return None
    name, eq, value = parts[0].strip(_GO_SPACE).partition("=")
    name = name.strip(_GO_SPACE)
    if not eq or not name or any(ord(c) not in _TOKEN for c in name):
        return None
    if not _cookie_value_ok(value, allow_quotes=True):
        return None
    domain = path = ""
    for part in parts[1:]:
        attr, _, val = part.strip(_GO_SPACE).partition("=")
        if not attr.isascii() or not _cookie_value_ok(val, allow_quotes=False):
            continue
        lowered = attr.lower()
        if lowered == "domain":
            domain = val
        elif lowered == "path":
            path = val
    return domain, path


def _join_path(prefix: str, rest: str) -> str:
    """Go's ``url.JoinPath(prefix, rest)`` for a rooted prefix, as a URL path string.

    ``path.Join`` cleans the result (``.``/``..`` resolved, never above the root); the joined
    path is then percent-decoded and re-encoded as ``url.URL.EscapedPath`` does, and a path
    that does not decode leaves the prefix alone, because Go's JoinPath ignores that error.
    """
    segments: list[str] = []
    for segment in f"{prefix}/{rest}".split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    joined = "/" + "/".join(segments)
    raw = joined.encode("latin-1")
    decoded = _unescape(raw)
    if decoded is None:
        return prefix
    if all(b in _PATH_VALID_ENCODED for b in raw):
        return joined  # already a valid escaped path: Go keeps it as RawPath
    return "".join(chr(b) if b in _PATH_UNESCAPED else f"%{b:02X}" for b in decoded)


def _unescape(raw: bytes) -> bytes | None:
    """Percent-decode ``raw``; None for a ``%`` not followed by two hex digits."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("%"):
            pair = raw[i + 1 : i + 3]
            if len(pair) < 2 or not all(b in _HEX for b in pair):
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _replace_path(line: str, path: str) -> str:
    """``line`` with its Path attributes replaced by one ``Path=path``, where the first was.

    Every attribute a browser would read as a Path goes (RFC 6265 trims the name, Go does not),
    so the new one is the only one; attributes are re-joined with ``"; "``.
    """
    parts = [p.strip(_GO_SPACE) for p in line.split(";")]
    out = [parts[0]]
    placed = False
    for part in parts[1:]:
        if part.partition("=")[0].strip(_GO_SPACE).lower() == "path":
            if not placed:
                out.append(f"Path={path}")
                placed = True
        elif part:
            out.append(part)
    if not placed:
        out.append(f"Path={path}")
    return "; ".join(out)
