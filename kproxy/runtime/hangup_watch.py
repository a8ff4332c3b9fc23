"""The alarms of a request waiting on its target: the look for a client that hangs up while
its bodiless request waits (``HangupWatch``), and a response body's stall (``TargetStall``).

Go's server notices a client that leaves with a background read; a task per request would
cost more than the requests it watches, so here the request's alarm (``alarms``) does the
looking, from HANGUP_WATCH_DELAY on, and only while the target keeps the request waiting.

The target timeout bounds the wait for the response head (Go's ResponseHeaderTimeout, as
kamal-proxy has it) and, unlike kamal-proxy, each wait for more of a response body too: a
target that stalls mid-body would otherwise hold its client forever. Server-sent events
are exempt: an event stream may be silent as long as it likes.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from kproxy.core.buffering import is_event_stream
from kproxy.errors import ClientGone, UpstreamTimeout
from kproxy.runtime.alarms import TICK, Alarm
from kproxy.runtime.exchange import Exchange, ResponseRecord

HANGUP_WATCH_DELAY: Final = 0.05  # seconds a bodiless request's answer may take before the
# client is looked at for a hang-up: far below anything a person notices, above most answers


@attrs.define(eq=False)
class HangupWatch(Alarm):
    """A bodiless request's alarm while it waits on its target. At ``timeout_at`` (the target
    timeout, while the head is awaited) it goes off as a 504; before that, from
    HANGUP_WATCH_DELAY on, it looks every TICK whether the client hung up (499), as Go's server
    notices with a background read. No task and no cancel scope of its own: see ``alarms``."""

    record: ResponseRecord = attrs.field(kw_only=True)
    exchange: Exchange = attrs.field(kw_only=True)
    target_name: str = attrs.field(kw_only=True)
    timeout_at: float = math.inf

    def due(self, now: float) -> float | None:
        if now >= self.timeout_at:
            self.record.interruption = UpstreamTimeout(
                f"{self.target_name} sent no response within the target timeout"
            )
            return None
        if self.exchange.client_gone():
            self.record.interruption = ClientGone()
            return None
        return min(self.timeout_at, now + TICK)


@attrs.define(eq=False)
class TargetStall(Alarm):
    """A response body's alarm, armed around each read of more of it: it goes off (cancelling
    the request's scope, ``record.interruption`` an UpstreamTimeout) when the target sent no
    byte for ``timeout``. With ``watch_client`` (a bodiless request: no body pump watches
    the client) it also looks for a hang-up meanwhile, as HangupWatch does for the head."""

    exchange: Exchange = attrs.field(kw_only=True)
    record: ResponseRecord = attrs.field(kw_only=True)
    target_name: str = attrs.field(kw_only=True)
    timeout: float = attrs.field(kw_only=True)  # math.inf: an event stream, never
    watch_client: bool = attrs.field(kw_only=True)
    timeout_at: float = math.inf

    @classmethod
    def of_body(
        cls,
        exchange: Exchange,
        record: ResponseRecord,
        target_name: str,
        target_timeout: float,
        *,
        watch_client: bool,
    ) -> TargetStall:
        """The alarm for the body of the response whose head ``record`` holds."""
        timeout = math.inf if is_event_stream(record.headers) else target_timeout
        return cls(
            exchange.scope,
            exchange=exchange,
            record=record,
            target_name=target_name,
            timeout=timeout,
            watch_client=watch_client,
        )

    async def receive(self, receive: Callable[[], Awaitable[None]]) -> None:
        """``receive()`` (one read from the target), cut off as the alarm says."""
        if self.timeout == math.inf and not self.watch_client:
            await receive()
            return
        clock = self.exchange.clock
        now = trio.current_time()
        self.timeout_at = now + self.timeout
        if self.watch_client:
            clock.set(self, min(self.timeout_at, now + HANGUP_WATCH_DELAY))
        else:
            clock.set(self, self.timeout_at)
        try:
            await receive()
        finally:
            clock.set(self, math.inf)
        if self.rang:  # it went off just as the read completed: stop here, not later
            await trio.lowlevel.checkpoint()

    def due(self, now: float) -> float | None:
        if now >= self.timeout_at:
            self.record.interruption = UpstreamTimeout(
                f"{self.target_name} sent no byte of the response body for the target timeout"
            )
            return None
        if self.exchange.client_gone():
            self.record.interruption = ClientGone()
            return None
        return min(self.timeout_at, now + TICK)
