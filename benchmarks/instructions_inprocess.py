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
with ``--warmup`` and ``--warmup`` + ``--requests`` requests; the difference of the totals
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
from functools import partial
from pathlib import Path
from typing import Final, TextIO

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
MODES: Final = ("direct", "proxy")
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


async def _client(port: int, path: str, requests: int) -> None:
    """``requests`` GETs of ``path``, one after another over one connection."""
    request = b"GET %s HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n" % path.encode()
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


async def _workload(mode: str, path: str, requests: int, log: TextIO, metrics: bool) -> None:
    import kproxy

    trio.socket.set_custom_socket_factory(_FixedBuffers())  # a run's setting: set here
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _upstream, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        if mode == "proxy":
            options = kproxy.RunOptions(
                socket_path="",
                state_dir="",
                bind="127.0.0.1",
                http_port=0,
                metrics_port=_free_port() if metrics else 0,
            )
            proxy = await nursery.start(kproxy.Proxy(options, kproxy.Logger(out=log)).serve)
            target = f"127.0.0.1:{port}"
            # The deploy waits for the target's first health check (GET /up), answered at once.
            await proxy.deploy("bench", kproxy.DeploymentOptions(targets=(target,)))
            port = proxy.http_port
        await _client(port, path, requests)
        nursery.cancel_scope.cancel()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child(mode: str, path: str, requests: int, metrics: bool = False) -> None:
    """The program callgrind counts: ``requests`` GETs of ``path``, through kproxy or direct
    (with ``metrics``: kproxy has ``--metrics-port`` on)."""
    _pin()
    with open(os.devnull, "w") as log:  # kproxy's log: writing it costs system time only
        clock = trio.testing.MockClock(rate=0)
        trio.run(_workload, mode, path, requests, log, metrics, clock=clock)


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
    metrics: bool = False,
) -> int:
    """Run :func:`child` (under callgrind unless ``valgrind`` is None); its total instructions."""
    out_file = directory / f"callgrind.{mode}{path.replace('/', '.')}.{requests}"
    argv = [sys.executable, __file__, "--child", mode, path, str(requests)]
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
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        mode, path, requests = args.child
        child(mode, path, int(requests), args.metrics)
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is missing: install it (apt-get install valgrind) and run this again")
    origin = kproxy_origin()
    print(f"kproxy: {describe(origin)}\npython: {sys.executable}", flush=True)
    print(f"metrics: {'on (--metrics-port)' if args.metrics else 'off'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kproxy-instructions-") as temp:
        directory = args.keep or Path(temp)
        directory.mkdir(parents=True, exist_ok=True)
        # Once without valgrind: the bytecode caches are written before anything is counted.
        for mode in MODES:
            run_child(None, origin, mode, TINY_PATH, 1, directory, args.metrics)
        rows: list[tuple[str, list[float], list[float]]] = []
        for case, path in CASES.items():
            per_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
            for repeat in range(args.repeats):
                for mode in MODES:
                    totals = [
                        run_child(valgrind, origin, mode, path, n, directory, args.metrics)
                        for n in (args.warmup, args.warmup + args.requests)
                    ]
                    per_request = (totals[1] - totals[0]) / args.requests
                    per_mode[mode].append(per_request)
                    print(
                        f"  {case}, {mode}, run {repeat + 1}: {totals[0]:,} / {totals[1]:,}"
                        f" instructions: {per_request / 1e6:.4f} M / request",
                        flush=True,
                    )
            proxy_only = [p - d for p, d in zip(per_mode["proxy"], per_mode["direct"], strict=True)]
            rows.append((case, per_mode["direct"], proxy_only))
    print(f"\n{'case':<14} {'direct':>10} {'proxy only':>12}   (M instructions / request, median)")
    for case, direct, proxy_only in rows:
        spread = f"{min(proxy_only) / 1e6:.4f} to {max(proxy_only) / 1e6:.4f}"
        print(
            f"{case:<14} {statistics.median(direct) / 1e6:>10.4f}"
            f" {statistics.median(proxy_only) / 1e6:>12.4f}   (proxy only: {spread})"
        )


if __name__ == "__main__":
    main()
