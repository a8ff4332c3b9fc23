"""Scenario 6: leaks.

Goal: each process's open descriptors flat (growing by 5 at most; fewer is fine: idle pooled
connections close) and its resident memory growing by less than 20 MB, after 1,000 deploys
back and forth and then 10⁶ requests; at the default worker count and with ``--workers 1``
(one process that does everything), each the whole size.

``kproxy run`` serves one service; after a warm-up (a few deploys and some load, so pools,
caches and the allocator reach their working size) the descriptors (/proc/PID/fd) and RSS
(VmRSS) of the supervisor and of every worker are read. Then the service is deployed back and
forth between two targets, with a request on a fresh connection after each deploy, and wrk
sends keep-alive GETs until the request count is reached (and a fresh connection every few
hundred requests). Each reading follows one more deploy and the old target's drain, with no
request since: the pool of idle upstream connections, whose size depends on how wrk's
connections fell on the workers, is then empty both times, and what is left is what stays.
The workers' pids must be the same before and after (a worker that was restarted would hide
a leak).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from reliability import harness
from reliability.load import wrk
from reliability.scenario import Result, standalone

NAME: Final = "leaks"
GOAL: Final = "per process: fds growth ≤ 5, RSS growth < 20 MB"
DEPLOYS: Final = {True: 40, False: 1000}  # per worker count
REQUESTS: Final = {True: 15_000, False: 1_000_000}  # per worker count
FD_SLACK: Final = 5
RSS_LIMIT_KIB: Final = 20 * 1024
DRAIN: Final = 1.0  # seconds: the deploys' --drain-timeout
WRK_SECONDS: Final = (2, 10)  # each wrk run: the first, and the longest once the rate is known
STEADY: Final = 0.5  # seconds without a descriptor opened or closed: settled
REQUESTS_PER_FRESH: Final = 250  # a request on a fresh connection per this many through wrk

Readings = dict[int, tuple[int, int]]  # pid → (descriptors, RSS KiB)


def readings(proxy: harness.Proxy) -> Readings:
    return {pid: (harness.open_fds(pid), harness.rss_kib(pid)) for pid in proxy.tree()}


def one_case(
    workers: int | None, short: bool, directory: Path, upstreams: list[harness.Upstream]
) -> tuple[Readings, Readings, int, int]:
    """(readings before, after, requests sent, tracebacks) for one worker count."""
    proxy = harness.new_proxy(directory, workers)
    proxy.start()
    script = directory / "wrk.lua"
    deployed = 0

    def deploys(count: int, *, request: bool = True) -> None:
        nonlocal deployed
        for _ in range(count):
            target = upstreams[deployed % 2].address
            proxy.ok(harness.deploy_line("leak", [target], drain=f"{DRAIN:g}s"))
            deployed += 1
            if request:
                harness.http_get(proxy.http_port, "leak.test")

    def load(total: int) -> int:
        sent, seconds = 0, WRK_SECONDS[0]
        while sent < total:
            started = time.monotonic()
            done = wrk(proxy.http_port, "leak.test", seconds, script=script).requests
            sent += done
            for _ in range(max(1, done // REQUESTS_PER_FRESH)):
                harness.http_get(proxy.http_port, "leak.test")
            rate = done / (time.monotonic() - started)
            seconds = max(1, min(WRK_SECONDS[1], round((total - sent) / max(rate, 1))))
        return sent

    def settled() -> Readings:
        deploys(1, request=False)  # the target that took the load drains; its pool closes
        deadline = time.monotonic() + DRAIN + 2
        last = readings(proxy)
        while time.monotonic() < deadline:  # until the descriptors stay put for a while
            time.sleep(STEADY)
            now = readings(proxy)
            if {pid: fds for pid, (fds, _) in now.items()} == {
                pid: fds for pid, (fds, _) in last.items()
            }:
                return now
            last = now
        return last

    try:
        deploys(10)
        load(5000)
        before = settled()
        deploys(DEPLOYS[short])
        sent = load(REQUESTS[short])
        after = settled()
        return before, after, sent, proxy.tracebacks()
    finally:
        proxy.stop()


def judged(before: Readings, after: Readings, label: str) -> tuple[bool, list[str], list[str]]:
    """(goal held, one figure per process, details) for one worker count."""
    details = []
    passed = set(before) == set(after)
    if not passed:
        details.append(f"{label}: processes changed: {sorted(before)} → {sorted(after)}")
    parts = []
    roles = ["supervisor", *(f"w{i}" for i in range(1, len(before)))]
    for role, pid in zip(roles, sorted(before), strict=True):
        fds0, rss0 = before[pid]
        fds1, rss1 = after.get(pid, (0, 0))
        passed = passed and fds1 - fds0 <= FD_SLACK and rss1 - rss0 < RSS_LIMIT_KIB
        parts.append(f"{role} fds {fds0}→{fds1} RSS {(rss1 - rss0) / 1024:+.1f} MB")
    return passed, parts, details


def run(short: bool, seed: int) -> Result:
    del seed  # deterministic: the same deploys and load every time
    figures, details, passed = [], [], True
    with harness.workdir(NAME) as directory:
        upstreams = [harness.start_upstream(directory, n) for n in ("a", "b")]
        try:
            for workers in (None, 1):
                label = "default workers" if workers is None else "1 worker"
                before, after, sent, tracebacks = one_case(workers, short, directory, upstreams)
                held, parts, why = judged(before, after, label)
                passed = passed and held and not tracebacks
                details += why
                figures.append(
                    f"{label}: {DEPLOYS[short]} deploys, {sent} requests: {', '.join(parts)}, "
                    f"{tracebacks} tracebacks"
                )
        finally:
            for upstream in upstreams:
                upstream.stop()
    return Result(NAME, "; ".join(figures), GOAL, passed, details)


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
