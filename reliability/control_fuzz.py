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
service, and a deploy that could succeed carries a short ``--deploy-timeout``. The first half
of the connections go to a proxy at the default worker count, the second half to one with
``--workers 1``, where the control socket and HTTP share one process.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import attrs

from reliability import harness
from reliability.prober import Prober
from reliability.scenario import Result, standalone

NAME: Final = "control_fuzz"
GOAL: Final = "each line exactly 1 OK/ERR, prober 0 failures, 0 tracebacks"
LINES: Final = {True: 3000, False: 100_000}
CLIENTS: Final = 6  # connections at a time
LIMIT: Final = 65536  # bytes in a control line (protocol.md)
ANSWER_TIMEOUT: Final = 60.0  # seconds a batch's answers may take

Batch = tuple[list[bytes], str]  # lines sent on one connection, and answer|vanish|cut

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


@attrs.define
class Tally:
    """What one worker count's batches got back."""

    lines: int = 0  # sent in batches whose answers were read
    wrong: int = 0  # batches without exactly one final line per line
    stray: int = 0  # answer lines neither final nor indented
    vanished: int = 0  # connections that went away mid-line or mid-command
    problems: list[str] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def judge(self, lines: list[bytes], data: bytes) -> None:
        received = data.split(b"\n")
        finals = [a for a in received if a.startswith((b"OK", b"ERR"))]
        others = [a for a in received[:-1] if not a.startswith((b"OK", b"ERR", b"  "))]
        with self.lock:
            self.lines += len(lines)
            if len(finals) != len(lines) or received[-1] != b"":
                self.wrong += 1
                if len(self.problems) < 5:
                    self.problems.append(
                        f"{len(lines)} lines, {len(finals)} finals: "
                        f"{lines[0][:60]!r} → {data[-120:]!r}"
                    )
            if others:
                self.stray += len(others)
                if len(self.problems) < 5:
                    self.problems.append(f"stray answer line {others[0][:80]!r}")


def send(socket_path: str, batch: Batch, tally: Tally) -> None:
    lines, how = batch
    payload = b"".join(line + b"\n" for line in lines)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(payload[: len(payload) // 2] if how == "cut" else payload)
        if how != "answer":
            with tally.lock:
                tally.vanished += 1
            return
        sock.shutdown(socket.SHUT_WR)
        try:
            data = answers(sock)
        except OSError as exc:
            data = b""
            with tally.lock:
                tally.problems.append(f"no answers: {exc}")
    tally.judge(lines, data)


def one_case(
    workers: int | None, batches: list[Batch], directory: Path
) -> tuple[Tally, Prober, bool, int]:
    """(answers, prober, still serves, tracebacks) for one worker count."""
    tally = Tally()
    upstream = harness.start_upstream(directory, "probe")
    proxy = harness.new_proxy(directory, workers)
    proxy.start()
    try:
        proxy.ok(harness.deploy_line("probe", [upstream.address]))
        prober = Prober(proxy.http_port, "probe.test").start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(lambda batch: send(str(proxy.socket_path), batch, tally), batches))
        time.sleep(0.5)
        prober.stop()
        still_serves = harness.http_get(proxy.http_port, "probe.test")[0] == 200
        return tally, prober, still_serves, proxy.tracebacks()
    finally:
        proxy.stop()
        upstream.stop()


def run(short: bool, seed: int) -> Result:
    rng = random.Random(seed)
    batches: list[Batch] = []
    made = 0
    while made < LINES[short]:
        lines = [random_line(rng) for _ in range(rng.randrange(1, 21))]
        made += len(lines)
        batches.append((lines, rng.choices(["answer", "vanish", "cut"], [18, 1, 1])[0]))
    half = len(batches) // 2
    figures, details, passed = [], [], True
    for workers, share in ((None, batches[:half]), (1, batches[half:])):
        label = "default workers" if workers is None else "1 worker"
        with harness.workdir(NAME) as directory:
            tally, prober, still_serves, tracebacks = one_case(workers, share, directory)
        passed = passed and still_serves
        passed = passed and not (tally.wrong or tally.stray or prober.failures or tracebacks)
        details += [f"{label}: {line}" for line in tally.problems + prober.failures[:3]]
        figures.append(
            f"{label}: {sum(len(b[0]) for b in share)} lines in {len(share)} connections "
            f"({tally.vanished} vanished): {tally.wrong} batches with wrong final count, "
            f"{tally.stray} stray lines, prober {len(prober.failures)}/{len(prober.latencies)} "
            f"failed (slowest {max(prober.latencies, default=0) * 1000:.0f} ms), "
            f"{tracebacks} tracebacks" + ("" if still_serves else ", no longer serves")
        )
    return Result(NAME, "; ".join(figures), GOAL, passed, details)


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
