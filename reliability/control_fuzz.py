"""Scenario 4: control channel fuzzing.

Goal: every line gets exactly one final ``OK``/``ERR`` (and every other answer line starts
with two spaces), the proxy keeps serving HTTP (a prober sees no failure), no traceback in
its output.

Seeded random lines, a batch per connection (1 to 20 lines, sent at once, then a half-close;
protocol.md: the proxy answers every line it received, then closes): random bytes, NUL,
non-UTF-8, unbalanced quotes, lines at the 65,536-byte limit and beyond, the commands' own
words in random order with unknown flags, bad durations, bad ports and valid-looking values.
One connection in ten vanishes instead: it closes mid-line or right after sending (its
answers are not counted, the proxy must just carry on). Every line starts with a letter, so
none is a comment or blank (those get no answer by design). Lines never name the prober's
service, and a deploy that could succeed carries a short ``--deploy-timeout``.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from reliability import harness
from reliability.prober import Prober
from reliability.scenario import Result, standalone

NAME: Final = "control_fuzz"
GOAL: Final = "each line exactly 1 OK/ERR, prober 0 failures, 0 tracebacks"
LINES: Final = {True: 3000, False: 100_000}
CLIENTS: Final = 6  # connections at a time
LIMIT: Final = 65536  # bytes in a control line (protocol.md)
ANSWER_TIMEOUT: Final = 60.0  # seconds a batch's answers may take

WORDS: Final = [
    "deploy",
    "remove",
    "pause",
    "stop",
    "resume",
    "list",
    "help",
    "version",
    "run",
    "rollout",
    "set",
    "--target",
    "--host",
    "--path-prefix",
    "--deploy-timeout",
    "--drain-timeout",
    "--health-check-interval",
    "--health-check-path",
    "--max-pause",
    "--message",
    "--json",
    "--force",
    "--tls",
    "--buffer-requests",
    "--max-request-body",
    "--no-such-flag",
    "--",
    "-x",
    "=",
    "svc",
    "other",
    "127.0.0.1:1",
    "127.0.0.1:0",
    "localhost:99999",
    "[::1]:80",
    "1s",
    "0",
    "-1s",
    "1x",
    "500ms",
    "1h2m",
    "99999999999h",
    "nan",
    "'",
    '"',
    "\\",
    "x'y",
    '"a b"',
    "'unterminated",
    "é",
    "\t",
    "--target=",
    "--host=*.x",
    "/",
    "%",
    "true",
    "false",
]


def random_line(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    elif kind == 1:
        body = rng.choice([b"\x00", b"list\x00", b"deploy \x00svc", b"\x00\x00\x00"])
    elif kind == 2:
        body = rng.choice(WORDS).encode() + bytes([rng.randrange(0x80, 0x100)]) + b"\xc3("
    elif kind == 3:
        size = rng.choice([LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT, rng.randrange(1, 2 * LIMIT)])
        body = bytes(rng.randrange(0x21, 0x7F) for _ in range(64)) * (size // 64 + 1)
        body = body[:size]
    else:
        count = rng.randrange(1, 12)
        words = [rng.choice(WORDS) for _ in range(count)]
        if kind == 4:
            words.insert(0, rng.choice(["deploy", "pause", "stop", "resume", "remove", "list"]))
        if "deploy" in words:
            words.append("--deploy-timeout=200ms")
        body = " ".join(words).encode()
    body = body.replace(b"\n", b"?")
    if body.rstrip(b"\r").endswith(b"\r"):
        body += b"x"
    return b"a" + body if not body[:1].isalpha() else body  # never blank, never a comment


def answers(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(ANSWER_TIMEOUT)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def run(short: bool, seed: int) -> Result:
    rng = random.Random(seed)
    total = LINES[short]
    batches: list[tuple[list[bytes], str]] = []
    made = 0
    while made < total:
        lines = [random_line(rng) for _ in range(rng.randrange(1, 21))]
        made += len(lines)
        batches.append((lines, rng.choices(["answer", "vanish", "cut"], [18, 1, 1])[0]))
    counted = wrong = stray = vanished = 0
    problems: list[str] = []
    lock = threading.Lock()
    with harness.workdir(NAME) as directory:
        upstream = harness.start_upstream(directory, "probe")
        proxy = harness.new_proxy(directory, None)
        proxy.start()
        try:
            proxy.ok(harness.deploy_line("probe", [upstream.address]))
            prober = Prober(proxy.http_port, "probe.test").start()

            def send(batch: tuple[list[bytes], str]) -> None:
                nonlocal counted, wrong, stray, vanished
                lines, how = batch
                payload = b"".join(line + b"\n" for line in lines)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(proxy.socket_path))
                    if how == "cut":
                        sock.sendall(payload[: len(payload) // 2])
                    else:
                        sock.sendall(payload)
                    if how != "answer":
                        with lock:
                            vanished += 1
                        return
                    sock.shutdown(socket.SHUT_WR)
                    try:
                        data = answers(sock)
                    except OSError as exc:
                        data = b""
                        with lock:
                            problems.append(f"no answers: {exc}")
                received = data.split(b"\n")
                finals = [a for a in received if a.startswith((b"OK", b"ERR"))]
                others = [a for a in received[:-1] if not a.startswith((b"OK", b"ERR", b"  "))]
                with lock:
                    counted += len(lines)
                    if len(finals) != len(lines) or received[-1] != b"":
                        wrong += 1
                        if len(problems) < 5:
                            problems.append(
                                f"{len(lines)} lines, {len(finals)} finals: "
                                f"{lines[0][:60]!r} → {data[-120:]!r}"
                            )
                    if others:
                        stray += len(others)
                        if len(problems) < 5:
                            problems.append(f"stray answer line {others[0][:80]!r}")

            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(send, batches))
            time.sleep(0.5)
            prober.stop()
            still_serves = harness.http_get(proxy.http_port, "probe.test")[0] == 200
            tracebacks = proxy.tracebacks()
        finally:
            proxy.stop()
            upstream.stop()
    passed = not (wrong or stray or prober.failures or tracebacks) and still_serves
    figure = (
        f"{made} lines in {len(batches)} connections ({vanished} vanished): "
        f"{wrong} batches with wrong final count, {stray} stray lines, "
        f"prober {len(prober.failures)}/{len(prober.latencies)} failed, "
        f"{tracebacks} tracebacks"
    )
    return Result(NAME, figure, GOAL, passed, problems + prober.failures[:3])


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
