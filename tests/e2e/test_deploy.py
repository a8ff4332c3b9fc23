"""Deploys end to end: health checks, cutover, failure, --force, serialization, drain.

Real upstreams and a real proxy on 127.0.0.1; real time with short health-check intervals.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import trio

from kproxy import DeployTimeout, Proxy, ServiceOptions
from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    Received,
    Upstream,
    control,
    guard,
    hits,
    open_control,
    quick_options,
    request,
    send_reply,
    start_proxy,
    start_upstream,
    wait_until,
)


def record_checks(upstream: Upstream, path: bytes = b"/up") -> list[float]:
    """Replace ``path`` on ``upstream`` by a handler that notes the time of every check."""
    times: list[float] = []

    async def handler(up: Upstream, _request: Received, client: H11Stream) -> None:
        times.append(trio.current_time())
        await send_reply(client, up.health_status if up.healthy else 503)

    upstream.handlers[path] = handler
    return times


def saved_targets(tmp_path: Path, service: str) -> list[str] | None:
    data = json.loads((tmp_path / "state" / "kproxy.state.json").read_text())
    for entry in data["services"]:
        if entry["name"] == service:
            return list(entry["options"]["targets"])
    return None


async def bodies(proxy: Proxy, count: int, host: str = "example.com") -> list[bytes]:
    return [(await request(proxy.http_port, host=host)).body for _ in range(count)]


# --- health checks ------------------------------------------------------------------------


@guard(10)
async def test_health_check_path_host_and_first_check_immediately(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """GET <path> with the given Host; with a 10 s interval the deploy still finishes at once."""
    app = await start_upstream(nursery, "app", healthy=False)  # /up fails: only /healthz counts
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(2):  # far below the interval: the first check runs immediately
        await proxy.deploy(
            "web",
            quick_options(
                app,
                target_health_check_path="/healthz",
                target_health_check_host="health.internal",
                target_health_check_interval=10.0,
            ),
        )
    checks = [r for r in app.received if r.target == b"/healthz"]
    assert len(checks) == 1
    assert checks[0].method == b"GET"
    assert checks[0].header(b"host") == b"health.internal"
    assert hits(app, b"/up") == 0
    assert (await request(proxy.http_port)).body == b"app"


@guard(10)
async def test_health_check_host_defaults_to_target_address(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(app))
    assert app.received[0].target == b"/up"
    assert app.received[0].header(b"host") == app.address.encode()


@guard(10)
async def test_health_check_port(nursery: trio.Nursery, tmp_path: Path) -> None:
    """--health-check-port sends the checks elsewhere; requests still go to the target port."""
    app = await start_upstream(nursery, "app", healthy=False)
    checker = await start_upstream(nursery, "checker")
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(5):
        await proxy.deploy("web", quick_options(app, target_health_check_port=checker.port))
    assert hits(checker) == 1
    assert hits(app) == 0
    assert (await request(proxy.http_port)).body == b"app"


@guard(10)
async def test_health_check_interval_and_timeout(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A check that hangs is cut at --health-check-timeout; the next one follows an interval
    later, and the deploy fails at --deploy-timeout with the reason in the log."""
    app = await start_upstream(nursery, "app")
    times: list[float] = []

    async def hang(_up: Upstream, _request: Received, client: H11Stream) -> None:
        times.append(trio.current_time())
        await trio.sleep(5)
        await send_reply(client, 200)

    app.handlers[b"/up"] = hang
    proxy, logs = await start_proxy(nursery, tmp_path)
    started = trio.current_time()
    with trio.fail_after(5), pytest.raises(DeployTimeout):
        await proxy.deploy(
            "web",
            quick_options(
                app,
                deploy_timeout=1.0,
                target_health_check_timeout=0.2,
                target_health_check_interval=0.1,
            ),
        )
    assert 0.95 <= trio.current_time() - started < 1.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 3
    # Each round: up to 0.2 s waiting for the answer, then 0.1 s of interval.
    assert all(0.28 <= gap < 0.5 for gap in gaps), gaps
    (update,) = logs.records("Target health updated")
    assert update["healthy"] is False
    assert update["reason"] == "no response within 200ms"


