"""Tables for every header rule in kproxy.core.headers (kamal-proxy's forwarding behaviour)."""

from __future__ import annotations

import pytest

from kproxy.core.headers import (
    HOP_BY_HOP,
    HeaderList,
    UpstreamRequestHeaders,
    build_upstream_request_headers,
    canonical_host_redirect,
    client_ips_from_header,
    connection_tokens,
    header_value,
    header_values,
    is_hop_by_hop,
    strip_hop_by_hop,
    strip_response_hop_by_hop,
    upgrade_type,
)

BASE: HeaderList = [(b"host", b"app.example.com"), (b"accept", b"*/*")]


def build(
    headers: HeaderList,
    *,
    client_ip: str = "10.0.0.1",
    scheme: str = "http",
    forward_headers: bool = False,
    target: str = "web:3000",
    now: float = 1_700_000_000.25,
    new_request_id: str = "generated-id",
    upgrade: bool = False,
    forwarded_for: tuple[str, ...] | None = None,
) -> UpstreamRequestHeaders:
    """build_upstream_request_headers with fixed defaults, so each table varies one input."""
    return build_upstream_request_headers(
        headers,
        client_ip=client_ip,
        scheme=scheme,
        forward_headers=forward_headers,
        target=target,
        now=now,
        new_request_id=new_request_id,
        upgrade=upgrade,
        forwarded_for=forwarded_for,
    )


def values(result: UpstreamRequestHeaders, name: bytes) -> list[bytes]:
    return header_values(result.headers, name)


# --- small helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "name", "expected"),
    [
        ([], b"host", None),
        ([(b"host", b"a")], b"host", b"a"),
        ([(b"x", b"1"), (b"x", b"2")], b"x", b"1"),
        ([(b"x", b"")], b"x", b""),
    ],
)
def test_header_value(headers: HeaderList, name: bytes, expected: bytes | None) -> None:
    assert header_value(headers, name) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], frozenset()),
        ([(b"connection", b"close")], {b"close"}),
        ([(b"connection", b"Keep-Alive, UPGRADE")], {b"keep-alive", b"upgrade"}),
        ([(b"connection", b" x-a ,\tx-b,, "), (b"connection", b"X-C")], {b"x-a", b"x-b", b"x-c"}),
        ([(b"connection", b"")], frozenset()),
        ([(b"connection", b"a"), (b"x", b"b"), (b"connection", b" , A")], {b"a"}),
    ],
)
def test_connection_tokens(headers: HeaderList, expected: set[bytes]) -> None:
    assert connection_tokens(headers) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *((name, True) for name in sorted(HOP_BY_HOP)),
        (b"proxy", True),
        (b"proxy-foo", True),
        (b"x-proxy-foo", False),
        (b"proxyish", False),
        (b"content-length", False),
        (b"host", False),
    ],
)
def test_is_hop_by_hop(name: bytes, expected: bool) -> None:
    assert is_hop_by_hop(name) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"upgrade", b"websocket")], None),
        ([(b"connection", b"upgrade")], None),
        ([(b"connection", b"upgrade"), (b"upgrade", b"")], None),
        ([(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")], b"websocket"),
    ],
)
def test_upgrade_type(headers: HeaderList, expected: bytes | None) -> None:
    assert upgrade_type(headers) == expected


# --- hop-by-hop ----------------------------------------------------------------------------

STRIP_CASES = [
    pytest.param(BASE, False, BASE, id="end-to-end untouched"),
    pytest.param(
        [
            (b"host", b"a"),
            (b"connection", b"keep-alive"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"trailer", b"x-checksum"),
            (b"transfer-encoding", b"chunked"),
            (b"content-length", b"3"),
        ],
        False,
        [(b"host", b"a"), (b"content-length", b"3")],
        id="fixed list; content-length kept",
    ),
    pytest.param(
        [(b"connection", b"X-Foo , x-bar"), (b"x-foo", b"1"), (b"x-bar", b"2"), (b"x-baz", b"3")],
        False,
        [(b"x-baz", b"3")],
        id="connection-named, case-insensitive",
    ),
    pytest.param(
        [(b"connection", b"x-a"), (b"x-a", b"1"), (b"connection", b"x-b"), (b"x-b", b"2")],
        False,
        [],
        id="several connection headers",
    ),
    pytest.param(
        [
            (b"proxy-connection", b"keep-alive"),
            (b"proxy-authorization", b"Basic Zm9v"),
            (b"proxy-authenticate", b"Basic"),
            (b"proxy-foo", b"1"),
            (b"proxy", b"http://evil"),
            (b"x-proxy-foo", b"kept"),
        ],
        False,
        [(b"x-proxy-foo", b"kept")],
        id="proxy-* and httpoxy",
    ),
    pytest.param(
        [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"x", b"1")],
        False,
        [(b"x", b"1")],
        id="upgrade dropped when not upgrading",
    ),
    pytest.param(
        [
            (b"connection", b"keep-alive, Upgrade, x-foo"),
            (b"upgrade", b"websocket"),
            (b"keep-alive", b"timeout=5"),
            (b"x-foo", b"1"),
            (b"sec-websocket-key", b"k"),
        ],
        True,
        [(b"upgrade", b"websocket"), (b"sec-websocket-key", b"k"), (b"connection", b"upgrade")],
        id="upgrade kept, connection rewritten, other named headers still go",
    ),
    pytest.param(
        [(b"connection", b"keep-alive"), (b"x", b"1")],
        True,
        [(b"x", b"1")],
        id="keep_upgrade without an upgrade header adds nothing",
    ),
    pytest.param(
        [(b"connection", b"host, content-length"), (b"host", b"a"), (b"content-length", b"0")],
        False,
        [(b"host", b"a"), (b"content-length", b"0")],
        id="host and content-length cannot be connection-named",
    ),
]


