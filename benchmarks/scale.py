"""Scale: what kproxy's costs do as the services grow from 1 to 10, 100 and 1,000.

Every service ``s<k>`` routes the host ``s<k>.test`` to two targets of its own, real loopback
ports of one nginx (one worker listening on every port, answering ``/tiny`` and ``/up``), so
every health check really connects and gets an answer. At each count a fresh ``kproxy run``
(defaults, or ``--workers N``) starts with a state file holding that many services: s1's
record as kproxy saved it, copied per service (see :func:`write_state`). Growing one kproxy
by deploying over the control socket does not work at 1,000: each deploy saves the whole
state, so the n-th costs O(n), and with 16 deploys at once a save queued behind the others
for over 10 s (kproxy answered "ERR deployed s504, but saving the state took longer than 10s"),
with 4 at once a deploy took over 60 s at about 800 services, the health checks of 1,600
targets taking the supervisor's whole core. Restoring is how kproxy starts after a restart
anyway, and its time is measured too. At each count:

- **restart**: from starting ``kproxy run`` to ``s1.test`` answering 200;
- **requests**: wrk on ``/tiny`` with ``Host: s1.test``, 16 connections: req/s, latency and
  CPU per request (kproxy's process tree). The health checks of all the other services run
  meanwhile, so a fall in req/s mixes routing and checks; the instruction count does not;
- **instructions** per request to ``s1.test`` (callgrind, ``benchmarks/instructions_inprocess``
  with that many services embedded; frozen clock, so no check runs after the deploys): the
  routing's own cost, deterministic;
- **health checks**: kproxy's CPU (and the upstream's) over ``idle`` seconds with no requests,
  every target checked at the default 1 s interval;
- **one deploy**: ``deploy s1`` again (same targets), timed ``REDEPLOYS`` times at the control
  socket, and ``NEW_DEPLOYS`` new services deployed one after another, each timed;
- **one save**: a change to one service (``s1``) saved as every command saves it
  (``StateSaver.commit``, runtime/state_saver.py → runtime/state_store.py: the records, JSON,
  write, fsync, rename) timed ``SAVES`` times in a kproxy embedded in this process with the
  same services and targets (checked once at the deploy, then not: this process's event loop
  would run the checks, and time them with the save), and the state file's size.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import trio

from benchmarks import compare, instructions_inprocess, loadgen, procstat, servers
from kproxy.runtime.state_store import STATE_FILE_NAME

COUNTS: Final = (10, 100, 1000)
CONNECTIONS: Final = 16
NAME: Final = "kproxy-scale"
NEW_DEPLOYS: Final = 3  # new services deployed at each count, one after another, timed
PARALLEL_DEPLOYS: Final = 16  # deploys at once into the embedded kproxy (the save timings)
REDEPLOYS: Final = 3
SAVES: Final = 5
SETTLE: Final = 2.0  # seconds after growing before measuring: the new checks' first round


def hold_free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all held at once, then released for nginx to take."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def targets_of(k: int, ports: Sequence[int]) -> tuple[str, str]:
    """Service ``s<k>``'s two targets (k from 1)."""
    return f"127.0.0.1:{ports[2 * k - 2]}", f"127.0.0.1:{ports[2 * k - 1]}"


def deploy_line(k: int, ports: Sequence[int]) -> str:
    first, second = targets_of(k, ports)
    return f"deploy s{k} --host s{k}.test --target {first} --target {second}"


def start_upstream(directory: Path, ports: Sequence[int]) -> servers.Server:
    """One nginx worker listening on every port in ``ports``: ``/tiny`` and ``/up``."""
    listens = "\n".join(f"    listen 127.0.0.1:{port} backlog=4096;" for port in ports)
    config = directory / "scale-upstream.conf"
    config.write_text(
        f"""worker_processes 1;
worker_rlimit_nofile {len(ports) + 20_000};
{servers._nginx_common(directory, "scale-upstream")}
http {{
  access_log off;
{servers._nginx_temp_paths(directory, "scale-upstream")}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
{listens}
    location = {servers.TINY_PATH} {{ default_type text/plain; return 200 "ok\\n"; }}
    location = /up {{ default_type text/plain; return 200 "up\\n"; }}
  }}
}}
"""
    )
    argv = servers._nginx_argv(config, directory, "scale-upstream")
    server = servers.spawn("scale-upstream", ports[0], argv, directory)
    servers.wait_until_serving(server, "/up", directory)
    return server


