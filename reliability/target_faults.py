"""Scenario 8: target faults.

Goal: only the faulty targets' requests fail, and as documented (502 for a reset, garbage or a
close; 504 once ``--target-timeout`` passes without a response head; a response whose head was
already relayed may only be cut short, never hang: a target that sends no byte of the body
for ``--target-timeout`` has it cut then, within a few seconds); a healthy service on the
same proxy sees 0 errors meanwhile; against a target that closes each keep-alive connection
right after answering, 0 GETs fail and at most 0.5 % of POSTs get a 502 (below); and once the
faults stop, each pool serves again at once (0 errors).

The closing target's POSTs: kproxy sends a POST again on a fresh connection when the target's
kernel acknowledged none of it (README "Buffering"), but when the target's kernel acknowledged
it just before the close reset the connection, kproxy cannot know whether the target read it,
and a POST that may have been received is never sent twice: that one gets a 502 (Go's
transport has the same limit). Seen from outside, that race and a retry kproxy failed to make
look alike, so the goal bounds them: at most CLOSE_RACE_BOUND of the closing target's requests
may be a POST answered 502 (about 1 in 300 was measured, tests/e2e/test_closing_target.py has
the same bound), GETs none.

Six services on one ``kproxy run`` (default workers, then ``--workers 1``): ``good`` and one
per fault of reliability/upstream.py: ``reset``, ``garbage``, ``silent``, ``close``, ``stall``.
Clients send GETs and POSTs over keep-alive connections to all of them at the same time; each
answer is judged against what that fault allows. Then the faults are switched off (the
targets heal in place, the proxy's pools are not told) and every service must answer 200.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from reliability import harness, wire
from reliability.scenario import Result, standalone

NAME: Final = "target_faults"
GOAL: Final = (
    "faults fail only their own requests as documented; good 0 errors; close 0 GET errors,"
    " ≤ 0.5 % acked-POST 502s; heal"
)
FAULTS: Final = ("reset", "garbage", "silent", "close", "stall")
REQUESTS: Final = {True: {"fast": 150, "slow": 2}, False: {"fast": 3000, "slow": 30}}  # per client
CLIENTS: Final = 2  # per service
TARGET_TIMEOUT: Final = 2.0  # seconds (--target-timeout)
CLIENT_TIMEOUT: Final = 10.0  # seconds: no answer (or no more of it) by then is a hang
CLOSE_RACE_BOUND: Final = 0.005  # of the closing target's requests: POSTs acked, then reset
CLOSE_RACE: Final = "502 POST"  # the outcome that race gives
# The bound as a count is never below this: 0.5 % of the short size's ~300 requests is 1, and
# at the rate seen (about 1 in 300 there) two in one run is chance, not a changed rate.
MIN_CLOSE_RACES: Final = 3
ALLOWED: Final = {  # fault → statuses allowed; "cut" is a 200 whose body stops short
    "none": {"200"},
    "close": {"200"},
    "reset": {"502", "cut"},
    "garbage": {"502"},
    "silent": {"504"},
    "stall": {"504", "cut"},
}


def judge(response: wire.Response) -> str:
    if response.status == 200 and not response.complete:
        return "cut"
    return str(response.status) if response.status else "closed"


def client(port: int, service: str, fault: str, count: int, seed: int) -> dict[str, int]:
    """``count`` requests over keep-alive connections; outcome → how many."""
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    sock: socket.socket | None = None
    for _ in range(count):
        method = rng.choice(["GET", "POST"])
        body = bytes(rng.randrange(65, 91) for _ in range(rng.randrange(1, 2000)))
        data = wire.request(method, f"{service}.test", "/x", body if method == "POST" else b"")
        started = time.monotonic()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
            sock.sendall(data)
            response = wire.read_response(sock)
            outcome = judge(response)
            if response.status == 200 and response.complete and fault in ("none", "close"):
                expected = f"{service} {method} {len(body) if method == 'POST' else 0}"
                outcome = "200" if response.body.decode() == expected else "wrong body"
            if fault == "close" and outcome == "502" and method == "POST":
                outcome = CLOSE_RACE
            if fault in ("silent", "stall") and time.monotonic() - started > TARGET_TIMEOUT + 3:
                outcome = f"late {outcome}"  # a 504 or a cut body, not by --target-timeout
        except TimeoutError:
            outcome = "hang"
            response = wire.Response(0, b"", False, False)
        except OSError as exc:
            outcome = f"error {type(exc).__name__}"
            response = wire.Response(0, b"", False, False)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if not (response.complete and response.keep_alive) and sock is not None:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return outcomes


def one_round(workers: int | None, short: bool, seed: int) -> tuple[dict[str, dict[str, int]], int]:
    """Outcomes per service (and, as ``healed <service>``, after the faults stopped)."""
    with harness.workdir(NAME) as directory:
        targets = {"good": harness.start_upstream(directory, "good")}
        targets |= {f: harness.start_upstream(directory, f, fault=f) for f in FAULTS}
        proxy = harness.new_proxy(directory, workers)
        proxy.start()
        try:
            for service, upstream in targets.items():
                proxy.ok(
                    harness.deploy_line(
                        service, [upstream.address], f"--target-timeout {TARGET_TIMEOUT:g}s"
                    )
                )
            jobs = []
            for index, (service, fault) in enumerate([("good", "none"), *((f, f) for f in FAULTS)]):
                size = "slow" if fault in ("silent", "stall") else "fast"
                for c in range(CLIENTS if service != "good" else 2 * CLIENTS):
                    count = REQUESTS[short][size] * (3 if service == "good" else 1)
                    jobs.append((service, fault, count, seed * 1000 + index * 10 + c))
            outcomes: dict[str, dict[str, int]] = {}
            lock = threading.Lock()

            def work(job: tuple[str, str, int, int]) -> None:
                service, fault, count, job_seed = job
                got = client(proxy.http_port, service, fault, count, job_seed)
                with lock:
                    mine = outcomes.setdefault(service, {})
                    for key, n in got.items():
                        mine[key] = mine.get(key, 0) + n

            with ThreadPoolExecutor(len(jobs)) as pool:
                list(pool.map(work, jobs))
            for fault in FAULTS:
                harness.http_get(targets[fault].port, "x", "/__fault?none")
            for service in targets:
                outcomes[f"healed {service}"] = client(proxy.http_port, service, "none", 20, seed)
            tracebacks = proxy.tracebacks()
        finally:
            proxy.stop()
            for upstream in targets.values():
                upstream.stop()
    return outcomes, tracebacks


def run(short: bool, seed: int) -> Result:
    parts, details = [], []
    passed = True
    for workers in (None, 1):
        outcomes, tracebacks = one_round(workers, short, seed)
        label = "default workers" if workers is None else "1 worker"
        wrong = {}
        close_races = outcomes.get("close", {}).get(CLOSE_RACE, 0)
        close_requests = sum(outcomes.get("close", {}).values())
        races_allowed = max(int(CLOSE_RACE_BOUND * close_requests), MIN_CLOSE_RACES)
        for service, got in outcomes.items():
            fault = "none" if service == "good" or service.startswith("healed") else service
            bad = {k: n for k, n in got.items() if k not in ALLOWED[fault]}
            if service == "close" and close_races <= races_allowed:
                bad.pop(CLOSE_RACE, None)  # the documented race, within its bound
            if bad:
                wrong[service] = bad
        good_errors = sum(wrong.get("good", {}).values())
        close_errors = sum(wrong.get("close", {}).values())
        healed_errors = sum(sum(v.values()) for k, v in wrong.items() if k.startswith("healed"))
        others = sum(
            sum(v.values())
            for k, v in wrong.items()
            if k not in ("good", "close") and not k.startswith("healed")
        )
        total = sum(sum(v.values()) for v in outcomes.values())
        passed = passed and not wrong and not tracebacks
        parts.append(
            f"{label}: {total} requests, good {good_errors} errors, close "
            f"{close_errors} errors ({close_races} acked-POST 502s, ≤ {races_allowed} allowed), "
            f"other faults {others} undocumented outcomes, "
            f"healed {healed_errors} errors, {tracebacks} tracebacks"
        )
        details += [
            f"{label} {service}: {got}" for service, got in outcomes.items() if service in wrong
        ]
    return Result(NAME, "; ".join(parts), GOAL, passed, details)


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
