"""Request framing: where a request ends, decided strictly before h11 reads it.

A proxy and its target must agree on where each request ends, or a request hidden in another's
body reaches the target unseen (request smuggling, RFC 9112 §11.2). The runtime therefore
checks each request head (:func:`check_head`) and each chunked body (:class:`ChunkedBody`)
against the rules here *before* h11 parses the same bytes, answers a violation itself and
closes the connection, and sends what passes to the target re-framed canonically
(:func:`framing_headers`), so the target never sees the client's spelling of the framing.

The rules are stricter than h11 0.16 (which refuses most malformed input on its own) exactly
where h11 is lenient:

- Content-Length together with Transfer-Encoding (h11 lets chunked win) and Transfer-Encoding
  in an HTTP/1.0 request: 400, and RFC 9112 §6.1 requires closing the connection after both;
- a Content-Length of 2^63 or more (h11 takes any number; Go's net/http refuses these);
- obsolete line folding (h11 unfolds it, so `` chunked`` on a line of its own would join the
  header above): 400, as RFC 9112 §5.2 allows;
- control characters other than HTAB in a field value (h11 refuses only NUL and whitespace
  controls; Go's httpguts refuses every CTL, DEL included);
- an HTTP major version other than 1 (h11 parses ``HTTP/2.0`` as a version): 505;
- CONNECT (h11 takes any request-target with it): 405 for ``host:port``, 400 for any other
  target; and authority-form with any other method: 400;
- a field named like a framing field but for case and ``_`` (``Transfer_Encoding``):
  servers that map names to CGI-style variables (Rack, hence Puma before 6.4.3) read it as
  the real one while kproxy does not;
- a chunked body that breaks the rules of ``chunked`` (sizes, extensions, line lengths,
  framing without data, bare LF), checked by :class:`ChunkedBody`.

The grammar itself (field lines, Content-Length, chunked coding) is shared with the response
side and lives in ``http1`` and ``chunked``; this module applies it to requests.

Transfer codings other than ``chunked`` are answered 501 (RFC 9112 §6.1's SHOULD, and what
Go and h11 answer); every other violation is 400, or 431 for too many header fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, TypeAlias

import attrs

from kproxy.core.chunked import ChunkedDecoder
from kproxy.core.http1 import (
    FIELD_LINES,
    FIELD_TEXT,
    FRAMING_FIELDS,
    OWS,
    TOKEN,
    TOKEN_RE,
    content_length,
    list_elements,
    parse_field_line,
)
from kproxy.errors import ProtocolError

Header: TypeAlias = tuple[bytes, bytes]

# RFC 9112 §3: method SP request-target SP HTTP-version; h11's request-target is VCHARs only.
_REQUEST_LINE: Final = re.compile(TOKEN + rb" ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# RFC 9112 §3.2.2 absolute-form: a scheme (RFC 3986 §3.1) and an authority, as the http and
# https URIs have (RFC 9110 §4.2) and core/service_map.py absolute_form routes by.
_SCHEME: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
# The head most requests have, whole: a request line with an origin-form target and HTTP/1.x,
# CRLF line ends, well-formed field lines, no framing field nor a look-alike (_ for -), and no
# CONNECT. Every rule below holds for such a head and its verdict is Accept() with no body,
# so one C-level match decides it; any other head takes the careful way.
_PLAIN_HEAD: Final = re.compile(
    rb"(?!CONNECT )" + TOKEN + rb" /[\x21-\x7e]* HTTP/1\.[0-9]\r\n"
    rb"(?:(?!(?i:content[-_]length|transfer[-_]encoding):)"
    + TOKEN
    + rb":"
    + FIELD_TEXT
    + rb"\r\n)*\r\n"
)
# RFC 9112 §3.2.3 authority-form: uri-host ":" port (an IP literal or a reg-name; no userinfo).
_AUTHORITY: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+):[0-9]+")


@attrs.frozen
class Accept:
    """The request head is sound; how its body is framed."""

    content_length: int | None = None  # None: no Content-Length field
    chunked: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@attrs.frozen
class Reject:
    """Answer ``status`` (with ``headers`` besides the usual ones) and close the connection;
    nothing reaches a target."""

    status: int
    reason: str
    headers: tuple[Header, ...] = ()


Verdict: TypeAlias = Accept | Reject
_NO_BODY: Final = Accept()


def _split_lines(head: bytes) -> list[bytes]:
    """Lines without their LF or CRLF (the final empty line dropped), as h11 splits a head."""
    lines = head.split(b"\n")
    if lines[-1] != b"":
        lines.append(b"")  # tolerate a head passed without its final line end
    del lines[-1]
    if lines and lines[-1] in (b"", b"\r"):
        del lines[-1]
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def check_head(head: bytes, *, max_headers: int) -> Verdict:
    """Decide whether a request head may be served, and how its body is framed.

    Args:
      head: the request line and header lines, up to and including the blank line (the bytes
        :func:`kproxy.core.http1.find_head_end` delimits).
      max_headers: the most header fields allowed (431 beyond).

    Returns:
      Accept with the body's framing, or Reject with the status to answer.
    """
    # A field line takes at least 4 bytes ("a:" CRLF), so a short head has few enough.
    if _PLAIN_HEAD.fullmatch(head) is not None and (
        len(head) <= 4 * max_headers or head.count(b"\n") - 2 <= max_headers
    ):
        return _NO_BODY
    request_line, _, fields = head.partition(b"\r\n")
    usual = (
        head.endswith(b"\r\n\r\n")
        and head.count(b"\n") == head.count(b"\r\n")  # CRLF line ends only
        and FIELD_LINES.fullmatch(fields, 0, len(fields) - 2) is not None
    )
    if usual:
        field_lines = fields.split(b"\r\n")[:-2]
    else:  # bare LF line ends (h11 takes them) or a line that breaks a rule: one by one
        lines = _split_lines(head)
        if not lines or not lines[0]:
            return Reject(400, "no request line")
        request_line, *field_lines = lines
    if b"\r" in request_line:
        return Reject(400, "bare CR in the request line")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        return Reject(400, f"malformed request line {request_line[:80]!r}")
    version = (int(match[2]), int(match[3]))
    if version[0] != 1:
        return Reject(505, f"HTTP/{version[0]}.{version[1]} is not supported")
    target = match[1]
    if request_line.startswith(b"CONNECT "):
        return _connect(target)
    if target[:1] != b"/" and not _other_target_form(request_line, target):
        return Reject(400, f"invalid request target {target[:80]!r}")
    if len(field_lines) > max_headers:
        return Reject(431, f"more than {max_headers} header fields")
    headers: list[Header] = []
    for line in field_lines:
        if usual:
            name, _, value = line.partition(b":")
            field = name.lower(), value.strip(OWS)
        else:
            try:
                field = parse_field_line(line)
            except ProtocolError as exc:
                return Reject(400, str(exc))
        if b"_" in field[0] and field[0].replace(b"_", b"-") in FRAMING_FIELDS:
            return Reject(400, f"header {field[0].decode('ascii')} looks like a framing field")
        headers.append(field)
    return _body_framing(headers, version)


def _other_target_form(request_line: bytes, target: bytes) -> bool:
    """RFC 9112 §3.2: besides origin-form (``/path``), a target is absolute-form
    (``http://host/path``) or ``*`` (OPTIONS only); authority-form (``host:port``) is
    CONNECT's alone (§3.2.3), and CONNECT never gets here. Anything else (``?q``, ``path``)
    would reach the target as a path it never meant; Go's server refuses most of it too
    (url.ParseRequestURI)."""
    if target == b"*":
        return request_line.startswith(b"OPTIONS ")
    return _SCHEME.match(target) is not None


# RFC 9110 §15.5.6: a 405 names the methods that are served, here every one but CONNECT.
_ALLOW: Final = ((b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),)


def _connect(target: bytes) -> Reject:
    """CONNECT asks for a tunnel to ``host:port``, which is a forward proxy's job: kproxy
    serves its own services and tunnels nowhere, so 405, as nginx answers (Go's server, hence
    kamal-proxy, routes it by its ``host:port`` like any request, and a target would be asked
    to open a tunnel it never offered). A CONNECT whose target is not authority-form (RFC 9112
    §3.2.3) is malformed: 400. Either way the connection closes, as after any Reject."""
    if _AUTHORITY.fullmatch(target) is None:
        return Reject(400, f"CONNECT needs a host:port target, not {target[:80]!r}")
    return Reject(405, "CONNECT is not supported: kproxy is not a forward proxy", _ALLOW)


def _body_framing(headers: list[Header], version: tuple[int, int]) -> Verdict:
    """RFC 9112 §6.1-6.3 for a request: chunked, a Content-Length, or no body."""
    transfer_encodings = [v for n, v in headers if n == b"transfer-encoding"]
    content_lengths = [v for n, v in headers if n == b"content-length"]
    if transfer_encodings:
        if version == (1, 0):
            return Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        if content_lengths:
            return Reject(400, "both Content-Length and Transfer-Encoding")
        codings = list_elements(transfer_encodings)
        if not all(TOKEN_RE.fullmatch(c) for c in codings):
            return Reject(400, "malformed Transfer-Encoding")
        if [c.lower() for c in codings] != [b"chunked"]:
            return Reject(501, "unsupported Transfer-Encoding (only chunked is)")
        return Accept(chunked=True)
    if content_lengths:
        try:
            return Accept(content_length=content_length(content_lengths))
        except ProtocolError as exc:
            return Reject(400, str(exc))
    return _NO_BODY


def framing_headers(headers: Iterable[Header]) -> list[Header]:
    """The framing fields to send a request on with, in canonical form.

    Args:
      headers: the request's fields as h11 parsed them, after :func:`check_head` accepted it.

    Returns:
      ``[(b"transfer-encoding", b"chunked")]``, ``[(b"content-length", b"<decimal>")]`` (no
      leading zeros, one value) or ``[]``; the caller drops the client's own framing fields.

    Raises:
      ProtocolError: a Content-Length that :func:`check_head` would not have accepted.
    """
    lengths: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            return [(b"transfer-encoding", b"chunked")]
        if lower == b"content-length":
            lengths.append(value)
    return [(b"content-length", b"%d" % content_length(lengths))] if lengths else []


@attrs.define
class ChunkedBody(ChunkedDecoder):
    """Checks a chunked request body as its bytes arrive, before h11 reads them (h11 decodes
    it; the checks are :class:`~kproxy.core.chunked.ChunkedDecoder`'s).

    Feed every byte after the head, in order, until ``done``; bytes after the body (a pipelined
    request) are left alone. A rejection is final: later calls return it again.
    """

    consumed: int = 0  # body bytes seen so far; the body's length once done
    rejected: Reject | None = None

    def feed(self, data: bytes | bytearray) -> Reject | None:
        """Check the next bytes; returns a Reject once the body is malformed, else None."""
        if self.rejected is None and not self.done:
            i, n = 0, len(data)
            try:
                while i < n and not self.done:
                    _, i = self.next_data(data, i)  # the data itself is h11's to read
            except ProtocolError as exc:
                self.rejected = Reject(400, str(exc))
            else:
                self.consumed += i
        return self.rejected
