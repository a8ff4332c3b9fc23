"""Instructions per proxied request, counted by callgrind in one process: the same every run.

    python benchmarks/instructions_inprocess.py      # about 2 minutes; needs valgrind

It measures whichever kproxy the running interpreter imports, so another checkout is measured
with its own interpreter: ``/path/to/other/.venv/bin/python benchmarks/instructions_inprocess.py``.

One Python process runs under ``valgrind --tool=callgrind``, one thread, one trio run: an
upstream (a trio task answering with fixed bytes, no h11), kproxy embedded
(``nursery.start(Proxy(...).serve)``, one service deployed to the upstream) and a client (a
trio task sending GETs one after another over one keep-alive connection, reading each
response by its Content-Length). Loopback TCP delivers within the sender's ``send``, so in one
thread which task finds data and which waits is decided by the program alone. What else would
vary is pinned down (see :func:`_pin`): the clock is ``MockClock(rate=0)`` (frozen: no timer
ever fires, so the proxy's timed work, its alarm clock's tick and its log flush, never runs),
``time.time`` and ``time.monotonic`` are frozen too (the logger reads them to decide when to
flush and to format timestamps), TCP buffers have a fixed size (Linux would size them by
wall-clock measures), glibc's memcpy keeps off ``rep movsb`` (see ``TUNABLES``), trio's
scheduler's random generator is seeded, and ``PYTHONHASHSEED`` is fixed. Each case runs
with ``--warmup`` and ``--warmup`` + ``--requests`` requests, each run ending at its last
response (the shutdown is left out: see :func:`_workload`); the difference of the totals
over ``--requests`` is the cost of one request. The same runs without the proxy (the client
talks to the upstream) give the client's and the upstream's share; "proxy" is the
difference, the figure to compare commits by.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO

import trio
import trio.abc
import trio.socket
import trio.testing

# The kproxy measured: the interpreter's own, found before this checkout goes on sys.path (an
# editable install's finder comes after every sys.path entry, so this checkout would win).
KPROXY_SPEC: Final = importlib.util.find_spec("kproxy")

TINY_PATH: Final = "/tiny"
LARGE_PATH: Final = "/64k"
CASES: Final = {"tiny body": TINY_PATH, "64 KiB body": LARGE_PATH}
MODES: Final = ("direct", "proxy", "floor")
NAMES: Final = {"direct": "direct", "proxy": "kproxy", "floor": "floor"}  # in the results
TOTAL_LINE: Final = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)
FROZEN_TIME: Final = 1_767_225_600.0  # 2026-01-01T00:00:00Z: what time.time() says
FROZEN_MONOTONIC: Final = 1000.0  # what time.monotonic() says
# glibc's memcpy and memset use ``rep movsb``/``rep stosb`` above a size, and whether they do
# depends on the buffers' relative alignment; callgrind counts each byte a rep instruction
# moves as an instruction, so a 64 KiB copy cost 2k or 65k "instructions" by where malloc put
# it (the 64 KiB direct figure moved by 12 % between checkouts). Vector loops only, then; and
# malloc neither trims its heap nor moves its mmap threshold, which made realloc copy or not.
_HUGE: Final = "0x7fffffffffffffff"
TUNABLES: Final = (
    f"glibc.cpu.x86_rep_movsb_threshold={_HUGE}:glibc.cpu.x86_rep_stosb_threshold={_HUGE}"
    f":glibc.malloc.trim_threshold={_HUGE}:glibc.malloc.mmap_threshold=33554432"
)
SOCKET_BUFFER: Final = 1 << 20  # bytes asked for each TCP socket's buffers (Linux doubles it)


def _response(body: bytes, content_type: bytes) -> bytes:
    """A response with the header set nginx sends (fixed date: every run gets the same bytes)."""
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
        b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n"
        b"Connection: keep-alive\r\n\r\n" % len(body) + body
    )


BODIES: Final = {TINY_PATH: b"ok\n", LARGE_PATH: b"x" * 65536, "/up": b"up\n"}
RESPONSES: Final = {
    path.encode(): _response(body, b"text/plain" if len(body) < 16 else b"application/octet-stream")
    for path, body in BODIES.items()
}


# ---- the program run under callgrind ------------------------------------------------------


def _pin() -> None:
    """Make the run's work independent of time and chance (call before importing kproxy).

    ``time.time`` and ``time.monotonic`` become C callables returning a constant (a Python
    function would cost more instructions than the builtins they replace); with them frozen the
    logger formats its timestamp's date once and writes access lines in batches of its
    ``MAX_PENDING``, never because time passed. trio reverses each batch of runnable tasks
    when its private ``random.Random`` says so: seeded, it says the same every run.
    """
    import time

    time.time = itertools.repeat(FROZEN_TIME).__next__
    time.monotonic = itertools.repeat(FROZEN_MONOTONIC).__next__
    trio._core._run._r.seed(0)


class _FixedBuffers(trio.abc.SocketFactory):
    """Sockets with fixed send and receive buffers (``SOCKET_BUFFER``), for every socket the
    run opens: the upstream's, the client's and kproxy's (``trio.socket.socket`` makes them
    all; accepted ones inherit their listener's sizes).

    Linux sizes a TCP socket's buffers as it goes by how fast data was read, measured in
    wall-clock time; so how many bytes of a 64 KiB response one ``send`` or ``recv`` moved, and
    how many calls it took, varied with the machine's load (the direct figure by 11 %). Fixed
    sizes turn that off, and these are large enough that a response goes in one ``send``.
    """

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        sock = socket.socket(family, type, proto)
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        return trio.socket.from_stdlib_socket(sock)


async def _read_head(stream: trio.SocketStream, buffer: bytearray) -> int:
    """Receive into ``buffer`` until it holds a whole head; returns the head's end (0: EOF)."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return 0
        buffer += chunk
    return end + 4


