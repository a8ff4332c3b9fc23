"""``--read-target`` end to end on loopback: GET and HEAD to the read targets, the rest to the
writers, writer affinity (the ``kamal-writer`` cookie and the ``X-Writer-Affinity: false``
opt-out), WebSockets, readers' health, ``list``, a restart, and ``run --workers 2``.

The choice and the cookie are pinned by ``tests/test_balancer.py`` and
``tests/test_writer_affinity.py``; these tests pin what a client sees through real sockets.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from kproxy import DeploymentOptions, Proxy
from kproxy.core.options import ServiceOptions
from kproxy.runtime.h11_stream import H11Stream
from tests.e2e.test_load_balancing import WORKERS_GUARD, health_updates, is_rotation
from tests.helpers import (
    Received,
    Upstream,
    control,
    exchange,
    guard,
    hits,
    quick_options,
    request,
    send_reply,
    start_proxy,
    start_upstream,
    wait_until,
)
from tests.workers import deploy, pin_workers, start_workers

WEBSOCKET = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]


async def opt_out(upstream: Upstream, _request: Received, client: H11Stream) -> None:
    await send_reply(client, 200, upstream.name.encode(), [(b"x-writer-affinity", b"false")])


async def upstreams(nursery: trio.Nursery) -> list[Upstream]:
    return [await start_upstream(nursery, name) for name in ("w1", "w2", "r1", "r2")]


def split(*groups: Upstream, affinity: float = 3.0, websockets: bool = False) -> DeploymentOptions:
    w1, w2, r1, r2 = groups
    return quick_options(
        w1,
        w2,
        read_targets=(r1.address, r2.address),
        service=ServiceOptions(writer_affinity_timeout=affinity, read_target_websockets=websockets),
    )


async def bodies(
    proxy: Proxy, method: str, count: int, headers: list[tuple[bytes, bytes]] | None = None
) -> list[bytes]:
    return [
        (await request(proxy.http_port, method=method, headers=headers)).body for _ in range(count)
    ]


def writer_cookie(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    cookies = [v for k, v in headers if k == b"set-cookie" and v.startswith(b"kamal-writer=")]
    assert len(cookies) <= 1
    return cookies[0] if cookies else None


@guard(10)
async def test_reads_go_to_read_targets_and_writes_to_writers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", split(w1, w2, r1, r2))
    assert await bodies(proxy, "GET", 4) == [b"r1", b"r2", b"r1", b"r2"]
    assert [(await request(proxy.http_port, method="HEAD")).status for _ in range(2)] == [200] * 2
    assert [hits(u, b"/") for u in (w1, w2, r1, r2)] == [0, 0, 3, 3]  # HEAD reads too
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        reply = await request(proxy.http_port, method=method, body=b"x")
        assert reply.body in (b"w1", b"w2"), method
    assert [hits(u, b"/") for u in (w1, w2)] == [3, 2]  # the writers' own rotation
    assert [hits(u, b"/") for u in (r1, r2)] == [3, 3]


@guard(10)
async def test_a_write_sets_the_affinity_cookie_and_reads_follow_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", split(w1, w2, r1, r2, affinity=0.5))

    read = await request(proxy.http_port)
    assert read.body == b"r1"
    assert writer_cookie(read.headers) is None  # a read sets no cookie

    before = time.time()
    write = await request(proxy.http_port, method="POST", body=b"x")
    assert write.body == b"w1"
    cookie = writer_cookie(write.headers)
    assert cookie is not None
    value, path, expires, http_only = cookie.split(b"; ")
    expiry_ms = int(value.removeprefix(b"kamal-writer="))
    assert before * 1000 + 500 <= expiry_ms <= time.time() * 1000 + 500
    assert (path, http_only) == (b"Path=/", b"HttpOnly")
    assert expires.startswith(b"Expires=")
    assert expires.endswith(b" GMT")

    sent = [(b"cookie", b"theme=dark; " + value)]
    assert await bodies(proxy, "GET", 3, headers=sent) == [b"w2", b"w1", b"w2"]
    assert await bodies(proxy, "GET", 1) == [b"r2"]  # without the cookie: a reader
    await trio.sleep(max(0.0, expiry_ms / 1000 - time.time()) + 0.05)
    assert await bodies(proxy, "GET", 2, headers=sent) == [b"r1", b"r2"]  # expired
    broken = [(b"cookie", b"kamal-writer=later")]
    assert await bodies(proxy, "GET", 1, headers=broken) == [b"r1"]


@guard(10)
async def test_a_target_opts_out_of_affinity(nursery: trio.Nursery, tmp_path: Path) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    for upstream in (w1, w2, r1):
        upstream.handlers[b"/no-affinity"] = opt_out
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", split(w1, w2, r1, r2))
    write = await request(proxy.http_port, "/no-affinity", method="POST", body=b"x")
    assert write.body == b"w1"
    assert writer_cookie(write.headers) is None
    assert write.header(b"x-writer-affinity") is None  # removed before the client sees it
    # On a read the header is the target's business: kamal-proxy passes it on.
    read = await request(proxy.http_port, "/no-affinity")
    assert read.body == b"r1"
    assert read.header(b"x-writer-affinity") == b"false"


@guard(10)
async def test_no_cookie_without_read_targets_or_with_affinity_off(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", quick_options(w1, w2))
    write = await request(proxy.http_port, method="POST", body=b"x")
    assert write.status == 200
    assert writer_cookie(write.headers) is None
    await proxy.deploy("web", split(w1, w2, r1, r2, affinity=0))
    write = await request(proxy.http_port, method="POST", body=b"x")
    assert write.status == 200
    assert writer_cookie(write.headers) is None
    assert await bodies(proxy, "GET", 2) == [b"r1", b"r2"]


@guard(10)
async def test_websockets_go_to_writers_unless_read_target_websockets(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", split(w1, w2, r1, r2))
    # The upstreams answer the upgrade with a plain 200: the choice is what is checked.
    upgrade = await request(proxy.http_port, headers=WEBSOCKET)
    assert upgrade.body == b"w1"
    assert writer_cookie(upgrade.headers) is not None  # an upgrade to a writer is a write
    await proxy.deploy("web", split(w1, w2, r1, r2, websockets=True))
    assert await bodies(proxy, "GET", 2, headers=WEBSOCKET) == [b"r1", b"r2"]


@guard(15)
async def test_read_targets_are_health_checked(nursery: trio.Nursery, tmp_path: Path) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    proxy, logs = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", split(w1, w2, r1, r2))
    assert hits(r1) >= 1
    assert hits(r2) >= 1
    r2.healthy = False
    await wait_until(lambda: health_updates(logs, False) == 1)
    assert await bodies(proxy, "GET", 3) == [b"r1"] * 3
    r1.healthy = False  # no reader healthy: reads go to the writers
    await wait_until(lambda: health_updates(logs, False) == 2)
    seen = await bodies(proxy, "GET", 4)
    assert is_rotation(seen, {b"w1", b"w2"}), seen
    r1.healthy = r2.healthy = True
    await wait_until(lambda: health_updates(logs, True) == 6)  # 4 at deploy, 2 now
    seen = await bodies(proxy, "GET", 4)
    assert is_rotation(seen, {b"r1", b"r2"}), seen


@guard(15)
async def test_list_and_a_restart_keep_the_read_targets(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w1, w2, r1, r2 = await upstreams(nursery)
    async with trio.open_nursery() as first:
        proxy, _ = await start_proxy(first, tmp_path)
        await proxy.deploy("web", split(w1, w2, r1, r2))
        listed = await control(tmp_path / "kproxy.sock", "list")
        assert all(u.address in "\n".join(listed) for u in (w1, w2, r1, r2)), listed
        first.cancel_scope.cancel()

    proxy, _ = await start_proxy(nursery, tmp_path)
    (service,) = proxy.services()
    assert set(service.targets) == {u.address for u in (w1, w2, r1, r2)}
    assert await bodies(proxy, "GET", 2) == [b"r1", b"r2"]
    write = await request(proxy.http_port, method="POST", body=b"x")
    assert write.body == b"w1"
    assert writer_cookie(write.headers) is not None


async def test_with_workers_reads_and_writes_split_in_each_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(WORKERS_GUARD):
        w1, w2, r1, r2 = await upstreams(nursery)
        proxy = await start_workers(nursery, tmp_path)
        await deploy(
            proxy,
            f"--target {w1.address},{w2.address} --read-target {r1.address}",
            f"--read-target {r2.address} --health-check-interval 100ms",
        )
        clients = await pin_workers(proxy)
        for worker, client in clients.items():
            reads = [(await exchange(client, "/")).body for _ in range(4)]
            assert is_rotation(reads, {b"r1", b"r2"}), (worker, reads)
            write = await exchange(client, "/", method="POST", body=b"x")
            assert write.body in (b"w1", b"w2"), worker
            cookie = writer_cookie(write.headers)
            assert cookie is not None, worker
            sent = [(b"cookie", cookie.split(b";")[0])]
            after = await exchange(client, "/", headers=sent)
            assert after.body in (b"w1", b"w2"), worker
        r1.healthy = False  # the supervisor's health reaches both workers' reader rotations
        await wait_until(lambda: health_updates(proxy, False) == 1)
        await trio.sleep(0.3)
        for worker, client in clients.items():
            assert [(await exchange(client, "/")).body for _ in range(3)] == [b"r2"] * 3, worker
            await client.aclose()
