"""--canonical-host, --client-ip-header and --scope-cookie-paths end to end, on loopback sockets.

A real client, the proxy and a real target; what kamal-proxy does is cited where it is mirrored
(internal/server/service.go, client_ip_middleware.go, cookie_scope.go, router.go).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from kproxy import Proxy, ServiceOptions
from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    LogCapture,
    Received,
    Upstream,
    control,
    guard,
    hits,
    parse_responses,
    raw_exchange,
    request,
    send_reply,
    start_proxy,
    start_upstream,
    wait_until,
)
from tests.helpers import quick_options as options

HOSTS = ("example.com", "www.example.com", "old.example.net")


async def serve(
    nursery: trio.Nursery, tmp_path: Path, **service: Any
) -> tuple[Upstream, Proxy, LogCapture]:
    """A target with a Set-Cookie route and a proxy with service "web" in front of it."""

    async def cookies(_up: Upstream, req: Received, client: H11Stream) -> None:
        status = 302 if req.target.endswith(b"?redirect") else 200
        await send_reply(
            client,
            status,
            b"cookies",
            [
                (b"set-cookie", b"sid=1; HttpOnly"),
                (b"set-cookie", b"pref=2; Path=/settings/; Priority=High"),
                (b"set-cookie", b"mine=3; Path=/; Domain=example.com"),
                (b"set-cookie", b"ext=4; Path=/; Domain=other.example"),
                (b"x-after", b"kept"),
            ],
        )

    up = await start_upstream(nursery, handlers={b"/login": cookies, b"/app/login": cookies})
    proxy, logs = await start_proxy(nursery, tmp_path)
    target = {k: service.pop(k) for k in list(service) if k.startswith("target_")}
    await proxy.deploy("web", options(up, service=ServiceOptions(**service), **target))
    return up, proxy, logs


async def request_line(logs: LogCapture, count: int = 1) -> dict[str, Any]:
    """The last access log line, once ``count`` exist (it is written after the response)."""
    await wait_until(lambda: len(logs.records("Request")) >= count)
    return logs.records("Request")[-1]


# --- --canonical-host ---------------------------------------------------------------------


@guard(20)
async def test_other_hosts_get_301_to_the_same_path_and_query(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up, proxy, logs = await serve(nursery, tmp_path, hosts=HOSTS, canonical_host="Example.COM")
    target = "/a/b%2Fc;p?x=1&y=%20z&x=&q=a+b;c"
    for number, host in enumerate(("www.example.com", "OLD.example.net"), start=1):
        reply = await request(proxy.http_port, target, host=host)
        assert reply.status == 301
        assert reply.header(b"location") == b"http://example.com" + target.encode()
        assert reply.header(b"connection") == b"close"  # as kamal-proxy's redirect sends it
        assert reply.header(b"content-type") == b"text/html; charset=utf-8"
        href = b"http://example.com/a/b%2Fc;p?x=1&amp;y=%20z&amp;x=&amp;q=a+b;c"
        assert reply.body == b'<a href="' + href + b'">Moved Permanently</a>.\n\n'
        line = await request_line(logs, number)
        assert (line["status"], line["service"], line["target"]) == (301, "web", "")
        assert line["resp_content_length"] == len(reply.body)
    assert hits(up, b"/a/b%2Fc;p") == 0  # the target never saw them


@guard(20)
async def test_the_canonical_host_is_served(nursery: trio.Nursery, tmp_path: Path) -> None:
    up, proxy, _ = await serve(nursery, tmp_path, hosts=HOSTS, canonical_host="example.com")
    for host in ("example.com", "EXAMPLE.com", "example.com:8080"):
        reply = await request(proxy.http_port, "/page?x=1", host=host)
        assert (reply.status, reply.body) == (200, b"upstream")
    assert [r.target for r in up.received if r.target != b"/up"] == [b"/page?x=1"] * 3


@guard(20)
async def test_a_non_default_port_is_kept(nursery: trio.Nursery, tmp_path: Path) -> None:
    """kamal-proxy drops the port, sending a proxy published on :8080 to port 80; kproxy keeps
    any port but the scheme's default."""
    _, proxy, _ = await serve(nursery, tmp_path, hosts=HOSTS, canonical_host="example.com")
    cases = {"www.example.com:8080": b"http://example.com:8080/x", "www.example.com:80": None}
    for host, location in cases.items():
        reply = await request(proxy.http_port, "/x", host=host)
        assert reply.header(b"location") == (location or b"http://example.com/x")


