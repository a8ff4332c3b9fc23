"""The servers under test: their config files, how each is started, and how it is stopped.

Everything listens on 127.0.0.1 on free ports and keeps its config, pid file, logs and temp
files in the run's own directory, so nothing touches the system services' files or ports.
Every proxy writes an access-log line per request to a file, as kproxy does by default.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from benchmarks.install import which

REPO: Final = Path(__file__).resolve().parent.parent
TINY_PATH: Final = "/tiny"  # a 3-byte body
LARGE_PATH: Final = "/64k"  # a 64 KiB body
LARGE_SIZE: Final = 64 * 1024  # bytes
START_TIMEOUT: Final = 20.0  # seconds
STOP_TIMEOUT: Final = 15.0  # seconds
COMMAND_TIMEOUT: Final = 300.0  # seconds: a first command to a kproxy restoring many services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class Server:
    """One started server. ``pid`` is the process we started; its tree is what we measure."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_files: list[Path] = attrs.field(factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def truncate_logs(self) -> None:
        """Access logs grow by ~100 MB a run; every writer appends (O_APPEND), so this is safe."""
        for path in self.log_files:
            if path.exists():
                os.truncate(path, 0)

    def stop(self) -> None:
        """SIGTERM the process group we started (each server runs in its own session)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass


def spawn(
    name: str,
    port: int,
    argv: list[str],
    directory: Path,
    *,
    env: dict[str, str] | None = None,
    log_files: list[Path] | None = None,
    stdout_name: str | None = None,
) -> Server:
    stdout_path = directory / (stdout_name or f"{name}.stdout")
    with stdout_path.open("ab") as stdout, (directory / f"{name}.stderr").open("ab") as stderr:
        process = subprocess.Popen(
            argv,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            env=env,
            start_new_session=True,
        )
    return Server(name, port, process, [*(log_files or []), stdout_path])


def wait_until_serving(server: Server, path: str, directory: Path) -> None:
    """Poll ``GET path`` until it answers 200, or fail with the server's stderr."""
    deadline = time.monotonic() + START_TIMEOUT
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    stderr = (directory / f"{server.name}.stderr").read_text(errors="replace")[-2000:]
    server.stop()
    raise RuntimeError(f"{server.name} did not serve {path} on port {server.port}:\n{stderr}")


def _nginx_user() -> str:
    # Workers of a root master switch to an unprivileged user, which could not read the run's
    # 0700 temp dir; run them as whoever runs the benchmark instead.
    if os.geteuid() == 0:
        return "user root root;"
    return ""


def _nginx_common(directory: Path, name: str) -> str:
    temp = directory / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    return f"""{_nginx_user()}
pid {directory}/{name}.pid;
error_log {directory}/{name}.stderr warn;
events {{ worker_connections 10000; }}
"""


