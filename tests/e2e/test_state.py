"""The state file: saved atomically on every change, restored on start, robust to kill -9."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from kproxy import Logger, Proxy, RunOptions, ServiceOptions
from kproxy.core.snapshot import FORMAT_VERSION
from kproxy.errors import StateError
from kproxy.runtime.state_store import STATE_FILE_NAME
from tests.helpers import (
    Reply,
    Upstream,
    control,
    guard,
    hits,
    quick_options,
    request,
    start_proxy,
    start_upstream,
    wait_until,
)

STATE_FILE = "kproxy.state.json"


def read_state(state_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    return data


def saved(state_dir: Path) -> dict[str, dict[str, Any]]:
    data = read_state(state_dir)
    assert data["version"] == FORMAT_VERSION
    return {entry["name"]: entry for entry in data["services"]}


@guard(10)
async def test_every_change_is_saved_atomically(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = await start_upstream(nursery, "app")
    api = await start_upstream(nursery, "api")
    proxy, _ = await start_proxy(nursery, tmp_path)
    state = tmp_path / "state"
    previous: list[IO[bytes]] = []  # the last file, held open so its inode stays alive

    def check(**expected: tuple[str, str]) -> dict[str, dict[str, Any]]:
        """Each save replaced the file whole: renamed over it, never rewritten in place, so a
        reader holding the old file still sees the old, complete content."""
        services = saved(state)
        got = {name: (s["state"], s["options"]["targets"][0]) for name, s in services.items()}
        assert got == expected
        if previous:
            old = previous.pop()
            assert os.fstat(old.fileno()).st_ino != (state / STATE_FILE).stat().st_ino
            assert json.loads(old.read())["version"] == FORMAT_VERSION
            old.close()
        previous.append((state / STATE_FILE).open("rb"))
        assert os.listdir(state) == [STATE_FILE]  # no temp file left behind
        return services

    await proxy.deploy("web", quick_options(app))
    check(web=("running", app.address))
    await proxy.deploy("api", quick_options(api, service=ServiceOptions(hosts=("api.test",))))
    services = check(web=("running", app.address), api=("running", api.address))
    assert services["api"]["options"]["service"]["hosts"] == ["api.test"]
    await proxy.pause("web", max_pause=5)
    services = check(web=("paused", app.address), api=("running", api.address))
    assert services["web"]["max_pause"] == 5
    await proxy.stop("web", message="back soon")
    services = check(web=("stopped", app.address), api=("running", api.address))
    assert services["web"]["message"] == "back soon"
    await proxy.resume("web")
    check(web=("running", app.address), api=("running", api.address))
    await proxy.deploy("web", quick_options(api))
    check(web=("running", api.address), api=("running", api.address))
    await proxy.remove("api")
    check(web=("running", api.address))
    previous.pop().close()


@guard(15)
async def test_restart_restores_services_which_serve_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app")
    api = await start_upstream(nursery, "api")
    async with trio.open_nursery() as first:
        proxy, _ = await start_proxy(first, tmp_path)
        await proxy.deploy("web", quick_options(app))
        await proxy.deploy("api", quick_options(api, service=ServiceOptions(hosts=("api.test",))))
        await proxy.pause("api", max_pause=5)
        first.cancel_scope.cancel()

    # Health checks would fail now, and the restored services must not wait for them.
    app.healthy = api.healthy = False
    checks = hits(app), hits(api)
    proxy, logs = await start_proxy(nursery, tmp_path)
    assert [(s.name, s.state) for s in proxy.services()] == [("api", "paused"), ("web", "running")]
    assert (await request(proxy.http_port)).body == b"app"
    assert [r["service"] for r in logs.records("Restored")] == ["web", "api"]
    assert (hits(app), hits(api)) == checks  # single targets: restored healthy, not checked

    replies: list[Reply] = []

    async def held() -> None:
        replies.append(await request(proxy.http_port, host="api.test"))

    nursery.start_soon(held)
    await trio.sleep(0.3)
    assert replies == []  # still paused after the restart
    assert await control(tmp_path / "kproxy.sock", "resume api") == ["OK resumed api"]
    await wait_until(lambda: len(replies) == 1)
    assert replies[0].body == b"api"
    assert saved(tmp_path / "state")["api"]["state"] == "running"


@guard(10)
async def test_restored_multi_target_service_keeps_checking(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    async with trio.open_nursery() as first:
        proxy, _ = await start_proxy(first, tmp_path)
        await proxy.deploy("web", quick_options(one, two))
        first.cancel_scope.cancel()
    two.healthy = False
    proxy, _ = await start_proxy(nursery, tmp_path)
    await wait_until(
        lambda: (
            hits(two, b"/up") >= 2
            and proxy.router.services["web"].targets[1].health.value == "unhealthy"
        )
    )
    assert [(await request(proxy.http_port)).body for _ in range(3)] == [b"one"] * 3


@guard(10)
async def test_corrupt_service_entry_is_skipped_and_logged(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = await start_upstream(nursery, "app")
    api = await start_upstream(nursery, "api")
    async with trio.open_nursery() as first:
        proxy, _ = await start_proxy(first, tmp_path)
        await proxy.deploy("web", quick_options(app))
        await proxy.deploy("api", quick_options(api, service=ServiceOptions(hosts=("api.test",))))
        first.cancel_scope.cancel()
    data = read_state(tmp_path / "state")
    by_name = {entry["name"]: entry for entry in data["services"]}
    by_name["web"]["options"]["targets"] = ["foo bar"]
    data["services"].append({"name": "junk"})
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(data))

    proxy, logs = await start_proxy(nursery, tmp_path)
    assert [s.name for s in proxy.services()] == ["api"]
    assert (await request(proxy.http_port, host="api.test")).body == b"api"
    assert (await request(proxy.http_port)).status == 404
    errors = [r["error"] for r in logs.records("State restore failed for a service")]
    assert len(errors) == 2
    assert errors[0].startswith("service 'web' skipped: invalid target 'foo bar'")
    assert errors[1] == "service 'junk' skipped: missing field 'options'"


def server_port(log: Path) -> int | None:
    """The HTTP port from a ``kproxy run`` log's "Server started" line, once it is there."""
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["msg"] == "Server started":
            return int(record["http_port"])
    return None


