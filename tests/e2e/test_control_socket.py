"""The control channel over the real Unix socket: framing, errors, half-close, cancellation."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Any, NoReturn

import pytest
import trio

from kproxy import KProxyError, Proxy, RunOptions
from kproxy.core import command_parser
from kproxy.runtime.log import Logger
from tests.helpers import (
    control,
    open_control,
    request,
    start_proxy,
    start_upstream,
)

GUARD = 15  # seconds: every test here finishes in well under one


async def test_socket_is_private(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        mode = os.stat(tmp_path / "kproxy.sock").st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600


async def test_stale_socket_file_is_replaced(nursery: trio.Nursery, tmp_path: Path) -> None:
    # What a kill -9'd proxy leaves behind: a socket file nobody listens on.
    path = tmp_path / "kproxy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(str(path))
    assert path.exists()
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        assert await control(path, "list") == ["  SERVICE  HOST  PATH  TARGET  STATE  TLS", "OK"]


async def test_live_socket_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        second = Proxy(
            RunOptions(
                socket_path=str(tmp_path / "kproxy.sock"),
                state_dir="",
                bind="127.0.0.1",
                http_port=0,
            ),
            Logger(out=io.StringIO()),
        )
        with pytest.raises(KProxyError, match="another kproxy is already listening on"):
            await nursery.start(second.serve)
        # The first proxy still owns its socket.
        assert (await control(tmp_path / "kproxy.sock", "version"))[-1] == "OK"


async def test_a_regular_file_in_the_way_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    (tmp_path / "kproxy.sock").write_text("not a socket")
    with trio.fail_after(GUARD), pytest.raises(KProxyError, match="is not a socket"):
        await start_proxy(nursery, tmp_path)
    assert (tmp_path / "kproxy.sock").read_text() == "not a socket"


async def test_commands_on_one_connection_are_answered_in_order(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        client = await open_control(tmp_path / "kproxy.sock")
        async with client.stream:
            # All three are written before any answer is read.
            await client.send("version", "bogus", "list --json")
            version = await client.read_answer()
            bogus = await client.read_answer()
            listing = await client.read_answer()
            # ERR left the connection usable.
            again = await client.command("version")
    assert version[-1] == "OK"
    assert version[0].startswith("  kproxy ")
    assert bogus == [bogus[0]]
    assert bogus[0].startswith("ERR unknown command 'bogus'")
    assert listing == ['  {"services":[]}', "OK"]
    assert again == version


async def test_help_and_version_print_lines_then_ok(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        sock = tmp_path / "kproxy.sock"
        deploy = await control(sock, "help deploy")
        flag_help = await control(sock, "deploy --help")
        version = await control(sock, "version")
    assert deploy[-1] == "OK"
    assert all(line.startswith("  ") for line in deploy[:-1])
    assert deploy[0] == "  Usage: deploy <service> [flags]"
    assert any("--deploy-timeout" in line and "30s" in line for line in deploy)
    assert flag_help == deploy
    assert len(version) == 2
    assert version[0].startswith("  kproxy ")
    assert "kamal-proxy" in version[0]
    assert version[1] == "OK"


async def test_bare_help_lists_the_commands(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        general = await control(tmp_path / "kproxy.sock", "help")
    assert general[-1] == "OK"
    assert any(line.split()[:1] == ["deploy"] for line in general[:-1])


async def test_list_table_and_json(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        await start_proxy(nursery, tmp_path)
        sock = tmp_path / "kproxy.sock"
        deployed = await control(
            sock, f"deploy web --target {app.address} --host a.test,b.test --path-prefix /api"
        )
        assert deployed[-1] == "OK deployed web"
        table = await control(sock, "list")
        as_json = await control(sock, "list --json")
    assert table[-1] == "OK"
    assert table[0].split() == ["SERVICE", "HOST", "PATH", "TARGET", "STATE", "TLS"]
    assert table[1].split() == ["web", "a.test,b.test", "/api", app.address, "running", "no"]
    assert len(as_json) == 2
    assert as_json[-1] == "OK"
    (service,) = json.loads(as_json[0])["services"]
    assert service["name"] == "web"
    assert service["hosts"] == ["a.test", "b.test"]
    assert service["targets"] == [app.address]
    assert service["state"] == "running"


BAD_LINES = [
    pytest.param(b"frobnicate web", "unknown command 'frobnicate'", id="unknown-command"),
    pytest.param(
        b"deploy web --target 127.0.0.1:1 --colour", "unknown flag --colour", id="bad-flag"
    ),
    pytest.param(
        b"deploy web --target 127.0.0.1:1 --deploy-timeout 30",
        "invalid --deploy-timeout",
        id="bare-number-duration",
    ),
    pytest.param(b'deploy web --target "foo bar"', "foo bar", id="target-with-space"),
    pytest.param(b"deploy web --target 'oops", "cannot split command", id="unbalanced-quote"),
    pytest.param(b"list \xff\xfe", "not valid UTF-8", id="invalid-utf8"),
    pytest.param(b"list " + b"x" * (64 * 1024), "line too long (limit 65536 bytes)", id="too-long"),
    pytest.param(b"deploy", "<service>", id="missing-argument"),
    pytest.param(b"remove ghost", "service 'ghost' is not deployed", id="unknown-service"),
    pytest.param(b"deploy web --target 127.0.0.1:1 --tls", "--tls", id="unsupported-flag"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
async def test_bad_input_gets_err_and_disturbs_nothing(
    nursery: trio.Nursery, tmp_path: Path, line: bytes, message: str
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, _logs = await start_proxy(nursery, tmp_path)
        sock = tmp_path / "kproxy.sock"
        assert (await control(sock, f"deploy app --target {app.address}"))[-1] == "OK deployed app"
        client = await open_control(sock)
        async with client.stream:
            answer = await client.command(line)
            after = await client.command("list")
        assert len(answer) == 1, answer
        assert answer[0].startswith("ERR ")
        assert message in answer[0]
        assert len(answer[0]) < 1000  # the message, not an echo of the whole line
        assert after[-1] == "OK"
        assert after[1].split()[0] == "app"
        assert (await request(proxy.http_port)).body == b"app"


async def test_half_close_finishes_queued_commands(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        await start_proxy(nursery, tmp_path)
        client = await open_control(tmp_path / "kproxy.sock")
        async with client.stream:
            await client.send(f"deploy web --target {app.address}", "list")
            await client.stream.send_eof()  # what `socat -t 60` and `nc -N` do at stdin EOF
            lines = []
            while line := await client.read_line():
                lines.append(line)
    finals = [i for i, line in enumerate(lines) if not line.startswith("  ")]
    assert len(finals) == 2, lines
    assert lines[finals[0]] == "OK deployed web"
    assert any("all targets healthy" in line for line in lines[: finals[0]])
    assert lines[finals[1]] == "OK"
    assert lines[finals[1] - 1].split()[:4] == ["web", "*", "/", app.address]


async def test_client_that_leaves_mid_deploy_cancels_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        good = await start_upstream(nursery, "good")
        sick = await start_upstream(nursery, "sick", healthy=False)
        proxy, logs = await start_proxy(nursery, tmp_path)
        sock = tmp_path / "kproxy.sock"
        assert (await control(sock, f"deploy web --target {good.address}"))[-1] == "OK deployed web"

        client = await open_control(sock)
        await client.send(
            f"deploy web --target {sick.address} --deploy-timeout 5m --health-check-interval 100ms"
        )
        assert "waiting for" in await client.read_line()
        await client.stream.aclose()  # gone for good, not a half-close

        # The deploy stops: its health checks end and the lock is free again.
        await trio.sleep(0.6)
        checks = len(sick.received)
        await trio.sleep(0.4)
        assert len(sick.received) == checks
        with trio.fail_after(3):
            redeploy = await control(sock, f"deploy web --target {good.address}")
        assert redeploy[-1] == "OK deployed web"
        assert (await request(proxy.http_port)).body == b"good"
        assert all(r["targets"] == [good.address] for r in logs.records("Deployed"))


async def test_unexpected_exceptions_become_internal_errors(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_execute(*_args: Any) -> NoReturn:
        raise RuntimeError("kaboom")

    def broken_parse(*_args: Any) -> NoReturn:
        raise ExceptionGroup("several", [ValueError("bad")])

    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, logs = await start_proxy(nursery, tmp_path)
        sock = tmp_path / "kproxy.sock"
        assert (await control(sock, f"deploy app --target {app.address}"))[-1] == "OK deployed app"
        client = await open_control(sock)
        async with client.stream:
            with monkeypatch.context() as patch:
                patch.setattr(Proxy, "execute", broken_execute)
                first = await client.command("list")
            with monkeypatch.context() as patch:
                patch.setattr(command_parser, "parse_command", broken_parse)
                second = await client.command("list")
            third = await client.command("list")
    assert first[0].startswith("ERR internal error: RuntimeError('kaboom')")
    assert second[0].startswith("ERR internal error: ExceptionGroup(")
    assert third[-1] == "OK"
    assert len(logs.records("Command failed")) == 2
    assert (await request(proxy.http_port)).body == b"app"


# --- the documented shell clients: socat and nc (see ../shared/ENVIRONMENT.md) ---------------

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
needs_nc = pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")


async def _shell(script: str, sock: Path, **env: str) -> list[str]:
    result = await trio.run_process(
        ["sh", "-c", script],
        env={**os.environ, "SOCK": str(sock), **env},
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


@needs_socat
async def test_socat_list(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        lines = await _shell(
            "echo 'list' | socat -t 60 - UNIX-CONNECT:$SOCK", tmp_path / "kproxy.sock"
        )
    assert lines == ["  SERVICE  HOST  PATH  TARGET  STATE  TLS", "OK"]


@needs_socat
async def test_socat_deploy_streams_progress(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, _logs = await start_proxy(nursery, tmp_path)
        lines = await _shell(
            'printf "deploy web --target $ADDR\\nlist --json\\n"'
            " | socat -t 60 - UNIX-CONNECT:$SOCK",
            tmp_path / "kproxy.sock",
            ADDR=app.address,
        )
        assert (await request(proxy.http_port)).body == b"app"
    deployed = lines.index("OK deployed web")
    assert deployed >= 2
    assert any("waiting for" in line for line in lines[:deployed])
    assert json.loads(lines[deployed + 1])["services"][0]["targets"] == [app.address]
    assert lines[-1] == "OK"


@needs_nc
async def test_nc_half_closes_and_reads_every_answer(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        await start_proxy(nursery, tmp_path)
        lines = await _shell(
            'printf "version\\nnope\\ndeploy web --target $ADDR\\n" | nc -N -U $SOCK',
            tmp_path / "kproxy.sock",
            ADDR=app.address,
        )
    assert lines[0].startswith("  kproxy ")
    assert lines[1] == "OK"
    assert lines[2].startswith("ERR unknown command 'nope'")
    assert lines[-1] == "OK deployed web"
