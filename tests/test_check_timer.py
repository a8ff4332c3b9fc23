"""runtime/check_timer.py on trio's MockClock: sleepers woken on time, in batches, a
cancelled sleep ends at once without disturbing the others, and the timer's task lives in the
nursery it is given only while someone sleeps."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kproxy.runtime.check_timer import BATCH, CheckTimer


async def test_sleepers_wake_at_their_deadlines(autojump_clock: trio.testing.MockClock) -> None:
    woke: dict[str, float] = {}

    async def sleeper(name: str, deadline: float) -> None:
        await timer.sleep_until(deadline)
        woke[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        timer = CheckTimer(nursery)
        nursery.start_soon(sleeper, "late", 3.0)
        nursery.start_soon(sleeper, "soon", 1.0)
        await trio.sleep(0.5)
        nursery.start_soon(sleeper, "earliest", 0.7)  # comes later, due first: re-arms
        nursery.start_soon(sleeper, "past", 0.2)  # already due: at once
    assert woke == pytest.approx({"past": 0.5, "earliest": 0.7, "soon": 1.0, "late": 3.0})


async def test_sleepers_due_close_together_wake_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    woke: dict[float, float] = {}

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        woke[deadline] = trio.current_time()

    deadlines = [1.0, 1.0 + BATCH / 2, 1.0 + BATCH, 1.0 + 2.5 * BATCH]
    async with trio.open_nursery() as nursery:
        timer = CheckTimer(nursery)
        for deadline in deadlines:
            nursery.start_soon(sleeper, deadline)
    # The first three in one wake-up (at most BATCH early), the last on its own.
    assert [woke[d] for d in deadlines] == pytest.approx([1.0, 1.0, 1.0, 1.0 + 2.5 * BATCH])


async def test_a_cancelled_sleep_ends_at_once_and_the_others_keep_theirs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    woke: list[float] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        timer = CheckTimer(nursery)
        with trio.CancelScope() as cancelled:
            nursery.start_soon(sleeper, 2.0)
            await trio.sleep(0.1)
            cancelled.cancel()
            with trio.fail_after(1):
                await timer.sleep_until(1.0)  # due before the other: skipped, not woken, then
        assert cancelled.cancelled_caught
        assert trio.current_time() == pytest.approx(0.1)  # not a moment later
    assert woke == pytest.approx([2.0])


async def test_the_timers_task_ends_when_nobody_sleeps_and_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        timer = CheckTimer(nursery)
        await timer.sleep_until(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert [t.name for t in nursery.child_tasks] == []  # no task left behind
        await timer.sleep_until(2.0)  # started again for the next sleeper
        assert trio.current_time() == pytest.approx(2.0)
    # The nursery ended on its own: nothing of the timer's was left to cancel.


async def test_without_a_nursery_each_sleeper_sleeps_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = CheckTimer()
    await timer.sleep_until(1.5)
    assert trio.current_time() == pytest.approx(1.5)
