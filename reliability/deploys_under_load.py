"""Scenario 1: deploys under load.

Goal: 0 failed requests (a socket error or any answer but the target's 200; a WebSocket or
SSE stream that ends outside a deploy's drain, which closes WebSockets to the old target as it
starts and cuts other requests at ``--drain-timeout``), and p99 latency while deploying at
most 2x the steady p99, whether each deploy runs the ``kproxy deploy`` CLI (a Python process
starting on the same busy cores) or goes straight to the control socket.

For each worker count (the default, then ``--workers 1``) and each way of deploying, wrk sends
mixed traffic at 32 connections (keep-alive GETs, and one request in four a POST with a
1 KiB body) while ``web`` is deployed back and forth between two healthy targets
(``--health-check-interval 100ms``), one deploy right after the other, 200 times; then as
long again (2 minutes at most) without deploys: the steady figure. Meanwhile two SSE streams
(3 s each, longer than the 1 s ``--drain-timeout``) and two WebSockets (echoing a message
every 100 ms) run in loops, reconnecting when they end. (At the full size the deploys take up
to 6 minutes per case; the steady p99 of 2 minutes of traffic, some 200,000 requests, is as
good a baseline as that of 6.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from reliability import harness
from reliability.load import WrkResult, wrk
from reliability.scenario import Result, standalone
from reliability.streams import StreamClient

NAME: Final = "deploys_under_load"
GOAL: Final = "0 failed requests, p99 during deploys ≤ 2x steady (CLI and socket)"
DEPLOYS: Final = {True: 6, False: 200}  # per case
DRAIN: Final = "1s"  # --drain-timeout: shorter than an SSE stream (3 s), so some outlive it
CONNECTIONS: Final = 32
STREAMS: Final = 2  # SSE streams, and as many WebSockets, open throughout
STEADY_MAX: Final = 120.0  # seconds: a longer steady run adds samples, not a steadier p99
END_MARGIN: Final = 0.5  # seconds after a deploy answered that a stream's end still belongs to it
MIXED_TRAFFIC: Final = """
local n = 0
local body = string.rep("b", 1024)
request = function()
  n = n + 1
  if n % 4 == 0 then
    return wrk.format("POST", "/post", {["Content-Type"] = "text/plain"}, body)
  end
  return wrk.format("GET", "/get")
end
"""


def cli() -> list[str]:
    installed = Path(sys.executable).parent / "kproxy"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "kproxy"]


def deploy_with_cli(proxy: harness.Proxy, line: str) -> None:
    argv = [*cli(), *line.split(), "--socket", str(proxy.socket_path)]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=harness.child_env(), timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"kproxy deploy failed: {done.stderr[-300:]}")


def undocumented_ends(clients: list[StreamClient], windows: list[tuple[float, float]]) -> list[str]:
    """Stream ends that no deploy explains: outside every deploy's span (plus a margin)."""
    return [
        why
        for client in clients
        for at, why in client.ends
        if not any(start <= at <= end + END_MARGIN for start, end in windows)
    ]


def one_case(
    proxy: harness.Proxy, targets: list[str], via: str, deploys: int, directory: Path
) -> tuple[WrkResult, WrkResult, float, list[str], int]:
    """(steady, during ``deploys`` deploys, seconds they took, stream failures, streams cut by
    a drain); the steady run lasts as long as the deploys did, 2 minutes at most."""
    script = directory / "mixed.lua"
    windows: list[tuple[float, float]] = []
    kinds = ["sse"] * STREAMS + ["websocket"] * STREAMS
    clients = [StreamClient(proxy.http_port, "web.test", kind).start() for kind in kinds]

    def deploy_all() -> None:
        time.sleep(0.5)  # wrk connected
        for index in range(deploys):
            line = harness.deploy_line("web", [targets[(index + 1) % 2]], drain=DRAIN)
            started = time.monotonic()
            deploy_with_cli(proxy, line) if via == "CLI" else proxy.ok(line)
            windows.append((started, time.monotonic()))
        time.sleep(0.5)

    try:
        during = wrk(proxy.http_port, "web.test", 0, connections=CONNECTIONS, script=script,
                     extra=MIXED_TRAFFIC, meanwhile=deploy_all)  # fmt: skip
    finally:
        for client in clients:
            client.stop()
    took = windows[-1][1] - windows[0][0]
    steady_seconds = min(took + 1, STEADY_MAX)
    steady = wrk(proxy.http_port, "web.test", steady_seconds, connections=CONNECTIONS,
                 script=script, extra=MIXED_TRAFFIC)  # fmt: skip
    failures = undocumented_ends(clients, windows)
    cut = sum(len(client.ends) for client in clients) - len(failures)
    return steady, during, took, failures, cut


def run(short: bool, seed: int) -> Result:
    del seed  # the load is the same every time
    parts: list[str] = []
    details: list[str] = []
    passed = True
    for workers in (None, 1):
        with harness.workdir(NAME) as directory:
            upstreams = [harness.start_upstream(directory, n) for n in ("a", "b")]
            targets = [u.address for u in upstreams]
            proxy = harness.new_proxy(directory, workers)
            proxy.start()
            try:
                proxy.ok(harness.deploy_line("web", [targets[0]]))
                for via in ("CLI", "socket"):
                    steady, during, took, broken, cut = one_case(
                        proxy, targets, via, DEPLOYS[short], directory
                    )
                    failed = sum(r.socket_errors + r.bad_statuses for r in (steady, during))
                    failed += len(broken)
                    details += broken[:3]
                    ratio = during.p99 / steady.p99 if steady.p99 else float("inf")
                    passed = passed and failed == 0 and ratio <= 2
                    label = "default workers" if workers is None else "1 worker"
                    parts.append(
                        f"{label} via {via}: {DEPLOYS[short]} deploys in {took:.0f}s, "
                        f"{steady.requests + during.requests} requests and "
                        f"{2 * STREAMS} streams, {failed} failed ({cut} streams cut by a drain), "
                        f"p99 {steady.p99 * 1000:.0f}→{during.p99 * 1000:.0f} ms "
                        f"(x{ratio:.1f})"
                    )
                tracebacks = proxy.tracebacks()
                passed = passed and not tracebacks
            finally:
                proxy.stop()
                for upstream in upstreams:
                    upstream.stop()
    return Result(NAME, "; ".join(parts), GOAL, passed, details)


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
