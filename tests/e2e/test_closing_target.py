"""A target that closes each keep-alive connection right after answering (issue 14,
scenario 8): a POST that kproxy sends on such a connection just as the target closes it
never reaches the target, and goes again on a fresh connection, body and all.

The target is a separate process with a thread per connection, so the gap between its answer
and its close is as wide as a busy server's.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio

from kproxy import DeploymentOptions, TargetOptions
from tests.helpers import guard, receive_until, start_proxy, unused_port


async def receive_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


TARGET = """
import os, socket, sys, threading
server = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=256)
def serve(conn):
    data = b""
    while not data.endswith((b"\\r\\n\\r\\n", b"hello")):  # a GET /up, or a whole POST
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if data.startswith(b"POST") and not data.endswith(b"hello"):
        data += conn.recv(65536)  # its body, when it came apart from the head
    if data.startswith(b"POST"):
        with lock:
            posts[0] += 1
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
    conn.close()  # no Connection: close; the proxy may reuse it
def report():
    sys.stdin.read()
    print(posts[0], flush=True)
    os._exit(0)
posts, lock = [0], threading.Lock()
threading.Thread(target=report).start()
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""

POST = b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"


@guard(60)
async def test_posts_to_a_target_that_closes_after_each_answer_fail_only_unread_never_doubled(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = unused_port()
    target = await trio.lowlevel.open_process(
        [sys.executable, "-c", TARGET, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert target.stdin is not None
    assert target.stdout is not None
    try:
        proxy, logs = await start_proxy(nursery, tmp_path, state=False)
        address = f"127.0.0.1:{port}"
        options = DeploymentOptions(targets=(address,), target=TargetOptions())
        await proxy.deploy("web", options)
        statuses: Counter[int] = Counter()

        async def client(count: int) -> None:
            async with await trio.open_tcp_stream("127.0.0.1", proxy.http_port) as stream:
                for _ in range(count):
                    await stream.send_all(POST)
                    answer = await receive_until(stream, b"\r\n\r\n")
                    head, _, body = answer.partition(b"\r\n\r\n")
                    length = int(head.lower().partition(b"content-length: ")[2].split()[0])
                    while len(body) < length:
                        body += await stream.receive_some()
                    statuses[int(head[9:12])] += 1

        async with trio.open_nursery() as clients:
            for _ in range(16):
                clients.start_soon(client, 250)
        # Before the retry, 1 POST in 50 to 100 raced a close (scenario 8). What is left are
        # races in which the target's kernel had acknowledged the POST before resetting the
        # connection: as far as anyone can tell, the target may have read it, so it is not
        # sent again (core/tcp_info.py; the unread case is tests/e2e/test_pool.py's). How many
        # is the scheduler's doing: a few in 4,000 on a quiet machine, up to 1.5 % when other
        # work loads it (the target's close then lags its answer). What must hold whatever
        # the load is below: each failure is a POST the target never read, none went twice.
        # The rate at scale is the campaign's (reliability/target_faults.py: <= 0.5 %).
        failed = 4000 - statuses[200]
        assert set(statuses) <= {200, 502}
        assert failed <= 160, [r["error"] for r in logs.records("Proxy error")]
    finally:
        await target.stdin.aclose()  # it prints how many POSTs it got, and exits
        try:
            with trio.fail_after(10):
                out = await receive_all(target.stdout)
                await target.wait()
        finally:
            target.kill()  # no-op once it has exited; never left behind
    # Each answered POST reached the target once, and no failed one reached it: none twice.
    assert int(out) == statuses[200]
