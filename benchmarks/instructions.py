"""Instructions per proxied request: kproxy's deterministic speed measure, counted by callgrind.

    python benchmarks/instructions.py          # about 2.5 minutes; needs valgrind

It measures whichever kproxy the running interpreter imports, so another checkout is measured
with its own interpreter: ``/path/to/other/.venv/bin/python benchmarks/instructions.py``.

``kproxy run --workers 1`` (one process) runs under ``valgrind --tool=callgrind``; an upstream
in this process (threads, not under valgrind) answers ``/tiny`` (3 bytes) and ``/64k``. After
``deploy``, a client here sends GETs one after another over one keep-alive connection; then
SIGTERM stops the proxy and callgrind writes its total. Each case runs twice: ``--warmup``
requests, and ``--warmup`` + ``--requests``; the difference of the two totals divided by
``--requests`` is the cost of one request, with start-up, deploy and shutdown cancelled out.
Three things make it repeatable:
requests go at a fixed pace and both runs keep the connection open equally long (timed work
cancels out, see :func:`send_paced`); the client and the upstream send only once the proxy
waits in ``epoll_wait`` (:func:`wait_until_idle`); ``PYTHONHASHSEED`` is fixed. What still
varies is how often the proxy's timers wake it (its alarm clock's 50 ms tick drifts with the
work between ticks, and its log flushes): on a loaded machine repeated runs of one commit
differed by up to ~4 % either way of their median, so compare medians of a few runs.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

import attrs

# The kproxy measured: the interpreter's own, found before this checkout goes on sys.path (an
# editable install's finder comes after every sys.path entry, so this checkout would win).
KPROXY_SPEC: Final = importlib.util.find_spec("kproxy")
if __package__ in (None, ""):
    # Run as a script, this file's folder is on sys.path rather than the repo root.
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import (  # noqa: E402
    LARGE_PATH,
    LARGE_SIZE,
    TINY_PATH,
    KProxy,
    Server,
    free_port,
)

CASES: Final = {"tiny body": TINY_PATH, "64 KiB body": LARGE_PATH}
START_TIMEOUT: Final = 120.0  # seconds: Python starts ~50x slower under callgrind
STOP_TIMEOUT: Final = 120.0  # seconds
TOTAL_LINE: Final = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def _response(body: bytes, content_type: bytes) -> bytes:
    """A response with the header set nginx sends (fixed date: every run gets the same bytes)."""
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
        b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n"
        b"Connection: keep-alive\r\n\r\n" % len(body) + body
    )


BODIES: Final = {TINY_PATH: b"ok\n", LARGE_PATH: b"x" * LARGE_SIZE, "/up": b"up\n"}
RESPONSES: Final = {
    path.encode(): _response(body, b"text/plain" if len(body) < 16 else b"application/octet-stream")
    for path, body in BODIES.items()
}


def wait_until_idle(pid: int) -> None:
    """Return once process ``pid`` sleeps in ``epoll_wait``: it has done all it could.

    The client and the upstream each wait for this before they send, so the proxy always
    finds nothing to read and waits for it, the same way every time; a race would decide
    otherwise, and how often it goes which way depends on the machine's load.
    """
    wchan = Path(f"/proc/{pid}/wchan")
    deadline = time.monotonic() + START_TIMEOUT
    while "ep_poll" not in (where := wchan.read_text()) and "epoll" not in where:
        if time.monotonic() > deadline:
            raise RuntimeError(f"kproxy never waited in epoll_wait (it sleeps in {where!r})")
        time.sleep(0.0002)


class _UpstreamHandler(socketserver.StreamRequestHandler):
    """Keep-alive GETs without bodies (all the proxy sends here); anything else closes."""

    server: Upstream

    def handle(self) -> None:
        while request_line := self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.split()
            response = RESPONSES.get(parts[1]) if len(parts) == 3 else None
            if response is None:
                return
            if self.server.proxy_pid is not None:
                wait_until_idle(self.server.proxy_pid)
            self.wfile.write(response)


class Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.port = int(self.server_address[1])
        self.proxy_pid: int | None = None  # answers wait until it is idle (wait_until_idle)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def kproxy_origin() -> Path:
    """The folder holding the ``kproxy`` package this interpreter imports."""
    spec = KPROXY_SPEC
    if spec is None or spec.origin is None:
        sys.exit(f"{sys.executable} cannot import kproxy (pip install -e . in its checkout)")
    return Path(spec.origin).resolve().parent.parent


def describe(origin: Path) -> str:
    """``origin`` and, if it is a git checkout, its commit (``+`` if it has changes)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(origin), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(origin), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(origin)
    return f"{origin} at {commit}{' + uncommitted changes' if dirty else ''}"