async def _upstream(stream: trio.SocketStream) -> None:
    """Answer keep-alive GETs without bodies (all the proxy sends) with fixed bytes."""
    buffer = bytearray()
    while end := await _read_head(stream, buffer):
        path = bytes(buffer[: buffer.index(b"\r\n")].split(b" ")[1])
        del buffer[:end]
        await stream.send_all(RESPONSES[path])
    await stream.aclose()


async def _client(port: int, path: str, requests: int, host: str = "bench") -> None:
    """``requests`` GETs of ``path``, one after another over one connection."""
    request = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n\r\n" % (
        path.encode(),
        host.encode(),
    )
    expected = BODIES[path]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    for _ in range(requests):
        await stream.send_all(request)
        end = await _read_head(stream, buffer)
        head = bytes(buffer[:end]).lower()
        start = head.index(b"\r\ncontent-length:") + 17
        length = int(head[start : head.index(b"\r\n", start)])
        while len(buffer) < end + length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"GET {path}: the connection closed mid-response")
            buffer += chunk
        if not head.startswith(b"http/1.1 200 ") or buffer[end : end + length] != expected:
            raise RuntimeError(f"GET {path}: {bytes(buffer[: end + length])[:200]!r}")
        del buffer[: end + length]
    await stream.aclose()


