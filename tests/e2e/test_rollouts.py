"""``rollout deploy|set|stop`` end to end on loopback, through the control socket: a rollout
group that gets no traffic until ``rollout set``, the ``kamal-rollout`` cookie split by percent
and by list, ``rollout stop``, the errors (each leaving everything as it was), a deploy and a
remove during a rollout, ``list``, a restart, ``kill -9``, and ``run --workers 2``.

The split itself is pinned by ``tests/test_rollout.py``; here the expected group of a cookie
value comes from the FNV-1a reference written there independently of the product code.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import trio

from kproxy import Proxy
from kproxy.core.rollout import RolloutSplit
from kproxy.core.snapshot import RolloutRecord
from kproxy.runtime.state_store import STATE_FILE_NAME
from tests.e2e.test_load_balancing import WORKERS_GUARD
from tests.helpers import (
    LogCapture,
    Upstream,
    control,
    exchange,
    guard,
    hits,
    request,
    start_proxy,
    start_upstream,
    wait_until,
)
from tests.test_rollout import _fnv1a_by_shifts
from tests.workers import pin_workers, start_workers

FAST = "--health-check-interval 100ms"
VALUES = [f"user-{i}" for i in range(40)]


def in_rollout(value: str, percent: int) -> bool:
    """The reference decision: kamal-proxy's float64 split point, written out here."""
    return percent > 0 and _fnv1a_by_shifts(value.encode()) <= 0xFFFFFFFF * (percent / 100.0)


