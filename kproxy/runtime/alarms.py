"""Deadlines on the data path, kept by one task per server instead of a cancel scope per wait.

A trio cancel scope with a deadline costs about 9 µs to enter and leave (measured: trio files
and unfiles the deadline each time), and a proxied request waits two or three times: for its
head, for the target's answer, on a slow target for the client's hang-up. Here a wait arms an
:class:`Alarm` (an attribute store, most of the time) and an :class:`AlarmClock` task looks at
the alarms that fell due every ``TICK`` seconds: one that passed cancels its scope.

The clock is a hashed timing wheel. An alarm sits in the slot of the tick it is due at and
knows its own slot, so moving a deadline later costs nothing (the clock finds the alarm in
its old slot, sees the later deadline and moves it then), and only a deadline moved earlier
is filed again; the entry left behind is skipped as stale.
"""

from __future__ import annotations

import math
from typing import Final

import attrs
import trio

TICK: Final = 0.05  # seconds: how late at most an alarm goes off, and how often the clock looks


@attrs.define(eq=False)
class Alarm:
    """Cancels ``scope`` once ``deadline`` passes (``math.inf``: disarmed).

    Subclasses override :meth:`due` to look again when the deadline comes, e.g. to poll for
    something no task waits on (a client that hangs up while its request waits on a target).
    """

    scope: trio.CancelScope
    deadline: float = math.inf
    rang: bool = False  # it went off: the scope is cancelled
    slot: int = -1  # the clock's slot it is filed in (-1: none)

    def due(self, now: float) -> float | None:
        """Called by the clock once ``deadline`` has passed: None to go off, or a new deadline."""
        return None


@attrs.define(eq=False)
class AlarmClock:
    """Rings the alarms armed with :meth:`set` within ``TICK`` of their deadline, once
    :meth:`run` runs (a task of the server's connection nursery)."""

    _slots: dict[int, list[Alarm]] = attrs.field(factory=dict)
    _next_slot: int = -1  # the first slot not looked at yet (-1: the clock has not started)
    _wakeup: trio.Event = attrs.field(factory=trio.Event)  # set when an idle clock gets work

    def set(self, alarm: Alarm, deadline: float) -> None:
        """Arm (or re-arm) ``alarm`` for ``deadline``; ``math.inf`` disarms it."""
        alarm.deadline = deadline
        if deadline == math.inf:
            return
        slot = math.ceil(deadline / TICK)
        if alarm.slot == -1 or slot < alarm.slot:
            self._file(alarm, slot)

    def _file(self, alarm: Alarm, slot: int) -> None:
        if not self._slots:
            self._wakeup.set()
        slot = max(slot, self._next_slot)  # already past: the next look
        alarm.slot = slot
        alarms = self._slots.get(slot)
        if alarms is None:
            self._slots[slot] = [alarm]
        else:
            alarms.append(alarm)

    async def run(self) -> None:
        """Look at the due slots every ``TICK`` seconds, forever (cancel to stop)."""
        self._next_slot = min([math.floor(trio.current_time() / TICK), *self._slots])
        while True:
            if not self._slots:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            await trio.sleep(TICK)
            now = trio.current_time()
            last = math.floor(now / TICK)
            while self._next_slot <= last:
                slot = self._next_slot
                self._next_slot += 1
                for alarm in self._slots.pop(slot, ()):
                    if alarm.slot == slot:  # else it was filed again, earlier: a stale entry
                        alarm.slot = -1
                        self._look(alarm, now)

    def _look(self, alarm: Alarm, now: float) -> None:
        deadline = alarm.deadline
        if deadline > now:  # moved later meanwhile (or disarmed)
            if deadline != math.inf:
                self._file(alarm, math.ceil(deadline / TICK))
            return
        later = alarm.due(now)
        if later is None:
            alarm.deadline = math.inf
            alarm.rang = True
            alarm.scope.cancel()
        else:
            self.set(alarm, later)
