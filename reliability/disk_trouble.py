"""Scenario 7: disk trouble.

Goal: ``ERR`` means nothing changed: a command whose state cannot be saved leaves the running
proxy (``list``, and where traffic goes) and the state file as they were, for deploy, remove,
pause, stop and resume alike; a command that answers ``OK`` on a full disk did save (a restart
shows it); after space returns the next command saves and a restart loads it; a read-only
state directory at start gives a clear error, not a traceback; at the default worker count
and with ``--workers 1``.

The state directory is a 64 KiB tmpfs (this needs root; without it the scenario is skipped).
``web`` is deployed, then the tmpfs is filled to the last byte and every command is tried in
turn (deploy to another target, deploy a new service, pause, stop, resume, remove), each
judged against the state before it. Then the filler goes, one deploy must succeed, and a
``kill -9`` and restart must show it. Last, the tmpfs is remounted read-only and a fresh
proxy is started on it. All of it once per worker count, each on a fresh tmpfs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Final

from reliability import harness
from reliability.scenario import Result, standalone

NAME: Final = "disk_trouble"
GOAL: Final = "ERR leaves proxy & file unchanged, OK is saved, recovers, read-only: clear error"
TMPFS_SIZE: Final = "64k"
ROUNDS: Final = {True: 1, False: 5}  # times every command is tried on the full disk


def fill(directory: Path) -> None:
    """Write until ENOSPC: not a byte left for a temp file."""
    with (directory / "filler").open("ab", buffering=0) as filler:
        for size in (4096, 512, 1):
            try:
                while True:
                    filler.write(b"\0" * size)
            except OSError:
                continue


def snapshot(proxy: harness.Proxy) -> tuple[object, bytes, str]:
    """(list --json, the state file's bytes, who answers web)."""
    path = proxy.state_dir / "kproxy.state.json"
    served = harness.http_get(proxy.http_port, "web.test", timeout=5)
    answer = f"{served[0]} {served[1][:1].decode(errors='replace')}"
    return proxy.list_json(), path.read_bytes() if path.exists() else b"", answer


def full_disk(
    proxy: harness.Proxy, upstreams: list[harness.Upstream], rounds: int, problems: list[str]
) -> int:
    """Every command on the full disk, judged against the state before it: how many were
    tried; the violations go to ``problems``."""
    commands = [
        harness.deploy_line("web", [upstreams[1].address]),
        harness.deploy_line("other", [upstreams[1].address]),
        "pause web",
        "resume web",
        "stop web",
        "resume web",
        "remove web",
    ]
    tried = 0
    for _ in range(rounds):
        for line in commands:
            before = snapshot(proxy)
            answer = proxy.command(line)[-1]
            after = snapshot(proxy)
            tried += 1
            what = line.split(" --")[0]
            if answer.startswith("ERR") and after != before:
                kinds = ("list", "file", "traffic")
                changed = [k for k, b, a in zip(kinds, before, after, strict=True) if a != b]
                problems.append(f"{what!r}: {answer[:70]!r} but {', '.join(changed)} changed")
            if answer.startswith("OK") and after[1] == before[1]:
                problems.append(f"{what!r}: OK on a full disk, file same")
    return tried


def one_case(
    workers: int | None, rounds: int, directory: Path, problems: list[str]
) -> tuple[int, int]:
    """(commands tried on the full disk, tracebacks) for one worker count."""
    state = directory / "state"
    state.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(state)], check=True
    )
    upstreams = [harness.start_upstream(directory, n) for n in ("a", "b")]
    proxy = harness.new_proxy(directory, workers, state)
    try:
        proxy.start()
        proxy.ok(harness.deploy_line("web", [upstreams[0].address]))
        fill(state)
        tried = full_disk(proxy, upstreams, rounds, problems)
        (state / "filler").unlink()
        proxy.ok(harness.deploy_line("web", [upstreams[1].address]))
        proxy.ok("resume web")
        expected = proxy.list_json()
        proxy.kill9()
        proxy.start()
        if proxy.list_json() != expected:
            problems.append(f"after space returned, restart lost state: {proxy.list_json()}")
        proxy.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        readonly = harness.new_proxy(directory / "ro", workers, state)
        readonly.directory.mkdir()
        try:
            readonly.start(timeout=10)
            answer = readonly.command(harness.deploy_line("new", [upstreams[0].address]))[-1]
            if not answer.startswith("ERR"):
                problems.append(f"read-only state dir: deploy answered {answer!r}")
        except RuntimeError as exc:
            if "Traceback" in str(exc) or not str(exc).strip():
                problems.append(f"read-only state dir at start: {str(exc)[-200:]!r}")
        finally:
            readonly.stop()
        if readonly.tracebacks():
            problems.append("read-only state dir: a traceback")
        return tried, proxy.tracebacks()
    finally:
        proxy.stop()
        for upstream in upstreams:
            upstream.stop()
        for _ in range(20):
            if subprocess.run(["umount", str(state)], check=False).returncode == 0:
                break
            time.sleep(0.2)


def run(short: bool, seed: int) -> Result:
    del seed  # deterministic
    if os.geteuid() != 0:
        return Result(NAME, "skipped: mounting a tmpfs needs root", GOAL, True, skipped=True)
    figures, details, passed = [], [], True
    for workers in (None, 1):
        label = "default workers" if workers is None else "1 worker"
        problems: list[str] = []
        with harness.workdir(NAME) as directory:
            tried, tracebacks = one_case(workers, ROUNDS[short], directory, problems)
        passed = passed and not problems and not tracebacks
        details += [f"{label}: {problem}" for problem in problems]
        figures.append(
            f"{label}: {tried} commands on a full disk, {len(problems)} violations, "
            f"{tracebacks} tracebacks"
        )
    return Result(NAME, "; ".join(figures), GOAL, passed, details[:8])


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
