"""runtime/router.py on trio's MockClock: deploy, drain, pause and stop, with scripted health.

The router runs with no state file and no sockets; its health check is a ``HealthScript``.
End-to-end versions of these (real upstreams, the control socket) are in tests/e2e.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from kproxy.core.states import ServiceState, TargetHealth
from kproxy.errors import DeployTimeout, ServiceUnavailable
from kproxy.runtime.router import Router
from kproxy.runtime.target import Target
from tests.health_script import CHECK_TIME, HealthScript, logger, options
from tests.helpers import LogCapture

ONE, TWO = "10.0.0.1:3000", "10.0.0.2:3000"


class Progress:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
async def router(nursery: trio.Nursery) -> AsyncIterator[Router]:
    router = Router(logger(), None, nursery, health_check=HealthScript())
    yield router
    router.close_nowait()


def _script(router: Router) -> HealthScript:
    assert isinstance(router.health_check, HealthScript)
    return router.health_check


def _logs(router: Router) -> LogCapture:
    assert isinstance(router.logger.out, LogCapture)
    return router.logger.out


def _targets(router: Router) -> list[str]:
    routed = router.route("example.test", "/")
    assert routed is not None
    return [t.name for t in routed[0].targets]


async def _request(target: Target, seconds: float, ended: dict[str, float]) -> None:
    with trio.CancelScope() as scope, target.track(scope):
        await trio.sleep(seconds)
    ended[target.name] = trio.current_time()


async def _deployed(router: Router, name: str = ONE) -> Target:
    """A first deploy, healthy at its first check; returns its target."""
    _script(router).healthy.add(name)
    await router.deploy("web", options(name))
    return router.services["web"].targets[0]


async def test_deploy_waits_for_health_then_cuts_over(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    progress = Progress()

    async def heal_later() -> None:
        await trio.sleep(2.5)
        _script(router).healthy.add(ONE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heal_later)
        assert router.route("example.test", "/") is None
        await router.deploy("web", options(ONE), progress)
    assert trio.current_time() == pytest.approx(3 + 2 * CHECK_TIME)  # the 4th check passed
    assert _targets(router) == [ONE]
    assert progress.lines == [
        f"web: waiting for {ONE} to pass /up (timeout 30s)",
        f"web: {ONE} not healthy yet (503 from /up; 0s of 30s)",
        f"web: {ONE} not healthy yet (503 from /up; 1s of 30s)",
        f"web: {ONE} not healthy yet (503 from /up; 2s of 30s)",
        f"web: {ONE} not healthy yet (503 from /up; 3s of 30s)",  # the timer won the race
        f"web: {ONE} is healthy",
        "web: all targets healthy",
        f"web: traffic now goes to {ONE}",
    ]
    assert [r["msg"] for r in _logs(router).records() if r["msg"].startswith("Deploy")] == [
        "Deploying",
        "Deployed",
    ]


async def test_deploy_timeout_changes_nothing_and_stops_the_checks(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    await _deployed(router)
    with pytest.raises(DeployTimeout, match=r"within configured timeout \(30s\)"):
        await router.deploy("web", options(TWO))
    assert trio.current_time() == pytest.approx(30 + CHECK_TIME)
    assert _targets(router) == [ONE]
    assert router.services["web"].targets[0].healthy
    failed = _logs(router).records("Deploy failed")
    assert [r["reason"] for r in failed] == ["health check timeout"]
    checks = _script(router).count(TWO)
    await trio.sleep(10)
    assert _script(router).count(TWO) == checks


async def test_cancelling_a_deploy_before_the_cutover_leaves_nothing_changed(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    one = await _deployed(router)
    with trio.move_on_after(5) as scope:
        await router.deploy("web", options(TWO))
    assert scope.cancelled_caught
    assert _targets(router) == [ONE]
    assert one.health is TargetHealth.HEALTHY  # not drained
    checks = _script(router).count(TWO)
    await trio.sleep(10)
    assert _script(router).count(TWO) == checks  # the new target's checks stopped
    assert _logs(router).records("Deployed") == _logs(router).records("Deployed")[:1]


async def test_a_redeploy_drains_the_old_target(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    one = await _deployed(router)
    ended: dict[str, float] = {}
    progress = Progress()
    _script(router).healthy.add(TWO)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_request, one, 4, ended)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        await router.deploy("web", options(TWO), progress)
        assert _targets(router) == [TWO]
        assert trio.current_time() == began + 4  # the request finished: drained
    assert ended == {ONE: began + 4}
    assert one.health is TargetHealth.DRAINING
    assert progress.lines[-3:] == [
        f"web: traffic now goes to {TWO}",
        f"web: draining {ONE} (timeout 30s)",
        "web: old targets drained",
    ]
    drained = _logs(router).records("Target drained")
    assert [(r["target"], r["cancelled_requests"]) for r in drained] == [(ONE, 0)]


async def test_the_drain_finishes_after_the_caller_goes_away(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    one = await _deployed(router)
    ended: dict[str, float] = {}
    _script(router).healthy.add(TWO)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_request, one, 3600, ended)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        with trio.CancelScope() as control_client:

            async def hang_up_after_cutover(line: str) -> None:
                if "traffic now goes to" in line:
                    control_client.cancel()  # the client went away: the next await is cut

            await router.deploy("web", options(TWO, drain_timeout=10), hang_up_after_cutover)
        assert control_client.cancelled_caught
        assert _targets(router) == [TWO]  # the cutover stands
    # Cut off at the drain timeout (counted from the cutover, after TWO's first check), by
    # the old target set's task in the router's nursery.
    assert ended == {ONE: pytest.approx(began + CHECK_TIME + 10)}
    drained = _logs(router).records("Target drained")
    assert [(r["target"], r["cancelled_requests"]) for r in drained] == [(ONE, 1)]


async def test_force_cuts_over_before_the_target_is_healthy(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    progress = Progress()
    await router.deploy("web", options(ONE, force=True), progress)
    assert trio.current_time() == 0
    assert progress.lines == [
        "web: --force given, not waiting for health checks",
        f"web: traffic now goes to {ONE}",
    ]
    assert _targets(router) == [ONE]
    routed = router.route("example.test", "/")
    assert routed is not None
    assert routed[0].active.balancer.writers.choose() is None  # 503 until healthy
    _script(router).healthy.add(ONE)
    await trio.sleep(1.5)
    assert routed[0].active.balancer.writers.choose() is routed[0].targets[0]


async def test_remove_drains_the_service(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    one = await _deployed(router)
    ended: dict[str, float] = {}
    progress = Progress()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_request, one, 2, ended)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        await router.remove("web", progress)
        assert router.route("example.test", "/") is None
        assert trio.current_time() == began + 2
    assert ended == {ONE: began + 2}
    assert progress.lines == [f"web: draining {ONE} (timeout 30s)", "web: old targets drained"]


async def test_pause_waits_for_in_flight_requests_and_holds_new_ones(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    one = await _deployed(router)
    service = router.services["web"]
    ended: dict[str, float] = {}
    admitted: list[float] = []
    progress = Progress()

    async def new_request() -> None:
        await service.admit()
        admitted.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_request, one, 2, ended)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        await router.pause("web", drain_timeout=5, max_pause=60, progress=progress)
        assert trio.current_time() == began + 2  # the request finished: no longer wait
        assert service.state is ServiceState.PAUSED
        nursery.start_soon(new_request)
        await trio.sleep(8)
        assert admitted == []  # held by the pause
        await router.resume("web")
    assert admitted == [began + 10]
    assert progress.lines == ["web: waiting for in-flight requests (timeout 5s)"]


async def test_pause_and_stop_wait_no_longer_than_the_drain_timeout(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    one = await _deployed(router)
    service = router.services["web"]
    ended: dict[str, float] = {}
    progress = Progress()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_request, one, 20, ended)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        await router.pause("web", drain_timeout=5, max_pause=60, progress=progress)
        assert trio.current_time() == began + 5
        await router.stop("web", drain_timeout=3, message="upgrading", progress=progress)
        assert trio.current_time() == began + 8
        assert one.inflight_count == 1  # waited for, never cut off
        with pytest.raises(ServiceUnavailable, match="upgrading"):
            await service.admit()
    assert ended == {ONE: began + 20}
    assert progress.lines == [
        "web: waiting for in-flight requests (timeout 5s)",
        "web: some requests are still running after the timeout",
        "web: waiting for in-flight requests (timeout 3s)",
        "web: some requests are still running after the timeout",
    ]


async def test_a_paused_service_is_restored_paused_and_serving_targets(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    await _deployed(router)
    await router.pause("web", drain_timeout=1, max_pause=60)
    records = [s.record() for s in router.services.values()]
    errors: list[str] = []
    async with trio.open_nursery() as nursery:
        copy = Router(logger(), None, nursery, health_check=HealthScript())
        await copy.restore(records, errors)
        service = copy.services["web"]
        assert service.record() == router.services["web"].record()
        assert service.state is ServiceState.PAUSED
        assert service.active.balancer.writers.choose() is service.targets[0]
        await trio.sleep(5)
        assert _script(copy).checks == []  # a restored single target is not checked
        nursery.cancel_scope.cancel()
