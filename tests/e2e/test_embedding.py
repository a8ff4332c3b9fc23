"""kproxy as a library: proxies started in the caller's nursery, commanded from code."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

import kproxy
from tests.helpers import request, start_upstream


async def start_embedded(nursery: trio.Nursery, state_dir: str = "") -> kproxy.Proxy:
    options = kproxy.RunOptions(socket_path="", state_dir=state_dir, bind="127.0.0.1", http_port=0)
    proxy: kproxy.Proxy = await nursery.start(
        kproxy.Proxy(options, kproxy.Logger(out=io.StringIO())).serve
    )
    return proxy


async def test_two_proxies_in_one_process_do_not_interfere(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            one = await start_upstream(nursery, "one")
            two = await start_upstream(nursery, "two")
            first = await start_embedded(nursery, str(tmp_path / "first"))
            async with trio.open_nursery() as second_scope:
                second = await start_embedded(second_scope, str(tmp_path / "second"))
                await first.deploy("web", kproxy.DeploymentOptions(targets=(one.address,)))
                await second.deploy("web", kproxy.DeploymentOptions(targets=(two.address,)))
                await second.deploy(
                    "api",
                    kproxy.DeploymentOptions(
                        targets=(two.address,),
                        service=kproxy.ServiceOptions(hosts=("api.test",)),
                    ),
                )
                assert (await request(first.http_port)).body == b"one"
                assert (await request(second.http_port)).body == b"two"
                assert [s.name for s in first.services()] == ["web"]
                assert [s.name for s in second.services()] == ["api", "web"]

                await first.pause("web", max_pause=5)
                assert (await request(second.http_port)).body == b"two"  # not paused there
                await first.resume("web")

                second_scope.cancel_scope.cancel()  # cancelling the scope stops that proxy
            assert (await request(first.http_port)).body == b"one"
            with pytest.raises(OSError, match="connect"):  # its listener is closed: refused
                await trio.open_tcp_stream("127.0.0.1", second.http_port)
            nursery.cancel_scope.cancel()


async def test_commands_from_code_take_the_control_channel_objects(
    nursery: trio.Nursery,
) -> None:
    up = await start_upstream(nursery, "up")
    proxy = await start_embedded(nursery)
    command = kproxy.parse_command(["deploy", "web", f"--target={up.address}", "--host=a.test"])
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    assert await proxy.execute(command, progress) == "deployed web"
    assert f"web: traffic now goes to {up.address}" in lines
    assert (await request(proxy.http_port, host="a.test")).body == b"up"
