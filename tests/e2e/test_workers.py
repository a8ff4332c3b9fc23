"""``kproxy run --workers 2``: a supervisor and two worker processes, driven through the socket.

Which worker serves a connection is the kernel's choice (SO_REUSEPORT), so tests that need a
request in each worker first pin one keep-alive connection per worker: a probe request on it,
then the access log's ``worker`` field says whose it is.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import h11
import trio

from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    Reply,
    control,
    exchange,
    request,
    start_proxy_process,
    start_upstream,
    wait_until,
)
from tests.workers import deploy, logged, pin_workers, served_by, start_workers, worker_pids

GUARD = 30  # seconds per test


async def test_requests_spread_over_the_workers_and_list_is_the_same(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy = await start_workers(nursery, tmp_path / "many")
        single = await start_proxy_process(nursery, tmp_path / "one", "--workers", "1")
        assert proxy.records("Server started")[0]["workers"] == 2
        assert len(set(worker_pids(proxy).values())) == 2
        assert not single.records("Worker ready")
        for each in (proxy, single):
            await deploy(each, f"--target {app.address} --host a.test --path-prefix /api")
        for _ in range(40):
            assert (await request(proxy.http_port, "/api/x", host="a.test")).body == b"app"
        await wait_until(lambda: len(proxy.records("Request")) >= 40)
        assert served_by(proxy) == {1, 2}
        for command in ("list", "list --json"):
            assert await control(proxy.socket_path, command) == await control(
                single.socket_path, command
            )


async def test_deploy_waits_for_the_drain_in_every_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        one = await start_upstream(nursery, "one")
        two = await start_upstream(nursery, "two")
        proxy = await start_workers(nursery, tmp_path)
        await deploy(proxy, f"--target {one.address}")
        clients = await pin_workers(proxy)
        replies: list[Reply] = []

        async def slow(client: H11Stream) -> None:
            replies.append(await exchange(client, "/slow?1.5"))

        for client in clients.values():
            nursery.start_soon(slow, client)
        await wait_until(lambda: one.active == 2)
        began = trio.current_time()
        answer = await deploy(proxy, f"--target {two.address} --drain-timeout 10s")
        # The deploy answers once both workers' requests to the old target have finished.
        assert len(replies) == 2
        assert [r.body for r in replies] == [b"one", b"one"]
        assert trio.current_time() - began >= 1
        assert "old targets drained" in answer[-2]
        drained = proxy.records("Target drained")
        assert [r["cancelled_requests"] for r in drained] == [0]
        # Both workers now send to the new target, on the same connections.
        for client in clients.values():
            assert (await exchange(client, "/")).body == b"two"
            await client.aclose()


async def test_drain_timeout_cuts_off_a_slow_request_in_a_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        one = await start_upstream(nursery, "one")
        two = await start_upstream(nursery, "two")
        proxy = await start_workers(nursery, tmp_path)
        await deploy(proxy, f"--target {one.address}")
        clients = await pin_workers(proxy)
        outcome: list[object] = []

        async def slow() -> None:
            try:
                outcome.append((await exchange(clients[2], "/slow?30")).status)
            except (trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
                outcome.append(exc)

        nursery.start_soon(slow)
        await wait_until(lambda: one.active == 1)
        began = trio.current_time()
        await deploy(proxy, f"--target {two.address} --drain-timeout 1s")
        assert 1 <= trio.current_time() - began < 5
        assert [r["cancelled_requests"] for r in proxy.records("Target drained")] == [1]
        await wait_until(lambda: bool(outcome))
        assert outcome[0] == 504  # cut off by the drain before its response head: 504
        assert (await exchange(clients[1], "/")).body == b"two"
        for client in clients.values():
            await client.aclose()


async def test_a_killed_worker_is_restarted_with_the_current_state(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        one = await start_upstream(nursery, "one")
        two = await start_upstream(nursery, "two")
        proxy = await start_workers(nursery, tmp_path)
        await deploy(proxy, f"--target {one.address}")
        before = worker_pids(proxy)
        os.kill(before[1], signal.SIGKILL)
        await wait_until(lambda: worker_pids(proxy)[1] != before[1], timeout=5)
        assert proxy.records("Worker exited; restarting it")[0]["status"] == -signal.SIGKILL
        assert worker_pids(proxy)[2] == before[2]  # the other one kept serving
        # The new worker has the state, and follows the next change.
        await deploy(proxy, f"--target {two.address}")
        clients = await pin_workers(proxy)
        for client in clients.values():
            assert (await exchange(client, "/")).body == b"two"
            await client.aclose()
        assert (await control(proxy.socket_path, "list"))[1].split()[3] == two.address


async def test_pause_stop_and_resume_reach_every_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy = await start_workers(nursery, tmp_path)
        await deploy(proxy, f"--target {app.address}")
        clients = await pin_workers(proxy)

        assert (await control(proxy.socket_path, 'stop web --message "Back soon"'))[-1] == (
            "OK stopped web"
        )
        for client in clients.values():
            stopped = await exchange(client, "/")
            assert stopped.status == 503
            assert b"Back soon" in stopped.body

        assert (await control(proxy.socket_path, "pause web"))[-1] == "OK paused web"
        held: dict[int, Reply] = {}

        async def held_request(worker: int) -> None:
            held[worker] = await exchange(clients[worker], "/")

        for worker in clients:
            nursery.start_soon(held_request, worker)
        await trio.sleep(0.5)
        assert not held  # both workers hold it
        assert (await control(proxy.socket_path, "resume web"))[-1] == "OK resumed web"
        await wait_until(lambda: len(held) == 2)
        assert {r.body for r in held.values()} == {b"app"}
        for client in clients.values():
            await client.aclose()


async def test_state_is_kept_across_a_restart_and_kill_9_takes_the_workers_down(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        first = await start_workers(nursery, tmp_path)
        await deploy(first, f"--target {app.address}")
        assert (await control(first.socket_path, "stop web --message Later"))[-1] == (
            "OK stopped web"
        )
        first.process.send_signal(signal.SIGTERM)
        assert await first.process.wait() == 0
        assert [r["status"] for r in first.records("Worker exited")] == [0, 0]

        second = await start_workers(nursery, tmp_path)
        listing = json.loads((await control(second.socket_path, "list --json"))[0])
        assert [(s["name"], s["state"]) for s in listing["services"]] == [("web", "stopped")]
        assert (await request(second.http_port)).status == 503
        assert (await control(second.socket_path, "resume web"))[-1] == "OK resumed web"
        assert (await request(second.http_port)).body == b"app"

        pids = list(worker_pids(second).values())
        second.process.kill()
        await second.process.wait()
        # The workers see their channel close and exit: nothing keeps serving the port.
        await wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids))


async def test_absolute_form_is_routed_by_its_authority_in_every_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``GET http://b.test/...`` with ``Host: a.test`` reaches b.test's service whichever
    worker takes it (each routes the request it parsed)."""
    with trio.fail_after(GUARD):
        public = await start_upstream(nursery, "public")
        private = await start_upstream(nursery, "private")
        proxy = await start_workers(nursery, tmp_path)
        services = (("public", public, ""), ("private", private, "--host b.test"))
        for name, upstream, hosts in services:
            answer = await control(
                proxy.socket_path, f"deploy {name} --target {upstream.address} {hosts}"
            )
            assert answer[-1] == f"OK deployed {name}", answer
        clients = await pin_workers(proxy)  # public, the default service, answers the probes
        for worker, client in clients.items():
            path = f"/secret-{worker}"
            reply = await exchange(client, f"http://b.test{path}", host="a.test")
            assert (reply.status, reply.body) == (200, b"private"), worker
            assert private.received[-1].target == path.encode()
            assert private.received[-1].header(b"host") == b"b.test"
            await wait_until(functools.partial(logged, proxy, path))
            [line] = [r for r in proxy.records("Request") if r.get("path") == path]
            assert (line["worker"], line["host"], line["service"]) == (worker, "b.test", "private")
        assert not [r for r in public.received if r.target.startswith(b"/secret")]
        for client in clients.values():
            await client.aclose()
