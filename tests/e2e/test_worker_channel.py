"""WorkerChannel: the two ends of a real socketpair asking and telling each other things."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from kproxy.core import worker_protocol as wp
from kproxy.runtime.worker_channel import WorkerChannel

GUARD = 10  # seconds per test


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    one, two = trio.socket.socketpair()
    return trio.SocketStream(one), trio.SocketStream(two)


def serve_all(nursery: trio.Nursery, *channels: WorkerChannel) -> list[BaseException]:
    """Run each channel's ``serve`` in ``nursery``, closing its stream when it ends (so the peer
    sees EOF); returns the list ``serve`` puts its errors in, filled in as they happen."""
    errors: list[BaseException] = []

    async def serve(channel: WorkerChannel) -> None:
        try:
            await channel.serve()
        except wp.ChannelError as exc:
            errors.append(exc)
        finally:
            await channel.stream.aclose()

    for channel in channels:
        nursery.start_soon(serve, channel)
    return errors


def answer_with(name: str, delay: float = 0) -> Callable[[wp.Message], Awaitable[wp.Message]]:
    async def handle(message: wp.Message) -> wp.Message:
        await trio.sleep(float(message.get("delay", delay)))
        return {"from": name, "echo": message["n"]}

    return handle


async def test_either_side_asks_and_gets_the_answer(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        one, two = socket_pair()
        supervisor = WorkerChannel(one, handle_request=answer_with("supervisor"))
        worker = WorkerChannel(two, handle_request=answer_with("worker"))
        errors = serve_all(nursery, supervisor, worker)
        answers: dict[str, wp.Message | None] = {}

        async def ask(name: str, channel: WorkerChannel) -> None:
            answers[name] = await channel.ask({"type": "q", "n": len(name)}, timeout=5)

        async with trio.open_nursery() as asking:
            asking.start_soon(ask, "down", supervisor)
            asking.start_soon(ask, "up", worker)
        assert answers == {
            "down": {"from": "worker", "echo": 4},
            "up": {"from": "supervisor", "echo": 2},
        }
        assert errors == []


async def test_requests_run_side_by_side_and_answers_find_their_askers(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(GUARD):
        one, two = socket_pair()
        asker = WorkerChannel(one)
        answerer = WorkerChannel(two, handle_request=answer_with("worker"))
        serve_all(nursery, asker, answerer)
        order: list[int] = []

        async def ask(n: int, delay: float) -> None:
            answer = await asker.ask({"type": "q", "n": n, "delay": delay}, timeout=5)
            assert answer == {"from": "worker", "echo": n}
            order.append(n)

        async with trio.open_nursery() as asking:
            asking.start_soon(ask, 1, 0.5)  # the slow one does not hold the fast one
            await trio.sleep(0.1)
            asking.start_soon(ask, 2, 0)
        assert order == [2, 1]


async def test_events_are_handled_in_order_before_the_next_message(
    nursery: trio.Nursery,
) -> None:
    """Rule 2: a request sent after an event finds the event handled, even a slow one."""
    with trio.fail_after(GUARD):
        one, two = socket_pair()
        seen: list[str] = []

        async def on_event(message: wp.Message) -> None:
            await trio.sleep(0.2 if message["n"] == 1 else 0)
            seen.append(f"event {message['n']}")

        async def on_request(message: wp.Message) -> wp.Message:
            seen.append("request")
            return {"seen": len(seen) - 1}

        sender = WorkerChannel(one)
        receiver = WorkerChannel(two, handle_request=on_request, handle_event=on_event)
        serve_all(nursery, sender, receiver)
        sender.send_nowait({"type": "e", "n": 1})
        sender.send_nowait(wp.encode({"type": "e", "n": 2}))  # already encoded: the same
        assert await sender.ask({"type": "q"}, timeout=5) == {"seen": 2}
        assert seen == ["event 1", "event 2", "request"]


async def test_an_unanswered_ask_times_out_and_its_late_answer_is_dropped(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(GUARD):
        one, two = socket_pair()
        asker = WorkerChannel(one)
        answerer = WorkerChannel(two, handle_request=answer_with("worker"))
        errors = serve_all(nursery, asker, answerer)
        began = trio.current_time()
        assert await asker.ask({"type": "q", "n": 1, "delay": 0.5}, timeout=0.1) is None
        assert trio.current_time() - began < 0.4
        await trio.sleep(0.6)  # the answer arrives now, for nobody
        answer = await asker.ask({"type": "q", "n": 2}, timeout=5)
        assert answer == {"from": "worker", "echo": 2}
        assert errors == []


async def test_when_the_peer_goes_away_asks_return_none_and_serve_returns(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(GUARD):
        one, two = socket_pair()
        handled = trio.Event()

        async def never_answer(message: wp.Message) -> wp.Message:
            handled.set()
            await trio.sleep_forever()

        answerer = WorkerChannel(two, handle_request=never_answer)
        nursery.start_soon(answerer.serve)

        async def die_mid_request() -> None:
            await handled.wait()
            await answerer.stream.aclose()

        nursery.start_soon(die_mid_request)
        asker = WorkerChannel(one)
        ended = trio.Event()

        async def serve_asker() -> None:
            await asker.serve()  # returns, with no error: the peer went away
            ended.set()

        nursery.start_soon(serve_asker)
        began = trio.current_time()
        assert await asker.ask({"type": "q"}, timeout=30) is None
        assert trio.current_time() - began < 5  # at the hang-up, not the timeout
        await ended.wait()
        assert asker.closed
        assert await asker.ask({"type": "q"}, timeout=30) is None  # at once
        asker.send_nowait({"type": "e"})  # dropped, without an error
        await asker.stream.aclose()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"not json\n", "not JSON"),
        (b'{"type":"reply","id":"7","answer":{}}\n', "id is an integer"),
        (b'{"type":"reply","id":7}\n', "has an id and an answer"),
        (b'{"type":"q","id":1}\n', "unknown message type 'q'"),  # no request handler
        (b'{"type":"e"}\n', "unknown message type 'e'"),  # no event handler
    ],
)
async def test_what_a_side_cannot_take_ends_its_channel(message: bytes, error: str) -> None:
    with trio.fail_after(GUARD):
        one, two = socket_pair()
        receiver = WorkerChannel(two)
        await one.send_all(message)
        with pytest.raises(wp.ChannelError, match=error):
            await receiver.serve()
        assert receiver.closed
        assert await receiver.ask({"type": "q"}, timeout=30) is None
        await one.aclose()
        await two.aclose()
