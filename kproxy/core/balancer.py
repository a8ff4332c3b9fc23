"""Round robin over the healthy members of a target group (kamal-proxy's load_balancer.go).

Sans-IO: the runtime tells the balancer when a member's health changes and asks it for the
next member; the balancer returns a choice and does nothing else. Members are opaque values
(the runtime passes its ``Target`` objects).

The rotation is over the members in their deploy order, skipping unhealthy ones: with members
``a, b, c`` and ``b`` unhealthy, requests go ``a, c, a, c…``, and a member that recovers rejoins
at its own place in the order.

Issue 12 adds read targets and writer affinity here: a second rotation over the readers, and a
choice that takes the request's method and its affinity cookie.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

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
