"""SIGTERM and SIGINT on a real ``python -m kproxy run``: stop accepting, finish, exit 0."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import h11
import pytest
import trio

from kproxy.runtime.proxy import SHUTDOWN_GRACE
from tests.helpers import (
    Reply,
    control,
    open_client,
    open_control,
    read_reply,
    request,
    start_proxy_process,
    start_upstream,
    wait_until,
)

GUARD = 20  # seconds per test


async def _refuses_connections(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_lets_the_in_flight_request_finish(
    nursery: trio.Nursery, tmp_path: Path, signum: signal.Signals
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy = await start_proxy_process(nursery, tmp_path)
        deployed = await control(proxy.socket_path, f"deploy web --target {app.address}")
        assert deployed[-1] == "OK deployed web"

        replies: list[Reply] = []

        async def slow_request() -> None:
            replies.append(await request(proxy.http_port, "/slow?1.5"))

        nursery.start_soon(slow_request)
        await wait_until(lambda: app.active == 1)  # the request reached the upstream
        signalled = trio.current_time()
        proxy.process.send_signal(signum)

        # It stops accepting at once...
        with trio.fail_after(2):
            while not await _refuses_connections(proxy.http_port):  # noqa: ASYNC110  # no event
                await trio.sleep(0.05)
        assert proxy.process.returncode is None  # ...while the slow request still runs
        assert replies == []

        # ...then exits 0 once the request is done, well within the grace period.
        assert await proxy.process.wait() == 0
        assert trio.current_time() - signalled < SHUTDOWN_GRACE
    (reply,) = replies
    assert reply.status == 200
    assert reply.body == b"app"
    assert not proxy.socket_path.exists()
    assert proxy.records("Shutting down")
    # The request is logged like any other, with its status.
    assert [r["status"] for r in proxy.logs if r.get("path") == "/slow"] == [200]


async def test_idle_proxy_exits_promptly(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        proxy = await start_proxy_process(nursery, tmp_path)
        assert proxy.socket_path.exists()
        # An idle keep-alive client and an idle control client do not hold the exit up.
        idle = await open_client(proxy.http_port)
        await idle.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        await idle.send(h11.EndOfMessage())
        assert (await read_reply(idle)).status == 404  # accepted, answered, kept alive
        controller = await open_control(proxy.socket_path)
        assert (await controller.command("version"))[-1] == "OK"
        started = trio.current_time()
        proxy.process.send_signal(signal.SIGTERM)
        assert await proxy.process.wait() == 0
        assert trio.current_time() - started < 2
        assert await idle.stream.receive_some(100) == b""
        assert await controller.read_line() == ""
        await idle.aclose()
        await controller.stream.aclose()
    assert not proxy.socket_path.exists()


async def test_second_signal_cuts_the_grace_period_short(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy = await start_proxy_process(nursery, tmp_path)
        assert (await control(proxy.socket_path, f"deploy web --target {app.address}"))[-1] == (
            "OK deployed web"
        )
        replies: list[Reply] = []

        async def slow_request() -> None:
            with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
                replies.append(await request(proxy.http_port, "/slow?30"))

        nursery.start_soon(slow_request)
        await wait_until(lambda: app.active == 1)
        proxy.process.send_signal(signal.SIGTERM)
        await wait_until(lambda: bool(proxy.records("Shutting down")))
        started = trio.current_time()
        proxy.process.send_signal(signal.SIGINT)
        assert await proxy.process.wait() == 0
        assert trio.current_time() - started < 2
    assert [r["signal"] for r in proxy.records("Signal received")] == ["SIGTERM", "SIGINT"]
    assert not proxy.socket_path.exists()


async def test_restart_after_kill_9_replaces_the_stale_socket(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        first = await start_proxy_process(nursery, tmp_path)
        assert (await control(first.socket_path, f"deploy web --target {app.address}"))[-1] == (
            "OK deployed web"
        )
        first.process.kill()
        assert await first.process.wait() == -signal.SIGKILL
        assert first.socket_path.exists()  # left behind: nobody removed it

        second = await start_proxy_process(nursery, tmp_path)
        listing = await control(second.socket_path, "list")
        assert listing[1].split()[:4] == ["web", "*", "/", app.address]
        assert (await request(second.http_port)).body == b"app"


async def test_commands_running_at_shutdown_end_with_err_shutting_down(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Each command line gets its one final line, also when SIGTERM cuts it short: the deploy
    waiting for a health check that never passes, and the command queued behind it."""
    with trio.fail_after(GUARD):
        never = await start_upstream(nursery, "never", healthy=False)
        proxy = await start_proxy_process(nursery, tmp_path)
        controller = await open_control(proxy.socket_path)
        await controller.send(f"deploy web --target {never.address} --deploy-timeout 60s", "list")
        first = await controller.read_line()
        assert first.startswith("  web: waiting for"), first
        proxy.process.send_signal(signal.SIGTERM)
        lines = [first]
        while line := await controller.read_line():
            lines.append(line)
        assert await proxy.process.wait() == 0
        await controller.stream.aclose()
    finals = [line for line in lines if not line.startswith("  ")]
    assert finals == ["ERR shutting down", "ERR shutting down"]
