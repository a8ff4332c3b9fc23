"""kproxy during deploys: p99 latency while cutting over, and how soon a new target serves.

A fresh ``kproxy run`` (default options) serves the tiny body from upstream port A. Each repeat
runs wrk twice for the same duration: once in steady state, once while the runner deploys
``web`` back and forth between ports A and B over the control socket (each deploy health-checks
the new target, cuts over, and drains the old one). Afterwards kproxy's JSON log gives, for each
cutover, the time from the new target's "Target health updated" (healthy) line to the start of
the first "Request" line served by it (start = the line's time minus its duration).
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks import compare, loadgen, servers

CONNECTIONS: Final = 16
DEPLOY_GAP: Final = 0.2  # seconds between one deploy's end and the next one's start
LAST_DEPLOY_MARGIN: Final = 1.0  # seconds: start no deploy this close to wrk's end


def _deploy_while(
    proxy: servers.KProxy, ports: tuple[int, int], current: int, until: float
) -> tuple[int, list[float]]:
    """Deploy back and forth until ``until`` (monotonic); returns the live port and the
    duration of each deploy command in seconds."""
    durations: list[float] = []
    while time.monotonic() + LAST_DEPLOY_MARGIN < until:
        nxt = ports[1] if current == ports[0] else ports[0]
        started = time.monotonic()
        proxy.deploy(nxt)
        durations.append(time.monotonic() - started)
        current = nxt
        time.sleep(DEPLOY_GAP)
    return current, durations


def _timestamp(value: str) -> float:
    return datetime.datetime.fromisoformat(value).timestamp()


def first_request_delays(log_path: Path) -> list[float]:
    """Seconds from each "Target health updated" (healthy) line to the start of the first
    request that target served after it. The log's times have millisecond resolution."""
    healthy: list[tuple[float, str]] = []
    first_after: dict[int, float] = {}  # index into healthy → start of its first request
    pending: dict[str, list[int]] = {}  # target → indexes of health events still waiting
    with log_path.open() as log:
        for line in log:
            if '"Target health updated"' in line:
                event = json.loads(line)
                if event.get("healthy"):
                    pending.setdefault(event["target"], []).append(len(healthy))
                    healthy.append((_timestamp(event["time"]), event["target"]))
            elif '"Request"' in line:
                event = json.loads(line)
                waiting = pending.get(event.get("target", ""))
                if not waiting:
                    continue
                end = _timestamp(event["time"])
                start = end - event["duration"] / 1e9
                for index in list(waiting):
                    if end >= healthy[index][0]:
                        first_after[index] = start
                        waiting.remove(index)
    return [max(0.0, first_after[i] - healthy[i][0]) for i in sorted(first_after)]


def run(
    directory: Path,
    *,
    ports: tuple[int, int],
    upstream_pid: int,
    seconds: float,
    repeats: int,
    warmup: float,
    threads: int,
    workers: int | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    script = loadgen.write_script(directory)
    proxy = servers.start_kproxy(directory, ports[0], "kproxy-cutover", workers=workers)
    url = proxy.server.url + servers.TINY_PATH
    case = compare.Case("cutover", servers.TINY_PATH, CONNECTIONS)
    steady: list[loadgen.WrkResult] = []
    during: list[loadgen.WrkResult] = []
    deploy_seconds: list[float] = []
    current = ports[0]
    try:
        for repeat in range(repeats):
            result, *_ = compare.measure(
                url,
                case,
                server_pid=proxy.server.pid,
                upstream_pid=upstream_pid,
                seconds=seconds,
                warmup=warmup,
                threads=threads,
                script=script,
            )
            steady.append(result)
            wrk = loadgen.start(
                url, connections=CONNECTIONS, threads=threads, seconds=seconds, script=script
            )
            current, durations = _deploy_while(proxy, ports, current, time.monotonic() + seconds)
            result = loadgen.finish(wrk, timeout=seconds + 60)
            during.append(result)
            deploy_seconds.extend(durations)
            progress(
                f"  [{repeat + 1}/{repeats}] steady p99 {steady[-1].p99_ms:.2f} ms"
                f" ({steady[-1].rps:.0f} req/s); during {len(durations)} deploys"
                f" p99 {result.p99_ms:.2f} ms ({result.rps:.0f} req/s, errors {result.errors})"
            )
    finally:
        proxy.server.stop()
    delays = first_request_delays(proxy.log_path)[1:]  # [0] is the initial deploy, unloaded
    steady_p99 = statistics.median(r.p99_ms for r in steady)
    during_p99 = statistics.median(r.p99_ms for r in during)
    summary: dict[str, Any] = {
        "kproxy": servers.kproxy_label(workers),
        "kproxy_workers": workers,  # None: kproxy's default, one per core
        "connections": CONNECTIONS,
        "steady": [r.as_dict() for r in steady],
        "during_deploys": [r.as_dict() for r in during],
        "steady_p99_ms": steady_p99,
        "during_p99_ms": during_p99,
        "p99_ratio": during_p99 / steady_p99 if steady_p99 else 0.0,
        "errors_during_deploys": sum(r.errors for r in during),
        "deploys": len(deploy_seconds),
        "deploy_seconds_median": statistics.median(deploy_seconds) if deploy_seconds else 0.0,
        "deploy_seconds_max": max(deploy_seconds, default=0.0),
        "healthy_to_first_request_ms": [d * 1000 for d in delays],
        "healthy_to_first_request_ms_median": statistics.median(delays) * 1000 if delays else 0,
        "healthy_to_first_request_ms_max": max(delays, default=0.0) * 1000,
    }
    progress(
        f"  p99 {during_p99:.2f} ms during deploys vs {steady_p99:.2f} ms steady"
        f" (x{summary['p99_ratio']:.2f}); first healthy check → first request:"
        f" median {summary['healthy_to_first_request_ms_median']:.1f} ms,"
        f" max {summary['healthy_to_first_request_ms_max']:.1f} ms over {len(delays)} cutovers"
    )
    return summary
