"""Target addresses as ``--target`` gives them (kproxy.core.addresses), in tables."""

from __future__ import annotations

import pytest

from kproxy.core import addresses


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:3000", "127.0.0.1", 3000),
        (" 127.0.0.1:3000 ", "127.0.0.1", 3000),
        ("web", "web", 80),
        ("WEB:1", "web", 1),
        ("app_web-1.internal:8080", "app_web-1.internal", 8080),
        ("_svc:80", "_svc", 80),
        ("[::1]:3000", "::1", 3000),
        ("[::1]", "::1", 80),
        ("[2001:DB8::0001]:443", "2001:db8::1", 443),
        ("10.0.0.1", "10.0.0.1", 80),
        ("a.b.c.example:65535", "a.b.c.example", 65535),
    ],
)
def test_parse_target(text: str, host: str, port: int) -> None:
    assert addresses.parse_target(text) == addresses.Address(host, port)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (addresses.Address("web", 80), "web:80"),
        (addresses.Address("::1", 3000), "[::1]:3000"),
        (addresses.Address("10.0.0.1", 1), "10.0.0.1:1"),
    ],
)
def test_address_str_round_trips(address: addresses.Address, text: str) -> None:
    assert str(address) == text
    assert addresses.parse_target(text) == address


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("foo bar", "expected host:port"),
        ("a:1\tb:2", "expected host:port"),
        ("host:0", "the port must be 1-65535, got '0'"),
        ("host:99999", "the port must be 1-65535, got '99999'"),
        ("host:-1", "the port must be 1-65535, got '-1'"),
        ("host:\uff18\uff10", "the port must be 1-65535"),  # full-width digits are not a port
        ("::1:80", "put an IPv6 address in brackets"),
        ("::1", "put an IPv6 address in brackets"),
        ("[::1]x", "expected host:port"),
        ("[::1]:", "the port must be 1-65535, got ''"),
        ("[nope]:80", "'nope' is not an IPv6 address"),
        ("https://web", "not a URL"),
        ("user@web:80", "expected host:port"),
        ("web/path", "expected host:port"),
        ("web\x00:80", "expected host:port"),
        (":80", "the host is missing"),
        ("web-:80", "'web-' is not a valid host name"),
        ("a" * 64 + ":80", "is not a valid host name"),
        (".web:80", "is not a valid host name"),
        ("\u212aelvin:80", "is not a valid host name"),  # KELVIN SIGN folds to "k"
        ("1.2.3", "'1.2.3' is neither a host name nor an IPv4 address"),
        ("999.1.1.1:80", "neither a host name nor an IPv4 address"),
    ],
)
def test_parse_target_errors_name_the_value(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid target") as info:
        addresses.parse_target(text)
    message = str(info.value)
    assert message.startswith(f"invalid target {text!r}: ")
    assert reason in message
