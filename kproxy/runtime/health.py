"""Health checks: ``GET <path>``; 2xx is healthy, redirects are not.

One check of one target; runtime/target_set.py repeats them (when: core/check_schedule.py)
and records the outcome. The router's checks (:class:`KeptChecks`) keep a connection to each
target between checks.

A thousand services check 2,000 targets a second in the deciding process, so a check is kept
cheap: the request's bytes are made once per connection, written straight to the socket, and
the answer is read by the data path's own response reader (core/upstream_http.py: a target's
answer, not a client's request, so h11's guard is not needed here).

``--health-check-timeout`` is the target's time, not the event loop's: the answer has that long
from the moment the request was sent (a connect, when one is needed, has as long of its own),
and when the deadline passes, a connection the target accepted, or an answer it sent, that is
waiting unnoticed on the socket still counts. So a busy loop, late to send or late to look,
never makes a healthy target look sick: only a target that did not answer in time is.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Final

import attrs
import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, wait_readable, wait_writable

from kproxy.core.flag_values import format_duration
from kproxy.core.response_head import BadResponse
from kproxy.core.upstream_http import (
    CLOSED,
    END,
    NEED_DATA,
    ResponseHead,
    ResponseReader,
    encode_request_head,
)
from kproxy.runtime.pool import describe_connect_error
from kproxy.runtime.socket_io import readable_now, writable_now
from kproxy.runtime.target import Target

USER_AGENT = b"kproxy/health-check"
READ_SIZE: Final = 16 * 1024  # bytes per read: an answer to a check is small


@attrs.frozen
class CheckResult:
    healthy: bool
    reason: str  # why it failed (or "200 OK"), for progress lines and logs


async def check_once(target: Target) -> CheckResult:
    """One check on a connection of its own (``Connection: close``), bounded as the module doc
    says; never raises for a sick target."""
    connection = await _connect(target, keep_alive=False)
    if isinstance(connection, CheckResult):
        return connection
    try:
        result, _ = await _ask(connection, target)
        return result or _CLOSED
    finally:
        connection.sock.close()


@attrs.define(eq=False)
class KeptChecks:
    """The health check the router runs: like :func:`check_once`, but each target's checks
    share one keep-alive connection (as Go's HTTP client keeps kamal-proxy's), so a check
    costs a request, not a connect, a request and a close: with a thousand targets checked
    every second, that is most of the checks' CPU. A kept connection that the target closed
    meanwhile is replaced at once, within the same check."""

    _kept: dict[Target, _Connection] = attrs.field(factory=dict)

    async def __call__(self, target: Target) -> CheckResult:
        kept = self._kept.pop(target, None)
        if kept is not None and readable_now(kept.sock.fileno()):
            # Closed by the target meanwhile, or it spoke unasked (a 408 at its idle timeout):
            # nothing there answers this check, so not kept (as Go's client drops such idle
            # connections) and not held against the target.
            kept.sock.close()
            kept = None
        try:
            if kept is not None:
                result, reusable = await _ask(kept, target)
                if result is not None:
                    return self._keep(target, kept, result, reusable)
                kept.sock.close()  # let go by the target: try a new one
            kept = None
            fresh = await _connect(target, keep_alive=True)
            if isinstance(fresh, CheckResult):
                return fresh
            kept = fresh
            result, reusable = await _ask(kept, target)
            return self._keep(target, kept, result or _CLOSED, reusable and result is not None)
        except BaseException:
            if kept is not None:
                kept.sock.close()
            raise

    def _keep(
        self, target: Target, connection: _Connection, result: CheckResult, reusable: bool
    ) -> CheckResult:
        if reusable:
            self._kept[target] = connection
        else:
            connection.sock.close()
        return result

    def release(self, target: Target) -> None:
        """Close the target's kept connection (its checks have ended)."""
        kept = self._kept.pop(target, None)
        if kept is not None:
            kept.sock.close()


@attrs.define(eq=False)
class _Connection:
    """A connection for checks: its socket, the request it sends, and its response reader."""

    sock: socket.socket
    request: bytes
    reader: ResponseReader = attrs.field(factory=ResponseReader)


_CLOSED: Final = CheckResult(False, "connection closed without a response")


