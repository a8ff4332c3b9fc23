"""The alarms of a request waiting on its target: the look for a client that hangs up while
its bodiless request waits (``HangupWatch``), and a response body's stall (``TargetStall``).

Go's server notices a client that leaves with a background read; a task per request would
cost more than the requests it watches, so here an alarm (``alarms``) does the looking, from
HANGUP_WATCH_DELAY on, and only while the target keeps the request waiting. The alarm is the
exchange's (one per client connection, re-armed by each request): the clock then files it
once per tick at most, not once per request.

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

STALL_LOOK: Final = 1.0  # seconds between a TargetStall's looks (at most a quarter timeout)
HANGUP_WATCH_DELAY: Final = 0.05  # seconds a bodiless request's answer may take before the
# client is looked at for a hang-up: far below anything a person notices, above most answers


@attrs.define(eq=False)
class HangupWatch(Alarm):
    """A bodiless request's alarm while it waits on its target. At ``timeout_at`` (the target
    timeout, while the head is awaited) it goes off as a 504; before that, from
    HANGUP_WATCH_DELAY on, it looks every TICK whether the client hung up (499), as Go's server
    notices with a background read. No task and no cancel scope of its own: see ``alarms``."""

    exchange: Exchange = attrs.field(kw_only=True)
    record: ResponseRecord = attrs.field(kw_only=True, factory=ResponseRecord)
    target_name: str = attrs.field(kw_only=True, default="")
    timeout_at: float = math.inf

    def watch(self, scope: trio.CancelScope, record: ResponseRecord, target_name: str) -> None:
        """Ready for the next request (disarmed until its read arms it)."""
        self.scope, self.record, self.target_name = scope, record, target_name
        self.deadline = self.timeout_at = math.inf
        self.rang = False

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
    """A response body's alarm: it goes off (cancelling the request's scope,
    ``record.interruption`` an UpstreamTimeout) once the relay has waited on the target for
    ``timeout`` without a read completing. With ``watch_client`` (a bodiless request: no
    body pump watches the client) it also looks for a hang-up meanwhile, as HangupWatch does.

    A read costs two attribute stores and a count, not a clock reading and a deadline (a
    reading of trio's clock alone measured 2,500 instructions): the alarm looks every
    STALL_LOOK (a quarter of a short timeout) whether the count moved, so a stall is caught
    between ``timeout`` and ``timeout`` + STALL_LOOK after the last byte; watching the
    client, it looks every TICK while a read waits. Time spent sending to the client is not
    counted against the target."""

    exchange: Exchange = attrs.field(kw_only=True)
    record: ResponseRecord = attrs.field(kw_only=True)
    target_name: str = attrs.field(kw_only=True)
    timeout: float = attrs.field(kw_only=True)  # math.inf: an event stream, never
    watch_client: bool = attrs.field(kw_only=True)
    waiting: bool = False  # a read from the target is under way
    reads: int = 0  # reads completed
    _reads_seen: int = -1  # at the last look
    _quiet_since: float = 0.0  # the last look that saw a read complete, or no wait

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
        """The alarm for the body of the response whose head ``record`` holds, armed."""
        timeout = math.inf if is_event_stream(record.headers) else target_timeout
        stall = cls(
            exchange.scope,
            exchange=exchange,
            record=record,
            target_name=target_name,
            timeout=timeout,
            watch_client=watch_client,
        )
        if timeout != math.inf or watch_client:
            # From the request's start, not a clock reading (2,500 instructions): a first
            # look that comes early only notes the time (``due``: no read was seen yet, so
            # the quiet time starts then), and the looks go on from there.
            exchange.clock.set(stall, exchange.started_at + stall._look_every())
        return stall

    def _look_every(self) -> float:
        if self.watch_client and self.waiting:
            return TICK  # a hang-up is noticed as soon as HangupWatch would
        return min(STALL_LOOK, self.timeout / 4)

    async def receive(self, receive: Callable[[], Awaitable[None]]) -> None:
        """``receive()`` (one read from the target), cut off as the alarm says."""
        self.waiting = True
        await receive()
        self.reads += 1
        self.waiting = False
        if self.rang:  # it went off just as the read completed: stop here, not later
            await trio.lowlevel.checkpoint()

    def disarm(self) -> None:
        self.exchange.clock.set(self, math.inf)

    def due(self, now: float) -> float | None:
        if self.reads != self._reads_seen or not self.waiting:
            self._reads_seen = self.reads
            self._quiet_since = now
        elif now - self._quiet_since >= self.timeout:
            self.record.interruption = UpstreamTimeout(
                f"{self.target_name} sent no byte of the response body for the target timeout"
            )
            return None
        if self.watch_client and self.waiting and self.exchange.client_gone():
            self.record.interruption = ClientGone()
            return None
        return now + self._look_every()