async def _serve_floor(upstream_port: int, nursery: trio.Nursery) -> int:
    """The trio+h11 floor (``benchmarks/floor.py``) relaying to ``upstream_port``; its port."""
    from benchmarks import floor  # child() put this checkout on sys.path

    pool: list[trio.socket.SocketType] = []

    async def handler(stream: trio.SocketStream) -> None:
        await floor.relay(stream, pool, upstream_port)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _workload(
    mode: str, path: str, requests: int, log: TextIO, services: int, metrics: bool
) -> None:
    import kproxy

    trio.socket.set_custom_socket_factory(_FixedBuffers())  # a run's setting: set here
    async with trio.open_nursery() as nursery:
        ports = []
        for _ in range(2 if services else 1):
            serve = partial(trio.serve_tcp, _upstream, 0, host="127.0.0.1")
            ports.append((await nursery.start(serve))[0].socket.getsockname()[1])
        port, host = ports[0], "bench"
        if mode == "floor":
            port = await _serve_floor(ports[0], nursery)
        elif mode == "proxy":
            options = kproxy.RunOptions(
                socket_path="",
                state_dir="",
                bind="127.0.0.1",
                http_port=0,
                metrics_port=_free_port() if metrics else 0,
            )
            proxy = await nursery.start(kproxy.Proxy(options, kproxy.Logger(out=log)).serve)
            # A deploy waits for its targets' first health check (GET /up), answered at once;
            # with the clock frozen no later check ever runs.
            if services:
                targets = tuple(f"127.0.0.1:{p}" for p in ports)
                for k in range(1, services + 1):
                    service = kproxy.ServiceOptions(hosts=(f"s{k}.test",))
                    deployment = kproxy.DeploymentOptions(targets=targets, service=service)
                    await proxy.deploy(f"s{k}", deployment)
                host = "s1.test"
            else:
                deployment = kproxy.DeploymentOptions(targets=(f"127.0.0.1:{port}",))
                await proxy.deploy("bench", deployment)
            port = proxy.http_port
        await _client(port, path, requests, host)
        # Counting ends with the last response; the shutdown is not a request's cost. What it
        # costs hangs on trio's seeded coin flips (which half of a batch runs first), whose
        # sequence moves with the number of batches run: with 1,000 services the run of 250
        # requests cancelled 1,001 tasks more than the run of 50 (30 M instructions), which
        # the subtraction put on the requests as +17 %.
        os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child(mode: str, path: str, requests: int, services: int = 0, metrics: bool = False) -> None:
    """The program callgrind counts: ``requests`` GETs of ``path``, through kproxy (with
    ``services`` services ``s<k>.test`` of two targets each, or 0: one service for any host,
    one target; with ``metrics``, ``--metrics-port`` on), through the floor, or direct."""
    _pin()
    if mode == "floor":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with open(os.devnull, "w") as log:  # kproxy's log: writing it costs system time only
        trio.run(
            _workload,
            mode,
            path,
            requests,
            log,
            services,
            metrics,
            clock=trio.testing.MockClock(rate=0),
        )


# ---- the driver ---------------------------------------------------------------------------


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


def run_child(
    valgrind: str | None,
    origin: Path,
    mode: str,
    path: str,
    requests: int,
    directory: Path,
    services: int = 0,
    metrics: bool = False,
) -> int:
    """Run :func:`child` (under callgrind unless ``valgrind`` is None); its total instructions."""
    out_file = directory / f"callgrind.{mode}{path.replace('/', '.')}.{services}.{requests}"
    argv = [sys.executable, __file__, "--child", mode, path, str(requests), str(services)]
    argv += ["--metrics"] if metrics else []
    if valgrind is not None:
        argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv]
    # PYTHONPATH: the child imports the kproxy measured. PYTHONHASHSEED: set and dict orders
    # (and so the work done) are the same every run. GLIBC_TUNABLES: see TUNABLES.
    env = dict(os.environ, PYTHONPATH=str(origin), PYTHONHASHSEED="0", GLIBC_TUNABLES=TUNABLES)
    done = subprocess.run(argv, env=env, cwd=directory, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-3000:]}")
    if valgrind is None:
        return 0
    match = TOTAL_LINE.search(out_file.read_bytes())
    if match is None:
        raise RuntimeError(f"callgrind wrote no total to {out_file}")
    return int(match.group(1))


def per_request(
    valgrind: str,
    origin: Path,
    mode: str,
    path: str,
    counts: tuple[int, int],
    directory: Path,
    services: int = 0,
    metrics: bool = False,
) -> float:
    """Instructions of one request: the runs of ``counts`` (warm-up, warm-up + counted)
    subtracted, over the requests counted."""
    warmup, total = counts
    low, high = (
        run_child(valgrind, origin, mode, path, n, directory, services, metrics)
        for n in (warmup, total)
    )
    return (high - low) / (total - warmup)


