"""The look for a client that hangs up while its bodiless request waits on a target.

Go's server notices a client that leaves with a background read; a task per request would
cost more than the requests it watches, so here an alarm (``alarms``) does the looking, from
HANGUP_WATCH_DELAY on, and only while the target keeps the request waiting. The alarm is the
exchange's (one per client connection, re-armed by each request): the clock then files it
once per tick at most, not once per request.
"""

from __future__ import annotations

import math
from typing import Final

import attrs
import trio

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