@pytest.mark.parametrize(("headers", "keep_upgrade", "expected"), STRIP_CASES)
def test_strip_hop_by_hop(headers: HeaderList, keep_upgrade: bool, expected: HeaderList) -> None:
    before = list(headers)
    assert strip_hop_by_hop(headers, keep_upgrade=keep_upgrade) == expected
    assert headers == before  # inputs are never mutated


@pytest.mark.parametrize(("headers", "keep_upgrade", "expected"), STRIP_CASES)
def test_strip_response_matches_non_upgrade(
    headers: HeaderList, keep_upgrade: bool, expected: HeaderList
) -> None:
    assert strip_response_hop_by_hop(headers) == strip_hop_by_hop(headers, keep_upgrade=False)


def test_strip_response_keeps_framing_and_cookies() -> None:
    response = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"connection", b"close"),
        (b"transfer-encoding", b"chunked"),
    ]
    assert strip_response_hop_by_hop(response) == response[:4]


# --- upstream request headers ---------------------------------------------------------------


def test_full_request_exact_output() -> None:
    """Kept headers stay in order; the proxy's own headers follow in a fixed order."""
    result = build(
        [
            (b"host", b"app.example.com"),
            (b"connection", b"keep-alive"),
            (b"accept", b"*/*"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"forwarded", b"for=1.2.3.4"),
        ]
    )
    assert result == UpstreamRequestHeaders(
        headers=[
            (b"host", b"app.example.com"),
            (b"accept", b"*/*"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"app.example.com"),
            (b"x-request-id", b"generated-id"),
            (b"x-request-start", b"t=1700000000250"),
            (b"x-kamal-target", b"web:3000"),
        ],
        request_id="generated-id",
    )


@pytest.mark.parametrize(
    ("incoming", "forward_headers", "expected"),
    [
        ([], False, b"10.0.0.1"),
        ([], True, b"10.0.0.1"),
        ([b"1.2.3.4"], False, b"10.0.0.1"),
        ([b"1.2.3.4"], True, b"1.2.3.4, 10.0.0.1"),
        ([b"1.2.3.4", b"5.6.7.8, 9.9.9.9"], True, b"1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.1"),
        ([b"1.2.3.4", b"5.6.7.8"], False, b"10.0.0.1"),
        ([b"", b"1.2.3.4"], True, b"1.2.3.4, 10.0.0.1"),
    ],
)
def test_x_forwarded_for_append_or_replace(
    incoming: list[bytes], forward_headers: bool, expected: bytes
) -> None:
    headers = BASE + [(b"x-forwarded-for", v) for v in incoming]
    result = build(headers, forward_headers=forward_headers)
    assert values(result, b"x-forwarded-for") == [expected]


