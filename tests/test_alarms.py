"""The data path's alarm clock, on trio's own clock: each alarm goes off within one TICK of its
deadline, not before, and only once; moved deadlines, disarmed and re-armed alarms."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from kproxy.runtime.alarms import TICK, Alarm, AlarmClock


@attrs.define(eq=False)
class _ClockSteps(trio.abc.Instrument):
    """Counts the clock task's steps: each of its wake-ups is one (or two) of them."""

    count: int = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == CLOCK_TASK:
            self.count += 1


CLOCK_TASK = "alarm clock"


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _rings_at(clock: AlarmClock, alarm: Alarm) -> float:
    """When ``alarm`` cancels its scope (the caller has armed it)."""
    with trio.fail_after(1000), alarm.scope:  # a clock that never rings fails, not hangs
        await trio.sleep_forever()
    assert alarm.rang
    assert alarm.scope.cancelled_caught
    return trio.current_time()


async def _with_clock(nursery: trio.Nursery) -> AlarmClock:
    clock = AlarmClock()
    nursery.start_soon(clock.run, name=CLOCK_TASK)
    await trio.testing.wait_all_tasks_blocked()
    return clock


@pytest.mark.parametrize("delay", [0.0, 0.01, TICK, 0.26, 30.0])
async def test_rings_within_a_tick_of_its_deadline(
    delay: float, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = await _with_clock(nursery)
    alarm = Alarm(trio.CancelScope())
    start = trio.current_time()
    clock.set(alarm, start + delay)
    rang = await _rings_at(clock, alarm) - start
    assert delay <= rang <= delay + TICK  # deadlines round up to TICK's grid


async def test_disarmed_alarm_stays_silent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = await _with_clock(nursery)
    alarm = Alarm(trio.CancelScope())
    clock.set(alarm, trio.current_time() + 0.1)
    clock.set(alarm, math.inf)
    with alarm.scope:
        await trio.sleep(5)
    assert not alarm.rang
    assert not alarm.scope.cancel_called


async def test_deadline_moved_later_and_earlier(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = await _with_clock(nursery)
    start = trio.current_time()
    later = Alarm(trio.CancelScope())
    clock.set(later, start + 0.2)
    clock.set(later, start + 3.0)  # as a keep-alive connection's next idle deadline
    earlier = Alarm(trio.CancelScope())
    clock.set(earlier, start + 60.0)
    clock.set(earlier, start + 1.0)  # as a header deadline after an idle one
    async with trio.open_nursery() as waits:
        rang: dict[str, float] = {}

        async def wait(name: str, alarm: Alarm) -> None:
            rang[name] = await _rings_at(clock, alarm) - start

        waits.start_soon(wait, "later", later)
        waits.start_soon(wait, "earlier", earlier)
    assert 3.0 <= rang["later"] <= 3.0 + TICK
    assert 1.0 <= rang["earlier"] <= 1.0 + TICK


async def test_reused_alarm_rings_for_its_latest_deadline_only(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A connection's head alarm: armed and disarmed once per request, ringing only for a
    deadline that is still armed when it passes."""
    clock = await _with_clock(nursery)
    alarm = Alarm(trio.CancelScope())
    for _ in range(20):
        clock.set(alarm, trio.current_time() + 0.5)
        await trio.sleep(0.2)
        clock.set(alarm, math.inf)
    assert not alarm.rang
    start = trio.current_time()
    clock.set(alarm, start + 0.5)
    assert 0.5 <= await _rings_at(clock, alarm) - start <= 0.5 + TICK


@attrs.define(eq=False)
class _Polling(Alarm):
    """Looks again every TICK until ``ready`` (as the hang-up watch does)."""

    looks: list[float] = attrs.field(factory=list)
    ready: bool = False

    def due(self, now: float) -> float | None:
        self.looks.append(now)
        return None if self.ready else now + TICK


async def test_due_can_put_the_alarm_off(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = await _with_clock(nursery)
    alarm = _Polling(trio.CancelScope())
    start = trio.current_time()
    clock.set(alarm, start + 0.1)

    async def ready_later() -> None:
        await trio.sleep(1.0)
        alarm.ready = True

    nursery.start_soon(ready_later)
    rang = await _rings_at(clock, alarm) - start
    assert 1.0 <= rang <= 1.0 + TICK
    # A look per tick or two (a deadline right on a tick may round up to the next one).
    assert 0.5 / TICK - 2 <= len(alarm.looks) <= 1.0 / TICK + 2


async def test_alarm_armed_before_the_clock_runs(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = AlarmClock()
    alarm = Alarm(trio.CancelScope())
    start = trio.current_time()
    clock.set(alarm, start + 0.3)
    await trio.sleep(1.0)  # already past when the clock starts
    nursery.start_soon(clock.run)
    assert await _rings_at(clock, alarm) - start <= 1.0 + TICK


async def test_idle_clock_wakes_for_new_work(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = await _with_clock(nursery)
    first = Alarm(trio.CancelScope())
    clock.set(first, trio.current_time())
    await _rings_at(clock, first)
    await trio.sleep(100)  # nothing armed: the clock waits without ticking
    second = Alarm(trio.CancelScope())
    start = trio.current_time()
    clock.set(second, start + 0.2)
    assert 0.2 <= await _rings_at(clock, second) - start <= 0.2 + TICK


async def test_sleeping_clock_wakes_only_for_its_earliest_alarm(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An idle keep-alive connection's alarm, 60 s out: the clock does not tick meanwhile
    (each tick raised and caught a Cancelled, most of an idle proxy's CPU)."""
    clock = await _with_clock(nursery)
    alarm = Alarm(trio.CancelScope())
    start = trio.current_time()
    steps = _ClockSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        clock.set(alarm, start + 60.0)
        await trio.sleep(59.0)
        assert steps.count <= 1  # the step that moved its sleep's deadline, if any
        assert not alarm.rang
        assert 60.0 <= await _rings_at(clock, alarm) - start <= 60.0 + TICK
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.count <= 3  # woke once for it (a tick at a time: 1,200 steps)


async def test_earlier_alarm_filed_while_the_clock_sleeps_rings_on_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    clock = await _with_clock(nursery)
    start = trio.current_time()
    idle = Alarm(trio.CancelScope())
    clock.set(idle, start + 60.0)
    await trio.sleep(1.0)  # the clock sleeps for the 60 s alarm
    head = Alarm(trio.CancelScope())
    clock.set(head, start + 1.3)
    assert 1.3 <= await _rings_at(clock, head) - start <= 1.3 + TICK
    # A later alarm filed meanwhile changes nothing for the earlier ones.
    later = Alarm(trio.CancelScope())
    clock.set(later, start + 90.0)
    assert 60.0 <= await _rings_at(clock, idle) - start <= 60.0 + TICK
    assert not later.rang
    assert 90.0 <= await _rings_at(clock, later) - start <= 90.0 + TICK
