"""``run --metrics-port``: kamal-proxy's metrics, scraped from a real proxy and read with
prometheus_client's own parser; one process, and ``--workers 2`` with a worker killed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import h11
import trio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kproxy.core.options import RunOptions, ServiceOptions
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.log import Logger
from kproxy.runtime.proxy import Proxy
from tests.helpers import (
    LogCapture,
    Received,
    Upstream,
    control,
    exchange,
    open_client,
    quick_options,
    request,
    send_reply,
    start_upstream,
    unused_port,
    wait_until,
)
from tests.workers import deploy, pin_workers, start_workers, worker_pids

GUARD = 30  # seconds per test
REQUESTS = "kamal_proxy_http_requests"
DURATIONS = "kamal_proxy_http_request_duration_seconds"
IN_FLIGHT = "kamal_proxy_http_in_flight_requests"
# Prometheus' default buckets (Go's prometheus.DefBuckets), as the parser gives ``le``.
DEFAULT_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0",
                   "2.5", "5.0", "7.5", "10.0", "+Inf")  # fmt: skip


async def scrape(port: int) -> dict[str, Metric]:
    reply = await request(port, "/metrics")
    assert reply.status == 200
    assert reply.header(b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
    return {m.name: m for m in text_string_to_metric_families(reply.body.decode())}


def value(metrics: dict[str, Metric], sample: str, **labels: str) -> float:
    """The value of the one ``sample`` with these labels (0 when absent, as Prometheus reads a
    series not yet born)."""
    name = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
    family = metrics.get(name)
    found = (
        [s.value for s in family.samples if s.name == sample and s.labels == labels]
        if family
        else []
    )
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def requests_total(metrics: dict[str, Metric], service: str = "web", status: str = "200") -> float:
    return value(metrics, REQUESTS + "_total", service=service, method="GET", status=status)


async def start_embedded(
    nursery: trio.Nursery, tmp_path: Path, max_connections: int = 0
) -> tuple[Proxy, LogCapture]:
    logs = LogCapture()
    options = RunOptions(
        socket_path=str(tmp_path / "kproxy.sock"),
        state_dir="",
        bind="127.0.0.1",
        http_port=0,
        metrics_port=unused_port(),
        max_connections=max_connections,
    )
    proxy: Proxy = await nursery.start(Proxy(options, Logger(out=logs)).serve)  # type: ignore[arg-type]
    return proxy, logs


async def test_one_process_counts_by_service_method_and_status(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, logs = await start_embedded(nursery, tmp_path)
        port = proxy.options.metrics_port
        options = quick_options(
            app,
            service=ServiceOptions(
                path_prefixes=("/app",), exclude_metrics_paths=("/healthz", "/app/kept")
            ),
        )
        await proxy.deploy("web", options)
        for _ in range(3):
            assert (await request(proxy.http_port, "/app/a")).status == 200
        assert (await request(proxy.http_port, "/app/b", method="POST", body=b"x")).status == 200
        assert (await request(proxy.http_port, "/app/c", method="BREW")).status == 200
        assert (await request(proxy.http_port, "/nowhere")).status == 404  # no service
        # Excluded: the path as the target sees it, the prefix stripped...
        assert (await request(proxy.http_port, "/app/healthz")).status == 200
        # ...so the client's path, prefix and all, is not compared: this one is counted.
        assert (await request(proxy.http_port, "/app/kept")).status == 200

        metrics = await scrape(port)
        assert metrics[REQUESTS].type == "counter"
        assert metrics[DURATIONS].type == "histogram"
        assert metrics[IN_FLIGHT].type == "gauge"
        assert requests_total(metrics) == 4  # /app/a three times, /app/kept once
        total = REQUESTS + "_total"
        assert value(metrics, total, service="web", method="POST", status="200") == 1
        assert value(metrics, total, service="web", method="OTHER", status="200") == 1
        assert value(metrics, total, service="", method="GET", status="404") == 1
        assert {s.labels["method"] for s in metrics[REQUESTS].samples} == {"GET", "POST", "OTHER"}
        assert not any(name.endswith("_created") for name in metrics)
        # The histogram: Prometheus' default buckets, cumulative, one count per request.
        labels = {"service": "web", "method": "GET", "status": "200"}
        buckets = [
            s
            for s in metrics[DURATIONS].samples
            if s.name.endswith("_bucket") and s.labels.items() >= labels.items()
        ]
        assert tuple(s.labels["le"] for s in buckets) == DEFAULT_BUCKETS
        assert buckets[-1].value == 4
        assert value(metrics, DURATIONS + "_count", **labels) == 4
        assert value(metrics, IN_FLIGHT, service="web") == 0
        # Excluded requests are still logged.
        await wait_until(lambda: any(r["path"] == "/app/healthz" for r in logs.records("Request")))


async def _wait(upstream: Upstream, request: Received, client: H11Stream) -> None:
    await trio.sleep(1)
    await send_reply(client, 200, b"waited")


async def test_in_flight_counts_the_requests_being_served(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, _ = await start_embedded(nursery, tmp_path)
        port = proxy.options.metrics_port
        app.handlers[b"/wait"] = _wait  # as slow as /slow, and excluded
        await proxy.deploy("web", quick_options(app, service=ServiceOptions(
            exclude_metrics_paths=("/wait",),
        )))  # fmt: skip

        async def slow(path: str) -> None:
            assert (await request(proxy.http_port, path)).status == 200

        async with trio.open_nursery() as clients:
            for path in ("/slow?1", "/slow?1", "/wait"):
                clients.start_soon(slow, path)
            await wait_until(lambda: app.active == 3)
            metrics = await scrape(port)
            assert value(metrics, IN_FLIGHT, service="web") == 2
            assert requests_total(metrics) == 0
        metrics = await scrape(port)
        assert value(metrics, IN_FLIGHT, service="web") == 0
        assert requests_total(metrics) == 2


async def test_up_answers_503_once_a_graceful_shutdown_begins(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        proxy, _ = await start_embedded(nursery, tmp_path)
        port = proxy.options.metrics_port
        await proxy.deploy("web", quick_options(app))
        assert (await request(port, "/up")).status == 200
        assert (await request(port, "/elsewhere")).status == 404
        async with trio.open_nursery() as inner:
            inner.start_soon(request, proxy.http_port, "/slow?1")
            await wait_until(lambda: app.active == 1)
            inner.start_soon(proxy.shutdown, 5.0)
            await wait_until(lambda: proxy.metrics is not None and proxy.metrics.shutting_down)
            reply = await request(port, "/up")
            assert reply.status == 503  # while the in-flight request still runs
            assert app.active == 1
            assert (await request(port, "/metrics")).status == 200  # still scrapable


async def _in_flight_becomes(port: int, expected: float, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        # Another process's figure: there is no event to wait for.
        while value(await scrape(port), IN_FLIGHT, service="web") != expected:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_workers_sum_and_a_killed_worker_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        app = await start_upstream(nursery, "app")
        metrics_port = unused_port()
        proxy = await start_workers(nursery, tmp_path, "--metrics-port", str(metrics_port))
        await deploy(proxy, f"--target {app.address} --health-check-interval 100ms")
        clients = await pin_workers(proxy)  # probe requests until one connection per worker
        probes = sum(r["path"].startswith("/probe-") for r in proxy.records("Request"))
        for client in clients.values():
            for _ in range(3):
                assert (await exchange(client, "/a")).status == 200
        metrics = await scrape(metrics_port)
        assert metrics[REQUESTS].type == "counter"
        assert metrics[DURATIONS].type == "histogram"
        assert metrics[IN_FLIGHT].type == "gauge"
        assert requests_total(metrics) == probes + 6  # summed over the workers
        # kproxy_*: the supervisor's (it checks health and runs the commands), not per worker.
        writer = {"service": "web", "target": app.address, "role": "writer", "group": "main"}
        assert value(metrics, "kproxy_target_healthy", **writer) == 1
        deployed = {"command": "deploy", "service": "web", "outcome": "ok"}
        assert value(metrics, "kproxy_commands_total", **deployed) == 1
        count = DURATIONS + "_count"
        assert value(metrics, count, service="web", method="GET", status="200") == probes + 6

        async def cut_off() -> None:  # its worker is killed under it
            with contextlib.suppress(h11.ProtocolError, trio.BrokenResourceError):
                await exchange(clients[1], "/slow?30")

        async with trio.open_nursery() as inner:
            inner.start_soon(cut_off)
            inner.start_soon(exchange, clients[2], "/slow?4")
            await wait_until(lambda: app.active == 2)
            assert value(await scrape(metrics_port), IN_FLIGHT, service="web") == 2  # live sum
            # kill -9 worker 1 mid-request: its request is gone from the gauge, its counts stay.
            os.kill(worker_pids(proxy)[1], signal.SIGKILL)
            await _in_flight_becomes(metrics_port, 1)
            assert requests_total(await scrape(metrics_port)) == probes + 6
        # Worker 2's slow request finished; worker 1 runs again.
        await wait_until(lambda: len(proxy.records("Worker ready")) >= 3, timeout=15)
        metrics = await scrape(metrics_port)
        assert value(metrics, IN_FLIGHT, service="web") == 0
        assert requests_total(metrics) == probes + 7
        for _ in range(4):
            assert (await request(proxy.http_port, "/b")).status == 200
        assert requests_total(await scrape(metrics_port)) == probes + 11
        for client in clients.values():
            await client.aclose()


async def test_kproxy_metrics_show_target_health_and_commands(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        other = await start_upstream(nursery, "other")  # two: a lone target is checked once
        proxy, _ = await start_embedded(nursery, tmp_path)
        port = proxy.options.metrics_port
        socket_path = proxy.options.socket_path
        targets = f"--target {app.address} --target {other.address}"
        deployed = await control(socket_path, f"deploy web {targets} --health-check-interval 100ms")
        assert deployed[-1] == "OK deployed web"
        assert (await control(socket_path, "remove nothing"))[-1].startswith("ERR")
        metrics = await scrape(port)
        healthy, since = "kproxy_target_healthy", "kproxy_target_health_changed_timestamp_seconds"
        target = {"service": "web", "target": other.address, "role": "writer", "group": "main"}
        assert metrics[healthy].type == "gauge"
        assert value(metrics, healthy, **target) == 1
        assert value(metrics, healthy, **{**target, "target": app.address}) == 1
        became_healthy = value(metrics, since, **target)
        assert abs(became_healthy - time.time()) < 10
        ok = {"command": "deploy", "service": "web", "outcome": "ok"}
        assert value(metrics, "kproxy_commands_total", **ok) == 1
        failed = {"command": "remove", "service": "nothing", "outcome": "error"}
        assert value(metrics, "kproxy_commands_total", **failed) == 1
        assert metrics["kproxy_command_duration_seconds"].type == "histogram"
        assert value(metrics, "kproxy_command_duration_seconds_count", **ok) == 1

        other.healthy = False
        with trio.fail_after(5):
            while value(await scrape(port), healthy, **target) != 0:  # noqa: ASYNC110
                await trio.sleep(0.05)  # health checks run every 100 ms; nothing to wait on
        assert value(await scrape(port), since, **target) > became_healthy

        rollout = await start_upstream(nursery, "rollout")
        answer = await control(socket_path, f"rollout deploy web --target {rollout.address}")
        assert answer[-1].startswith("OK"), answer
        in_rollout = {**target, "target": rollout.address, "group": "rollout"}
        assert value(await scrape(port), healthy, **in_rollout) == 1


async def test_kproxy_metrics_count_connections_and_cut_off_requests(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        app = await start_upstream(nursery, "app")
        new = await start_upstream(nursery, "new")
        proxy, _ = await start_embedded(nursery, tmp_path, max_connections=2)
        port = proxy.options.metrics_port
        await proxy.deploy("web", quick_options(app, drain_timeout=0.2))
        first, second = await open_client(proxy.http_port), await open_client(proxy.http_port)
        assert (await exchange(first, "/")).status == 200
        assert (await exchange(second, "/")).status == 200
        metrics = await scrape(port)
        assert value(metrics, "kproxy_client_connections") == 2
        # A third client waits in the backlog, taken once a slot frees.
        third = await open_client(proxy.http_port)
        await trio.sleep(0.2)
        metrics = await scrape(port)
        assert value(metrics, "kproxy_client_connections_waited_total") == 0
        assert value(metrics, "kproxy_client_connections") == 2
        await second.aclose()
        assert (await exchange(third, "/")).status == 200
        metrics = await scrape(port)
        assert value(metrics, "kproxy_client_connections_waited_total") == 1

        # A request still running on the old target when the drain times out is cut off.
        async with trio.open_nursery() as inner:
            inner.start_soon(exchange, first, "/slow?5")
            await wait_until(lambda: app.active == 1)
            await proxy.deploy("web", quick_options(new, drain_timeout=0.2))
        metrics = await scrape(port)
        assert value(metrics, "kproxy_requests_cut_off_total", service="web") == 1
        assert requests_total(metrics, status="504") == 1
        for client in (first, third):
            await client.aclose()
        with trio.fail_after(5):
            while value(await scrape(port), "kproxy_client_connections") != 0:  # noqa: ASYNC110
                await trio.sleep(0.05)  # the proxy sees the clients' EOF in its own time