@pytest.mark.parametrize("forward_headers", [False, True])
def test_x_forwarded_for_omitted_without_client_ip(forward_headers: bool) -> None:
    result = build(
        [*BASE, (b"x-forwarded-for", b"1.2.3.4")], client_ip="", forward_headers=forward_headers
    )
    assert values(result, b"x-forwarded-for") == []


@pytest.mark.parametrize(
    ("incoming", "forward_headers", "scheme", "expected"),
    [
        ([], False, "http", b"http"),
        ([], True, "https", b"https"),
        ([b"https"], False, "http", b"http"),
        ([b"https"], True, "http", b"https"),
        ([b"http"], False, "https", b"https"),
        ([b"https", b"http"], True, "http", b"https"),
        ([b""], True, "https", b"https"),
    ],
)
def test_x_forwarded_proto_kept_or_set(
    incoming: list[bytes], forward_headers: bool, scheme: str, expected: bytes
) -> None:
    headers = BASE + [(b"x-forwarded-proto", v) for v in incoming]
    result = build(headers, forward_headers=forward_headers, scheme=scheme)
    assert values(result, b"x-forwarded-proto") == [expected]


@pytest.mark.parametrize(
    ("host", "incoming", "forward_headers", "expected"),
    [
        (b"app.test", None, False, [b"app.test"]),
        (b"app.test", None, True, [b"app.test"]),
        (b"app.test", b"public.test", False, [b"app.test"]),
        (b"app.test", b"public.test", True, [b"public.test"]),
        (b"app.test", b"", True, [b"app.test"]),
        (None, None, False, []),
        (None, b"public.test", False, []),
        (None, b"public.test", True, [b"public.test"]),
    ],
)
def test_x_forwarded_host_kept_or_set(
    host: bytes | None, incoming: bytes | None, forward_headers: bool, expected: list[bytes]
) -> None:
    headers: HeaderList = []
    if host is not None:
        headers.append((b"host", host))
    if incoming is not None:
        headers.append((b"x-forwarded-host", incoming))
    result = build(headers, forward_headers=forward_headers)
    assert values(result, b"x-forwarded-host") == expected
    assert values(result, b"host") == ([host] if host is not None else [])


@pytest.mark.parametrize(
    ("incoming", "expected_values", "expected_id"),
    [
        ([], [b"generated-id"], "generated-id"),
        ([b"abc-123"], [b"abc-123"], "abc-123"),
        ([b"abc", b"def"], [b"abc", b"def"], "abc"),
        ([b""], [b"generated-id"], "generated-id"),
    ],
)
def test_x_request_id_kept_or_generated(
    incoming: list[bytes], expected_values: list[bytes], expected_id: str
) -> None:
    result = build(BASE + [(b"x-request-id", v) for v in incoming])
    assert values(result, b"x-request-id") == expected_values
    assert result.request_id == expected_id


@pytest.mark.parametrize(
    ("incoming", "now", "expected"),
    [
        ([], 1_700_000_000.25, [b"t=1700000000250"]),
        ([], 0.0, [b"t=0"]),
        ([b"t=123"], 1_700_000_000.25, [b"t=123"]),
        ([b"1234"], 1_700_000_000.25, [b"1234"]),
        ([b""], 2.5, [b"t=2500"]),
    ],
)
def test_x_request_start_kept_or_added(
    incoming: list[bytes], now: float, expected: list[bytes]
) -> None:
    result = build(BASE + [(b"x-request-start", v) for v in incoming], now=now)
    assert values(result, b"x-request-start") == expected


@pytest.mark.parametrize(
    ("incoming", "forward_headers", "expected"),
    [
        ([], False, b"web-2:8080"),
        ([], True, b"web-2:8080"),
        ([b"other:80"], False, b"web-2:8080"),  # not trusted: replaced
        ([b"a:1", b"b:2"], False, b"web-2:8080"),
        # Trusted: appended, as kamal-proxy's setTargetHeader (load_balancer.go) does.
        ([b"other:80"], True, b"other:80, web-2:8080"),
        ([b"a:1", b"b:2"], True, b"a:1, b:2, web-2:8080"),
        ([b"a:1, b:2"], True, b"a:1, b:2, web-2:8080"),
        ([b""], True, b", web-2:8080"),  # Go joins an empty value too
    ],
)
def test_x_kamal_target_appended_or_replaced(
    incoming: list[bytes], forward_headers: bool, expected: bytes
) -> None:
    headers = BASE + [(b"x-kamal-target", v) for v in incoming]
    result = build(headers, target="web-2:8080", forward_headers=forward_headers)
    assert values(result, b"x-kamal-target") == [expected]


