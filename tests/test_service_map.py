"""Routing table cases, ported from kamal-proxy's internal/server/service_map_test.go."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kproxy.core.service_map import (
    Conflict,
    Route,
    ServiceMap,
    absolute_form,
    normalize_host,
    normalize_path_prefix,
    request_host,
    strip_path_prefix,
)


def build(*bindings: tuple[str, Sequence[str], Sequence[str]]) -> ServiceMap:
    service_map = ServiceMap.empty()
    for name, hosts, prefixes in bindings:
        service_map = service_map.with_service(name, hosts, prefixes)
    return service_map


def split_url(url: str) -> tuple[bytes, str]:
    """``"example.com:8080/api?x"`` → (Host header, path), as the HTTP server sees them."""
    host, slash, rest = url.partition("/")
    return host.encode(), (slash + rest).partition("?")[0]


# Service names say what they bind, so a failing case explains itself.
ROUTING = build(
    ("example", ["example.com"], []),
    ("example-api", ["example.com"], ["/api"]),
    ("example-api-special", ["example.com"], ["/api/special"]),
    ("app", ["app.example.com"], []),
    ("other-api", ["other.example.com"], ["/api"]),
    ("wild", ["*.example.com"], []),
    ("wild-deep", ["*.deep.example.com"], ["/api"]),
    ("multi", ["one.test", "two.test"], ["/a", "/b/c"]),
    ("ipv4", ["10.0.0.1"], []),
    ("ipv6", ["[2001:db8::1]"], []),
    ("loopback6", ["::1"], ["/v6"]),
    ("default-api", [], ["/api"]),
    ("default", [], []),
)


@pytest.mark.parametrize(
    ("url", "service", "prefix"),
    [
        # Exact host, then the longest prefix on a segment boundary.
        ("example.com/", "example", "/"),
        ("example.com", "example", "/"),
        ("example.com/random", "example", "/"),
        ("example.com/apiary", "example", "/"),
        ("example.com/api", "example-api", "/api"),
        ("example.com/api/", "example-api", "/api"),
        ("example.com/api/x", "example-api", "/api"),
        ("example.com/api?q=1", "example-api", "/api"),
        ("example.com/api/specialist", "example-api", "/api"),
        ("example.com/api/special", "example-api-special", "/api/special"),
        ("example.com/api/special/", "example-api-special", "/api/special"),
        ("example.com/api/special/x", "example-api-special", "/api/special"),
        ("example.com/API", "example", "/"),  # paths are case-sensitive
        ("example.com/api%2Fx", "example", "/"),  # matched as sent, not percent-decoded
        ("example.com//api", "example", "/"),
        ("app.example.com/anything", "app", "/"),
        ("other.example.com/api/test", "other-api", "/api"),
        # The wildcard covers exactly one more label.
        ("anything.example.com/", "wild", "/"),
        ("anything.example.com/api/x", "wild", "/"),
        ("x.deep.example.com/api/x", "wild-deep", "/api"),
        ("deep.example.com/api", "wild", "/"),
        ("extra.level.example.com/", "default", "/"),
        ("a.b.c.example.com/api", "default-api", "/api"),
        # Every host with every prefix, all bound.
        ("one.test/a", "multi", "/a"),
        ("two.test/a/x", "multi", "/a"),
        ("two.test/b/c/d", "multi", "/b/c"),
        # The default service.
        ("other.com/", "default", "/"),
        ("other.com/api/test", "default-api", "/api"),
        ("other.com/non-api/test", "default", "/"),
        ("/", "default", "/"),  # no Host header at all (HTTP/1.0)
        ("localhost/", "default", "/"),
        # Ports are stripped and hosts are case-insensitive.
        ("example.com:8080/api", "example-api", "/api"),
        ("EXAMPLE.com/api", "example-api", "/api"),
        ("Anything.Example.COM:443/", "wild", "/"),
        ("example.com:/api", "example-api", "/api"),
        # IP literals.
        ("10.0.0.1/", "ipv4", "/"),
        ("10.0.0.1:80/x", "ipv4", "/"),
        ("10.0.0.2/", "default", "/"),
        ("[2001:db8::1]/", "ipv6", "/"),
        ("[2001:DB8:0::1]:8080/x", "ipv6", "/"),
        ("[::1]:3000/v6/x", "loopback6", "/v6"),
        ("[::2]/", "default", "/"),
        # Oddities keep the whole value, which then finds no exact binding (like Go).
        (":8080/", "default", "/"),
    ],
)
def test_lookup(url: str, service: str, prefix: str) -> None:
    host, path = split_url(url)
    assert ROUTING.lookup(request_host(host), path) == Route(service=service, path_prefix=prefix)


@pytest.mark.parametrize(
    "url",
    [
        # The first host level with bindings decides; unmatched paths do not fall through.
        "other.example.com/",
        "other.example.com/apiary",
        "x.deep.example.com/",
        "one.test/",
        "one.test/b",
        "one.test/ab",
        "[::1]/",
        "[::1]:3000/v6x",
    ],
)
def test_lookup_does_not_fall_through(url: str) -> None:
    host, path = split_url(url)
    assert ROUTING.lookup(request_host(host), path) is None


def test_lookup_without_default_service() -> None:
    service_map = build(("1", ["example.com"], []))
    assert service_map.lookup("app.example.com", "/") is None
    assert service_map.lookup("", "/") is None
    assert ServiceMap.empty().lookup("example.com", "/") is None


def test_root_prefix_matches_any_path() -> None:
    service_map = build(("root", [], []))
    for path in ["/", "", "*", "/a/b/c", "//", "/?"]:
        assert service_map.lookup("", path) == Route("root", "/")


def test_with_service_replaces_earlier_bindings() -> None:
    first = build(("a", ["x.com"], ["/one"]))
    second = first.with_service("a", ["y.com"], [])
    assert second.lookup("x.com", "/one") is None
    assert second.lookup("y.com", "/") == Route("a", "/")
    assert first.lookup("x.com", "/one") == Route("a", "/one")  # the old value is untouched
    assert second.services() == frozenset({"a"})


def test_without_service() -> None:
    service_map = build(("a", ["x.com"], []), ("b", [], []))
    assert service_map.without_service("a").lookup("x.com", "/") == Route("b", "/")
    assert service_map.without_service("a").services() == frozenset({"b"})
    assert service_map.without_service("missing") == service_map
    assert ServiceMap.empty().services() == frozenset()


def test_maps_compare_by_bindings_not_build_order() -> None:
    forward = build(("a", ["x.com"], []), ("b", ["y.com"], ["/p"]))
    backward = build(("b", ["y.com"], ["/p"]), ("a", ["x.com"], []))
    assert forward == backward
    assert hash(forward) == hash(backward)
    assert forward != forward.without_service("a")


def test_with_service_normalizes_and_validates() -> None:
    service_map = build(("a", [" Example.COM ", "example.com", "[::1]"], ["api/", "/api"]))
    assert service_map.lookup("example.com", "/api/x") == Route("a", "/api")
    assert service_map.lookup("::1", "/api") == Route("a", "/api")
    with pytest.raises(ValueError, match="invalid host"):
        ServiceMap.empty().with_service("a", ["bad host"], [])
    with pytest.raises(ValueError, match="invalid path prefix"):
        ServiceMap.empty().with_service("a", [], ["/a?b"])


def test_duplicate_pairs_resolve_deterministically() -> None:
    # Callers check conflict() first; if they do not, the name that sorts first wins.
    service_map = build(("b", ["x.com"], []), ("a", ["x.com"], []))
    assert service_map.lookup("x.com", "/") == Route("a", "/")


CONFLICTS = build(
    ("1", ["example.com"], []),
    ("2", ["app.example.com"], []),
    ("3", ["app.example.com"], ["/api"]),
    ("wild", ["*.example.com"], []),
)


@pytest.mark.parametrize(
    ("name", "hosts", "prefixes", "expected"),
    [
        # From TestServiceMap_CheckAvailability.
        ("2", ["app.example.com"], [], None),
        ("4", ["api.example.com"], [], None),
        ("4", [], [], None),
        ("4", [""], [], None),
        ("4", ["app.example.com"], ["/app"], None),
        ("3", ["app.example.com"], ["/api"], None),
        ("4", ["app.example.com"], [], Conflict("app.example.com", "/", "2")),
        ("4", ["app.example.com"], ["/api"], Conflict("app.example.com", "/api", "3")),
        # Normalized before comparing.
        ("4", ["APP.example.com"], ["api/"], Conflict("app.example.com", "/api", "3")),
        ("4", ["app.example.com"], ["/"], Conflict("app.example.com", "/", "2")),
        # The first pair wins, host by host, then prefix by prefix.
        ("4", ["new.com", "example.com"], ["/x", "/"], Conflict("example.com", "/", "1")),
        (
            "4",
            ["app.example.com"],
            ["/api", "/"],
            Conflict("app.example.com", "/api", "3"),
        ),
        # Wildcards conflict only with the same wildcard, not with the hosts they cover.
        ("4", ["*.example.com"], [], Conflict("*.example.com", "/", "wild")),
        ("4", ["x.example.com"], [], None),
        # A longer prefix on a host served at "/" is allowed: it carves the path out.
        ("4", ["example.com"], ["/api"], None),
    ],
)
def test_conflict(
    name: str, hosts: list[str], prefixes: list[str], expected: Conflict | None
) -> None:
    assert CONFLICTS.conflict(name, hosts, prefixes) == expected


def test_conflict_on_default_host() -> None:
    service_map = build(("default", [], []))
    assert service_map.conflict("new", [], []) == Conflict("", "/", "default")
    assert service_map.conflict("default", [], []) is None
    # TestServiceMap_CheckHostAvailability_EmptyHostsFirst.
    assert service_map.conflict("new", ["app.example.com"], []) is None


@pytest.mark.parametrize(
    ("header", "host"),
    [
        (None, ""),
        (b"", ""),
        (b"example.com", "example.com"),
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"example.com:", "example.com"),
        (b"10.0.0.1:80", "10.0.0.1"),
        (b"[::1]:8080", "::1"),
        (b"[::1]", "::1"),
        (b"[2001:DB8:0:0::1]:443", "2001:db8::1"),
        (b"::1", "::1"),  # bare, which RFC 9110 forbids; tolerated
        (b"[not-ip]:80", "not-ip"),
        (b"[::1", "[::1"),
        (b":8080", ":8080"),
        (b"a:b:c", "a:b:c"),
    ],
)
def test_request_host(header: bytes | None, host: str) -> None:
    assert request_host(header) == host


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("example.com", "example.com"),
        ("  Example.COM  ", "example.com"),
        ("localhost", "localhost"),
        ("my-app.example.com", "my-app.example.com"),
        ("my_app", "my_app"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("123.example.com", "123.example.com"),
        ("*.example.com", "*.example.com"),
        ("*.COM", "*.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[2001:DB8:0:0::1]", "2001:db8::1"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_normalize_host(value: str, host: str) -> None:
    assert normalize_host(value) == host


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("exa mple.com", "whitespace"),
        ("a.com b.com", "whitespace"),
        ("b\u00fccher.de", "punycode"),
        ("example.com:8080", "port"),
        ("10.0.0.1:80", "port"),
        ("[::1]:8080", "port"),
        ("[::1", "port"),
        (":::", "not a valid IPv6"),
        ("example.com/api", "no path"),
        ("https://example.com", "not a URL"),
        ("*", '"*" is only allowed as the whole first label'),
        ("a.*.com", '"*"'),
        ("*.*.com", '"*"'),
        ("*example.com", '"*"'),
        ("x*.example.com", '"*"'),
        ("*.10.0.0.1", "wildcard needs a domain name"),
        ("256.0.0.1", "not a valid IPv4"),
        ("1.2.3", "not a valid IPv4"),
        ("example.com.", "empty label"),
        (".example.com", "empty label"),
        ("a..com", "empty label"),
        ("-a.com", 'bad label "-a"'),
        ("a-.com", 'bad label "a-"'),
        ("a!.com", 'bad label "a!"'),
        ("a" * 64 + ".com", "bad label"),
        (("a" * 60 + ".") * 5, "longer than 253"),
    ],
)
def test_normalize_host_rejects(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid host ") as info:
        normalize_host(value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("api", "/api"),
        ("/api", "/api"),
        ("/api/", "/api"),
        ("//api//", "/api"),
        ("/api/v1", "/api/v1"),
        ("/a//b", "/a//b"),
        ("/API", "/API"),
        ("/caf%C3%A9", "/caf%C3%A9"),
    ],
)
def test_normalize_path_prefix(value: str, prefix: str) -> None:
    assert normalize_path_prefix(value) == prefix


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("/api?x=1", "query or fragment"),
        ("/api#top", "query or fragment"),
        ("/my api", "whitespace"),
        (" /api", "whitespace"),
        ("/api\t", "whitespace"),
        ("/api\x00", "control"),
        ("/api\x7f", "control"),
        ("/caf\u00e9", "percent-encode"),
        ("/a\u00a0b", "whitespace"),  # NO-BREAK SPACE
    ],
)
def test_normalize_path_prefix_rejects(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid path prefix ") as info:
        normalize_path_prefix(value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("target", "prefix", "stripped"),
    [
        (b"/api/x?p=a;b", "/api", b"/x?p=a;b"),
        (b"/api/x", "/api", b"/x"),
        (b"/api", "/api", b"/"),
        (b"/api/", "/api", b"/"),
        (b"/api?x=1", "/api", b"/?x=1"),
        (b"/api/?x=1", "/api", b"/?x=1"),
        (b"/api?", "/api", b"/?"),
        (b"/api//x", "/api", b"//x"),
        (b"/api/v1/users/7", "/api/v1", b"/users/7"),
        (b"/api/x?next=/api/y&q=%20+?", "/api", b"/x?next=/api/y&q=%20+?"),
        (b"/", "/", b"/"),
        (b"/x?y", "/", b"/x?y"),
        (b"*", "/", b"*"),
    ],
)
def test_strip_path_prefix(target: bytes, prefix: str, stripped: bytes) -> None:
    assert strip_path_prefix(target, prefix) == stripped


@pytest.mark.parametrize(
    ("target", "prefix"),
    [(b"/apix", "/api"), (b"/other/api", "/api"), (b"/ap", "/api"), (b"/x?/api", "/api")],
)
def test_strip_path_prefix_rejects_unmatched_target(target: bytes, prefix: str) -> None:
    with pytest.raises(ValueError, match="does not start with path prefix"):
        strip_path_prefix(target, prefix)


def test_lookup_then_strip() -> None:
    target = b"/api/special/list?page=2"
    host, path = request_host(b"example.com"), target.partition(b"?")[0].decode("ascii")
    route = ROUTING.lookup(host, path)
    assert route == Route("example-api-special", "/api/special")
    assert route is not None
    assert strip_path_prefix(target, route.path_prefix) == b"/list?page=2"


HOST_A = [(b"host", b"example.com"), (b"accept", b"*/*")]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # RFC 9112 §3.2.2: the authority wins over the Host header, in the Host field's place.
        (b"http://other.example/path?q=1", (b"/path?q=1", b"other.example")),
        (b"http://other.example:8080/p", (b"/p", b"other.example:8080")),
        (b"HTTP://Other.Example/p", (b"/p", b"Other.Example")),  # request_host lowercases it
        (b"https://other.example/p", (b"/p", b"other.example")),  # scheme is not looked at
        (b"ws://other.example/socket", (b"/socket", b"other.example")),  # any scheme, as Go
        (b"http://[::1]:8080/p", (b"/p", b"[::1]:8080")),
        (b"http://other.example", (b"/", b"other.example")),  # an empty path is "/"
        (b"http://other.example?q", (b"/?q", b"other.example")),
        (b"http://user:pw@other.example/p", (b"/p", b"other.example")),  # userinfo dropped
        (b"http:///p", (b"/p", b"example.com")),  # no authority: the Host header stays
        (b"http://other.example//a/b", (b"//a/b", b"other.example")),
        # Not absolute form: asterisk (OPTIONS), authority form (CONNECT), nonsense.
        (b"*", None),
        (b"other.example:443", None),
        (b"other.example/p", None),
        (b"1http://x/p", None),
        (b"http:/x/p", None),
    ],
)
def test_absolute_form(target: bytes, expected: tuple[bytes, bytes] | None) -> None:
    result = absolute_form(target, HOST_A)
    if expected is None:
        assert result is None
        return
    origin, headers = result or (b"", [])
    assert (origin, headers) == (expected[0], [(b"host", expected[1]), (b"accept", b"*/*")])


def test_absolute_form_replaces_every_host_field_with_one() -> None:
    headers = [(b"accept", b"*/*"), (b"host", b"a.example"), (b"host", b"b.example")]
    assert absolute_form(b"http://c.example/", headers) == (
        b"/",
        [(b"accept", b"*/*"), (b"host", b"c.example")],
    )
    # HTTP/1.0 without a Host header gets one.
    assert absolute_form(b"http://c.example/", [(b"accept", b"*/*")]) == (
        b"/",
        [(b"host", b"c.example"), (b"accept", b"*/*")],
    )


def test_with_services_is_with_service_for_each_at_once() -> None:
    services = [
        ("a", ["x.com"], ["/api", "/"]),
        ("b", ["x.com", "*.y.com"], ["/api/v2"]),
        ("c", [], []),
    ]
    at_once = ServiceMap.empty().with_services(services)
    assert at_once == build(*services)
    assert at_once.lookup("x.com", "/api/v2/z") == Route("b", "/api/v2")
    assert at_once.lookup("x.com", "/api/z") == Route("a", "/api")
    assert at_once.lookup("q.y.com", "/api/v2") == Route("b", "/api/v2")
    assert at_once.lookup("other", "/") == Route("c", "/")


def test_a_changed_copy_routes_as_a_map_built_afresh() -> None:
    # Copies share the tables of the hosts they did not touch: rebinding, moving and
    # removing services must route exactly as the same bindings built from scratch.
    changed = build(("a", ["x.com"], []), ("b", ["x.com"], ["/p"]), ("c", ["y.com"], []))
    changed = changed.with_services([("a", ["y.com"], ["/q"]), ("d", ["x.com"], [])])
    changed = changed.without_services(["b", "missing"])
    afresh = build(("a", ["y.com"], ["/q"]), ("c", ["y.com"], []), ("d", ["x.com"], []))
    assert changed == afresh
    for host, path in [("x.com", "/p/1"), ("x.com", "/"), ("y.com", "/q"), ("y.com", "/z")]:
        assert changed.lookup(host, path) == afresh.lookup(host, path)
    assert changed.lookup("x.com", "/p") == Route("d", "/")
    assert changed.services() == frozenset({"a", "c", "d"})


def test_a_duplicate_pair_goes_to_the_name_that_sorts_first_in_a_copy_too() -> None:
    service_map = build(("b", ["x.com"], []))
    assert service_map.with_service("a", ["x.com"], []).lookup("x.com", "/") == Route("a", "/")
    assert service_map.with_service("c", ["x.com"], []).lookup("x.com", "/") == Route("b", "/")


def test_clashes_in_order_with_the_map_and_each_other() -> None:
    service_map = build(("web", ["x.com"], []))
    refused = service_map.clashes(
        [
            ("web", ["x.com"], []),  # its own pair: fine
            ("api", ["x.com"], ["/api"]),
            ("copy", ["x.com"], ["/"]),
            ("late", ["x.com"], ["api/"]),  # clashes with api, earlier in the list
            ("bad", ["bad host"], []),
        ]
    )
    assert refused.keys() == {"copy", "late", "bad"}
    assert refused["copy"] == Conflict("x.com", "/", "web")
    assert refused["late"] == Conflict("x.com", "/api", "api")
    assert isinstance(refused["bad"], ValueError)