@guard(20)
async def test_redirect_for_head_and_post(nursery: trio.Nursery, tmp_path: Path) -> None:
    up, proxy, _ = await serve(nursery, tmp_path, hosts=HOSTS, canonical_host="example.com")
    # HEAD: the headers a GET would get, no body; POST: no body, and the unread upload
    # does not matter because the connection closes after the redirect.
    raw = await raw_exchange(
        proxy.http_port,
        b"HEAD /h HTTP/1.1\r\nhost: www.example.com\r\n\r\n",
    )
    (head,) = parse_responses(raw, ["HEAD"])
    assert (head.status, head.body, head.header(b"location")) == (
        301,
        b"",
        b"http://example.com/h",
    )
    reply = await request(
        proxy.http_port, "/form", method="POST", host="www.example.com", body=b"x" * 100_000
    )
    assert (reply.status, reply.body, reply.header(b"content-type")) == (301, b"", None)
    assert reply.header(b"location") == b"http://example.com/form"
    assert hits(up, b"/h") == hits(up, b"/form") == 0


@guard(20)
async def test_connection_closes_after_a_redirect(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A pipelined second request is not answered: kamal-proxy sends ``Connection: close``."""
    up, proxy, _ = await serve(nursery, tmp_path, hosts=HOSTS, canonical_host="example.com")
    raw = await raw_exchange(
        proxy.http_port,
        b"GET /1 HTTP/1.1\r\nhost: www.example.com\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nhost: example.com\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 ") == 1
    assert hits(up, b"/2") == 0


@guard(20)
async def test_health_check_path_is_redirected_like_any_path(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """As in kamal-proxy (redirects run before the paused-health-check answer). A load
    balancer probing by IP never gets here: a service with --host values does not serve
    requests for other hosts, so the probe goes to the default service or gets a 404."""
    _, proxy, _ = await serve(nursery, tmp_path, hosts=HOSTS, canonical_host="example.com")
    reply = await request(proxy.http_port, "/up", host="www.example.com")
    assert (reply.status, reply.header(b"location")) == (301, b"http://example.com/up")
    assert (await request(proxy.http_port, "/up", host="example.com")).status == 200
    assert (await request(proxy.http_port, "/up", host="127.0.0.1")).status == 404
    await proxy.pause("web")
    reply = await request(proxy.http_port, "/up", host="www.example.com")
    assert reply.status == 301
    assert (await request(proxy.http_port, "/up", host="example.com")).status == 200


@guard(20)
async def test_wildcard_hosts_redirect_to_the_canonical_host(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, proxy, _ = await serve(
        nursery, tmp_path, hosts=("example.com", "*.example.com"), canonical_host="example.com"
    )
    reply = await request(proxy.http_port, "/w?1", host="shop.example.com")
    assert (reply.status, reply.header(b"location")) == (301, b"http://example.com/w?1")


@guard(20)
async def test_canonical_host_must_be_one_of_the_hosts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = await start_upstream(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    answer = await control(
        sock,
        f"deploy web --target {up.address} --host example.com,www.example.com"
        " --canonical-host example.org",
    )
    assert answer == [
        "ERR deploy: --canonical-host example.org must be one of the --host values"
        " (example.com, www.example.com)"
    ]
    answer = await control(sock, f"deploy web --target {up.address} --canonical-host a.test")
    assert answer == [
        "ERR deploy: --canonical-host a.test must be one of the --host values (none given)"
    ]
    assert proxy.services() == []  # nothing was deployed
    answer = await control(
        sock,
        f"deploy web --target {up.address} --host a.test,b.test --canonical-host a.test"
        " --health-check-interval 100ms",
    )
    assert answer[-1] == "OK deployed web"
    reply = await request(proxy.http_port, "/", host="b.test")
    assert reply.header(b"location") == b"http://a.test/"


# --- --client-ip-header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "forward", "xff", "client", "remote"),
    [
        # The header's value leads X-Forwarded-For (the incoming one is not trusted), the
        # socket peer follows, and the log names it as the client.
        (
            [(b"cf-connecting-ip", b"203.0.113.9")],
            True,
            b"203.0.113.9, 127.0.0.1",
            "203.0.113.9",
            "203.0.113.9",
        ),
        (
            [(b"cf-connecting-ip", b"2001:db8::7")],
            True,
            b"2001:db8::7, 127.0.0.1",
            "2001:db8::7",
            "2001:db8::7",
        ),
        (
            [(b"cf-connecting-ip", b"203.0.113.9")],
            False,
            b"203.0.113.9, 127.0.0.1",
            "203.0.113.9",
            "203.0.113.9",
        ),
        # Not an IP address: ignored, the peer is the client, the incoming value not trusted.
        ([(b"cf-connecting-ip", b"unknown")], True, b"127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ([(b"cf-connecting-ip", b"1.2.3.4<script>")], True, b"127.0.0.1", "127.0.0.1", "127.0.0.1"),
        # Absent: as if the option were unset, the incoming X-Forwarded-For kept and extended
        # with --forward-headers (as kamal-proxy), replaced without.
        ([], True, b"6.6.6.6, 127.0.0.1", "127.0.0.1", "6.6.6.6"),
        ([(b"cf-connecting-ip", b"")], True, b"6.6.6.6, 127.0.0.1", "127.0.0.1", "6.6.6.6"),
        ([], False, b"127.0.0.1", "127.0.0.1", "6.6.6.6"),
    ],
    ids=[
        "ipv4",
        "ipv6",
        "ipv4-no-forward",
        "garbage",
        "garbage-with-ip",
        "absent",
        "empty",
        "absent-no-forward",
    ],
)
@guard(20)
async def test_client_ip_header(
    nursery: trio.Nursery,
    tmp_path: Path,
    incoming: list[tuple[bytes, bytes]],
    forward: bool,
    xff: bytes,
    client: str,
    remote: str,
) -> None:
    up, proxy, logs = await serve(
        nursery, tmp_path, client_ip_header="CF-Connecting-IP", target_forward_headers=forward
    )
    headers = [(b"x-forwarded-for", b"6.6.6.6"), *incoming]
    assert (await request(proxy.http_port, "/ip", headers=headers)).status == 200
    got = up.received[-1]
    assert got.target == b"/ip"
    assert [v for k, v in got.headers if k == b"x-forwarded-for"] == [xff]
    line = await request_line(logs)
    assert (line["client_addr"], line["remote_addr"]) == (client, remote)


@guard(20)
async def test_client_ip_header_in_the_log_of_an_early_answer(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The client is resolved as soon as the service is known: redirects and error pages
    are logged with it too."""
    _, proxy, logs = await serve(
        nursery,
        tmp_path,
        hosts=HOSTS,
        canonical_host="example.com",
        client_ip_header="True-Client-IP",
    )
    headers = [(b"true-client-ip", b"198.51.100.4")]
    reply = await request(proxy.http_port, "/", host="www.example.com", headers=headers)
    assert reply.status == 301
    assert (await request_line(logs))["client_addr"] == "198.51.100.4"


@guard(20)
async def test_without_client_ip_header_the_header_means_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up, proxy, logs = await serve(nursery, tmp_path)
    headers = [(b"cf-connecting-ip", b"203.0.113.9"), (b"x-forwarded-for", b"10.1.1.1")]
    assert (await request(proxy.http_port, "/ip", headers=headers)).status == 200
    got = up.received[-1]
    assert got.header(b"x-forwarded-for") == b"10.1.1.1, 127.0.0.1"  # --forward-headers
    assert got.header(b"cf-connecting-ip") == b"203.0.113.9"  # passed on untouched
    assert (await request_line(logs))["client_addr"] == "127.0.0.1"


# --- --scope-cookie-paths -----------------------------------------------------------------


def set_cookies(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [v for k, v in headers if k == b"set-cookie"]


UNSCOPED = [
    b"sid=1; HttpOnly",
    b"pref=2; Path=/settings/; Priority=High",
    b"mine=3; Path=/; Domain=example.com",
    b"ext=4; Path=/; Domain=other.example",
]


@pytest.mark.parametrize("status", [200, 302])
@guard(20)
async def test_cookie_paths_scoped_under_the_prefix(
    nursery: trio.Nursery, tmp_path: Path, status: int
) -> None:
    up, proxy, _ = await serve(nursery, tmp_path, path_prefixes=("/app",), scope_cookie_paths=True)
    query = "?redirect" if status == 302 else ""
    reply = await request(proxy.http_port, f"/app/login{query}", host="example.com:8080")
    assert reply.status == status
    assert up.received[-1].target == f"/login{query}".encode()  # the prefix was stripped
    assert set_cookies(reply.headers) == [
        b"sid=1; HttpOnly; Path=/app",  # no Path: one is added
        b"pref=2; Path=/app/settings; Priority=High",
        b"mine=3; Path=/app; Domain=example.com",  # Domain is the request's host
        b"ext=4; Path=/; Domain=other.example",  # another domain: untouched
    ]
    assert reply.header(b"x-after") == b"kept"


@pytest.mark.parametrize(
    "service",
    [
        pytest.param({"path_prefixes": ("/app",)}, id="flag-off"),
        # kamal-proxy scopes only a prefix it strips: router.go sets MatchedPrefix only then,
        # and an application that sees /app/... sets its own cookie paths.
        pytest.param(
            {"path_prefixes": ("/app",), "scope_cookie_paths": True, "strip_path_prefix": False},
            id="prefix-not-stripped",
        ),
        pytest.param({"scope_cookie_paths": True}, id="root-prefix"),
    ],
)
@guard(20)
async def test_cookie_paths_untouched(
    nursery: trio.Nursery, tmp_path: Path, service: dict[str, Any]
) -> None:
    _, proxy, _ = await serve(nursery, tmp_path, **service)
    path = "/login" if service.get("path_prefixes") is None else "/app/login"
    reply = await request(proxy.http_port, path, host="example.com")
    assert reply.status == 200
    assert set_cookies(reply.headers) == UNSCOPED


@pytest.mark.parametrize("scoped", [True, False], ids=["scoped", "flag-off"])
@guard(20)
async def test_cookie_paths_scoped_on_a_101(
    nursery: trio.Nursery, tmp_path: Path, scoped: bool
) -> None:
    """A 101 goes through kamal-proxy's targetResponseWriter.WriteHeader like any response."""

    async def upgrade(_up: Upstream, _req: Received, client: H11Stream) -> None:
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"set-cookie", b"sid=1; HttpOnly"),
            (b"set-cookie", b"ext=4; Path=/; Domain=other.example"),
        ]
        await client.send(h11.InformationalResponse(status_code=101, headers=headers))
        await client.stream.send_all(b"hello from target;")  # then hangs up

    up = await start_upstream(nursery, handlers={b"/ws": upgrade})
    proxy, _ = await start_proxy(nursery, tmp_path)
    service = ServiceOptions(path_prefixes=("/app",), scope_cookie_paths=scoped)
    await proxy.deploy("web", options(up, service=service))
    data = await raw_exchange(
        proxy.http_port,
        b"GET /app/ws HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\n"
        b"upgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"sec-websocket-version: 13\r\n\r\n",
    )
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest == b"hello from target;"
    cookies = [
        line.partition(b":")[2].strip()
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"set-cookie:")
    ]
    sid = b"sid=1; HttpOnly; Path=/app" if scoped else b"sid=1; HttpOnly"
    assert cookies == [sid, b"ext=4; Path=/; Domain=other.example"]


@guard(20)
async def test_cookie_paths_scoped_with_buffered_responses(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, proxy, _ = await serve(
        nursery,
        tmp_path,
        path_prefixes=("/app",),
        scope_cookie_paths=True,
        target_buffer_responses=True,
    )
    reply = await request(proxy.http_port, "/app/login", host="example.com")
    assert (reply.status, reply.body) == (200, b"cookies")
    assert set_cookies(reply.headers)[:2] == [
        b"sid=1; HttpOnly; Path=/app",
        b"pref=2; Path=/app/settings; Priority=High",
    ]
