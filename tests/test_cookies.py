"""Tables for kproxy.core.cookies: kamal-proxy's --scope-cookie-paths rules.

The first tables port basecamp/kamal-proxy: internal/server/cookie_scope_test.go
(TestCookieScope_ApplyToHeader, TestCookieScope_DomainMatching); the rest pin down the edges of
Go's http.ParseSetCookie and url.JoinPath that decide whether and how a cookie is rewritten.
"""

from __future__ import annotations

import pytest

from kproxy.core.cookies import CookieScope


def scoped(cookie: str, *, prefix: str = "/api", host: str = "example.com") -> str:
    return CookieScope(prefix, host).scope(cookie.encode("latin-1")).decode("latin-1")


def path_of(cookie: str) -> str | None:
    """The Path a browser reads (RFC 6265: the last Path attribute), or None without one."""
    path = None
    for part in cookie.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "path":
            path = value.strip()
    return path


# --- kamal-proxy's own tables ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "host", "cookies", "paths"),
    [
        pytest.param("/api", "example.com", ["session=abc; Path=/"], ["/api"], id="root-path"),
        pytest.param("/api", "example.com", ["session=abc; Path=/admin"], ["/api/admin"], id="sub"),
        pytest.param("/api", "example.com", ["session=abc"], ["/api"], id="no-path"),
        pytest.param(
            "/api",
            "example.com",
            ["session=abc; Path=/; Domain=example.com"],
            ["/api"],
            id="first-party-domain",
        ),
        pytest.param(
            "/api",
            "example.com",
            ["tracking=xyz; Path=/; Domain=other.com"],
            ["/"],
            id="third-party-untouched",
        ),
        pytest.param(
            "/app",
            "example.com",
            ["a=1; Path=/", "b=2; Path=/foo", "c=3; Path=/; Domain=third.com"],
            ["/app", "/app/foo", "/"],
            id="several",
        ),
        pytest.param(
            "/api",
            "example.com:8080",
            ["session=abc; Path=/; Domain=example.com"],
            ["/api"],
            id="host-with-port",
        ),
    ],
)
def test_kamal_proxy_apply_to_header(
    prefix: str, host: str, cookies: list[str], paths: list[str]
) -> None:
    headers = [(b"set-cookie", c.encode()) for c in cookies]
    result = CookieScope(prefix, host).apply(headers)
    assert [name for name, _ in result] == [b"set-cookie"] * len(cookies)
    assert [path_of(value.decode()) for _, value in result] == paths


@pytest.mark.parametrize(
    ("host", "domain", "scoped_"),
    [
        ("example.com", "", True),
        ("example.com", "example.com", True),
        ("example.com", "other.com", False),
        ("example.com", "sub.example.com", False),  # a subdomain is another domain
        ("sub.example.com", "example.com", False),  # and so is the parent
        ("example.com:8080", "example.com", True),
        # Exact string comparison, as in cookie_scope.go: a leading dot or other case is
        # "another domain" there too.
        ("example.com", ".example.com", False),
        ("example.com", "EXAMPLE.com", False),
        ("[::1]:8080", "::1", True),
        ("[::1]", "[::1]", True),  # no port: the Host is compared whole
    ],
)
def test_kamal_proxy_domain_matching(host: str, domain: str, scoped_: bool) -> None:
    cookie = "test=value; Path=/original" + (f"; Domain={domain}" if domain else "")
    expected = "/api/original" if scoped_ else "/original"
    assert path_of(scoped(cookie, host=host)) == expected


# --- what the rewritten cookie looks like ---------------------------------------------------


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("a=1", "a=1; Path=/api"),
        ("a=1; Path=/", "a=1; Path=/api"),
        # Path replaced where it stood; every other attribute kept as the target wrote it
        # (kamal-proxy's Cookie.String() would drop Priority and reformat Expires).
        (
            "id=7; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/; HttpOnly; Priority=High",
            "id=7; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/api; HttpOnly; Priority=High",
        ),
        ("a=1; Secure; SameSite=Lax", "a=1; Secure; SameSite=Lax; Path=/api"),
        ('q="quoted value"; path=/x', 'q="quoted value"; Path=/api/x'),
        ("  a=1 ;  Path=/x  ;; Secure ", "a=1; Path=/api/x; Secure"),
        # Every attribute a browser reads as Path goes, so ours is the only one.
        ("a=1; Path=/one; Secure; PATH=/two", "a=1; Path=/api/two; Secure"),
        ("a=1; Path =/x", "a=1; Path=/api"),  # Go doesn't read "Path " as Path: prefix alone
        ("a=1; Path=/bad\\path", "a=1; Path=/api"),  # a Path Go can't parse is ignored too
        ("a=1; Domain=example.com; Path=/", "a=1; Domain=example.com; Path=/api"),
        ("a=", "a=; Path=/api"),  # an empty value is a cookie
        ("a=b;c", "a=b; c; Path=/api"),  # "c" is an (unknown) attribute
    ],
)
def test_rewritten_cookie(cookie: str, expected: str) -> None:
    assert scoped(cookie) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/api"),
        ("", "/api"),
        ("/admin/", "/api/admin"),  # strings.Trim removes the trailing slash; JoinPath keeps it off
        ("//a//b//", "/api/a/b"),
        ("admin", "/api/admin"),
        ("/a/./b/../c", "/api/a/c"),
        ("/../../etc", "/etc"),  # path.Join cleans past the prefix, as Go's JoinPath does
        ("/a%2Fb", "/api/a%2Fb"),  # a valid escaped path is kept as sent
        ("/caf%C3%A9", "/api/caf%C3%A9"),
        ("/a!b", "/api/a!b"),
        ("/a b", "/api/a%20b"),  # not a valid escaped path: Go re-escapes it whole
        ("/a b!", "/api/a%20b%21"),
        ("/a?b#c", "/api/a%3Fb%23c"),
        ("/a%zz", "/api"),  # undecodable: Go's JoinPath keeps only the prefix
    ],
)
def test_joined_path(path: str, expected: str) -> None:
    assert path_of(scoped(f"a=1; Path={path}")) == expected


@pytest.mark.parametrize(
    "cookie",
    [
        "",
        "   ",
        "novalue",  # no "="
        "=value",  # no name
        "bad name=1",  # a name must be a token
        "a(b)=1",
        'a=x"y',  # '"' inside a value
        "a=x\\y",
        "a=caf\xe9",  # non-ASCII value
        "a=x\x7f",
    ],
)
def test_cookies_go_cannot_parse_are_untouched(cookie: str) -> None:
    raw = cookie.encode("latin-1")
    assert CookieScope("/api", "example.com").scope(raw) is raw


def test_other_headers_and_order_are_kept() -> None:
    headers = [
        (b"content-type", b"text/html"),
        (b"set-cookie", b"a=1"),
        (b"x-set-cookie", b"b=2"),
        (b"set-cookie", b"c=3; Domain=other.com"),
    ]
    assert CookieScope("/app", "example.com").apply(headers) == [
        (b"content-type", b"text/html"),
        (b"set-cookie", b"a=1; Path=/app"),
        (b"x-set-cookie", b"b=2"),
        (b"set-cookie", b"c=3; Domain=other.com"),
    ]


def test_deeper_prefix() -> None:
    assert scoped("a=1; Path=/x", prefix="/one/two") == "a=1; Path=/one/two/x"
