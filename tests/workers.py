"""A ``kproxy run --workers 2`` process for the e2e tests, and one client pinned to each worker.

Which worker serves a connection is the kernel's choice (SO_REUSEPORT), so tests that need a
request in each worker first pin one keep-alive connection per worker: a probe request on it,
then the access log's ``worker`` field says whose it is.
"""

from __future__ import annotations

import functools
from pathlib import Path

import trio

from kproxy.runtime.h11_stream import H11Stream
from tests.helpers import (
    ProxyProcess,
    clean_env,
    control,
    exchange,
    open_client,
    start_proxy_process,
    wait_until,
)


async def start_workers(nursery: trio.Nursery, tmp_path: Path, *args: str) -> ProxyProcess:
    proxy = await start_proxy_process(
        nursery, tmp_path, "--workers", "2", *args, env=clean_env(), timeout=20
    )
    await wait_until(lambda: len(proxy.records("Worker ready")) >= 2)
    return proxy


def worker_pids(proxy: ProxyProcess) -> dict[int, int]:
    """Worker number → its latest process id."""
    return {r["worker"]: r["pid"] for r in proxy.records("Worker ready")}


def served_by(proxy: ProxyProcess) -> set[int]:
    return {r["worker"] for r in proxy.records("Request")}


def logged(proxy: ProxyProcess, path: str) -> bool:
    """Whether the access log has a line for ``path``."""
    return any(r.get("path") == path for r in proxy.records("Request"))


async def pin_workers(proxy: ProxyProcess) -> dict[int, H11Stream]:
    """One open client connection per worker, keyed by worker number."""
    clients: dict[int, H11Stream] = {}
    for attempt in range(64):
        client = await open_client(proxy.http_port)
        probe = f"/probe-{len(proxy.logs)}-{attempt}"
        assert (await exchange(client, probe)).status == 200
        await wait_until(functools.partial(logged, proxy, probe))
        worker = next(r["worker"] for r in proxy.records("Request") if r.get("path") == probe)
        if worker in clients:
            await client.aclose()
        else:
            clients[worker] = client
        if len(clients) == 2:
            return clients
    raise AssertionError(f"64 connections all went to worker(s) {sorted(clients)}")


async def deploy(proxy: ProxyProcess, *args: str) -> list[str]:
    answer = await control(proxy.socket_path, "deploy web " + " ".join(args))
    assert answer[-1] == "OK deployed web", answer
    return answer
