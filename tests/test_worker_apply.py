"""Worker.apply: a worker's read-only copy of the supervisor router's routing, on MockClock.

The supervisor's router deploys with a scripted health check; its state message (as
``Workers.state_message`` builds it) is applied by a Worker whose router never checks health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from kproxy.core import worker_protocol as wp
from kproxy.core.commands import RolloutDeploy
from kproxy.core.options import RunOptions, ServiceOptions
from kproxy.core.rollout import RolloutSplit
from kproxy.errors import NoHealthyTargets
from kproxy.runtime import rollouts
from kproxy.runtime.exchange import RequestHead
from kproxy.runtime.router import Router, _no_progress
from kproxy.runtime.target import Target
from kproxy.runtime.worker import Worker
from kproxy.runtime.worker_links import Workers
from tests.health_script import HealthScript, logger, options

ONE, TWO, THREE = "10.0.0.1:3000", "10.0.0.2:3000", "10.0.0.3:3000"
REQUEST = RequestHead(b"GET", b"/", [(b"host", b"example.test")], b"1.1", frozenset())


class Pair:
    """The supervisor's router and a worker following it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.script = HealthScript()
        self.supervisor = Router(logger(), None, nursery, health_check=self.script)
        self.workers = Workers(router=self.supervisor)
        self.worker = Worker(RunOptions(socket_path="", state_dir=""), logger())
        self.replica = Router(logger(), None, nursery, health_check=self.script)

        self.sent: list[wp.Message] = []  # every state message the worker applied

    def publish(self) -> None:
        """The whole state first, as a new worker gets it; then only what changed."""
        data = self.workers.changes() if self.sent else self.workers.state_message()
        if data is None:
            return
        reader = wp.MessageReader()
        reader.receive_data(data)
        message = reader.next_message()
        assert message is not None
        self.sent.append(message)
        assert self.worker.apply(self.replica, message) == self.workers.version

    def choices(self, count: int) -> list[str]:
        routed = self.replica.route("example.test", "/")
        assert routed is not None
        return [routed[0].choose_target(REQUEST).name for _ in range(count)]


@pytest.fixture
async def pair(nursery: trio.Nursery) -> AsyncIterator[Pair]:
    pair = Pair(nursery)
    yield pair
    pair.supervisor.close_nowait()
    pair.replica.close_nowait()


