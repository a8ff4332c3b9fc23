"""Pause, stop, resume and remove, end to end on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from kproxy import Proxy, ServiceNotFound
from tests.helpers import (
    Reply,
    control,
    exchange,
    guard,
    hits,
    quick_options,
    request,
    start_proxy,
    start_upstream,
    wait_until,
)
from tests.workers import deploy, pin_workers, start_workers


async def deployed(nursery: trio.Nursery, tmp_path: Path) -> tuple[Proxy, Path]:
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(app))
    return proxy, tmp_path / "kproxy.sock"


@guard(10)
async def test_paused_requests_are_held_until_resume(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, sock = await deployed(nursery, tmp_path)
    assert await control(sock, "pause web") == [
        "  web: waiting for in-flight requests (timeout 30s)",
        "OK paused web",
    ]
    replies: list[tuple[Reply, float]] = []

    async def held() -> None:
        replies.append((await request(proxy.http_port), trio.current_time()))

    for _ in range(3):
        nursery.start_soon(held)
    await trio.sleep(0.5)
    assert replies == []  # held, not refused
    resumed = trio.current_time()
    assert await control(sock, "resume web") == ["OK resumed web"]
    await wait_until(lambda: len(replies) == 3)
    assert all(reply.status == 200 and reply.body == b"app" for reply, _ in replies)
    assert all(resumed <= at < resumed + 0.5 for _, at in replies)


@guard(10)
async def test_request_held_longer_than_max_pause_gets_504(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, sock = await deployed(nursery, tmp_path)
    assert (await control(sock, "pause web --max-pause 300ms"))[-1] == "OK paused web"
    started = trio.current_time()
    reply = await request(proxy.http_port)
    assert reply.status == 504
    assert 0.3 <= trio.current_time() - started < 0.8
    assert proxy.services()[0].state == "paused"  # expiry answers one request, no more


@guard(10)
async def test_a_pause_outlasts_max_pause_which_bounds_each_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # kamal-proxy's PauseController: --max-pause is how long one request is held (then 504),
    # not how long the pause lasts; it lasts until resume or stop, and list says so.
    proxy, sock = await deployed(nursery, tmp_path)
    assert (await control(sock, "pause web --max-pause 300ms"))[-1] == "OK paused web"
    await trio.sleep(0.5)  # past max-pause, with no request held meanwhile
    assert (await control(sock, "list"))[1].split()[4] == "paused"
    for _ in range(2):  # each new request is held for max-pause again, none goes through
        started = trio.current_time()
        assert (await request(proxy.http_port)).status == 504
        assert 0.3 <= trio.current_time() - started < 0.8
    assert (await control(sock, "list"))[1].split()[4] == "paused"
    assert await control(sock, "resume web") == ["OK resumed web"]
    assert (await request(proxy.http_port)).status == 200


@guard(30)
async def test_a_pause_outlasts_max_pause_in_every_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app")
    proxy = await start_workers(nursery, tmp_path)
    await deploy(proxy, f"--target {app.address}")
    clients = await pin_workers(proxy)
    assert (await control(proxy.socket_path, "pause web --max-pause 300ms"))[-1] == (
        "OK paused web"
    )
    await trio.sleep(0.5)
    for client in clients.values():
        started = trio.current_time()
        assert (await exchange(client, "/")).status == 504
        assert 0.3 <= trio.current_time() - started < 0.8
        await client.aclose()
    assert (await control(proxy.socket_path, "list"))[1].split()[4] == "paused"


@guard(10)
async def test_pause_waits_for_in_flight_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(app))
    replies: list[Reply] = []

    async def slow() -> None:
        replies.append(await request(proxy.http_port, "/slow?0.6"))

    nursery.start_soon(slow)
    await wait_until(lambda: app.active == 1)
    started = trio.current_time()
    await proxy.pause("web")
    assert trio.current_time() - started >= 0.5
    await wait_until(lambda: len(replies) == 1, timeout=0.5)
    assert replies[0].status == 200  # finished, not cut off


@guard(10)
async def test_pause_drain_timeout_stops_waiting_but_cancels_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(app))
    replies: list[Reply] = []

    async def slow() -> None:
        replies.append(await request(proxy.http_port, "/slow?1"))

    nursery.start_soon(slow)
    await wait_until(lambda: app.active == 1)
    answer = await control(tmp_path / "kproxy.sock", "pause web --drain-timeout 200ms")
    assert answer == [
        "  web: waiting for in-flight requests (timeout 200ms)",
        "  web: some requests are still running after the timeout",
        "OK paused web",
    ]
    assert replies == []
    await wait_until(lambda: len(replies) == 1)
    assert replies[0].status == 200


@guard(10)
async def test_stop_answers_503_with_the_message(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, sock = await deployed(nursery, tmp_path)
    answer = await control(sock, 'stop web --message "Back at 10:00"')
    assert answer[-1] == "OK stopped web"
    reply = await request(proxy.http_port)
    assert reply.status == 503
    assert b"Back at 10:00" in reply.body
    assert proxy.services()[0].state == "stopped"
    assert await control(sock, "resume web") == ["OK resumed web"]
    assert (await request(proxy.http_port)).body == b"app"


@guard(10)
async def test_stop_releases_requests_held_by_a_pause(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The newest of pause and stop wins: held requests get the maintenance page at once."""
    proxy, _ = await deployed(nursery, tmp_path)
    await proxy.pause("web", max_pause=10)
    replies: list[Reply] = []

    async def held() -> None:
        replies.append(await request(proxy.http_port))

    nursery.start_soon(held)
    await trio.sleep(0.2)
    await proxy.stop("web", message="down for maintenance")
    await wait_until(lambda: len(replies) == 1, timeout=1)
    assert replies[0].status == 503
    assert b"down for maintenance" in replies[0].body


