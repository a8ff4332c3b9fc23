"""runtime/target_set.py on trio's MockClock: health checks, wait_healthy, drain."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kproxy.core.check_schedule import spread_phase
from kproxy.core.states import TargetHealth
from kproxy.runtime.health import CheckResult
from kproxy.runtime.target import Target
from kproxy.runtime.target_set import TargetSet, drain_targets
from tests.health_script import CHECK_TIME, HealthScript, logger, target
from tests.helpers import LogCapture

A, B = "10.0.0.1:3000", "10.0.0.2:3000"


def _set(script: HealthScript, *names: str, logs: LogCapture | None = None) -> TargetSet:
    return TargetSet("web", [target(n) for n in names], logger(logs), check=script)


async def _request(target: Target, *, seconds: float, upgraded: bool = False) -> None:
    """An in-flight request to ``target`` lasting ``seconds`` (or until the drain cuts it)."""
    with trio.CancelScope() as scope, target.track(scope):
        if upgraded:
            target.mark_upgraded(scope)
        await trio.sleep(seconds)


async def test_every_target_is_checked_now_then_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = HealthScript(healthy={A})
    logs = LogCapture()
    targets = _set(script, A, B, logs=logs)
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        await trio.sleep(2.5)
        targets.close()
    assert [t for t, name in script.checks if name == A] == pytest.approx(
        [0, 1 + CHECK_TIME, 2 + CHECK_TIME]  # a grid from the first check's end: no drift
    )
    assert script.count(B) == 3
    assert [t.health for t in targets.targets] == [TargetHealth.HEALTHY, TargetHealth.UNHEALTHY]
    assert targets.targets[1].last_check == "503 from /up"
    changes = logs.records("Target health updated")
    assert sorted((r["target"], r["healthy"], r["reason"]) for r in changes) == [
        (A, True, "200 from /up"),
        (B, False, "503 from /up"),
    ]
    assert targets.drained.is_set()  # closing ends the task; nothing was drained


async def test_a_late_check_does_not_move_the_grid_and_an_overrun_skips_instants(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = HealthScript(healthy={A, B})
    slow = {2: 0.4, 4: 2.3}  # A's 3rd check takes 0.4 s, its 5th 2.3 s (the interval is 1 s)

    async def check(one: Target) -> CheckResult:
        if one.name == A and script.count(A) in slow:
            await trio.sleep(slow[script.count(A)] - CHECK_TIME)
        return await script(one)

    targets = TargetSet("web", [target(A), target(B)], logger(), check=check)
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        await trio.sleep(8.5)
        targets.close()
    # The grid runs from the first check's end (CHECK_TIME): the 4th check is on it although the
    # 3rd ended 0.4 s late, and the 5th, ending 2.3 s later, skips the two instants it overran.
    started = [t for t, name in script.checks if name == A]
    expected = [0, 1, 2.4 - CHECK_TIME, 3, 4 + 2.3 - CHECK_TIME, 7, 8]
    assert started == pytest.approx([t + CHECK_TIME if t else 0 for t in expected])
    assert [t for t, name in script.checks if name == B] == pytest.approx(
        [0] + [k + CHECK_TIME for k in range(1, 9)]
    )


async def test_restored_targets_are_first_checked_at_a_phase_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = HealthScript(healthy={A, B})
    restored = [target(A), target(B)]
    for one in restored:
        one.set_health(TargetHealth.HEALTHY)  # as a restore makes them: serving at once
    targets = TargetSet("web", restored, logger(), check=script)
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        await trio.sleep(2.99)
        targets.close()
    for name in (A, B):  # none at once: each at its spread phase, then every interval
        phase = spread_phase(name)
        assert [t for t, checked in script.checks if checked == name] == pytest.approx(
            [phase, phase + 1, phase + 2]
        )
    assert abs(spread_phase(A) - spread_phase(B)) > 0.01  # not together


async def test_the_balancer_follows_health(autojump_clock: trio.testing.MockClock) -> None:
    script = HealthScript(healthy={A, B})
    targets = _set(script, A, B)
    changes: list[str] = []
    targets.on_change = lambda: changes.append("changed")
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        await trio.sleep(0.5)
        one, two = targets.targets
        assert [targets.balancer.writers.choose() for _ in range(4)] == [one, two, one, two]
        script.healthy = {A}
        await trio.sleep(1)
        assert [targets.balancer.writers.choose() for _ in range(3)] == [one, one, one]
        script.healthy = set()
        await trio.sleep(1)
        assert targets.balancer.writers.choose() is None
        targets.close()
    assert changes == ["changed"] * 4  # two became healthy, then each unhealthy


async def test_a_single_target_stops_checking_once_healthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = HealthScript()
    targets = _set(script, A)
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        await trio.sleep(1.5)
        script.healthy = {A}
        await trio.sleep(10)
        assert script.count(A) == 3  # failing, failing, healthy: then nobody looks
        script.healthy = set()
        await trio.sleep(10)
        assert targets.targets[0].healthy  # the only target keeps serving
        targets.close()


async def test_a_restored_single_target_is_not_checked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = HealthScript()
    one = target(A)
    one.set_health(TargetHealth.HEALTHY)
    targets = TargetSet("web", [one], logger(), check=script)
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        await trio.sleep(10)
        targets.close()
    assert script.checks == []
    assert targets.balancer.writers.choose() is one


async def test_wait_healthy_reports_progress(autojump_clock: trio.testing.MockClock) -> None:
    script = HealthScript(healthy={A})
    targets = _set(script, A, B)
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    async def heal_b_later() -> None:
        await trio.sleep(2.5)
        script.healthy.add(B)

    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        nursery.start_soon(heal_b_later)
        await targets.wait_healthy(progress, 30)
        assert trio.current_time() == pytest.approx(3 + 2 * CHECK_TIME)  # B's 4th check
        targets.close()
    assert lines[0] == f"web: waiting for {A}, {B} to pass /up (timeout 30s)"
    assert f"web: {A} is healthy" in lines
    assert f"web: {B} not healthy yet (503 from /up; 1s of 30s)" in lines
    assert f"web: {B} not healthy yet (503 from /up; 2s of 30s)" in lines
    assert lines[-2:] == [f"web: {B} is healthy", "web: all targets healthy"]


async def test_drain_lets_tracked_requests_finish(autojump_clock: trio.testing.MockClock) -> None:
    script = HealthScript(healthy={A, B})
    logs = LogCapture()
    targets = _set(script, A, B, logs=logs)
    one, two = targets.targets
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        nursery.start_soon(lambda: _request(one, seconds=3))
        nursery.start_soon(lambda: _request(two, seconds=1))
        await trio.testing.wait_all_tasks_blocked()
        checks = len(script.checks)
        assert await targets.drain(30) == 0
        assert trio.current_time() == 3  # the slower request finished: no need to wait on
    assert len(script.checks) == checks  # the health checks stopped when the drain began
    assert one.health is two.health is TargetHealth.DRAINING
    assert targets.balancer.writers.choose() is None
    assert one.inflight_count == two.inflight_count == 0
    drained = logs.records("Target drained")
    assert sorted((r["target"], r["cancelled_requests"]) for r in drained) == [(A, 0), (B, 0)]


async def test_drain_cuts_off_requests_at_the_deadline_and_upgraded_ones_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = HealthScript(healthy={A})
    targets = _set(script, A)
    one = targets.targets[0]
    ended: dict[str, float] = {}

    async def request(name: str, *, upgraded: bool) -> None:
        await _request(one, seconds=3600, upgraded=upgraded)
        ended[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        nursery.start_soon(lambda: request("slow", upgraded=False))
        nursery.start_soon(lambda: request("websocket", upgraded=True))
        await trio.sleep(1)
        assert await targets.drain(5) == 1
    assert ended == {"websocket": 1, "slow": 6}
    assert one.inflight_count == 0


async def test_a_drain_outlives_its_waiter(autojump_clock: trio.testing.MockClock) -> None:
    """The drain is the set's own task: cancelling whoever waits for it does not stop it."""
    script = HealthScript(healthy={A})
    targets = _set(script, A)
    remote: list[tuple[list[str], float]] = []

    async def remote_drain(drained: list[Target], timeout: float) -> int:
        remote.append(([t.name for t in drained], timeout))
        return 2  # the workers cut off two more

    targets.remote_drain = remote_drain
    async with trio.open_nursery() as nursery:
        await nursery.start(targets.run)
        nursery.start_soon(lambda: _request(targets.targets[0], seconds=3600))
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(1):
            await targets.drain(10)
        assert not targets.drained.is_set()
        await targets.drained.wait()
        assert trio.current_time() == 10
    assert targets.cancelled == 3
    assert remote == [([A], 10)]


async def test_a_set_that_never_ran_cannot_be_drained_but_its_targets_can(
    autojump_clock: trio.testing.MockClock,
) -> None:
    targets = _set(HealthScript(), A, B)
    with pytest.raises(RuntimeError, match="run"):
        await targets.drain(10)
    one, two = targets.targets
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _request(one, seconds=2))
        nursery.start_soon(lambda: _request(two, seconds=3600))
        await trio.testing.wait_all_tasks_blocked()
        assert await drain_targets(targets.targets, 10) == 1  # a worker's retired targets
        assert trio.current_time() == 10
    assert one.health is two.health is TargetHealth.DRAINING
