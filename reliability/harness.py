"""The real program and its surroundings, black box: ``kproxy run`` as a subprocess, its control
socket, upstream servers as subprocesses (reliability/upstream.py), and /proc readings.

Nothing here imports kproxy: the campaign sees the proxy the way a user or Kamal does.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

import attrs

REPO: Final = Path(__file__).resolve().parent.parent
START_TIMEOUT: Final = 20.0  # seconds for a proxy or an upstream to start serving
STOP_TIMEOUT: Final = 10.0  # seconds for SIGTERM before SIGKILL
CONTROL_TIMEOUT: Final = 60.0  # seconds one control command may take
FAST_DEPLOY: Final = "--health-check-interval 100ms --health-check-path /up --deploy-timeout 5s"


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port the kernel handed out (bind to 0)
    is one it may hand out again as some connection's local port while a killed proxy is down,
    and the restart would then find it in use (kill9 saw it once in 1,000 restarts while other
    work ran); kproxy's real ports (80, 443) are never in that range either."""
    low = _ephemeral_low()
    for _ in range(100):
        port = _PORTS.randrange(10_000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 10000 and {low}")


_PORTS: Final = random.Random()  # not the scenario's seeded one: ports change no figure


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(10_001, int(text.split()[0]))
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def child_env() -> dict[str, str]:
    """Run kproxy and the upstreams from this checkout (whatever the caller's cwd)."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), path) if p))


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A temp dir for one scenario's sockets, state and logs (kept with KEEP=1)."""
    directory = Path(tempfile.mkdtemp(prefix=f"kproxy-reliability-{name}-"))
    try:
        yield directory
    finally:
        if not os.environ.get("KEEP"):
            subprocess.run(["rm", "-rf", str(directory)], check=False)


# --- /proc -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (exited, not yet reaped) counts as gone."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found = [root] if alive(root) else []
    for pid in found:
        found.extend(children.get(pid, ()))
    return found


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- control socket ----------------------------------------------------------------------


class ControlClosed(Exception):
    """The proxy closed the control connection before a final line."""


def control(socket_path: Path, line: str, timeout: float = CONTROL_TIMEOUT) -> list[str]:
    """Send one control line; return every answer line, the final ``OK``/``ERR`` last."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(line.encode() + b"\n")
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlClosed(f"closed after {line!r}: {buffer[-200:]!r}")
            buffer += chunk
            if buffer.endswith(b"\n"):
                lines = buffer.decode(errors="replace").splitlines()
                if lines[-1].startswith(("OK", "ERR")):
                    return lines


def is_final(line: str) -> bool:
    return line == "OK" or line.startswith(("OK ", "ERR ")) or line == "ERR"


# --- upstreams ---------------------------------------------------------------------------


@attrs.define(eq=False)
class Upstream:
    """``python -m reliability.upstream`` on one port (see that module for its routes)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        """What it counted, read straight from it (not through the proxy)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /__stats HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return dict(json.loads(data.split(b"\r\n\r\n", 1)[1]))

    def stop(self) -> None:
        _terminate(self.process)


def start_upstream(directory: Path, name: str, fault: str = "none") -> Upstream:
    port = free_port()
    argv = [sys.executable, "-m", "reliability.upstream", "--port", str(port), "--name", name]
    argv += ["--fault", fault]
    with (directory / f"upstream-{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )
    upstream = Upstream(name, port, process)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            upstream.stats()
            return upstream
        except OSError:
            time.sleep(0.05)
    _terminate(process)
    raise RuntimeError(f"upstream {name} did not start (see {directory})")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)
    except ProcessLookupError:
        pass


# --- the proxy ---------------------------------------------------------------------------


@attrs.define(eq=False)
class Proxy:
    """One ``kproxy run`` (its supervisor, and its workers if any) in its own session."""

    directory: Path
    http_port: int
    state_dir: Path
    socket_path: Path
    workers: int | None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.directory / "kproxy.log"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "kproxy.stderr"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "kproxy", "run", "--bind", "127.0.0.1"]
        argv += ["--http-port", str(self.http_port), "--https-port", "0"]
        argv += ["--state-dir", str(self.state_dir), "--socket", str(self.socket_path)]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start it and wait until the control socket answers ``list``; raise if it does not."""
        self.starts += 1
        with self.log_path.open("ab") as log, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=child_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if control(self.socket_path, "list", timeout=5)[-1] == "OK":
                    break
            except (OSError, ControlClosed):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.stderr_path.read_text(errors="replace")[-1500:]
                self.kill_all()
                raise RuntimeError(f"kproxy did not start (exit {self.process.poll()}):\n{tail}")
            time.sleep(0.05)
        self.wait_workers(deadline)

    def wait_workers(self, deadline: float) -> None:
        """With workers, HTTP is served once each has bound the port: poll until it answers."""
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=2) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/1.1"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("kproxy's HTTP port never answered")

    def command(self, line: str, timeout: float = CONTROL_TIMEOUT) -> list[str]:
        return control(self.socket_path, line, timeout)

    def ok(self, line: str, timeout: float = CONTROL_TIMEOUT) -> list[str]:
        """A command that must succeed."""
        lines = self.command(line, timeout)
        if not lines[-1].startswith("OK"):
            raise RuntimeError(f"{line!r} answered {lines[-1]!r}")
        return lines

    def list_json(self) -> list[dict[str, object]]:
        lines = self.ok("list --json")
        return list(json.loads(lines[-2])["services"])

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.process is not None else []

    def kill9(self, *, supervisor_only: bool = False) -> list[int]:
        """SIGKILL the supervisor alone or the whole tree; returns the pids that were alive."""
        pids = self.tree()
        for pid in pids[:1] if supervisor_only else pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=STOP_TIMEOUT)
        return pids

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL whatever is left of its session."""
        if self.process is None:
            return
        _terminate(self.process)
        self.kill_all()

    def kill_all(self) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def tracebacks(self) -> int:
        """Python tracebacks in its stderr and log so far."""
        count = 0
        for path in (self.stderr_path, self.log_path):
            if path.exists():
                count += path.read_text(errors="replace").count("Traceback (most recent call")
        return count


def new_proxy(directory: Path, workers: int | None, state_dir: Path | None = None) -> Proxy:
    state = state_dir or directory / "state"
    state.mkdir(exist_ok=True)
    return Proxy(directory, free_port(), state, directory / "kproxy.sock", workers)


def deploy_line(service: str, targets: Sequence[str], *flags: str, drain: str = "2s") -> str:
    """A deploy of ``service`` on host ``<service>.test`` that is quick to become healthy."""
    words = [f"deploy {service}", *(f"--target {t}" for t in targets), f"--host {service}.test"]
    return " ".join([*words, FAST_DEPLOY, f"--drain-timeout {drain}", *flags])


def http_get(port: int, host: str, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body); status 0 when no answer came."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, data


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL processes the campaign started (directly or through kproxy), by pid."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
