"""The benchmark's command line: install, start the upstream, run the parts, report, save."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import attrs

from benchmarks import (
    compare,
    cutover,
    https,
    install,
    instructions_inprocess,
    memory,
    report,
    scale,
    servers,
)

PARTS: Final = ("compare", "https", "cutover", "memory", "instructions", "scale")
RESULTS: Final = Path(__file__).resolve().parent / "results"
CALLGRIND_WARMUP: Final = 50  # requests both callgrind runs of a case send


def worker_counts(text: str) -> list[int]:
    """``--kproxy-workers``: one count or several, comma-separated (``1`` or ``1,2``)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or list of numbers: {text!r}") from None
    if min(counts) < 1 or len(set(counts)) < len(counts):
        # kproxy's own 0 means one per core: leave the option out for that.
        raise argparse.ArgumentTypeError(f"counts must be distinct and at least 1: {text!r}")
    return counts


def service_counts(text: str) -> list[int]:
    """``--scale-services``: increasing counts, comma-separated (``10,100,1000``)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if counts[0] < 2 or counts != sorted(set(counts)):
        raise argparse.ArgumentTypeError(f"counts must increase from 2 or more: {text!r}")
    return counts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="kproxy beside nginx, HAProxy and Caddy on this machine, in one run, and"
        " beside Caddy over HTTPS; then kproxy's memory with idle connections, its latency"
        " during deploys, its instructions per request beside the trio+h11 floor's, and how"
        " its costs grow with 10 to 1,000 services. Installs wrk, nginx, haproxy, caddy and"
        " valgrind with apt-get if missing (as root; no service is left running or enabled).",
    )
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"what to run: any of {', '.join(PARTS)} (default: all), or 'install' alone",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each")
    parser.add_argument("--repeats", type=int, default=2, help="times the whole set is repeated")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--idle-connections", type=int, default=10_000, help="for the memory measurement"
    )
    parser.add_argument(
        "--kproxy-workers",
        type=worker_counts,
        metavar="N[,N…]",
        help="pass `--workers N` to `kproxy run` (default: kproxy's own, one per core); with"
        " several counts the comparison and HTTPS have a kproxy row for each, and cutover and"
        " memory use the first",
    )
    parser.add_argument(
        "--callgrind-requests",
        type=int,
        default=200,
        help="instructions, scale: requests counted under callgrind, after 50 more (200)",
    )
    parser.add_argument(
        "--scale-services",
        type=service_counts,
        default=list(scale.COUNTS),
        metavar="N,N…",
        help="scale: the service counts measured (10,100,1000), each against 1 service",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="scale: seconds the health checks' CPU is measured over (10)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 s measurements, 1 repeat, 1,000 idle connections, 40 requests"
        " under callgrind, 5 s of health checks",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to save results")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts if part not in (*PARTS, "install")]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r} (choose from {', '.join(PARTS)}, install)")
    args.install_only = "install" in args.parts
    if min(args.repeats, args.duration, args.idle_connections, args.callgrind_requests) < 1:
        parser.error(
            "--repeats, --duration, --idle-connections and --callgrind-requests must be at least 1"
        )
    if args.quick:
        args.duration, args.repeats, args.idle_connections = 2.0, 1, 1_000
        args.callgrind_requests, args.idle_seconds = 40, 5.0
    args.parts = args.parts or list(PARTS)
    return args


def raise_fd_limit(wanted: int) -> int:
    """Lift the soft RLIMIT_NOFILE as far as allowed; every server we start inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def check_kproxy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import kproxy.cli"],
        env=servers.kproxy_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(
            "benchmarks: kproxy cannot be imported here; run `pip install -e .` first\n"
            + done.stderr
        )


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not sys.platform.startswith("linux"):
        sys.exit("benchmarks: Linux only (/proc is read for CPU time and memory)")
    if args.no_install:
        missing = install.missing_binaries()
        if missing:
            sys.exit(f"benchmarks: missing {', '.join(missing)} (run without --no-install)")
    else:
        install.ensure_installed()
    if args.install_only:
        say("wrk, nginx, haproxy and caddy are installed; their system services are off")
        return
    check_kproxy()
    fd_limit = raise_fd_limit(1_048_576)
    command = " ".join(["python benchmarks/run.py", *(argv or sys.argv[1:])])
    # None: kproxy's default, one worker per core it may run on (as kproxy/cli.py counts them).
    kproxy_workers: list[int | None] = list(args.kproxy_workers or [None])
    results: dict[str, Any] = {
        "machine": report.machine_facts(),
        "settings": {
            "command": command,
            "duration": args.duration,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "wrk_threads": args.wrk_threads,
            "idle_connections": args.idle_connections,
            "kproxy_workers": args.kproxy_workers,  # null: kproxy's default, one per core
            "kproxy_default_workers": len(os.sched_getaffinity(0)) or 1,
            "fd_limit": fd_limit,
            "callgrind_requests": args.callgrind_requests,
            "scale_services": args.scale_services,
            "idle_seconds": args.idle_seconds,
            "parts": args.parts,
        },
    }
    rows: list[compare.Row] = []
    directory = Path(tempfile.mkdtemp(prefix="kproxy-bench-"))
    started = time.monotonic()
    upstream = None
    try:
        ports = [servers.free_port(), servers.free_port()]
        upstream = servers.start_upstream(directory, ports)
        if "compare" in args.parts:
            labels = compare.server_labels(kproxy_workers)
            say(f"comparison: {len(compare.CASES)} cases x {len(labels)} servers x")
            say(f"  {args.repeats} repeats, {args.warmup:g} s warm-up + {args.duration:g} s each")
            samples = compare.run(
                directory,
                upstream=upstream,
                seconds=args.duration,
                repeats=args.repeats,
                warmup=args.warmup,
                threads=args.wrk_threads,
                kproxy_workers=kproxy_workers,
                progress=say,
            )
            rows = compare.summarise(samples, labels)
            results["samples"] = [s.as_dict() for s in samples]
            results["summary"] = [attrs.asdict(row) for row in rows]
            results["foreign_cpu_max"] = max(s.foreign_cpu for s in samples)
        if "https" in args.parts:
            labels = https.server_labels(kproxy_workers)
            say(f"HTTPS: {len(https.CASES)} cases x {len(labels)} servers x")
            say(f"  {args.repeats} repeats, {args.warmup:g} s warm-up + {args.duration:g} s each")
            results["https"] = https.run(
                directory,
                upstream=upstream,
                seconds=args.duration,
                repeats=args.repeats,
                warmup=args.warmup,
                threads=args.wrk_threads,
                kproxy_workers=kproxy_workers,
                progress=say,
            )
        if "cutover" in args.parts:
            label = servers.kproxy_label(kproxy_workers[0])
            say(f"{label} during deploys (steady vs deploying back and forth):")
            results["cutover"] = cutover.run(
                directory,
                ports=(ports[0], ports[1]),
                upstream_pid=upstream.pid,
                seconds=args.duration * 2,
                repeats=args.repeats,
                warmup=args.warmup,
                threads=args.wrk_threads,
                workers=kproxy_workers[0],
                progress=say,
            )
        if "memory" in args.parts:
            label = servers.kproxy_label(kproxy_workers[0])
            say(f"{label} with {args.idle_connections:,} idle keep-alive connections:")
            results["memory"] = memory.run(
                directory,
                upstream=upstream,
                connections=args.idle_connections,
                workers=kproxy_workers[0],
                progress=say,
            )
        if "scale" in args.parts:
            label = servers.kproxy_label(kproxy_workers[0])
            say(f"{label} with 1 to {args.scale_services[-1]:,} services of 2 targets each:")
            results["scale"] = scale.run(
                directory,
                counts=args.scale_services,
                seconds=args.duration,
                warmup=args.warmup,
                threads=args.wrk_threads,
                idle=args.idle_seconds,
                workers=kproxy_workers[0],
                callgrind=(CALLGRIND_WARMUP, args.callgrind_requests),
                progress=say,
            )
        if "instructions" in args.parts:
            say("instructions per request (callgrind, one process): kproxy, the floor, direct")
            results["instructions"] = instructions_inprocess.measure(
                warmup=CALLGRIND_WARMUP, requests=args.callgrind_requests, progress=say
            )
    finally:
        if upstream is not None:
            upstream.stop()
        install.quiet_system_services()
        if args.keep:
            say(f"configs and logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(rows, results.get("memory"), results.get("cutover"))
    text = report.markdown(results, rows)
    say("")
    say(text)
    if not args.no_save:
        md_path, json_path = report.save(args.results, results, text)
        say(f"saved {md_path} and {json_path}")
    say(f"took {results['seconds']:.0f} s")
