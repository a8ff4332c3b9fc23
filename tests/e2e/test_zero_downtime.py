"""The point of kproxy: deploys under steady load lose no request."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h11
import trio

from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    control,
    guard,
    quick_options,
    read_reply,
    request,
    start_proxy,
    start_upstream,
)

CLIENTS = 8  # half on keep-alive connections, half on a fresh connection per request
DEPLOYS = 24  # back and forth between the two upstreams


@guard(30)
async def test_every_request_succeeds_while_deploying_back_and_forth(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    proxy, logs = await start_proxy(nursery, tmp_path)
    options = {
        upstream: quick_options(upstream, target_health_check_interval=0.05)
        for upstream in (one, two)
    }
    await proxy.deploy("web", options[one])
    results: Counter[tuple[int, bytes]] = Counter()
    failures: list[str] = []
    stop = trio.Event()

    def record(status: int, body: bytes) -> None:
        results[status, body] += 1
        if status != 200 or body not in (b"one", b"two"):
            failures.append(f"{status} {body[:80]!r}")

    async def fresh_connections(index: int) -> None:
        # Every other one is slow enough to span a cutover and be drained.
        path = "/slow?0.05" if index % 2 else "/"
        while not stop.is_set():
            reply = await request(proxy.http_port, path)
            record(reply.status, reply.body)

    async def keep_alive(index: int) -> None:
        path = "/slow?0.05" if index % 2 else "/"
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
        client = H11Stream(stream, h11.Connection(h11.CLIENT))
        try:
            while not stop.is_set():
                await client.send(
                    h11.Request(method="GET", target=path, headers=[(b"host", b"example.com")])
                )
                await client.send(h11.EndOfMessage())
                reply = await read_reply(client)
                record(reply.status, reply.body)
                assert client.conn.our_state is h11.DONE  # the proxy kept the connection open
                client.conn.start_next_cycle()
        finally:
            await client.aclose()

    async with trio.open_nursery() as load:
        for index in range(CLIENTS // 2):
            load.start_soon(fresh_connections, index)
            load.start_soon(keep_alive, index)
        await trio.sleep(0.2)
        for deploy in range(DEPLOYS):
            upstream = two if deploy % 2 == 0 else one
            if deploy % 4 < 2:  # from code, and through the control socket
                await proxy.deploy("web", options[upstream])
            else:
                line = f"deploy web --target {upstream.address} --health-check-interval 50ms"
                assert (await control(tmp_path / "kproxy.sock", line))[-1] == "OK deployed web"
            await trio.sleep(0.02)
        stop.set()

    assert failures == []
    assert results[200, b"one"] > 100
    assert results[200, b"two"] > 100
    assert len(logs.records("Deployed")) == DEPLOYS + 1
    assert all(r["cancelled_requests"] == 0 for r in logs.records("Target drained"))
    assert {r["status"] for r in logs.records("Request")} == {200}
