"""The README's quick start, end to end on loopback."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers import control, request, start_proxy, start_upstream


async def test_deploy_then_redeploy_switches_traffic(nursery: trio.Nursery, tmp_path: Path) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, _logs = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"

    answer = await control(sock, f"deploy web --target {one.address}")
    assert answer[-1] == "OK deployed web"
    assert (await request(proxy.http_port, host="anything")).body == b"one"

    answer = await control(sock, f"deploy web --target={two.address}")
    assert answer[-1] == "OK deployed web"
    assert all(line.startswith("  ") for line in answer[:-1])
    assert (await request(proxy.http_port)).body == b"two"

    listing = await control(sock, "list")
    assert listing[-1] == "OK"
    assert listing[1].split() == ["web", "*", "/", two.address, "running", "no"]
