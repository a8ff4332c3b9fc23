"""The proxy as one object: ``await nursery.start(proxy.serve)``, then command it from code.

``serve`` owns the root nursery: the control socket, the router's background work (health
checks, drains) and the frontend that takes the HTTP connections. Cancelling it stops
everything. The frontend is what differs between the three roles a proxy process plays:

- one process (``kproxy run``, embedding): ``Listeners``, serving HTTP and HTTPS here;
- the supervisor of ``run --workers N`` (runtime/supervisor.py): ``WorkerPool``, N processes;
- one of those workers (runtime/worker.py): ``Listeners`` on the shared port, with the state
  the supervisor sends; its options have no control socket and no state directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import attrs
import trio
from prometheus_client import CollectorRegistry

from kproxy._version import KAMAL_PROXY_COMPAT, __version__
from kproxy.core import command_parser
from kproxy.core import commands as cmd
from kproxy.core.help import help_text
from kproxy.core.listing import ServiceInfo, json_line, table_lines
from kproxy.core.options import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_PAUSE_TIMEOUT,
    DeploymentOptions,
    RunOptions,
)
from kproxy.errors import CommandError, DeployError, KProxyError
from kproxy.runtime import rollouts
from kproxy.runtime.acme_certificates import AcmeCertificates
from kproxy.runtime.certificates import AutomaticCertificates
from kproxy.runtime.control_server import (
    handle_control_connection,
    open_control_listener,
    unlink_socket,
)
from kproxy.runtime.http_server import HttpServer
from kproxy.runtime.listeners import Listeners
from kproxy.runtime.log import Logger
from kproxy.runtime.metrics import Exposition
from kproxy.runtime.metrics_server import MetricsServer, open_metrics_listeners
from kproxy.runtime.proxy_metrics import CommandMetrics, TargetHealthCollector
from kproxy.runtime.router import Progress, Replicas, Router, _no_progress
from kproxy.runtime.state_store import StateStore

SHUTDOWN_GRACE: Final = 10.0  # seconds in-flight requests get after SIGTERM


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


class Frontend(Protocol):
    """What takes the HTTP connections of a ``Proxy`` (see the module doc). ``Proxy.serve``
    calls ``open``, ``replicas`` and ``start`` in that order, and ``close`` as it ends;
    ``Proxy.shutdown`` calls ``begin_shutdown``, logs, then awaits ``shutdown``."""

    async def open(self) -> tuple[int, int | None]:
        """Take the HTTP and HTTPS ports (after the control socket, before the router);
        returns them (None: no HTTPS port, as ``RunOptions.https_port`` asks)."""

    def metrics_registry(self) -> CollectorRegistry | None:
        """What /metrics shows (after ``open``): this process's requests, or its workers';
        None when ``RunOptions.metrics_port`` is 0."""

    def replicas(self, router: Router) -> Replicas | None:
        """Who must follow ``router``'s changes: None when this process serves the requests."""

    async def start(
        self, router: Router, nursery: trio.Nursery, connections: trio.Nursery
    ) -> dict[str, Any]:
        """Begin serving with ``router`` (the restored one), in ``nursery``, client connections
        in ``connections``; returns the fields the start-up log line adds."""

    def begin_shutdown(self) -> dict[str, Any]:
        """Shutdown begins (stop accepting, if that needs no wait); returns the fields the
        "Shutting down" line adds."""

    async def shutdown(self, grace: float) -> None:
        """Give in-flight requests up to ``grace`` seconds; cancelling this cuts them off."""

    def close(self) -> None:
        """Release the port: ``serve`` is ending, however it ends."""


def _listeners(proxy: Proxy) -> Frontend:
    return Listeners(proxy.options, proxy.logger)


