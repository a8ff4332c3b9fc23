"""Accepting client connections: every waiting one at each wake-up, within a bound.

trio's ``accept()`` yields to the scheduler after each connection, so while many connections
are busy a burst of new ones (a load balancer opening its pool) would be taken one per
scheduling pass, each pass as long as all the busy connections' work: measured, the last of
128 waited over a second. Here a plain non-blocking socket on the same listening socket is
read until empty instead; waiting for it stays trio's. Each connection goes to its handler as
a :class:`~kproxy.runtime.transport.SocketTransport`, whose first bytes the handler may read
before choosing how to serve it (a TLS ClientHello: ``tls_transport``). One slot of a
CapacityLimiter per open connection, taken before accept(): beyond the bound, new clients
wait in the kernel's listen backlog rather than costing memory and descriptors.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import traceback
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from kproxy.runtime.log import Logger
from kproxy.runtime.metrics import RequestMetrics
from kproxy.runtime.transport import SocketTransport

MAX_CONNECTIONS: Final = 10_000  # simultaneous client connections, unless run says otherwise
RESERVED_DESCRIPTORS: Final = 64  # for listeners, control, state and health-check sockets
ACCEPT_RETRY_DELAY: Final = 0.1  # seconds; trio's serve_listeners waits as long on EMFILE
# accept() errors that mean "no resources for now" (as trio's _highlevel_serve_listeners.py)
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Handler = Callable[[SocketTransport], Awaitable[None]]


def default_max_connections() -> int:
    """MAX_CONNECTIONS, or fewer when the open-file limit (``ulimit -n``) could not hold them:
    each client connection may hold a target connection too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (soft - RESERVED_DESCRIPTORS) // 2))


async def accept_connections(
    listener: trio.SocketListener,
    slots: trio.CapacityLimiter,
    handlers: trio.Nursery,
    handle: Handler,
    logger: Logger,
    metrics: RequestMetrics | None = None,
) -> None:
    """Run ``handle(transport)`` in ``handlers`` for each connection, until cancelled
    (``metrics``: count the open connections and the stops at the bound)."""
    with socket.socket(fileno=os.dup(listener.socket.fileno())) as pending:
        pending.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(pending)
            while await _accept_one(pending, slots, handlers, handle, logger, metrics):
                pass


async def _accept_one(
    pending: socket.socket,
    slots: trio.CapacityLimiter,
    handlers: trio.Nursery,
    handle: Handler,
    logger: Logger,
    metrics: RequestMetrics | None,
) -> bool:
    """Take one waiting connection (after a free slot); False when none is waiting."""
    slot = object()
    waited = False
    try:
        slots.acquire_on_behalf_of_nowait(slot)
    except trio.WouldBlock:  # at --max-connections: new clients wait in the backlog
        await slots.acquire_on_behalf_of(slot)
        waited = True
    try:
        sock, _ = pending.accept()
    except BlockingIOError:
        slots.release_on_behalf_of(slot)
        return False
    except OSError as exc:
        slots.release_on_behalf_of(slot)
        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
            raise
        logger.error("Cannot accept a connection", error=str(exc))
        await trio.sleep(ACCEPT_RETRY_DELAY)
        return False
    if waited and metrics is not None:  # it (most likely) queued while we were full
        metrics.waited.inc()
    transport = SocketTransport.of_accepted(sock)
    handlers.start_soon(_run, handle, transport, slots, slot, logger, metrics)
    return True


async def _run(
    handle: Handler,
    transport: SocketTransport,
    slots: trio.CapacityLimiter,
    slot: object,
    logger: Logger,
    metrics: RequestMetrics | None,
) -> None:
    if metrics is not None:
        metrics.connections.inc()
    try:
        await handle(transport)
    except Exception as exc:  # a bug must cost one connection, never the whole proxy
        logger.error(
            "Connection failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    finally:
        if metrics is not None:
            metrics.connections.dec()
        slots.release_on_behalf_of(slot)
        await transport.aclose()  # the handler's job; a failed one may not have