def write_state(
    state_dir: Path, template: dict[str, Any], count: int, ports: Sequence[int]
) -> None:
    """kproxy's state file with ``count`` services: ``template`` is one record kproxy saved (s1's),
    copied for each ``s<k>`` with its name, host and targets."""
    services = []
    for k in range(1, count + 1):
        record = json.loads(json.dumps(template))
        record["name"] = f"s{k}"
        record["options"]["service"]["hosts"] = [f"s{k}.test"]
        record["options"]["targets"] = list(targets_of(k, ports))
        services.append(record)
    path = state_dir / STATE_FILE_NAME
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "services": services}, indent=2) + "\n")


def start_restoring(
    directory: Path, ports: Sequence[int], workers: int | None
) -> tuple[servers.KProxy, float]:
    """``kproxy run`` with the state file already in its state dir (restored at start-up):
    the proxy, and the seconds from the start until ``s1.test`` answered 200."""
    started = time.monotonic()
    proxy = servers.start_kproxy(
        directory, 0, NAME, workers=workers, ready_path=None, first_command="list"
    )
    request = b"GET /tiny HTTP/1.1\r\nHost: s1.test\r\nConnection: close\r\n\r\n"
    deadline = started + servers.COMMAND_TIMEOUT
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
            sock.sendall(request)
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return proxy, time.monotonic() - started
        time.sleep(0.05)
    proxy.server.stop()
    raise RuntimeError("kproxy never served s1.test after restoring its services")


def deploy_seconds(proxy: servers.KProxy, numbers: range, ports: Sequence[int]) -> list[float]:
    """Deploy ``s<k>`` for every k in ``numbers``, one after another: seconds each."""
    took = []
    for k in numbers:
        started = time.monotonic()
        proxy.command(deploy_line(k, ports), timeout=servers.COMMAND_TIMEOUT)
        took.append(time.monotonic() - started)
    return took


def redeploy_seconds(proxy: servers.KProxy, ports: Sequence[int]) -> list[float]:
    """``deploy s1`` to the targets it has, ``REDEPLOYS`` times: seconds each."""
    took = []
    for _ in range(REDEPLOYS):
        started = time.monotonic()
        proxy.command(deploy_line(1, ports), timeout=servers.COMMAND_TIMEOUT)
        took.append(time.monotonic() - started)
    return took


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU each process tree used over ``seconds`` with no requests, as a share of one core."""
    before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return {name: (procstat.cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}


async def _time_saves(
    counts: Sequence[int],
    ports: Sequence[int],
    state_dir: Path,
    log: TextIO,
    progress: Callable[[str], None],
) -> dict[int, dict[str, Any]]:
    import kproxy

    # One check per target at the deploy, then none while the saves are timed: this process's
    # event loop runs them, and a thousand checks a second would be timed with every save.
    quiet_checks = kproxy.TargetOptions(health_check_interval=3600.0)

    found: dict[int, dict[str, Any]] = {}
    async with trio.open_nursery() as nursery:
        options = kproxy.RunOptions(
            socket_path="", state_dir=str(state_dir), bind="127.0.0.1", http_port=0
        )
        proxy = await nursery.start(kproxy.Proxy(options, kproxy.Logger(out=log)).serve)
        limit = trio.CapacityLimiter(PARALLEL_DEPLOYS)

        async def deploy(k: int) -> None:
            async with limit:
                service = kproxy.ServiceOptions(hosts=(f"s{k}.test",))
                targets = targets_of(k, ports)
                options = kproxy.DeploymentOptions(
                    targets=targets, service=service, target=quiet_checks
                )
                await proxy.deploy(f"s{k}", options)

        deployed = 0
        for count in counts:
            async with trio.open_nursery() as deploys:
                for k in range(deployed + 1, count + 1):
                    deploys.start_soon(deploy, k)
            deployed = count
            took = []
            router = proxy._router  # benchmark only: the save every command makes
            for n in range(SAVES):
                record = attrs.evolve(router.services["s1"].record(), max_pause=60.0 + n)
                started = time.perf_counter()
                records = functools.partial(router.records_with, "s1", record)
                await router.saver.commit(records, _none)
                took.append(time.perf_counter() - started)
            size = (state_dir / STATE_FILE_NAME).stat().st_size
            found[count] = {"save_seconds": took, "state_file_bytes": size}
            progress(
                f"  {count:>5} services: a save takes {statistics.median(took) * 1000:.1f} ms"
                f" ({size:,} bytes)"
            )
        nursery.cancel_scope.cancel()
    return found


def _none() -> None:
    pass


def save_timings(
    counts: Sequence[int], ports: Sequence[int], progress: Callable[[str], None]
) -> dict[int, dict[str, Any]]:
    """Per count, how long one change's save takes with that many services (embedded kproxy)."""
    with (
        tempfile.TemporaryDirectory(prefix="kproxy-scale-state-") as state_dir,
        open(os.devnull, "w") as log,  # kproxy's log lines: not wanted here
    ):
        return trio.run(_time_saves, counts, ports, Path(state_dir), log, progress)


