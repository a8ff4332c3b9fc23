"""The server name of a TLS ClientHello, read before the handshake begins: sans-IO.

The certificate is chosen per connection by the name the client asks for (SNI, RFC 6066 §3),
and choosing may take time (ACME issues a certificate on the first handshake for a name), while
Python's ``sni_callback`` must answer at once. So the runtime reads the first bytes itself,
asks :func:`parse_client_hello` for the name, awaits the certificate, and only then starts the
handshake with the bytes already read (kamal-proxy's ``Router.GetCertificate``,
internal/server/router.go, gets the same name from Go's handshake).

The parser walks the records of RFC 8446 §5.1 and the ClientHello of §4.1.2 (TLS 1.2 has the
same layout, RFC 5246 §7.4.1.2); a ClientHello may span several records and several reads. It
answers :data:`NEED_DATA` until it has the whole message, and raises :class:`NotClientHello`
for anything else (plain HTTP on the HTTPS port, SSLv2, garbage): the runtime closes then.
"""

from __future__ import annotations

from typing import Final

import attrs

MAX_HELLO_SIZE: Final = 64 * 1024  # bytes; a real one is under 2 KiB (post-quantum shares)
_HANDSHAKE_RECORD: Final = 22
_CLIENT_HELLO: Final = 1
_SERVER_NAME: Final = 0  # extension type, RFC 6066 §3
_ALPN: Final = 16  # extension type, RFC 7301 §3.1
_HOST_NAME: Final = 0  # NameType
_MAX_RECORD: Final = (1 << 14) + 2048  # bytes of payload; RFC 8446 §5.2 allows this much

# A fatal unrecognized_name alert (RFC 8446 §6.2, description 112), sent in the clear instead
# of a ServerHello when no certificate serves the name: the client names the problem, and no
# certificate of another service (with its host names) is shown.
UNRECOGNIZED_NAME_ALERT: Final = bytes((21, 3, 3, 0, 2, 2, 112))


class NeedData:
    """More bytes are needed (the same buffer, longer, is to be parsed again)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class NotClientHello(ValueError):
    """The bytes are not a TLS ClientHello kproxy can serve; the message says why."""


@attrs.frozen
class ClientHello:
    """What the certificate choice needs of a ClientHello."""

    server_name: str | None  # lowercased, without a trailing dot; None: the client sent none
    alpn: tuple[bytes, ...] = ()  # protocols offered, in the client's order


def parse_client_hello(data: bytes) -> ClientHello | NeedData:
    """Parse the ClientHello at the start of ``data`` (everything read so far).

    Raises:
      NotClientHello: the bytes are something else, or malformed.
    """
    message = _handshake_message(data)
    if message is None:
        return NEED_DATA
    return _parse_hello(message)


def _handshake_message(data: bytes) -> bytes | None:
    """The first handshake message, joined from as many records as it spans; None: more."""
    payload = bytearray()
    offset = 0
    while True:
        if len(data) - offset < 5:
            _check_started(data)
            return None
        kind, major, length = data[offset], data[offset + 1], _u16(data, offset + 3)
        if kind != _HANDSHAKE_RECORD or major != 3:
            raise NotClientHello("not a TLS handshake record")
        if length == 0 or length > _MAX_RECORD:
            raise NotClientHello(f"bad TLS record length {length}")
        end = offset + 5 + length
        if end > len(data):
            payload += data[offset + 5 :]
            _check_total(payload)
            return None
        payload += data[offset + 5 : end]
        offset = end
        if len(payload) >= 4:
            if payload[0] != _CLIENT_HELLO:
                raise NotClientHello("the first handshake message is not a ClientHello")
            size = 4 + (payload[1] << 16 | payload[2] << 8 | payload[3])
            if size > MAX_HELLO_SIZE:
                raise NotClientHello(f"ClientHello of {size} bytes is too large")
            if len(payload) >= size:
                return bytes(payload[4:size])


def _check_started(data: bytes) -> None:
    """Refuse early what cannot become a handshake record (plain HTTP, say)."""
    if data[:1] and data[0] != _HANDSHAKE_RECORD:
        raise NotClientHello("not a TLS handshake record")


def _check_total(payload: bytearray) -> None:
    if len(payload) >= 4 and payload[0] != _CLIENT_HELLO:
        raise NotClientHello("the first handshake message is not a ClientHello")


def _u16(data: bytes | bytearray, at: int) -> int:
    return data[at] << 8 | data[at + 1]


class _Reader:
    """Bounds-checked reads over one message; running short is a malformed message."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise NotClientHello("truncated ClientHello")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return _u16(self.take(2), 0)

    def vector(self, length_size: int) -> bytes:
        return self.take(self.u8() if length_size == 1 else self.u16())

    def done(self) -> bool:
        return self.at >= len(self.data)


def _parse_hello(message: bytes) -> ClientHello:
    reader = _Reader(message)
    reader.take(2 + 32)  # legacy_version, random
    if len(reader.vector(1)) > 32:
        raise NotClientHello("session id longer than 32 bytes")
    suites = reader.vector(2)
    if not suites or len(suites) % 2:
        raise NotClientHello("bad cipher suite list")
    reader.vector(1)  # compression methods
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    if reader.done():
        return ClientHello(None)  # no extensions at all (an old client)
    extensions = _Reader(reader.vector(2))
    seen: set[int] = set()
    while not extensions.done():
        kind, body = extensions.u16(), extensions.vector(2)
        if kind in seen:
            raise NotClientHello(f"extension {kind} appears twice")  # RFC 8446 §4.2
        seen.add(kind)
        if kind == _SERVER_NAME:
            server_name = _server_name(body)
        elif kind == _ALPN:
            alpn = _protocols(body)
    return ClientHello(server_name, alpn)


def _server_name(body: bytes) -> str | None:
    names = _Reader(_Reader(body).vector(2))
    while not names.done():
        kind, name = names.u8(), names.vector(2)
        if kind == _HOST_NAME:
            if not name or not name.isascii() or any(b <= 0x20 or b == 0x7F for b in name):
                raise NotClientHello("bad server name")
            return name.decode("ascii").lower().removesuffix(".")
    return None


def _protocols(body: bytes) -> tuple[bytes, ...]:
    protocols = _Reader(_Reader(body).vector(2))
    found: list[bytes] = []
    while not protocols.done():
        found.append(protocols.vector(1))
    return tuple(found)
