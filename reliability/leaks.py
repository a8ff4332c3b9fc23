"""Scenario 6: leaks.

Goal: each process's open descriptors flat (growing by 5 at most; fewer is fine: idle pooled
connections close) and its resident memory growing by less than 20 MB, after 1,000 deploys
back and forth and then 10⁶ requests.

``kproxy run`` at the default worker count serves one service; after a warm-up (a few deploys
and some load, so pools, caches and the allocator reach their working size) the descriptors
(/proc/PID/fd) and RSS (VmRSS) of the supervisor and of every worker are read. Then the
service is deployed back and forth between two targets, with a request on a fresh connection
after each deploy, and wrk sends keep-alive GETs until the request count is reached (a few
fresh connections too). After the old targets drained, the same readings again. The workers'
pids must be the same before and after (a worker that was restarted would hide a leak).
"""

from __future__ import annotations

import time
from typing import Final

from reliability import harness
from reliability.load import wrk
from reliability.scenario import Result, standalone

NAME: Final = "leaks"
GOAL: Final = "per process: fds growth ≤ 5, RSS growth < 20 MB"
DEPLOYS: Final = {True: 40, False: 1000}
REQUESTS: Final = {True: 30_000, False: 1_000_000}
FD_SLACK: Final = 5
RSS_LIMIT_KIB: Final = 20 * 1024


def readings(proxy: harness.Proxy) -> dict[int, tuple[int, int]]:
    return {pid: (harness.open_fds(pid), harness.rss_kib(pid)) for pid in proxy.tree()}


def run(short: bool, seed: int) -> Result:
    del seed  # deterministic: the same deploys and load every time
    with harness.workdir(NAME) as directory:
        upstreams = [harness.start_upstream(directory, n) for n in ("a", "b")]
        proxy = harness.new_proxy(directory, None)
        proxy.start()
        try:
            script = directory / "wrk.lua"

            def deploys(count: int) -> None:
                for i in range(count):
                    proxy.ok(harness.deploy_line("leak", [upstreams[i % 2].address]))
                    harness.http_get(proxy.http_port, "leak.test")

            def load(total: int) -> int:
                sent = 0
                while sent < total:
                    sent += wrk(proxy.http_port, "leak.test", 2, script=script).requests
                    for _ in range(20):
                        harness.http_get(proxy.http_port, "leak.test")
                return sent

            deploys(10)
            load(5000)
            time.sleep(3)  # drains end (--drain-timeout 2s)
            before = readings(proxy)
            deploys(DEPLOYS[short])
            sent = load(REQUESTS[short])
            time.sleep(3)
            after = readings(proxy)
            tracebacks = proxy.tracebacks()
        finally:
            proxy.stop()
            for upstream in upstreams:
                upstream.stop()
    parts, details, passed = [], [], set(before) == set(after) and not tracebacks
    if set(before) != set(after):
        details.append(f"processes changed: {sorted(before)} → {sorted(after)}")
    for role, pid in zip(
        ["supervisor", *(f"w{i}" for i in range(1, len(before)))], sorted(before), strict=True
    ):
        fds0, rss0 = before[pid]
        fds1, rss1 = after.get(pid, (0, 0))
        passed = passed and fds1 - fds0 <= FD_SLACK and rss1 - rss0 < RSS_LIMIT_KIB
        parts.append(f"{role} fds {fds0}→{fds1} RSS {(rss1 - rss0) / 1024:+.1f} MB")
    figure = f"{DEPLOYS[short]} deploys, {sent} requests: " + ", ".join(parts)
    figure += f", {tracebacks} tracebacks"
    return Result(NAME, figure, GOAL, passed, details)


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
