"""Deadlines on the data path, kept by one task per server instead of a cancel scope per wait.

A trio cancel scope with a deadline costs about 9 µs to enter and leave (measured: trio files
and unfiles the deadline each time), and a proxied request waits two or three times: for its
head, for the target's answer, on a slow target for the client's hang-up. Here a wait arms an
:class:`Alarm` (an attribute store, most of the time) and an :class:`AlarmClock` task looks at
the alarms that fell due, on ``TICK``'s grid: one that passed cancels its scope.

The clock is a hashed timing wheel. An alarm sits in the slot of the tick it is due at and
knows its own slot, so moving a deadline later costs nothing (the clock finds the alarm in
its old slot, sees the later deadline and moves it then), and only a deadline moved earlier
is filed again; the entry left behind is skipped as stale.

The clock sleeps until its earliest filed slot (a heap of the slots' numbers beside them),
not a tick at a time: a sleep that ends raises and catches a ``Cancelled`` inside trio, and
ticking 20 times a second while a keep-alive connection's 60 s alarm waited made most of an
idle proxy's CPU. Filing a slot earlier than the one it sleeps for moves its sleep's deadline,
as runtime/check_timer.py does; filing into a slot that has alarms already costs nothing more.
"""

from __future__ import annotations

import heapq
import math
from typing import Final

import attrs
import trio

TICK: Final = 0.05  # seconds: how late at most an alarm goes off (deadlines round up to it)


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
    _filed: list[int] = attrs.field(factory=list)  # a heap of the slots' numbers
    _next_slot: int = -1  # where an alarm due in a slot already looked at goes
    _wake_slot: float = -1  # the slot the sleeping clock wakes for (inf: none; -1: not asleep)
    _sleep: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # its sleep, while asleep

    def set(self, alarm: Alarm, deadline: float) -> None:
        """Arm (or re-arm) ``alarm`` for ``deadline``; ``math.inf`` disarms it."""
        alarm.deadline = deadline
        if deadline == math.inf:
            return
        slot = math.ceil(deadline / TICK)
        if alarm.slot == -1 or slot < alarm.slot:
            self._file(alarm, slot)

    def _file(self, alarm: Alarm, slot: int) -> None:
        slot = max(slot, self._next_slot)  # already looked at: the next look
        alarm.slot = slot
        alarms = self._slots.get(slot)
        if alarms is not None:  # a filed slot: never before the one the clock wakes for
            alarms.append(alarm)
            return
        self._slots[slot] = [alarm]
        heapq.heappush(self._filed, slot)
        if slot < self._wake_slot:  # the earliest now: the sleeping clock wakes for it
            self._wake_slot = slot
            self._sleep.deadline = slot * TICK

    async def run(self) -> None:
        """Look at each filed slot once its tick comes, forever (cancel to stop)."""
        slots, filed = self._slots, self._filed
        try:
            while True:
                now = trio.current_time()
                # The same product as the sleep's deadline: a slot woken for is a slot due.
                while filed and filed[0] * TICK <= now:
                    slot = heapq.heappop(filed)
                    self._next_slot = slot + 1
                    for alarm in slots.pop(slot):
                        if alarm.slot == slot:  # else it was filed again, earlier: a stale entry
                            alarm.slot = -1
                            self._look(alarm, now)
                self._wake_slot = filed[0] if filed else math.inf
                with trio.CancelScope(deadline=self._wake_slot * TICK) as self._sleep:
                    await trio.sleep_forever()
                self._wake_slot = -1
        finally:
            self._wake_slot = -1

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
