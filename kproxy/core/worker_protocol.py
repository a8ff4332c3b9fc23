"""The supervisor ⇄ worker channel of ``kproxy run --workers N``: one JSON object per line.

Every message has a ``type``. Either side may send three kinds (runtime/worker_channel.py):
an **event** (no ``id``) expects nothing back; a **request** carries an ``id`` its sender chose
(each side numbers its own) and gets one ``reply`` (``id``: the request's, ``answer``: an
object), unless the channel closes first or the asker stops waiting.

Rule 1: the supervisor is the only writer of state. A worker holds a replica: its first ``state``
event is the whole state, and each after it carries the services changed since the one before
(and the names of those removed); the worker answers each with an ``ack`` event carrying its
version. The channel loses and reorders nothing, so the replica is the supervisor's state.
Rule 2: events are handled one at a time, in the order sent, before the next message is read,
so a ``drain`` request sent after a ``state`` finds its targets already out of the worker's
routing. Requests run side by side: their replies may come in any order.

supervisor → worker: events ``state`` (version, services, removed, whole), ``shutdown`` (grace),
``abort``;
requests ``drain`` (targets, timeout) → (cancelled), ``idle`` (service, timeout) → (idle).
worker → supervisor: events ``ready`` (pid), ``ack`` (version); requests ``acme-certificate``
(name) → (path, not_after) and ``acme-token`` (target) → (answer) (runtime/acme_workers.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import attrs

from kproxy.core import snapshot
from kproxy.core.states import TargetHealth
from kproxy.errors import ProtocolError

MAX_MESSAGE: Final = 64 * 1024 * 1024  # bytes: a state message holds every service's options
REPLY: Final = "reply"  # the type of a request's answer

Message = dict[str, Any]


class ChannelError(ProtocolError, ValueError):
    """The other side sent something that is not a message (a bug, not a user error).

    Also a ValueError, which is what callers caught before it joined ``kproxy.errors``."""


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def request(message: Message, request_id: int) -> Message:
    """``message`` as a request: its answer comes back in a ``reply`` with this id."""
    return {**message, "id": request_id}


def reply(request_id: int, answer: Message) -> Message:
    return {"type": REPLY, "id": request_id, "answer": answer}


@attrs.define
class MessageReader:
    """Feed bytes in with ``receive_data`` (``b""`` is EOF); pull messages with ``next_message``,
    which returns None when it needs more data (or, once ``closed``, never will)."""

    _buffer: bytearray = attrs.field(factory=bytearray)
    closed: bool = False

    def receive_data(self, data: bytes) -> None:
        if not data:
            self.closed = True
        self._buffer += data

    def next_message(self) -> Message | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_MESSAGE:
                raise ChannelError(f"message longer than {MAX_MESSAGE} bytes")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ChannelError(f"not JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ChannelError("a message is an object with a 'type'")
        if "id" in message and type(message["id"]) is not int:
            raise ChannelError("a request's or reply's id is an integer")
        if message["type"] == REPLY and not (
            "id" in message and isinstance(message.get("answer"), dict)
        ):
            raise ChannelError("a reply has an id and an answer object")
        return message


# --- the replicated state -----------------------------------------------------------------


@attrs.frozen
class TargetView:
    serial: int  # a target's identity: a redeploy of the same address is a new target
    address: str
    health: TargetHealth


@attrs.frozen
class ServiceView:
    record: snapshot.ServiceRecord
    targets: tuple[TargetView, ...]
    rollout_targets: tuple[TargetView, ...] = ()  # the rollout group's (``record.rollout``)


@attrs.frozen
class StateUpdate:
    """A ``state`` event: the services that changed since the previous one (each whole),
    the names of those removed, or, ``whole``, every service (any other is gone)."""

    version: int
    services: tuple[ServiceView, ...]
    removed: tuple[str, ...] = ()
    whole: bool = True


def state_message(
    version: int,
    services: Iterable[ServiceView],
    *,
    removed: Iterable[str] = (),
    whole: bool = True,
) -> Message:
    """A ``state`` event (see :class:`StateUpdate`): a new worker's first is ``whole``, and
    each change after it carries only the services it changed, so a change to one of n
    services costs one service's encoding and applying, not n."""
    entries = [
        {
            **snapshot.entry(view.record),
            "targets": [[t.serial, t.address, t.health.value] for t in view.targets],
            "rollout_targets": [
                [t.serial, t.address, t.health.value] for t in view.rollout_targets
            ],
        }
        for view in services
    ]
    return {
        "type": "state",
        "version": version,
        "services": entries,
        "removed": list(removed),
        "whole": whole,
    }


def read_state(message: Message) -> StateUpdate:
    """A ``state`` message's content.

    Raises:
        ChannelError: the message does not describe a state (the two sides disagree).
    """
    entries = message.get("services")
    removed = message.get("removed", [])
    if not isinstance(entries, list) or not isinstance(removed, list):
        raise ChannelError("a state message has a list of services and one of removed names")
    records, errors = snapshot.load({"version": snapshot.FORMAT_VERSION, "services": entries})
    if errors:
        raise ChannelError("; ".join(errors))
    views = []
    for record, entry in zip(records, entries, strict=True):
        views.append(
            ServiceView(
                record,
                _target_views(entry["targets"]),
                _target_views(entry.get("rollout_targets", [])),
            )
        )
    whole = bool(message.get("whole", True))
    return StateUpdate(int(message["version"]), tuple(views), tuple(map(str, removed)), whole)


def _target_views(entries: list[list[Any]]) -> tuple[TargetView, ...]:
    return tuple(
        TargetView(int(serial), str(address), TargetHealth(health))
        for serial, address, health in entries
    )
