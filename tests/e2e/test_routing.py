"""Routing end to end: which service a real request reaches, and what path it arrives with.

Each service gets its own Upstream named after it, so a response body names the service that
served it; ``None`` below means the proxy answered 404 itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from kproxy import DeployError, DeploymentOptions, Proxy, ServiceOptions, TargetOptions
from tests.helpers import (
    Upstream,
    control,
    raw_exchange,
    request,
    start_proxy,
    start_upstream,
    wait_until,
)


async def deploy(
    nursery: trio.Nursery,
    proxy: Proxy,
    name: str,
    hosts: tuple[str, ...] = (),
    prefixes: tuple[str, ...] = (),
    *,
    strip: bool = True,
) -> Upstream:
    """Deploy service ``name`` on a fresh Upstream of the same name."""
    upstream = await start_upstream(nursery, name)
    service = ServiceOptions(hosts=hosts, path_prefixes=prefixes, strip_path_prefix=strip)
    await proxy.deploy(name, DeploymentOptions(targets=(upstream.address,), service=service))
    return upstream


async def served_by(proxy: Proxy, host: str, path: str = "/") -> str | None:
    reply = await request(proxy.http_port, path, host=host)
    if reply.status == 404:
        assert b"404" in reply.body  # the proxy's own page, not a target's 404
        return None
    assert reply.status == 200, reply
    return reply.body.decode()


async def test_host_levels_exact_wildcard_default(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        await deploy(nursery, proxy, "exact", ("app.example.com",))
        await deploy(nursery, proxy, "wild", ("*.example.com",))
        cases = {
            "app.example.com": "exact",
            "APP.Example.COM": "exact",  # hosts are case-insensitive
            "app.example.com:8080": "exact",  # the port is not part of the host
            "other.example.com": "wild",
            "x.app.example.com": None,  # a wildcard covers exactly one label
            "example.com": None,  # ... and not the bare domain
            "unknown.test": None,  # no default service yet
        }
        for host, service in cases.items():
            assert await served_by(proxy, host) == service, host
        await deploy(nursery, proxy, "default")
        cases |= {"x.app.example.com": "default", "example.com": "default"}
        cases |= {"unknown.test": "default", "": "default"}
        for host, service in cases.items():
            assert await served_by(proxy, host) == service, host


async def test_several_hosts_per_service(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        await deploy(nursery, proxy, "multi", ("one.test", "two.test", "*.three.test"))
        for host in ("one.test", "two.test:80", "a.three.test"):
            assert await served_by(proxy, host) == "multi", host
        assert await served_by(proxy, "four.test") is None


@pytest.mark.parametrize(
    ("bound", "host_header"),
    [
        ("[::1]", "[::1]:8080"),
        ("[::1]", "[0:0::1]"),
        ("::1", "[::1]"),
        ("127.0.0.1", "127.0.0.1:80"),
    ],
)
async def test_ip_literal_hosts(
    nursery: trio.Nursery, tmp_path: Path, bound: str, host_header: str
) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        await deploy(nursery, proxy, "ip", (bound,))
        assert await served_by(proxy, host_header) == "ip"
        assert await served_by(proxy, "[::2]") is None


async def test_longest_prefix_on_segment_boundaries(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        await deploy(nursery, proxy, "root", ("a.test",))
        await deploy(nursery, proxy, "api", ("a.test",), ("/api",))
        await deploy(nursery, proxy, "v2", ("a.test",), ("/api/v2",))
        cases = {
            "/": "root",
            "/api": "api",
            "/api/": "api",
            "/api/x": "api",
            "/api?q=1": "api",
            "/apix": "root",  # not on a segment boundary
            "/api/v2": "v2",
            "/api/v2/users/1": "v2",
            "/api/v20": "api",
            "/API": "root",  # paths are case-sensitive
        }
        for path, service in cases.items():
            assert await served_by(proxy, "a.test", path) == service, path


@pytest.mark.parametrize(
    ("strip", "path", "forwarded"),
    [
        (True, "/api/x/y?q=a;b", b"/x/y?q=a;b"),
        (True, "/api", b"/"),
        (True, "/api/", b"/"),
        (True, "/api?q=1", b"/?q=1"),
        (False, "/api/x/y?q=a;b", b"/api/x/y?q=a;b"),
        (False, "/api", b"/api"),
    ],
)
async def test_strip_path_prefix(
    nursery: trio.Nursery, tmp_path: Path, strip: bool, path: str, forwarded: bytes
) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        api = await deploy(nursery, proxy, "api", (), ("/api",), strip=strip)
        assert await served_by(proxy, "a.test", path) == "api"
    assert api.received[-1].target == forwarded


async def test_host_with_bindings_does_not_fall_through(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        await deploy(nursery, proxy, "default")
        await deploy(nursery, proxy, "wild", ("*.example.com",))
        await deploy(nursery, proxy, "api", ("app.example.com",), ("/api",))
        await deploy(nursery, proxy, "wild-api", ("*.test",), ("/api",))
        assert await served_by(proxy, "app.example.com", "/api/x") == "api"
        # app.example.com has bindings: a path outside them is a 404, not the wildcard's.
        assert await served_by(proxy, "app.example.com", "/other") is None
        assert await served_by(proxy, "www.example.com", "/other") == "wild"
        # Likewise a wildcard level with bindings does not fall through to the default.
        assert await served_by(proxy, "x.test", "/other") is None
        assert await served_by(proxy, "x.test", "/api") == "wild-api"
        assert await served_by(proxy, "elsewhere.org", "/other") == "default"


async def test_conflicting_deploy_fails_and_changes_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    other = await start_upstream(nursery, "other")
    with trio.fail_after(20):
        await deploy(nursery, proxy, "first", ("a.test", "b.test"), ("/app",))
        listing = await control(sock, "list")

        answer = await control(
            sock, f"deploy second --target {other.address} --host b.test --path-prefix /app/"
        )
        assert answer[-1].startswith("ERR ")
        assert "'first'" in answer[-1]
        assert "b.test" in answer[-1]

        options = DeploymentOptions(
            targets=(other.address,),
            service=ServiceOptions(hosts=("a.test",), path_prefixes=("/app",)),
        )
        with pytest.raises(DeployError, match="'first'"):
            await proxy.deploy("second", options)

        assert await control(sock, "list") == listing
        assert [s.name for s in proxy.services()] == ["first"]
        assert await served_by(proxy, "b.test", "/app") == "first"
        # A different prefix on the same host is no conflict: the longer one takes it over.
        await deploy(nursery, proxy, "third", ("b.test",), ("/app/admin",))
        assert await served_by(proxy, "b.test", "/app/admin/x") == "third"
        assert await served_by(proxy, "b.test", "/app/x") == "first"
    assert other.received == [] or {r.target for r in other.received} == {b"/up"}


async def test_concurrent_deploys_of_one_route_cannot_both_win(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Two services claiming the same host start together; the second to become healthy
    finds the route taken at its cutover and fails, naming the winner."""
    proxy, _ = await start_proxy(nursery, tmp_path)
    quick = await start_upstream(nursery, "quick")
    late = await start_upstream(nursery, "late", healthy=False)
    outcomes: dict[str, str] = {}
    quick_done = trio.Event()

    async def deploy_one(name: str, upstream: Upstream) -> None:
        options = DeploymentOptions(
            targets=(upstream.address,),
            service=ServiceOptions(hosts=("shared.test",)),
            target=TargetOptions(health_check_interval=0.05),
        )
        try:
            await proxy.deploy(name, options)
            outcomes[name] = "deployed"
        except DeployError as exc:
            outcomes[name] = str(exc)
        if name == "quick":
            quick_done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as deploys:
            deploys.start_soon(deploy_one, "quick", quick)
            deploys.start_soon(deploy_one, "late", late)
            await quick_done.wait()
            late.healthy = True
    assert outcomes["quick"] == "deployed"
    assert "already used by service 'quick'" in outcomes["late"]
    assert [s.name for s in proxy.services()] == ["quick"]
    assert await served_by(proxy, "shared.test", "/") == "quick"