def _nginx_temp_paths(directory: Path, name: str) -> str:
    temp = directory / f"{name}-temp"
    return "\n".join(
        f"  {kind}_temp_path {temp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def _nginx_argv(config: Path, directory: Path, name: str) -> list[str]:
    nginx = which("nginx") or "nginx"
    # -e: the error log before the config is read (else /var/log/nginx/error.log).
    return [
        nginx,
        "-p",
        str(directory),
        "-e",
        str(directory / f"{name}.stderr"),
        "-c",
        str(config),
        "-g",
        "daemon off;",
    ]


def start_upstream(directory: Path, ports: list[int]) -> Server:
    """The fast upstream: one nginx worker answering /tiny (3 bytes), /64k and /up on each
    port, keep-alive with no request limit (so it never closes a proxy's pooled connection)."""
    www = directory / "www"
    www.mkdir(exist_ok=True)
    (www / "64k").write_bytes(b"x" * LARGE_SIZE)
    listens = "\n".join(f"    listen 127.0.0.1:{port} backlog=4096;" for port in ports)
    config = directory / "upstream.conf"
    config.write_text(
        f"""worker_processes 1;
{_nginx_common(directory, "upstream")}
http {{
  access_log off;
{_nginx_temp_paths(directory, "upstream")}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  server {{
{listens}
    root {www};
    location = {TINY_PATH} {{ default_type text/plain; return 200 "ok\\n"; }}
    location = /up {{ default_type text/plain; return 200 "up\\n"; }}
  }}
}}
"""
    )
    server = spawn("upstream", ports[0], _nginx_argv(config, directory, "upstream"), directory)
    wait_until_serving(server, "/up", directory)
    return server


def start_nginx(directory: Path, upstream_port: int) -> Server:
    """nginx as users set it up as a reverse proxy: one worker per core, an upstream block
    with ``keepalive``, HTTP/1.1 with the Connection header cleared, the usual forwarding
    headers, and its default access log (combined format, to a file)."""
    port = free_port()
    config = directory / "nginx.conf"
    access_log = directory / "nginx-access.log"
    config.write_text(
        f"""worker_processes auto;
{_nginx_common(directory, "nginx")}
http {{
  access_log {access_log} combined;
{_nginx_temp_paths(directory, "nginx")}
  upstream app {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"""
    )
    server = spawn(
        "nginx", port, _nginx_argv(config, directory, "nginx"), directory, log_files=[access_log]
    )
    wait_until_serving(server, TINY_PATH, directory)
    return server


def start_haproxy(directory: Path, upstream_port: int) -> Server:
    """HAProxy in HTTP mode with its defaults (one thread per core, keep-alive both sides,
    ``http-reuse safe`` for server connections), ``option forwardfor``, and the HTTP log
    written to stdout (redirected to a file), as in container set-ups."""
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(
        f"""global
  log stdout format raw local0

defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s

frontend web
  bind 127.0.0.1:{port}
  option forwardfor
  default_backend app

backend app
  server app1 127.0.0.1:{upstream_port}
"""
    )
    haproxy = which("haproxy") or "haproxy"
    server = spawn(
        "haproxy", port, [haproxy, "-db", "-f", str(config)], directory, stdout_name="haproxy.log"
    )
    wait_until_serving(server, TINY_PATH, directory)
    return server


def start_caddy(directory: Path, upstream_port: int, *, access_log: bool = True) -> Server:
    """Caddy with a plain ``reverse_proxy`` (its transport keeps upstream connections alive
    by default); admin API and automatic HTTPS off so it binds only its own port. With
    ``access_log`` a JSON access log goes to a file (the same work kproxy does by default);
    without it, Caddy is a bare ``reverse_proxy`` site, as its users get it by default."""
    name = "caddy" if access_log else "caddy-nolog"
    port = free_port()
    config = directory / f"{name}.Caddyfile"
    log_path = directory / f"{name}-access.log"
    log_block = (
        f"""
  log {{
    output file {log_path}
    format json
  }}"""
        if access_log
        else ""
    )
    config.write_text(
        f"""{{
  admin off
  auto_https off
}}

http://127.0.0.1:{port} {{
  bind 127.0.0.1{log_block}
  reverse_proxy 127.0.0.1:{upstream_port}
}}
"""
    )
    home = directory / f"{name}-home"
    home.mkdir(exist_ok=True)
    env = caddy_env(home)
    caddy = which("caddy") or "caddy"
    argv = [caddy, "run", "--adapter", "caddyfile", "--config", str(config)]
    server = spawn(name, port, argv, directory, env=env, log_files=[log_path])
    wait_until_serving(server, TINY_PATH, directory)
    return server


def caddy_env(home: Path) -> dict[str, str]:
    """Caddy keeps its data (certificates, autosaved config) under HOME: the run's own dir."""
    return dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home), XDG_CONFIG_HOME=str(home))


