"""Pacing the reads of a client that trickles its request: fewer, later and spread-out wakeups.

A client that sends its request head or body a byte or so at a time, with pauses (slowloris),
costs a wakeup, a read and a parse per byte, and thousands of them that send at the same
instant (a script's loop) wake a worker all at once: every other request waits behind the
batch. A :class:`ReadPacer` notices the trickle, ``TRICKLES`` tiny reads in a row each after
a pause of at least ``TRICKLE_GAP``, and from then on makes each read wait ``PAUSE`` to twice
that first, at a random tick of the alarm clock, so the next read takes whatever came
meanwhile in one go, and those wakeups spread out over time instead of coming in one burst.
A read that is not tiny ends the pacing. No deadline changes: the head and body timeouts
still cut a trickler off when they pass (the wait is cancelled like the read), and a client
that sends quickly in tiny pieces (no pause between them) is never paced.
"""

from __future__ import annotations

import math
import random
from typing import Final

import attrs
import trio

from kproxy.runtime.alarms import TICK

TINY: Final = 64  # bytes: a read below this, of an unfinished head or body, is a trickle's
TRICKLE_GAP: Final = 0.5  # seconds since the previous tiny read for this one to count
TRICKLES: Final = 3  # counted tiny reads in a row before reads are paced
PAUSE: Final = 2.0  # seconds: a paced read waits this to twice this first


@attrs.define(eq=False)
class ReadPacer:
    """The trickle count of one client connection's request reads (see the module doc). The
    caller tests ``paced`` and ``len(data) < TINY`` itself: a read on a healthy connection
    then costs no call here."""

    trickles: int = 0  # counted tiny reads in a row
    paced: bool = False  # reads wait first: call ``pause``
    _last_tiny: float = -math.inf  # when the last tiny read completed

    def reset(self) -> None:
        """A new request head, or a read that was not tiny: no trickle (any more)."""
        self.trickles = 0
        self.paced = False
        self._last_tiny = -math.inf

    async def pause(self) -> None:
        """Before a paced read: wait until a tick PAUSE to 2 PAUSE from now. On a tick of the
        alarm clock, the reads due in one tick wake in one batch, not one scheduling pass
        each."""
        due = trio.current_time() + PAUSE * (1.0 + random.random())
        await trio.sleep_until(math.ceil(due / TICK) * TICK)

    def tiny_read(self) -> None:
        """After a read of fewer than TINY bytes (not EOF: the caller stops reading then)."""
        now = trio.current_time()
        if now - self._last_tiny >= TRICKLE_GAP:
            self.trickles += 1
            self.paced = self.trickles >= TRICKLES
        else:
            self.trickles = 0
            self.paced = False
        self._last_tiny = now
