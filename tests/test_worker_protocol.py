"""The supervisor ⇄ worker channel: framing and the replicated state, with no I/O."""

from __future__ import annotations

import pytest

from kproxy.core import snapshot
from kproxy.core import worker_protocol as wp
from kproxy.core.options import DeploymentOptions, ServiceOptions
from kproxy.core.rollout import RolloutSplit
from kproxy.core.states import ServiceState, TargetHealth
from kproxy.errors import KProxyError, ProtocolError


@pytest.mark.parametrize(
    "chunks",
    [
        [b'{"type":"ack","version":3}\n'],
        [b'{"type":"ack",', b'"version":3}', b"\n"],
        [b'{"type":"ack","version":3}\n{"type":"ready","pid":7}\n'],
    ],
)
def test_messages_are_lines_however_the_bytes_arrive(chunks: list[bytes]) -> None:
    reader = wp.MessageReader()
    received = []
    for chunk in chunks:
        reader.receive_data(chunk)
        while (message := reader.next_message()) is not None:
            received.append(message)
    assert received[0] == {"type": "ack", "version": 3}
    assert reader.next_message() is None
    assert not reader.closed


def test_eof_is_reported_once_the_buffer_is_empty() -> None:
    reader = wp.MessageReader()
    reader.receive_data(wp.encode({"type": "abort"}) + b"")
    reader.receive_data(b"")
    assert reader.next_message() == {"type": "abort"}
    assert reader.next_message() is None
    assert reader.closed


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"kind": "ack"}\n',
        b'{"type": "drain", "id": "1"}\n',
        b'{"type": "reply", "id": 1}\n',
        b'{"type": "reply", "answer": {}}\n',
        b'{"type": "reply", "id": 1, "answer": []}\n',
    ],
)
def test_what_is_not_a_message_raises(line: bytes) -> None:
    reader = wp.MessageReader()
    reader.receive_data(line)
    with pytest.raises(wp.ChannelError):
        reader.next_message()


def test_requests_and_replies_carry_the_askers_id() -> None:
    reader = wp.MessageReader()
    reader.receive_data(wp.encode(wp.request({"type": "idle", "service": "web"}, 7)))
    reader.receive_data(wp.encode(wp.reply(7, {"idle": True})))
    assert reader.next_message() == {"type": "idle", "service": "web", "id": 7}
    assert reader.next_message() == {"type": "reply", "id": 7, "answer": {"idle": True}}


@pytest.mark.parametrize("caught", [ProtocolError, KProxyError, ValueError])
def test_a_channel_error_is_kproxys_and_still_a_value_error(caught: type[Exception]) -> None:
    reader = wp.MessageReader()
    reader.receive_data(b"[]\n")
    with pytest.raises(caught, match="a message is an object"):
        reader.next_message()


def test_an_endless_line_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wp, "MAX_MESSAGE", 10)
    reader = wp.MessageReader()
    reader.receive_data(b"x" * 11)
    with pytest.raises(wp.ChannelError, match="longer than 10 bytes"):
        reader.next_message()


def test_state_round_trips_with_target_identities_and_health() -> None:
    options = DeploymentOptions(
        targets=("127.0.0.1:3000", "127.0.0.1:3001"), service=ServiceOptions(hosts=("a.test",))
    )
    view = wp.ServiceView(
        snapshot.ServiceRecord("web", options, ServiceState.STOPPED, "Back soon", 5.0),
        (
            wp.TargetView(11, "127.0.0.1:3000", TargetHealth.HEALTHY),
            wp.TargetView(12, "127.0.0.1:3001", TargetHealth.ADDING),
        ),
    )
    reader = wp.MessageReader()
    reader.receive_data(wp.encode(wp.state_message(42, [view])))
    message = reader.next_message()
    assert message is not None
    assert wp.read_state(message) == wp.StateUpdate(42, (view,))


def test_a_state_without_services_raises() -> None:
    with pytest.raises(wp.ChannelError):
        wp.read_state({"type": "state", "version": 1})


def test_a_rollout_group_round_trips_and_older_messages_have_none() -> None:
    options = DeploymentOptions(targets=("127.0.0.1:3000",))
    rollout = snapshot.RolloutRecord(("127.0.0.1:4000",), split=RolloutSplit(5, ("a",)))
    view = wp.ServiceView(
        snapshot.ServiceRecord("web", options, rollout=rollout),
        (wp.TargetView(1, "127.0.0.1:3000", TargetHealth.HEALTHY),),
        (wp.TargetView(2, "127.0.0.1:4000", TargetHealth.UNHEALTHY),),
    )
    message = wp.state_message(7, [view])
    assert wp.read_state(message) == wp.StateUpdate(7, (view,))
    del message["services"][0]["rollout_targets"]
    del message["services"][0]["rollout"]
    (read,) = wp.read_state(message).services
    assert (read.record.rollout, read.rollout_targets) == (None, ())
