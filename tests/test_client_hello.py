"""core/client_hello.py: the server name of real ClientHellos (made by the stdlib's ssl, as
clients send them), split over several reads or records, and bytes that are not one."""

from __future__ import annotations

import ssl

import pytest

from kproxy.core.client_hello import (
    NEED_DATA,
    UNRECOGNIZED_NAME_ALERT,
    ClientHello,
    NotClientHello,
    parse_client_hello,
)


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a stdlib TLS client: one ClientHello record."""
    context = ssl.create_default_context()
    if server_name is None:
        context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def name_in(data: bytes) -> str | None:
    hello = parse_client_hello(data)
    assert isinstance(hello, ClientHello), hello
    return hello.server_name


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake message fragmented over records of ``size`` bytes (RFC 8446 §5.1)."""
    header, message = hello[:5], hello[5:]
    out = b""
    for at in range(0, len(message), size):
        piece = message[at : at + size]
        out += header[:3] + len(piece).to_bytes(2, "big") + piece
    return out


@pytest.mark.parametrize(
    ("server_name", "alpn", "expected"),
    [
        ("a.example.com", None, ClientHello("a.example.com")),
        ("App.Example.COM", None, ClientHello("app.example.com")),
        ("a.test", ["h2", "http/1.1"], ClientHello("a.test", (b"h2", b"http/1.1"))),
        (None, None, ClientHello(None)),
    ],
)
def test_real_client_hellos(
    server_name: str | None, alpn: list[str] | None, expected: ClientHello
) -> None:
    assert parse_client_hello(client_hello(server_name, alpn)) == expected


def test_a_hello_split_over_reads_needs_data_until_whole() -> None:
    hello = client_hello("a.example.com")
    for end in (0, 1, 4, 5, 6, 40, len(hello) - 1):
        assert parse_client_hello(hello[:end]) is NEED_DATA
    assert name_in(hello) == "a.example.com"


def test_a_hello_fragmented_over_records() -> None:
    data = split_records(client_hello("b.example.com"), 50)
    assert name_in(data) == "b.example.com"
    for end in (3, 60, len(data) - 10):
        assert parse_client_hello(data[:end]) is NEED_DATA


def test_bytes_after_the_hello_are_left_alone() -> None:
    hello = client_hello("a.test")
    assert name_in(hello + b"\x17\x03\x03junk") == "a.test"


def test_a_trailing_dot_is_dropped() -> None:
    hello = client_hello("a.test")
    at = hello.index(b"a.test")
    dotted = hello[:at] + b"a.tes." + hello[at + 6 :]  # a name of the same length, dotted
    assert name_in(dotted) == "a.tes"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "not a TLS handshake record"),
        (b"G", "not a TLS handshake record"),
        (b"\x80\x2e\x01\x03\x01", "not a TLS handshake record"),  # SSLv2-style hello
        (b"\x16\x03\x01\x00\x00", "bad TLS record length 0"),
        (b"\x16\x03\x01\x50\x00", "bad TLS record length 20480"),
        (b"\x16\x02\x00\x00\x04\x01\x00\x00\x00", "not a TLS handshake record"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "is not a ClientHello"),
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "truncated ClientHello"),
        (b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", "ClientHello of 65540 bytes is too large"),
    ],
)
def test_garbage_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(NotClientHello, match=reason):
        parse_client_hello(data)


def test_truncated_extensions_are_refused() -> None:
    hello = bytearray(client_hello("a.test"))
    # Shorten the handshake message and the record by 3 bytes: the extensions run short.
    cut = bytes(hello[:-3])
    record = len(cut) - 5
    message = record - 4
    fixed = cut[:3] + record.to_bytes(2, "big") + b"\x01" + message.to_bytes(3, "big") + cut[9:]
    with pytest.raises(NotClientHello, match="truncated"):
        parse_client_hello(fixed)


def test_the_unrecognized_name_alert_is_a_fatal_alert_record() -> None:
    assert UNRECOGNIZED_NAME_ALERT[:1] == b"\x15"  # alert record
    assert UNRECOGNIZED_NAME_ALERT[-2:] == b"\x02\x70"  # fatal, unrecognized_name (112)
