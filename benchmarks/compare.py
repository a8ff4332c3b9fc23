"""The comparison: direct, kproxy, the trio+h11 floor, nginx, HAProxy and Caddy over the same
cases, interleaved.

Every server runs for the whole comparison; each measurement is a warm-up then a measured wrk
run of the same duration against one of them. A repeat goes through every case and server
(in a rotated order, so that no server always runs right after the same neighbour), and the
set is repeated, so slow drifts of a noisy machine spread over all servers alike. kproxy runs
once per worker count asked for (``--kproxy-workers 1,2``), each as a server of its own. The
floor (``benchmarks/floor.py``) is not a proxy but a yardstick: what CPython + trio + h11 cost.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from benchmarks import loadgen, procstat, servers

FLOOR: Final = {"floor": "trio+h11 floor (no features)"}
OTHER_SERVERS: Final = {
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "caddy": "Caddy",
    "caddy-nolog": "Caddy, no access log",
}


def server_labels(kproxy_workers: Sequence[int | None]) -> dict[str, str]:
    """Every server measured, key → name in the report, in the report's order: direct, one
    kproxy per worker count (``None``: kproxy's default), the floor, then the other proxies."""
    kproxies = {servers.kproxy_name(w): servers.kproxy_label(w) for w in kproxy_workers}
    return {"direct": "direct", **kproxies, **FLOOR, **OTHER_SERVERS}


@attrs.frozen
class Case:
    name: str
    path: str
    connections: int


CASES: Final = (
    Case("tiny body, 1 connection", servers.TINY_PATH, 1),
    Case("tiny body, 16 connections", servers.TINY_PATH, 16),
    Case("tiny body, 128 connections", servers.TINY_PATH, 128),
    Case("64 KiB body, 16 connections", servers.LARGE_PATH, 16),
)


@attrs.frozen
class Sample:
    """One measured wrk run against one server."""

    case: str
    server: str
    repeat: int
    wrk: loadgen.WrkResult
    cpu_us: float  # the server's CPU per request (for "direct": the upstream's own)
    upstream_cpu_us: float  # the upstream's CPU per request
    foreign_cpu: float  # share of the machine's CPU used by processes outside the test

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "server": self.server,
            "repeat": self.repeat,
            **self.wrk.as_dict(),
            "cpu_us_per_request": self.cpu_us,
            "upstream_cpu_us_per_request": self.upstream_cpu_us,
            "foreign_cpu_share": self.foreign_cpu,
        }


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / procstat.CLOCK_TICKS


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    url: str,
    case: Case,
    *,
    server_pid: int,
    upstream_pid: int,
    seconds: float,
    warmup: float,
    threads: int,
    script: Path,
) -> tuple[loadgen.WrkResult, float, float, float]:
    """Warm up, then one measured wrk run. Returns the result, the server's and the
    upstream's CPU µs per request, and the foreign CPU share during the run."""

    def load(duration: float) -> loadgen.WrkResult:
        return loadgen.run(
            url, connections=case.connections, threads=threads, seconds=duration, script=script
        )

    return measure_load(
        load, server_pid=server_pid, upstream_pid=upstream_pid, seconds=seconds, warmup=warmup
    )


def measure_load(
    load: Callable[[float], loadgen.WrkResult],
    *,
    server_pid: int,
    upstream_pid: int,
    seconds: float,
    warmup: float,
) -> tuple[loadgen.WrkResult, float, float, float]:
    """``measure`` with any load generator run as a child process: ``load(seconds)``."""
    if warmup > 0:
        load(warmup)
    cpu_before = procstat.cpu_seconds(server_pid)
    upstream_before = procstat.cpu_seconds(upstream_pid)
    wrk_before = _children_cpu()
    busy_before = _machine_busy_seconds()
    started = time.monotonic()
    result = load(seconds)
    wall = time.monotonic() - started
    busy = _machine_busy_seconds() - busy_before
    wrk_cpu = _children_cpu() - wrk_before
    server_cpu = procstat.cpu_seconds(server_pid) - cpu_before
    upstream_cpu = procstat.cpu_seconds(upstream_pid) - upstream_before
    ours = wrk_cpu + server_cpu + (upstream_cpu if upstream_pid != server_pid else 0.0)
    foreign = max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))
    per_request = 1e6 / result.requests if result.requests else 0.0
    return result, server_cpu * per_request, upstream_cpu * per_request, foreign


