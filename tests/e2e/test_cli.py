"""The ``kproxy``/``kamal-proxy`` command as real subprocesses against a real proxy."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

from kproxy._version import version_line
from tests.helpers import (
    clean_env,
    control,
    request,
    start_proxy,
    start_proxy_process,
    start_upstream,
    unused_port,
)

GUARD = 20  # seconds per test; each CLI call costs about a quarter of a second of start-up


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


async def cli(*argv: str, program: str | None = None, **env: str) -> Result:
    """Run ``python -m kproxy ARGV`` (or ``program ARGV``) with a clean environment."""
    command = [program] if program else [sys.executable, "-m", "kproxy"]
    with trio.fail_after(15):
        done = await trio.run_process(
            [*command, *argv],
            env=clean_env(**env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_deploy_prints_progress_and_exits_0(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, _logs = await start_proxy(nursery, tmp_path)
        sock = str(tmp_path / "kproxy.sock")
        result = await cli("deploy", "web", "--target", app.address, "--socket", sock)
        assert result.code == 0, result.err
        assert result.err == ""
        lines = result.out.splitlines()
        assert lines[-1] == "deployed web"
        assert lines[0].startswith("web: waiting for ")  # the two-space prefix is gone
        assert "web: all targets healthy" in lines
        assert (await request(proxy.http_port)).body == b"app"

        listing = await cli("list", f"--socket={sock}")
        assert listing.code == 0
        assert listing.out.splitlines()[1].split()[:4] == ["web", "*", "/", app.address]


async def test_err_exits_1_with_message_on_stderr(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        sick = await start_upstream(nursery, "sick", healthy=False)
        await start_proxy(nursery, tmp_path)
        sock = str(tmp_path / "kproxy.sock")
        timeout = await cli(
            "deploy", "web", "--target", sick.address, "--deploy-timeout=500ms", "--socket", sock
        )
        missing = await cli("remove", "ghost", "--socket", sock)
    assert timeout.code == 1
    assert "web: waiting for" in timeout.out
    assert timeout.err == (
        "Error: target failed to become healthy within configured timeout (500ms)\n"
    )
    assert missing.code == 1
    assert missing.out == ""
    assert missing.err.startswith("Error: service 'ghost' is not deployed")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["deploy", "web"], "required flag --target is missing"),
        (["deploy", "web", "--target", "127.0.0.1:1", "--deploy-timeout", "30"], "30"),
        (["deploy", "web", "--target", "foo bar"], "foo bar"),
        (["deploy", "web", "--target", "127.0.0.1:1", "--max-request-body", "10"],
         "--max-request-body can only be set with --buffer-requests"),
        (["list", "--socket"], "--socket needs a value"),
        ([], "no command given"),
    ],
)  # fmt: skip
async def test_usage_errors_fail_locally(tmp_path: Path, argv: list[str], message: str) -> None:
    # No proxy at all: the command line is checked before anything is sent.
    result = await cli(*argv, KPROXY_SOCKET=str(tmp_path / "none.sock"))
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("Error: ")
    assert message in result.err
    assert "cannot reach" not in result.err


async def test_missing_socket_says_where_it_looked(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "kproxy.sock"
    result = await cli("list", "--socket", str(path))
    assert result.code == 1
    assert result.err.startswith(f"Error: cannot reach the proxy at {path}")
    assert "No such file or directory" in result.err
    assert "kproxy run" in result.err


async def test_socket_from_flag_and_environment(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        good, bad = str(tmp_path / "kproxy.sock"), str(tmp_path / "bad.sock")
        kproxy_env = await cli("version", KPROXY_SOCKET=good, KAMAL_PROXY_SOCKET=bad)
        kamal_env = await cli("version", KAMAL_PROXY_SOCKET=good)
        flag_wins = await cli("version", "--socket", good, KPROXY_SOCKET=bad)
        kproxy_first = await cli("version", KPROXY_SOCKET=bad, KAMAL_PROXY_SOCKET=good)
    for result in (kproxy_env, kamal_env, flag_wins):
        assert result.code == 0, result.err
        assert result.out.splitlines()[1].startswith("proxy: kproxy ")  # the proxy answered
    assert kproxy_first.code == 0  # the client's version, without the proxy's
    assert kproxy_first.out.splitlines() == [version_line()]
    assert f"no proxy answers at {bad}" in kproxy_first.err


async def test_version_prints_the_clients_and_the_proxys(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sock = str(tmp_path / "kproxy.sock")
    alone = await cli("version", "--socket", sock)
    assert (alone.code, alone.out) == (0, version_line() + "\n")
    assert alone.err.startswith(f"no proxy answers at {sock}: No such file or directory")
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        both = await cli("version", "--socket", sock)
    assert (both.code, both.err) == (0, "")
    assert both.out.splitlines() == [version_line(), f"proxy: {version_line()}"]


@pytest.mark.parametrize("argv", [["help"], ["help", "--markdown"], ["help", "deploy"]])
def test_help_into_a_closed_pipe_exits_quietly(argv: list[str]) -> None:
    """``kproxy help | head``: the reader goes away; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kproxy", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=clean_env(),
            timeout=15,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == 1


