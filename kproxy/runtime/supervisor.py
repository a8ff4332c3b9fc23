"""``kproxy run --workers N``: one supervisor process, N worker processes serving HTTP.

The supervisor owns what must be single: the control socket, the state file, the health checks
and the router that decides (runtime/router.py, unchanged). It serves no HTTP. Each worker
(runtime/worker.py) listens on the same port with SO_REUSEPORT and routes with a replica of the
router's state, sent whole to a new worker and then, after every change, the services it
changed, over the worker's channel (runtime/worker_channel.py, core/worker_protocol.py). The
router waits, through the ``Replicas`` hooks (runtime/worker_links.py ``Workers``), until every
worker has applied a cutover, and sums the drains the workers report, so a command's answer
means the same as with one process.

A worker that exits is started again with the current state. SIGTERM asks every worker to
finish its requests within the grace period; a second signal cuts them off.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from typing import Any, Final

import attrs
import trio
from prometheus_client import CollectorRegistry

from kproxy.core import worker_protocol as wp
from kproxy.core.options import RunOptions
from kproxy.errors import KProxyError
from kproxy.runtime.acme_workers import answer_worker
from kproxy.runtime.listen import reserve_port
from kproxy.runtime.log import Logger
from kproxy.runtime.metrics import WorkerMetrics
from kproxy.runtime.proxy import Frontend, Proxy
from kproxy.runtime.router import Router
from kproxy.runtime.worker_channel import WorkerChannel
from kproxy.runtime.worker_links import WorkerLink, Workers

WORKER_START_TIMEOUT: Final = 30.0  # seconds from spawning a worker to its "ready"
EXIT_TIMEOUT: Final = 2.0  # seconds a worker gets to exit once told to, before SIGKILL
RESTART_DELAY: Final = (0.1, 1.0)  # seconds: first restart, and the cap when crash-looping
STABLE_AFTER: Final = 10.0  # seconds a worker must run for a crash loop to count as over
RECEIVE_SIZE: Final = 65536  # bytes per read from a worker's stdout


@attrs.define(eq=False)
class WorkerPool:
    """The ``Frontend`` of ``run --workers N``: N worker processes take the HTTP connections,
    each kept running; this process holds the port for them (runtime/listen.py)."""

    options: RunOptions
    logger: Logger
    workers: Workers = attrs.field(factory=Workers)
    http_port: int = 0
    https_port: int | None = None
    metrics: WorkerMetrics | None = None  # with --metrics-port: the workers' values
    _reserved: list[socket.socket] = attrs.field(factory=list)
    _stopping: bool = False

    async def open(self) -> tuple[int, int | None]:
        self._reserved = await reserve_port(self.options.bind, self.options.http_port)
        self.http_port = self._reserved[0].getsockname()[1]
        if self.options.https_port is not None:
            try:
                tls = await reserve_port(self.options.bind, self.options.https_port)
            except BaseException:
                self.close()
                raise
            self._reserved += tls
            self.https_port = tls[0].getsockname()[1]
        if self.options.metrics_port:
            self.metrics = WorkerMetrics()
        return self.http_port, self.https_port

    def metrics_registry(self) -> CollectorRegistry | None:
        return self.metrics.registry if self.metrics is not None else None

    def replicas(self, router: Router) -> Workers:
        self.workers.router, self.workers.logger = router, self.logger
        return self.workers

    async def start(
        self, router: Router, nursery: trio.Nursery, connections: trio.Nursery
    ) -> dict[str, Any]:
        """Start every worker; returns once each serves."""
        await self._start_workers(nursery)
        return {"workers": self.options.workers}

    def begin_shutdown(self) -> dict[str, Any]:
        self._stopping = True  # workers that exit now are not started again
        return {"workers": len(self.workers.links)}

    async def shutdown(self, grace: float) -> None:
        """Each worker stops accepting and gives its in-flight requests up to ``grace``
        seconds. Cancelling this cuts them off at once."""
        links = list(self.workers.links.values())
        for link in links:
            link.send_nowait({"type": "shutdown", "grace": grace})
        try:
            with trio.move_on_after(grace + EXIT_TIMEOUT):
                for link in links:
                    while link.alive:
                        await link.changed.wait()
        finally:
            for link in links:
                link.send_nowait({"type": "abort"})

    def close(self) -> None:
        for sock in self._reserved:
            sock.close()
        if self.metrics is not None:
            self.metrics.close()

    # --- workers ----------------------------------------------------------------------------

    async def _start_workers(self, nursery: trio.Nursery) -> None:
        failures: list[KProxyError] = []

        async def start(index: int) -> None:
            try:
                await nursery.start(self._keep_worker, index)
            except KProxyError as exc:
                failures.append(exc)

        async with trio.open_nursery() as starting:
            for index in range(1, self.options.workers + 1):
                starting.start_soon(start, index)
        if failures:
            raise failures[0]

    async def _keep_worker(
        self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run worker ``index``, and run it again whenever it exits, until shutdown."""
        delay = RESTART_DELAY[0]
        first = True
        while True:
            began = trio.current_time()
            try:
                link = await self._spawn(index)
            except OSError as exc:
                if first:
                    raise KProxyError(f"cannot start worker {index}: {exc}") from exc
                self.logger.error("Cannot start a worker", worker=index, error=str(exc))
                await trio.sleep(RESTART_DELAY[1])
                continue
            assert link.process.stdout is not None
            output = OutputRelay(link.process.stdout)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._talk, link, nursery.cancel_scope)
                    nursery.start_soon(output.run)
                    if first:
                        with trio.move_on_after(WORKER_START_TIMEOUT):
                            await link.ready.wait()
                        if not link.pid:
                            nursery.cancel_scope.cancel()
                        else:
                            first = False
                            task_status.started()
            finally:
                link.died()
                if self.workers.links.get(index) is link:
                    del self.workers.links[index]
                link.channel.stream.socket.close()  # the worker sees EOF and exits at once
                status = await _reap(link.process)
                if self.metrics is not None:
                    self.metrics.worker_exited(link.process.pid)
                with trio.move_on_after(EXIT_TIMEOUT, shield=True):
                    await output.run()  # the worker's last lines, up to its exit
                    await output.stream.aclose()
            if first:
                raise KProxyError(f"worker {index} did not start (exit status {status})")
            if self._stopping:
                self.logger.info("Worker exited", worker=index, pid=link.pid, status=status)
                return
            delay = RESTART_DELAY[0] if trio.current_time() - began > STABLE_AFTER else delay
            self.logger.error(
                "Worker exited; restarting it",
                worker=index,
                pid=link.pid,
                status=status,
                restart_in_seconds=delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY[1])

    async def _spawn(self, index: int) -> WorkerLink:
        ours, theirs = socket.socketpair()
        config = attrs.asdict(
            attrs.evolve(
                self.options,
                socket_path="",
                state_dir="",
                http_port=self.http_port,
                https_port=self.https_port,
                workers=1,
            )
        )
        try:
            argv = [sys.executable, "-m", "kproxy.runtime.worker", str(theirs.fileno())]
            process = await trio.lowlevel.open_process(
                [*argv, str(index), json.dumps(config)],
                pass_fds=(theirs.fileno(),),
                stdout=subprocess.PIPE,  # relayed whole lines: see OutputRelay
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
                env=self.metrics.environment() if self.metrics is not None else None,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        channel = WorkerChannel(stream, handle_request=self._answer)
        link = WorkerLink(index, process, channel, self.logger)
        link.send_nowait(self.workers.state_message())  # its first state: the current one
        self.workers.links[index] = link
        return link

    async def _answer(self, message: wp.Message) -> wp.Message:
        """A worker's request: certificates and HTTP-01 tokens (runtime/acme_workers.py)."""
        assert self.workers.router is not None
        return await answer_worker(self.workers.router, message)

    async def _talk(self, link: WorkerLink, done: trio.CancelScope) -> None:
        """Carry the link's messages both ways until the worker goes away."""
        try:
            await link.channel.serve()
        except wp.ChannelError as exc:  # a bug: drop this worker; a new one starts
            self.logger.error("Worker channel broken", worker=link.index, error=str(exc))
        done.cancel()


def _worker_pool(proxy: Proxy) -> Frontend:
    return WorkerPool(proxy.options, proxy.logger)


@attrs.define(eq=False)
class Supervisor(Proxy):
    """``Proxy`` for ``run --workers N`` (N > 1): same commands, HTTP served by N processes."""

    frontend: Frontend = attrs.field(
        default=attrs.Factory(_worker_pool, takes_self=True), kw_only=True
    )


@attrs.define(eq=False)
class OutputRelay:
    """Copy a worker's stdout to ours in whole lines.

    Workers write their log lines in batches, and a write to a pipe longer than PIPE_BUF
    (4 KiB) may interleave with another process's: with one shared stdout, two workers' batches
    could cut each other's JSON lines. Here only this process writes stdout.
    """

    stream: trio.abc.ReceiveStream
    _pending: bytes = b""
    _done: bool = False

    async def run(self) -> None:
        """Relay until the worker's stdout ends; cancel and call again to go on."""
        while not self._done:
            chunk = await self.stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                self._done = True
                _write_stdout(self._pending)
                return
            data = self._pending + chunk
            cut = data.rfind(b"\n") + 1
            self._pending = data[cut:]
            _write_stdout(data[:cut])


def _write_stdout(data: bytes) -> None:
    if not data:
        return
    # Our own Logger flushes after each write, so nothing of ours is held in sys.stdout.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


async def _reap(process: trio.Process) -> int | None:
    """Wait for a worker told to exit (or gone); SIGKILL it if it takes too long."""
    with trio.move_on_after(EXIT_TIMEOUT, shield=True):
        return await process.wait()
    process.kill()
    with trio.move_on_after(EXIT_TIMEOUT, shield=True):
        return await process.wait()
    return process.returncode
