"""HTTPS: kproxy beside Caddy, each terminating TLS with the same certificate, in one run.

A certificate is made for the run (``benchmarks.certs``: one CA, one ECDSA P-256 server
certificate for ``localhost``). kproxy (once per worker count, as in the comparison) deploys
``web`` with ``--tls --host localhost`` and the two files; Caddy serves ``https://localhost:P``
with ``tls <cert> <key>`` and its JSON access log. Both proxy to the same upstream as the
plain HTTP cases. Two cases, each measured like the comparison's (warm-up, then measured,
server CPU from /proc, interleaved over repeats):

- keep-alive requests/s at 16 connections: wrk on ``https://localhost:P/tiny`` (wrk sends its
  URL's host as SNI), one handshake per connection, then requests on it;
- new handshakes/s: ``benchmarks.handshakes`` (16 threads, each request on a new connection
  with a full handshake; wrk with ``Connection: close`` would resume its sessions instead).
"""

from __future__ import annotations

import collections
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from benchmarks import certs, compare, install, loadgen, servers

KEEP_ALIVE: Final = compare.Case("keep-alive, tiny body, 16 connections", servers.TINY_PATH, 16)
HANDSHAKES: Final = compare.Case("new handshakes, tiny body, 16 connections", servers.TINY_PATH, 16)
CASES: Final = (KEEP_ALIVE, HANDSHAKES)


def server_labels(kproxy_workers: Sequence[int | None]) -> dict[str, str]:
    kproxies = {servers.kproxy_name(w): servers.kproxy_label(w) for w in kproxy_workers}
    return {**kproxies, "caddy": "Caddy"}


@attrs.frozen
class Site:
    """A server under test and the HTTPS port it terminates TLS on."""

    server: servers.Server
    https_port: int

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.https_port}{path}"