def rollout_cookie(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", b"theme=dark; kamal-rollout=" + value.encode())]


async def body_for(port: int, value: str | None, method: str = "GET", path: str = "/") -> bytes:
    headers = rollout_cookie(value) if value is not None else None
    body = b"x" if method in ("POST", "PUT", "PATCH") else None
    reply = await request(port, path, method=method, headers=headers, body=body)
    assert reply.status == 200, reply
    return reply.body


async def setup(
    nursery: trio.Nursery, tmp_path: Path
) -> tuple[Proxy, LogCapture, Path, Upstream, Upstream]:
    """A proxy serving ``web`` from ``main``, and an upstream ``next`` for the rollout."""
    main = await start_upstream(nursery, "main")
    new = await start_upstream(nursery, "next")
    proxy, logs = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    assert (await control(sock, f"deploy web --target {main.address} {FAST}"))[-1] == (
        "OK deployed web"
    )
    return proxy, logs, sock, main, new


def saved(tmp_path: Path) -> dict[str, object]:
    data = json.loads((tmp_path / "state" / STATE_FILE_NAME).read_text())
    (entry,) = data["services"]
    return dict(entry)


@guard(15)
async def test_rollout_deploy_gets_no_traffic_before_set(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, _, sock, _main, new = await setup(nursery, tmp_path)
    answer = await control(sock, f"rollout deploy web --target {new.address}")
    assert answer[-1] == "OK rollout deployed for web", answer
    assert any("waiting for" in line and new.address in line for line in answer), answer
    assert any("no traffic until" in line for line in answer), answer
    assert hits(new) >= 1  # health-checked before it was installed
    for value in [*VALUES[:10], None]:
        assert await body_for(proxy.http_port, value) == b"main"
    assert hits(new, b"/") == 0
    listed = await control(sock, "list")
    assert listed[0].split()[-1] == "ROLLOUT", listed
    assert listed[1].endswith(f"{new.address} no traffic"), listed


@guard(15)
async def test_set_percent_routes_by_the_cookies_hash(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, _, sock, _main, new = await setup(nursery, tmp_path)
    await control(sock, f"rollout deploy web --target {new.address}")
    assert await control(sock, "rollout set web --percent 50") == ["OK rollout set for web"]
    expected = {v: b"next" if in_rollout(v, 50) else b"main" for v in VALUES}
    assert 5 < list(expected.values()).count(b"next") < 35  # both groups are exercised
    for value in VALUES:
        assert await body_for(proxy.http_port, value) == expected[value], value
    # Every method and path follows the split, and a request without the cookie never does.
    chosen = next(v for v in VALUES if in_rollout(v, 50))
    for method in ("POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"):
        reply = await request(
            proxy.http_port, "/any/path?q=1", method=method, headers=rollout_cookie(chosen)
        )
        assert reply.status == 200, method
    assert sum(r.method != b"GET" for r in new.received if r.target != b"/up") == 6
    assert await body_for(proxy.http_port, None, "POST") == b"main"
    await control(sock, "rollout set web --percent 100")
    assert [await body_for(proxy.http_port, v) for v in VALUES] == [b"next"] * len(VALUES)
    assert await body_for(proxy.http_port, None) == b"main"
    await control(sock, "rollout set web --percent 0")
    assert [await body_for(proxy.http_port, v) for v in VALUES] == [b"main"] * len(VALUES)
    assert saved(tmp_path)["rollout"] == {
        "targets": [new.address],
        "read_targets": [],
        "drain_timeout": 30.0,
        "split": {"percent": 0, "allowlist": []},
    }


@guard(15)
async def test_set_list_sends_the_listed_values(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _, sock, _main, new = await setup(nursery, tmp_path)
    await control(sock, f"rollout deploy web --target {new.address}")
    assert await control(sock, "rollout set web --list alice,bob") == ["OK rollout set for web"]
    assert await body_for(proxy.http_port, "alice") == b"next"
    assert await body_for(proxy.http_port, "bob", "POST", "/orders") == b"next"
    assert await body_for(proxy.http_port, "carol") == b"main"
    assert await body_for(proxy.http_port, "alice2") == b"main"
    assert await body_for(proxy.http_port, None) == b"main"
    out = next(v for v in VALUES if not in_rollout(v, 10))
    await control(sock, "rollout set web --percent 10 --list carol")
    assert await body_for(proxy.http_port, "carol") == b"next"
    assert await body_for(proxy.http_port, "alice") == b"main"  # a new list replaces the old
    assert await body_for(proxy.http_port, out) == b"main"
    listed = await control(sock, "list")
    assert listed[1].endswith(f"{new.address} 10%, list carol"), listed


@guard(15)
async def test_stop_drains_the_rollout_group_and_returns_all_to_main(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, logs, sock, _main, new = await setup(nursery, tmp_path)
    await control(sock, f"rollout deploy web --target {new.address} --drain-timeout 5s")
    await control(sock, "rollout set web --percent 100")
    slow: list[bytes] = []

    async def slow_request() -> None:
        reply = await request(proxy.http_port, "/slow?0.5", headers=rollout_cookie("u"))
        slow.append(reply.body)

    nursery.start_soon(slow_request)
    await wait_until(lambda: new.active == 1)
    answer = await control(sock, "rollout stop web")
    assert slow == [b"next"]  # the in-flight request finished before the answer
    assert answer[-1] == "OK rollout stopped for web", answer
    assert any("draining" in line and new.address in line for line in answer), answer
    assert [await body_for(proxy.http_port, v) for v in VALUES[:10]] == [b"main"] * 10
    assert logs.records("Target drained")[-1]["target"] == new.address
    assert "ROLLOUT" not in (await control(sock, "list"))[0]
    assert saved(tmp_path)["rollout"] is None
    # Stopped again, or never started: nothing to do, and a set now fails.
    assert await control(sock, "rollout stop web") == ["OK web has no rollout"]
    answer = await control(sock, "rollout set web --percent 10")
    assert answer[-1].startswith("ERR service 'web' has no rollout group"), answer


@guard(15)
async def test_errors_leave_everything_as_it_was(nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy, _, sock, _main, new = await setup(nursery, tmp_path)
    answer = await control(sock, f"rollout deploy nope --target {new.address}")
    assert answer[-1].startswith("ERR service 'nope' is not deployed"), answer
    answer = await control(sock, "rollout set web --percent 10")
    assert answer[-1].startswith("ERR service 'web' has no rollout group"), answer
    assert (await control(sock, "rollout set web"))[-1].startswith(
        "ERR rollout set: one of --percent or --list is required"
    )
    assert (await control(sock, "rollout stop nope"))[-1].startswith("ERR service 'nope'")

    await control(sock, f"rollout deploy web --target {new.address}")
    await control(sock, "rollout set web --list alice")
    before = saved(tmp_path)
    broken = await start_upstream(nursery, "broken", healthy=False)
    answer = await control(
        sock, f"rollout deploy web --target {broken.address} --deploy-timeout 300ms"
    )
    assert answer[-1] == (
        "ERR rollout target failed to become healthy within configured timeout (300ms)"
    ), answer
    assert saved(tmp_path) == before
    assert await body_for(proxy.http_port, "alice") == b"next"  # the old group still serves

    # A save that fails: the split is put back, in the proxy and in the file.
    state = tmp_path / "state"
    shutil.move(state, tmp_path / "state.away")
    state.write_text("not a directory")
    answer = await control(sock, "rollout set web --percent 100")
    assert answer[-1].startswith("ERR cannot save state"), answer
    answer = await control(sock, "rollout stop web")
    assert answer[-1].startswith("ERR cannot save state"), answer
    newer = [await start_upstream(nursery, name) for name in ("newer1", "newer2")]
    targets = ",".join(u.address for u in newer)
    answer = await control(sock, f"rollout deploy web --target {targets}")
    assert answer[-1].startswith("ERR cannot save state"), answer
    assert await body_for(proxy.http_port, "alice") == b"next"
    checks = hits(newer[0])
    await trio.sleep(0.3)  # two targets are checked every 100ms while their group runs
    assert hits(newer[0]) == checks  # the group that was put back no longer runs
    state.unlink()
    shutil.move(tmp_path / "state.away", state)
    assert await body_for(proxy.http_port, "bob") == b"main"
    assert await body_for(proxy.http_port, "alice") == b"next"
    assert saved(tmp_path) == before


@guard(15)
async def test_read_targets_and_writer_affinity_apply_inside_the_rollout_group(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, _, sock, _main, new = await setup(nursery, tmp_path)
    reader = await start_upstream(nursery, "reader")
    answer = await control(
        sock, f"rollout deploy web --target {new.address} --read-target {reader.address}"
    )
    assert answer[-1] == "OK rollout deployed for web", answer
    await control(sock, "rollout set web --list alice")
    assert await body_for(proxy.http_port, "alice") == b"reader"
    write = await request(
        proxy.http_port, method="POST", headers=rollout_cookie("alice"), body=b"x"
    )
    assert write.body == b"next"
    writer = [v for k, v in write.headers if k == b"set-cookie" and v.startswith(b"kamal-writer=")]
    assert len(writer) == 1  # the rollout group has read targets: a write sets the cookie
    sent = [(b"cookie", b"kamal-rollout=alice; " + writer[0].split(b";")[0])]
    assert (await request(proxy.http_port, headers=sent)).body == b"next"  # reads follow
    # The main group has no read targets: its writes set no cookie, its reads go to main.
    write = await request(proxy.http_port, method="POST", headers=rollout_cookie("bob"), body=b"x")
    assert write.body == b"main"
    assert not [v for k, v in write.headers if k == b"set-cookie"]
    assert await body_for(proxy.http_port, "bob") == b"main"
    listed = await control(sock, "list")
    assert listed[1].endswith(f"{new.address},{reader.address} 0%, list alice"), listed


@guard(20)
async def test_a_second_rollout_deploy_replaces_the_group_and_keeps_the_split(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, logs, sock, _main, new = await setup(nursery, tmp_path)
    newer = await start_upstream(nursery, "newer")
    await control(sock, f"rollout deploy web --target {new.address}")
    await control(sock, "rollout set web --list alice")
    answer = await control(sock, f"rollout deploy web --target {newer.address} --drain-timeout 1s")
    assert answer[-1] == "OK rollout deployed for web", answer
    assert any("draining" in line and new.address in line for line in answer), answer
    assert await body_for(proxy.http_port, "alice") == b"newer"
    assert await body_for(proxy.http_port, "bob") == b"main"
    assert [r["target"] for r in logs.records("Target drained")] == [new.address]


@guard(20)
async def test_a_deploy_keeps_the_rollout_and_a_remove_drains_both_groups(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy, logs, sock, main, new = await setup(nursery, tmp_path)
    other = await start_upstream(nursery, "other")
    await control(sock, f"rollout deploy web --target {new.address}")
    await control(sock, "rollout set web --list alice")
    answer = await control(sock, f"deploy web --target {other.address} {FAST}")
    assert answer[-1] == "OK deployed web", answer
    assert await body_for(proxy.http_port, "bob") == b"other"
    assert await body_for(proxy.http_port, "alice") == b"next"  # as kamal-proxy: kept
    assert saved(tmp_path)["rollout"] is not None

    answer = await control(sock, "remove web")
    assert answer[-1] == "OK removed web", answer
    drained = {r["target"] for r in logs.records("Target drained")}
    assert {main.address, other.address, new.address} <= drained
    assert (await request(proxy.http_port, headers=rollout_cookie("alice"))).status == 404


@guard(20)
async def test_a_restart_keeps_the_rollout(nursery: trio.Nursery, tmp_path: Path) -> None:
    main = await start_upstream(nursery, "main")
    new = await start_upstream(nursery, "next")
    sock = tmp_path / "kproxy.sock"
    async with trio.open_nursery() as first:
        await start_proxy(first, tmp_path)
        await control(sock, f"deploy web --target {main.address} {FAST}")
        await control(sock, f"rollout deploy web --target {new.address} --drain-timeout 2s")
        await control(sock, "rollout set web --percent 30 --list alice")
        first.cancel_scope.cancel()
    checks = hits(new)
    proxy, _ = await start_proxy(nursery, tmp_path)
    (service,) = proxy.services()
    assert service.rollout == RolloutRecord((new.address,), (), 2.0, RolloutSplit(30, ("alice",)))
    for value in ["alice", *VALUES]:
        expected = b"next" if value == "alice" or in_rollout(value, 30) else b"main"
        assert await body_for(proxy.http_port, value) == expected, value
    assert hits(new) == checks  # restored healthy: a single target is not checked
    listed = await control(sock, "list --json")
    assert json.loads(listed[0])["services"][0]["rollout"] == {
        "targets": [new.address],
        "read_targets": [],
        "percent": 30,
        "list": ["alice"],
    }


async def test_with_workers_every_worker_follows_the_rollout_and_kill_9_keeps_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(2 * WORKERS_GUARD):
        main = await start_upstream(nursery, "main")
        new = await start_upstream(nursery, "next")
        proxy = await start_workers(nursery, tmp_path)
        sock = proxy.socket_path
        assert (await control(sock, f"deploy web --target {main.address} {FAST}"))[-1] == (
            "OK deployed web"
        )
        answer = await control(sock, f"rollout deploy web --target {new.address}")
        assert answer[-1] == "OK rollout deployed for web", answer
        clients = await pin_workers(proxy)
        for worker, client in clients.items():
            seen = [(await exchange(client, "/", headers=rollout_cookie(v))).body for v in VALUES]
            assert seen == [b"main"] * len(VALUES), worker
        assert (await control(sock, "rollout set web --percent 50 --list alice"))[-1] == (
            "OK rollout set for web"
        )
        expected = [b"next" if in_rollout(v, 50) else b"main" for v in VALUES]
        for worker, client in clients.items():
            seen = [(await exchange(client, "/", headers=rollout_cookie(v))).body for v in VALUES]
            assert seen == expected, worker
            assert (await exchange(client, "/", headers=rollout_cookie("alice"))).body == b"next"
            assert (await exchange(client, "/", method="POST", body=b"x")).body == b"main"
            await client.aclose()

        proxy.process.send_signal(signal.SIGKILL)
        await proxy.exited.wait()
        proxy = await start_workers(nursery, tmp_path)
        clients = await pin_workers(proxy)
        for worker, client in clients.items():
            seen = [(await exchange(client, "/", headers=rollout_cookie(v))).body for v in VALUES]
            assert seen == expected, worker
            assert (await exchange(client, "/", headers=rollout_cookie("alice"))).body == b"next"

        answer = await control(proxy.socket_path, "rollout stop web")
        assert answer[-1] == "OK rollout stopped for web", answer
        for worker, client in clients.items():
            seen = [(await exchange(client, "/", headers=rollout_cookie(v))).body for v in VALUES]
            assert seen == [b"main"] * len(VALUES), worker
            await client.aclose()