@pytest.mark.skipif(shutil.which("kamal-proxy") is None, reason="console script not installed")
async def test_kamal_proxy_alias_with_kamals_argv(nursery: trio.Nursery, tmp_path: Path) -> None:
    program = shutil.which("kamal-proxy")
    assert program is not None
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, _logs = await start_proxy(nursery, tmp_path)
        env = {"KAMAL_PROXY_SOCKET": str(tmp_path / "kproxy.sock")}
        # The words Kamal 2 passes (after its shell has removed the quotes).
        deploy = await cli(
            "deploy", "app-web", f"--target={app.address}", "--deploy-timeout=30s",
            "--drain-timeout=30s", "--buffer-requests", "--buffer-responses",
            "--log-request-header=Cache-Control",
            "--log-request-header=Last-Modified", "--log-request-header=User-Agent",
            program=program, **env,
        )  # fmt: skip
        assert deploy.code == 0, deploy.err
        assert (await request(proxy.http_port)).body == b"app"

        stop = await cli(
            "stop", "app-web", "--drain-timeout=30s", "--message=Back in five minutes",
            program=program, **env,
        )  # fmt: skip
        assert stop.code == 0, stop.err
        stopped = await request(proxy.http_port)
        assert stopped.status == 503
        assert b"Back in five minutes" in stopped.body

        resume = await cli("resume", "app-web", program=program, **env)
        assert resume.code == 0, resume.err
        assert (await request(proxy.http_port)).body == b"app"

        listing = await cli("list", program=program, **env)
        assert listing.code == 0
        assert listing.out.splitlines()[1].split()[:5] == [
            "app-web",
            "*",
            "/",
            app.address,
            "running",
        ]

        remove = await cli("remove", "app-web", program=program, **env)
        assert remove.code == 0, remove.err
        assert (await request(proxy.http_port)).status == 404
        assert await control(tmp_path / "kproxy.sock", "list --json") == ['  {"services":[]}', "OK"]


async def test_help_output() -> None:
    deploy = await cli("deploy", "--help")
    assert deploy.code == 0
    assert deploy.out.startswith("Usage: deploy <service> [flags]")
    for flag in ("--target", "--deploy-timeout", "--drain-timeout", "--health-check-path"):
        assert flag in deploy.out
    topic = await cli("help", "run")
    assert topic.code == 0
    assert "--http-port" in topic.out
    unknown = await cli("help", "nope")
    assert unknown.code == 1
    assert unknown.err.startswith("Error: ")
    assert "unknown command 'nope'" in unknown.err


async def test_bare_help_lists_commands() -> None:
    result = await cli("--help")
    assert result.code == 0
    assert "deploy" in result.out
    assert "Commands:" in result.out


# --- kproxy run: options from the environment --------------------------------------------


async def _run_port(nursery: trio.Nursery, tmp_path: Path, *args: str, **env: str) -> int:
    with trio.fail_after(GUARD):
        proxy = await start_proxy_process(
            nursery, tmp_path, *args, http_port=None, env=clean_env(**env)
        )
        assert (await request(proxy.http_port)).status == 404  # really serving on that port
        proxy.process.send_signal(signal.SIGTERM)
        assert await proxy.process.wait() == 0
    return proxy.http_port


async def test_run_port_precedence(nursery: trio.Nursery, tmp_path: Path) -> None:
    ports = [unused_port() for _ in range(4)]
    kproxy, kamal, plain, flag = (str(p) for p in ports)
    assert await _run_port(
        nursery, tmp_path, KPROXY_HTTP_PORT=kproxy, KAMAL_PROXY_HTTP_PORT=kamal, HTTP_PORT=plain
    ) == int(kproxy)
    assert await _run_port(nursery, tmp_path, KAMAL_PROXY_HTTP_PORT=kamal, HTTP_PORT=plain) == int(
        kamal
    )
    assert await _run_port(nursery, tmp_path, HTTP_PORT=plain) == int(plain)
    assert await _run_port(nursery, tmp_path, "--http-port", flag, KPROXY_HTTP_PORT=kproxy) == int(
        flag
    )


