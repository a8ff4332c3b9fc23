"""Scenario 3: HTTP fuzzing.

Goal: 0 crashes (the proxy and its workers keep their pids), 0 hangs (every connection ends
within 15 s of the client's half-close), 0 500s (the target never answers 500, so any 500 is
kproxy's), the prober never fails, and every request the target receives is well-framed (the
target parses with h11 and counts what it refuses, and any request-target that is not
origin-form or ``OPTIONS *``: issue 14 wants ``GET ?p`` answered 400 and ``CONNECT host:port``
405, neither forwarded).

Seeded and reproducible: each connection carries 1 to 8 requests, pipelined (one is a fresh
connection, more reuse it), then half-closes and reads everything. A request is a valid GET or
POST (Content-Length or chunked body) put through one to three mutations: bytes flipped,
inserted, deleted, duplicated or cut off; random bytes; conflicting framing (Content-Length
with Transfer-Encoding, two lengths, bad or huge chunk sizes, unknown codings); oversized heads
and fields; bad request-targets; bare LF, obs-fold, spaces before the colon; and garbage
pipelined after a valid request.
"""

from __future__ import annotations

import random
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from reliability import harness
from reliability.prober import Prober
from reliability.scenario import Result, standalone

NAME: Final = "http_fuzz"
GOAL: Final = "0 crashes, 0 hangs, 0 500s, prober 0 failures, target gets only well-framed"
REQUESTS: Final = {True: 50_000, False: 1_000_000}
CLIENTS: Final = 8
HANG: Final = 15.0  # seconds from the half-close to the proxy's close
STATUS: Final = re.compile(rb"HTTP/1\.[01] (\d{3}) ")

TARGETS: Final = [
    b"/",
    b"/a?b=c",
    b"?p",
    b"*",
    b"http://fuzz.test/x",
    b"fuzz.test:80",
    b"//x",
    b"/%00",
    b"/" + b"a" * 9000,
    b"/\xff",
    b"/a b",
    b"",
    b"/../../etc/passwd",
]
METHODS: Final = [
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b"OPTIONS",
    b"CONNECT",
    b"DELETE",
    b"G T",
    b"get",
    b"PRI",
    b"\x00",
]
FRAMING: Final = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: 0x10\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\tchunked\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Content-Length : 3\r\n",
    b"X-Folded: a\r\n b\r\n",
    b"Host: a\r\nHost: b\r\n",
    b"Bare: lf\n",
    b"NoColon\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"Expect: 100-continue\r\n",
    b"X-Big: " + b"b" * 70000 + b"\r\n",
]
CHUNKS: Final = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffff\r\nx\r\n",
    b"5\r\nhi\r\n0\r\n\r\n",
    b"-1\r\n\r\n",
    b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
    b"0x5\r\nhello\r\n",
    b"5\nhello\n0\n\n",
    b"1\r\na\r\n",
]


def valid(rng: random.Random) -> bytes:
    host = b"Host: fuzz.test\r\n"
    if rng.random() < 0.5:
        return b"GET /v HTTP/1.1\r\n" + host + b"\r\n"
    body = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 64)))
    if rng.random() < 0.5:
        return b"POST /v HTTP/1.1\r\n%bContent-Length: %d\r\n\r\n%b" % (host, len(body), body)
    return (
        b"POST /v HTTP/1.1\r\n%bTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
        % (host, len(body), body)
        if body
        else b"GET /v HTTP/1.1\r\n" + host + b"\r\n"
    )


def crafted(rng: random.Random) -> bytes:
    method, target = rng.choice(METHODS), rng.choice(TARGETS)
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b""])
    head = b"%b %b %b\r\nHost: fuzz.test\r\n" % (method, target, version)
    head += b"".join(rng.sample(FRAMING, rng.randrange(0, 3)))
    return head + b"\r\n" + rng.choice([b"", b"hello", *CHUNKS])


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 2:
            del buf[at : at + rng.randrange(1, 16)]
        elif op == 3:
            buf[at:at] = buf[at : at + rng.randrange(1, 64)]
        elif op == 4:
            del buf[at:]
        else:
            buf[at:at] = rng.choice([b"\r\n", b"\n", b"\r", b":", b" ", b"\x00", b"\r\n\r\n"])
    return bytes(buf)


