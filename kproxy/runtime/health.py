"""Health checks: ``GET <path>`` on a fresh connection; 2xx is healthy, redirects are not.

One check of one target; runtime/target_set.py repeats them and records the outcome.
"""

from __future__ import annotations

import attrs
import h11
import trio

from kproxy.core.flag_values import format_duration
from kproxy.runtime.h11_stream import H11Stream
from kproxy.runtime.pool import describe_connect_error
from kproxy.runtime.target import Target

USER_AGENT = b"kproxy/health-check"


@attrs.frozen
class CheckResult:
    healthy: bool
    reason: str  # why it failed (or "200 OK"), for progress lines and logs


async def check_once(target: Target) -> CheckResult:
    """One check, bounded by ``--health-check-timeout``; never raises for a sick target."""
    options = target.options
    port = options.health_check_port or target.address.port
    host = options.health_check_host or target.name
    with trio.move_on_after(options.health_check_timeout):
        try:
            stream = await trio.open_tcp_stream(target.address.host, port)
        except OSError as exc:
            return CheckResult(False, f"cannot connect: {describe_connect_error(exc)}")
        connection = H11Stream(stream, h11.Connection(h11.CLIENT))
        try:
            request = h11.Request(
                method="GET",
                target=options.health_check_path,
                headers=[
                    (b"host", host.encode()),
                    (b"user-agent", USER_AGENT),
                    (b"connection", b"close"),
                ],
            )
            await connection.send(request)
            await connection.send(h11.EndOfMessage())
            event = await connection.next_event()
            while isinstance(event, h11.InformationalResponse):
                event = await connection.next_event()
            if not isinstance(event, h11.Response):
                return CheckResult(False, "connection closed without a response")
            status = event.status_code
            if 200 <= status < 300:
                return CheckResult(True, f"{status} from {options.health_check_path}")
            if 300 <= status < 400:
                return CheckResult(
                    False, f"{status} redirect from {options.health_check_path} (not followed)"
                )
            return CheckResult(False, f"{status} from {options.health_check_path}")
        except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
            return CheckResult(False, f"bad response: {exc}")
        finally:
            await connection.aclose()
    return CheckResult(False, f"no response within {format_duration(options.health_check_timeout)}")