def wait_until_serving_tls(site: Site, tls: certs.Certificates, directory: Path) -> str:
    """Poll ``GET /tiny`` over HTTPS, verifying the certificate against the run's CA and the
    host name, until it answers 200; return the TLS version and cipher negotiated."""
    context = ssl.create_default_context(cafile=str(tls.ca_path))
    request = (
        f"GET {servers.TINY_PATH} HTTP/1.1\r\nHost: {tls.host}:{site.https_port}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + servers.START_TIMEOUT
    problem = ""
    while time.monotonic() < deadline and site.server.process.poll() is None:
        try:
            with (
                socket.create_connection(("127.0.0.1", site.https_port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname=tls.host) as sock,
            ):
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    cipher = sock.cipher()
                    return f"{sock.version()} {cipher[0] if cipher else '?'}"
        except OSError as exc:  # ssl.SSLError included
            problem = repr(exc)
        time.sleep(0.1)
    name = site.server.name
    stderr = (directory / f"{name}.stderr").read_text(errors="replace")[-2000:]
    site.server.stop()
    raise RuntimeError(f"{name} did not serve HTTPS on {site.https_port}: {problem}\n{stderr}")


def start_kproxy(
    directory: Path, upstream_port: int, tls: certs.Certificates, workers: int | None
) -> Site:
    """``kproxy run --https-port P`` (default options otherwise), then ``deploy web --tls
    --host <host> --tls-certificate-path … --tls-private-key-path …``."""
    https_port = servers.free_port()
    name = f"{servers.kproxy_name(workers)}-tls"
    flags = [
        "--host",
        tls.host,
        "--tls",
        "--tls-certificate-path",
        str(tls.certificate_path),
        "--tls-private-key-path",
        str(tls.private_key_path),
    ]
    proxy = servers.start_kproxy(
        directory,
        upstream_port,
        name,
        workers=workers,
        https_port=https_port,
        deploy_flags=flags,
        ready_path=None,  # plain HTTP now redirects to HTTPS
    )
    return Site(proxy.server, https_port)


def start_caddy(directory: Path, upstream_port: int, tls: certs.Certificates) -> Site:
    """Caddy serving ``https://<host>:P`` with the run's certificate files (``tls cert key``),
    its JSON access log to a file and a plain ``reverse_proxy``; admin API and automatic
    HTTPS (certificate management, redirects) off. HTTP/2 and HTTP/3 stay on, as Caddy's
    default; wrk and ``benchmarks.handshakes`` speak HTTP/1.1."""
    name = "caddy-tls"
    port = servers.free_port()
    config = directory / f"{name}.Caddyfile"
    log_path = directory / f"{name}-access.log"
    config.write_text(
        f"""{{
  admin off
  auto_https off
}}

https://{tls.host}:{port} {{
  bind 127.0.0.1
  tls {tls.certificate_path} {tls.private_key_path}
  log {{
    output file {log_path}
    format json
  }}
  reverse_proxy 127.0.0.1:{upstream_port}
}}
"""
    )
    home = directory / f"{name}-home"
    home.mkdir(exist_ok=True)
    env = servers.caddy_env(home)
    caddy = install.which("caddy") or "caddy"
    argv = [caddy, "run", "--adapter", "caddyfile", "--config", str(config)]
    server = servers.spawn(name, port, argv, directory, env=env, log_files=[log_path])
    return Site(server, port)


def handshake_load(
    site: Site, tls: certs.Certificates, case: compare.Case, found: dict[str, Any]
) -> Callable[[float], loadgen.WrkResult]:
    """``benchmarks.handshakes`` as a load for ``compare.measure_load``; what it negotiated,
    how many were resumed and its errors by kind go into ``found``."""

    def load(seconds: float) -> loadgen.WrkResult:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.handshakes",
            "--port",
            str(site.https_port),
            "--host",
            tls.host,
            "--path",
            case.path,
            "--connections",
            str(case.connections),
            "--seconds",
            str(seconds),
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 60,
            env=servers.kproxy_env(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        line = next(x for x in done.stdout.splitlines() if x.startswith(loadgen.MARKER))
        data = json.loads(line[len(loadgen.MARKER) :])
        found.clear()
        found.update(
            negotiated=data["negotiated"], resumed=data["resumed"], errors=data["error_kinds"]
        )
        return loadgen.parse(done.stdout)

    return load


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
) -> dict[str, Any]:
    """Both cases against every server, interleaved; the samples, their summary rows, and
    per server what TLS version and cipher the loaders negotiated."""
    tls = certs.make(directory)
    script = loadgen.write_script(directory)
    labels = server_labels(kproxy_workers)
    names = tuple(labels)
    sites: dict[str, Site] = {}
    negotiated: dict[str, collections.Counter[str]] = {}
    resumed: dict[str, int] = {}
    samples: list[compare.Sample] = []
    try:
        for workers in kproxy_workers:
            sites[servers.kproxy_name(workers)] = start_kproxy(
                directory, upstream.port, tls, workers
            )
        sites["caddy"] = start_caddy(directory, upstream.port, tls)
        checked = {
            name: wait_until_serving_tls(site, tls, directory) for name, site in sites.items()
        }
        for repeat in range(repeats):
            for case in CASES:
                shift = (repeat + CASES.index(case)) % len(names)
                for name in names[shift:] + names[:shift]:
                    site = sites[name]
                    site.server.truncate_logs()
                    found: dict[str, Any] = {}
                    if case is KEEP_ALIVE:
                        result, cpu_us, upstream_us, foreign = compare.measure(
                            site.url(tls.host, case.path),
                            case,
                            server_pid=site.server.pid,
                            upstream_pid=upstream.pid,
                            seconds=seconds,
                            warmup=warmup,
                            threads=threads,
                            script=script,
                        )
                    else:
                        result, cpu_us, upstream_us, foreign = compare.measure_load(
                            handshake_load(site, tls, case, found),
                            server_pid=site.server.pid,
                            upstream_pid=upstream.pid,
                            seconds=seconds,
                            warmup=warmup,
                        )
                        negotiated.setdefault(name, collections.Counter()).update(
                            found["negotiated"]
                        )
                        resumed[name] = resumed.get(name, 0) + found["resumed"]
                    samples.append(
                        compare.Sample(
                            case.name, name, repeat, result, cpu_us, upstream_us, foreign
                        )
                    )
                    progress(
                        f"  [{repeat + 1}/{repeats}] {case.name:<41} {name:<9}"
                        f" {result.rps:>7.0f}/s  p50 {result.p50_ms:6.2f} ms"
                        f"  p99 {result.p99_ms:6.2f} ms  cpu {cpu_us:6.1f} µs/req"
                        f"  errors {result.errors}{_error_kinds(found)}"
                        f"  foreign cpu {foreign:.0%}"
                    )
    finally:
        for site in sites.values():
            site.server.stop()
    rows = compare.summarise(samples, labels, CASES)
    return {
        "host": tls.host,
        "certificate": "ECDSA P-256, signed by the run's own CA (ECDSA P-256)",
        "checked": checked,
        "negotiated": {name: dict(counts) for name, counts in negotiated.items()},
        "resumed": resumed,
        "samples": [s.as_dict() for s in samples],
        "summary": [attrs.asdict(row) for row in rows],
    }


def _error_kinds(found: dict[str, Any]) -> str:
    kinds = found.get("errors")
    return f" {kinds}" if kinds else ""