def _timed_out(target: Target) -> CheckResult:
    timeout = format_duration(target.options.health_check_timeout)
    return CheckResult(False, f"no response within {timeout}")


def _request(target: Target, *, keep_alive: bool) -> bytes:
    options = target.options
    host = options.health_check_host or target.name
    headers = [(b"host", host.encode()), (b"user-agent", USER_AGENT)]
    if not keep_alive:
        headers.append((b"connection", b"close"))
    return encode_request_head(b"GET", options.health_check_path.encode(), headers)


async def _connect(target: Target, *, keep_alive: bool) -> _Connection | CheckResult:
    """A connection to the target's health-check port, within the check's timeout: each of
    the name's addresses in turn. A connection the target completed in time counts even if
    the loop only looks once the deadline has passed (see the module doc)."""
    options = target.options
    port = options.health_check_port or target.address.port
    deadline = trio.current_time() + options.health_check_timeout
    found = None
    with trio.move_on_at(deadline):
        try:
            found = await trio.socket.getaddrinfo(
                target.address.host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            return CheckResult(False, f"cannot connect: {describe_connect_error(exc)}")
    if found is None:
        return _timed_out(target)
    error = errno.EHOSTUNREACH
    for family, kind, protocol, _, address in found:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.setblocking(False)
            error = sock.connect_ex(address)
            if error == errno.EINPROGRESS:
                with trio.move_on_at(deadline):
                    await wait_writable(sock)
                if not writable_now(sock.fileno()):
                    sock.close()
                    return _timed_out(target)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException:
            sock.close()
            raise
        if error == 0:
            return _Connection(sock, _request(target, keep_alive=keep_alive))
        sock.close()
    return CheckResult(False, f"cannot connect: {os.strerror(error).lower()}")


async def _ask(connection: _Connection, target: Target) -> tuple[CheckResult | None, bool]:
    """``GET <path>`` on ``connection``: the result (None if the connection closed before any
    answer), and whether the connection can serve the next check.

    The answer's body is read to its end, for the next check's sake, within the same deadline;
    the status counts even if the body is cut off (the connection is then not reused).
    """
    sock, reader = connection.sock, connection.reader
    reader.restart(head_request=False)
    try:
        sock.send(connection.request)  # a few dozen bytes into an idle connection: all taken
    except OSError:
        return None, False  # the connection broke before any answer
    deadline = trio.current_time() + target.options.health_check_timeout
    head: ResponseHead | None = None
    waited = True
    # A yield before the first look, as the data path's sends make one: the target often
    # answers meanwhile, and the read then needs no wait (and no deadline armed for it).
    await cancel_shielded_checkpoint()
    while True:
        try:
            event = reader.next_event()
        except BadResponse as exc:
            if head is None:
                return CheckResult(False, f"bad response: {exc}"), False
            return _judged(head, target), False
        if event is NEED_DATA:
            if not waited:
                await checkpoint()  # a target streaming a long body must not hold the loop
            data, waited = await _receive_by(sock, deadline)
            if data is None:  # the deadline passed
                return (_timed_out(target) if head is None else _judged(head, target)), False
            reader.feed(data)
        elif event is CLOSED:
            return None, False
        elif event is END:
            assert head is not None  # END follows a final head
            return _judged(head, target), head.keep_alive
        elif isinstance(event, ResponseHead) and not event.informational:
            head = event


async def _receive_by(sock: socket.socket, deadline: float) -> tuple[bytes | None, bool]:
    """What the socket has (b"" at its end or when it broke), waiting until ``deadline`` at
    most: None if nothing came by then. Bytes that wait unread when the deadline is seen still
    count (see the module doc). Also returns whether it waited."""
    waited = False
    while True:
        try:
            return sock.recv(READ_SIZE), waited
        except BlockingIOError:
            pass
        except OSError:
            return b"", waited
        if waited and trio.current_time() >= deadline:
            return None, waited
        waited = True
        with trio.move_on_at(deadline):
            await wait_readable(sock)


def _judged(head: ResponseHead, target: Target) -> CheckResult:
    status, path = head.status, target.options.health_check_path
    if 200 <= status < 300:
        return CheckResult(True, f"{status} from {path}")
    if 300 <= status < 400:
        return CheckResult(False, f"{status} redirect from {path} (not followed)")
    return CheckResult(False, f"{status} from {path}")