@pytest.mark.parametrize("variable", ["KPROXY_SOCKET", "KAMAL_PROXY_SOCKET"])
async def test_run_socket_from_environment(
    nursery: trio.Nursery, tmp_path: Path, variable: str
) -> None:
    sock = tmp_path / "from-env.sock"
    with trio.fail_after(GUARD):
        proxy = await start_proxy_process(
            nursery, tmp_path, socket_path=sock, env=clean_env(**{variable: str(sock)})
        )
        assert proxy.records("Server started")[0]["socket"] == str(sock)
        version = await cli("version", **{variable: str(sock)})
        assert version.code == 0, version.err


async def test_run_state_path_is_the_state_directory(nursery: trio.Nursery, tmp_path: Path) -> None:
    state = tmp_path / "kamal-proxy"  # kamal-proxy's --state-path: a directory, as --state-dir
    upstream = await start_upstream(nursery, "one")
    with trio.fail_after(GUARD):
        proxy = await start_proxy_process(nursery, tmp_path, "--state-path", str(state))
        socket = str(proxy.socket_path)
        deployed = await cli("deploy", "web", "--target", upstream.address, "--socket", socket)
        assert deployed.code == 0, deployed.err
        assert (await request(proxy.http_port)).body == b"one"
        assert "web" in (state / "kproxy.state.json").read_text()
        assert not (tmp_path / "state" / "kproxy.state.json").exists()  # --state-dir lost
        proxy.process.send_signal(signal.SIGTERM)
        assert await proxy.process.wait() == 0


async def test_run_bad_environment_value_is_an_error(tmp_path: Path) -> None:
    result = await cli("run", "--socket", str(tmp_path / "s.sock"), KPROXY_HTTP_PORT="eighty")
    assert result.code == 1
    assert result.err.startswith("Error: run: ")
    assert "KPROXY_HTTP_PORT" in result.err
    assert "eighty" in result.err


async def test_run_refuses_a_live_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        await start_proxy(nursery, tmp_path)
        result = await cli(
            "run", "--http-port", "0", "--https-port", "0", "--bind", "127.0.0.1",
            "--socket", str(tmp_path / "kproxy.sock"), "--state-dir", str(tmp_path / "other"),
        )  # fmt: skip
    assert result.code == 1
    assert result.err == (
        f"Error: another kproxy is already listening on {tmp_path / 'kproxy.sock'}\n"
    )
    assert "Traceback" not in result.err


async def test_run_reports_a_busy_port(tmp_path: Path) -> None:
    with trio.socket.socket() as busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await cli(
            "run", "--http-port", str(port), "--https-port", "0", "--bind", "127.0.0.1",
            "--socket", str(tmp_path / "kproxy.sock"), "--state-dir", str(tmp_path / "state"),
        )  # fmt: skip
    assert result.code == 1
    assert result.err.startswith("Error: cannot start the proxy: ")
    assert "in use" in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "kproxy.sock").exists()  # the socket it bound first is gone again


async def test_ctrl_c_cancels_the_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        good = await start_upstream(nursery, "good")
        sick = await start_upstream(nursery, "sick", healthy=False)
        proxy, _logs = await start_proxy(nursery, tmp_path)
        sock = str(tmp_path / "kproxy.sock")
        assert (await control(sock, f"deploy web --target {good.address}"))[-1] == "OK deployed web"

        argv = [sys.executable, "-m", "kproxy", "deploy", "web", "--target", sick.address,
                "--deploy-timeout", "5m", "--socket", sock]  # fmt: skip
        deploy: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env(),
                check=False,
            )
        )
        assert deploy.stdout is not None
        assert deploy.stderr is not None
        assert b"waiting for" in await deploy.stdout.receive_some(4096)
        deploy.send_signal(signal.SIGINT)
        assert await deploy.wait() == 130
        err = await deploy.stderr.receive_some(4096)
        assert err == b"Error: interrupted; the proxy cancels the command\n"
        # Nothing changed, and the service's deploy lock is free again.
        with trio.fail_after(3):
            again = await control(sock, f"deploy web --target {good.address}")
        assert again[-1] == "OK deployed web"
        assert (await request(proxy.http_port)).body == b"good"