def instruction_counts(
    counts: Sequence[int], callgrind: tuple[int, int], progress: Callable[[str], None]
) -> dict[str, Any]:
    """M instructions per request to ``s1.test`` with each count of services (own share)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is missing (apt-get install valgrind)")
    origin = instructions_inprocess.kproxy_origin()
    warmup, requests = callgrind
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kproxy-scale-callgrind-") as temp:
        directory = Path(temp)
        path = instructions_inprocess.TINY_PATH
        for mode in ("direct", "proxy"):
            instructions_inprocess.run_child(None, origin, mode, path, 1, directory, 1)
        per, runs = instructions_inprocess.per_request, (warmup, warmup + requests)
        direct = per(valgrind, origin, "direct", path, runs, directory, 1)
        found["direct"] = direct / 1e6
        for count in counts:
            total = per(valgrind, origin, "proxy", path, runs, directory, count)
            found[str(count)] = (total - direct) / 1e6
            progress(f"  {count:>5} services: {found[str(count)]:.4f} M instructions / request")
    return found


def run(
    directory: Path,
    *,
    counts: Sequence[int],
    seconds: float,
    warmup: float,
    threads: int,
    idle: float,
    workers: int | None,
    callgrind: tuple[int, int],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    levels = [1, *counts]
    ports = hold_free_ports(2 * (max(levels) + NEW_DEPLOYS))
    upstream = start_upstream(directory, ports)
    per_count: dict[str, dict[str, Any]] = {}
    proxy = None
    try:
        # kproxy saves s1 as it saves any service: the template of every count's state file.
        proxy = servers.start_kproxy(
            directory,
            0,
            NAME,
            workers=workers,
            ready_path=None,
            first_command=deploy_line(1, ports),
        )
        proxy.server.stop()
        state_dir = directory / f"{NAME}-state"
        template = json.loads((state_dir / STATE_FILE_NAME).read_text())["services"][0]
        script = loadgen.write_script(directory)
        for count in levels:
            write_state(state_dir, template, count, ports)
            proxy, restart = start_restoring(directory, ports, workers)
            time.sleep(SETTLE)
            cpu = idle_cpu({"kproxy": proxy.server.pid, "upstream": upstream.pid}, idle)
            url = proxy.server.url + servers.TINY_PATH

            def load(duration: float, url: str = url) -> loadgen.WrkResult:
                return loadgen.run(
                    url,
                    connections=CONNECTIONS,
                    threads=threads,
                    seconds=duration,
                    script=script,
                    headers=["Host: s1.test"],
                )

            wrk, cpu_us, _, foreign = compare.measure_load(
                load,
                server_pid=proxy.server.pid,
                upstream_pid=upstream.pid,
                seconds=seconds,
                warmup=warmup,
            )
            redeploys = redeploy_seconds(proxy, ports)
            new = deploy_seconds(proxy, range(count + 1, count + 1 + NEW_DEPLOYS), ports)
            proxy.server.stop()
            per_count[str(count)] = {
                "services": count,
                "targets": 2 * count,
                "restart_seconds": restart,
                "idle_cpu_share": cpu,
                **wrk.as_dict(),
                "cpu_us_per_request": cpu_us,
                "foreign_cpu_share": foreign,
                "redeploy_seconds": redeploys,
                "new_deploy_seconds": new,
            }
            progress(
                f"  {count:>5} services: {wrk.rps:7.0f} req/s, cpu {cpu_us:6.1f} µs/req,"
                f" idle cpu {cpu['kproxy']:.1%} (upstream {cpu['upstream']:.1%}),"
                f" deploy {statistics.median(redeploys) * 1000:.0f} ms"
                f" (new service {statistics.median(new) * 1000:.0f} ms),"
                f" restart {restart:.1f} s, foreign cpu {foreign:.0%}"
            )
        progress("  the save path, in an embedded kproxy:")
        saves = save_timings(levels, ports, progress)
    finally:
        if proxy is not None:
            proxy.server.stop()
        upstream.stop()
    for count, timing in saves.items():
        per_count[str(count)].update(timing)
    result: dict[str, Any] = {
        "kproxy": servers.kproxy_label(workers),
        "kproxy_workers": workers,
        "connections": CONNECTIONS,
        "idle_seconds": idle,
        "per_count": per_count,
    }
    progress("  instructions per request to s1.test (callgrind, one process):")
    result["instructions"] = instruction_counts(levels, callgrind, progress)
    result["instructions_settings"] = {"warmup": callgrind[0], "requests": callgrind[1]}
    result["growth"] = growth(result)
    return result


# ---- how each figure grows ----------------------------------------------------------------

# A figure that grows with the services "faster than linearly" grows by more than this times
# the services' own factor between two counts (noise, and fixed costs, keep it below 1 else).
SUPERLINEAR: Final = 1.3
# A per-request figure "grows with the services" when the largest count's is this much above
# the one service's: wall-clock figures drift ±15 % here, instruction counts 0.5 %.
PER_REQUEST_DRIFT: Final = {
    "instructions": 1.01,
    "cpu_us_per_request": 1.2,
    "cpu_us_net": 1.2,
    "rps": 1 / 1.2,
}


def _figures(result: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Each figure's value by service count (instructions: M per request, own share)."""
    per_count = {int(k): v for k, v in result["per_count"].items()}
    figures: dict[str, dict[int, float]] = {
        "rps": {n: v["rps"] for n, v in per_count.items()},
        "cpu_us_per_request": {n: v["cpu_us_per_request"] for n, v in per_count.items()},
        # The health checks run during the requests too: their idle rate taken out.
        "cpu_us_net": {
            n: v["cpu_us_per_request"] - v["idle_cpu_share"]["kproxy"] * 1e6 / v["rps"]
            for n, v in per_count.items()
            if v["rps"]
        },
        "health_check_cpu": {n: v["idle_cpu_share"]["kproxy"] for n, v in per_count.items()},
        "redeploy_seconds": {
            n: statistics.median(v["redeploy_seconds"]) for n, v in per_count.items()
        },
        "new_deploy_seconds": {
            n: statistics.median(v["new_deploy_seconds"]) for n, v in per_count.items()
        },
        "restart_seconds": {n: v["restart_seconds"] for n, v in per_count.items()},
    }
    if all("save_seconds" in v for v in per_count.values()):
        figures["save_seconds"] = {
            n: statistics.median(v["save_seconds"]) for n, v in per_count.items()
        }
        figures["state_file_bytes"] = {n: v["state_file_bytes"] for n, v in per_count.items()}
    counts = result.get("instructions", {})
    if counts:
        figures["instructions"] = {int(k): v for k, v in counts.items() if k != "direct"}
    return figures


