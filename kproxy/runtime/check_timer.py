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

The timer's task runs in the nursery it is given (the router's, beside the target sets whose
checks sleep on it), started by the first sleeper and ended once nobody sleeps: no task of its
own outlives the proxy, and a router whose target sets all stopped has no task left here.
Without a nursery (a target set run on its own, as in tests) each sleeper simply sleeps.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Final

import attrs
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task

BATCH: Final = 0.02  # seconds: sleepers due this close together are woken together


@attrs.define(eq=False)
class _Sleeper:
    task: Task | None  # None once its sleep was cancelled: skipped when due


@attrs.define(eq=False)
class CheckTimer:
    nursery: trio.Nursery | None = None  # where the timer's task runs (None: no shared timer)
    _sleepers: list[tuple[float, int, _Sleeper]] = attrs.field(factory=list)  # a heap
    _order: itertools.count[int] = attrs.field(factory=itertools.count)
    _alarm: trio.CancelScope | None = None  # the timer's own sleep, while it sleeps
    _running: bool = False  # its task runs (from the first sleeper until the heap is empty)

    async def sleep_until(self, deadline: float) -> None:
        """Like ``trio.sleep_until``, on the shared timer: may end up to BATCH early."""
        if self.nursery is None:
            await trio.sleep_until(deadline)
            return
        sleeper = _Sleeper(trio.lowlevel.current_task())
        heapq.heappush(self._sleepers, (deadline, next(self._order), sleeper))
        if not self._running:
            self._running = True
            self.nursery.start_soon(self._run, name="kproxy.check_timer")
        elif (alarm := self._alarm) is not None and deadline < alarm.deadline:
            alarm.deadline = deadline  # the earliest sleeper now: wake for it

        def abort(_: RaiseCancelT) -> Abort:
            sleeper.task = None
            return Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _run(self) -> None:
        sleepers = self._sleepers
        try:
            while sleepers:
                wake_by = trio.current_time() + BATCH
                while sleepers and sleepers[0][0] <= wake_by:
                    task = heapq.heappop(sleepers)[2].task
                    if task is not None:
                        trio.lowlevel.reschedule(task)
                if not sleepers:
                    break
                with trio.CancelScope(deadline=sleepers[0][0]) as alarm:
                    self._alarm = alarm
                    await trio.sleep_forever()
                self._alarm = None
        finally:
            self._alarm = None
            self._running = False
