"""Health checks: ``GET <path>``; 2xx is healthy, redirects are not.

One check of one target; runtime/target_set.py repeats them and records the outcome. The
router's checks (:class:`KeptChecks`) keep a connection to each target between checks.
"""

from __future__ import annotations

import contextlib
from typing import Final

import attrs
import h11
import trio

from kproxy.core.flag_values import format_duration
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.pool import describe_connect_error
from kproxy.runtime.socket_io import READ_SIZE
from kproxy.runtime.target import Target

USER_AGENT = b"kproxy/health-check"


@attrs.frozen
class CheckResult:
    healthy: bool
    reason: str  # why it failed (or "200 OK"), for progress lines and logs


async def check_once(target: Target) -> CheckResult:
    """One check on a connection of its own, bounded by ``--health-check-timeout``; never
    raises for a sick target."""
    with trio.move_on_after(target.options.health_check_timeout):
        connection = await _connect(target)
        if isinstance(connection, CheckResult):
            return connection
        try:
            return await _ask(connection, target, keep_alive=False) or _CLOSED
        finally:
            connection.stream.socket.close()
    return _timed_out(target)


@attrs.define(eq=False)
class KeptChecks:
    """The health check the router runs: like :func:`check_once`, but each target's checks
    share one keep-alive connection (as Go's HTTP client keeps kamal-proxy's), so a check
    costs a request, not a connect, a request and a close: with a thousand targets checked
    every second, that is most of the checks' CPU. A kept connection that the target closed
    meanwhile is replaced at once, within the same check."""

    _kept: dict[Target, H11Stream] = attrs.field(factory=dict)

    async def __call__(self, target: Target) -> CheckResult:
        kept = self._kept.pop(target, None)
        with trio.move_on_after(target.options.health_check_timeout):
            try:
                if kept is not None:
                    result = await _ask(kept, target)
                    if result is not None:
                        return self._keep(target, kept, result)
                    kept.stream.socket.close()  # let go by the target: try a new one
                kept = None
                fresh = await _connect(target)
                if isinstance(fresh, CheckResult):
                    return fresh
                kept = fresh
                return self._keep(target, kept, await _ask(kept, target) or _CLOSED)
            except BaseException:
                if kept is not None:
                    kept.stream.socket.close()
                raise
        return _timed_out(target)

    def _keep(self, target: Target, connection: H11Stream, result: CheckResult) -> CheckResult:
        conn = connection.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._kept[target] = connection
        else:
            connection.stream.socket.close()
        return result

    def release(self, target: Target) -> None:
        """Close the target's kept connection (its checks have ended)."""
        kept = self._kept.pop(target, None)
        if kept is not None:
            kept.stream.socket.close()


_BROKEN: Final = (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_CLOSED: Final = CheckResult(False, "connection closed without a response")


def _timed_out(target: Target) -> CheckResult:
    timeout = format_duration(target.options.health_check_timeout)
    return CheckResult(False, f"no response within {timeout}")


async def _connect(target: Target) -> H11Stream | CheckResult:
    options = target.options
    port = options.health_check_port or target.address.port
    try:
        stream = await trio.open_tcp_stream(target.address.host, port)
    except OSError as exc:
        return CheckResult(False, f"cannot connect: {describe_connect_error(exc)}")
    return H11Stream(stream, h11.Connection(h11.CLIENT))


async def _ask(
    connection: H11Stream, target: Target, *, keep_alive: bool = True
) -> CheckResult | None:
    """``GET <path>`` on ``connection``; None if the connection closed before any answer.

    Kept alive, the answer's body is read to its end, so that the connection can serve the
    next check, within the check's deadline; the status counts even if the body is cut off.
    """
    options = target.options
    host = options.health_check_host or target.name
    headers = [(b"host", host.encode()), (b"user-agent", USER_AGENT)]
    if not keep_alive:
        headers.append((b"connection", b"close"))
    request = h11.Request(method="GET", target=options.health_check_path, headers=headers)
    conn = connection.conn
    try:
        await connection.stream.send_all(
            conn.send(request) + (conn.send(h11.EndOfMessage()) or b"")
        )
        first = await connection.stream.receive_some(READ_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return None  # the connection broke before any answer
    if not first:
        return None  # closed before any answer
    conn.receive_data(first)
    try:
        event = await connection.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = await connection.next_event()
    except _BROKEN as exc:
        return CheckResult(False, f"bad response: {exc}")
    if not isinstance(event, h11.Response):
        return None
    status = event.status_code
    # The body, for the next check's sake, within the check's deadline: shielded, so that the
    # deadline ends this read and not the check, whose status stands (the connection is then
    # not kept, nor after a broken one).
    deadline = trio.current_effective_deadline()
    with trio.CancelScope(deadline=deadline, shield=True), contextlib.suppress(*_BROKEN):
        while keep_alive and not isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            event = await connection.next_event()
    path = options.health_check_path
    if 200 <= status < 300:
        return CheckResult(True, f"{status} from {path}")
    if 300 <= status < 400:
        return CheckResult(False, f"{status} redirect from {path} (not followed)")
    return CheckResult(False, f"{status} from {path}")
