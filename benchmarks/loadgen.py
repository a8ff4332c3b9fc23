"""wrk as the load generator, its summary read back as JSON from a Lua ``done`` hook."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from benchmarks.install import which

MARKER: Final = "WRK_JSON "
#: wrk calls done() once at the end with the merged summary and latency histogram (µs).
DONE_SCRIPT: Final = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    "MARKER", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
""".replace("MARKER", MARKER)


@attrs.frozen
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    errors: int  # socket errors (connect/read/write/timeout) plus non-2xx/3xx answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "rps": self.rps}


def write_script(directory: Path) -> Path:
    path = directory / "wrk-done.lua"
    path.write_text(DONE_SCRIPT)
    return path


def command(
    url: str,
    *,
    connections: int,
    threads: int,
    seconds: float,
    script: Path,
    headers: Sequence[str] = (),
) -> list[str]:
    """wrk's argv; ``headers`` (``"Host: s1.test"``) go with every request."""
    wrk = which("wrk") or "wrk"
    return [
        wrk,
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        *(arg for header in headers for arg in ("-H", header)),
        url,
    ]


def parse(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                bytes=data["bytes"],
                errors=errors,
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no summary:\n{output}")


def run(
    url: str,
    *,
    connections: int,
    threads: int,
    seconds: float,
    script: Path,
    headers: Sequence[str] = (),
) -> WrkResult:
    argv = command(
        url,
        connections=connections,
        threads=threads,
        seconds=seconds,
        script=script,
        headers=headers,
    )
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return parse(done.stdout)


def start(
    url: str, *, connections: int, threads: int, seconds: float, script: Path
) -> subprocess.Popen[str]:
    """wrk in the background (for measuring while something else happens); see ``finish``."""
    argv = command(url, connections=connections, threads=threads, seconds=seconds, script=script)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float) -> WrkResult:
    stdout, stderr = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed: {stderr.strip()}")
    return parse(stdout)