def run(
    directory: Path,
    *,
    upstream: servers.Server,
    seconds: float,
    repeats: int,
    warmup: float,
    threads: int,
    kproxy_workers: Sequence[int | None],
    progress: Callable[[str], None],
) -> list[Sample]:
    script = loadgen.write_script(directory)
    names = tuple(server_labels(kproxy_workers))
    started: dict[str, servers.Server] = {"direct": upstream}
    try:
        for workers in kproxy_workers:
            name = servers.kproxy_name(workers)
            proxy = servers.start_kproxy(directory, upstream.port, name, workers=workers)
            started[name] = proxy.server
        started["floor"] = servers.start_floor(directory, upstream.port)
        started["nginx"] = servers.start_nginx(directory, upstream.port)
        started["haproxy"] = servers.start_haproxy(directory, upstream.port)
        started["caddy"] = servers.start_caddy(directory, upstream.port)
        started["caddy-nolog"] = servers.start_caddy(directory, upstream.port, access_log=False)
        samples: list[Sample] = []
        for repeat in range(repeats):
            for case in CASES:
                shift = (repeat + CASES.index(case)) % len(names)
                for name in names[shift:] + names[:shift]:
                    server = started[name]
                    server.truncate_logs()
                    result, cpu_us, upstream_us, foreign = measure(
                        server.url + case.path,
                        case,
                        server_pid=server.pid,
                        upstream_pid=upstream.pid,
                        seconds=seconds,
                        warmup=warmup,
                        threads=threads,
                        script=script,
                    )
                    samples.append(
                        Sample(case.name, name, repeat, result, cpu_us, upstream_us, foreign)
                    )
                    progress(
                        f"  [{repeat + 1}/{repeats}] {case.name:<28} {name:<11}"
                        f" {result.rps:>9.0f} req/s  p50 {result.p50_ms:7.2f} ms"
                        f"  p99 {result.p99_ms:7.2f} ms  cpu {cpu_us:6.1f} µs/req"
                        f"  errors {result.errors}  foreign cpu {foreign:.0%}"
                    )
        return samples
    finally:
        for name, server in started.items():
            if name != "direct":
                server.stop()


@attrs.frozen
class Row:
    """The repeats of one case and server, summarised by their median."""

    case: str
    server: str
    label: str  # the server's name in the report
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int
    foreign_cpu_max: float


def summarise(
    samples: list[Sample], labels: dict[str, str], cases: Sequence[Case] = CASES
) -> list[Row]:
    """One row per case and server, in the order of ``labels`` (see ``server_labels``)."""
    rows: list[Row] = []
    for case in cases:
        for name, label in labels.items():
            mine = [s for s in samples if s.case == case.name and s.server == name]
            if not mine:
                continue
            rps = [s.wrk.rps for s in mine]
            rows.append(
                Row(
                    case=case.name,
                    server=name,
                    label=label,
                    rps=statistics.median(rps),
                    rps_min=min(rps),
                    rps_max=max(rps),
                    p50_ms=statistics.median(s.wrk.p50_ms for s in mine),
                    p99_ms=statistics.median(s.wrk.p99_ms for s in mine),
                    cpu_us=statistics.median(s.cpu_us for s in mine),
                    errors=sum(s.wrk.errors for s in mine),
                    foreign_cpu_max=max(s.foreign_cpu for s in mine),
                )
            )
    return rows