@pytest.mark.parametrize("forward_headers", [False, True])
def test_forwarded_header_dropped(forward_headers: bool) -> None:
    result = build([*BASE, (b"forwarded", b"for=1.2.3.4")], forward_headers=forward_headers)
    assert values(result, b"forwarded") == []


def test_connection_cannot_suppress_proxy_headers() -> None:
    """A client naming our own headers in Connection must not stop them reaching the app."""
    headers = [
        (b"host", b"a"),
        (b"connection", b"x-forwarded-for, x-request-id, x-request-start, x-kamal-target, x-app"),
        (b"x-request-id", b"rid"),
        (b"x-request-start", b"t=1"),
        (b"x-app", b"gone"),
    ]
    result = build(headers)
    for name in (b"x-forwarded-for", b"x-request-id", b"x-request-start", b"x-kamal-target"):
        assert len(values(result, name)) == 1
    assert values(result, b"x-app") == []


@pytest.mark.parametrize(
    ("upgrade", "expected_upgrade", "expected_connection"),
    [
        (False, [], []),
        (True, [b"websocket"], [b"upgrade"]),
    ],
)
def test_upgrade_forwarded_only_when_upgrading(
    upgrade: bool, expected_upgrade: list[bytes], expected_connection: list[bytes]
) -> None:
    headers = [*BASE, (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
    result = build(headers, upgrade=upgrade)
    assert values(result, b"upgrade") == expected_upgrade
    assert values(result, b"connection") == expected_connection


def test_hop_by_hop_stripped_and_body_framing_kept() -> None:
    headers = [
        *BASE,
        (b"content-length", b"10"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"proxy-authorization", b"secret"),
    ]
    result = build(headers)
    assert values(result, b"content-length") == [b"10"]
    for name in (b"transfer-encoding", b"te", b"proxy-authorization"):
        assert values(result, name) == []


# --- --client-ip-header (kamal-proxy: internal/server/client_ip_middleware_test.go) --------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"cf-connecting-ip", b"203.0.113.9")], ("203.0.113.9",)),
        ([(b"cf-connecting-ip", b" 2001:db8::1 ")], ("2001:db8::1",)),
        ([(b"cf-connecting-ip", b"203.0.113.9, 10.0.0.1")], ("203.0.113.9", "10.0.0.1")),
        (
            [(b"cf-connecting-ip", b"203.0.113.9"), (b"cf-connecting-ip", b"10.0.0.1")],
            ("203.0.113.9", "10.0.0.1"),
        ),
        ([(b"x-forwarded-for", b"203.0.113.9")], None),  # another header is not trusted
        # Blank counts as absent (None: the request is forwarded as if the option were unset).
        ([(b"cf-connecting-ip", b"")], None),
        ([(b"cf-connecting-ip", b" ")], None),
        ([(b"cf-connecting-ip", b""), (b"cf-connecting-ip", b"\t")], None),
        # Anything but IP addresses is ignored whole: () says the peer is used instead.
        ([(b"cf-connecting-ip", b"unknown")], ()),
        ([(b"cf-connecting-ip", b"203.0.113.9, evil")], ()),
        ([(b"cf-connecting-ip", b"203.0.113.9,")], ()),
        ([(b"cf-connecting-ip", b"203.0.113.9:443")], ()),
        ([(b"cf-connecting-ip", b"256.1.1.1")], ()),
        ([(b"cf-connecting-ip", b"1.2.3.4\xff")], ()),
        ([(b"cf-connecting-ip", b""), (b"cf-connecting-ip", b"1.2.3.4")], ()),
    ],
)
def test_client_ips_from_header(headers: HeaderList, expected: tuple[str, ...] | None) -> None:
    assert client_ips_from_header([*BASE, *headers], "CF-Connecting-IP") == expected


