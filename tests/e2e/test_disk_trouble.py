"""A state directory that cannot be written (issue 14, scenario 7): ERR means nothing changed.

Each test runs twice: on a real full disk (a tiny tmpfs filled up; needs root and mount, else
skipped with the reason), and with the save's temp file path taken by a directory (the write
fails with EISDIR even for root, so it runs everywhere).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from kproxy import ServiceOptions
from kproxy.runtime.state_store import STATE_FILE_NAME
from tests.helpers import (
    clean_env,
    control,
    exchange,
    guard,
    hits,
    quick_options,
    request,
    start_proxy,
    start_upstream,
)
from tests.workers import deploy, pin_workers, start_workers


@contextlib.contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", ",".join(["size=256k", *options]), "tmpfs", str(path)]
    result = subprocess.run(mount, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


class FullDisk:
    """The state directory on a 256 KiB tmpfs; ``fill`` takes every free byte."""

    def __init__(self, state: Path) -> None:
        self.filler = state / "filler"

    def fill(self) -> None:
        with self.filler.open("ab", buffering=0) as file:

            def write_forever() -> None:
                while True:
                    file.write(b"x" * 4096)

            with pytest.raises(OSError, match="No space left on device"):
                write_forever()

    def free(self) -> None:
        self.filler.unlink()

    def before_restart(self) -> None:
        pass  # a full disk does not stop a start: it still holds the last saved state


class BlockedTempFile:
    """The save's temp file path is a directory: every save fails, even for root."""

    def __init__(self, state: Path) -> None:
        self.temp = state / f".{STATE_FILE_NAME}.{os.getpid()}.tmp"

    def fill(self) -> None:
        self.temp.mkdir()

    def free(self) -> None:
        self.temp.rmdir()

    def before_restart(self) -> None:
        self.free()  # the start-up check would refuse the directory (the next test)


Trouble = FullDisk | BlockedTempFile


@pytest.fixture(params=["full tmpfs", "blocked temp file"])
def trouble(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trouble]:
    state = tmp_path / "state"
    if request.param == "full tmpfs":
        with tmpfs(state):
            yield FullDisk(state)
    else:
        state.mkdir()
        yield BlockedTempFile(state)


def state_text(tmp_path: Path) -> str:
    return (tmp_path / "state" / STATE_FILE_NAME).read_text()


@guard(30)
async def test_commands_that_cannot_save_answer_err_and_change_nothing(
    nursery: trio.Nursery, tmp_path: Path, trouble: Trouble
) -> None:
    old = await start_upstream(nursery, "old")
    new = await start_upstream(nursery, "new")
    api = await start_upstream(nursery, "api")
    proxy, logs = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    await proxy.deploy("web", quick_options(old))
    await proxy.deploy("api", quick_options(api, service=ServiceOptions(hosts=("api.test",))))
    before = state_text(tmp_path)
    listed = await control(sock, "list")
    trouble.fill()

    commands = [
        f"deploy web --target {new.address} --health-check-interval 100ms",
        "remove api",
        "pause web",
        "stop web --message gone",
        "resume web",
    ]
    for line in commands:
        answer = await control(sock, line)
        assert answer[-1].startswith("ERR cannot save state"), (line, answer)
        assert answer[-1].endswith("nothing changed"), answer
        assert not any("traffic now goes to" in line for line in answer)
        # The running proxy is as it was: the old target serves, nothing paused or removed.
        assert await control(sock, "list") == listed, line
        assert (await request(proxy.http_port)).body == b"old"
        assert (await request(proxy.http_port, host="api.test")).body == b"api"
        assert state_text(tmp_path) == before, line
    assert hits(new) > 0  # the new target was checked, then dropped: never routed to
    assert len(logs.records("State save failed; nothing changed")) == len(commands)

    # Space returns: the next command saves, and a restart loads what it saved.
    trouble.free()
    assert (await control(sock, "stop web --message back"))[-1] == "OK stopped web"
    assert '"stopped"' in state_text(tmp_path)
    assert (await control(sock, f"deploy web --target {new.address}"))[-1] == "OK deployed web"
    assert (await request(proxy.http_port)).status == 503  # still stopped: a deploy keeps it
    assert (await control(sock, "resume web"))[-1] == "OK resumed web"
    assert (await request(proxy.http_port)).body == b"new"


@guard(30)
async def test_a_restart_after_the_trouble_loads_the_last_saved_state(
    nursery: trio.Nursery, tmp_path: Path, trouble: Trouble
) -> None:
    old = await start_upstream(nursery, "old")
    new = await start_upstream(nursery, "new")
    async with trio.open_nursery() as first:
        proxy, _ = await start_proxy(first, tmp_path)
        await proxy.deploy("web", quick_options(old))
        trouble.fill()
        answer = await control(tmp_path / "kproxy.sock", f"deploy web --target {new.address}")
        assert answer[-1].startswith("ERR"), answer
        first.cancel_scope.cancel()
    trouble.before_restart()
    async with trio.open_nursery() as second:
        proxy, _ = await start_proxy(second, tmp_path)
        assert (await request(proxy.http_port)).body == b"old"  # as the ERR said: unchanged
        if isinstance(trouble, FullDisk):
            trouble.free()
        await proxy.deploy("web", quick_options(new))
        await proxy.pause("web")
        second.cancel_scope.cancel()
    proxy, _ = await start_proxy(nursery, tmp_path)
    assert [(s.name, s.state, s.targets) for s in proxy.services()] == [
        ("web", "paused", (new.address,))
    ]


def start_refused(state_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kproxy", "run", "--workers", "1", "--bind", "127.0.0.1"]
    argv += ["--http-port", "0", "--https-port", "0", "--socket", str(tmp_path / "k.sock")]
    argv += ["--state-dir", str(state_dir)]
    env = clean_env()
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False, env=env)


@contextlib.contextmanager
def _a_file(path: Path) -> Iterator[None]:
    path.write_text("not a directory")
    yield


@pytest.mark.parametrize(
    "make_unwritable",
    [
        pytest.param(lambda path: tmpfs(path, "ro"), id="read-only tmpfs"),
        pytest.param(_a_file, id="a file in the way"),
    ],
)
def test_an_unwritable_state_dir_stops_the_start_with_a_clear_error(
    tmp_path: Path, make_unwritable: Callable[[Path], contextlib.AbstractContextManager[None]]
) -> None:
    state = tmp_path / "state"
    with make_unwritable(state):
        result = start_refused(state, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: cannot write to the state directory {state}")
    assert "choose another with --state-dir" in result.stderr


@guard(60)
async def test_with_workers_a_deploy_that_cannot_save_moves_no_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``run --workers 2``: the supervisor saves first, so on a full disk no worker is told
    to cut over; both keep sending every request to the old target."""
    old = await start_upstream(nursery, "old")
    new = await start_upstream(nursery, "new")
    state = tmp_path / "state"
    with tmpfs(state):
        disk = FullDisk(state)
        proxy = await start_workers(nursery, tmp_path)
        await deploy(proxy, "--target", old.address)
        before = state_text(tmp_path)
        clients = await pin_workers(proxy)
        disk.fill()
        answer = await control(proxy.socket_path, f"deploy web --target {new.address}")
        assert answer[-1].startswith("ERR cannot save state"), answer
        for client in clients.values():
            for _ in range(3):
                assert (await exchange(client, "/")).body == b"old"
        assert state_text(tmp_path) == before
        disk.free()
        await deploy(proxy, "--target", new.address)
        for client in clients.values():
            assert (await exchange(client, "/")).body == b"new"
            await client.aclose()
        proxy.process.terminate()
        await proxy.process.wait()