def one_request(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind < 3:
        return valid(rng)
    if kind < 6:
        return mutate(rng, valid(rng))
    if kind < 8:
        return crafted(rng)
    if kind == 8:
        return mutate(rng, crafted(rng))
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))


def connections(seed: int, total: int) -> list[tuple[int, bytes]]:
    """(request count, bytes) per connection, all decided by the seed."""
    rng = random.Random(seed)
    made: list[tuple[int, bytes]] = []
    count = 0
    while count < total:
        requests = [one_request(rng) for _ in range(rng.choice([1, 1, 2, 3, 8]))]
        made.append((len(requests), b"".join(requests)))
        count += len(requests)
    return made


def run(short: bool, seed: int) -> Result:
    total = REQUESTS[short]
    hangs = errors_500 = sent = 0
    statuses: dict[bytes, int] = {}
    samples: list[str] = []
    lock = threading.Lock()
    with harness.workdir(NAME) as directory:
        target = harness.start_upstream(directory, "fuzz")
        probe = harness.start_upstream(directory, "probe")
        proxy = harness.new_proxy(directory, None)
        proxy.start()
        try:
            proxy.ok(harness.deploy_line("probe", [probe.address]))
            proxy.ok(
                harness.deploy_line("fuzz", [target.address]).replace("--host fuzz.test", "")
            )  # the default service: any host
            pids = proxy.tree()
            prober = Prober(proxy.http_port, "probe.test").start()

            def send(count: int, payload: bytes) -> None:
                nonlocal hangs, errors_500, sent
                data = b""
                try:
                    with socket.create_connection(("127.0.0.1", proxy.http_port), HANG) as sock:
                        try:
                            sock.sendall(payload)
                            sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass  # the proxy refused the rest and closed: read what it said
                        while chunk := sock.recv(65536):
                            data += chunk
                    hung = False
                except TimeoutError:
                    hung = True
                except OSError:
                    hung = False  # reset after an error answer: the proxy ended it
                found = STATUS.findall(data)
                with lock:
                    sent += count
                    hangs += hung
                    for status in found:
                        statuses[status] = statuses.get(status, 0) + 1
                    if b"500" in found or hung:
                        errors_500 += b"500" in found
                        if len(samples) < 5:
                            samples.append(f"{'hang' if hung else '500'}: {payload[:150]!r}")

            # Generated in slices so memory stays small at 10^6 requests.
            rng = random.Random(seed)
            done = 0
            with ThreadPoolExecutor(CLIENTS) as pool:
                while done < total:
                    chunk = connections(rng.randrange(2**32), min(5000, total - done))
                    done += sum(count for count, _ in chunk)
                    list(pool.map(lambda c: send(*c), chunk))
            prober.stop()
            crashed = [pid for pid in pids if not harness.alive(pid)]
            crashed += [] if set(proxy.tree()) == set(pids) else ["new worker pids"]  # type: ignore[list-item]
            stats = target.stats()
            tracebacks = proxy.tracebacks()
            if stats.get("malformed") or stats.get("bad_target"):
                seen = harness.http_get(target.port, "x", "/__malformed")[1].decode().splitlines()
                samples.append("target saw: " + "; ".join(sorted(set(seen))[:6]))
        finally:
            proxy.stop()
            target.stop()
            probe.stop()
    malformed = stats.get("malformed", 0) + stats.get("bad_target", 0)
    passed = not (crashed or hangs or errors_500 or prober.failures or malformed or tracebacks)
    top = ", ".join(
        f"{s.decode()}x{n}" for s, n in sorted(statuses.items(), key=lambda i: -i[1])[:6]
    )
    figure = (
        f"{sent} requests: {len(crashed)} crashes, {hangs} hangs, {errors_500} 500s, "
        f"prober {len(prober.failures)}/{len(prober.latencies)} failed, target got "
        f"{stats.get('requests', 0)}: {stats.get('malformed', 0)} malformed, "
        f"{stats.get('bad_target', 0)} with a bad request-target; {tracebacks} tracebacks; "
        f"answers {top}"
    )
    return Result(NAME, figure, GOAL, passed, samples + prober.failures[:3])


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
