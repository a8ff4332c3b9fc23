"""One timer for every health check's sleep between checks.

``trio.sleep_until`` arms a cancel scope and ends by cancelling it: the ``Cancelled`` raised
and caught through the sleeping frames costs about 15 µs, paid by each of the 2,000 checks a
second that a thousand services make, and each wakes on its own pass of the event loop. Here a
sleeper parks on a heap (``wait_task_rescheduled``, woken by ``reschedule``: no exception), and
one timer task wakes, in one pass, every sleeper due within ``BATCH`` of the earliest: at most
that much early, which a health check does not mind (runtime/target_set.py keeps to its grid).
The batches matter as much as the exceptions saved: checks spread evenly over the interval
would each wake the process (and the target) on its own, which measured more CPU at 100
services than the one burst a second they replaced; in batches of 20 ms (at most 50 wake-ups
a second, each a fiftieth of the checks) they cost less, and a deploy's first check, which
does not wait on the timer, still finds at most one small batch ahead of it.

The timer is a system task of the trio run, started by the first sleeper; it sleeps for good
(costing nothing) while nobody waits.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Final

import attrs
import trio
from trio.lowlevel import Abort, RaiseCancelT, RunVar, Task

BATCH: Final = 0.02  # seconds: sleepers due this close together are woken together

_TIMER: RunVar[CheckTimer] = RunVar("kproxy_check_timer")


async def sleep_until(deadline: float) -> None:
    """Like ``trio.sleep_until``, on the run's shared timer: may end up to BATCH early."""
    try:
        timer = _TIMER.get()
    except LookupError:
        timer = CheckTimer()
        _TIMER.set(timer)
        trio.lowlevel.spawn_system_task(timer.run, name="kproxy.check_timer")
    await timer.sleep_until(deadline)


@attrs.define(eq=False)
class _Sleeper:
    task: Task | None  # None once its sleep was cancelled: skipped when due


@attrs.define(eq=False)
class CheckTimer:
    _sleepers: list[tuple[float, int, _Sleeper]] = attrs.field(factory=list)  # a heap
    _order: itertools.count[int] = attrs.field(factory=itertools.count)
    _alarm: trio.CancelScope | None = None  # the timer's own sleep, while it sleeps

    async def sleep_until(self, deadline: float) -> None:
        sleeper = _Sleeper(trio.lowlevel.current_task())
        heapq.heappush(self._sleepers, (deadline, next(self._order), sleeper))
        alarm = self._alarm
        if alarm is not None and deadline < alarm.deadline:
            alarm.deadline = deadline  # the earliest sleeper now: wake for it

        def abort(_: RaiseCancelT) -> Abort:
            sleeper.task = None
            return Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        sleepers = self._sleepers
        while True:
            wake_by = trio.current_time() + BATCH
            while sleepers and sleepers[0][0] <= wake_by:
                task = heapq.heappop(sleepers)[2].task
                if task is not None:
                    trio.lowlevel.reschedule(task)
            with trio.CancelScope(deadline=sleepers[0][0] if sleepers else math.inf) as alarm:
                self._alarm = alarm
                await trio.sleep_forever()
            self._alarm = None