async def test_absolute_form_is_routed_by_its_authority(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """RFC 9112 §3.2.2: ``GET http://b.test/... `` with ``Host: a.test`` reaches b.test's
    service, in origin form and with ``Host: b.test``, and is logged so; a host nobody serves
    is a 404 however the Host header reads (it used to reach a.test's target)."""
    proxy, logs = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        await deploy(nursery, proxy, "public", ("a.test",))
        await deploy(nursery, proxy, "private", ("b.test",))
        reply = await request(proxy.http_port, "http://B.test:80/echo?x=1", host="a.test")
        assert reply.status == 200, reply
        seen = json.loads(reply.body)
        headers = dict(seen["headers"])
        assert (seen["upstream"], seen["target"]) == ("private", "/echo?x=1")
        assert headers["host"] == headers["x-forwarded-host"] == "B.test:80"
        await wait_until(lambda: bool(logs.records("Request")))  # access lines are batched
        [line] = logs.records("Request")
        assert (line["host"], line["path"], line["query"]) == ("b.test", "/echo", "x=1")
        assert line["service"] == "private"
        assert await served_by(proxy, "a.test", "https://b.test") == "private"  # any scheme
        assert await served_by(proxy, "a.test", "http://c.test/") is None
        assert await served_by(proxy, "b.test", "http://a.test/") == "public"
        assert await served_by(proxy, "a.test", "/plain") == "public"  # origin form as ever


async def test_a_request_target_of_no_known_form_is_400(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """RFC 9112 §3.2: ``GET ?p`` is neither origin-, absolute-, authority- nor asterisk-form;
    it is answered 400 and never reaches a target (it used to, as the path ``?p``)."""
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(20):
        upstream = await deploy(nursery, proxy, "web")
        before = len(upstream.received)  # its health checks
        for target in (b"?p", b"p", b"*", b"a.test:80"):
            answer = await raw_exchange(
                proxy.http_port, b"GET " + target + b" HTTP/1.1\r\nHost: a.test\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 400 "), (target, answer)
        assert len(upstream.received) == before
        assert (await request(proxy.http_port, "/ok")).status == 200
        assert upstream.received[-1].target == b"/ok"
