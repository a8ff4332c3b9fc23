"""runtime/rollouts.py and the rollout group in runtime/service.py, on trio's MockClock with
scripted health: deadlines at exact virtual times, cancellation, the drain, the group choice.

End-to-end versions (real upstreams, the control socket, workers) are in
tests/e2e/test_rollouts.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from kproxy.core import snapshot
from kproxy.core.commands import RolloutDeploy
from kproxy.core.rollout import RolloutSplit
from kproxy.core.states import TargetHealth
from kproxy.errors import CommandError, DeployTimeout, ServiceNotFound
from kproxy.runtime import rollouts
from kproxy.runtime.exchange import RequestHead
from kproxy.runtime.router import Router
from kproxy.runtime.service import Service
from kproxy.runtime.state_store import StateStore
from kproxy.runtime.target import Target
from tests.health_script import CHECK_TIME, HealthScript, logger, options
from tests.test_router import Progress, _request

MAIN, NEXT, NEWER = "10.0.0.1:3000", "10.0.0.2:3000", "10.0.0.3:3000"


@pytest.fixture
async def router(nursery: trio.Nursery) -> AsyncIterator[Router]:
    router = Router(logger(), None, nursery, health_check=HealthScript({MAIN}))
    await router.deploy("web", options(MAIN))
    yield router
    router.close_nowait()


def _script(router: Router) -> HealthScript:
    assert isinstance(router.health_check, HealthScript)
    return router.health_check


def _service(router: Router) -> Service:
    return router.services["web"]


def head(method: bytes = b"GET", rollout: bytes | None = None) -> RequestHead:
    headers = [(b"host", b"example.test")]
    if rollout is not None:
        headers.append((b"cookie", b"kamal-rollout=" + rollout))
    return RequestHead(method, b"/", headers, b"1.1", frozenset())


def chosen(service: Service, request: RequestHead) -> str:
    return service.choose_target(request).name


async def _rolled_out(router: Router, name: str = NEXT, drain_timeout: float = 30) -> Target:
    _script(router).healthy.add(name)
    await rollouts.deploy(
        router, RolloutDeploy("web", (name,), drain_timeout=drain_timeout), Progress()
    )
    group = _service(router).rollout
    assert group is not None
    return group.targets[0]


async def test_rollout_deploy_waits_for_health_and_sends_nothing_until_set(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    progress = Progress()

    async def heal_later() -> None:
        await trio.sleep(2.5)
        _script(router).healthy.add(NEXT)

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heal_later)
        await rollouts.deploy(router, RolloutDeploy("web", (NEXT,)), progress)
    # Healthy at the first check after 2.5 s (one a second, each taking CHECK_TIME).
    assert began + 3 < trio.current_time() < began + 3 + 10 * CHECK_TIME
    assert progress.lines[0] == f"web: waiting for {NEXT} to pass /up (timeout 30s)"
    assert progress.lines[-1].startswith(f"web: rollout group {NEXT} ready; it gets no traffic")
    service = _service(router)
    assert service.split is None
    assert {chosen(service, head(rollout=b"%d" % i)) for i in range(50)} == {MAIN}
    await rollouts.set_split(router, "web", RolloutSplit(100))
    assert {chosen(service, head(m, b"x")) for m in (b"GET", b"POST", b"DELETE")} == {NEXT}
    assert chosen(service, head()) == MAIN  # no cookie: never


async def test_a_rollout_deploy_timeout_changes_nothing_and_stops_the_checks(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    first = await _rolled_out(router)
    await rollouts.set_split(router, "web", RolloutSplit(0, ("alice",)))
    began = trio.current_time()
    with pytest.raises(DeployTimeout, match=r"rollout target failed .* \(5s\)"):
        await rollouts.deploy(
            router, RolloutDeploy("web", (NEWER,), deploy_timeout=5.0), Progress()
        )
    assert trio.current_time() == pytest.approx(began + 5)
    service = _service(router)
    assert service.rollout is not None
    assert service.rollout.targets == [first]
    assert chosen(service, head(rollout=b"alice")) == NEXT
    checks = _script(router).count(NEWER)
    await trio.sleep(10)
    assert _script(router).count(NEWER) == checks


async def test_cancelling_a_rollout_deploy_leaves_nothing_changed(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.move_on_after(5) as scope:
        await rollouts.deploy(router, RolloutDeploy("web", (NEXT,)), Progress())
    assert scope.cancelled_caught
    assert _service(router).rollout is None
    checks = _script(router).count(NEXT)
    await trio.sleep(10)
    assert _script(router).count(NEXT) == checks


async def test_errors_name_the_problem(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(ServiceNotFound, match="'api' is not deployed"):
        await rollouts.deploy(router, RolloutDeploy("api", (NEXT,)), Progress())
    with pytest.raises(CommandError, match="'web' has no rollout group"):
        await rollouts.set_split(router, "web", RolloutSplit(10))
    with pytest.raises(ServiceNotFound):
        await rollouts.stop(router, "api", Progress())
    assert await rollouts.stop(router, "web", Progress()) is False
    assert _script(router).count(NEXT) == 0


async def test_stop_drains_the_rollout_group_with_its_drain_timeout(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    target = await _rolled_out(router, drain_timeout=10)
    await rollouts.set_split(router, "web", RolloutSplit(100))
    ended: dict[str, float] = {}
    progress = Progress()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_request, target, 3600, ended)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        assert await rollouts.stop(router, "web", progress) is True
        assert trio.current_time() == began + 10  # cut off at the rollout's drain timeout
    assert ended == {NEXT: began + 10}
    assert target.health is TargetHealth.DRAINING
    service = _service(router)
    assert (service.rollout, service.split, service.rollout_options) == (None, None, None)
    assert chosen(service, head(rollout=b"x")) == MAIN
    assert progress.lines == [
        f"web: all traffic goes to {MAIN}",
        f"web: draining {NEXT} (timeout 10s)",
        "web: old targets drained",
    ]


async def test_a_deploy_keeps_the_rollout_and_remove_drains_both(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    target = await _rolled_out(router)
    await rollouts.set_split(router, "web", RolloutSplit(0, ("alice",)))
    _script(router).healthy.add(NEWER)
    await router.deploy("web", options(NEWER))
    service = _service(router)
    assert chosen(service, head(rollout=b"alice")) == NEXT
    assert chosen(service, head(rollout=b"bob")) == NEWER
    progress = Progress()
    await router.remove("web", progress)
    assert target.health is TargetHealth.DRAINING
    assert progress.lines[-2:] == [
        f"web: draining {NEXT} (timeout 30s)",
        "web: old targets drained",
    ]


async def test_the_rollout_groups_health_decides_its_rotation(
    router: Router, autojump_clock: trio.testing.MockClock
) -> None:
    _script(router).healthy |= {NEXT, NEWER}
    await rollouts.deploy(router, RolloutDeploy("web", (NEXT, NEWER)), Progress())
    await rollouts.set_split(router, "web", RolloutSplit(100))
    service = _service(router)
    assert [chosen(service, head(rollout=b"u")) for _ in range(4)] == [NEXT, NEWER] * 2
    _script(router).healthy.discard(NEWER)
    await trio.sleep(1.5)
    assert [chosen(service, head(rollout=b"u")) for _ in range(3)] == [NEXT] * 3
    assert chosen(service, head()) == MAIN


@attrs.define(eq=False)
class GatedStore(StateStore):
    """A state directory whose saves wait for ``gate`` (a slow disk), kept in memory."""

    gate: trio.Event = attrs.field(factory=trio.Event)
    saved: str = ""

    async def write(self, text: str) -> None:
        await self.gate.wait()
        self.saved = text


async def test_a_rollout_set_saved_while_a_rollout_deploy_waits_to_save_is_kept(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # rollout set takes no service lock: it may be saved between a rollout deploy's health
    # wait and its own save. The deploy keeps the split it finds when it saves, not an older.
    store = GatedStore(tmp_path)
    store.gate.set()
    router = Router(logger(), store, nursery, health_check=HealthScript({MAIN, NEXT, NEWER}))
    await router.deploy("web", options(MAIN))
    await rollouts.deploy(router, RolloutDeploy("web", (NEXT,)), Progress())
    await rollouts.set_split(router, "web", RolloutSplit(10))
    store.gate = trio.Event()  # saves wait from here on
    async with trio.open_nursery() as commands:
        commands.start_soon(rollouts.set_split, router, "web", RolloutSplit(50))
        await trio.sleep(1)  # the set waits in its save, holding the saver
        deploy = RolloutDeploy("web", (NEWER,), drain_timeout=1)
        commands.start_soon(rollouts.deploy, router, deploy, Progress())
        await trio.sleep(2)  # the deploy's targets are healthy: it waits to save
        store.gate.set()
    service = _service(router)
    assert service.split == RolloutSplit(50)
    assert service.rollout is not None
    assert [t.name for t in service.rollout.targets] == [NEWER]
    (saved,) = snapshot.load(json.loads(store.saved))[0]
    assert saved.rollout == snapshot.RolloutRecord((NEWER,), (), 1, RolloutSplit(50))
    router.close_nowait()


async def test_a_rollout_set_behind_a_rollout_stop_finds_no_group(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The group is read as the set is saved: a rollout stop saved first leaves none to split
    # to (the stopped group, draining, must not come back).
    store = GatedStore(tmp_path)
    store.gate.set()
    router = Router(logger(), store, nursery, health_check=HealthScript({MAIN, NEXT}))
    await router.deploy("web", options(MAIN))
    await rollouts.deploy(router, RolloutDeploy("web", (NEXT,), drain_timeout=1), Progress())
    store.gate = trio.Event()
    refused: list[str] = []

    async def set_split() -> None:
        with pytest.raises(CommandError, match="has no rollout group") as raised:
            await rollouts.set_split(router, "web", RolloutSplit(50))
        refused.append(str(raised.value))

    async with trio.open_nursery() as commands:
        commands.start_soon(rollouts.stop, router, "web", Progress())
        await trio.sleep(1)  # the stop waits in its save, holding the saver
        commands.start_soon(set_split)
        await trio.sleep(1)
        store.gate.set()
    assert len(refused) == 1
    service = _service(router)
    assert (service.rollout, service.split) == (None, None)
    (saved,) = snapshot.load(json.loads(store.saved))[0]
    assert saved.rollout is None
    router.close_nowait()