@guard(10)
async def test_health_check_interval_between_checks(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Multi-target services keep checking every --health-check-interval."""
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    times = record_checks(one)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one, two, target_health_check_interval=0.2))
    await wait_until(lambda: len(times) >= 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.19 <= gap < 0.4 for gap in gaps), gaps


@guard(10)
@pytest.mark.parametrize("status", [200, 204, 299])
async def test_any_2xx_is_healthy(nursery: trio.Nursery, tmp_path: Path, status: int) -> None:
    app = await start_upstream(nursery, "app", health_status=status)
    proxy, _ = await start_proxy(nursery, tmp_path)
    with trio.fail_after(3):
        await proxy.deploy("web", quick_options(app))


@guard(10)
@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (301, "301 redirect from /up (not followed)"),
        (302, "302 redirect from /up (not followed)"),
        (500, "500 from /up"),
        (404, "404 from /up"),
    ],
)
async def test_non_2xx_is_unhealthy_and_the_log_says_why(
    nursery: trio.Nursery, tmp_path: Path, status: int, reason: str
) -> None:
    app = await start_upstream(nursery, "app", health_status=status)
    proxy, logs = await start_proxy(nursery, tmp_path)
    with trio.fail_after(3), pytest.raises(DeployTimeout):
        await proxy.deploy("web", quick_options(app, deploy_timeout=0.5))
    (update,) = logs.records("Target health updated")
    assert update == {**update, "healthy": False, "reason": reason, "target": app.address}
    assert hits(app) >= 3  # retried every interval, never followed anywhere
    assert all(r.target == b"/up" for r in app.received)


@guard(10)
async def test_unreachable_target_is_unhealthy(nursery: trio.Nursery, tmp_path: Path) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there any more
    proxy, logs = await start_proxy(nursery, tmp_path)
    with pytest.raises(DeployTimeout):
        await proxy.deploy("web", quick_options(f"127.0.0.1:{port}", deploy_timeout=0.3))
    (update,) = logs.records("Target health updated")
    assert update["reason"] == ("cannot connect: connection refused")


@guard(10)
async def test_single_target_stops_checking_once_healthy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app", healthy=False)
    proxy, _ = await start_proxy(nursery, tmp_path)
    async with trio.open_nursery() as deploying:
        deploying.start_soon(proxy.deploy, "web", quick_options(app))
        await wait_until(lambda: hits(app) >= 3)  # failing: retried every interval
        app.healthy = True
    count = hits(app)
    await trio.sleep(0.5)  # five intervals
    assert hits(app) == count
    app.healthy = False  # nobody looks any more: the only target keeps serving
    assert (await request(proxy.http_port)).status == 200


@guard(10)
async def test_multi_target_routes_around_unhealthy_target(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one, two))
    assert sorted(await bodies(proxy, 4)) == [b"one", b"one", b"two", b"two"]

    two.healthy = False
    await wait_until(lambda: len(logs.records("Target health updated")) >= 3)
    change = logs.records("Target health updated")[-1]
    assert change["target"] == two.address
    assert change["healthy"] is False
    assert change["reason"] == "503 from /up"
    assert await bodies(proxy, 4) == [b"one"] * 4

    one.healthy = False  # nothing healthy left: 503
    await wait_until(lambda: len(logs.records("Target health updated")) >= 4)
    assert (await request(proxy.http_port)).status == 503

    one.healthy = two.healthy = True
    await wait_until(lambda: len(logs.records("Target health updated")) >= 6)
    assert sorted(await bodies(proxy, 4)) == [b"one", b"one", b"two", b"two"]


# --- deploy -----------------------------------------------------------------------------------


@guard(10)
async def test_deploy_blocks_until_healthy(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = await start_upstream(nursery, "app", healthy=False)
    proxy, logs = await start_proxy(nursery, tmp_path)
    done = trio.Event()

    async def deploy() -> None:
        await proxy.deploy("web", quick_options(app))
        done.set()

    nursery.start_soon(deploy)
    await wait_until(lambda: hits(app) >= 3)
    assert not done.is_set()
    assert (await request(proxy.http_port)).status == 404  # nothing routed before the cutover
    app.healthy = True
    with trio.fail_after(2):
        await done.wait()
    assert (await request(proxy.http_port)).body == b"app"
    assert [r["msg"] for r in logs.records() if r["msg"] not in ("Server started", "Request")] == [
        "Deploying",
        "Target health updated",
        "Target health updated",
        "Deployed",
    ]


@guard(10)
async def test_deploy_progress_lines(nursery: trio.Nursery, tmp_path: Path) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two", healthy=False)
    await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    assert await control(sock, f"deploy web --target {one.address}") == [
        f"  web: waiting for {one.address} to pass /up (timeout 30s)",
        f"  web: {one.address} is healthy",
        "  web: all targets healthy",
        f"  web: traffic now goes to {one.address}",
        "OK deployed web",
    ]

    async def heal() -> None:
        await wait_until(lambda: hits(two) >= 1)
        await trio.sleep(1.2)  # long enough for one "not healthy yet" line
        two.healthy = True

    nursery.start_soon(heal)
    answer = await control(sock, f"deploy web --target {two.address} --health-check-interval 100ms")
    assert answer[0] == f"  web: waiting for {two.address} to pass /up (timeout 30s)"
    assert f"  web: {two.address} not healthy yet (503 from /up; 1s of 30s)" in answer
    assert answer[-6:] == [
        f"  web: {two.address} is healthy",
        "  web: all targets healthy",
        f"  web: traffic now goes to {two.address}",
        f"  web: draining {one.address} (timeout 30s)",
        "  web: old targets drained",
        "OK deployed web",
    ]


@guard(10)
async def test_failed_deploy_keeps_previous_deployment(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two", healthy=False)
    proxy, logs = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    await proxy.deploy("web", quick_options(one))
    state_before = (tmp_path / "state" / "kproxy.state.json").read_bytes()
    one_connections = one.connections

    answer = await control(
        sock, f"deploy web --target {two.address} --deploy-timeout 2s --health-check-interval 100ms"
    )
    assert answer[-1] == "ERR target failed to become healthy within configured timeout (2s)"
    assert (tmp_path / "state" / "kproxy.state.json").read_bytes() == state_before
    assert one.connections == one_connections  # untouched: not drained, no pool reset
    assert await bodies(proxy, 3) == [b"one"] * 3
    assert [s.targets for s in proxy.services()] == [(one.address,)]
    assert logs.records("Deploy failed")[0]["reason"] == "health check timeout"
    count = hits(two)
    await trio.sleep(0.3)
    assert hits(two) == count  # the failed target is no longer checked


@guard(10)
async def test_failed_first_deploy_saves_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = await start_upstream(nursery, "app", healthy=False)
    proxy, _ = await start_proxy(nursery, tmp_path)
    with pytest.raises(DeployTimeout):
        await proxy.deploy("web", quick_options(app, deploy_timeout=0.3))
    assert proxy.services() == []
    assert not (tmp_path / "state" / "kproxy.state.json").exists()
    assert (await request(proxy.http_port)).status == 404


@guard(10)
async def test_force_cuts_over_at_once_then_503_until_healthy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two", healthy=False)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one))
    with trio.fail_after(1):
        await proxy.deploy("web", quick_options(two, force=True))
    assert [s.targets for s in proxy.services()] == [(two.address,)]
    assert saved_targets(tmp_path, "web") == [two.address]
    reply = await request(proxy.http_port)
    assert reply.status == 503
    two.healthy = True
    await wait_until(lambda: proxy.router.services["web"].targets[0].healthy)
    assert (await request(proxy.http_port)).body == b"two"


@guard(10)
async def test_deploys_of_one_service_are_serialized(nursery: trio.Nursery, tmp_path: Path) -> None:
    one = await start_upstream(nursery, "one", healthy=False)
    two = await start_upstream(nursery, "two")
    proxy, _ = await start_proxy(nursery, tmp_path)
    finished: list[str] = []

    async def deploy(upstream: Upstream) -> None:
        await proxy.deploy("web", quick_options(upstream))
        finished.append(upstream.name)

    nursery.start_soon(deploy, one)
    await wait_until(lambda: hits(one) >= 1)
    nursery.start_soon(deploy, two)
    await trio.sleep(0.5)
    assert finished == []
    assert hits(two) == 0  # the second deploy has not even started checking
    one.healthy = True
    await wait_until(lambda: len(finished) == 2)
    assert finished == ["one", "two"]
    assert (await request(proxy.http_port)).body == b"two"


@guard(15)
async def test_a_queued_deploy_says_what_it_waits_for_and_its_timeout_counts_the_wait(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stuck = await start_upstream(nursery, "stuck", healthy=False)
    good = await start_upstream(nursery, "good")
    proxy, _ = await start_proxy(nursery, tmp_path)
    first = await open_control(tmp_path / "kproxy.sock")
    await first.send(f"deploy web --target {stuck.address} --deploy-timeout 6s")
    await wait_until(lambda: hits(stuck) >= 1)
    second = await open_control(tmp_path / "kproxy.sock")
    start = trio.current_time()
    await second.send(f"deploy web --target {good.address} --deploy-timeout 1s")
    with trio.fail_after(0.5):  # at once, not when the first deploy ends
        waiting = await second.read_line()
    assert waiting == f"  web: waiting for the deploy to {stuck.address} in progress to finish"
    final = await second.read_line()
    assert 0.9 < trio.current_time() - start < 2.0  # its own 1s, not the first deploy's 6s
    assert final == (
        f"ERR web: the deploy to {stuck.address} in progress did not finish in time; "
        "nothing changed"
    )
    assert hits(good) == 0  # never checked, never routed to
    assert (await first.read_answer())[-1].startswith("ERR target failed to become healthy")
    assert proxy.services() == []
    await first.stream.aclose()
    await second.stream.aclose()


@guard(10)
async def test_different_services_deploy_concurrently(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    slow = await start_upstream(nursery, "slow", healthy=False)
    fast = await start_upstream(nursery, "fast")
    proxy, _ = await start_proxy(nursery, tmp_path)
    finished: list[str] = []

    async def deploy(name: str, upstream: Upstream) -> None:
        options = quick_options(upstream, service=ServiceOptions(hosts=(f"{name}.test",)))
        await proxy.deploy(name, options)
        finished.append(name)

    nursery.start_soon(deploy, "a", slow)
    await wait_until(lambda: hits(slow) >= 1)
    with trio.fail_after(2):
        await deploy("b", fast)
    assert finished == ["b"]
    assert (await request(proxy.http_port, host="b.test")).body == b"fast"
    slow.healthy = True
    await wait_until(lambda: len(finished) == 2)
    assert (await request(proxy.http_port, host="a.test")).body == b"slow"


@guard(10)
async def test_control_disconnect_before_cutover_cancels_the_deploy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two", healthy=False)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one))
    state_before = (tmp_path / "state" / "kproxy.state.json").read_bytes()

    client = await open_control(tmp_path / "kproxy.sock")
    await client.send(f"deploy web --target {two.address} --health-check-interval 100ms")
    assert (await client.read_line()).startswith("  web: waiting for")
    await wait_until(lambda: hits(two) >= 2)
    await client.stream.aclose()

    # Within a hang-up poll (0.2 s) the deploy is cancelled: two's checks stop.
    await trio.sleep(0.5)
    count = hits(two)
    await trio.sleep(0.5)
    assert hits(two) == count
    assert await bodies(proxy, 2) == [b"one", b"one"]
    assert (tmp_path / "state" / "kproxy.state.json").read_bytes() == state_before
    assert logs.records("Deployed") == logs.records("Deployed")[:1]
    # The service's deploy lock was released: the next deploy goes through.
    two.healthy = True
    with trio.fail_after(3):
        await proxy.deploy("web", quick_options(two))
    assert (await request(proxy.http_port)).body == b"two"


@guard(10)
async def test_control_disconnect_after_cutover_lets_the_drain_finish(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Observed behaviour: once ``traffic now goes to`` was sent, the deploy has happened.

    Closing the control connection then only ends the command's wait: the new target serves,
    the state file names it, and the old target's drain runs on in the proxy, so a slow request
    that spans the cutover still completes with 200 from the old target and the drain is
    logged when it ends.
    """
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one))
    slow: list[int] = []

    async def slow_request() -> None:
        reply = await request(proxy.http_port, "/slow?1")
        slow.append(reply.status)
        assert reply.body == b"one"

    nursery.start_soon(slow_request)
    await wait_until(lambda: one.active == 1)

    client = await open_control(tmp_path / "kproxy.sock")
    await client.send(f"deploy web --target {two.address}")
    while "traffic now goes to" not in (line := await client.read_line()):
        assert line.startswith("  ")
    await client.stream.aclose()

    assert (await request(proxy.http_port)).body == b"two"
    assert saved_targets(tmp_path, "web") == [two.address]
    await wait_until(lambda: slow == [200])
    await wait_until(lambda: bool(logs.records("Target drained")))
    assert logs.records("Target drained")[0]["cancelled_requests"] == 0