def growth(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per figure: its factor over each step of counts, and a flag if it grows faster than
    linearly (costs that scale with the services) or at all (per-request costs)."""
    found = []
    for name, values in _figures(result).items():
        counts = sorted(values)
        steps = []
        flags = []
        for low, high in itertools.pairwise(counts):
            if low == 1 or not values[low]:
                continue  # from 1 service the fixed costs dominate: no linear yardstick
            factor = values[high] / values[low]
            steps.append({"from": low, "to": high, "factor": factor})
            if name not in PER_REQUEST_DRIFT and factor > SUPERLINEAR * high / low:
                flags.append(f"x{factor:.1f} from {low:,} to {high:,} services: faster than linear")
        if name in PER_REQUEST_DRIFT and 1 in values and values[1]:
            change = values[counts[-1]] / values[1]
            limit = PER_REQUEST_DRIFT[name]
            if (change < limit) if name == "rps" else (change > limit):
                flags.append(f"x{change:.2f} at {counts[-1]:,} services against 1")
        found.append({"figure": name, "values": values, "steps": steps, "flags": flags})
    return found


LABELS: Final = {
    "rps": ("req/s to s1.test, 16 conns", "{:,.0f}"),
    "cpu_us_per_request": ("CPU µs per request (kproxy's processes)", "{:.1f}"),
    "cpu_us_net": ("the same less the health checks' idle CPU rate", "{:.1f}"),
    "instructions": ("M instructions per request (callgrind)", "{:.4f}"),
    "health_check_cpu": ("health checks: kproxy CPU, idle (share of a core)", "{:.1%}"),
    "redeploy_seconds": ("one deploy (`deploy s1`, same targets), s", "{:.3f}"),
    "new_deploy_seconds": ("one deploy of a new service, s", "{:.3f}"),
    "restart_seconds": ("restart: start to serving s1.test (restoring all), s", "{:.2f}"),
    "save_seconds": ("one state save (`StateSaver.commit`, one service changed), s", "{:.4f}"),
    "state_file_bytes": ("state file, bytes", "{:,.0f}"),
}


def markdown(result: dict[str, Any]) -> str:
    rows = growth(result)
    counts = sorted({n for row in rows for n in row["values"]})
    lines = [
        "| figure | "
        + " | ".join(f"{n:,} service{'s' if n > 1 else ''}" for n in counts)
        + " | growth per step | flag |",
        "|---|" + "--:|" * len(counts) + "---|---|",
    ]
    for row in rows:
        label, form = LABELS[row["figure"]]
        cells = [form.format(row["values"][n]) if n in row["values"] else "—" for n in counts]
        steps = ", ".join(f"x{s['factor']:.2f}" for s in row["steps"]) or "—"
        flag = "; ".join(row["flags"]) or "no"
        lines.append(f"| {label} | {' | '.join(cells)} | {steps} | {flag} |")
    upstream = {int(k): v["idle_cpu_share"]["upstream"] for k, v in result["per_count"].items()}
    foreign = max(v["foreign_cpu_share"] for v in result["per_count"].values())
    lines += [
        "",
        f"- {result['kproxy']}, started afresh at each count with a state file of that many"
        " services (restored at start-up); service `s<k>` routes `s<k>.test` to two ports of"
        " its own on one nginx (every health check connects and gets `200`).",
        "- Health checks at the default 1 s interval over "
        f"{result['idle_seconds']:g} s with no requests; the upstream answering them used "
        + ", ".join(f"{upstream[n]:.1%}" for n in counts)
        + " of a core.",
        "- Growth per step: the figure's factor from each count to the next, from 10 services"
        f" on (10 to 100 to 1,000: linear is x10); flagged when above {SUPERLINEAR:g} times the"
        " services' own factor (x13 for x10), or, for per-request"
        " figures, when the largest count's differs from one service's by more than"
        " run-to-run drift (1 % for instructions, 20 % for wall-clock figures).",
        f"- Other processes used up to {foreign:.0%} of the machine's CPU during the"
        " request measurements: wall-clock figures are noisy; instruction counts are not.",
    ]
    return "\n".join(lines)