async def test_the_replica_routes_as_the_supervisor_decided(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.script.healthy = {ONE, TWO}
    await pair.supervisor.deploy("web", options(ONE, TWO))
    pair.publish()
    assert pair.choices(4) == [ONE, TWO, ONE, TWO]
    service = pair.replica.services["web"]
    assert service.record() == pair.supervisor.services["web"].record()

    pair.script.healthy = {ONE}  # the supervisor's checks see TWO fail
    await trio.sleep(1.5)
    pair.publish()
    assert pair.replica.services["web"] is service  # the same service and targets, new health
    assert pair.choices(3) == [ONE, ONE, ONE]
    await trio.sleep(10)
    assert pair.script.count(ONE) == pair.script.count(TWO)  # the replica checks nothing


async def test_a_redeploy_retires_targets_which_the_worker_drains(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.script.healthy = {ONE, THREE}
    await pair.supervisor.deploy("web", options(ONE))
    pair.publish()
    old: Target = pair.replica.services["web"].targets[0]
    ended: list[float] = []

    async def slow_request() -> None:
        with trio.CancelScope() as scope, old.track(scope):
            await trio.sleep(3600)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_request)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as deploying:
            deploying.start_soon(pair.supervisor.deploy, "web", options(THREE, drain_timeout=5))
            await trio.sleep(0.5)  # cut over; the supervisor's drain of ONE is quick (idle)
            pair.publish()
        assert pair.choices(2) == [THREE, THREE]
        began = trio.current_time()
        assert await pair.worker.drain([old.serial, 12345], 5) == 1
        assert trio.current_time() == began + 5
    assert ended == [began + 5]


async def test_remove_and_pause_reach_the_replica(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.script.healthy = {ONE, TWO}
    await pair.supervisor.deploy("web", options(ONE))
    await pair.supervisor.deploy("api", options(TWO, service=ServiceOptions(hosts=("api.test",))))
    pair.publish()
    await pair.supervisor.pause("web", drain_timeout=1, max_pause=60)
    pair.publish()
    web = pair.replica.services["web"]
    assert web.record() == pair.supervisor.services["web"].record()
    assert not web.running

    await pair.supervisor.remove("web")
    pair.publish()
    assert sorted(pair.replica.services) == ["api"]
    assert pair.replica.route("example.test", "/") is None
    routed = pair.replica.route("api.test", "/")
    assert routed is not None
    assert routed[0].choose_target(REQUEST).name == TWO
    with pytest.raises(NoHealthyTargets, match="was removed"):
        await web.admit()


def _with_cookie(value: bytes) -> RequestHead:
    return RequestHead(
        b"GET",
        b"/",
        [(b"host", b"example.test"), (b"cookie", b"kamal-rollout=" + value)],
        b"1.1",
        frozenset(),
    )


async def test_the_replica_follows_the_rollout_group_its_health_and_split(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.script.healthy = {ONE, TWO, THREE}
    await pair.supervisor.deploy("web", options(ONE))
    await rollouts.deploy(pair.supervisor, RolloutDeploy("web", (TWO, THREE)), _no_progress)
    pair.publish()
    replica = pair.replica.services["web"]
    assert replica.rollout is not None
    assert replica.split is None
    assert replica.choose_target(_with_cookie(b"alice")).name == ONE
    await rollouts.set_split(pair.supervisor, "web", RolloutSplit(0, ("alice",)))
    pair.publish()
    group = replica.rollout
    assert [replica.choose_target(_with_cookie(b"alice")).name for _ in range(4)] == [
        TWO,
        THREE,
    ] * 2
    assert replica.choose_target(_with_cookie(b"bob")).name == ONE
    assert replica.record() == pair.supervisor.services["web"].record()

    pair.script.healthy = {ONE, TWO}  # the supervisor's checks see THREE fail
    await trio.sleep(1.5)
    pair.publish()
    assert replica.rollout is group  # the same group, new health
    assert [replica.choose_target(_with_cookie(b"alice")).name for _ in range(3)] == [TWO] * 3

    retired = list(group.targets)
    async with trio.open_nursery() as stopping:
        stopping.start_soon(rollouts.stop, pair.supervisor, "web", _no_progress)
        await trio.sleep(0.1)
        pair.publish()
    after = pair.replica.services["web"]  # (a fresh look: mypy narrowed replica.rollout)
    assert (after.rollout, after.split, after.record().rollout) == (None, None, None)
    assert replica.choose_target(_with_cookie(b"alice")).name == ONE
    assert await pair.worker.drain([t.serial for t in retired], 1) == 0  # retired: drainable


async def test_after_the_whole_state_a_worker_is_sent_only_what_changed(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    pair.script.healthy = {ONE, TWO, THREE}
    api = ServiceOptions(hosts=("api.test",))
    await pair.supervisor.deploy("web", options(ONE))
    await pair.supervisor.deploy("api", options(TWO, service=api))
    pair.publish()
    assert [e["name"] for e in pair.sent[-1]["services"]] == ["web", "api"]
    assert pair.sent[-1]["whole"]
    api_service = pair.replica.services["api"]

    await pair.supervisor.deploy("web", options(THREE))
    pair.publish()
    assert [e["name"] for e in pair.sent[-1]["services"]] == ["web"]
    assert (pair.sent[-1]["whole"], pair.sent[-1]["removed"]) == (False, [])
    assert pair.choices(2) == [THREE, THREE]
    assert pair.replica.services["api"] is api_service  # untouched
    assert pair.workers.changes() is None  # nothing more to send

    await pair.supervisor.remove("api")
    pair.publish()
    assert (pair.sent[-1]["services"], pair.sent[-1]["removed"]) == ([], ["api"])
    assert sorted(pair.replica.services) == ["web"]
    assert pair.replica.service_map.services() == {"web"}
    # A worker started now gets the whole state, the same the first one followed to.
    fresh, replica = (
        Worker(RunOptions(socket_path="", state_dir=""), logger()),
        Router(logger(), None, pair.replica.nursery),
    )
    reader = wp.MessageReader()
    reader.receive_data(pair.workers.state_message())
    message = reader.next_message()
    assert message is not None
    assert message["whole"]
    assert fresh.apply(replica, message) == pair.workers.version
    assert replica.service_map == pair.replica.service_map == pair.supervisor.service_map
    assert [s.record() for s in replica.services.values()] == [
        s.record() for s in pair.replica.services.values()
    ]
    replica.close_nowait()