@attrs.define(eq=False)
class Proxy:
    """An HTTP reverse proxy with zero-downtime deploys.

    Args:
        options: where to listen and where to keep state. An empty ``socket_path`` means no
            control socket; an empty ``state_dir`` means nothing is saved (both are handy when
            embedding).
        logger: where JSON log lines go (stdout by default).
    """

    options: RunOptions
    logger: Logger = attrs.field(factory=Logger)
    http_port: int = 0  # the bound port, known once serve() has started
    https_port: int | None = None  # likewise; None: no HTTPS port (``RunOptions.https_port``)
    metrics: MetricsServer | None = None  # with --metrics-port, once serve() has started
    command_metrics: CommandMetrics | None = None  # likewise
    frontend: Frontend = attrs.field(
        default=attrs.Factory(_listeners, takes_self=True), kw_only=True
    )
    _router: Router | None = None
    _accepting: list[trio.CancelScope] = attrs.field(factory=list)  # the control socket's
    started_message: ClassVar[str] = "Server started"
    serves_metrics: ClassVar[bool] = True  # a worker records; its supervisor serves

    async def serve(
        self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled. ``task_status.started(self)`` once requests are accepted."""
        store = StateStore(Path(self.options.state_dir)) if self.options.state_dir else None
        saved = store.load() if store is not None else ([], [])
        frontend = self.frontend
        control = None
        try:
            # The control socket first: a second proxy on the same socket is refused before
            # it takes any port.
            if self.options.socket_path:
                control = await open_control_listener(self.options.socket_path)
            self.http_port, self.https_port = await frontend.open()
            async with trio.open_nursery() as nursery:
                acme = self._automatic_certificates(nursery)
                router = self._router = Router(self.logger, store, nursery, acme=acme)
                router.replicas = frontend.replicas(router)
                await router.restore(*saved)
                connections = await nursery.start(_hold_nursery)
                await self._serve_metrics(nursery, router)
                fields = await frontend.start(router, nursery, connections)
                if control is not None:
                    nursery.start_soon(self._accept_control, control, connections)
                self.logger.info(
                    self.started_message,
                    http_port=self.http_port,
                    https_port=self.https_port,
                    socket=self.options.socket_path,
                    state_dir=self.options.state_dir,
                    version=__version__,
                    **fields,
                )
                task_status.started(self)
        finally:
            if self._router is not None:
                self._router.close_nowait()
            frontend.close()
            if control is not None:
                control.socket.close()
                unlink_socket(self.options.socket_path)

    async def _serve_metrics(self, nursery: trio.Nursery, router: Router) -> None:
        registry = self.frontend.metrics_registry()
        if registry is None or not self.serves_metrics:
            return
        own = CollectorRegistry()  # kproxy_*: this process decides them (runtime/proxy_metrics)
        self.command_metrics = CommandMetrics(own)
        own.register(TargetHealthCollector(router))
        registry.register(Exposition(own))
        port = self.options.metrics_port
        listeners = await open_metrics_listeners(self.options.bind, port)
        self.metrics = MetricsServer(registry)
        await nursery.start(self.metrics.serve, listeners)
        self.logger.info("Metrics enabled", address=f"{self.options.bind}:{port}")

    def _automatic_certificates(self, nursery: trio.Nursery) -> AutomaticCertificates | None:
        """This process orders ACME certificates (a worker asks its supervisor instead)."""
        return AcmeCertificates(
            nursery,
            self.logger,
            default_directory=self.options.acme_directory,
            state_dir=self.options.state_dir,
        )

    @property
    def _http(self) -> HttpServer | None:
        """This process's HTTP server, once serving (tests shorten its deadlines)."""
        return self.frontend.http if isinstance(self.frontend, Listeners) else None

    async def _accept_control(
        self, listener: trio.SocketListener, connections: trio.Nursery
    ) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            await handle_control_connection(stream, self.execute_words)

        with trio.CancelScope() as scope:
            self._accepting.append(scope)
            await trio.serve_listeners(handle, [listener], handler_nursery=connections)
        listener.socket.close()

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop taking commands and connections; give in-flight requests up to ``grace``
        seconds (cancelling this cuts them off at once). The caller then cancels the scope
        that runs ``serve``."""
        if self.metrics is not None:
            self.metrics.shutting_down = True  # /up says so before anything else changes
        for scope in self._accepting:
            scope.cancel()
        fields = self.frontend.begin_shutdown()
        self.logger.info("Shutting down", grace_seconds=grace, **fields)
        await self.frontend.shutdown(grace)

    # --- commands, from code or from the control socket -----------------------------------

    @property
    def router(self) -> Router:
        if self._router is None:
            raise KProxyError("the proxy is not running: start it with nursery.start(proxy.serve)")
        return self._router

    async def deploy(
        self, service: str, options: DeploymentOptions, progress: Progress = _no_progress
    ) -> None:
        """Deploy ``options.targets`` for ``service``; returns once cut over and drained.

        Args:
            service: the service's name (created on its first deploy).
            options: the same value ``deploy`` flags build (see ``kproxy.parse_command``).
            progress: awaited with each progress line (what is being waited for, and why).

        Raises:
            DeployError: the deploy failed (DeployTimeout: not healthy in time, a route
                conflict, or CertificateError: a TLS file cannot be used); the previous
                targets keep serving and nothing is saved.
        """
        if options.service.tls and self.https_port is None:
            raise DeployError(
                f"{service}: --tls needs an HTTPS port, and this proxy has none "
                "(embedding: give RunOptions(https_port=...), 0 for a free one)"
            )
        await self.router.deploy(service, options, progress)

    async def remove(self, service: str, progress: Progress = _no_progress) -> None:
        """Stop routing to ``service`` and checking its targets; returns once they drained.

        Raises:
            ServiceNotFound: no such service.
        """
        await self.router.remove(service, progress)

    async def pause(
        self,
        service: str,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        max_pause: float = DEFAULT_PAUSE_TIMEOUT,
        progress: Progress = _no_progress,
    ) -> None:
        """Hold new requests (each for at most ``max_pause`` seconds, then 504) until
        ``resume``; returns once in-flight requests finished or ``drain_timeout`` passed."""
        await self.router.pause(service, drain_timeout, max_pause, progress)

    async def stop(
        self,
        service: str,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        message: str = "",
        progress: Progress = _no_progress,
    ) -> None:
        """Answer 503 (with ``message`` on the page) until ``resume``; returns once in-flight
        requests finished or ``drain_timeout`` passed."""
        await self.router.stop(service, drain_timeout, message, progress)

    async def resume(self, service: str) -> None:
        """Serve again after ``pause`` or ``stop``; held requests go on at once."""
        await self.router.resume(service)

    def services(self) -> list[ServiceInfo]:
        """What ``list`` shows: every service with its hosts, paths, targets and state."""
        return self.router.service_infos()

    async def execute(self, command: cmd.Command, progress: Progress = _no_progress) -> str:
        """Carry out one parsed command; returns the text of its ``OK`` line."""
        match command:
            case cmd.Deploy(service, options):
                await self.deploy(service, options, progress)
                return f"deployed {service}"
            case cmd.Remove(service):
                await self.remove(service, progress)
                return f"removed {service}"
            case cmd.Pause(service, drain_timeout, max_pause):
                await self.pause(service, drain_timeout, max_pause, progress)
                return f"paused {service}"
            case cmd.Stop(service, drain_timeout, message):
                await self.stop(service, drain_timeout, message, progress)
                return f"stopped {service}"
            case cmd.Resume(service):
                await self.resume(service)
                return f"resumed {service}"
            case cmd.RolloutDeploy(service):
                await rollouts.deploy(self.router, command, progress)
                return f"rollout deployed for {service}"
            case cmd.RolloutSet(service, split):
                await rollouts.set_split(self.router, service, split)
                return f"rollout set for {service}"
            case cmd.RolloutStop(service):
                stopped = await rollouts.stop(self.router, service, progress)
                return f"rollout stopped for {service}" if stopped else f"{service} has no rollout"
            case cmd.List(as_json):
                services = self.services()
                for line in [json_line(services)] if as_json else table_lines(services):
                    await progress(line)
                return ""
            case cmd.Help():
                for line in help_text(command).splitlines():
                    await progress(line)
                return ""
            case cmd.Version():
                await progress(
                    f"kproxy {__version__} (kamal-proxy {KAMAL_PROXY_COMPAT} compatible)"
                )
                return ""
            case cmd.Run():
                raise CommandError("run starts a proxy; it is not a control command")
        raise CommandError(f"unhandled command {command!r}")  # pragma: no cover

    async def execute_words(self, words: tuple[str, ...], progress: Progress) -> str:
        """The control channel's entry: parse, execute, and never let a bug kill the proxy."""
        try:
            command = command_parser.parse_command(words)
            if self.command_metrics is None:
                return await self.execute(command, progress)
            began, ok = trio.current_time(), False
            try:
                answer = await self.execute(command, progress)
                ok = True
                return answer
            finally:
                self.command_metrics.record(command, ok, trio.current_time() - began)
        except KProxyError:
            raise
        except Exception as exc:
            self.logger.error("Command failed", command=" ".join(words), error=repr(exc))
            raise CommandError(f"internal error: {exc!r} (see the proxy's log)") from exc