@guard(10)
@pytest.mark.parametrize("command", ["pause", "stop"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_health_check_path_answers_200_while_paused_or_stopped(
    nursery: trio.Nursery, tmp_path: Path, command: str, method: str
) -> None:
    proxy, sock = await deployed(nursery, tmp_path)
    flags = "--max-pause 100ms" if command == "pause" else ""
    assert (await control(sock, f"{command} web {flags}"))[-1].startswith("OK")
    with trio.fail_after(1):  # answered by the proxy itself, not held
        reply = await request(proxy.http_port, "/up", method=method)
    assert reply.status == 200
    # Only GET and HEAD, and only the health-check path:
    expected = 504 if command == "pause" else 503
    assert (await request(proxy.http_port, "/up", method="POST")).status == expected
    assert (await request(proxy.http_port, "/other", method=method)).status == expected


@guard(10)
async def test_resume_of_a_running_service_is_harmless(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, sock = await deployed(nursery, tmp_path)
    assert await control(sock, "resume web") == ["OK resumed web"]
    assert (await request(proxy.http_port)).status == 200


@guard(10)
async def test_remove_stops_routing_and_health_checks(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one, two))  # multi-target: checked forever
    await wait_until(lambda: hits(one) >= 3)
    assert (await control(tmp_path / "kproxy.sock", "remove web"))[-1] == "OK removed web"
    assert (await request(proxy.http_port)).status == 404
    assert proxy.services() == []
    count = hits(one), hits(two)
    await trio.sleep(0.4)
    assert (hits(one), hits(two)) == count
    assert logs.records("Removed")[0]["service"] == "web"


@guard(10)
async def test_remove_of_a_paused_service_releases_held_requests(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, _ = await deployed(nursery, tmp_path)
    await proxy.pause("web", max_pause=10)
    replies: list[Reply] = []

    async def held() -> None:
        replies.append(await request(proxy.http_port))

    nursery.start_soon(held)
    await trio.sleep(0.2)
    await proxy.remove("web")
    await wait_until(lambda: len(replies) == 1, timeout=1)
    assert replies[0].status == 503


@guard(10)
@pytest.mark.parametrize("command", ["pause nope", "stop nope", "resume nope", "remove nope"])
async def test_unknown_service_is_a_clear_error(
    nursery: trio.Nursery, tmp_path: Path, command: str
) -> None:
    _proxy, sock = await deployed(nursery, tmp_path)
    assert await control(sock, command) == ["ERR service 'nope' is not deployed (deployed: web)"]


@guard(10)
async def test_unknown_service_from_code_raises(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _ = await start_proxy(nursery, tmp_path)
    with pytest.raises(ServiceNotFound, match=r"service 'web' is not deployed \(deployed: none\)"):
        await proxy.pause("web")
