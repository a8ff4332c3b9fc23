"""The supervisor ⇄ worker channel of ``kproxy run --workers N``: one JSON object per line.

Rule 1: the supervisor is the only writer of state. A worker holds a replica, replaced whole by
every ``state`` message, and answers each with ``ack`` carrying its version.
Rule 2: messages on one channel are handled in order, so a ``drain`` sent after a ``state``
finds its targets already out of the worker's routing.

supervisor → worker: ``state`` (version, services), ``drain`` (id, targets, timeout),
``idle`` (id, service, timeout), ``shutdown`` (grace), ``abort``.
worker → supervisor: ``ready`` (pid), ``ack`` (version), ``drained`` (id, cancelled),
``idle`` (id, idle).
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

Message = dict[str, Any]


class ChannelError(ProtocolError, ValueError):
    """The other side sent something that is not a message (a bug, not a user error).

    Also a ValueError, which is what callers caught before it joined ``kproxy.errors``."""


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


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


def state_message(version: int, services: Iterable[ServiceView]) -> Message:
    views = list(services)
    data = snapshot.dump(v.record for v in views)
    for entry, view in zip(data["services"], views, strict=True):
        entry["targets"] = [[t.serial, t.address, t.health.value] for t in view.targets]
    return {"type": "state", "version": version, "services": data["services"]}


def read_state(message: Message) -> tuple[int, list[ServiceView]]:
    """A ``state`` message's version and services.

    Raises:
        ChannelError: the message does not describe a state (the two sides disagree).
    """
    entries = message.get("services")
    if not isinstance(entries, list):
        raise ChannelError("a state message has a list of services")
    records, errors = snapshot.load({"version": snapshot.FORMAT_VERSION, "services": entries})
    if errors:
        raise ChannelError("; ".join(errors))
    views = []
    for record, entry in zip(records, entries, strict=True):
        targets = tuple(
            TargetView(int(serial), str(address), TargetHealth(health))
            for serial, address, health in entry["targets"]
        )
        views.append(ServiceView(record, targets))
    return int(message["version"]), views
