"""Load from ``wrk`` (installed on the CI machine): requests and latency through the proxy."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs

LUA_DONE: Final = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""


@attrs.frozen
class WrkResult:
    requests: int
    socket_errors: int
    bad_statuses: int  # answers other than 2xx/3xx
    p50: float  # seconds
    p99: float  # seconds


def wrk(
    port: int,
    host: str,
    seconds: float,
    *,
    connections: int = 16,
    path: str = "/",
    script: Path | None = None,
    extra: str = "",
    meanwhile: Callable[[], None] | None = None,
) -> WrkResult:
    """Run wrk against the proxy for ``seconds``, or, with ``meanwhile``, for as long as that
    takes (then SIGINT: wrk stops and reports); ``extra`` is Lua prepended to the script."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    assert script is not None
    script.write_text(extra + LUA_DONE)
    duration = 3600 if meanwhile else max(1, round(seconds))
    argv = [
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "-H",
        f"Host: {host}",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        if meanwhile is not None:
            meanwhile()
            process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=duration + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk gave no result: {out[-500:]}")
    requests, errors, statuses, p50, p99 = map(int, match.groups())
    return WrkResult(requests, errors, statuses, p50 / 1e6, p99 / 1e6)