async def start_process(tmp_path: Path, log: Path) -> tuple[trio.Process, int]:
    """``python -m kproxy run`` on a free port; returns once its "Server started" is logged."""
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "kproxy", "run", "--http-port", "0", "--https-port", "0"),
                *("--bind", "127.0.0.1", "--state-dir", str(tmp_path / "state")),
                *("--socket", str(tmp_path / "kproxy.sock")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with trio.fail_after(10):
        while (port := server_port(log)) is None:
            assert process.poll() is None, log.read_text()  # noqa: ASYNC240  # a small file
            await trio.sleep(0.02)
    return process, port


async def deploy_back_and_forth(
    sock: Path, upstreams: tuple[Upstream, Upstream], killed: trio.Event
) -> None:
    """Deploy one, then the other, ... until the proxy is killed (then answers may break off)."""
    for count in itertools.count():
        line = f"deploy web --target {upstreams[count % 2].address} --health-check-interval 50ms"
        try:
            answer = await control(sock, line)
        except (OSError, trio.BrokenResourceError):
            answer = []
        if killed.is_set():
            return
        assert answer[-1:] == ["OK deployed web"], answer


@guard(40)
async def test_kill_9_during_deploys_leaves_a_usable_state_file(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Three times: deploy in a loop, kill -9 at a random instant, check the file, restart."""
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    sock = tmp_path / "kproxy.sock"
    rng = random.Random(9)
    for round_ in range(3):
        process, port = await start_process(tmp_path, tmp_path / f"run{round_}.log")
        try:
            if round_ > 0:  # the restarted process serves what the file says, at once
                target = saved(tmp_path / "state")["web"]["options"]["targets"][0]
                reply = await request(port)
                assert reply.status == 200
                assert reply.body == (b"one" if target == one.address else b"two")
            killed = trio.Event()
            async with trio.open_nursery() as deploying:
                deploying.start_soon(deploy_back_and_forth, sock, (one, two), killed)
                await trio.sleep(rng.uniform(0.3, 0.8))
                killed.set()
                process.send_signal(signal.SIGKILL)
                await process.wait()
                deploying.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == -signal.SIGKILL
        data = saved(tmp_path / "state")  # parses: either the old or the new state
        assert data["web"]["options"]["targets"][0] in (one.address, two.address)
    assert hits(one, b"/") + hits(two, b"/") == 2  # the two checks after the restarts

    process, port = await start_process(tmp_path, tmp_path / "final.log")
    try:
        assert (await request(port)).status == 200
    finally:
        process.kill()
        await process.wait()


async def test_a_state_file_of_another_version_stops_the_start_and_is_kept(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_file = state_dir / STATE_FILE_NAME
    future = '{"version": 99, "services": []}\n'
    state_file.write_text(future)
    leftover = state_dir / f".{STATE_FILE_NAME}.1234.tmp"
    leftover.write_text("{half")
    options = RunOptions(socket_path="", state_dir=str(state_dir), http_port=0)
    proxy = Proxy(options, Logger(out=io.StringIO()))
    refused = pytest.RaisesExc(StateError, match="unsupported state format version 99")
    with pytest.RaisesGroup(refused, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
    assert state_file.read_text() == future
    assert not leftover.exists()