def kproxy_env() -> dict[str, str]:
    """Run kproxy from this checkout, installed or not (its dependencies must be)."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), path) if p))


@attrs.define(eq=False)
class KProxy:
    server: Server
    socket_path: Path
    log_path: Path

    def command(self, line: str, timeout: float = 60.0) -> list[str]:
        """Send one control line (protocol.md) and return the answer's lines; raise on ERR."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"kproxy closed the control connection after {line!r}")
                buffer += chunk
                lines = buffer.decode().splitlines()
                if buffer.endswith(b"\n") and lines and lines[-1].startswith(("OK", "ERR")):
                    if lines[-1].startswith("ERR"):
                        raise RuntimeError(f"{line!r}: {lines[-1]}")
                    return lines

    def deploy(self, upstream_port: int, *flags: str) -> None:
        self.command(" ".join([f"deploy web --target 127.0.0.1:{upstream_port}", *flags]))


def kproxy_name(workers: int | None) -> str:
    """kproxy's key in the results: ``kproxy`` at its default worker count, else ``kproxy-wN``."""
    return "kproxy" if workers is None else f"kproxy-w{workers}"


def kproxy_label(workers: int | None) -> str:
    """kproxy's name in the report: ``kproxy`` at its default, else ``kproxy (N workers)``."""
    if workers is None:
        return "kproxy"
    return f"kproxy ({workers} worker{'' if workers == 1 else 's'})"


def start_kproxy(
    directory: Path,
    upstream_port: int,
    name: str = "kproxy",
    *,
    workers: int | None = None,
    https_port: int = 0,
    deploy_flags: Sequence[str] = (),
    ready_path: str | None = TINY_PATH,
    first_command: str | None = None,
) -> KProxy:
    """``kproxy run`` with its default options (JSON log lines on stdout, to a file), then
    ``deploy web --target …`` (and ``deploy_flags``) over the control socket, or
    ``first_command`` instead if given. ``workers`` is
    passed as ``--workers``; ``None`` leaves kproxy's default (one worker process per core).
    ``https_port`` 0 is a free port nobody uses (HTTPS is measured in ``benchmarks.https``,
    which picks the port). Returns once ``GET ready_path`` answers 200 over plain HTTP (unless
    None: a TLS service redirects plain HTTP, so its caller checks over HTTPS)."""
    port = free_port()
    state = directory / f"{name}-state"
    state.mkdir(exist_ok=True)
    socket_path = directory / f"{name}.sock"
    argv = [
        sys.executable,
        "-m",
        "kproxy",
        "run",
        "--bind",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--https-port",
        str(https_port),  # never 443: it may be taken
        "--state-dir",
        str(state),
        "--socket",
        str(socket_path),
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    server = spawn(name, port, argv, directory, env=kproxy_env(), stdout_name=f"{name}.log")
    proxy = KProxy(server, socket_path, directory / f"{name}.log")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        # The socket file appears at bind(), a moment before listen(): until then connecting
        # is refused, so try the deploy itself until it gets through.
        try:
            if first_command is None:
                proxy.deploy(upstream_port, *deploy_flags)
            else:
                proxy.command(first_command, timeout=COMMAND_TIMEOUT)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if server.process.poll() is not None or time.monotonic() > deadline:
                stderr = (directory / f"{name}.stderr").read_text(errors="replace")[-2000:]
                server.stop()
                raise RuntimeError(f"kproxy did not start:\n{stderr}") from None
            time.sleep(0.05)
    if ready_path is not None:
        wait_until_serving(server, ready_path, directory)
    return proxy


def start_floor(directory: Path, upstream_port: int) -> Server:
    """The trio+h11 floor (``benchmarks/floor.py``): not a proxy, the least work a trio+h11
    relay does per request, to show what the platform costs. One process, no log."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "benchmarks.floor",
        "--port",
        str(port),
        "--upstream-port",
        str(upstream_port),
    ]
    floor_dir = directory / "floor"
    floor_dir.mkdir(exist_ok=True)
    server = spawn("floor", port, argv, floor_dir, env=kproxy_env())
    wait_until_serving(server, TINY_PATH, floor_dir)
    return server