@pytest.mark.parametrize("forward_headers", [False, True])
@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        (None, None),  # unset, or the request lacks it: the usual rules (other tests)
        (("203.0.113.9",), b"203.0.113.9, 10.0.0.1"),
        (("203.0.113.9", "10.9.9.9"), b"203.0.113.9, 10.9.9.9, 10.0.0.1"),
        ((), b"10.0.0.1"),  # sent but not IPs: the incoming value is not trusted
    ],
)
def test_client_ip_header_replaces_x_forwarded_for(
    forwarded_for: tuple[str, ...] | None, expected: bytes | None, forward_headers: bool
) -> None:
    """As in kamal-proxy, the header's value stands in for X-Forwarded-For whatever
    --forward-headers says, and the socket peer is appended to it."""
    headers = [*BASE, (b"x-forwarded-for", b"6.6.6.6")]
    result = build(headers, forward_headers=forward_headers, forwarded_for=forwarded_for)
    if expected is None:
        expected = b"6.6.6.6, 10.0.0.1" if forward_headers else b"10.0.0.1"
    assert values(result, b"x-forwarded-for") == [expected]


# --- --canonical-host (kamal-proxy: Service.redirectURLIfNeeded, internal/server/service.go) --


@pytest.mark.parametrize(
    ("host", "target", "scheme", "expected"),
    [
        (b"example.com", b"/", "http", None),
        (b"EXAMPLE.com", b"/", "http", None),  # hosts compare case-insensitively
        (b"example.com:8080", b"/", "http", None),  # the port is not part of the host
        (b"www.example.com", b"/", "http", b"http://example.com/"),
        (b"www.example.com", b"/up", "http", b"http://example.com/up"),  # health path too
        (b"www.example.com", b"/a/b?x=1&y=%20;z", "http", b"http://example.com/a/b?x=1&y=%20;z"),
        (b"www.example.com", b"/p?", "http", b"http://example.com/p?"),
        (b"www.example.com", b"/%2F..%2f?q=a+b", "https", b"https://example.com/%2F..%2f?q=a+b"),
        # A port other than the scheme's default is kept (kamal-proxy drops it).
        (b"www.example.com:8080", b"/x", "http", b"http://example.com:8080/x"),
        (b"www.example.com:80", b"/x", "http", b"http://example.com/x"),
        (b"www.example.com:443", b"/x", "https", b"https://example.com/x"),
        (b"www.example.com:443", b"/x", "http", b"http://example.com:443/x"),
        (b"www.example.com:", b"/x", "http", b"http://example.com/x"),
        (b"www.example.com:99999", b"/x", "http", b"http://example.com/x"),
        (b"[::1]:8080", b"/x", "http", b"http://example.com:8080/x"),
        # Absolute form: only the path and query go into Location.
        (b"www.example.com", b"http://www.example.com/a?b", "http", b"http://example.com/a?b"),
        (b"www.example.com", b"http://www.example.com?b", "http", b"http://example.com/?b"),
        (b"www.example.com", b"http://www.example.com", "http", b"http://example.com/"),
        (b"www.example.com", b"*", "http", b"http://example.com/"),
        # Bytes a header may not carry are percent-encoded, as Go's http.Redirect does.
        (b"www.example.com", b"/caf\xc3\xa9", "http", b"http://example.com/caf%C3%A9"),
        (b"www.example.com", b"/a\x01b", "http", b"http://example.com/a%01b"),
        (None, b"/", "http", b"http://example.com/"),
    ],
)
def test_canonical_host_redirect(
    host: bytes | None, target: bytes, scheme: str, expected: bytes | None
) -> None:
    assert (
        canonical_host_redirect(host, target, canonical_host="example.com", scheme=scheme)
        == expected
    )


def test_canonical_host_redirect_off_without_canonical_host() -> None:
    assert canonical_host_redirect(b"a.test", b"/", canonical_host="", scheme="http") is None


def test_canonical_host_redirect_to_an_ipv6_canonical_host() -> None:
    assert (
        canonical_host_redirect(b"a.test:8080", b"/", canonical_host="::1", scheme="http")
        == b"http://[::1]:8080/"
    )
