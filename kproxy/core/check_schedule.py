"""When a target's periodic health checks run: on a fixed grid, at a phase of its own.

A target's checks run at the instants ``(k + phase) * interval``, a grid that does not move:
not ``interval`` after the previous check ended. So a check that came late, because the event
loop was busy, does not push the target's later checks back, and late checks never bunch up
for good; a check that takes longer than the interval (a slow timeout) skips the instants it
overran, as Go's ``time.Ticker`` (kamal-proxy's) drops the ticks its reader missed.

The phase: a deployed target is checked at once (the deploy waits on that check) and then every
interval after that first check ended (:func:`phase_at`), much as kamal-proxy's ticker runs
from its first check; deploys happen at different times, so their targets' phases differ. A
restored target starts out serving, so its first check need not come at once, and comes at a
phase drawn from its name (:func:`spread_phase`): a thousand services restored at once would
otherwise check their 2,000 targets in one burst a second, and a new target's first check
would queue behind it.
"""

from __future__ import annotations

import hashlib
import math


def phase_at(now: float, interval: float) -> float:
    """The phase of the grid through ``now``, a fraction in [0, 1)."""
    return (now / interval) % 1.0


def spread_phase(name: str) -> float:
    """A phase in [0, 1) drawn from ``name``: the same for the same target (across restarts
    too), and, over many targets, spread evenly at random."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_check_at(now: float, interval: float, phase: float) -> float:
    """The first instant of the grid ``(k + phase) * interval`` strictly after ``now``."""
    at = (math.floor(now / interval - phase) + 1 + phase) * interval
    return at if at > now + interval * 1e-9 else at + interval  # ``now`` on the grid, rounded
