"""The proxy as one object: ``await nursery.start(proxy.serve)``, then command it from code.

``serve`` owns the root nursery: the HTTP listeners, the control socket, and the router's
background work (health checks, drains). Cancelling it stops everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Final

import attrs
import trio

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
from kproxy.errors import CommandError, KProxyError
from kproxy.runtime.acceptor import default_max_connections
from kproxy.runtime.control_server import (
    handle_control_connection,
    open_control_listener,
    unlink_socket,
)
from kproxy.runtime.http_server import HttpServer
from kproxy.runtime.log import Logger
from kproxy.runtime.router import Progress, Router, _no_progress
from kproxy.runtime.state_store import StateStore

SHUTDOWN_GRACE: Final = 10.0  # seconds in-flight requests get after SIGTERM


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


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
    _router: Router | None = None
    _http: HttpServer | None = None
    _accepting: list[trio.CancelScope] = attrs.field(factory=list)  # one per accept loop
    started_message: ClassVar[str] = "Server started"

    async def serve(
        self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled. ``task_status.started(self)`` once requests are accepted."""
        store = StateStore(Path(self.options.state_dir)) if self.options.state_dir else None
        saved = Router.load_state(store) if store is not None else ([], [])
        listeners: list[trio.SocketListener] = []
        control = None
        try:
            # The control socket first: a second proxy on the same socket is refused before
            # it takes any port.
            if self.options.socket_path:
                control = await open_control_listener(self.options.socket_path)
            listeners = await self._open_listeners()
            self.http_port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                router = self._router = Router(self.logger, store, nursery)
                await router.restore(*saved)
                await self._prepare(router, nursery)
                slots = self.options.max_connections or default_max_connections()
                http = self._http = HttpServer(
                    router,
                    self.logger,
                    port=self.http_port,
                    connection_slots=trio.CapacityLimiter(slots),
                )
                connections = await nursery.start(_hold_nursery)
                nursery.start_soon(self._accept, http, listeners, connections)
                if control is not None:
                    nursery.start_soon(self._accept_control, control, connections)
                self.logger.info(
                    self.started_message,
                    http_port=self.http_port,
                    socket=self.options.socket_path,
                    state_dir=self.options.state_dir,
                    version=__version__,
                )
                task_status.started(self)
        finally:
            if self._router is not None:
                self._router.close_nowait()
            # Listeners are closed here, not by serve_listeners, which leaves them open.
            for listener in [*listeners, *([control] if control is not None else [])]:
                listener.socket.close()
            if control is not None:
                unlink_socket(self.options.socket_path)

    async def _open_listeners(self) -> list[trio.SocketListener]:
        return await trio.open_tcp_listeners(self.options.http_port, host=self.options.bind or None)

    async def _prepare(self, router: Router, nursery: trio.Nursery) -> None:
        """Set up the router before the first request is accepted (a worker's first state)."""

    async def _accept(
        self, http: HttpServer, listeners: list[trio.SocketListener], connections: trio.Nursery
    ) -> None:
        with trio.CancelScope() as scope:
            self._accepting.append(scope)
            await http.serve_listeners(listeners, connections)  # bounded: see HttpServer
        # shutdown() stopped us: close the ports so new clients are refused, not left queued.
        for listener in listeners:
            listener.socket.close()

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
        """Stop accepting; give in-flight requests up to ``grace`` seconds. The caller then
        cancels the scope that runs ``serve``."""
        for scope in self._accepting:
            scope.cancel()
        self.logger.info("Shutting down", grace_seconds=grace)
        if self._http is not None:
            await self._http.shutdown(grace)

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
            DeployError: the deploy failed (DeployTimeout: not healthy in time, or a route
                conflict); the previous targets keep serving and nothing is saved.
        """
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
            return await self.execute(command_parser.parse_command(words), progress)
        except KProxyError:
            raise
        except Exception as exc:
            self.logger.error("Command failed", command=" ".join(words), error=repr(exc))
            raise CommandError(f"internal error: {exc!r} (see the proxy's log)") from exc
