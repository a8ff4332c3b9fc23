"""ReadPacer on trio's own clock: a trickle (tiny reads, each after a pause) is paced, a quick
run of tiny reads or one read that is not tiny is not, and a paced read waits PAUSE to twice
that, ending on a tick of the alarm clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kproxy.runtime.alarms import TICK
from kproxy.runtime.read_pacing import PAUSE, TRICKLE_GAP, TRICKLES, ReadPacer


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _wait_of(pacer: ReadPacer) -> float:
    """How long a read waits first, as Http1Exchange asks."""
    started = trio.current_time()
    if pacer.paced:
        await pacer.pause()
    return trio.current_time() - started


async def _trickle(pacer: ReadPacer, reads: int, gap: float = TRICKLE_GAP) -> None:
    for _ in range(reads):
        await trio.sleep(gap)
        pacer.tiny_read()


async def test_a_trickle_is_paced_from_its_third_counted_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = ReadPacer()
    await _trickle(pacer, TRICKLES - 1)
    assert await _wait_of(pacer) == 0
    await _trickle(pacer, 1)
    for _ in range(20):  # random waits: each within [PAUSE, 2 PAUSE] plus a tick, on a tick
        waited = await _wait_of(pacer)
        assert PAUSE <= waited <= 2 * PAUSE + TICK
        assert trio.current_time() / TICK == pytest.approx(round(trio.current_time() / TICK))
        pacer.tiny_read()  # one more tiny read, long after the last: still a trickle


async def test_a_read_that_is_not_tiny_or_a_new_head_ends_the_pacing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = ReadPacer()
    await _trickle(pacer, TRICKLES)
    pacer.reset()  # Http1Exchange's answer to a read of TINY bytes or more
    assert await _wait_of(pacer) == 0
    await _trickle(pacer, TRICKLES)
    pacer.reset()
    assert await _wait_of(pacer) == 0


async def test_tiny_reads_in_quick_succession_are_not_a_trickle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = ReadPacer()
    await _trickle(pacer, 100, gap=TRICKLE_GAP / 2)
    assert await _wait_of(pacer) == 0