@attrs.frozen
class Run:
    """What one proxy run is asked to do: ``requests`` GETs of ``path``, the k-th sent at
    ``k * interval`` seconds after the first, on a connection left open ``slots * interval``
    seconds in all (idle after the last request)."""

    path: str
    requests: int
    slots: int
    interval: float


def count_instructions(
    valgrind: str, origin: Path, upstream: Upstream, run: Run, directory: Path
) -> tuple[int, float]:
    """Total instructions of one proxy run, and how late (seconds) its latest request went."""
    port = free_port()
    state = directory / "state"
    state.mkdir()
    socket_path = directory / "control.sock"
    out_file = directory / "callgrind.out"
    argv = [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "kproxy",
        "run",
        "--workers",
        "1",
        "--bind",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--https-port",
        "0",  # a free port: HTTPS is not measured here, and 443 may be taken
        "--state-dir",
        str(state),
        "--socket",
        str(socket_path),
    ]
    # PYTHONHASHSEED: set and dict orders (and so the work done) are the same every run.
    env = dict(os.environ, PYTHONPATH=str(origin), PYTHONHASHSEED="0")
    with (directory / "kproxy.log").open("wb") as log, (directory / "stderr").open("wb") as err:
        process = subprocess.Popen(
            argv, stdout=log, stderr=err, stdin=subprocess.DEVNULL, cwd=directory, env=env
        )
    proxy = KProxy(Server("kproxy", port, process), socket_path, directory / "kproxy.log")
    try:
        upstream.proxy_pid = process.pid
        deploy(proxy, upstream.port, directory)
        late = send_paced(port, process.pid, run)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    match = TOTAL_LINE.search(out_file.read_bytes()) if out_file.exists() else None
    if match is None:
        stderr = (directory / "stderr").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"callgrind wrote no total to {out_file}:\n{stderr}")
    return int(match.group(1)), late


def send_paced(port: int, pid: int, run: Run) -> float:
    """Send ``run``'s requests over one keep-alive connection; return the greatest lateness.

    The proxy does timed work while the connection is open (its alarm clock looks every
    50 ms, access lines are flushed after 100 ms), as much as the seconds that pass, and under
    callgrind a second passes in few requests. So requests go at a fixed pace, not as fast as
    the proxy answers, and every run keeps its connection open equally long: the timed work
    then cancels out when two runs are subtracted, however busy the machine is.
    """
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT)
    late = 0.0
    try:
        client.connect()
        wait_until_idle(pid)  # done with the deploy and the connection
        start = time.monotonic()
        for k in range(run.requests):
            pause = start + k * run.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            wait_until_idle(pid)
            late = max(late, time.monotonic() - (start + k * run.interval))
            client.request("GET", run.path, headers={"Host": "bench"})
            response = client.getresponse()
            body = response.read()
            if response.status != 200 or body != BODIES[run.path]:
                raise RuntimeError(f"GET {run.path}: {response.status}, {len(body)} bytes")
        time.sleep(max(0.0, start + run.slots * run.interval - time.monotonic()))
        wait_until_idle(pid)
    finally:
        client.close()
    return late


def deploy(proxy: KProxy, upstream_port: int, directory: Path) -> None:
    """Deploy once the control socket listens (it takes a while under callgrind)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            proxy.deploy(upstream_port)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            if proxy.server.process.poll() is not None or time.monotonic() > deadline:
                stderr = (directory / "stderr").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"kproxy did not start:\n{stderr}") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--requests",
        type=int,
        default=300,
        help="requests counted: the longer run of each case sends this many more (300)",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="requests both runs of a case send (100)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.06,
        help="seconds between requests (0.06); longer than the proxy takes for one under callgrind",
    )
    args = parser.parse_args(argv)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is missing: install it (apt-get install valgrind) and run this again")
    origin = kproxy_origin()
    print(f"kproxy: {describe(origin)}\npython: {sys.executable}", flush=True)
    slots = args.warmup + args.requests
    upstream = Upstream()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="kproxy-instructions-") as temp:
        for case, path in CASES.items():
            totals = []
            for requests in (args.warmup, slots):
                directory = Path(temp) / f"{path.strip('/')}-{requests}"
                directory.mkdir()
                run = Run(path, requests, slots, args.interval)
                total, late = count_instructions(valgrind, origin, upstream, run, directory)
                totals.append(total)
                print(f"  {case}, {requests} requests: {total:,} instructions", flush=True)
                if late > args.interval:
                    print(
                        f"  warning: a request went {late:.2f} s late: the proxy did not keep "
                        "the pace (a busy machine?); the result may be off: try a longer "
                        "--interval",
                        flush=True,
                    )
            rows.append((case, (totals[1] - totals[0]) / args.requests))
    upstream.shutdown()
    print(f"\n{'case':<14} {'M instructions / request':>25}")
    for case, per_request in rows:
        print(f"{case:<14} {per_request / 1e6:>25.3f}")


if __name__ == "__main__":
    main()
