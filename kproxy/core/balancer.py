"""Round robin over the healthy members of a target group (kamal-proxy's load_balancer.go).

Sans-IO: the runtime tells the balancer when a member's health changes and asks it for the
next member; the balancer returns a choice and does nothing else. Members are opaque values
(the runtime passes its ``Target`` objects).

The rotation is over the members in their deploy order, skipping unhealthy ones: with members
``a, b, c`` and ``b`` unhealthy, requests go ``a, c, a, c…``, and a member that recovers rejoins
at its own place in the order.

With read targets (``--read-target``), :class:`ReadWriteBalancer` holds two rotations, one over
the writers and one over the readers, and chooses by the request's method, whether it is a
WebSocket upgrade, and whether it carries a valid writer-affinity cookie
(core/writer_affinity.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, TypeVar

T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Round robin over the members marked healthy.

    Args:
        members: the group, in order; fixed for the balancer's life (a deploy makes a new one).
        healthy: which of them start out healthy (by default none: nothing is checked yet).
    """

    __slots__ = ("_healthy", "_next", "members")

    def __init__(self, members: Sequence[T], healthy: Sequence[bool] | None = None) -> None:
        self.members: tuple[T, ...] = tuple(members)
        if healthy is None:
            healthy = [False] * len(self.members)
        if len(healthy) != len(self.members):
            raise ValueError("one health flag per member")
        self._healthy = list(healthy)
        self._next = 0  # where the next search starts: one past the latest choice

    def set_healthy(self, member: T, healthy: bool) -> None:
        """Record a member's health (a member not in the group is a bug: ValueError)."""
        self._healthy[self.members.index(member)] = healthy

    def is_healthy(self, member: T) -> bool:
        return self._healthy[self.members.index(member)]

    def choose(self) -> T | None:
        """The next healthy member in rotation, or None when none is healthy."""
        healthy, count = self._healthy, len(self._healthy)
        for offset in range(count):
            index = (self._next + offset) % count
            if healthy[index]:
                self._next = (index + 1) % count
                return self.members[index]
        return None


READ_METHODS: Final = frozenset({b"GET", b"HEAD"})


def is_read_request(method: bytes, websocket: bool, read_websockets: bool) -> bool:
    """kamal-proxy's isReadRequest: GET or HEAD, and not a WebSocket upgrade unless
    ``--read-target-websockets``."""
    return method in READ_METHODS and (read_websockets or not websocket)


class ReadWriteBalancer(Generic[T]):
    """A writer rotation and a reader rotation (kamal-proxy's LoadBalancer.nextTarget).

    A read (see :func:`is_read_request`) without a valid writer-affinity cookie goes to the
    next healthy reader; everything else, and a read when no reader is healthy, goes to the
    next healthy writer.

    Args:
        writers: the ``--target`` rotation.
        readers: the ``--read-target`` rotation (may be empty).
        read_websockets: ``--read-target-websockets``.
    """

    __slots__ = ("read_websockets", "readers", "writers")

    def __init__(
        self, writers: RoundRobin[T], readers: RoundRobin[T], read_websockets: bool = False
    ) -> None:
        self.writers = writers
        self.readers = readers
        self.read_websockets = read_websockets

    def choose(self, method: bytes, websocket: bool, has_affinity_cookie: bool) -> T | None:
        """The target for one request, or None when no suitable member is healthy."""
        if (
            self.readers.members
            and not has_affinity_cookie
            and is_read_request(method, websocket, self.read_websockets)
        ):
            reader = self.readers.choose()
            if reader is not None:
                return reader
        return self.writers.choose()
