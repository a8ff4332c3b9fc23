"""The ACME client's HTTPS: one request at a time over h11 on a trio TLS stream.

TLS trusts the system's store plus ``SSL_CERT_FILE`` (both, not one instead of the other, as
OpenSSL's defaults would have it), or an explicit ``ssl.SSLContext`` (tests pass one that
trusts their pebble's CA). Each request opens its own connection, under one deadline that
covers connect, handshake, request and response: an ACME exchange is a handful of requests
per certificate every few weeks, so simplicity beats keep-alive here.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

import attrs
import h11
import trio

from kproxy.core.acme_problem import AcmeError, AcmeTimeout

REQUEST_TIMEOUT: Final = 30.0  # seconds, for one whole request and its response
MAX_RESPONSE_BODY: Final = 1024 * 1024  # bytes: a certificate chain is a few KiB
READ_SIZE: Final = 64 * 1024  # bytes
USER_AGENT: Final = b"kproxy-acme"


def client_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system store, plus ``SSL_CERT_FILE`` when it is set,
    plus ``cafile`` when given."""
    context = ssl.create_default_context()
    # With SSL_CERT_FILE set, OpenSSL loads that file instead of the system bundle; load the
    # system bundle too, so the variable adds trust instead of replacing it.
    system = ssl.get_default_verify_paths().openssl_cafile
    if system and os.path.isfile(system):
        context.load_verify_locations(cafile=system)
    extra = os.environ.get("SSL_CERT_FILE")
    if extra and os.path.isfile(extra):
        context.load_verify_locations(cafile=extra)
    if cafile is not None:
        context.load_verify_locations(cafile=cafile)
    return context


@attrs.frozen
class HttpsResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), as text."""
        key = name.lower().encode("ascii")
        return next((v.decode("latin-1") for k, v in self.headers if k == key), None)


@attrs.define(eq=False)
class HttpsClient:
    """HTTPS requests for the ACME client.

    Args:
        ssl_context: the trust for the CA's certificate (``client_ssl_context()`` by default).
        timeout: the deadline of one request, seconds.
        allow_http: take http:// URLs too.
    """

    ssl_context: ssl.SSLContext = attrs.field(factory=client_ssl_context)
    timeout: float = REQUEST_TIMEOUT
    allow_http: bool = False  # plain http:// too (the on-demand URL; ACME itself is https)

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    ) -> HttpsResponse:
        """One request and its whole response.

        Raises:
            AcmeTimeout: no whole response within ``timeout``.
            AcmeError: the connection or TLS failed, or the response broke HTTP.
        """
        parts = urlsplit(url)
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise AcmeError(f"not an https URL: {url}")
        secure = parts.scheme == "https"
        host, port = parts.hostname, parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        items = headers.items() if isinstance(headers, Mapping) else headers
        head = [
            ("Host", parts.netloc),
            ("User-Agent", USER_AGENT.decode()),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            *items,
        ]
        try:
            with trio.fail_after(self.timeout):
                return await self._exchange(host, port, method, target, head, body, secure)
        except trio.TooSlowError:
            raise AcmeTimeout(f"{method} {url}: no answer within {self.timeout:g} s") from None
        except (OSError, ssl.SSLError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise AcmeError(f"{method} {url}: {_describe(exc)}") from exc

    async def _exchange(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        head: list[tuple[str, str]],
        body: bytes,
        secure: bool = True,
    ) -> HttpsResponse:
        stream: trio.abc.Stream
        if secure:
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=self.ssl_context, https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
        try:
            conn = h11.Connection(h11.CLIENT)
            data = conn.send(h11.Request(method=method, target=target, headers=head))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            return await _read_response(conn, stream)
        finally:
            await trio.aclose_forcefully(stream)


def _describe(exc: BaseException) -> str:
    """The most telling message: trio's BrokenResourceError has none of its own (the TLS
    error is its cause), and a failed connect names each address tried in its cause."""
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        return _describe(cause)
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return f"{exc}: {'; '.join(str(e) for e in cause.exceptions)}"
    return str(exc) or type(exc).__name__


async def _read_response(conn: h11.Connection, stream: trio.abc.Stream) -> HttpsResponse:
    response: h11.Response | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(READ_SIZE)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_RESPONSE_BODY:
                raise AcmeError(f"response body over {MAX_RESPONSE_BODY} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None  # h11 sends the head before the end
            return HttpsResponse(response.status_code, tuple(response.headers), b"".join(chunks))
        elif isinstance(event, h11.ConnectionClosed):
            raise AcmeError("the server closed the connection mid-response")
