"""core/check_schedule.py: the grid of each target's health checks, and the phases on it."""

from __future__ import annotations

import pytest

from kproxy.core.check_schedule import next_check_at, phase_at, spread_phase


@pytest.mark.parametrize(
    ("now", "interval", "phase", "expected"),
    [
        (0.0, 1.0, 0.0, 1.0),  # on the grid: the next instant, never ``now`` itself
        (0.3, 1.0, 0.5, 0.5),
        (0.5, 1.0, 0.5, 1.5),
        (0.51, 1.0, 0.5, 1.5),  # a late check does not move the grid
        (3.7, 1.0, 0.25, 4.25),  # a check that overran the interval skips the instants missed
        (12.0, 5.0, 0.2, 16.0),
        (100.3, 2.0, 0.1, 100.2 + 2.0),
        (0.1 + 0.2, 0.1, 0.0, 0.4),  # 0.30000000000000004 is on the grid, give or take
    ],
)
def test_next_check_at(now: float, interval: float, phase: float, expected: float) -> None:
    assert next_check_at(now, interval, phase) == pytest.approx(expected)


@pytest.mark.parametrize(("now", "interval", "expected"), [(3.25, 1.0, 0.25), (7.0, 2.0, 0.5)])
def test_phase_at_puts_now_on_the_grid(now: float, interval: float, expected: float) -> None:
    phase = phase_at(now, interval)
    assert phase == pytest.approx(expected)
    assert next_check_at(now, interval, phase) == pytest.approx(now + interval)


def test_spread_phases_are_stable_and_cover_the_interval_evenly() -> None:
    names = [f"127.0.0.1:{port}" for port in range(40000, 42000)]  # 1,000 services' targets
    phases = [spread_phase(name) for name in names]
    assert phases == [spread_phase(name) for name in names]  # the same every time
    assert all(0 <= p < 1 for p in phases)
    tenths = [sum(1 for p in phases if k / 10 <= p < (k + 1) / 10) for k in range(10)]
    assert all(150 <= n <= 250 for n in tenths), tenths  # 200 each, give or take chance
    hundredths = [sum(1 for p in phases if k / 100 <= p < (k + 1) / 100) for k in range(100)]
    assert max(hundredths) <= 45, max(hundredths)  # no burst: 20 each on average
