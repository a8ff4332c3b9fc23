"""Scenario 2: ``kill -9`` at random instants.

Goal: 0 lost acknowledged states, 0 torn or unreadable state files, 0 failed restarts, 0
orphaned workers, and every service serves after each restart.

Each iteration starts ``kproxy run`` on the same state directory (``--workers 1`` and the
default worker count in turn), checks that what it restored (``list --json``) equals the last
acknowledged state or that state with the command in flight applied, checks that each running
service answers from its target and each stopped one answers 503, then sends a random stream
of commands (deploy, remove, pause, stop, resume over three services and two targets) and
``kill -9``s it at a random moment: often mid-command, sometimes the supervisor alone (its
workers must then go away by themselves). The state file is read between the kill and the
next start: it must always be valid JSON. (Rollouts join the stream once kproxy has them.)
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Final

import attrs

from reliability import harness
from reliability.scenario import Result, standalone

NAME: Final = "kill9"
GOAL: Final = "0 lost acked states, 0 torn files, 0 failed restarts, 0 orphans, all serve"
ITERATIONS: Final = {True: 12, False: 1000}  # short, full
SERVICES: Final = ("s0", "s1", "s2")
KILL_WINDOW: Final = 1.5  # seconds: the kill comes uniformly within this after the stream starts
ORPHAN_GRACE: Final = 5.0  # seconds the workers of a killed supervisor get to exit
SERVE_GRACE: Final = 5.0  # seconds a restored service gets to answer (first health check)

State = dict[str, tuple[str, str]]  # service → (target, running|paused|stopped)


@attrs.define
class Command:
    line: str
    service: str
    verb: str
    target: str = ""

    def apply(self, state: State) -> State:
        """The state after this command answered OK."""
        after = dict(state)
        current = state.get(self.service)
        if self.verb == "deploy":
            after[self.service] = (self.target, current[1] if current else "running")
        elif current is None:
            pass  # remove/pause/stop/resume of an absent service answer ERR
        elif self.verb == "remove":
            del after[self.service]
        else:
            new = {"pause": "paused", "stop": "stopped", "resume": "running"}[self.verb]
            after[self.service] = (current[0], new)
        return after


def random_command(rng: random.Random, targets: list[str]) -> Command:
    service = rng.choice(SERVICES)
    verb = rng.choices(["deploy", "remove", "pause", "stop", "resume"], [5, 1, 1, 1, 2])[0]
    if verb == "deploy":
        target = rng.choice(targets)
        return Command(harness.deploy_line(service, [target]), service, verb, target)
    return Command(f"{verb} {service}", service, verb)


@attrs.define
class Stream:
    """Commands sent one after another until the proxy dies; OKs move ``acked``."""

    proxy: harness.Proxy
    rng: random.Random
    targets: list[str]
    acked: State
    in_flight: Command | None = None
    sent: int = 0

    def run(self) -> None:
        while True:
            command = random_command(self.rng, self.targets)
            self.in_flight = command
            try:
                lines = self.proxy.command(command.line, timeout=30)
            except (ConnectionRefusedError, FileNotFoundError):
                self.in_flight = None  # never reached the proxy
                return
            except (OSError, harness.ControlClosed):
                return  # killed: ``in_flight`` is the command it may or may not have applied
            self.sent += 1
            if lines[-1].startswith("OK"):
                self.acked = command.apply(self.acked)
            self.in_flight = None
            time.sleep(self.rng.choice((0.0, 0.0, 0.1)))  # so some kills fall between commands


def observed(proxy: harness.Proxy) -> State:
    return {
        str(s["name"]): (str(s["targets"][0]), str(s["state"]))  # type: ignore[index]
        for s in proxy.list_json()
    }


def state_file_readable(state_dir: Path) -> bool:
    path = state_dir / "kproxy.state.json"
    if not path.exists():
        return True  # nothing saved yet
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except ValueError:
        return False


def serves(proxy: harness.Proxy, state: State, names: dict[str, str]) -> list[str]:
    """Services that do not answer as their state says, after a grace period."""
    expected = {
        s: (503, "") if st == "stopped" else (200, names[t])
        for s, (t, st) in state.items()
        if st != "paused"
    }
    deadline = time.monotonic() + SERVE_GRACE
    while True:
        wrong = []
        for service, (status, body) in expected.items():
            got, text = harness.http_get(proxy.http_port, f"{service}.test", timeout=5)
            if got != status or not text.decode(errors="replace").startswith(body):
                wrong.append(f"{service}: {got} {text[:40]!r}, wanted {status} {body!r}")
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(0.05)


def run(short: bool, seed: int) -> Result:
    rng = random.Random(seed)
    lost = torn = failed_starts = orphans = not_serving = kills_mid_command = 0
    details: list[str] = []
    with harness.workdir(NAME) as directory:
        upstreams = [harness.start_upstream(directory, n) for n in ("a", "b")]
        names = {u.address: u.name for u in upstreams}
        targets = list(names)
        state_dir = directory / "state"
        acked: State = {}
        in_flight: Command | None = None
        iterations = ITERATIONS[short]
        proxy: harness.Proxy | None = None
        try:
            for iteration in range(iterations):
                workers = 1 if iteration % 2 == 0 else None  # None: kproxy's default
                proxy = harness.new_proxy(directory, workers, state_dir)
                if not state_file_readable(state_dir):
                    torn += 1
                    details.append(f"iteration {iteration}: state file unreadable")
                try:
                    proxy.start()
                except RuntimeError as exc:
                    failed_starts += 1
                    details.append(f"iteration {iteration}: restart failed: {exc}"[:300])
                    proxy.start()  # once more, or the scenario cannot go on
                restored = observed(proxy)
                possible = [acked] + ([in_flight.apply(acked)] if in_flight else [])
                if restored not in possible:
                    lost += 1
                    details.append(
                        f"iteration {iteration}: restored {restored}, acked {acked}, "
                        f"in flight {in_flight.line if in_flight else None}"
                    )
                wrong = serves(proxy, restored, names)
                if wrong:
                    not_serving += 1
                    details.append(f"iteration {iteration}: not serving: {wrong}")
                stream = Stream(proxy, random.Random(rng.random()), targets, restored)
                thread = threading.Thread(target=stream.run, daemon=True)
                thread.start()
                time.sleep(rng.uniform(0, KILL_WINDOW))
                supervisor_only = workers is None and rng.random() < 0.4
                pids = proxy.kill9(supervisor_only=supervisor_only)
                thread.join(timeout=60)
                kills_mid_command += stream.in_flight is not None
                acked, in_flight = stream.acked, stream.in_flight
                deadline = time.monotonic() + ORPHAN_GRACE
                while time.monotonic() < deadline and any(map(harness.alive, pids)):
                    time.sleep(0.05)
                left = [pid for pid in pids if harness.alive(pid)]
                if left:
                    orphans += len(left)
                    details.append(f"iteration {iteration}: orphaned {left}")
                    harness.kill_pids(left)
            tracebacks = proxy.tracebacks() if proxy else 0
        finally:
            if proxy is not None:
                proxy.kill_all()  # already dead unless something went wrong
            for upstream in upstreams:
                upstream.stop()
    passed = not (lost or torn or failed_starts or orphans or not_serving or tracebacks)
    figure = (
        f"{iterations} kills ({kills_mid_command} mid-command): {lost} lost, {torn} torn, "
        f"{failed_starts} failed restarts, {orphans} orphans, {not_serving} not serving, "
        f"{tracebacks} tracebacks"
    )
    return Result(NAME, figure, GOAL, passed, details[:10])


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