# --- drain --------------------------------------------------------------------------------


@guard(10)
async def test_deploy_waits_for_in_flight_requests_to_old_target(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one))
    replies: list[tuple[int, bytes, float]] = []

    async def slow_request() -> None:
        reply = await request(proxy.http_port, "/slow?1")
        replies.append((reply.status, reply.body, trio.current_time()))

    nursery.start_soon(slow_request)
    await wait_until(lambda: one.active == 1)
    started = trio.current_time()
    await proxy.deploy("web", quick_options(two))
    deployed = trio.current_time()
    assert deployed - started >= 0.8
    await wait_until(lambda: len(replies) == 1, timeout=0.5)
    assert replies[0][:2] == (200, b"one")
    assert replies[0][2] - deployed < 0.1  # the deploy returned as the request ended


@guard(10)
@pytest.mark.parametrize("method", ["GET", "POST"])  # a POST's body goes by a task of its own
async def test_drain_timeout_cuts_off_remaining_requests_with_504(
    nursery: trio.Nursery, tmp_path: Path, method: str
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one))
    replies: list[int] = []
    body = b"data" if method == "POST" else None

    async def slow_request() -> None:
        reply = await request(proxy.http_port, "/slow?5", method=method, body=body)
        replies.append(reply.status)

    nursery.start_soon(slow_request)
    await wait_until(lambda: one.active == 1)
    started = trio.current_time()
    await proxy.deploy("web", quick_options(two, drain_timeout=0.3))
    assert 0.3 <= trio.current_time() - started < 1.0
    await wait_until(lambda: replies == [504])
    assert logs.records("Target drained")[0]["cancelled_requests"] == 1
    await wait_until(lambda: [r["status"] for r in logs.records("Request")] == [504])


async def upgrade_echo(_up: Upstream, _request: Received, client: H11Stream) -> None:
    """Answer 101, then echo raw bytes until the peer closes (a WebSocket stand-in)."""
    await client.stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    while data := await client.stream.receive_some(65536):
        await client.stream.send_all(data)


@guard(10)
async def test_upgraded_connections_are_closed_when_the_drain_starts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one", handlers={b"/ws": upgrade_echo})
    two = await start_upstream(nursery, "two")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one))

    stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    head = b""
    with trio.fail_after(2):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
    assert head.startswith(b"HTTP/1.1 101 ")
    await stream.send_all(b"ping")
    with trio.fail_after(2):
        assert await stream.receive_some(65536) == b"ping"

    started = trio.current_time()
    with trio.fail_after(2):  # the 10 s drain timeout is not waited for
        await proxy.deploy("web", quick_options(two, drain_timeout=10))
    assert trio.current_time() - started < 1
    with trio.fail_after(1):
        assert await stream.receive_some(65536) == b""  # closed by the proxy
    await stream.aclose()
    assert (await request(proxy.http_port)).body == b"two"