def measure(
    *,
    warmup: int,
    requests: int,
    repeats: int = 1,
    keep: Path | None = None,
    progress: Callable[[str], None] = print,
    metrics: bool = False,
) -> dict[str, Any]:
    """Per case, the median M instructions per request of ``direct`` (client and upstream
    alone) and of ``kproxy`` and ``floor`` with direct subtracted (their own share); with
    ``metrics``, kproxy runs with ``--metrics-port`` on."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is missing: install it (apt-get install valgrind) and run this again")
    origin = kproxy_origin()
    progress(f"kproxy: {describe(origin)}; python: {sys.executable}")
    counts = (warmup, warmup + requests)
    cases: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kproxy-instructions-") as temp:
        directory = keep or Path(temp)
        directory.mkdir(parents=True, exist_ok=True)
        # Once without valgrind: the bytecode caches are written before anything is counted.
        for mode in MODES:
            run_child(None, origin, mode, TINY_PATH, 1, directory, 0, metrics)
        for case, path in CASES.items():
            runs: dict[str, list[float]] = {mode: [] for mode in MODES}
            for repeat in range(repeats):
                for mode in MODES:
                    count = per_request(valgrind, origin, mode, path, counts, directory, 0, metrics)
                    runs[mode].append(count)
                    progress(f"  {case}, {mode}, run {repeat + 1}: {count / 1e6:.4f} M / request")
            direct = statistics.median(runs["direct"])
            cases[case] = {"direct": direct / 1e6}
            for mode in ("proxy", "floor"):
                own = [count - d for count, d in zip(runs[mode], runs["direct"], strict=True)]
                cases[case][NAMES[mode]] = statistics.median(own) / 1e6
                cases[case][f"{NAMES[mode]}_spread"] = (max(own) - min(own)) / 1e6
    return {
        "kproxy": describe(origin),
        "warmup": warmup,
        "requests": requests,
        "repeats": repeats,
        "metrics": metrics,
        "cases": cases,
    }


def markdown(result: dict[str, Any]) -> str:
    """The report's section: a row per case, kproxy's and the floor's own share."""
    lines = [
        "| case | kproxy | trio+h11 floor | kproxy ÷ floor | client + upstream (direct) |",
        "|---|--:|--:|--:|--:|",
    ]
    for case, row in result["cases"].items():
        lines.append(
            f"| {case} | {row['kproxy']:.4f} M | {row['floor']:.4f} M"
            f" | {row['kproxy'] / row['floor']:.2f} | {row['direct']:.4f} M |"
        )
    lines += [
        "",
        "- Million instructions per request, counted by callgrind in one process"
        " (`benchmarks/instructions_inprocess.py`): kproxy embedded, one service, one target;"
        " one keep-alive connection; frozen clock. The client's and upstream's share (direct)"
        " is subtracted from kproxy's and the floor's totals.",
        f"- {result['requests']} requests counted after {result['warmup']},"
        f" {result['repeats']} run(s) each (median); repeated runs agree within 0.01 %, and"
        " a change anywhere in what the process loads moves the figures by up to ~0.5 %.",
        f"- kproxy measured: {result['kproxy']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        help="requests counted: the longer run of each case sends this many more (200)",
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="requests both runs of a case send (50)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each figure this many times (1); runs agree within 0.01 %%",
    )
    parser.add_argument(
        "--keep", type=Path, help="keep callgrind's output files in this folder (to annotate)"
    )
    parser.add_argument(
        "--metrics", action="store_true", help="run kproxy with --metrics-port on (a free port)"
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("MODE", "PATH", "N", "SERVICES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child is not None:
        mode, path, requests, services = args.child
        child(mode, path, int(requests), int(services), args.metrics)
        return
    result = measure(
        warmup=args.warmup,
        requests=args.requests,
        repeats=args.repeats,
        keep=args.keep,
        metrics=args.metrics,
    )
    print(
        f"\n{'case':<14} {'direct':>10} {'kproxy':>10} {'floor':>10}   (M instructions / request)"
    )
    for case, row in result["cases"].items():
        print(f"{case:<14} {row['direct']:>10.4f} {row['kproxy']:>10.4f} {row['floor']:>10.4f}")


if __name__ == "__main__":
    main()
