"""Several ``--target`` values, end to end on loopback: round robin over the healthy ones
(kamal-proxy's load_balancer.go), health taking targets out and back, 503 with none healthy, a
single target that keeps serving, deploys that wait for every new target, and the same with
``run --workers 2`` (each worker its own rotation; health decided once, by the supervisor).

The balancer's order is pinned by ``tests/test_balancer.py``; these tests pin what a client
sees through real sockets.
"""

from __future__ import annotations

from pathlib import Path

import trio

from kproxy import Proxy
from tests.helpers import (
    LogCapture,
    ProxyProcess,
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

WORKERS_GUARD = 30  # seconds: two worker processes start


async def bodies(proxy: Proxy, count: int) -> list[bytes]:
    return [(await request(proxy.http_port)).body for _ in range(count)]


def health_updates(logs: LogCapture | ProxyProcess, healthy: bool) -> int:
    return sum(1 for r in logs.records("Target health updated") if r["healthy"] is healthy)


def is_rotation(seen: list[bytes], members: set[bytes]) -> bool:
    """Whether ``seen`` visits ``members`` in a fixed cycle: each once per round."""
    period = len(members)
    return set(seen[:period]) == members and all(
        seen[i] == seen[i + period] for i in range(len(seen) - period)
    )


@guard(10)
async def test_requests_go_round_robin_in_deploy_order(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one, two, three = [await start_upstream(nursery, name) for name in ("one", "two", "three")]
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one, two, three))
    assert await bodies(proxy, 9) == [b"one", b"two", b"three"] * 3
    assert [hits(u, b"/") for u in (one, two, three)] == [3, 3, 3]


@guard(15)
async def test_an_unhealthy_target_leaves_the_rotation_and_returns(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one, two, three = [await start_upstream(nursery, name) for name in ("one", "two", "three")]
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(one, two, three))

    two.healthy = False
    await wait_until(lambda: health_updates(logs, False) == 1)
    seen = await bodies(proxy, 8)
    assert is_rotation(seen, {b"one", b"three"}), seen
    served = hits(two, b"/")

    two.healthy = True  # back at its own place in the order
    await wait_until(lambda: health_updates(logs, True) == 4)  # 3 at deploy, 1 now
    seen = await bodies(proxy, 9)
    assert is_rotation(seen, {b"one", b"two", b"three"}), seen
    assert hits(two, b"/") == served + 3

    for upstream in (one, two, three):  # none healthy: 503, the built-in page
        upstream.healthy = False
    await wait_until(lambda: health_updates(logs, False) == 4)
    served = sum(hits(u, b"/") for u in (one, two, three))
    reply = await request(proxy.http_port)
    assert reply.status == 503
    assert reply.body.startswith(b"<!doctype html>")
    assert sum(hits(u, b"/") for u in (one, two, three)) == served  # no target was asked

    three.healthy = True  # one is enough to serve again
    await wait_until(lambda: health_updates(logs, True) == 5)
    assert await bodies(proxy, 3) == [b"three"] * 3


@guard(10)
async def test_a_single_target_keeps_serving_when_its_checks_fail(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app")
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(app))
    app.healthy = False  # /up answers 503 from now on
    await trio.sleep(0.5)  # five health-check intervals
    assert await bodies(proxy, 3) == [b"app"] * 3
    assert health_updates(logs, False) == 0


@guard(15)
async def test_a_deploy_waits_for_every_new_target(nursery: trio.Nursery, tmp_path: Path) -> None:
    old = await start_upstream(nursery, "old")
    fast = await start_upstream(nursery, "fast")
    slow = await start_upstream(nursery, "slow", healthy=False)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(old))
    done = trio.Event()

    async def deploying() -> None:
        await proxy.deploy("web", quick_options(fast, slow))
        done.set()

    nursery.start_soon(deploying)
    await wait_until(lambda: hits(fast) >= 1 and hits(slow) >= 3)  # fast passed, slow fails
    assert not done.is_set()
    assert await bodies(proxy, 3) == [b"old"] * 3  # the old target serves meanwhile
    slow.healthy = True
    with trio.fail_after(5):
        await done.wait()
    seen = await bodies(proxy, 4)
    assert is_rotation(seen, {b"fast", b"slow"}), seen


async def test_with_workers_each_rotation_is_even_and_health_reaches_both(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(WORKERS_GUARD):
        one = await start_upstream(nursery, "one")
        two = await start_upstream(nursery, "two")
        proxy = await start_workers(nursery, tmp_path)
        await deploy(proxy, f"--target {one.address},{two.address} --health-check-interval 100ms")
        clients = await pin_workers(proxy)  # one keep-alive connection per worker

        async def through(worker: int, count: int) -> list[bytes]:
            return [(await exchange(clients[worker], "/")).body for _ in range(count)]

        for worker in clients:  # each worker alternates over both targets on its own
            seen = await through(worker, 10)
            assert is_rotation(seen, {b"one", b"two"}), (worker, seen)
        before = [hits(one, b"/"), hits(two, b"/")]
        for _ in range(40):  # new connections: the kernel picks the worker
            assert (await request(proxy.http_port)).status == 200
        added = [hits(one, b"/") - before[0], hits(two, b"/") - before[1]]
        assert sum(added) == 40
        assert abs(added[0] - added[1]) <= 2, added  # each worker's rotation: one apart at most

        # Health is decided once, by the supervisor, and reaches both workers.
        two.healthy = False
        await wait_until(lambda: health_updates(proxy, False) == 1)
        await trio.sleep(0.3)  # the update travels over each worker's channel
        for worker in clients:
            assert await through(worker, 4) == [b"one"] * 4, worker
        one.healthy = False
        await wait_until(lambda: health_updates(proxy, False) == 2)
        await trio.sleep(0.3)
        for worker in clients:
            assert (await exchange(clients[worker], "/")).status == 503, worker
        one.healthy = two.healthy = True
        await wait_until(lambda: health_updates(proxy, True) == 4)  # 2 at deploy, 2 now
        await trio.sleep(0.3)
        for worker in clients:
            seen = await through(worker, 6)
            assert is_rotation(seen, {b"one", b"two"}), (worker, seen)
            await clients[worker].aclose()
        assert {r["worker"] for r in proxy.records("Request")} == {1, 2}
