"""kproxy's resident memory with many idle keep-alive client connections.

A fresh ``kproxy run`` (default options) is deployed to the upstream; a separate client process
(``benchmarks.idle_clients``) opens the connections, makes one request on each and leaves them
idle. VmRSS of kproxy's whole process tree is read before, with the connections open (well
inside kproxy's 60 s keep-alive timeout), and after they are closed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks import procstat, servers

SETTLE: Final = 1.0  # seconds between the last connection opening and reading VmRSS
OPEN_TIMEOUT: Final = 120.0  # seconds for the client to open every connection


def _open_fds(root: int) -> int:
    count = 0
    for pid in procstat.tree(root):
        with contextlib.suppress(OSError):
            count += len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return count


def run(
    directory: Path,
    *,
    upstream: servers.Server,
    connections: int,
    workers: int | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    proxy = servers.start_kproxy(directory, upstream.port, "kproxy-memory", workers=workers)
    client: subprocess.Popen[str] | None = None
    try:
        pid = proxy.server.pid
        time.sleep(SETTLE)
        before = procstat.memory(pid)
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.idle_clients",
                "--port",
                str(proxy.server.port),
                "--count",
                str(connections),
                "--path",
                servers.TINY_PATH,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=servers.REPO,
            env=servers.kproxy_env(),
        )
        assert client.stdout is not None
        assert client.stdin is not None
        opened = json.loads(client.stdout.readline() or "{}")
        if not opened:
            raise RuntimeError("the idle client process exited before opening its connections")
        time.sleep(SETTLE)
        held = procstat.memory(pid)
        fds = _open_fds(pid)
        client.stdin.close()
        client.wait(timeout=60)
        time.sleep(SETTLE)
        after = procstat.memory(pid)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        proxy.server.stop()
    per_connection = (held["rss_mib"] - before["rss_mib"]) * 1024 / max(1, opened["open"])
    result = {
        "kproxy": servers.kproxy_label(workers),
        "kproxy_workers": workers,  # None: kproxy's default, one per core
        "connections_requested": connections,
        "connections_open": opened["open"],
        "connections_failed": opened["failed"],
        "open_seconds": opened["seconds"],
        "kproxy_open_fds": fds,
        "processes": held["processes"],
        "rss_mib_before": before["rss_mib"],
        "rss_mib_idle": held["rss_mib"],
        "pss_mib_idle": held["pss_mib"],
        "rss_mib_after_close": after["rss_mib"],
        "kib_per_connection": per_connection,
        # Linear from the measured count: kproxy may cap connections below the count asked
        # for (``ulimit -n``), and the target is stated at 10,000.
        "rss_mib_at_10k_estimate": before["rss_mib"] + per_connection * 10_000 / 1024,
    }
    progress(
        f"  {opened['open']} idle connections ({opened['failed']} failed):"
        f" {held['rss_mib']:.1f} MiB resident (was {before['rss_mib']:.1f} MiB;"
        f" {per_connection:.1f} KiB per connection; {after['rss_mib']:.1f} MiB after closing)"
    )
    return result
