"""The data path's deadlines on trio's MockClock: drain cut-off, target timeout, pause, hang-up.

A whole proxy minus its sockets: ``HttpServer.handle_connection`` serves an in-memory client
connection, the router's health check is a ``HealthScript`` and its connector a
``MemoryNetwork`` of ``HttpTarget`` tasks (tests/memory_transport.py). So a 10 s drain runs in
milliseconds and the assertions name exact virtual times. Deadlines the server keeps with its
alarm clock go off within one ``TICK`` after they pass; the rest are exact. The same behaviour
over real sockets, on the wall clock, is in tests/e2e (test_deploy, test_pause,
test_data_path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing

from kproxy.core.options import TargetOptions
from kproxy.runtime.alarms import TICK
from kproxy.runtime.hangup_watch import HANGUP_WATCH_DELAY
from kproxy.runtime.http_server import HttpServer, _cancel_requested
from kproxy.runtime.router import Router
from tests.health_script import CHECK_TIME, HealthScript, logger, options
from tests.helpers import LogCapture
from tests.memory_transport import HttpClient, HttpTarget, MemoryNetwork, transport_pair

ONE, TWO = "10.0.0.1:3000", "10.0.0.2:3000"
CLOSING = "10.0.0.3:3000"  # closes each connection after one response


@attrs.define
class Rig:
    """A router and an HTTP server over a memory network with targets ONE and TWO."""

    nursery: trio.Nursery
    router: Router
    server: HttpServer
    network: MemoryNetwork
    logs: LogCapture
    targets: dict[str, HttpTarget]

    async def connect(self) -> tuple[HttpClient, trio.Event]:
        """A client connection being served; the event is set once the server is done with it."""
        client_end, server_end = transport_pair()
        done = trio.Event()

        async def serve() -> None:
            try:
                await self.server.handle_connection(server_end)
            finally:
                done.set()

        self.nursery.start_soon(serve)
        return HttpClient(client_end), done

    async def records(self, msg: str) -> list[dict[str, object]]:
        """The log's lines of ``msg``, once every task has done what it can (an answer goes
        out before its access line is logged)."""
        await trio.testing.wait_all_tasks_blocked()
        self.router.logger.flush()  # access lines are written in batches
        return self.logs.records(msg)


@pytest.fixture
async def rig(nursery: trio.Nursery) -> AsyncIterator[Rig]:
    logs = LogCapture()
    network = MemoryNetwork(nursery)
    targets = {name: HttpTarget(name) for name in (ONE, TWO)}
    targets[CLOSING] = HttpTarget(CLOSING, keep_alive=False)
    for name, target in targets.items():
        network.serve(name, target)
    router = Router(
        logger(logs),
        None,
        nursery,
        health_check=HealthScript(healthy=set(targets)),
        connector=network.connect,
    )
    server = HttpServer(router, router.logger)
    nursery.start_soon(server.clock.run)
    yield Rig(nursery, router, server, network, logs, targets)
    router.close_nowait()


async def test_a_request_is_proxied_through_the_memory_network(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    client, done = await rig.connect()
    assert await client.get("/hello") == (200, f"{ONE} /hello".encode())
    assert await client.get("/again") == (200, f"{ONE} /again".encode())  # kept alive
    assert [path for _, path in rig.targets[ONE].requests] == ["/hello", "/again"]
    await client.transport.aclose()
    await done.wait()
    [first, second] = await rig.records("Request")
    assert (first["status"], first["target"], first["path"]) == (200, ONE, "/hello")
    assert (first["client_addr"], first["client_port"]) == ("10.0.0.100", "40000")
    assert second["status"] == 200


async def test_a_drain_cuts_off_a_request_at_the_drain_timeout_with_a_504(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    client, _ = await rig.connect()
    await client.send_request("/slow")
    await trio.testing.wait_all_tasks_blocked()
    began = trio.current_time()
    assert rig.targets[ONE].requests == [(began, "/slow")]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.router.deploy, "web", options(TWO, drain_timeout=10))
        status, _ = await client.receive_response()
        answered = trio.current_time()
    assert status == 504
    cutover = began + CHECK_TIME  # TWO passed its first check
    assert answered == pytest.approx(cutover + 10)  # the drain's own deadline: exact
    assert rig.targets[ONE].hung_up == [answered]  # the target's connection closed with it
    drained = await rig.records("Target drained")
    assert [(r["target"], r["cancelled_requests"]) for r in drained] == [(ONE, 1)]
    [error] = await rig.records("Proxy error")
    assert (error["target"], error["status"]) == (ONE, 504)
    assert error["error"] == f"request to draining target {ONE} cut off"
    [line] = await rig.records("Request")
    assert (line["status"], line["target"]) == (504, ONE)
    assert line["duration"] == pytest.approx((answered - began) * 1e9, abs=1)
    # The connection goes on: the next request goes to the new target.
    assert await client.get("/next") == (200, f"{TWO} /next".encode())


async def test_a_drain_lets_a_request_finish_within_the_drain_timeout(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    client, _ = await rig.connect()
    await client.send_request("/sleep/4")
    await trio.testing.wait_all_tasks_blocked()
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.router.deploy, "web", options(TWO, drain_timeout=10))
        assert await client.receive_response() == (200, f"{ONE} /sleep/4".encode())
        assert trio.current_time() == began + 4
    assert trio.current_time() == began + 4  # the deploy's drain ended with the request
    drained = await rig.records("Target drained")
    assert [(r["target"], r["cancelled_requests"]) for r in drained] == [(ONE, 0)]
    assert [line["status"] for line in await rig.records("Request")] == [200]
    assert await client.get("/next") == (200, f"{TWO} /next".encode())


async def test_the_target_timeout_answers_504(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE, target=TargetOptions(target_timeout=5)))
    client, _ = await rig.connect()
    began = trio.current_time()
    status, _ = await client.get("/slow")
    answered = trio.current_time()
    assert status == 504
    assert began + 5 <= answered <= began + 5 + TICK + 1e-9  # an alarm: within one tick
    assert rig.targets[ONE].hung_up == [answered]
    [error] = await rig.records("Proxy error")
    assert (error["status"], error["error"]) == (
        504,
        f"{ONE} sent no response within the target timeout",
    )
    [line] = await rig.records("Request")
    assert line["status"] == 504
    assert await client.get("/next") == (200, f"{ONE} /next".encode())


async def test_the_hangup_alarm_is_rearmed_for_each_request_on_a_connection(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # One alarm per connection serves every request on it: each request's target timeout
    # runs from that request's own start, and one that went off leaves none armed behind.
    await rig.router.deploy("web", options(ONE, target=TargetOptions(target_timeout=5)))
    client, _ = await rig.connect()
    assert await client.get("/sleep/4") == (200, f"{ONE} /sleep/4".encode())  # looked at, then
    for _ in range(2):  # the second in the new scope the first one's cut-off left
        began = trio.current_time()
        status, _ = await client.get("/slow")
        answered = trio.current_time()
        assert status == 504
        assert began + 5 <= answered <= began + 5 + TICK + 1e-9
    began = trio.current_time()
    assert await client.get("/sleep/4") == (200, f"{ONE} /sleep/4".encode())  # not rung again
    assert trio.current_time() == began + 4
    assert [line["status"] for line in await rig.records("Request")] == [200, 504, 504, 200]


async def test_a_paused_service_answers_504_at_max_pause(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    await rig.router.pause("web", drain_timeout=30, max_pause=3)
    client, _ = await rig.connect()
    began = trio.current_time()
    status, _ = await client.get("/held")
    assert status == 504
    assert trio.current_time() == began + 3  # the pause's own deadline: exact
    assert rig.targets[ONE].requests == []  # never reached the target
    [line] = await rig.records("Request")
    assert (line["status"], line["service"]) == (504, "web")
    assert line["duration"] == pytest.approx(3e9, abs=1)


async def test_resume_releases_a_held_request_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    await rig.router.pause("web", drain_timeout=30, max_pause=30)
    client, _ = await rig.connect()
    began = trio.current_time()
    await client.send_request("/held")
    async with trio.open_nursery() as nursery:

        async def resume_later() -> None:
            await trio.sleep(2.5)
            await rig.router.resume("web")

        nursery.start_soon(resume_later)
        assert await client.receive_response() == (200, f"{ONE} /held".encode())
    assert trio.current_time() == began + 2.5
    assert rig.targets[ONE].requests == [(began + 2.5, "/held")]
    [line] = await rig.records("Request")
    assert line["status"] == 200


async def test_a_stop_answers_a_held_request_503_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    await rig.router.pause("web", drain_timeout=30, max_pause=30)
    client, _ = await rig.connect()
    await client.send_request("/held")
    await trio.sleep(2)
    stopped = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.router.stop, "web", 30, "Back soon")
        status, body = await client.receive_response()
        assert trio.current_time() == stopped  # the newest command wins, at once
    assert status == 503
    assert b"Back soon" in body
    assert rig.targets[ONE].requests == []


async def test_a_client_that_hangs_up_on_a_slow_target_is_logged_499(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    client, done = await rig.connect()
    await client.send_request("/slow")
    # A bodiless request's client is looked at every tick while the target keeps it waiting,
    # from HANGUP_WATCH_DELAY on; the target connection closes when it is seen gone.
    assert HANGUP_WATCH_DELAY < 1
    await trio.sleep(1)
    hung_up = trio.current_time()
    await client.transport.aclose()
    await done.wait()
    [noticed] = rig.targets[ONE].hung_up
    assert hung_up <= noticed <= hung_up + TICK + 1e-9
    [line] = await rig.records("Request")
    assert (line["status"], line["target"]) == (499, ONE)
    assert await rig.records("Proxy error") == []  # a client leaving is the access log's news


async def test_a_client_that_hangs_up_after_its_body_is_logged_499_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(ONE))
    client, done = await rig.connect()
    await client.send_request("/slow", method="POST", body=b"hello")
    await trio.sleep(1)
    hung_up = trio.current_time()
    await client.transport.aclose()
    await done.wait()
    # Once the body is in, a task reads the client: its EOF ends the exchange at once.
    assert rig.targets[ONE].hung_up == [hung_up]
    assert trio.current_time() == hung_up
    [line] = await rig.records("Request")
    assert (line["status"], line["method"]) == (499, "POST")


async def test_a_pooled_connection_the_target_closed_is_not_reused(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.router.deploy("web", options(CLOSING))
    client, _ = await rig.connect()
    assert await client.get("/first") == (200, f"{CLOSING} /first".encode())
    await trio.testing.wait_all_tasks_blocked()  # the target has closed its end meanwhile
    # A POST may not be resent, so the pool asks the idle connection whether it is still
    # silent before using it (``Transport.readable_now``): it is not, a new one is opened.
    await client.send_request("/second", method="POST", body=b"data")
    assert await client.receive_response() == (200, f"{CLOSING} /second".encode())
    assert rig.network.connections == 2
    assert [line["status"] for line in await rig.records("Request")] == [200, 200]
    assert await rig.records("Proxy error") == []


async def test_an_epochs_cancel_is_seen_as_trio_reports_it() -> None:
    # The server reads trio's flag without the property's clock reading: it must agree.
    with trio.CancelScope() as epoch:
        before = (_cancel_requested(epoch), epoch.cancel_called)
        epoch.cancel()
        after = (_cancel_requested(epoch), epoch.cancel_called)
        await trio.lowlevel.checkpoint()
    assert before == (False, False)
    assert after == (True, True)
    assert epoch.cancelled_caught
