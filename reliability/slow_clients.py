"""Scenario 5: slow and greedy clients.

Goal: a healthy client's p99 stays within 2x its baseline while the slow clients are
connected, every slow connection is cut off by the timeout README "Limits" documents for
it, within a few seconds of it (30 s for a whole request head; 30 s plus a second per KiB for
a body read for ``--buffer-requests``; ``--target-timeout``, 30 s, for a body streamed to a
target that waits for all of it; the 60 s send timeout for a client that takes no byte of its
response), and memory stays bounded (the proxy's RSS grows by less than 100 KiB per slow
connection).

Four kinds of slow connection, the same number of each, all open at once for 75 s (the
60 s send timeout plus a margin): request heads trickled at 1 byte/s; request bodies trickled
at 1 byte/s to a service with ``--buffer-requests`` and to one without; and ``GET /big`` (8 MiB)
read at 1 byte/s through a small receive buffer (its kernel then opens no window for far
longer than the send timeout: the proxy sees no byte taken). A prober measures a healthy
client's latency on its own service before (the baseline) and during.

A cut reader is seen without reading: the proxy resets the connection (its bytes still
unread would take the reader hours at 1 byte/s), so the socket's TCP state is CLOSE.
"""

from __future__ import annotations

import resource
import socket
import struct
import time
from typing import Final

import attrs

from reliability import harness
from reliability.prober import Prober, percentile
from reliability.scenario import Result, standalone

NAME: Final = "slow_clients"
GOAL: Final = "prober p99 ≤ 2x baseline, every slow conn cut by a documented timeout, RSS bounded"
PER_KIND: Final = {True: 100, False: 1000}
KINDS: Final = ("head", "body-buffered", "body-streamed", "reader")
BASELINE: Final = 8.0  # seconds
WINDOW: Final = 75.0  # seconds the slow clients stay
HEAD_TIMEOUT: Final = 30.0  # seconds, README "Limits"
BODY_TIMEOUT: Final = 30.0  # seconds (plus one per KiB received: nothing here), README "Limits"
SEND_TIMEOUT: Final = 60.0  # seconds, README "Limits"
SLACK: Final = 8.0  # seconds past a timeout that still counts as cut by it (1 s ticks)
SLOW_HEAD: Final = b"GET / HTTP/1.1\r\nHost: streamed.test\r\nX-Slow: "  # then "a" forever
TARGET_TIMEOUT: Final = 30.0  # seconds, --target-timeout's default
RSS_PER_CONNECTION: Final = 100  # KiB
TCP_CLOSED: Final = (7, 8)  # tcpi_state TCP_CLOSE (reset) and TCP_CLOSE_WAIT (the peer's FIN)


@attrs.define(eq=False)
class Slow:
    kind: str
    sock: socket.socket
    opened: float
    closed_after: float | None = None
    sent: int = 0  # bytes of a trickled head


def open_slow(port: int, kind: str) -> Slow:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "head":
        pass  # the head itself is trickled
    elif kind == "reader":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: streamed.test\r\n\r\n")
    else:
        host = "buffered.test" if kind == "body-buffered" else "streamed.test"
        sock.sendall(f"POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n".encode())
    sock.setblocking(False)
    return Slow(kind, sock, time.monotonic())


def tick(slow: Slow, now: float) -> None:
    """One second's worth: a byte sent (or read), and a close noticed."""
    try:
        if slow.kind == "head":
            slow.sent += slow.sock.send(SLOW_HEAD[slow.sent : slow.sent + 1] or b"a")
        elif slow.kind != "reader":
            slow.sock.send(b"a")
        elif tcp_state(slow.sock) in TCP_CLOSED:
            slow.closed_after = now - slow.opened
            return
        data = slow.sock.recv(1 if slow.kind == "reader" else 65536)
        if not data:
            slow.closed_after = now - slow.opened
    except BlockingIOError:
        pass
    except OSError:
        slow.closed_after = now - slow.opened


def tcp_state(sock: socket.socket) -> int:
    """The connection's TCP state, from TCP_INFO's first byte (Linux)."""
    state: int = struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]
    return state


def tree_rss(proxy: harness.Proxy) -> int:
    return sum(harness.rss_kib(pid) for pid in proxy.tree())


def run(short: bool, seed: int) -> Result:
    del seed  # deterministic
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    per_kind = PER_KIND[short]
    with harness.workdir(NAME) as directory:
        upstream = harness.start_upstream(directory, "app")
        probe = harness.start_upstream(directory, "probe")
        proxy = harness.new_proxy(directory, None)
        proxy.start()
        slows: list[Slow] = []
        try:
            proxy.ok(harness.deploy_line("probe", [probe.address]))
            proxy.ok(harness.deploy_line("streamed", [upstream.address]))
            proxy.ok(harness.deploy_line("buffered", [upstream.address], "--buffer-requests"))
            prober = Prober(proxy.http_port, "probe.test", interval=0.02).start()
            time.sleep(BASELINE)
            baseline = list(prober.latencies)
            rss_before = tree_rss(proxy)
            for _ in range(per_kind):
                slows += [open_slow(proxy.http_port, kind) for kind in KINDS]
            started = time.monotonic()
            rss_peak = 0
            while (now := time.monotonic()) < started + WINDOW:
                for slow in slows:
                    if slow.closed_after is None:
                        tick(slow, now)
                rss_peak = max(rss_peak, tree_rss(proxy))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            during = prober.latencies[len(baseline) :]
            prober.stop()
            tracebacks = proxy.tracebacks()
        finally:
            for slow in slows:
                slow.sock.close()
            proxy.stop()
            upstream.stop()
            probe.stop()
    p99_base, p99_during = percentile(baseline, 99), percentile(during, 99)
    # The documented timeouts: the head's, the buffered body's, --target-timeout for a
    # streamed body (the target waits for the rest of it, so no response head comes in time:
    # 504), and the send timeout for the reader (its buffers fill within a second).
    bounds = {
        "head": HEAD_TIMEOUT + SLACK,
        "body-buffered": BODY_TIMEOUT + SLACK,
        "body-streamed": TARGET_TIMEOUT + SLACK,
        "reader": SEND_TIMEOUT + SLACK,
    }
    parts, uncut = [], 0
    for kind in KINDS:
        mine = [s for s in slows if s.kind == kind]
        cut = [s.closed_after for s in mine if s.closed_after is not None]
        in_time = [t for t in cut if t <= bounds.get(kind, 0.0)]
        uncut += len(mine) - len(in_time)
        latest = f", last at {max(cut):.0f}s" if cut else ""
        parts.append(f"{kind} {len(cut)}/{len(mine)} cut{latest}")
    growth = rss_peak - rss_before
    ratio = p99_during / p99_base if p99_base else float("inf")
    passed = (
        ratio <= 2
        and uncut == 0
        and growth < RSS_PER_CONNECTION * len(slows)
        and not prober.failures
        and not tracebacks
    )
    figure = (
        f"{len(slows)} slow conns: prober p99 {p99_base * 1000:.1f}→{p99_during * 1000:.1f} ms "
        f"(x{ratio:.1f}), {len(prober.failures)} failed; "
        + ", ".join(parts)
        + f"; RSS +{growth / 1024:.0f} MB ({growth / len(slows):.0f} KiB/conn), "
        f"{tracebacks} tracebacks"
    )
    return Result(NAME, figure, GOAL, passed, prober.failures[:3])


if __name__ == "__main__":
    standalone(NAME, GOAL, run)
